"""Tiers: ClusterNetworkPolicy's pipeline, evaluated offline.

Per direction, a local pod's new flow is judged by, in order:
  Admin cluster policies selecting it (priority, then name; in each, its
  rules in order: the first whose peers and protocols match decides:
  Accept allows, Deny drops, Pass leaves the tier)
  -> NetworkPolicy: final when one isolates the pod in that direction
  -> Baseline cluster policies, likewise (Pass: to the default)
  -> the default: allow.

Every input of that walk is static per (endpoint, direction, peer
identity, protocol, port), so the compiler walks it here and writes only
the outcome: the policy map then holds, for each key, a verdict reason and
the rule that decided (policy.h), and a new flow costs the same two
lookups at most whatever the number of tiers, priorities and rules.

The encoding, per (endpoint, direction), over the LPM keys
`identity | protocol | port`, where a lookup takes the longest key of the
peer's own identity and, when it has none, the longest of every peer
(IDENTITY_ANY). The identities the ipcache can return (the universe: every
pod and CIDR identity compiled, the world, the node, the pod itself) fall
into classes by what the rules can tell apart: which peer sets hold them,
their NetworkPolicy keys, their named ports. Members of a class share one
function, walked once for the class. Then:
  - every peer's keys hold the function that leaves the fewest keys to
    write (of the most common few; usually the largest class's): complete, a
    catch-all for every protocol, per protocol where it differs, and port
    prefixes where a port range differs (a range is its prefix cover, as
    for NetworkPolicy's endPort);
  - each identity of another class gets keys only where its function
    differs from that one: whichever of "its own complete protocol" and
    "only the ports that differ" takes fewer keys.
So a rule naming every pod ("namespaces: {}") costs keys for the few
identities it does not name, not for every pod; a peer no rule singles
out costs nothing. Since an identity outside the largest class needs keys
of its own, the compiler redoes these endpoints whenever the universe
changes (an identity comes or goes), in the same pass that writes the new
identity's ipcache entries, after its policy entries (sync.py).
NetworkPolicy's part is the keys the NetworkPolicy compiler made for the
pod (entries.py), read as the datapath reads them (the longest key of the
identity, else of every peer, else denied), so NetworkPolicy keeps one
definition.

Audit mode: a policy in audit mode (the enforcer.dev/audit annotation, or
--audit-all) takes part in a second walk (walk(audit=True): its rules, and
NetworkPolicy's keys and isolation with the audited policies). verdict()
gives the enforced walk's value and, where it allows and the audited walk
drops, that drop beside it (PolicyValue.audit_reason/audit_rule_id): the
functions, and so the keys, split wherever either walk changes, and the
datapath reads both from the one entry its lookup finds (policy.h).

Special peers: IDENTITY_HOST (this node's addresses, judged in egress only
when a cluster policy governs it: NetworkPolicy's tier allows it, Admin
and Baseline rules on nodes and networks may not) and IDENTITY_SELF (the
pod's own traffic back through a Service: NetworkPolicy leaves it alone,
cluster policies judge it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..datapath.layout import (
    DIR_EGRESS,
    IDENTITY_ANY,
    IDENTITY_HOST,
    IDENTITY_SELF,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
)
from ..datapath.policykeys import port_range_prefixes
from ..datapath.reasons import Reason
from ..model.objects import PROTOCOLS, PolicyPort
from ..records import PolicyMapKey, PolicyValue
from .rulerefs import RuleRef

ADMIN, NETWORK_POLICY, BASELINE, DEFAULT = "Admin", "NetworkPolicy", "Baseline", "default"
ACCEPT, DENY, PASS = "Accept", "Deny", "Pass"
PORTED = (6, 17, 132)
_PORTS = 1 << 16
_ALLOW_ADMIN, _DROP_ADMIN = int(Reason["ALLOW_ADMIN"]), int(Reason["DROP_ADMIN"])
_ALLOW_BASELINE, _DROP_BASELINE = int(Reason["ALLOW_BASELINE"]), int(Reason["DROP_BASELINE"])
_ALLOW_POLICY, _DROP_POLICY = int(Reason["ALLOW_POLICY"]), int(Reason["DROP_POLICY"])
_ALLOW_HOST, _ALLOW_SELF = int(Reason["ALLOW_HOST"]), int(Reason["ALLOW_SELF"])
_ALLOW_DEFAULT = int(Reason["ALLOW_NOT_ISOLATED"])
DROPS = frozenset((_DROP_ADMIN, _DROP_BASELINE, _DROP_POLICY))
_OUTCOME = {(ADMIN, ACCEPT): _ALLOW_ADMIN, (ADMIN, DENY): _DROP_ADMIN,
            (BASELINE, ACCEPT): _ALLOW_BASELINE, (BASELINE, DENY): _DROP_BASELINE}
NP_DENY = PolicyValue(0, _DROP_POLICY)
_TEMPLATE = -1  # the identity of a class's keys before each member's is put in


@dataclass(frozen=True, slots=True)
class TierRule:
    """One cluster policy rule as the walk needs it: its peers' identities
    (None: every peer, only a fail-closed deny-all) and protocols (() every
    protocol; a named port resolves on the destination)."""

    tier: str
    action: str
    peers: frozenset[int] | None
    ports: tuple[PolicyPort, ...]
    rule_id: int
    ref: RuleRef
    audited: bool = False  # its policy is in audit mode: judged (audit verdicts), not enforced


# A pod's own container port by (name, protocol); a peer identity's by
# (identity, name, protocol): None where it has none.
OwnNamedPort = Callable[[str, str], "int | None"]
PeerNamedPort = Callable[[int, str, str], "int | None"]


@dataclass
class TierProgram:
    """What one local endpoint's direction is judged by: kept for explain
    (trace) and made into keys by encode()."""

    endpoint_id: int
    direction: int
    admin: tuple[TierRule, ...]
    baseline: tuple[TierRule, ...]
    np_isolated: bool
    np_keys: dict[PolicyMapKey, PolicyValue]
    self_identities: frozenset[int]  # the pod's own identities (IDENTITY_SELF matches as them)
    own_named_port: OwnNamedPort
    peer_named_port: PeerNamedPort
    # NetworkPolicy's part with the policies in audit mode too, where one
    # selects the pod in this direction (None: none does).
    np_isolated_audit: bool | None = None
    np_keys_audit: dict[PolicyMapKey, PolicyValue] | None = None
    _np_by_ident: dict[int, list[tuple[int, int, int, int, PolicyValue]]] = field(default_factory=dict, repr=False)
    _np_audit_by_ident: dict[int, list[tuple[int, int, int, int, PolicyValue]]] = field(default_factory=dict,
                                                                                        repr=False)

    def __post_init__(self) -> None:
        self._np_by_ident = _by_identity(self.np_keys)
        self._np_audit_by_ident = (self._np_by_ident if self.np_keys_audit is None
                                   else _by_identity(self.np_keys_audit))

    @property
    def audits(self) -> bool:
        """Whether a policy in audit mode takes part: then every verdict is
        walked twice, enforced and with the audited policies (verdict)."""
        return self.np_keys_audit is not None or any(r.audited for r in (*self.admin, *self.baseline))

    # -- the walk --

    def classes(self, universe: frozenset[int]) -> list[frozenset[int]]:
        """The universe split by what the walk can tell apart: membership of
        each rule's peer set, NetworkPolicy keys, named ports (egress: the
        peer's). The node (egress) and the pod itself are classes of their
        own: NetworkPolicy's tier treats them apart."""
        special = {IDENTITY_ANY, IDENTITY_HOST, IDENTITY_SELF}
        parts: list[set[int]] = [set(universe - special)]
        splitters: list[AbstractSet[int]] = []
        seen: set[int] = set()
        for r in (*self.admin, *self.baseline):
            if r.peers is not None and id(r.peers) not in seen:
                seen.add(id(r.peers))
                splitters.append(r.peers)
        for index in {id(self._np_by_ident): self._np_by_ident,
                      id(self._np_audit_by_ident): self._np_audit_by_ident}.values():
            by_np: dict[tuple[tuple[int, int, int, int, PolicyValue], ...], set[int]] = {}
            for ident, entries in index.items():
                if ident not in special:
                    by_np.setdefault(tuple(entries), set()).add(ident)
            splitters += by_np.values()
        if self.direction == DIR_EGRESS:
            for r in (*self.admin, *self.baseline):
                named = [p for p in r.ports if isinstance(p.port, str)]
                if named and r.peers is not None:
                    by_ports: dict[tuple[int | None, ...], set[int]] = {}
                    for ident in r.peers:
                        sig = tuple(self.peer_named_port(ident, str(p.port), p.protocol) for p in named)
                        by_ports.setdefault(sig, set()).add(ident)
                    if len(by_ports) > 1:
                        splitters += by_ports.values()
        for splitter in splitters:
            nxt: list[set[int]] = []
            for part in parts:
                inside = part & splitter if len(part) > len(splitter) else {i for i in part if i in splitter}
                if inside and len(inside) < len(part):
                    nxt.append(inside)
                    nxt.append(part - inside)
                else:
                    nxt.append(part)
            parts = nxt
        out = [frozenset(p) for p in parts if p]
        if self.direction == DIR_EGRESS:
            out.append(frozenset((IDENTITY_HOST,)))
        out.append(frozenset((IDENTITY_SELF,)))
        return out

    def _matches_peer(self, rule: TierRule, ident: int) -> bool:
        if rule.peers is None:
            return True
        if ident == IDENTITY_SELF:
            return not rule.peers.isdisjoint(self.self_identities)
        return ident in rule.peers

    def _port_of(self, port: PolicyPort, ident: int) -> tuple[int, int] | None:
        """A rule port's [start, end], a named one resolved on the
        destination: this pod for ingress (and for its own hairpin), the
        peer for egress."""
        if isinstance(port.port, str):
            if self.direction == DIR_EGRESS and ident != IDENTITY_SELF:
                num = self.peer_named_port(ident, port.port, port.protocol)
            else:
                num = self.own_named_port(port.port, port.protocol)
            return None if num is None else (num, num)
        if port.port is None:
            return (0, _PORTS - 1)
        return (port.port, port.end_port if port.end_port is not None else port.port)

    def _matches_port(self, rule: TierRule, ident: int, proto: int | None, port: int) -> bool:
        if not rule.ports:
            return True
        if proto is None:
            return False
        for p in rule.ports:
            if PROTOCOLS[p.protocol] != proto:
                continue
            span = self._port_of(p, ident)
            if span is not None and span[0] <= port <= span[1]:
                return True
        return False

    def np_value(self, ident: int, proto: int | None, port: int, audit: bool = False) -> PolicyValue:
        """NetworkPolicy's verdict, as the datapath reads its keys (audit:
        with the policies in audit mode)."""
        index = self._np_audit_by_ident if audit else self._np_by_ident
        for who in (ident, IDENTITY_ANY):
            for kproto, lo, hi, plen, value in index.get(who, ()):
                if plen == POLICY_PREFIX_EXACT or (kproto == proto and lo <= port <= hi):
                    return value
        return NP_DENY

    def verdict(self, ident: int, proto: int | None, port: int) -> PolicyValue:
        """What the entry for this flow holds: the enforced walk's verdict
        and, where it allows and the walk with the audited policies drops,
        that drop as the audit verdict (policy.h)."""
        enforced = self.walk(ident, proto, port)
        if not self.audits or enforced.reason in DROPS:
            return enforced
        audited = self.walk(ident, proto, port, audit=True)
        if audited.reason not in DROPS:
            return enforced
        return PolicyValue(enforced.rule_id, enforced.reason, audited.rule_id, audited.reason)

    def walk(self, ident: int, proto: int | None, port: int,
             trace: list[str] | None = None, audit: bool = False) -> PolicyValue:
        """The pipeline's verdict for a new flow with this peer identity,
        protocol (None: one without ports no rule names) and port; audit:
        as if the policies in audit mode were enforced."""
        for rule in self.admin:
            if rule.audited and not audit:
                continue
            if self._matches_peer(rule, ident) and self._matches_port(rule, ident, proto, port):
                if trace is not None:
                    trace.append(f"{rule.ref.describe()}: {rule.action}")
                if rule.action == PASS:
                    break
                return PolicyValue(rule.rule_id, _OUTCOME[(ADMIN, rule.action)])
        np_isolated = self.np_isolated
        if audit and self.np_isolated_audit is not None:
            np_isolated = self.np_isolated_audit
        if np_isolated:
            if ident == IDENTITY_HOST:
                value = PolicyValue(0, _ALLOW_HOST)
            elif ident == IDENTITY_SELF:
                value = PolicyValue(0, _ALLOW_SELF)
            else:
                value = self.np_value(ident, proto, port, audit)
            if trace is not None:
                trace.append("NetworkPolicy: isolated: " + ("allowed" if value.reason not in DROPS
                                                            else "no rule allows") + " (final)")
            return value
        if trace is not None:
            trace.append("NetworkPolicy: not isolated")
        for rule in self.baseline:
            if rule.audited and not audit:
                continue
            if self._matches_peer(rule, ident) and self._matches_port(rule, ident, proto, port):
                if trace is not None:
                    trace.append(f"{rule.ref.describe()}: {rule.action}")
                if rule.action == PASS:
                    break
                return PolicyValue(rule.rule_id, _OUTCOME[(BASELINE, rule.action)])
        if trace is not None:
            trace.append("default: allow")
        # (The pod's own hairpin gets the same default as any peer: its
        # key would cost one more entry per endpoint for a name.)
        if ident == IDENTITY_HOST:
            return PolicyValue(0, _ALLOW_HOST)
        return PolicyValue(0, _ALLOW_DEFAULT)

    # -- the function of one identity --

    def function(self, ident: int) -> Function:
        """The walk's outcome over every protocol and port, for one peer
        identity (IDENTITY_ANY: one that no rule singles out)."""
        bounds: dict[int, set[int]] = {p: {0} for p in PORTED}
        rules = [r for r in (*self.admin, *self.baseline) if self._matches_peer(r, ident)]
        for r in rules:
            for p in r.ports:
                proto = PROTOCOLS[p.protocol]
                span = self._port_of(p, ident)
                if span is not None and proto in bounds:
                    bounds[proto].update((span[0], span[1] + 1))
        for index in (self._np_by_ident, self._np_audit_by_ident):
            for who in {ident, IDENTITY_ANY}:
                for kproto, lo, hi, plen, _ in index.get(who, ()):
                    if plen != POLICY_PREFIX_EXACT and kproto in bounds:
                        bounds[kproto].update((lo, hi + 1))
        other = self.verdict(ident, None, 0)
        per_proto: dict[int, tuple[tuple[int, int, PolicyValue], ...]] = {}
        for proto, points in bounds.items():
            starts = sorted(b for b in points if b < _PORTS)
            segs: list[tuple[int, int, PolicyValue]] = []
            for i, lo in enumerate(starts):
                hi = starts[i + 1] - 1 if i + 1 < len(starts) else _PORTS - 1
                value = self.verdict(ident, proto, lo)
                if segs and segs[-1][2] == value:
                    segs[-1] = (segs[-1][0], hi, value)
                else:
                    segs.append((lo, hi, value))
            per_proto[proto] = tuple(segs)
        return Function(other, tuple(sorted(per_proto.items())))

    # -- keys --

    def encode(self, universe: frozenset[int]) -> dict[PolicyMapKey, PolicyValue]:
        """The keys for every identity of `universe` (and the special
        peers); an identity outside it gets the largest class's verdicts."""
        classes = self.classes(universe)
        functions = [self.function(min(c)) for c in classes]
        special = (IDENTITY_HOST, IDENTITY_SELF)
        # Members of one function, whatever their class.
        members: dict[Function, list[int]] = {}
        for c, fn in zip(classes, functions, strict=True):
            members.setdefault(fn, []).extend(c)
        # Every peer's keys take the function that saves the most keys: of
        # the most common few, the one leaving the fewest to write out.
        candidates = sorted((fn for fn in members if not set(members[fn]) <= set(special)),
                            key=lambda fn: -len(members[fn]))[:4]
        best: tuple[int, dict[PolicyMapKey, PolicyValue]] | None = None
        for every in candidates or [functions[-1]]:
            out: dict[PolicyMapKey, PolicyValue] = {}
            self._encode_whole(IDENTITY_ANY, every, out)
            cost = len(out)
            templates: list[tuple[list[int], dict[PolicyMapKey, PolicyValue]]] = []
            for fn, idents in members.items():
                if fn == every:
                    continue
                template: dict[PolicyMapKey, PolicyValue] = {}
                self._encode_against(_TEMPLATE, fn, every, template)
                cost += len(template) * len(idents)
                templates.append((idents, template))
            if best is not None and cost >= best[0]:
                continue
            for idents, template in templates:
                for ident in idents:
                    for key, value in template.items():
                        out[key._replace(identity=ident)] = value
            best = (cost, out)
        assert best is not None
        return best[1]

    def _key(self, ident: int, proto: int, port: int, plen: int) -> PolicyMapKey:
        return PolicyMapKey(ident, self.endpoint_id, self.direction, proto, port, plen)

    def _encode_whole(self, ident: int, fn: Function, out: dict[PolicyMapKey, PolicyValue]) -> None:
        # Every peer's lookup is the last one: where it would hold
        # NetworkPolicy's default deny, a miss says the same (DROP_POLICY,
        # no rule) and costs less than a hit that walks the whole trie.
        if ident != IDENTITY_ANY or fn.other != NP_DENY:
            out[self._key(ident, 0, 0, POLICY_PREFIX_EXACT)] = fn.other
        for proto, segs in fn.per_proto:
            self._encode_proto(ident, proto, segs, fn.other, out)

    def _encode_proto(self, ident: int, proto: int, segs: tuple[tuple[int, int, PolicyValue], ...],
                      parent: PolicyValue | None, out: dict[PolicyMapKey, PolicyValue]) -> None:
        """One protocol's ports, under a key for the whole protocol unless
        `parent` (the identity's catch-all) already says its most common
        value; parent None: there is none, the protocol key is needed."""
        default = _cheapest_default(segs)
        if default != parent:
            out[self._key(ident, proto, 0, POLICY_PREFIX_PROTO)] = default
        for lo, hi, value in segs:
            if value != default:
                for port, bits in port_range_prefixes(lo, hi):
                    out[self._key(ident, proto, port, POLICY_PREFIX_PROTO + bits)] = value

    def _encode_against(self, ident: int, fn: Function, every: Function,
                        out: dict[PolicyMapKey, PolicyValue]) -> None:
        if fn == every:
            return
        if fn.other != every.other:
            self._encode_whole(ident, fn, out)
            return
        base_of = dict(every.per_proto)
        for proto, segs in fn.per_proto:
            base = base_of[proto]
            if segs == base:
                continue
            differing = list(_differences(segs, base))
            cost_diff = sum(len(port_range_prefixes(lo, hi)) for lo, hi, _ in differing)
            default = _cheapest_default(segs)
            cost_whole = 1 + sum(len(port_range_prefixes(lo, hi)) for lo, hi, v in segs if v != default)
            if cost_diff <= cost_whole:
                for lo, hi, value in differing:
                    for port, bits in port_range_prefixes(lo, hi):
                        out[self._key(ident, proto, port, POLICY_PREFIX_PROTO + bits)] = value
            else:
                self._encode_proto(ident, proto, segs, None, out)


@dataclass(frozen=True, slots=True)
class Function:
    """A peer identity's verdicts: `other` for protocols without ports (and
    any no rule names), per ported protocol the port segments
    (start, end inclusive, verdict), adjacent ones merged."""

    other: PolicyValue
    per_proto: tuple[tuple[int, tuple[tuple[int, int, PolicyValue], ...]], ...]  # by protocol


def _by_identity(keys: dict[PolicyMapKey, PolicyValue]) -> dict[int, list[tuple[int, int, int, int, PolicyValue]]]:
    """NetworkPolicy's keys by identity, each as (protocol, first port, last
    port, prefix length, value), longest first: the order a lookup tries."""
    by: dict[int, list[tuple[int, int, int, int, PolicyValue]]] = {}
    for k, v in keys.items():
        lo, hi = _key_span(k)
        by.setdefault(k.identity, []).append((k.protocol, lo, hi, k.prefixlen, v))
    for entries in by.values():
        entries.sort(key=lambda e: -e[3])  # longest first
    return by


def _key_span(k: PolicyMapKey) -> tuple[int, int]:
    if k.prefixlen <= POLICY_PREFIX_PROTO:
        return 0, _PORTS - 1
    bits = k.prefixlen - POLICY_PREFIX_PROTO
    return k.port, k.port + (1 << (16 - bits)) - 1


def _cheapest_default(segs: tuple[tuple[int, int, PolicyValue], ...]) -> PolicyValue:
    """The value to leave to the protocol's key: the one whose ports would
    take the most prefixes to write out."""
    cost: dict[PolicyValue, int] = {}
    for lo, hi, v in segs:
        cost[v] = cost.get(v, 0) + len(port_range_prefixes(lo, hi))
    return max(cost, key=lambda v: (cost[v], v))


def _differences(segs: tuple[tuple[int, int, PolicyValue], ...], base: tuple[tuple[int, int, PolicyValue], ...]
                 ) -> Iterator[tuple[int, int, PolicyValue]]:
    """Where segs differ from base: (start, end, segs' value)."""
    i = j = 0
    while i < len(segs) and j < len(base):
        lo = max(segs[i][0], base[j][0])
        hi = min(segs[i][1], base[j][1])
        if segs[i][2] != base[j][2]:
            yield lo, hi, segs[i][2]
        if segs[i][1] == hi:
            i += 1
        if base[j][1] == hi:
            j += 1


def tier_of_reason(reason: int) -> str:
    if reason in (_ALLOW_ADMIN, _DROP_ADMIN):
        return ADMIN
    if reason in (_ALLOW_BASELINE, _DROP_BASELINE):
        return BASELINE
    if reason in (_ALLOW_POLICY, _DROP_POLICY):
        return NETWORK_POLICY
    return DEFAULT
