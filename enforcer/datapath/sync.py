"""Move the pinned maps to a desired content with the fewest writes, in an
order no packet can see half-applied:

  1. policy entries added or changed   (allows exist before they are needed)
  2. ipcache entries added or changed  (a new identity's allows are in place)
  3. endpoints added or changed        (isolation turns on after its allows,
                                        and off before they go), by id first:
                                        a sender must be known by id (services.h)
                                        before its packets can be deferred
  4. Service frontends added, then removed (either way a packet is judged:
                                        before DNAT, or after it)
  5. endpoints removed, then by id
  6. ipcache entries removed
  7. policy entries removed            (after nothing can reach them)

A failed write (a full map, say) is reported with what it was for and not
recorded as applied, so the next pass retries it; the order above means a
missing write can only leave traffic denied, never allowed.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Callable

from ..errors import MapError
from . import bpfsys
from .layout import (
    CT_F_RECHECK,
    CT_F_SERVICE,
    CtEntry,
    CtKey,
    DIR_EGRESS,
    EndpointInfo,
    EndpointKey,
    IPAddress,
    IPNetwork,
    PolicyEntry,
    PolicyKey,
    addr_from_bytes,
)
from .maps import DatapathMaps

log = logging.getLogger(__name__)

# (identity, endpoint_id, direction, protocol, port, prefixlen)
PolicyTuple = tuple[int, int, int, int, int, int]
# (endpoint_id, ifindex, identity, flags)
EndpointTuple = tuple[int, int, int, int]
# endpoint_id -> (ifindex, identity, flags)
EndpointIdTuple = tuple[int, int, int]
# (address, protocol number, port)
FrontendTuple = tuple[IPAddress, int, int]


@dataclass
class MapContents:
    ipcache: dict[IPNetwork, int] = field(default_factory=dict)
    endpoints: dict[IPAddress, EndpointTuple] = field(default_factory=dict)
    policy: dict[PolicyTuple, int] = field(default_factory=dict)
    endpoint_ids: dict[int, EndpointIdTuple] = field(default_factory=dict)
    services: set[FrontendTuple] = field(default_factory=set)
    # Optional hint from a producer that knows what it changed: this content
    # (`token`) equals the content `base` except, at most, at the keys in
    # `changed[kind]` (a kind not named may differ anywhere). MapSync.apply
    # uses it only when `base` is the content it last applied completely, and
    # then compares just those keys instead of every entry.
    token: object = field(default=None, compare=False, repr=False)
    base: object = field(default=None, compare=False, repr=False)
    changed: dict[str, set] | None = field(default=None, compare=False, repr=False)  # type: ignore[type-arg]


@dataclass
class SyncReport:
    written: int = 0
    deleted: int = 0
    failures: list[str] = field(default_factory=list)
    removed_endpoint_ids: set[int] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


def policy_key(t: PolicyTuple) -> PolicyKey:
    identity, ep, direction, proto, port, prefixlen = t
    return PolicyKey(prefixlen=prefixlen, identity=identity, endpoint_id=ep, direction=direction,
                     protocol=proto, dport=socket.htons(port))


def policy_tuple(k: PolicyKey) -> PolicyTuple:
    return (k.identity, k.endpoint_id, k.direction, k.protocol, socket.ntohs(k.dport), k.prefixlen)


class MapSync:
    """Owns what it believes the maps hold; read back from the maps at start
    so a restarted daemon only writes the difference."""

    def __init__(self, maps: DatapathMaps) -> None:
        self.maps = maps
        self.applied = self.read()
        self._applied_token: object = None  # token of the content applied last, when completely

    def read(self) -> MapContents:
        m = self.maps
        return MapContents(
            ipcache=m.identities(),
            endpoints={k.ip(): (v.id, v.ifindex, v.identity, v.flags) for k, v in m["endpoints"].items()},
            policy={policy_tuple(k): v.rule_id for k, v in m["policy"].items()},
            endpoint_ids={int(k.value): (v.ifindex, v.identity, v.flags) for k, v in m["endpoint_ids"].items()},
            services=m.services(),
        )

    def apply(self, want: MapContents, describe: Callable[[str, object], str] = lambda kind, key: f"{kind} {key}") -> SyncReport:
        have = self.applied
        report = SyncReport()

        def attempt(kind: str, key: object, fn: Callable[[], object], record: Callable[[], None]) -> bool:
            """Run one map operation; record it as applied only if it worked."""
            try:
                fn()
            except MapError as e:
                report.failures.append(f"{describe(kind, key)}: {e}")
                return False
            record()
            return True

        def write(kind: str, key: object, fn: Callable[[], None], record: Callable[[], None]) -> None:
            report.written += attempt(kind, key, fn, record)

        def remove(kind: str, key: object, fn: Callable[[], bool], record: Callable[[], None]) -> None:
            report.deleted += attempt(kind, key, fn, record)

        hint = want.changed if want.base is not None and want.base is self._applied_token else None
        policy_writes, policy_gone = _diff(have.policy, want.policy, hint, "policy")
        ipcache_writes, ipcache_gone = _diff(have.ipcache, want.ipcache, hint, "ipcache")
        endpoint_writes, endpoints_gone = _diff(have.endpoints, want.endpoints, hint, "endpoints")
        id_writes, ids_gone = _diff(have.endpoint_ids, want.endpoint_ids, None, "endpoint_ids")
        services_new = [f for f in want.services if f not in have.services]
        services_gone = [f for f in have.services if f not in want.services]

        pol, eps, m = self.maps["policy"], self.maps["endpoints"], self.maps
        for t, rule in policy_writes:
            write("policy", t, lambda t=t, rule=rule: pol.update(policy_key(t), PolicyEntry(rule_id=rule)),
                  lambda t=t, rule=rule: have.policy.__setitem__(t, rule))
        for net, ident in ipcache_writes:
            write("ipcache", net, lambda net=net, ident=ident: m.set_identity(net, ident),
                  lambda net=net, ident=ident: have.ipcache.__setitem__(net, ident))
        for ep_id, info in id_writes:
            write("endpoint", ep_id, lambda ep_id=ep_id, info=info: m.set_endpoint_id(ep_id, *info),
                  lambda ep_id=ep_id, info=info: have.endpoint_ids.__setitem__(ep_id, info))
        for ip, ep in endpoint_writes:
            write("endpoint", ip, lambda ip=ip, ep=ep: eps.update(
                EndpointKey.of(ip), EndpointInfo(id=ep[0], ifindex=ep[1], identity=ep[2], flags=ep[3])),
                lambda ip=ip, ep=ep: have.endpoints.__setitem__(ip, ep))
        for fe in services_new:
            write("service", fe, lambda fe=fe: m.set_service(*fe), lambda fe=fe: have.services.add(fe))
        for fe in services_gone:
            remove("service", fe, lambda fe=fe: m.delete_service(*fe), lambda fe=fe: have.services.discard(fe))
        if endpoints_gone:
            live_ids = {ep[0] for ep in want.endpoints.values()}
            for ip in endpoints_gone:
                if have.endpoints[ip][0] not in live_ids:
                    report.removed_endpoint_ids.add(have.endpoints[ip][0])
                remove("endpoint", ip, lambda ip=ip: eps.delete(EndpointKey.of(ip)),
                       lambda ip=ip: have.endpoints.pop(ip))
        for ep_id in ids_gone:
            remove("endpoint", ep_id, lambda ep_id=ep_id: m.delete_endpoint_id(ep_id),
                   lambda ep_id=ep_id: have.endpoint_ids.pop(ep_id))
        for net in ipcache_gone:
            remove("ipcache", net, lambda net=net: m.delete_identity(net), lambda net=net: have.ipcache.pop(net))
        for t in policy_gone:
            remove("policy", t, lambda t=t: pol.delete(policy_key(t)), lambda t=t: have.policy.pop(t))
        self._applied_token = want.token if not report.failures else None
        return report


def _diff(have: dict, want: dict, hint: dict[str, set] | None, kind: str) -> tuple[list, list]:  # type: ignore[type-arg]
    """(entries of `want` to write, keys of `have` to delete): in `want`'s
    and `have`'s order, or, given a hint, in no particular order and looking
    only at the keys it names (the only ones that can differ)."""
    keys = hint.get(kind) if hint is not None else None
    if keys is not None:
        get, have_get = want.get, have.get
        writes = [(k, v) for k in keys if (v := get(k)) is not None and have_get(k) != v]
        gone = [k for k in keys if k not in want and k in have]
        return writes, gone
    if want == have:  # compares without hashing a key again
        return [], []
    have_get = have.get
    writes = [(k, v) for k, v in want.items() if have_get(k) != v]
    gone = [k for k in have if k not in want] if len(have) + len(writes) > len(want) else []
    return writes, gone


@dataclass(frozen=True)
class TrackedConnection:
    endpoint_id: int
    pod: IPAddress
    peer: IPAddress
    proto: int
    pod_port: int
    peer_port: int
    origin_egress: bool
    reason: int = 0  # the ALLOW_* that opened it (ALLOW_HOST: the node itself sent it)


def _tracked(k: CtKey, v: CtEntry) -> TrackedConnection:
    return TrackedConnection(v.endpoint_id, addr_from_bytes(k.family, k.pod), addr_from_bytes(k.family, k.peer),
                             k.proto, socket.ntohs(k.pod_port), socket.ntohs(k.peer_port), v.origin == DIR_EGRESS,
                             v.reason)


def tracked_connections(maps: DatapathMaps) -> list[tuple[CtKey, TrackedConnection]]:
    return [(k, _tracked(k, v)) for k, v in maps["conntrack"].items()]


def revoke_connections(maps: DatapathMaps, still_allowed: Callable[[TrackedConnection], bool],
                       endpoint_ids_gone: set[int], recheck_services: bool = False) -> int:
    """Delete conntrack entries of endpoints that are gone (their ids will be
    reused) and of connections policy no longer allows. Returns how many.

    An entry kept under a Service address (CT_F_SERVICE) says nothing of the
    backend kube-proxy chose, so policy cannot be evaluated on it here: with
    recheck_services it is flagged CT_F_RECHECK instead, and the datapath
    judges the connection's next packet again after DNAT."""
    ct = maps["conntrack"]
    n = 0
    for key, entry in list(ct.items()):
        conn = _tracked(key, entry)
        if conn.endpoint_id in endpoint_ids_gone:
            n += ct.delete(key)
        elif entry.flags & CT_F_SERVICE:
            if recheck_services and not entry.flags & CT_F_RECHECK:
                entry.flags |= CT_F_RECHECK
                try:
                    ct.update(key, entry, bpfsys.BPF_EXIST)
                except MapError:
                    pass  # expired or evicted meanwhile: nothing to recheck
        elif not still_allowed(conn):
            n += ct.delete(key)
    return n
