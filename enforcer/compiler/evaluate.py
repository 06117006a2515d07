"""Decide a new connection from compiled state alone, the way the datapath
does: ipcache longest-prefix match, endpoint isolation, policy lookup for the
peer's identity then for any peer, over every prefix length of the port;
the entry found holds the verdict (tiers.py), a miss denies.

Used to explain verdicts and to check the compiler without a kernel; tests
cross-check it against the real programs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_HOST_JUDGED,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
)
from ..datapath.reasons import Reason
from ..datapath.sync import TrackedConnection
from ..records import PolicyMapKey, PolicyValue
from .desired import DesiredState, EndpointSpec, RuleRef
from .tiers import DROPS, tier_of_reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PORTED = (6, 17, 132)


@dataclass
class HookVerdict:
    """One side's decision: the source pod's egress or the destination pod's
    ingress."""

    direction: str
    pod: str
    allowed: bool
    # "not isolated", "host", "allowed by policy", "no rule allows",
    # "accepted by an Admin rule", "denied by a Baseline rule", "default allow", ...
    reason: str
    rules: list[RuleRef] = field(default_factory=list)
    code: int = 0  # the datapath's verdict reason (Reason)
    tier: str = ""  # which tier decided: Admin, NetworkPolicy, Baseline, default
    decider: RuleRef | None = None  # the rule the entry names
    # Allowed, but the policies in audit mode would drop it: that drop's
    # reason (DROP_POLICY, DROP_ADMIN, DROP_BASELINE) and rule (None:
    # NetworkPolicy's default deny); audit_code 0 otherwise.
    audit_code: int = 0
    audit_decider: RuleRef | None = None


@dataclass
class ConnectionVerdict:
    allowed: bool
    hooks: list[HookVerdict]
    src_identity: int
    dst_identity: int


class IpcacheIndex:
    """Longest-prefix match over a compiled ipcache, by prefix length;
    `prefixes_only`: over the prefixes alone, as the datapath's LPM trie
    holds them (full-length entries, pods' and the node's addresses, live in
    the host map: ipcache.h)."""

    def __init__(self, ipcache: Mapping[IPNetwork, int], prefixes_only: bool = False) -> None:
        self._by_len: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        for net, ident in ipcache.items():
            if prefixes_only and net.prefixlen == net.max_prefixlen:
                continue
            self._by_len[net.version].setdefault(net.prefixlen, {})[int(net.network_address)] = ident
        self._lens = {v: sorted(d, reverse=True) for v, d in self._by_len.items()}

    def lookup(self, ip: IPAddress) -> int:
        bits = 32 if ip.version == 4 else 128
        value = int(ip)
        for length in self._lens[ip.version]:
            key = value >> (bits - length) << (bits - length) if length else 0
            found = self._by_len[ip.version][length].get(key)
            if found is not None:
                return found
        return IDENTITY_WORLD


def identity_of(state: DesiredState, ip: IPAddress, prefixes_only: bool = False) -> int:
    attr = "_prefix_index" if prefixes_only else "_ipcache_index"
    index = getattr(state, attr, None)
    if index is None:
        index = IpcacheIndex(state.ipcache, prefixes_only)
        setattr(state, attr, index)  # state is not changed after compiling
    return index.lookup(ip)


def _keys_longest_first(identity: int, endpoint_id: int, direction: int, proto: int,
                        port: int) -> list[PolicyMapKey]:
    """The keys an LPM lookup would match, longest first: plain tuples,
    equal (and hashing equal) to PolicyMapKey, which costs several times
    more to build (revocation judges thousands of connections a pass)."""
    keys: list[Any]
    if proto in PORTED:
        keys = [(identity, endpoint_id, direction, proto, port & _PORT_MASKS[bits], POLICY_PREFIX_PROTO + bits)
                for bits in range(16, -1, -1)]
    else:
        keys = [(identity, endpoint_id, direction, proto, 0, POLICY_PREFIX_PROTO)]
    keys.append((identity, endpoint_id, direction, 0, 0, POLICY_PREFIX_EXACT))
    return keys


# bits -> the mask keeping a port's top `bits` bits
_PORT_MASKS = [(0xFFFF << (16 - bits)) & 0xFFFF for bits in range(17)]


def policy_lookup(policy: dict[PolicyMapKey, PolicyValue], endpoint_id: int, direction: int, identity: int,
                  proto: int, port: int) -> PolicyValue | None:
    """policy.h's policy_lookup: the longest key of the identity, else the
    longest of every peer; None: no entry (denied)."""
    get = policy.get
    for ident in (identity, IDENTITY_ANY):
        for key in _keys_longest_first(ident, endpoint_id, direction, proto, port):
            found = get(key)
            if found is not None:
                return found
    return None


def matching_rule_ids(state: DesiredState, endpoint_id: int, direction: int, identity: int,
                      proto: int, port: int) -> list[int]:
    """Rule ids of every allowing policy entry matching, over both identity
    lookups and every prefix length (the map keeps one rule per key; this
    finds every key that matches)."""
    found = []
    for ident in (identity, IDENTITY_ANY):
        for key in _keys_longest_first(ident, endpoint_id, direction, proto, port):
            value = state.policy.get(key)
            if value is not None and value.rule_id and value.reason not in DROPS:
                found.append(value.rule_id)
    return found


def all_rules_allowing(state: DesiredState, ep: EndpointSpec, direction: int, identity: int,
                       proto: int, port: int) -> list[RuleRef]:
    ids = matching_rule_ids(state, ep.endpoint_id, direction, identity, proto, port)
    return [state.rules[i] for i in dict.fromkeys(ids) if i in state.rules]


def _hook(state: DesiredState, ep: EndpointSpec, direction: int, peer: IPAddress,
          proto: int, port: int, node_sent: bool = True) -> HookVerdict:
    """As enforce.h decides: the node's own addresses pass as a destination,
    and as a source when the node itself sent the packet (`node_sent`);
    a packet that only carries a node address because netfilter
    masqueraded it is judged as that address, by the ipBlock prefixes
    holding it."""
    name = "ingress" if direction == DIR_INGRESS else "egress"
    flag = EP_F_INGRESS_ISOLATED if direction == DIR_INGRESS else EP_F_EGRESS_ISOLATED
    peer_identity = identity_of(state, peer)
    if peer_identity == IDENTITY_HOST:
        if direction == DIR_EGRESS and not ep.flags & EP_F_EGRESS_HOST_JUDGED:
            return HookVerdict(name, ep.pod, True, "host", code=int(Reason["ALLOW_HOST"]))
        if direction == DIR_INGRESS:
            if node_sent:
                return HookVerdict(name, ep.pod, True, "host", code=int(Reason["ALLOW_HOST"]))
            peer_identity = identity_of(state, peer, prefixes_only=True)
    if not ep.flags & flag:
        return HookVerdict(name, ep.pod, True, "not isolated", code=int(Reason["ALLOW_NOT_ISOLATED"]),
                           tier="default")
    return judge(state, ep, direction, peer_identity, proto, port)


_WHY = {"ALLOW_POLICY": "allowed by policy", "DROP_POLICY": "no rule allows",
        "ALLOW_ADMIN": "accepted by an Admin rule", "DROP_ADMIN": "denied by an Admin rule",
        "ALLOW_BASELINE": "accepted by a Baseline rule", "DROP_BASELINE": "denied by a Baseline rule",
        "ALLOW_NOT_ISOLATED": "default allow", "ALLOW_HOST": "host", "ALLOW_SELF": "self"}


def judge(state: DesiredState, ep: EndpointSpec, direction: int, peer_identity: int, proto: int,
          port: int) -> HookVerdict:
    """The policy map's verdict for an isolated endpoint's new flow."""
    name = "ingress" if direction == DIR_INGRESS else "egress"
    value = policy_lookup(state.policy, ep.endpoint_id, direction, peer_identity, proto, port)
    if value is None:
        return HookVerdict(name, ep.pod, False, "no rule allows", code=int(Reason["DROP_POLICY"]),
                           tier="NetworkPolicy")
    reason = Reason(value.reason)
    allowed = value.reason not in DROPS
    decider = state.rules.get(value.rule_id) if value.rule_id else None
    if reason == Reason["ALLOW_POLICY"]:
        rules = all_rules_allowing(state, ep, direction, peer_identity, proto, port)
    else:
        rules = [decider] if decider is not None else []
    return HookVerdict(name, ep.pod, allowed, _WHY.get(reason.name, reason.name.lower()), rules,
                       code=int(reason), tier=tier_of_reason(value.reason), decider=decider,
                       audit_code=value.audit_reason,
                       audit_decider=state.rules.get(value.audit_rule_id) if value.audit_rule_id else None)


def evaluate(state: DesiredState, src: IPAddress, dst: IPAddress, proto: int, port: int) -> ConnectionVerdict:
    """Verdict on a new connection src -> dst:port, as both ends' hooks on
    this node would give it (a hook exists only for local endpoints)."""
    src_id, dst_id = identity_of(state, src), identity_of(state, dst)
    hooks = []
    if (ep := state.endpoints.get(src)) is not None:
        hooks.append(_hook(state, ep, DIR_EGRESS, dst, proto, port))
    if (ep := state.endpoints.get(dst)) is not None:
        hooks.append(_hook(state, ep, DIR_INGRESS, src, proto, port))
    return ConnectionVerdict(all(h.allowed for h in hooks), hooks, src_id, dst_id)


def _connection_verdict(state: DesiredState, endpoints_by_id: dict[int, EndpointSpec],
                        conn: TrackedConnection) -> HookVerdict | None:
    ep = endpoints_by_id.get(conn.endpoint_id)
    if ep is None:
        return None
    direction = DIR_EGRESS if conn.origin_egress else DIR_INGRESS
    port = conn.peer_port if conn.origin_egress else conn.pod_port
    return _hook(state, ep, direction, conn.peer, conn.proto, port,
                 node_sent=conn.reason == Reason["ALLOW_HOST"])


def connection_still_allowed(state: DesiredState, endpoints_by_id: dict[int, EndpointSpec],
                             conn: TrackedConnection) -> bool:
    """Whether the compiled state would still open a tracked connection."""
    verdict = _connection_verdict(state, endpoints_by_id, conn)
    return verdict is not None and verdict.allowed


def connection_not_admin_denied(state: DesiredState, endpoints_by_id: dict[int, EndpointSpec],
                                conn: TrackedConnection) -> bool:
    """False when an Admin-tier Deny now refuses a tracked connection: an
    admin's explicit deny cuts established connections even where the
    daemon keeps them otherwise (--keep-established)."""
    verdict = _connection_verdict(state, endpoints_by_id, conn)
    return verdict is None or verdict.code != Reason["DROP_ADMIN"]
