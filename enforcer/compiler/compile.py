"""Compile a cluster snapshot into the datapath state one node needs.

Only what this node enforces is compiled: policy entries for its local pods,
and the ipcache for every address a local pod may meet. This module
orchestrates a pass; the work is by concern:

  admission.py   which version of each policy a pass takes in (limits,
                 room in the maps, large policies staged)
  identities.py  pod address identities and the pod part of the ipcache;
                 the ipBlock prefixes in force and their CIDR identities
  prefixes.py    the data structures behind those prefixes
  peers.py       the identity set of each peer, kept up to date
  entries.py     one local pod's endpoint and policy map keys
  tiers.py       cluster policies' tiers, walked offline into those keys
  clusterpeers.py  cluster policy peers (namespaces, pods, networks, nodes)
  services.py    Service frontends
  desired.py     what a pass produces (DesiredState)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from ..datapath.layout import IDENTITY_FIRST_ALLOCATED, IDENTITY_HOST, IDENTITY_SERVICE_UNWRITTEN, IDENTITY_WORLD
from ..errors import InvalidObjectError
from ..model.objects import IPAddress, IPNetwork, Namespace, NetworkPolicy, Pod
from ..model.state import ClusterSnapshot
from ..records import PolicyMapKey
from .admission import Admission, CompileLimits
from .clusterpeers import ClusterPeerSets, has_node_peers
from .desired import DesiredState, IdentityKey, NodeContext, RuleRef
from .entries import EndpointEntries, EntryBuilder
from .identities import CidrIdentities, PodIdentities, host_network
from .ids import EndpointIds, StableIds
from .peers import PeerKey, PeerSets
from .services import fit_frontends, service_frontends
from .tiers import ADMIN

if TYPE_CHECKING:
    from ..model.clusterpolicy import ClusterNetworkPolicy
    from ..model.node import Node

__all__ = ["Compiler", "DesiredState", "NodeContext"]

_NAME_LABEL = "kubernetes.io/metadata.name"


class Compiler:
    """Keeps the id tables between compilations so ids stay put, and what the
    last compilation worked out, so that the next one only redoes what the
    objects changed since can have changed (see _Incremental). The result of
    every compilation is the same as a fresh compiler's would be, given the
    same ids."""

    def __init__(self, max_endpoint_id: int = 512, limits: CompileLimits | None = None,
                 audit_all: bool = False) -> None:
        self.limits = limits or CompileLimits()
        self.audit_all = audit_all  # every policy in audit mode: judged, reported, not enforced
        self.identity_ids: StableIds[IdentityKey] = StableIds(IDENTITY_FIRST_ALLOCATED, 2**31 - 1)
        self.rule_ids: StableIds[RuleRef] = StableIds(1, 2**32 - 1)
        self.endpoint_ids = EndpointIds(max_endpoint_id)
        self._state: _Incremental | None = None
        # The last compilation's inputs and result (compile: reused while
        # neither changed and nothing was left pending).
        self._last: tuple[ClusterSnapshot, NodeContext, DesiredState] | None = None

    def compile(self, snap: ClusterSnapshot, node: NodeContext) -> DesiredState:
        state = self._state
        last = self._last
        if (state is not None and last is not None and _settled(last[2])
                and _same_inputs(last[0], snap) and last[1] == node):
            # Nothing the result depends on changed (the store hands out an
            # unchanged table as the same mapping): a bookmark, a resync,
            # a status-only event cost no walk over 10k pods and policies.
            return last[2]
        self._last = None
        if state is None or state.node_name != node.name:
            state = _Incremental(self, node.name)
        # A compilation that fails half-way leaves no half-updated state: the
        # next one starts from nothing.
        self._state = None
        out = state.compile(snap, node)
        capacity = self.limits.policy_capacity
        if capacity is not None and len(out.policy) > capacity:
            # Refuse the largest policies and compile again (only what they
            # touched is redone).
            refused = state.admission.refuse_for_policy_room(state.policies, out.entries_by_policy, len(out.policy))
            if refused:
                out = state.compile(snap, node)
                state.admission.policy_room_used(refused, len(out.policy))
        self._state = state
        self._last = (snap, node, out)
        return out


def _settled(out: DesiredState) -> bool:
    """Whether compiling the same inputs again gives the same result: not
    while policies are being staged (a budget per pass) or a pod waits for
    an endpoint id (those released by this compilation are handed out by
    the next)."""
    return not out.pending and not out.blocked_interfaces


def _same_inputs(a: ClusterSnapshot, b: ClusterSnapshot) -> bool:
    """Whether two snapshots hold the same objects: the same table mappings
    (identity: cheap, and what the store gives for an unchanged table) and
    equal errors."""
    return (a.namespaces is b.namespaces and a.pods is b.pods and a.policies is b.policies
            and a.services is b.services and a.endpoint_slices is b.endpoint_slices
            and a.cluster_policies is b.cluster_policies and a.nodes is b.nodes and a.errors == b.errors)


# Identities the ipcache returns beyond those compiled: an address it does
# not know, and a Service address left out of the services map.
_RESERVED_PEERS = frozenset((IDENTITY_WORLD, IDENTITY_SERVICE_UNWRITTEN))


class _ClusterHolder:
    """A cluster policy as counted for its prefixes (which depend on the
    Nodes its node peers select): a new holder when either changed."""

    __slots__ = ("cnp", "nodes_version", "prefixes")

    def __init__(self, cnp: ClusterNetworkPolicy, nodes_version: int, prefixes: frozenset[IPNetwork]) -> None:
        self.cnp = cnp
        self.nodes_version = nodes_version
        self.prefixes = prefixes


def _is_live(pod: Pod) -> bool:
    return pod.is_running and not pod.host_network


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=False))


def _block_prefixes(policies: Iterable[NetworkPolicy]) -> set[IPNetwork]:
    out: set[IPNetwork] = set()
    for pol in policies:
        for rule in (*pol.ingress, *pol.egress):
            for peer in rule.peers if rule.valid else ():
                if peer.ip_block is not None:
                    out.add(peer.ip_block.cidr)
                    out.update(peer.ip_block.excepts)
    return out


class _Incremental:
    """The compilation of the last snapshot, updated from the difference to
    the next one. Model objects are immutable, so an object that `is` the
    one compiled last time has not changed.

    What depends on what:
      - a pod address's identity: the pod, and the ipBlock prefixes in force
        (its class); prefixes come from the policies selecting local pods;
      - a peer's identity set: the identities of the namespaces it looks at
        (and their labels, for a namespace selector), or for an ipBlock the
        CIDR identities and the identities of the classes inside it;
      - a local pod's entries: the pod, its endpoint id and interface, its
        address identities, the policies selecting it, and the identity sets
        of the peers its rules name (all pod identities for an egress named
        port without peers).
    A pod's entries are recomputed when one of those changed; everything else
    is carried over, and the result says which map keys may have changed
    (MapContents.changed)."""

    def __init__(self, compiler: Compiler, node_name: str) -> None:
        self.c = compiler
        self.node_name = node_name
        self.fresh = True
        # The snapshot content this state reflects.
        self.namespaces: Mapping[str, Namespace] = {}
        self.pods: Mapping[str, Pod] = {}
        self.policies: Mapping[str, NetworkPolicy] = {}
        # Policies by namespace (by name), and a version per namespace that
        # moves whenever one of its policies changes.
        self.pols_by_ns: dict[str, dict[str, NetworkPolicy]] = {}
        self.pols_sorted: dict[str, tuple[NetworkPolicy, ...]] = {}
        self.ns_version: dict[str, int] = {}
        self.error_policies: set[str] = set()
        self.pol_prefixes: dict[str, tuple[NetworkPolicy, frozenset[IPNetwork]]] = {}
        # Policies selecting local pods, with the prefixes counted in force
        # for them.
        self.relevant: dict[str, tuple[NetworkPolicy | _ClusterHolder, frozenset[IPNetwork]]] = {}
        self.admission = Admission(compiler.limits)
        self.local: dict[str, Pod] = {}
        # local pod -> (pod, namespace version, selecting policies, their keys)
        self.selecting: dict[str, tuple[Pod, int, tuple[NetworkPolicy, ...], tuple[str, ...]]] = {}
        self.cidrs = CidrIdentities(compiler.identity_ids)
        self.pods_ids = PodIdentities(compiler.identity_ids, self.cidrs.prefixes)
        self.peer_sets = PeerSets(self.pods_ids, self.cidrs, self.labels_of_namespace)
        self.cluster_peers = ClusterPeerSets(self.peer_sets, self.cidrs)
        self.entries = EntryBuilder(compiler.rule_ids, compiler.limits, self.peer_sets, self.pods_ids,
                                    self.cluster_peers, compiler.audit_all)
        self.audited_policies = 0  # NetworkPolicies annotated for audit mode (the tiers judge their pods)
        # Cluster policies (Admin, then Baseline, each by priority and key)
        # and Nodes, with a version that moves when any of them changes.
        self.cluster_policies: Mapping[str, ClusterNetworkPolicy] = {}
        self.cluster_sorted: tuple[ClusterNetworkPolicy, ...] = ()
        self.cluster_version = 0
        self.nodes: Mapping[str, Node] = {}
        self.nodes_version = 0
        self.cluster_holders: dict[str, _ClusterHolder] = {}
        # local pod -> (pod, cluster version, its namespace, cluster policies selecting it)
        self.cluster_selecting: dict[str, tuple[Pod, int, Namespace | None, tuple[ClusterNetworkPolicy, ...]]] = {}
        self.ipcache_dirty: set[IPNetwork] = set()  # this pass
        self.node_nets: tuple[IPNetwork, ...] = ()
        self.unwritten_services: dict[IPNetwork, int] = {}  # Service addresses left out (fit_frontends)
        # Local endpoints as last compiled, and the last result.
        self.endpoints: dict[str, EndpointEntries] = {}
        self.prev: DesiredState | None = None
        self.prev_shared = False

    # -- one compilation --

    def compile(self, snap: ClusterSnapshot, node: NodeContext) -> DesiredState:
        out = DesiredState(errors=list(snap.errors), audit_all=self.c.audit_all)
        self.ipcache_dirty = set()
        self.pods_ids.begin_pass(self.ipcache_dirty)
        self.peer_sets.begin_pass()
        ns_changed = self._update_namespaces(snap.namespaces)
        prev = self.pods
        changed = [k for k, p in snap.pods.items() if prev.get(k) is not p]
        added = sum(1 for k in changed if k not in prev)
        removed = list(prev.keys() - snap.pods.keys()) if len(prev) + added > len(snap.pods) else []
        for key in removed:
            self.local.pop(key, None)
        for key in changed:
            pod = snap.pods[key]
            if pod.node_name == self.node_name and _is_live(pod):
                self.local[key] = pod
            else:
                self.local.pop(key, None)

        policies, staging, released, warm = self.admission.admit(
            snap.policies, self.policies, self._local_pods_in(), self._policy_prefixes,
            self.cidrs.prefixes.__contains__,
            lambda block: ("ip", block) in self.peer_sets.sets, self._ipcache_in_use(),
            len(self.prev.policy) if self.prev is not None else 0)
        self._update_policies(policies)
        nodes_changed = self._update_cluster(snap)
        if self.cluster_policies:
            out.errors.extend(e for c in self.cluster_sorted if (e := c.error()) is not None)
        if self.error_policies:
            errs = self.error_policies
            out.errors.extend(pol.error() for key, pol in policies.items() if key in errs)  # type: ignore[misc]
        out.pending = self.admission.pending()

        # ipBlock prefixes: those of the policies selecting local pods, and
        # those staged for policies waiting to be taken in.
        came = self.cidrs.prefixes.add(staging)
        went: list[IPNetwork] = []
        selecting_changed = self._update_selecting()
        selecting_changed |= self._update_cluster_selecting()
        if selecting_changed or nodes_changed or self.fresh:
            came_r, went = self._update_relevant()
            came += came_r
        # Released after the policies taking them over counted them.
        went += self.cidrs.prefixes.remove(released)
        if came and went:
            # A prefix that left with one holder and came back with another
            # is in force as it was.
            both = set(came).intersection(went)
            if both:
                came = [p for p in came if p not in both]
                went = [p for p in went if p not in both]
        if went and self.admission.refused_for_room():
            # Room was freed: the policies refused for room are tried again
            # in the next pass, due at once.
            out.pending = sorted({*out.pending, *self.admission.refused_for_room()})
        block_changes = self.cidrs.change(came, went, self.ipcache_dirty) if came or went else {}
        delta = came + went

        # Pod identities and the pod part of the ipcache.
        pods = self.pods_ids
        for key in removed:
            pods.drop_pod(key)
        for key in changed:
            pods.drop_pod(key)
        if delta:
            pods.reclassify(delta)
        self.pods = snap.pods
        for key in changed:
            pod = snap.pods[key]
            if _is_live(pod):
                pods.add_pod(key, pod)
        flips = pods.flips()

        node_nets = tuple(ipaddress.ip_network(ip) for ip in node.addresses)
        if node_nets != self.node_nets:
            self.ipcache_dirty.update(self.node_nets, node_nets)
            self.node_nets = node_nets
            nodes_changed = True
        self.cluster_peers.set_context(self.nodes, self.node_name, node_nets)
        out.services, left_out = fit_frontends(service_frontends(snap.services, node.addresses),
                                               self.c.limits.services_capacity, node.addresses)
        unwritten = {host_network(ip): IDENTITY_SERVICE_UNWRITTEN for ips in left_out.values() for ip in ips}
        if unwritten != self.unwritten_services:
            self.ipcache_dirty.update(unwritten.keys() ^ self.unwritten_services.keys())
            self.unwritten_services = unwritten
        for key, ips in left_out.items():
            ns, name = key.split("/", 1)
            out.errors.append(InvalidObjectError(
                "Service", ns, name, f"the services map ({self.c.limits.services_capacity} frontends) cannot hold "
                f"every Service: the largest are left out first; its addresses "
                f"({', '.join(map(str, ips[:4]))}{', ...' if len(ips) > 4 else ''}) are allowed only by rules "
                f"allowing every peer"))
        ipc = dict(self.cidrs.by_prefix)
        ipc.update(unwritten)
        ipc.update(pods.pod_ipcache)
        for net in node_nets:
            ipc[net] = IDENTITY_HOST
        out.ipcache = ipc
        if pods.conflicts:
            out.errors.extend(pods.conflict_errors(self.pods))
        identities: dict[int, IdentityKey] = dict(pods.keys)
        identities.update(self.cidrs.keys)
        out.identities = identities
        universe_changed = False
        if self.cluster_policies or self.audited_policies or self.c.audit_all:
            universe = frozenset(identities.keys() | _RESERVED_PEERS)
            universe_changed = universe != self.entries.universe
            self.entries.universe = universe

        changed_peers = self.peer_sets.refresh(flips, ns_changed, block_changes)
        for block in warm:  # a waiting version's blocks, resolved ahead (admission.py)
            self.peer_sets.get(("ip", block))
        self._endpoints_and_policy(out, node, changed_peers, bool(flips), nodes_changed or universe_changed)
        if self.cluster_policies:
            out.notices = self.notices()
        self._forget_ids(out)
        self.prev = out
        self.fresh = False
        return out

    # -- namespaces and policies --

    @staticmethod
    def _labels_in(namespaces: Mapping[str, Namespace], name: str) -> Mapping[str, str]:
        ns = namespaces.get(name)
        return (ns.labels if ns is not None else None) or {_NAME_LABEL: name}

    def labels_of_namespace(self, name: str) -> Mapping[str, str]:
        return self._labels_in(self.namespaces, name)

    def _update_namespaces(self, namespaces: Mapping[str, Namespace]) -> dict[str, Mapping[str, str]]:
        """Namespaces whose labels changed -> their labels before."""
        prev = self.namespaces
        changed: dict[str, Mapping[str, str]] = {}
        for name, ns in namespaces.items():
            old = prev.get(name)
            if old is not ns and (old is None or old.labels != ns.labels):
                changed[name] = self._labels_in(prev, name)
        for name in prev.keys() - namespaces.keys():
            changed[name] = self._labels_in(prev, name)
        self.namespaces = namespaces
        return changed

    def _update_policies(self, policies: Mapping[str, NetworkPolicy]) -> None:
        prev = self.policies
        touched: set[str] = set()
        added = 0
        for key, pol in policies.items():
            old = prev.get(key)
            if old is not pol:
                added += old is None
                self._set_policy(key, old, pol, touched)
        if len(prev) + added > len(policies):
            for key in prev.keys() - policies.keys():
                self._set_policy(key, prev[key], None, touched)
        for ns in touched:
            self.ns_version[ns] = self.ns_version.get(ns, 0) + 1
            self.pols_sorted.pop(ns, None)
        self.policies = policies

    def _set_policy(self, key: str, old: NetworkPolicy | None, new: NetworkPolicy | None, touched: set[str]) -> None:
        if old is not None:
            by_name = self.pols_by_ns[old.namespace]
            del by_name[old.name]
            if not by_name:
                del self.pols_by_ns[old.namespace]
            touched.add(old.namespace)
            self.error_policies.discard(key)
            self.pol_prefixes.pop(key, None)
            self.audited_policies -= old.audit
        if new is not None:
            self.pols_by_ns.setdefault(new.namespace, {})[new.name] = new
            touched.add(new.namespace)
            self.audited_policies += new.audit
            if new.errors:
                self.error_policies.add(key)

    def _policies_of(self, ns: str) -> tuple[NetworkPolicy, ...]:
        found = self.pols_sorted.get(ns)
        if found is None:
            found = tuple(sorted(self.pols_by_ns.get(ns, {}).values(), key=lambda p: p.name))
            self.pols_sorted[ns] = found
        return found

    def _update_selecting(self) -> bool:
        """Policies selecting each local pod; whether any of that changed."""
        changed = False
        for key in [k for k in self.selecting if k not in self.local]:
            del self.selecting[key]
            changed = True
        for key, pod in self.local.items():
            version = self.ns_version.get(pod.namespace, 0)
            hit = self.selecting.get(key)
            if hit is not None and hit[0] is pod and hit[1] == version:
                continue
            pols = tuple(p for p in self._policies_of(pod.namespace) if p.selects(pod))
            if hit is None or not _same(hit[2], pols):
                changed = True
            self.selecting[key] = (pod, version, pols, tuple(p.key for p in pols))
        return changed

    def _policy_prefixes(self, pol: NetworkPolicy) -> frozenset[IPNetwork]:
        hit = self.pol_prefixes.get(pol.key)
        if hit is not None and hit[0] is pol:
            return hit[1]
        found = frozenset(_block_prefixes((pol,)))
        self.pol_prefixes[pol.key] = (pol, found)
        return found

    def _prefixes_of(self, pol: NetworkPolicy | _ClusterHolder) -> frozenset[IPNetwork]:
        if isinstance(pol, _ClusterHolder):
            return pol.prefixes
        return self._policy_prefixes(pol)

    # -- cluster policies and Nodes --

    def _update_cluster(self, snap: ClusterSnapshot) -> bool:
        """Take in the snapshot's cluster policies and Nodes; whether the
        Nodes changed (what node peers and their prefixes depend on)."""
        cnps = snap.cluster_policies
        prev = self.cluster_policies
        if len(cnps) != len(prev) or any(prev.get(k) is not v for k, v in cnps.items()):
            self.cluster_version += 1
            ordered = sorted(cnps.values(), key=lambda c: (c.tier != ADMIN, c.priority, c.key))
            self.cluster_sorted = tuple(ordered)
            self.cluster_holders = {k: h for k, h in self.cluster_holders.items() if cnps.get(k) is h.cnp}
        self.cluster_policies = cnps
        nodes = snap.nodes
        prev_nodes = self.nodes
        changed = len(nodes) != len(prev_nodes) or any(prev_nodes.get(k) is not v for k, v in nodes.items())
        if changed:
            self.nodes_version += 1
        self.nodes = nodes
        self.cluster_peers.set_context(nodes, self.node_name, self.node_nets)
        return changed

    def _update_cluster_selecting(self) -> bool:
        """Cluster policies selecting each local pod; whether that changed."""
        changed = False
        for key in [k for k in self.cluster_selecting if k not in self.local]:
            del self.cluster_selecting[key]
            changed = True
        version = self.cluster_version
        for key, pod in self.local.items():
            ns = self.namespaces.get(pod.namespace)
            hit = self.cluster_selecting.get(key)
            if hit is not None and hit[0] is pod and hit[1] == version and hit[2] is ns:
                continue
            ns_labels = self.labels_of_namespace(pod.namespace)
            cnps = tuple(c for c in self.cluster_sorted if c.selects(pod.labels, ns_labels))
            if hit is None or not _same(hit[3], cnps):
                changed = True
            self.cluster_selecting[key] = (pod, version, ns, cnps)
        return changed

    def _cluster_holder(self, cnp: ClusterNetworkPolicy) -> _ClusterHolder:
        holder = self.cluster_holders.get(cnp.key)
        if holder is None or holder.cnp is not cnp or (holder.nodes_version != self.nodes_version
                                                        and has_node_peers(cnp)):
            holder = _ClusterHolder(cnp, self.nodes_version, self.cluster_peers.prefixes(cnp))
            self.cluster_holders[cnp.key] = holder
        return holder

    def notices(self) -> list[str]:
        """Same-priority cluster policies of one tier that select one local
        pod: the API leaves their order undefined; this enforcer orders them
        by name, the same on every node."""
        seen: set[tuple[str, str]] = set()
        out = []
        for _, _, _, cnps in self.cluster_selecting.values():
            for a, b in zip(cnps, cnps[1:], strict=False):
                if a.tier == b.tier and a.priority == b.priority and (a.key, b.key) not in seen:
                    seen.add((a.key, b.key))
                    out.append(f"{a.tier} cluster policies {a.key} and {b.key} have the same priority "
                               f"({a.priority}) and select the same pods: {a.key} is evaluated first (by name)")
        return sorted(out)

    def _ipcache_in_use(self) -> tuple[int, int]:
        """ipcache entries in use: (prefixes, full-length entries), the
        latter counting ipBlock host prefixes apart from pod and node
        addresses (at worst counted twice: room is never overstated)."""
        prefixes = self.cidrs.prefixes
        hosts = prefixes.count_full_length()
        return len(prefixes) - hosts, hosts + len(self.pods_ids.pod_ipcache) + len(self.node_nets)

    def _local_pods_in(self) -> Callable[[str], list[Pod]]:
        by_ns: dict[str, list[Pod]] | None = None

        def pods_in(ns: str) -> list[Pod]:
            nonlocal by_ns
            if by_ns is None:
                by_ns = {}
                for pod in self.local.values():
                    by_ns.setdefault(pod.namespace, []).append(pod)
            return by_ns.get(ns, [])
        return pods_in

    def _update_relevant(self) -> tuple[list[IPNetwork], list[IPNetwork]]:
        """Count in force the prefixes of the policies now selecting local
        pods, and out those of the policies no longer doing so (or of their
        previous versions): the work is that of the policies that changed.
        Returns the prefixes that came into force and those that left."""
        now: dict[str, NetworkPolicy | _ClusterHolder] = {
            pol.key: pol for _, _, pols, _ in self.selecting.values() for pol in pols}
        for _, _, _, cnps in self.cluster_selecting.values():
            for cnp in cnps:
                now["\0cluster:" + cnp.key] = self._cluster_holder(cnp)
        before = self.relevant
        went: list[IPNetwork] = []
        came: list[IPNetwork] = []
        # New versions are counted before old ones are not, so a prefix
        # both name never leaves (nor costs an update of every block).
        old = []
        for key, pol in now.items():
            had = before.get(key)
            if had is None or had[0] is not pol:
                if had is not None:
                    old.append(had[1])
                counted = self._prefixes_of(pol)
                came += self.cidrs.prefixes.add(counted)
                before[key] = (pol, counted)
        for key in [k for k in before if k not in now]:
            old.append(before.pop(key)[1])
        for counted in old:
            went += self.cidrs.prefixes.remove(counted)
        return came, went

    def _endpoints_and_policy(self, out: DesiredState, node: NodeContext, changed_peers: set[PeerKey],
                              idents_changed: bool, cluster_changed: bool) -> None:
        """cluster_changed: the Nodes, this node's addresses or the identity
        universe changed: every endpoint a cluster policy selects is redone
        (tiers.py: its verdicts are written per identity)."""
        live_uids = set()
        ep_pods: dict[int, str] = {}
        recs: dict[str, EndpointEntries] = {}
        redone: list[tuple[EndpointEntries | None, EndpointEntries | None]] = []  # (before, now)
        shared_any = False
        for key in sorted(self.local):
            pod = self.local[key]
            live_uids.add(pod.uid)
            _, _, pols, pol_keys = self.selecting[key]
            out.selected_by[key] = list(pol_keys)
            cluster = self.cluster_selecting[key][3]
            if cluster:
                out.cluster_selected_by[key] = [c.key for c in cluster]
            ifindex = node.interfaces.get(key)
            if ifindex is None:
                out.unplaced.append(key)
                continue
            ep_id = self.c.endpoint_ids.get(pod.uid)
            if ep_id is None:
                out.errors.append(InvalidObjectError(
                    "Pod", pod.namespace, pod.name,
                    f"no endpoint id left (at most {self.c.endpoint_ids.max_id - 1} local pods): its traffic is "
                    f"dropped (fail-closed) until one is free"))
                out.blocked_interfaces.add(ifindex)
                continue
            ips = self.pods_ids.live[key]
            shared = ep_id in ep_pods
            ep_pods.setdefault(ep_id, key)
            old = rec = self.endpoints.get(key)
            if (shared or rec is None or rec.shared or rec.pod is not pod or rec.ep_id != ep_id
                    or rec.ifindex != ifindex or (rec.ips is not ips and rec.ips != ips)
                    or not _same(rec.selecting, pols) or not _same(rec.cluster, cluster)
                    or (cluster_changed and (rec.cluster or rec.programs))
                    or (changed_peers and not changed_peers.isdisjoint(rec.peers))
                    or (idents_changed and rec.any_named)):
                # Two pods with one endpoint id (one uid) are one endpoint to
                # the datapath: the later one's entries merge into the
                # earlier one's (built in order, below).
                rec = self.entries.endpoint(pod, pols, ep_id, ifindex, ips, shared, cluster)
                shared_any |= shared
                redone.append((old, rec))
            recs[key] = rec
        redone += [(rec, None) for key, rec in self.endpoints.items() if key not in recs]
        self.endpoints = recs

        prev = self.prev
        patch = prev is not None and not shared_any and not self.prev_shared
        if patch:
            # Pods' entries never share a key (the key holds the endpoint
            # id): the last result with the redone pods' entries replaced.
            assert prev is not None
            policy = dict(prev.policy)
            dirty: set[PolicyMapKey] = set()
            for before, _ in redone:
                if before is not None:
                    dirty.update(before.policy)
                    for entry in before.policy:
                        del policy[entry]
            for _, now in redone:
                if now is not None:
                    dirty.update(now.policy)
                    policy.update(now.policy)
            out.policy = policy
        else:
            policy = out.policy
            for rec in recs.values():
                if rec.shared:
                    self.entries.fill(rec, policy)
                else:
                    policy.update(rec.policy)
        self.prev_shared = shared_any

        by_policy = out.entries_by_policy
        audits = self.c.audit_all or self.audited_policies or any(c.audit for c in self.cluster_sorted)
        for rec in recs.values():
            if audits:
                audited = self.entries.audited
                out.audited.update(p.key for p in rec.selecting if audited(p))
                out.audited.update(c.key for c in rec.cluster if audited(c))
            out.errors.extend(rec.over_limit)
            out.endpoints.update(rec.endpoints)
            out.rules.update(rec.rules)
            for direction, program in rec.programs.items():
                out.tier_programs[(rec.ep_id, direction)] = program
            for pol_key, n in rec.by_policy:
                by_policy[pol_key] = by_policy.get(pol_key, 0) + n

        if patch:
            ep_dirty: set[IPAddress] = set()
            for before, now in redone:
                for rec in (before, now):
                    if rec is not None:
                        ep_dirty.update(rec.endpoints)
            out._base = prev._token  # type: ignore[union-attr]
            out._changed = {"policy": dirty, "ipcache": self.ipcache_dirty, "endpoints": ep_dirty}

        used: set[PeerKey] = set(self.admission.held_peers()) if self.admission.staged else set()
        for rec in recs.values():
            used |= rec.peers
        used.intersection_update(self.peer_sets.sets)
        self.peer_sets.retain(used)
        self.c.endpoint_ids.retain(live_uids)

    def _forget_ids(self, out: DesiredState) -> None:
        """Ids of content no longer compiled are released (what retain does
        over the whole table, done for what changed)."""
        ids, rules = self.c.identity_ids, self.c.rule_ids
        prev = self.prev
        if self.fresh or prev is None:
            ids.retain(set(out.identities.values()))
            rules.retain(set(out.rules.values()))
            return
        for i in prev.identities.keys() - out.identities.keys():
            ids.forget(prev.identities[i])
        for i, (_, key) in self.pods_ids.touched.items():
            if i not in out.identities:
                ids.forget(key)
        for i in prev.rules.keys() - out.rules.keys():
            rules.forget(prev.rules[i])


