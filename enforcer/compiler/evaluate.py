"""Decide a new connection from compiled state alone, the way the datapath
does: ipcache longest-prefix match, endpoint isolation, policy lookup for the
peer's identity then for any peer, over every prefix length of the port.

Used to explain verdicts and to check the compiler without a kernel; tests
cross-check it against the real programs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
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
from ..records import PolicyMapKey
from .desired import DesiredState, EndpointSpec, RuleRef

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
    reason: str  # "not isolated", "host", "allowed by policy", "no rule allows"
    rules: list[RuleRef] = field(default_factory=list)


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


def matching_rule_ids(state: DesiredState, endpoint_id: int, direction: int, identity: int,
                      proto: int, port: int) -> list[int]:
    """Rule ids of every policy entry matching, over both identity lookups
    and every prefix length (the map keeps one rule per key; this finds
    every key that matches)."""
    found = []
    for ident in (identity, IDENTITY_ANY):
        if proto in PORTED:
            for bits in range(16, -1, -1):
                masked = port >> (16 - bits) << (16 - bits) if bits else 0
                rid = state.policy.get(PolicyMapKey(ident, endpoint_id, direction, proto, masked,
                                                    POLICY_PREFIX_PROTO + bits))
                if rid is not None:
                    found.append(rid)
        else:
            rid = state.policy.get(PolicyMapKey(ident, endpoint_id, direction, proto, 0, POLICY_PREFIX_PROTO))
            if rid is not None:
                found.append(rid)
        rid = state.policy.get(PolicyMapKey(ident, endpoint_id, direction, 0, 0, POLICY_PREFIX_EXACT))
        if rid is not None:
            found.append(rid)
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
        if direction == DIR_EGRESS or node_sent:
            return HookVerdict(name, ep.pod, True, "host")
        peer_identity = identity_of(state, peer, prefixes_only=True)
    if not ep.flags & flag:
        return HookVerdict(name, ep.pod, True, "not isolated")
    rules = all_rules_allowing(state, ep, direction, peer_identity, proto, port)
    if rules:
        return HookVerdict(name, ep.pod, True, "allowed by policy", rules)
    return HookVerdict(name, ep.pod, False, "no rule allows")


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


def connection_still_allowed(state: DesiredState, endpoints_by_id: dict[int, EndpointSpec],
                             conn: TrackedConnection) -> bool:
    """Whether the compiled state would still open a tracked connection."""
    ep = endpoints_by_id.get(conn.endpoint_id)
    if ep is None:
        return False
    direction = DIR_EGRESS if conn.origin_egress else DIR_INGRESS
    port = conn.peer_port if conn.origin_egress else conn.pod_port
    return _hook(state, ep, direction, conn.peer, conn.proto, port,
                 node_sent=conn.reason == Reason["ALLOW_HOST"]).allowed
