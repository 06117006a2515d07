"""Move the pinned maps to a desired content with the fewest writes, in an
order no packet can see half-applied:

  1. policy entries added or changed   (allows exist before they are needed):
                                        those that deny first, then those that
                                        allow; an endpoint and direction whose
                                        deny could not be written gets none of
                                        its allows this pass
  2. ipcache entries added or changed  (a new identity's allows are in place):
                                        host entries, then prefixes longest
                                        first; a prefix waits while a more
                                        specific entry inside it could not be
                                        written
  3. endpoints added or changed        (isolation turns on after its allows,
                                        and off before they go), by id first:
                                        a sender must be known by id (services.h)
                                        before its packets can be deferred
  4. Service frontends added, then removed (either way a packet is judged:
                                        before DNAT, or after it)
  5. endpoints removed, then by id
  6. policy entries removed            (removing an allow never opens anything):
                                        every-peer keys before one peer's, each
                                        shortest prefix first
  7. ipcache entries removed           prefixes shortest first, then host
                                        entries; one waits while a write it
                                        overlaps could not be done, or while a
                                        removal holding it waits

and, only when a write failed for lack of room in a map this pass removed
entries from:

  8. those writes once more, in the order 1-4 (with the prefixes they held
     back), then the removals of 7 that waited on them.

So a full map does not hold back what denies or revokes (isolation going
on, entries going) and an allow whose entries fit once this pass's removals
made room is in force at the end of the same pass. A write that still fails
is not recorded as applied, so the next pass retries it; the report counts
such entries per map and reason and names the objects they were for, with a
few messages, never one string per entry.

Why no step allows what both the old and the new state deny. A new flow is
allowed (here, where the maps decide) when its endpoint is not isolated in
that direction, or a policy entry allows the peer address's identity. Take
each term during a pass:

- isolation: an endpoint's entry is written whole, so it holds its old or its
  new flags; not isolated in a state means that state allows everything of
  the endpoint in that direction. A removed endpoint's packets are dropped.
  Endpoint writes happen whatever policy writes failed: isolation goes on
  even when its allows could not be written (fail closed).
- policy entries: every entry in the map is the old state's or the new one's
  (1 adds, 6 and 8 only remove or add new ones). Entries hold verdicts (a
  cluster policy's Deny over a wider allow), so a lookup must not mix an
  old allow with new keys that no longer cover it. A lookup takes the first
  hit in this priority: the peer's own keys, longest first, then the
  every-peer keys, longest first. In 1, while deny values are written, every
  old key is still there and every new value present denies, so an allowing
  hit is an old key that is also the old state's first hit; once the allows
  are written, every new key holds its new value, so an allowing hit with a
  new value is the new state's first hit, and one with an old value (an
  old-only key) is preceded by no old key (all are there) and is the old
  state's. In 6, removals go lowest priority first, so an old-only key still
  there has every higher-priority old key still there too: an allowing hit
  is the old or the new state's first hit, as before.
- the peer's identity, found by a host entry, else the longest prefix. Each
  address resolves, at every moment, to the identity the old state gives it
  or the one the new state gives it. Writes: when a prefix is written, every
  new entry more specific than it is already in (an address inside one of
  those keeps resolving there), or the prefix waits; so an address it
  captures is one whose new longest match it is. Removals: when a prefix
  goes, every less specific old-only prefix around it has gone already
  (shortest first), and no write overlapping it is missing, so its addresses
  fall back to the entry the new state gives them. A removal that cannot be
  shown safe this way waits (step 7); a failed write therefore leaves its
  addresses on their old identity and moves no other address.
  Without this order a full map could open traffic: an ipBlock `except`
  prefix removed (or a new prefix written) while a more specific entry's
  write failed would hand its addresses to the enclosing allowed block.

Hence a packet passes only through the old or the new isolation (what that
state allows), or through an old or new entry meeting the peer's old or new
identity. Old with old and new with new are what the two states allow. The
cross terms (a pod's old identity meeting a new entry between 1 and 2, its
new identity meeting an old entry between 2 and 6, or for as long as the
pod's ipcache write fails) are what the cluster allows when the pod's change
and the policy's are seen one after the other, as a watch may deliver them;
no order of multi-map writes avoids them short of versioned maps. Nothing
in 5-8 adds to them: 5 and 6 only remove, 7 only moves addresses to their new
identity, 8 writes new entries under the rules of 1-4.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ..errors import MapError, MapFullError
from ..records import EndpointIdRecord, EndpointRecord, Frontend, PolicyMapKey, PolicyValue
from . import bpfsys
from .layout import (
    CT_F_RECHECK,
    CT_F_SERVICE,
    DIR_EGRESS,
    IDENTITY_ANY,
    CtEntry,
    CtKey,
    EndpointInfo,
    EndpointKey,
    IPAddress,
    IPNetwork,
    PolicyEntry,
    addr_from_bytes,
)
from .maps import DatapathMaps
from .policykeys import from_policy_key, to_policy_key
from .reasons import Reason

# The verdicts a policy entry may hold that drop (policy.h policy_reason_drops).
_DROP_REASONS = frozenset(int(Reason[n]) for n in ("DROP_POLICY", "DROP_ADMIN", "DROP_BASELINE"))

log = logging.getLogger(__name__)

@dataclass
class MapContents:
    ipcache: dict[IPNetwork, int] = field(default_factory=dict)
    endpoints: dict[IPAddress, EndpointRecord] = field(default_factory=dict)
    policy: dict[PolicyMapKey, PolicyValue] = field(default_factory=dict)
    endpoint_ids: dict[int, EndpointIdRecord] = field(default_factory=dict)
    services: set[Frontend] = field(default_factory=set)
    # Optional hint from a producer that knows what it changed: this content
    # (`token`) equals the content `base` except, at most, at the keys in
    # `changed[kind]` (a kind not named may differ anywhere). MapSync.apply
    # uses it only when `base` is the content it last applied completely, and
    # then compares just those keys instead of every entry.
    token: object = field(default=None, compare=False, repr=False)
    base: object = field(default=None, compare=False, repr=False)
    changed: Mapping[str, AbstractSet[object]] | None = field(default=None, compare=False, repr=False)


# How a write that did not happen is counted (SyncReport.not_written).
FULL = "full"    # the map had no room
OTHER = "other"  # any other error
HELD = "held"    # an ipcache prefix waiting for a more specific entry that could not be written
REASONS = (FULL, OTHER, HELD)
# The maps MapSync writes, as reports and metrics name them.
WRITTEN_MAPS = ("policy", "ipcache", "ipcache_hosts", "endpoints", "endpoint_ids", "services")
SAMPLE_MAX = 10  # messages a report keeps
HELD_MESSAGE = "held back: a more specific ipcache entry inside it could not be written"
POLICY_HELD_MESSAGE = "held back: a deny entry of the same endpoint and direction could not be written"

# What describe(kind, key) may return: "Kind namespace/name (detail)", or
# the object and the detail apart.
Description = str | tuple[str, str]


def split_description(text: Description) -> tuple[str, str]:
    """(object, detail) of a describe() answer: "NetworkPolicy ns/a (ingress
    rule 0)" -> ("NetworkPolicy ns/a", "ingress rule 0")."""
    if isinstance(text, tuple):
        return text
    head, sep, rest = text.partition(" (")
    if sep and rest.endswith(")"):
        return head, rest[:-1]
    return text, ""


def _describe_by_kind(kind: str, key: object) -> Description:
    return kind, str(key)


@dataclass
class Touched:
    """The entries whose value may differ between the content a pass was
    asked for and the one the pass before it was asked for: what a
    connection's verdict depends on (revoke.py). Exact given the hint
    MapSync.apply trusts, and conservative: it also holds what the previous
    pass failed to write or held back (the maps, and so MapSync's
    comparison, still had the older value there)."""

    policy: set[PolicyMapKey] = field(default_factory=set)
    ipcache: set[IPNetwork] = field(default_factory=set)
    endpoint_ids: set[int] = field(default_factory=set)  # endpoints changed, by address or by id, old or new id

    def update(self, other: Touched) -> None:
        self.policy |= other.policy
        self.ipcache |= other.ipcache
        self.endpoint_ids |= other.endpoint_ids

    def __bool__(self) -> bool:
        return bool(self.policy or self.ipcache or self.endpoint_ids)


@dataclass
class SyncReport:
    written: int = 0
    deleted: int = 0
    removed_endpoint_ids: set[int] = field(default_factory=set)
    # Entries this pass left unwritten (or, rarely, a removal that failed),
    # by map ("policy", "ipcache", "ipcache_hosts", "endpoints",
    # "endpoint_ids", "services") and reason (FULL, OTHER, HELD).
    not_written: dict[str, dict[str, int]] = field(default_factory=dict)
    # The objects those entries were for (describe's object part) and how
    # many entries each, in the order they first failed.
    objects: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)  # the first SAMPLE_MAX: "object (detail): error"
    held_removals: int = 0  # ipcache entries left in place for a write that failed (step 7)
    retried: int = 0        # writes tried again after this pass's removals made room (step 8)
    touched: Touched = field(default_factory=Touched)  # what verdicts may have changed on (revoke.py)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)

    @property
    def failed(self) -> int:
        """Entries not written."""
        return sum(n for by_reason in self.not_written.values() for n in by_reason.values())

    @property
    def failures(self) -> list[str]:
        """A few messages; empty exactly when every write went in."""
        return self.samples

    @property
    def complete(self) -> bool:
        """The maps hold the content asked for."""
        return not self.not_written and not self.held_removals


class MapSync:
    """Owns what it believes the maps hold; read back from the maps at start
    so a restarted daemon only writes the difference."""

    def __init__(self, maps: DatapathMaps) -> None:
        self.maps = maps
        self.applied = self.read()
        self._applied_token: object = None  # token of the content applied last, when completely
        self._unsettled = Touched()  # what the last pass did not write or remove: still to tell revocation

    def read(self) -> MapContents:
        m = self.maps
        return MapContents(
            ipcache=m.identities(),
            endpoints={k.ip(): EndpointRecord(v.id, v.ifindex, v.identity, v.flags) for k, v in m["endpoints"].items()},
            policy={from_policy_key(k): PolicyValue(v.rule_id, v.reason, v.audit_rule_id, v.audit_reason)
                    for k, v in m["policy"].items()},
            endpoint_ids={int(k.value): EndpointIdRecord(v.ifindex, v.identity, v.flags)
                          for k, v in m["endpoint_ids"].items()},
            services=m.services(),
        )

    def apply(self, want: MapContents,
              describe: Callable[[str, object], Description] = _describe_by_kind) -> SyncReport:
        """Write the difference in the order of the module's docstring.
        describe(kind, key) names the object an entry is for (kind: policy,
        ipcache, endpoint, service); it is asked only about entries that
        could not be written."""
        have = self.applied
        report = SyncReport()
        hint = want.changed if want.base is not None and want.base is self._applied_token else None
        policy_writes, policy_gone = _diff(have.policy, want.policy, hint, "policy")
        ipcache_writes, ipcache_gone = _diff(have.ipcache, want.ipcache, hint, "ipcache")
        endpoint_writes, endpoints_gone = _diff(have.endpoints, want.endpoints, hint, "endpoints")
        id_writes, ids_gone = _diff(have.endpoint_ids, want.endpoint_ids, None, "endpoint_ids")
        services_new = [(f, None) for f in want.services if f not in have.services]
        services_gone = [f for f in have.services if f not in want.services]
        if endpoints_gone:
            live_ids = {ep[0] for ep in want.endpoints.values()}
            report.removed_endpoint_ids = {have.endpoints[ip][0] for ip in endpoints_gone} - live_ids
        touched = report.touched
        touched.update(self._unsettled)
        touched.policy.update(k for k, _ in policy_writes)
        touched.policy.update(policy_gone)
        touched.ipcache.update(k for k, _ in ipcache_writes)
        touched.ipcache.update(ipcache_gone)
        touched.endpoint_ids.update(_endpoint_ids_of([ip for ip, _ in endpoint_writes] + endpoints_gone,
                                                     have.endpoints, want.endpoints))
        touched.endpoint_ids.update(i for i, _ in id_writes)
        touched.endpoint_ids.update(ids_gone)

        p = _Pass(self.maps, have, report)
        p.write_policy(policy_writes)                           # 1
        p.write_ipcache(ipcache_writes)                         # 2
        p.write("endpoint_ids", id_writes)                      # 3
        p.write("endpoints", endpoint_writes)
        p.write("services", services_new)                       # 4
        p.remove("services", services_gone)
        p.remove("endpoints", endpoints_gone)                   # 5
        p.remove("endpoint_ids", ids_gone)
        p.remove("policy", _lowest_priority_first(policy_gone))  # 6
        held = p.remove_ipcache(ipcache_gone)                   # 7
        if p.retry():                                           # 8
            held = p.remove_ipcache(held)
        p.finish(describe, held)
        self._applied_token = want.token if report.complete else None
        self._unsettled = p.unsettled(held, have.endpoints, want.endpoints)
        return report


def _endpoint_ids_of(ips: list[IPAddress], *by_ip: Mapping[IPAddress, EndpointRecord]) -> set[int]:
    """The endpoint ids the addresses have in any of the contents given."""
    out = set()
    for ip in ips:
        for m in by_ip:
            if (rec := m.get(ip)) is not None:
                out.add(rec[0])
    return out


def _lowest_priority_first(keys: list[PolicyMapKey]) -> list[PolicyMapKey]:
    """Step 6's order: every-peer keys before a peer's own, each by prefix
    length, shortest first (bucketed: linear)."""
    buckets: dict[tuple[bool, int], list[PolicyMapKey]] = {}
    for k in keys:
        buckets.setdefault((k.identity != IDENTITY_ANY, k.prefixlen), []).append(k)
    return [k for b in sorted(buckets) for k in buckets[b]]


def _denies_first(writes: list[tuple[PolicyMapKey, PolicyValue]]) -> list[tuple[PolicyMapKey, PolicyValue]]:
    """Step 1's order (linear: a cold sync writes every entry)."""
    denies = [w for w in writes if w[1][1] in _DROP_REASONS]
    if not denies:
        return writes
    return denies + [w for w in writes if w[1][1] not in _DROP_REASONS]


class _Table:
    """One kind of entry: how to write and delete it, and what MapSync
    believes the map holds."""

    __slots__ = ("kind", "map", "write", "delete", "have")

    def __init__(self, kind: str, map_name: str, write: Callable[[Any, Any], object],
                 delete: Callable[[Any], bool], have: dict[Any, Any] | set[Any]) -> None:
        self.kind = kind    # as describe() knows it
        self.map = map_name  # as the report and metrics name it
        self.write = write
        self.delete = delete
        self.have = have


def _ipcache_map(net: IPNetwork) -> str:
    return "ipcache_hosts" if net.prefixlen == net.max_prefixlen else "ipcache"


class _Pass:
    """The map operations of one MapSync.apply and what did not happen."""

    def __init__(self, maps: DatapathMaps, have: MapContents, report: SyncReport) -> None:
        m, pol, eps = maps, maps["policy"], maps["endpoints"]
        self.report = report
        self.tables = {
            "policy": _Table("policy", "policy",
                             lambda t, v: pol.update(to_policy_key(t), PolicyEntry(rule_id=v[0], reason=v[1],
                                                                                      audit_rule_id=v[2],
                                                                                      audit_reason=v[3])),
                             lambda t: pol.delete(to_policy_key(t)), have.policy),
            "ipcache": _Table("ipcache", "ipcache", m.set_identity, m.delete_identity, have.ipcache),
            "endpoint_ids": _Table("endpoint", "endpoint_ids", lambda i, info: m.set_endpoint_id(i, *info),
                                   m.delete_endpoint_id, have.endpoint_ids),
            "endpoints": _Table("endpoint", "endpoints", lambda ip, ep: eps.update(
                EndpointKey.of(ip), EndpointInfo(id=ep[0], ifindex=ep[1], identity=ep[2], flags=ep[3])),
                lambda ip: eps.delete(EndpointKey.of(ip)), have.endpoints),
            "services": _Table("service", "services", lambda fe, _: m.set_service(*fe),
                               lambda fe: m.delete_service(*fe), have.services),
        }
        # (table, key) -> (value, reason, map, message key) of what did not happen; a removal's value is _GONE
        self.failed: dict[tuple[str, object], tuple[object, str, str, object]] = {}
        self.messages: dict[object, str] = {HELD: HELD_MESSAGE}
        self.pending = _Prefixes()  # ipcache entries whose new value is not in the map
        self.freed: set[str] = set()  # maps this pass removed an entry from

    def _map(self, table: _Table, key: object) -> str:
        return _ipcache_map(key) if table.map == "ipcache" else table.map  # type: ignore[arg-type]

    def _fail(self, name: str, key: object, value: object, reason: str, map_name: str, e: MapError | None,
              held_message: str = HELD_MESSAGE) -> None:
        msg_key: object = HELD if held_message == HELD_MESSAGE else held_message
        self.messages.setdefault(msg_key, held_message)
        if e is not None:
            msg_key = (map_name, e.errno, e.op)
            if msg_key not in self.messages:
                self.messages[msg_key] = str(e)
        self.failed[(name, key)] = (value, reason, map_name, msg_key)
        if name == "ipcache" and value is not _GONE:
            self.pending.add(key)  # type: ignore[arg-type]

    def write(self, name: str, items: list) -> None:
        t = self.tables[name]
        fn, have, failed = t.write, t.have, self.failed
        is_set = isinstance(have, set)
        n = 0
        for key, value in items:
            try:
                fn(key, value)
            except MapError as e:
                self._fail(name, key, value, FULL if isinstance(e, MapFullError) else OTHER, self._map(t, key), e)
                continue
            if is_set:
                have.add(key)  # type: ignore[union-attr]
            else:
                have[key] = value  # type: ignore[index]
            n += 1
            if failed and failed.pop((name, key), None) is not None and name == "ipcache":
                self.pending.discard(key)
        self.report.written += n

    def write_policy(self, items: list[tuple[PolicyMapKey, PolicyValue]]) -> None:
        """Step 1: the entries that deny, then those that allow; an allow of
        an endpoint and direction where a deny could not be written waits
        (HELD): the deny it would have sat under is missing, so the allow
        could reach further than either state does (a peer falling back to
        an every-peer allow past its own missing deny)."""
        ordered = _denies_first(items)
        n_denies = sum(1 for w in ordered if w[1][1] in _DROP_REASONS)
        if not n_denies:
            self.write("policy", ordered)
            return
        self.write("policy", ordered[:n_denies])
        allows = ordered[n_denies:]
        blocked = {(k[1], k[2]) for (name, k), (value, *_) in self.failed.items()  # type: ignore[index]
                   if name == "policy" and value is not _GONE and value[1] in _DROP_REASONS}  # type: ignore[index]
        if blocked:
            held = [w for w in allows if (w[0].endpoint_id, w[0].direction) in blocked]
            allows = [w for w in allows if (w[0].endpoint_id, w[0].direction) not in blocked]
            for key, value in held:
                self._fail("policy", key, value, HELD, "policy", None, POLICY_HELD_MESSAGE)
        self.write("policy", allows)

    def write_ipcache(self, items: list) -> None:
        """Host entries, then prefixes longest first; a prefix with an
        unwritten entry inside it waits (HELD)."""
        hosts: list[tuple[IPNetwork, int]] = []
        prefixes: list[tuple[IPNetwork, int]] = []
        for item in items:
            (hosts if item[0].prefixlen == item[0].max_prefixlen else prefixes).append(item)
        self.write("ipcache", hosts)
        prefixes.sort(key=lambda item: item[0].prefixlen, reverse=True)
        for net, ident in prefixes:
            if self.pending and self.pending.inside(net):
                self._fail("ipcache", net, ident, HELD, "ipcache", None)
            else:
                self.write("ipcache", [(net, ident)])

    def remove(self, name: str, keys: list) -> None:
        t = self.tables[name]
        fn, have = t.delete, t.have
        is_set = isinstance(have, set)
        n = 0
        for key in keys:
            try:
                present = fn(key)
            except MapError as e:
                self._fail(name, key, _GONE, OTHER, self._map(t, key), e)
                continue
            if is_set:
                have.discard(key)  # type: ignore[union-attr]
            else:
                del have[key]  # type: ignore[union-attr]
            n += 1
            if present:
                self.freed.add(self._map(t, key))
        self.report.deleted += n

    def remove_ipcache(self, keys: list) -> list:
        """Prefixes shortest first, then host entries. An entry overlapping
        an ipcache write that did not happen waits, and so does one inside a
        prefix that waits or whose removal failed. Returns those that wait."""
        hosts: list[IPNetwork] = []
        prefixes: list[IPNetwork] = []
        for net in keys:
            (hosts if net.prefixlen == net.max_prefixlen else prefixes).append(net)
        prefixes.sort(key=lambda net: net.prefixlen)
        pending, waiting = self.pending, _Prefixes()  # waiting: prefixes still in the map
        held = []
        failed = self.failed
        for net in prefixes:
            if (pending and (pending.inside(net) or pending.holds(net))) or (waiting and waiting.holds(net)):
                waiting.add(net)
                held.append(net)
                continue
            before = len(failed)
            self.remove("ipcache", [net])
            if len(failed) > before:
                waiting.add(net)
        if not pending and not waiting:  # each removal moves its address to its new identity
            self.remove("ipcache", hosts)
            return held
        for net in hosts:
            if pending.holds(net) or (waiting and waiting.holds(net)):
                held.append(net)
            else:
                self.remove("ipcache", [net])
        return held

    def retry(self) -> bool:
        """Step 8: the writes that found their map full, when this pass
        removed entries from that map, and the prefixes they held back."""
        again: dict[str, list[tuple[object, object]]] = {
            name: [] for name in ("policy", "ipcache", "endpoint_ids", "endpoints", "services")}
        room = False
        for (name, key), (value, reason, map_name, _) in self.failed.items():
            if reason == FULL and map_name in self.freed:
                again[name].append((key, value))
                room = True
            elif reason == HELD:
                again[name].append((key, value))
        if not room:
            return False
        self.report.retried = sum(len(v) for v in again.values())
        for net, _ in again["ipcache"]:  # pending again only if it fails again
            self.pending.discard(net)  # type: ignore[arg-type]  # ipcache keys are networks
        self.write_policy(again["policy"])  # type: ignore[arg-type]
        self.write_ipcache(again["ipcache"])
        self.write("endpoint_ids", again["endpoint_ids"])
        self.write("endpoints", again["endpoints"])
        self.write("services", again["services"])
        return True

    def unsettled(self, held: list, *endpoints: Mapping[IPAddress, EndpointRecord]) -> Touched:
        """What this pass left different from what it was asked for."""
        out = Touched(ipcache=set(held))
        for (name, key) in self.failed:
            if name == "policy":
                out.policy.add(key)  # type: ignore[arg-type]
            elif name == "ipcache":
                out.ipcache.add(key)  # type: ignore[arg-type]
            elif name == "endpoints":
                out.endpoint_ids |= _endpoint_ids_of([key], *endpoints)  # type: ignore[list-item]
            elif name == "endpoint_ids":
                out.endpoint_ids.add(key)  # type: ignore[arg-type]
        return out

    def finish(self, describe: Callable[[str, object], Description], held: list) -> None:
        """Count what did not happen per map and reason, per object, and
        keep the first few messages."""
        r = self.report
        r.held_removals = len(held)
        for (name, key), (_value, reason, map_name, msg_key) in self.failed.items():
            by_reason = r.not_written.setdefault(map_name, {})
            by_reason[reason] = by_reason.get(reason, 0) + 1
            obj, detail = split_description(describe(self.tables[name].kind, key))
            r.objects[obj] = r.objects.get(obj, 0) + 1
            if len(r.samples) < SAMPLE_MAX:
                r.samples.append(f"{obj} ({detail}): {self.messages[msg_key]}" if detail
                                 else f"{obj}: {self.messages[msg_key]}")


_GONE = object()  # the value of a failed removal in _Pass.failed


class _Prefixes:
    """A set of IP prefixes that tells, for a prefix, whether a member holds
    it (contains or equals it) and whether a member lies inside it."""

    __slots__ = ("_by_len", "_up")

    def __init__(self) -> None:
        self._by_len: dict[tuple[int, int], set[int]] = {}  # (version, prefixlen) -> prefix bits
        self._up: dict[tuple[int, int, int], set[int]] = {}  # members' bits cut to a shorter length

    def __bool__(self) -> bool:
        return any(self._by_len.values())

    def _forget(self, version: int, length: int) -> None:
        for k in [k for k in self._up if k[0] == version and k[1] == length]:
            del self._up[k]

    def add(self, net: IPNetwork) -> None:
        length = net.prefixlen
        top = int(net.network_address) >> (net.max_prefixlen - length)
        self._by_len.setdefault((net.version, length), set()).add(top)
        self._forget(net.version, length)

    def discard(self, net: IPNetwork) -> None:
        bits = self._by_len.get((net.version, net.prefixlen))
        if bits is not None:
            bits.discard(int(net.network_address) >> (net.max_prefixlen - net.prefixlen))
            self._forget(net.version, net.prefixlen)

    def holds(self, net: IPNetwork) -> bool:
        addr, top, plen, version = int(net.network_address), net.max_prefixlen, net.prefixlen, net.version
        for (v, length), bits in self._by_len.items():
            if v == version and length <= plen and addr >> (top - length) in bits:
                return True
        return False

    def inside(self, net: IPNetwork) -> bool:
        plen, version = net.prefixlen, net.version
        mine = int(net.network_address) >> (net.max_prefixlen - plen)
        for (v, length), bits in self._by_len.items():
            if v != version or length < plen or not bits:
                continue
            up = self._up.get((v, length, plen))
            if up is None:
                up = self._up[(v, length, plen)] = {b >> (length - plen) for b in bits}
            if mine in up:
                return True
        return False


def _diff(have: dict[Any, Any], want: dict[Any, Any], hint: Mapping[str, AbstractSet[object]] | None,
          kind: str) -> tuple[list[Any], list[Any]]:
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
