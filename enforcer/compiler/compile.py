"""Compile a cluster snapshot into the datapath state one node needs.

Only what this node enforces is compiled: policy entries for its local pods,
and the ipcache for every address a local pod may meet. Identities are
content-derived: a pod address's identity is (namespace, labels, family,
ipBlock class of the address, named ports), so pods of one workload share
one per family, and everything a selector, an ipBlock or a named port can
tell apart is apart.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_FIRST_ALLOCATED,
    IDENTITY_HOST,
    IDENTITY_SERVICE_UNWRITTEN,
    POLICY_PREFIX_PROTO,
)
from ..datapath.policykeys import PortMatch, port_matches
from ..datapath.sync import MapContents
from ..errors import InvalidObjectError
from ..model.objects import (
    EGRESS,
    INGRESS,
    PROTOCOLS,
    IPAddress,
    IPBlock,
    IPNetwork,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
)
from ..model.selectors import LabelSelector
from ..records import EndpointIdRecord, EndpointRecord, PolicyMapKey
from ..model.state import ClusterSnapshot
from .admission import Admission, CompileLimits
from .ids import EndpointIds, StableIds
from .prefixes import BlockIndex, PrefixSet
from .services import Frontend, fit_frontends, service_frontends

DIRECTIONS = ((INGRESS, DIR_INGRESS), (EGRESS, DIR_EGRESS))



@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Per address family: a dual-stack pod has one identity per family, so
    an IPv4 ipBlock holding its IPv4 address says nothing of its IPv6 one."""

    namespace: str
    labels: frozenset[tuple[str, str]]
    family: int
    block_class: IPNetwork | None  # innermost ipBlock prefix holding the IP
    named_ports: frozenset[tuple[str, str, int]]  # (name, protocol, port)

    def named_port(self, name: str, protocol: str) -> int | None:
        for n, p, num in self.named_ports:
            if n == name and p == protocol:
                return num
        return None


@dataclass(frozen=True, slots=True)
class CidrIdentity:
    prefix: IPNetwork


IdentityKey = PodIdentity | CidrIdentity


@dataclass(frozen=True, slots=True)
class RuleRef:
    policy: str  # namespace/name
    direction: str  # Ingress / Egress
    index: int


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    pod: str  # namespace/name
    endpoint_id: int
    ifindex: int
    identity: int
    flags: int


@dataclass
class DesiredState:
    ipcache: dict[IPNetwork, int] = field(default_factory=dict)
    endpoints: dict[IPAddress, EndpointSpec] = field(default_factory=dict)
    policy: dict[PolicyMapKey, int] = field(default_factory=dict)  # -> rule id
    services: dict[Frontend, str] = field(default_factory=dict)  # -> Service "ns/name"
    # Read-side context (API, explain): not written to maps.
    rules: dict[int, RuleRef] = field(default_factory=dict)
    identities: dict[int, IdentityKey] = field(default_factory=dict)
    selected_by: dict[str, list[str]] = field(default_factory=dict)  # pod -> policies
    entries_by_policy: dict[str, int] = field(default_factory=dict)
    errors: list[InvalidObjectError] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # local pods without an interface yet
    # Policies whose latest version waits while its prefixes are staged
    # (admission.py): another pass is due at once.
    pending: list[str] = field(default_factory=list)
    # Interfaces of local pods that got no endpoint id: the programs go on
    # them all the same and, finding no endpoint, drop (fail-closed).
    blocked_interfaces: set[int] = field(default_factory=set)
    # What changed since the compiler's previous result (see MapContents).
    _token: object = field(default_factory=object, repr=False, compare=False)
    _base: object = field(default=None, repr=False, compare=False)
    _changed: dict[str, set] | None = field(default=None, repr=False, compare=False)  # type: ignore[type-arg]

    def map_contents(self) -> MapContents:
        return MapContents(
            ipcache=dict(self.ipcache),
            endpoints={ip: EndpointRecord(e.endpoint_id, e.ifindex, e.identity, e.flags)
                       for ip, e in self.endpoints.items()},
            policy=dict(self.policy),
            endpoint_ids={e.endpoint_id: EndpointIdRecord(e.ifindex, e.identity, e.flags)
                          for e in self.endpoints.values()},
            services=set(self.services),
            token=self._token, base=self._base, changed=self._changed,
        )

    def endpoint_by_id(self) -> dict[int, EndpointSpec]:
        return {e.endpoint_id: e for e in self.endpoints.values()}

    def describe(self, kind: str, key: object) -> str:
        """Which object a map entry is for, for error messages."""
        if kind == "policy" and isinstance(key, tuple):
            ref = self.rules.get(self.policy.get(key, -1))
            return f"NetworkPolicy {ref.policy} ({ref.direction.lower()} rule {ref.index})" if ref else f"policy entry {key}"
        if kind == "endpoint" and key in self.endpoints:
            return f"Pod {self.endpoints[key].pod} (address {key})"
        if kind == "service" and key in self.services:
            ip, proto, port = key  # type: ignore[misc]
            return f"Service {self.services[key]} (frontend {ip} {proto}/{port})"
        if kind == "ipcache":
            ident = self.ipcache.get(key)
            what = self.identities.get(ident) if ident is not None else None
            return f"ipcache {key} ({what})" if what else f"ipcache {key}"
        return f"{kind} {key}"


@dataclass
class NodeContext:
    """What the compiler needs to know about the node, gathered by the
    daemon (the compiler does no I/O)."""

    name: str
    addresses: tuple[IPAddress, ...] = ()
    interfaces: Mapping[str, int] = field(default_factory=dict)  # pod key -> host-side ifindex


class Compiler:
    """Keeps the id tables between compilations so ids stay put, and what the
    last compilation worked out, so that the next one only redoes what the
    objects changed since can have changed (see _Incremental). The result of
    every compilation is the same as a fresh compiler's would be, given the
    same ids."""

    def __init__(self, max_endpoint_id: int = 512, limits: CompileLimits | None = None) -> None:
        self.limits = limits or CompileLimits()
        self.identity_ids: StableIds[IdentityKey] = StableIds(IDENTITY_FIRST_ALLOCATED, 2**31 - 1)
        self.rule_ids: StableIds[RuleRef] = StableIds(1, 2**32 - 1)
        self.endpoint_ids = EndpointIds(max_endpoint_id)
        self._state: _Incremental | None = None

    def compile(self, snap: ClusterSnapshot, node: NodeContext) -> DesiredState:
        state = self._state
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
        return out


_EMPTY_SELECTOR = LabelSelector()
_NAME_LABEL = "kubernetes.io/metadata.name"

# What a set of peer identities is computed from (the cache key of a peer):
#   ("ip", IPBlock)                   ipBlock: CIDR and pod identities inside it
#   ("sel", ns selector, pod selector) pods of the namespaces a selector picks
#   ("pod", namespace, pod selector)  pods of the policy's own namespace
PeerKey = tuple


def _is_live(pod: Pod) -> bool:
    return pod.is_running and not pod.host_network


def _host_network(ip: IPAddress) -> IPNetwork:
    """ipaddress.ip_network(ip), made from the integer (no text round trip)."""
    if ip.version == 4:
        return ipaddress.IPv4Network((int(ip), 32))
    if ip.scope_id:  # type: ignore[union-attr]
        return ipaddress.ip_network(ip)
    return ipaddress.IPv6Network((int(ip), 128))


def _same(a: tuple, b: tuple) -> bool:  # type: ignore[type-arg]
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _block_prefixes(policies: Iterable[NetworkPolicy]) -> set[IPNetwork]:
    out: set[IPNetwork] = set()
    for pol in policies:
        for rule in (*pol.ingress, *pol.egress):
            for peer in rule.peers if rule.valid else ():
                if peer.ip_block is not None:
                    out.add(peer.ip_block.cidr)
                    out.update(peer.ip_block.excepts)
    return out


class _Endpoint:
    """One local pod's compiled endpoint and policy entries, and what they
    were computed from."""

    __slots__ = ("pod", "selecting", "ep_id", "ifindex", "ips", "endpoints", "policy", "rules",
                 "by_policy", "peers", "any_named", "shared", "over_limit")

    def __init__(self, pod: Pod, selecting: tuple[NetworkPolicy, ...], ep_id: int, ifindex: int,
                 ips: tuple[tuple[IPAddress, int], ...]) -> None:
        self.pod = pod
        self.selecting = selecting
        self.ep_id = ep_id
        self.ifindex = ifindex
        self.ips = ips
        self.endpoints: dict[IPAddress, EndpointSpec] = {}
        self.policy: dict[PolicyMapKey, int] = {}
        self.rules: dict[int, RuleRef] = {}
        self.by_policy: list[tuple[str, int]] = []
        self.peers: frozenset[PeerKey] = frozenset()
        self.any_named = False  # uses every pod identity (egress named port, any peer)
        self.shared = False  # endpoint id shared with an earlier pod: never reused
        self.over_limit: list[InvalidObjectError] = []  # policies past the entries limit here


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
        self.relevant: dict[str, tuple[NetworkPolicy, frozenset[IPNetwork]]] = {}
        self.admission = Admission(compiler.limits)
        # Running pods with addresses of their own: (address, identity) each.
        self.live: dict[str, tuple[tuple[IPAddress, int], ...]] = {}
        self.local: dict[str, Pod] = {}
        # local pod -> (pod, namespace version, selecting policies, their keys)
        self.selecting: dict[str, tuple[Pod, int, tuple[NetworkPolicy, ...], tuple[str, ...]]] = {}
        # ipBlock prefixes in force; per ipBlock, the prefixes inside it.
        self.prefixes = PrefixSet()
        self.blocks = BlockIndex(self.prefixes)
        self.cidr_ids: dict[IPNetwork, int] = {}
        self.cidr_keys: dict[int, CidrIdentity] = {}
        self.gone_cidr_ids: dict[IPNetwork, int] = {}  # this pass
        # Pod identities in use: references, keys, by namespace (with their
        # labels as a dict, for selectors) and by ipBlock class.
        self.refs: dict[int, int] = {}
        self.keys: dict[int, PodIdentity] = {}
        self.by_ns: dict[str, dict[int, dict[str, str]]] = {}
        self.by_class: dict[IPNetwork | None, set[int]] = {}
        self.touched: dict[int, tuple[bool, PodIdentity]] = {}  # this pass: existed before?
        self._all_pod_ids: frozenset[int] | None = None
        # ipcache of pod addresses: claimants (one key, or a sorted list when
        # several running pods claim an address: the first keeps it).
        self.claims: dict[IPAddress, str | list[str]] = {}
        # Claimed addresses by family, as sorted integers (to find those
        # inside a prefix).
        self.sorted_ips: dict[int, list[int]] = {4: [], 6: []}
        self.conflicts: set[IPAddress] = set()
        self.host: dict[IPAddress, IPNetwork] = {}
        self.pod_ipcache: dict[IPNetwork, int] = {}
        self.ipcache_dirty: set[IPNetwork] = set()  # this pass
        self.node_nets: tuple[IPNetwork, ...] = ()
        self.unwritten_services: dict[IPNetwork, int] = {}  # Service addresses left out (fit_frontends)
        # Identity sets of peers.
        self.peers: dict[PeerKey, frozenset[int]] = {}
        # Local endpoints as last compiled, and the last result.
        self.endpoints: dict[str, _Endpoint] = {}
        self.prev: DesiredState | None = None
        self.prev_shared = False

    # -- one compilation --

    def compile(self, snap: ClusterSnapshot, node: NodeContext) -> DesiredState:
        out = DesiredState(errors=list(snap.errors))
        self.rule_peers: dict[tuple[str, int], tuple[tuple[Peer, ...], frozenset[int], list[PeerKey]]] = {}
        self.touched = {}
        self.ipcache_dirty = set()
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
            snap.policies, self.policies, self._local_pods_in(), self._policy_prefixes, self.prefixes.__contains__,
            lambda block: ("ip", block) in self.peers, self._ipcache_in_use(),
            len(self.prev.policy) if self.prev is not None else 0)
        self._update_policies(policies)
        if self.error_policies:
            errs = self.error_policies
            out.errors.extend(pol.error() for key, pol in policies.items() if key in errs)  # type: ignore[misc]
        out.pending = self.admission.pending()

        # ipBlock prefixes: those of the policies selecting local pods, and
        # those staged for policies waiting to be taken in.
        came = self.prefixes.add(staging)
        went: list[IPNetwork] = []
        if self._update_selecting() or self.fresh:
            came_r, went = self._update_relevant()
            came += came_r
        # Released after the policies taking them over counted them.
        went += self.prefixes.remove(released)
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
        block_changes = self._change_prefixes(came, went) if came or went else {}
        delta = came + went

        # Pod identities and the pod part of the ipcache.
        for key in removed:
            self._drop_pod(key)
        for key in changed:
            self._drop_pod(key)
        if delta:
            self._reclassify(delta)
        self.pods = snap.pods
        for key in changed:
            pod = snap.pods[key]
            if _is_live(pod):
                self._add_pod(key, pod)

        # Identities that came or went in this pass: (identity, key, now there).
        flips = [(i, key, not existed) for i, (existed, key) in self.touched.items() if existed != (i in self.refs)]
        if flips:
            self._all_pod_ids = None

        node_nets = tuple(ipaddress.ip_network(ip) for ip in node.addresses)
        if node_nets != self.node_nets:
            self.ipcache_dirty.update(self.node_nets, node_nets)
            self.node_nets = node_nets
        out.services, left_out = fit_frontends(service_frontends(snap.services, node.addresses),
                                               self.c.limits.services_capacity, node.addresses)
        unwritten = {_host_network(ip): IDENTITY_SERVICE_UNWRITTEN for ips in left_out.values() for ip in ips}
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
        ipc = dict(self.cidr_ids)
        ipc.update(unwritten)
        ipc.update(self.pod_ipcache)
        for net in node_nets:
            ipc[net] = IDENTITY_HOST
        out.ipcache = ipc
        if self.conflicts:
            out.errors.extend(self._conflict_errors())
        identities: dict[int, IdentityKey] = dict(self.keys)
        identities.update(self.cidr_keys)
        out.identities = identities

        changed_peers = self._refresh_peers(flips, ns_changed, block_changes)
        for block in warm:  # a waiting version's blocks, resolved ahead (admission.py)
            self._peer(("ip", block))
        self._endpoints_and_policy(out, node, changed_peers, bool(flips))
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
        if new is not None:
            self.pols_by_ns.setdefault(new.namespace, {})[new.name] = new
            touched.add(new.namespace)
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

    def _ipcache_in_use(self) -> tuple[int, int]:
        """ipcache entries in use: (prefixes, full-length entries), the
        latter counting ipBlock host prefixes apart from pod and node
        addresses (at worst counted twice: room is never overstated)."""
        hosts = self.prefixes.count_full_length()
        return len(self.prefixes) - hosts, hosts + len(self.pod_ipcache) + len(self.node_nets)

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
        now = {pol.key: pol for _, _, pols, _ in self.selecting.values() for pol in pols}
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
                counted = self._policy_prefixes(pol)
                came += self.prefixes.add(counted)
                before[key] = (pol, counted)
        for key in [k for k in before if k not in now]:
            old.append(before.pop(key)[1])
        for counted in old:
            went += self.prefixes.remove(counted)
        return came, went

    def _change_prefixes(self, came: list[IPNetwork], went: list[IPNetwork]
                         ) -> dict[IPBlock, tuple[list[IPNetwork], list[IPNetwork]]]:
        """Identities for the prefixes that came, none for those that went;
        the blocks holding them follow. Returns, per block whose content
        changed, (prefixes in, prefixes out)."""
        ids = self.c.identity_ids
        self.gone_cidr_ids = {}
        for p in went:
            ident = self.cidr_ids.pop(p)
            del self.cidr_keys[ident]
            self.gone_cidr_ids[p] = ident
        for p in came:
            key = CidrIdentity(p)
            ident = self.cidr_ids[p] = ids.get(key)
            self.cidr_keys[ident] = key
        self.ipcache_dirty.update(came)
        self.ipcache_dirty.update(went)
        return self.blocks.apply(came, went)

    # -- identities and the ipcache of pod addresses --

    def _acquire(self, key: PodIdentity) -> int:
        ident = self.c.identity_ids.get(key)
        n = self.refs.get(ident, 0)
        self.refs[ident] = n + 1
        if n == 0:
            self.keys[ident] = key
            self.by_ns.setdefault(key.namespace, {})[ident] = dict(key.labels)
            self.by_class.setdefault(key.block_class, set()).add(ident)
            if ident not in self.touched:
                self.touched[ident] = (False, key)
        return ident

    def _release(self, ident: int) -> None:
        n = self.refs[ident] - 1
        if n:
            self.refs[ident] = n
            return
        del self.refs[ident]
        key = self.keys.pop(ident)
        in_ns = self.by_ns[key.namespace]
        del in_ns[ident]
        if not in_ns:
            del self.by_ns[key.namespace]
        in_class = self.by_class[key.block_class]
        in_class.discard(ident)
        if not in_class:
            del self.by_class[key.block_class]
        if ident not in self.touched:
            self.touched[ident] = (True, key)

    def _add_pod(self, key: str, pod: Pod) -> None:
        labels = frozenset(pod.labels.items())
        named = frozenset((p.name, p.protocol, p.port) for p in pod.ports if p.name)
        ips = tuple((ip, self._acquire(PodIdentity(pod.namespace, labels, ip.version, self.prefixes.class_of(ip), named)))
                    for ip in pod.ips)
        self.live[key] = ips
        for ip, ident in ips:
            self._claim(ip, key, ident)

    def _drop_pod(self, key: str) -> None:
        ips = self.live.pop(key, None)
        if ips is None:
            return
        for ip, ident in ips:
            self._unclaim(ip, key)
            self._release(ident)

    def _identity_of(self, key: str, ip: IPAddress) -> int:
        for addr, ident in self.live[key]:
            if addr == ip:
                return ident
        raise KeyError((key, ip))

    def _set_pod_ipcache(self, net: IPNetwork, ident: int) -> None:
        if self.pod_ipcache.get(net) != ident:
            self.pod_ipcache[net] = ident
            self.ipcache_dirty.add(net)

    def _claim(self, ip: IPAddress, key: str, ident: int) -> None:
        have = self.claims.get(ip)
        if have is None:
            self.claims[ip] = key
            self.host[ip] = net = _host_network(ip)
            self._set_pod_ipcache(net, ident)
            bisect.insort(self.sorted_ips[ip.version], int(ip))
            return
        if isinstance(have, str):
            have = [have]
            self.claims[ip] = have
            self.conflicts.add(ip)
        bisect.insort(have, key)
        if have[0] == key:
            self._set_pod_ipcache(self.host[ip], ident)

    def _unclaim(self, ip: IPAddress, key: str) -> None:
        have = self.claims[ip]
        if isinstance(have, str):
            del self.claims[ip]
            net = self.host.pop(ip)
            del self.pod_ipcache[net]
            self.ipcache_dirty.add(net)
            ints = self.sorted_ips[ip.version]
            del ints[bisect.bisect_left(ints, int(ip))]
            return
        have.remove(key)
        winner = have[0]
        if len(have) == 1:
            self.claims[ip] = winner
            self.conflicts.discard(ip)
        self._set_pod_ipcache(self.host[ip], self._identity_of(winner, ip))

    def _winner(self, ip: IPAddress) -> str:
        have = self.claims[ip]
        return have if isinstance(have, str) else have[0]

    def _reclassify(self, delta: list[IPNetwork]) -> None:
        """Addresses inside a prefix that came or went may have another
        class now: their identities follow."""
        inside: set[IPAddress] = set()
        for p in delta:
            ints = self.sorted_ips[p.version]
            lo = bisect.bisect_left(ints, int(p.network_address))
            hi = bisect.bisect_right(ints, int(p.broadcast_address))
            make = ipaddress.IPv4Address if p.version == 4 else ipaddress.IPv6Address
            inside.update(make(v) for v in ints[lo:hi])
        pods: set[str] = set()
        for ip in inside:
            have = self.claims[ip]
            pods.update((have,) if isinstance(have, str) else have)
        for key in sorted(pods):
            ips = self.live[key]
            new = None
            for i, (ip, ident) in enumerate(ips):
                if ip not in inside:
                    continue
                cls = self.prefixes.class_of(ip)
                old = self.keys[ident]
                if cls == old.block_class:
                    continue
                nid = self._acquire(PodIdentity(old.namespace, old.labels, old.family, cls, old.named_ports))
                self._release(ident)
                if new is None:
                    new = list(ips)
                new[i] = (ip, nid)
                if self._winner(ip) == key:
                    self._set_pod_ipcache(self.host[ip], nid)
            if new is not None:
                self.live[key] = tuple(new)

    def _conflict_errors(self) -> list[InvalidObjectError]:
        found = []
        for ip in self.conflicts:
            owner, *others = self.claims[ip]
            for other in others:
                pod = self.pods[other]
                found.append(((other, pod.ips.index(ip)), InvalidObjectError(
                    "Pod", pod.namespace, pod.name,
                    f"address {ip} is also claimed by running pod {owner}; keeping {owner}")))
        found.sort(key=lambda f: f[0])
        return [e for _, e in found]

    # -- peers --

    @staticmethod
    def _peer_key(policy_ns: str, peer: Peer) -> PeerKey:
        if peer.ip_block is not None:
            return ("ip", peer.ip_block)
        if peer.namespace_selector is not None:
            return ("sel", peer.namespace_selector, peer.pod_selector)
        return ("pod", policy_ns, peer.pod_selector)

    def _peer(self, pk: PeerKey) -> frozenset[int]:
        found = self.peers.get(pk)
        if found is None:
            found = self.peers[pk] = self._resolve(pk)
        return found

    def _resolve(self, pk: PeerKey) -> frozenset[int]:
        if pk[0] == "ip":
            found: set[int] = set()
            by_class = self.by_class
            for p in self.blocks.get(pk[1]):
                found.add(self.cidr_ids[p])
                ids = by_class.get(p)
                if ids:
                    found |= ids
            return frozenset(found)
        if pk[0] == "sel":
            sel = pk[1]
            namespaces = [ns for ns in self.by_ns if sel.matches(self.labels_of_namespace(ns))]
        else:
            namespaces = [pk[1]]
        pod_sel = pk[2] or _EMPTY_SELECTOR
        empty: dict[int, dict[str, str]] = {}
        if pod_sel.is_empty:
            return frozenset(i for ns in namespaces for i in self.by_ns.get(ns, empty))
        return frozenset(i for ns in namespaces for i, labels in self.by_ns.get(ns, empty).items()
                         if pod_sel.matches(labels))

    def _refresh_peers(self, flips: list[tuple[int, PodIdentity, bool]], ns_changed: dict[str, Mapping[str, str]],
                       block_changes: dict[IPBlock, tuple[list[IPNetwork], list[IPNetwork]]]) -> set[PeerKey]:
        """Bring every known peer's identity set up to date: the identities
        that came or went are added or removed where they match, an ipBlock
        gains or loses the CIDR identities of the prefixes that came into it
        or left it; a peer whose namespaces may have changed labels is
        computed anew. Returns the peers whose set changed."""
        changed: set[PeerKey] = set()
        if not self.peers or not (flips or ns_changed or block_changes):
            return changed
        flips_by_ns: dict[str, list[tuple[int, dict[str, str], bool]]] = {}
        class_flips: list[tuple[int, IPNetwork, bool]] = []
        for ident, key, now in flips:
            flips_by_ns.setdefault(key.namespace, []).append((ident, dict(key.labels), now))
            if key.block_class is not None:
                class_flips.append((ident, key.block_class, now))
        relabelled = [(self.labels_of_namespace(ns), before) for ns, before in ns_changed.items()]
        for pk, old in list(self.peers.items()):
            kind = pk[0]
            if kind == "ip":
                moved = block_changes.get(pk[1])
                if not (moved or class_flips):
                    continue
                updates: list[tuple[int, bool]] = []
                if moved:
                    ins, outs = moved
                    updates += [(self.gone_cidr_ids.get(p) or self.cidr_ids[p], False) for p in outs]
                    updates += [(self.cidr_ids[p], True) for p in ins]
                if class_flips:
                    # An identity gone is gone from every set (its class may
                    # have left the block with it); one that came joins the
                    # blocks its class lies in now.
                    inside = self.blocks.get(pk[1])
                    updates += [(i, False) if not now else (i, True) for i, cls, now in class_flips
                                if not now or cls in inside]
                new = _apply_flips(old, updates)
            elif kind == "pod":
                in_ns = flips_by_ns.get(pk[1])
                if not in_ns:
                    continue
                new = _apply_flips(old, _matching(pk[2], in_ns))
            else:
                sel = pk[1]
                if any(sel.matches(now) or sel.matches(before) for now, before in relabelled):
                    new = self._resolve(pk)
                elif flips_by_ns:
                    matching: list[tuple[int, bool]] = []
                    for ns, in_ns in flips_by_ns.items():
                        if sel.matches(self.labels_of_namespace(ns)):
                            matching += _matching(pk[2], in_ns)
                    new = _apply_flips(old, matching)
                else:
                    continue
            if new != old:
                self.peers[pk] = new
                changed.add(pk)
        return changed

    def _peers(self, policy_ns: str, peers: tuple[Peer, ...], deps: set[PeerKey]) -> frozenset[int] | None:
        if not peers:
            return None
        if len(peers) == 1:
            pk = self._peer_key(policy_ns, peers[0])
            deps.add(pk)
            return self._peer(pk)
        # A rule's union is the same for every pod the rule applies to:
        # made once a pass (a rule may name tens of thousands of peers).
        # Keyed by the tuple's id: the snapshot holds it for the pass.
        hit = self.rule_peers.get((policy_ns, id(peers)))
        if hit is not None and hit[0] is peers:
            deps.update(hit[2])
            return hit[1]
        out: set[int] = set()
        keys = []
        for peer in peers:
            pk = self._peer_key(policy_ns, peer)
            keys.append(pk)
            out |= self._peer(pk)
        found = frozenset(out)
        self.rule_peers[(policy_ns, id(peers))] = (peers, found, keys)
        deps.update(keys)
        return found

    def _all_pod_identities(self) -> frozenset[int]:
        if self._all_pod_ids is None:
            self._all_pod_ids = frozenset(self.keys)
        return self._all_pod_ids

    # -- endpoints and policy entries --

    def _endpoints_and_policy(self, out: DesiredState, node: NodeContext, changed_peers: set[PeerKey],
                              idents_changed: bool) -> None:
        live_uids = set()
        ep_pods: dict[int, str] = {}
        recs: dict[str, _Endpoint] = {}
        redone: list[tuple[_Endpoint | None, _Endpoint | None]] = []  # (before, now)
        shared_any = False
        for key in sorted(self.local):
            pod = self.local[key]
            live_uids.add(pod.uid)
            _, _, pols, pol_keys = self.selecting[key]
            out.selected_by[key] = list(pol_keys)
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
            ips = self.live[key]
            shared = ep_id in ep_pods
            ep_pods.setdefault(ep_id, key)
            old = rec = self.endpoints.get(key)
            if (shared or rec is None or rec.shared or rec.pod is not pod or rec.ep_id != ep_id
                    or rec.ifindex != ifindex or (rec.ips is not ips and rec.ips != ips)
                    or not _same(rec.selecting, pols)
                    or (changed_peers and not changed_peers.isdisjoint(rec.peers))
                    or (idents_changed and rec.any_named)):
                # Two pods with one endpoint id (one uid) are one endpoint to
                # the datapath: the later one's entries merge into the
                # earlier one's (built in order, below).
                rec = self._endpoint(pod, pols, ep_id, ifindex, ips, shared)
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
                    self._fill(rec, policy)
                else:
                    policy.update(rec.policy)
        self.prev_shared = shared_any

        by_policy = out.entries_by_policy
        for rec in recs.values():
            out.errors.extend(rec.over_limit)
            out.endpoints.update(rec.endpoints)
            out.rules.update(rec.rules)
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
        used.intersection_update(self.peers)
        if len(used) != len(self.peers):
            self.peers = {pk: v for pk, v in self.peers.items() if pk in used}
        self.blocks.retain({pk[1] for pk in used if pk[0] == "ip"})
        self.c.endpoint_ids.retain(live_uids)

    def _endpoint(self, pod: Pod, pols: tuple[NetworkPolicy, ...], ep_id: int, ifindex: int,
                  ips: tuple[tuple[IPAddress, int], ...], shared: bool) -> _Endpoint:
        rec = _Endpoint(pod, pols, ep_id, ifindex, ips)
        rec.shared = shared  # its entries are made while the result is put together
        flags = 0
        for pol in pols:
            if INGRESS in pol.policy_types:
                flags |= EP_F_INGRESS_ISOLATED
            if EGRESS in pol.policy_types:
                flags |= EP_F_EGRESS_ISOLATED
        key = pod.key
        rec.endpoints = {ip: EndpointSpec(key, ep_id, ifindex, ident, flags) for ip, ident in ips}
        if not rec.shared:
            self._fill(rec, rec.policy)
        return rec

    def _fill(self, rec: _Endpoint, policy: dict[PolicyMapKey, int]) -> None:
        """The pod's policy entries, into `policy` (lowest rule id owns an
        entry); per policy, how many entries it added."""
        deps: set[PeerKey] = set()
        rec.rules = {}
        rec.by_policy = []
        rec.any_named = False
        rec.over_limit = []
        for pol in rec.selecting:
            before = len(policy)
            self._policy_entries(rec, rec.pod, rec.ep_id, pol, policy, deps)
            rec.by_policy.append((pol.key, len(policy) - before))
        rec.peers = frozenset(deps)

    def _policy_entries(self, rec: _Endpoint, pod: Pod, ep_id: int, pol: NetworkPolicy,
                        policy: dict[PolicyMapKey, int], deps: set[PeerKey]) -> None:
        """One policy's entries for one pod, all or none: past the limit of
        entries per policy and pod, the policy allows this pod nothing (its
        isolation stays) and is reported; generation stops at the limit, so
        a policy's cost is bounded whatever it names."""
        limit = self.c.limits.max_entries_per_policy_pod
        mine: dict[PolicyMapKey, int] = {}
        for type_name, direction in DIRECTIONS:
            if type_name not in pol.policy_types:
                continue
            for index, rule in enumerate(pol.ingress if direction == DIR_INGRESS else pol.egress):
                if not rule.valid:
                    continue
                ref = RuleRef(pol.key, type_name, index)
                rule_id = self.c.rule_ids.get(ref)
                rec.rules[rule_id] = ref
                peers = self._peers(pol.namespace, rule.peers, deps)  # None = any peer
                if peers is None and direction == DIR_EGRESS and any(isinstance(p.port, str) for p in rule.ports):
                    rec.any_named = True
                for entry in self._rule_entries(pod, ep_id, direction, peers, rule.ports):
                    known = mine.get(entry)
                    if known is None or rule_id < known:  # deterministic owner
                        mine[entry] = rule_id
                if len(mine) > limit:
                    rec.over_limit.append(InvalidObjectError(
                        "NetworkPolicy", pol.namespace, pol.name,
                        f"compiles to more than {limit} policy entries for pod {pod.key} "
                        f"(--max-entries-per-policy-pod): it allows that pod nothing"))
                    return
        for entry, rule_id in mine.items():
            known = policy.get(entry)
            if known is None or rule_id < known:  # deterministic owner
                policy[entry] = rule_id

    def _rule_entries(self, pod: Pod, ep_id: int, direction: int, peers: frozenset[int] | None,
                      ports: tuple[PolicyPort, ...]) -> Iterator[PolicyMapKey]:
        """A rule's keys for one pod: its peers' identities (IDENTITY_ANY
        for any peer) crossed with where its ports make a key stop
        (policykeys.port_matches, which the datapath tests use too); a named
        port resolves on the pod it names a port of."""
        key = PolicyMapKey
        idents = (IDENTITY_ANY,) if peers is None else tuple(sorted(peers))
        for proto, port, plen in _port_matches(ports):
            if port >= 0:
                for ident in idents:
                    yield key(ident, ep_id, direction, proto, port, plen)
                continue
            name, protocol = ports[-port - 1].port, ports[-port - 1].protocol
            if direction == DIR_INGRESS:
                # Named port, ingress: the selected pod's own container port.
                num = pod.named_port(name, protocol)  # type: ignore[arg-type]
                if num is not None:
                    for ident in idents:
                        yield key(ident, ep_id, direction, proto, num, plen)
                continue
            # Named port, egress: each peer pod's container port. "Any peer"
            # means every pod identity having that port; addresses that are
            # not pods have no named ports.
            candidates = peers if peers is not None else self._all_pod_identities()
            for ident in sorted(candidates):
                ident_key = self.keys.get(ident)
                if ident_key is not None:
                    num = ident_key.named_port(name, protocol)  # type: ignore[arg-type]
                    if num is not None:
                        yield key(ident, ep_id, direction, proto, num, plen)

    # -- id tables --

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
        for i, (_, key) in self.touched.items():
            if i not in out.identities:
                ids.forget(key)
        for i in prev.rules.keys() - out.rules.keys():
            rules.forget(prev.rules[i])


@functools.lru_cache(maxsize=4096)
def _port_matches(ports: tuple[PolicyPort, ...]) -> list[PortMatch]:
    """Where the keys of a rule's ports stop (the same for every pod); a
    named port is (protocol, -(its index + 1), exact port prefix), resolved
    per pod."""
    if not ports:
        return port_matches(None)
    out: list[PortMatch] = []
    for i, port in enumerate(ports):
        proto = PROTOCOLS[port.protocol]
        if isinstance(port.port, str):
            out.append((proto, -(i + 1), POLICY_PREFIX_PROTO + 16))
        else:
            out += port_matches(proto, port.port, port.end_port)
    return out


def _matching(pod_sel: LabelSelector | None, flips: list[tuple[int, dict[str, str], bool]]) -> list[tuple[int, bool]]:
    if pod_sel is None or pod_sel.is_empty:
        return [(i, now) for i, _, now in flips]
    return [(i, now) for i, labels, now in flips if pod_sel.matches(labels)]


def _apply_flips(old: frozenset[int], flips: list[tuple[int, bool]]) -> frozenset[int]:
    if not flips:
        return old
    new = set(old)
    for ident, now in flips:
        if now:
            new.add(ident)
        else:
            new.discard(ident)
    return frozenset(new)
