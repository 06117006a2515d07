"""Entries: one local pod's endpoint entries and policy map keys, from the
policies selecting it, the identity sets of the peers their rules name, and
where their ports make a key stop (datapath/policykeys.py, which the
datapath tests and benchmarks use too)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    POLICY_PREFIX_PROTO,
)
from ..datapath.policykeys import PortMatch, port_matches
from ..errors import InvalidObjectError
from ..model.objects import EGRESS, INGRESS, PROTOCOLS, IPAddress, NetworkPolicy, Pod, PolicyPort
from ..records import PolicyMapKey
from .admission import CompileLimits
from .desired import EndpointSpec, RuleRef
from .identities import PodIdentities
from .ids import StableIds
from .peers import PeerKey, PeerSets

DIRECTIONS = ((INGRESS, DIR_INGRESS), (EGRESS, DIR_EGRESS))


class EndpointEntries:
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


class EntryBuilder:
    """Makes a local pod's EndpointEntries."""

    def __init__(self, rule_ids: StableIds[RuleRef], limits: CompileLimits, peers: PeerSets,
                 pods: PodIdentities) -> None:
        self.rule_ids = rule_ids
        self.limits = limits
        self.peers = peers
        self.pods = pods  # identity keys, for egress named ports

    def endpoint(self, pod: Pod, pols: tuple[NetworkPolicy, ...], ep_id: int, ifindex: int,
                  ips: tuple[tuple[IPAddress, int], ...], shared: bool) -> EndpointEntries:
        rec = EndpointEntries(pod, pols, ep_id, ifindex, ips)
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
            self.fill(rec, rec.policy)
        return rec

    def fill(self, rec: EndpointEntries, policy: dict[PolicyMapKey, int]) -> None:
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

    def _policy_entries(self, rec: EndpointEntries, pod: Pod, ep_id: int, pol: NetworkPolicy,
                        policy: dict[PolicyMapKey, int], deps: set[PeerKey]) -> None:
        """One policy's entries for one pod, all or none: past the limit of
        entries per policy and pod, the policy allows this pod nothing (its
        isolation stays) and is reported; generation stops at the limit, so
        a policy's cost is bounded whatever it names."""
        limit = self.limits.max_entries_per_policy_pod
        mine: dict[PolicyMapKey, int] = {}
        for type_name, direction in DIRECTIONS:
            if type_name not in pol.policy_types:
                continue
            for index, rule in enumerate(pol.ingress if direction == DIR_INGRESS else pol.egress):
                if not rule.valid:
                    continue
                ref = RuleRef(pol.key, type_name, index)
                rule_id = self.rule_ids.get(ref)
                rec.rules[rule_id] = ref
                peers = self.peers.union(pol.namespace, rule.peers, deps)  # None = any peer
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
            candidates = peers if peers is not None else self.pods.all_identities()
            for ident in sorted(candidates):
                ident_key = self.pods.keys.get(ident)
                if ident_key is not None:
                    num = ident_key.named_port(name, protocol)  # type: ignore[arg-type]
                    if num is not None:
                        yield key(ident, ep_id, direction, proto, num, plen)


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
