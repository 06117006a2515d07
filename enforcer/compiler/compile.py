"""Compile a cluster snapshot into the datapath state one node needs.

Only what this node enforces is compiled: policy entries for its local pods,
and the ipcache for every address a local pod may meet. Identities are
content-derived: a pod address's identity is (namespace, labels, family,
ipBlock class of the address, named ports), so pods of one workload share
one per family, and everything a selector, an ipBlock or a named port can
tell apart is apart.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_FIRST_ALLOCATED,
    IDENTITY_HOST,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
)
from ..datapath.maps import port_range_prefixes
from ..datapath.sync import MapContents
from ..errors import InvalidObjectError
from ..model.objects import EGRESS, INGRESS, PROTOCOLS, IPAddress, IPNetwork, NetworkPolicy, Peer, Pod
from ..model.selectors import LabelSelector
from ..model.state import ClusterSnapshot
from .ids import EndpointIds, StableIds
from .prefixes import PrefixIndex

DIRECTIONS = ((INGRESS, DIR_INGRESS), (EGRESS, DIR_EGRESS))

# (identity, endpoint_id, direction, protocol, port, prefixlen): one policy
# map key in plain values; protocol 0 and port 0 where the prefix stops first.
PolicyEntry = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class CidrIdentity:
    prefix: IPNetwork


IdentityKey = PodIdentity | CidrIdentity


@dataclass(frozen=True)
class RuleRef:
    policy: str  # namespace/name
    direction: str  # Ingress / Egress
    index: int


@dataclass(frozen=True)
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
    policy: dict[PolicyEntry, int] = field(default_factory=dict)  # -> rule id
    # Read-side context (API, explain): not written to maps.
    rules: dict[int, RuleRef] = field(default_factory=dict)
    identities: dict[int, IdentityKey] = field(default_factory=dict)
    selected_by: dict[str, list[str]] = field(default_factory=dict)  # pod -> policies
    entries_by_policy: dict[str, int] = field(default_factory=dict)
    errors: list[InvalidObjectError] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # local pods without an interface yet

    def map_contents(self) -> MapContents:
        return MapContents(
            ipcache=dict(self.ipcache),
            endpoints={ip: (e.endpoint_id, e.ifindex, e.identity, e.flags) for ip, e in self.endpoints.items()},
            policy=dict(self.policy),
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
    """Keeps the id tables between compilations so ids stay put."""

    def __init__(self, max_endpoint_id: int = 512) -> None:
        self.identity_ids: StableIds[IdentityKey] = StableIds(IDENTITY_FIRST_ALLOCATED, 2**31 - 1)
        self.rule_ids: StableIds[RuleRef] = StableIds(1, 2**32 - 1)
        self.endpoint_ids = EndpointIds(max_endpoint_id)

    def compile(self, snap: ClusterSnapshot, node: NodeContext) -> DesiredState:
        return _Compilation(self, snap, node).run()


class _Compilation:
    def __init__(self, compiler: Compiler, snap: ClusterSnapshot, node: NodeContext) -> None:
        self.c = compiler
        self.snap = snap
        self.node = node
        self.out = DesiredState(errors=list(snap.errors))
        self.ns_labels: dict[str, Mapping[str, str]] = {
            name: ns.labels for name, ns in snap.namespaces.items()}
        self.pods = [p for p in snap.pods.values() if p.is_running and not p.host_network]
        self.local = [p for p in self.pods if p.node_name == node.name]
        self.policies_by_ns: dict[str, list[NetworkPolicy]] = defaultdict(list)
        for pol in snap.policies.values():
            self.policies_by_ns[pol.namespace].append(pol)
            err = pol.error()
            if err is not None:
                self.out.errors.append(err)
        for lst in self.policies_by_ns.values():
            lst.sort(key=lambda p: p.name)
        self.pod_identity: dict[tuple[str, IPAddress], int] = {}  # (pod, ip) -> identity
        self.identities_by_ns: dict[str, list[tuple[int, PodIdentity]]] = defaultdict(list)
        self._peer_cache: dict[tuple[str, Peer], frozenset[int]] = {}

    def labels_of_namespace(self, ns: str) -> Mapping[str, str]:
        return self.ns_labels.get(ns) or {"kubernetes.io/metadata.name": ns}

    # -- identities and ipcache --

    def run(self) -> DesiredState:
        selecting = {p.key: [pol for pol in self.policies_by_ns[p.namespace] if pol.selects(p)]
                     for p in self.local}
        relevant = {pol.key: pol for pols in selecting.values() for pol in pols}
        index = PrefixIndex(self._block_prefixes(relevant.values()))
        self._assign_identities(index)
        self._ipcache(index)
        self._endpoints_and_policy(selecting)
        used = {self.c.identity_ids.key_of(i) for i in self.out.identities}
        self.c.identity_ids.retain({k for k in used if k is not None})
        self.c.rule_ids.retain(set(self.out.rules.values()))
        return self.out

    @staticmethod
    def _block_prefixes(policies: Iterable[NetworkPolicy]) -> set[IPNetwork]:
        out: set[IPNetwork] = set()
        for pol in policies:
            for rule in (*pol.ingress, *pol.egress):
                for peer in rule.peers if rule.valid else ():
                    if peer.ip_block is not None:
                        out.add(peer.ip_block.cidr)
                        out.update(peer.ip_block.excepts)
        return out

    def _identity(self, key: IdentityKey) -> int:
        ident = self.c.identity_ids.get(key)
        self.out.identities[ident] = key
        return ident

    def _assign_identities(self, index: PrefixIndex) -> None:
        seen: set[int] = set()
        for pod in self.pods:
            named = frozenset((p.name, p.protocol, p.port) for p in pod.ports if p.name)
            labels = frozenset(pod.labels.items())
            for ip in pod.ips:
                key = PodIdentity(pod.namespace, labels, ip.version, index.class_of(ip), named)
                ident = self._identity(key)
                self.pod_identity[(pod.key, ip)] = ident
                if ident not in seen:
                    seen.add(ident)
                    self.identities_by_ns[pod.namespace].append((ident, key))

    def _ipcache(self, index: PrefixIndex) -> None:
        ipc = self.out.ipcache
        for prefix in index.prefixes:
            ipc[prefix] = self._identity(CidrIdentity(prefix))
        owners: dict[IPAddress, str] = {}
        for pod in sorted(self.pods, key=lambda p: p.key):
            for ip in pod.ips:
                host = ipaddress.ip_network(ip)
                if ip in owners:
                    self.out.errors.append(InvalidObjectError(
                        "Pod", pod.namespace, pod.name,
                        f"address {ip} is also claimed by running pod {owners[ip]}; keeping {owners[ip]}"))
                    continue
                owners[ip] = pod.key
                ipc[host] = self.pod_identity[(pod.key, ip)]
        for ip in self.node.addresses:
            ipc[ipaddress.ip_network(ip)] = IDENTITY_HOST

    # -- endpoints and policy entries --

    def _endpoints_and_policy(self, selecting: dict[str, list[NetworkPolicy]]) -> None:
        live_uids = set()
        for pod in sorted(self.local, key=lambda p: p.key):
            live_uids.add(pod.uid)
            pols = selecting[pod.key]
            self.out.selected_by[pod.key] = [p.key for p in pols]
            ifindex = self.node.interfaces.get(pod.key)
            if ifindex is None:
                self.out.unplaced.append(pod.key)
                continue
            ep_id = self.c.endpoint_ids.get(pod.uid)
            if ep_id is None:
                self.out.errors.append(InvalidObjectError(
                    "Pod", pod.namespace, pod.name,
                    f"no endpoint id left (at most {self.c.endpoint_ids.max_id - 1} local pods): not enforced"))
                continue
            flags = 0
            for pol in pols:
                if INGRESS in pol.policy_types:
                    flags |= EP_F_INGRESS_ISOLATED
                if EGRESS in pol.policy_types:
                    flags |= EP_F_EGRESS_ISOLATED
            for ip in pod.ips:
                self.out.endpoints[ip] = EndpointSpec(pod.key, ep_id, ifindex, self.pod_identity[(pod.key, ip)], flags)
            for pol in pols:
                before = len(self.out.policy)
                self._policy_entries(pod, ep_id, pol)
                self.out.entries_by_policy[pol.key] = (
                    self.out.entries_by_policy.get(pol.key, 0) + len(self.out.policy) - before)
        self.c.endpoint_ids.retain(live_uids)

    def _policy_entries(self, pod: Pod, ep_id: int, pol: NetworkPolicy) -> None:
        for type_name, direction in DIRECTIONS:
            if type_name not in pol.policy_types:
                continue
            for index, rule in enumerate(pol.ingress if direction == DIR_INGRESS else pol.egress):
                if not rule.valid:
                    continue
                ref = RuleRef(pol.key, type_name, index)
                rule_id = self.c.rule_ids.get(ref)
                self.out.rules[rule_id] = ref
                peers = self._peers(pol.namespace, rule.peers)  # None = any peer
                for entry in self._rule_entries(pod, ep_id, direction, peers, rule.ports):
                    known = self.out.policy.get(entry)
                    if known is None or rule_id < known:  # deterministic owner
                        self.out.policy[entry] = rule_id

    def _rule_entries(self, pod: Pod, ep_id: int, direction: int, peers: frozenset[int] | None,
                      ports) -> Iterable[PolicyEntry]:  # type: ignore[no-untyped-def]
        idents = (IDENTITY_ANY,) if peers is None else tuple(sorted(peers))
        if not ports:
            for ident in idents:
                yield (ident, ep_id, direction, 0, 0, POLICY_PREFIX_EXACT)
            return
        for port in ports:
            proto = PROTOCOLS[port.protocol]
            if port.port is None:
                for ident in idents:
                    yield (ident, ep_id, direction, proto, 0, POLICY_PREFIX_PROTO)
            elif isinstance(port.port, int):
                for start, bits in port_range_prefixes(port.port, port.end_port or port.port):
                    for ident in idents:
                        yield (ident, ep_id, direction, proto, start, POLICY_PREFIX_PROTO + bits)
            elif direction == DIR_INGRESS:
                # Named port, ingress: the selected pod's own container port.
                num = pod.named_port(port.port, port.protocol)
                if num is not None:
                    for ident in idents:
                        yield (ident, ep_id, direction, proto, num, POLICY_PREFIX_PROTO + 16)
            else:
                # Named port, egress: each peer pod's container port. "Any
                # peer" means every pod identity having that port; addresses
                # that are not pods have no named ports.
                candidates = peers if peers is not None else self._all_pod_identities()
                for ident in sorted(candidates):
                    key = self.out.identities.get(ident)
                    if isinstance(key, PodIdentity):
                        num = key.named_port(port.port, port.protocol)
                        if num is not None:
                            yield (ident, ep_id, direction, proto, num, POLICY_PREFIX_PROTO + 16)

    def _all_pod_identities(self) -> frozenset[int]:
        return frozenset(i for lst in self.identities_by_ns.values() for i, _ in lst)

    def _peers(self, policy_ns: str, peers: tuple[Peer, ...]) -> frozenset[int] | None:
        if not peers:
            return None
        out: set[int] = set()
        for peer in peers:
            cache_key = (policy_ns, peer)
            found = self._peer_cache.get(cache_key)
            if found is None:
                found = self._resolve_peer(policy_ns, peer)
                self._peer_cache[cache_key] = found
            out |= found
        return frozenset(out)

    def _resolve_peer(self, policy_ns: str, peer: Peer) -> frozenset[int]:
        if peer.ip_block is not None:
            block = peer.ip_block
            found = set()
            for ident, key in self.out.identities.items():
                if isinstance(key, CidrIdentity):
                    if block.contains_prefix(key.prefix):
                        found.add(ident)
                elif key.block_class is not None and block.contains_prefix(key.block_class):
                    found.add(ident)
            return frozenset(found)
        if peer.namespace_selector is None:
            namespaces = [policy_ns]
        else:
            sel = peer.namespace_selector
            namespaces = [ns for ns in self.identities_by_ns if sel.matches(self.labels_of_namespace(ns))]
        pod_sel = peer.pod_selector or LabelSelector()
        return frozenset(
            ident for ns in namespaces for ident, key in self.identities_by_ns.get(ns, ())
            if pod_sel.matches(dict(key.labels)))
