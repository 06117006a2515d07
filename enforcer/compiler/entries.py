"""Entries: one local pod's endpoint entries and policy map keys, from the
policies selecting it, the identity sets of the peers their rules name, and
where their ports make a key stop (datapath/policykeys.py, which the
datapath tests and benchmarks use too)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_HOST_JUDGED,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    EP_F_SELF_JUDGED,
    IDENTITY_ANY,
    IDENTITY_SELF,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
)
from ..datapath.policykeys import PortMatch, port_matches
from ..datapath.reasons import Reason
from ..errors import InvalidObjectError
from ..model.objects import EGRESS, INGRESS, PROTOCOLS, IPAddress, NetworkPolicy, Pod, PolicyPort
from ..records import PolicyMapKey, PolicyValue
from .admission import CompileLimits
from .clusterpeers import ClusterPeerSets
from .desired import EndpointSpec, RuleRef
from .identities import PodIdentities
from .ids import StableIds
from .peers import PeerKey, PeerSets
from .tiers import ADMIN, TierProgram, TierRule

if TYPE_CHECKING:
    from ..model.clusterpolicy import ClusterNetworkPolicy

DIRECTIONS = ((INGRESS, DIR_INGRESS), (EGRESS, DIR_EGRESS))
_ALLOW_POLICY = int(Reason["ALLOW_POLICY"])
_ALLOW_SELF = int(Reason["ALLOW_SELF"])


class EndpointEntries:
    """One local pod's compiled endpoint and policy entries, and what they
    were computed from."""

    __slots__ = ("pod", "selecting", "cluster", "ep_id", "ifindex", "ips", "endpoints", "policy", "rules",
                 "by_policy", "peers", "any_named", "shared", "over_limit", "programs")

    def __init__(self, pod: Pod, selecting: tuple[NetworkPolicy, ...], ep_id: int, ifindex: int,
                 ips: tuple[tuple[IPAddress, int], ...], cluster: tuple[ClusterNetworkPolicy, ...] = ()) -> None:
        self.pod = pod
        self.selecting = selecting
        self.cluster = cluster  # cluster policies selecting it, in evaluation order
        self.ep_id = ep_id
        self.ifindex = ifindex
        self.ips = ips
        self.endpoints: dict[IPAddress, EndpointSpec] = {}
        self.policy: dict[PolicyMapKey, PolicyValue] = {}
        self.rules: dict[int, RuleRef] = {}
        self.by_policy: list[tuple[str, int]] = []
        self.peers: frozenset[PeerKey] = frozenset()
        self.any_named = False  # uses every pod identity (egress named port, any peer)
        self.shared = False  # endpoint id shared with an earlier pod: never reused
        self.over_limit: list[InvalidObjectError] = []  # policies past the entries limit here
        self.programs: dict[int, TierProgram] = {}  # direction -> its tiers, where a cluster policy governs it


class EntryBuilder:
    """Makes a local pod's EndpointEntries."""

    def __init__(self, rule_ids: StableIds[RuleRef], limits: CompileLimits, peers: PeerSets,
                 pods: PodIdentities, cluster_peers: ClusterPeerSets | None = None, audit_all: bool = False) -> None:
        self.rule_ids = rule_ids
        self.audit_all = audit_all  # every policy in audit mode (--audit-all)
        self.limits = limits
        self.peers = peers
        self.pods = pods  # identity keys, for egress named ports
        self.cluster_peers = cluster_peers
        # Every identity the ipcache can return this pass (tiers.py encodes
        # verdicts for each).
        self.universe: frozenset[int] = frozenset()

    def endpoint(self, pod: Pod, pols: tuple[NetworkPolicy, ...], ep_id: int, ifindex: int,
                 ips: tuple[tuple[IPAddress, int], ...], shared: bool,
                 cluster: tuple[ClusterNetworkPolicy, ...] = ()) -> EndpointEntries:
        rec = EndpointEntries(pod, pols, ep_id, ifindex, ips, cluster)
        rec.shared = shared  # its entries are made while the result is put together
        flags = 0
        for pol in pols:
            if INGRESS in pol.policy_types:
                flags |= EP_F_INGRESS_ISOLATED
            if EGRESS in pol.policy_types:
                flags |= EP_F_EGRESS_ISOLATED
        if cluster:
            # A cluster policy never isolates, but where it has rules the
            # policy map decides (tiers.py), and the pod's own traffic
            # through a Service is judged too.
            flags |= EP_F_SELF_JUDGED
            if any(c.ingress for c in cluster):
                flags |= EP_F_INGRESS_ISOLATED
            if any(c.egress for c in cluster):
                flags |= EP_F_EGRESS_ISOLATED | EP_F_EGRESS_HOST_JUDGED
        key = pod.key
        rec.endpoints = {ip: EndpointSpec(key, ep_id, ifindex, ident, flags) for ip, ident in ips}
        if not rec.shared:
            self.fill(rec, rec.policy)
        return rec

    def audited(self, pol: NetworkPolicy | ClusterNetworkPolicy) -> bool:
        """Whether a policy is in audit mode: judged, not enforced."""
        return self.audit_all or pol.audit

    def fill(self, rec: EndpointEntries, policy: dict[PolicyMapKey, PolicyValue]) -> None:
        """The pod's policy entries, into `policy` (lowest rule id owns an
        entry); per policy, how many entries it added."""
        deps: set[PeerKey] = set()
        rec.rules = {}
        rec.by_policy = []
        rec.any_named = False
        rec.over_limit = []
        rec.programs = {}
        np_audited = any(map(self.audited, rec.selecting))
        if not rec.cluster and not np_audited:
            for pol in rec.selecting:
                before = len(policy)
                mine = self._policy_entries(rec, rec.pod, rec.ep_id, pol, deps)
                if mine:
                    _merge(mine, policy)
                rec.by_policy.append((pol.key, len(policy) - before))
            rec.peers = frozenset(deps)
            return
        # A cluster policy or one in audit mode: the tiers decide (tiers.py),
        # from NetworkPolicy's entries without the audited policies and,
        # where one is audited, with them.
        enforced: dict[PolicyMapKey, PolicyValue] = {}
        with_audited: dict[PolicyMapKey, PolicyValue] | None = {} if np_audited else None
        for pol in rec.selecting:
            mine = self._policy_entries(rec, rec.pod, rec.ep_id, pol, deps)
            rec.by_policy.append((pol.key, len(mine) if mine else 0))
            if not mine:
                continue
            if not self.audited(pol):
                _merge(mine, enforced)
            if with_audited is not None:
                _merge(mine, with_audited)
        _merge(self._tiers(rec, enforced, with_audited, deps), policy)
        rec.peers = frozenset(deps)

    def _tiers(self, rec: EndpointEntries, np_entries: dict[PolicyMapKey, PolicyValue],
               np_audit_entries: dict[PolicyMapKey, PolicyValue] | None,
               deps: set[PeerKey]) -> dict[PolicyMapKey, PolicyValue]:
        """The pod's entries where a cluster policy or a policy in audit
        mode selects it: in each direction a cluster policy has rules in or
        an audited NetworkPolicy isolates, the whole pipeline's verdicts
        (tiers.py) in place of NetworkPolicy's entries; in the other
        directions, NetworkPolicy's entries, and the pod's own hairpin keeps
        NetworkPolicy's ALLOW_SELF where NetworkPolicy isolates it.
        np_audit_entries: NetworkPolicy's entries with the audited policies,
        None when none is audited."""
        assert self.cluster_peers is not None
        own_ids = frozenset(ident for _, ident in rec.ips)
        pod = rec.pod
        pods = self.pods

        def peer_named_port(ident: int, name: str, protocol: str) -> int | None:
            key = pods.keys.get(ident)
            return key.named_port(name, protocol) if key is not None else None

        out: dict[PolicyMapKey, PolicyValue] = {}
        for type_name, direction in DIRECTIONS:
            np_isolated = any(type_name in p.policy_types for p in rec.selecting if not self.audited(p))
            audited_isolate = np_audit_entries is not None and any(
                type_name in p.policy_types for p in rec.selecting if self.audited(p))
            admin: list[TierRule] = []
            baseline: list[TierRule] = []
            for cnp in rec.cluster:
                rules = cnp.ingress if direction == DIR_INGRESS else cnp.egress
                for index, rule in enumerate(rules):
                    ref = RuleRef(cnp.key, type_name, index, cnp.tier, cnp.source_kind, cnp.priority,
                                  rule.action, rule.name)
                    rule_id = self.rule_ids.get(ref)
                    rec.rules[rule_id] = ref
                    peers = self.cluster_peers.rule_peers(rule, deps)
                    tier_rule = TierRule(cnp.tier, rule.action, peers, rule.ports, rule_id, ref, self.audited(cnp))
                    (admin if cnp.tier == ADMIN else baseline).append(tier_rule)
            mine = {k: v for k, v in np_entries.items() if k.direction == direction}
            if not admin and not baseline and not audited_isolate:
                out.update(mine)
                if np_isolated and rec.cluster:  # EP_F_SELF_JUDGED: the hairpin looks IDENTITY_SELF up
                    out[PolicyMapKey(IDENTITY_SELF, rec.ep_id, direction, 0, 0, POLICY_PREFIX_EXACT)] = \
                        PolicyValue(0, _ALLOW_SELF)
                continue
            mine_audit = None
            if audited_isolate:
                assert np_audit_entries is not None
                mine_audit = {k: v for k, v in np_audit_entries.items() if k.direction == direction}
            program = TierProgram(rec.ep_id, direction, tuple(admin), tuple(baseline), np_isolated, mine,
                                  own_ids, pod.named_port, peer_named_port,
                                  np_isolated_audit=True if audited_isolate else None, np_keys_audit=mine_audit)
            rec.programs[direction] = program
            out.update(program.encode(self.universe))
        return out

    def _policy_entries(self, rec: EndpointEntries, pod: Pod, ep_id: int, pol: NetworkPolicy,
                        deps: set[PeerKey]) -> dict[PolicyMapKey, PolicyValue] | None:
        """One policy's entries for one pod, all or none (None): past the
        limit of entries per policy and pod, the policy allows this pod
        nothing (its isolation stays) and is reported; generation stops at
        the limit, so a policy's cost is bounded whatever it names."""
        limit = self.limits.max_entries_per_policy_pod
        mine: dict[PolicyMapKey, PolicyValue] = {}
        for type_name, direction in DIRECTIONS:
            if type_name not in pol.policy_types:
                continue
            for index, rule in enumerate(pol.ingress if direction == DIR_INGRESS else pol.egress):
                if not rule.valid:
                    continue
                ref = RuleRef(pol.key, type_name, index)
                rule_id = self.rule_ids.get(ref)
                rec.rules[rule_id] = ref
                value = PolicyValue(rule_id, _ALLOW_POLICY)
                peers = self.peers.union(pol.namespace, rule.peers, deps)  # None = any peer
                if peers is None and direction == DIR_EGRESS and any(isinstance(p.port, str) for p in rule.ports):
                    rec.any_named = True
                for entry in self._rule_entries(pod, ep_id, direction, peers, rule.ports):
                    known = mine.get(entry)
                    if known is None or value < known:  # deterministic owner
                        mine[entry] = value
                if len(mine) > limit:
                    rec.over_limit.append(InvalidObjectError(
                        "NetworkPolicy", pol.namespace, pol.name,
                        f"compiles to more than {limit} policy entries for pod {pod.key} "
                        f"(--max-entries-per-policy-pod): it allows that pod nothing"))
                    return None
        return mine

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


def _merge(entries: dict[PolicyMapKey, PolicyValue], into: dict[PolicyMapKey, PolicyValue]) -> None:
    """entries into `into`, the lowest value (rule id) owning a key both
    have: the same owner on every node."""
    for entry, value in entries.items():
        known = into.get(entry)
        if known is None or value < known:
            into[entry] = value


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
