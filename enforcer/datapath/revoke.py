"""Revocation: cut the tracked connections policy no longer allows, looking
only at those whose verdict may have changed, with batch map operations,
a bounded slice at a time.

Which verdicts may change. A tracked connection is judged (compiler/
evaluate.py, as the datapath judges a new flow) from three things only:

- its endpoint, by id: the entry's flags (isolation, host judged), or its
  absence (an id released: the entry goes whatever policy says);
- the policy entries of that endpoint id and the connection's direction
  (every key holds the endpoint id and the direction);
- the peer address's identity: the longest ipcache entry holding it.

So between two compiled states, only the connections of an endpoint whose
entry changed, of an (endpoint, direction) with a policy key that changed,
or to a peer address inside an ipcache entry that changed can change
verdict (Affected.of, from sync.Touched). Everything else keeps the verdict
it had when the previous revocation checked it. A newer state that comes
before a revocation finished is folded into it (Revocation.restart): the
rest of the walk judges what either touched against the newest state, and a
second round judges the entries already walked for what the newer state
changed, so the walk always moves forward; when nothing is known of the
previous state (a daemon's first pass), every connection is checked.

A connection tracked under a Service address does not say which backend it
reached: its verdict depends on that backend's address, unknown here, so
when its endpoint is affected, or any peer's identity changed, it is
flagged for a recheck (CT_F_RECHECK) rather than judged.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..errors import MapError
from .bpfsys import BPF_EXIST
from .layout import (
    CT_F_RECHECK,
    CT_F_SERVICE,
    DIR_EGRESS,
    DIR_INGRESS,
    FAMILY_V4,
    CtEntry,
    CtKey,
    IPNetwork,
    addr_from_bytes,
)
from .maps import BatchReader, BpfMap, DatapathMaps
from .sync import Touched, TrackedConnection

log = logging.getLogger(__name__)

_BOTH = (DIR_INGRESS, DIR_EGRESS)
_KEY_SIZE = ctypes.sizeof(CtKey)
_VALUE_SIZE = ctypes.sizeof(CtEntry)
_PEER = CtKey.peer.offset
_FAMILY = CtKey.family.offset
_PROTO = CtKey.proto.offset
_POD_PORT = CtKey.pod_port.offset
_PEER_PORT = CtKey.peer_port.offset
_ADDR_SIZE = CtKey.peer.size
_EP_ID = CtEntry.endpoint_id.offset
_ORIGIN = CtEntry.origin.offset
_FLAGS = CtEntry.flags.offset
# A few changed host addresses are found by searching the packed keys for
# them (C speed); more are looked up entry by entry.
_FIND_MAX = 32


@dataclass
class Affected:
    """Which tracked connections may have changed verdict: see the module's
    docstring. `full`: all of them."""

    full: bool = False
    endpoints: set[int] = field(default_factory=set)               # every direction
    directions: set[tuple[int, int]] = field(default_factory=set)  # (endpoint id, direction)
    peers: set[IPNetwork] = field(default_factory=set)            # a peer address inside one
    gone: set[int] = field(default_factory=set)                   # ids released: their entries go

    @classmethod
    def of(cls, touched: Touched, gone: AbstractSet[int] = frozenset()) -> Affected:
        return cls(endpoints=set(touched.endpoint_ids),
                   directions={(k.endpoint_id, k.direction) for k in touched.policy},
                   peers=set(touched.ipcache), gone=set(gone))

    @classmethod
    def everything(cls, gone: AbstractSet[int] = frozenset()) -> Affected:
        return cls(full=True, gone=set(gone))

    def __bool__(self) -> bool:
        return bool(self.full or self.endpoints or self.directions or self.peers or self.gone)

    def merge(self, other: Affected) -> None:
        self.full |= other.full
        self.endpoints |= other.endpoints
        self.directions |= other.directions
        self.peers |= other.peers
        self.gone |= other.gone

    def only_gone(self) -> Affected:
        """What is left to do where policy is not checked (--keep-established
        without cluster policies): the entries of released ids."""
        return Affected(gone=set(self.gone))

    def covers(self, conn: TrackedConnection) -> bool:
        """Whether the connection's verdict may have changed (reference
        version of what Revocation selects from packed entries)."""
        if self.full or conn.endpoint_id in self.gone or conn.endpoint_id in self.endpoints:
            return True
        if (conn.endpoint_id, DIR_EGRESS if conn.origin_egress else DIR_INGRESS) in self.directions:
            return True
        return any(conn.peer.version == net.version and conn.peer in net for net in self.peers)


@dataclass
class RevokeResult:
    revoked: int = 0     # entries deleted
    rechecked: int = 0   # Service entries flagged CT_F_RECHECK
    walked: int = 0      # entries read
    judged: int = 0      # entries judged against the new state
    evaluated: int = 0   # verdicts evaluated for them (entries sharing a verdict key share one)
    calls: int = 0       # batch lookups


class Revocation:
    """One revocation over the conntrack map, run a slice at a time (step):
    each slice reads at most `chunk` entries with one batch lookup, judges
    those the change may affect, deletes the revoked ones with one batch
    delete and flags Service entries (one update each, BPF_EXIST).

    still_allowed(conn) is the verdict of the newest state; None: policy is
    not checked (only released ids' entries go)."""

    def __init__(self, maps: DatapathMaps, affected: Affected,
                 still_allowed: Callable[[TrackedConnection], bool] | None,
                 recheck_services: bool = False, chunk: int = 2048) -> None:
        self.maps = maps
        self.affected = affected if still_allowed is not None else affected.only_gone()
        self.still_allowed = still_allowed
        self.recheck_services = recheck_services and still_allowed is not None
        self.chunk = chunk
        self.result = RevokeResult()
        self.started = time.monotonic()
        self._reader: BatchReader | None = None
        # What the entries walked so far must be judged again for, in a
        # round after this one (restart).
        self._redo = Affected()
        self._calls_before = 0  # batch lookups of the rounds before this one
        self._prepare()

    def _prepare(self) -> None:
        a = self.affected
        self._whole = a.endpoints | a.gone  # every connection of these
        self._ids = self._whole | {e for e, _ in a.directions}
        hosts = [n for n in a.peers if n.prefixlen == n.max_prefixlen]
        self._prefixes: dict[tuple[int, int], set[int]] = {}  # (version, length) -> prefix bits
        for n in a.peers:
            if n.prefixlen != n.max_prefixlen:
                self._prefixes.setdefault((n.version, n.prefixlen), set()).add(
                    int(n.network_address) >> (n.max_prefixlen - n.prefixlen))
        self._host_bytes = {(4 if n.version == 4 else 6, n.network_address.packed) for n in hosts}
        # Verdicts of the state being judged against, by verdict key (_verdict).
        self._verdicts: dict[tuple[int, int, int, int, int, bytes, bytes], bool] = {}
        # Service entries cannot be judged: flagged when their endpoint is
        # affected or any peer identity moved.
        self._all_services = bool(a.peers) or a.full

    @property
    def done(self) -> bool:
        return self._reader is not None and self._reader.done and not self._redo

    def restart(self, affected: Affected, still_allowed: Callable[[TrackedConnection], bool] | None,
                recheck_services: bool) -> None:
        """A newer state came before this walk finished; `affected` is what
        changed from the state the walk judges against to it. The walk goes
        on where it is, judging what is left against the newer state for
        what either touched; the entries already walked are judged again
        against it for `affected` only, in a round after this one (what
        they were judged for before did not change verdict since). So a
        walk always moves forward: a stream of passes cannot keep it from
        ending, as starting over from the first entry each time would."""
        if still_allowed is None:
            affected = affected.only_gone()
        self.still_allowed = still_allowed
        self.recheck_services = recheck_services and still_allowed is not None
        self.affected.merge(affected)
        if self._reader is not None:  # some entries walked already
            self._redo.merge(affected)
        if still_allowed is None:
            self.affected = self.affected.only_gone()
            self._redo = self._redo.only_gone()
        self._prepare()

    def run(self) -> RevokeResult:
        """Every slice, at once."""
        while not self.step():
            pass
        return self.result

    def step(self) -> bool:
        """One slice; True once the walk is done."""
        if self._reader is not None and self._reader.done and self._redo:
            # The round for what newer states changed in the entries walked
            # before they came.
            self.affected, self._redo = self._redo, Affected()
            self._calls_before += self._reader.calls
            self._reader = None
            self._prepare()
        if self._reader is None:
            self.ct: BpfMap = self.maps["conntrack"]
            self._reader = self.ct.batches(self.chunk)
        reader = self._reader
        n, keys, values = reader.next()
        r = self.result
        r.calls = self._calls_before + reader.calls
        r.walked += n
        if n:
            self._slice(n, keys, values)
        return self.done

    def _candidates(self, n: int, keys: bytes, values: bytes) -> list[int]:
        """Indexes of the entries of a chunk the change may affect."""
        a = self.affected
        if a.full:
            return list(range(n))
        chosen: set[int] = set()
        if self._ids:
            # endpoint_id, a host-order u16, and origin of each packed value
            eps = memoryview(values).cast("H")[_EP_ID // 2::_VALUE_SIZE // 2].tolist()
            whole, directions = self._whole, a.directions
            if directions:
                origins = values[_ORIGIN::_VALUE_SIZE]
                chosen.update(i for i, e in enumerate(eps) if e in whole or (
                    e in self._ids and (e, DIR_EGRESS if origins[i] == DIR_EGRESS else DIR_INGRESS) in directions))
            else:
                chosen.update(i for i, e in enumerate(eps) if e in whole)
        if self._host_bytes:
            chosen.update(self._peer_hosts(n, keys))
        if self._prefixes:
            chosen.update(self._peer_prefixes(n, keys))
        if self.recheck_services and self._all_services:
            flags = values[_FLAGS::_VALUE_SIZE]
            chosen.update(i for i, f in enumerate(flags) if f & CT_F_SERVICE and not f & CT_F_RECHECK)
        return sorted(chosen)

    def _peer_hosts(self, n: int, keys: bytes) -> set[int]:
        out: set[int] = set()
        if len(self._host_bytes) <= _FIND_MAX:
            for family, packed in self._host_bytes:
                pos = keys.find(packed)
                while pos >= 0:
                    i, off = divmod(pos - _PEER, _KEY_SIZE)
                    if off == 0 and 0 <= i < n and keys[i * _KEY_SIZE + _FAMILY] == family:
                        out.add(i)
                    pos = keys.find(packed, pos + 1)
            return out
        hosts = self._host_bytes
        for i in range(n):
            base = i * _KEY_SIZE
            family = keys[base + _FAMILY]
            raw = keys[base + _PEER: base + _PEER + (4 if family == FAMILY_V4 else 16)]
            if (family, raw) in hosts:
                out.add(i)
        return out

    def _peer_prefixes(self, n: int, keys: bytes) -> set[int]:
        out: set[int] = set()
        prefixes = self._prefixes
        for i in range(n):
            base = i * _KEY_SIZE
            v4 = keys[base + _FAMILY] == FAMILY_V4
            version, bits = (4, 32) if v4 else (6, 128)
            value = int.from_bytes(keys[base + _PEER: base + _PEER + bits // 8], "big")
            for (v, length), tops in prefixes.items():
                if v == version and value >> (bits - length) in tops:
                    out.add(i)
                    break
        return out

    def _slice(self, n: int, keys: bytes, values: bytes) -> None:
        r, gone, still_allowed = self.result, self.affected.gone, self.still_allowed
        cut = bytearray()
        n_cut = 0
        for i in self._candidates(n, keys, values):
            kraw = keys[i * _KEY_SIZE:(i + 1) * _KEY_SIZE]
            entry = CtEntry.from_buffer_copy(values, i * _VALUE_SIZE)
            if entry.endpoint_id in gone:
                cut += kraw
                n_cut += 1
            elif still_allowed is None:
                continue
            elif entry.flags & CT_F_SERVICE:
                if self.recheck_services and not entry.flags & CT_F_RECHECK:
                    # One by one: a batch update cannot say BPF_EXIST, and
                    # an entry gone meanwhile must not come back.
                    entry.flags |= CT_F_RECHECK
                    try:
                        self.ct.update(CtKey.from_buffer_copy(kraw), entry, BPF_EXIST)
                        r.rechecked += 1
                    except MapError:
                        pass  # expired or evicted meanwhile: nothing to recheck
            else:
                r.judged += 1
                if not self._verdict(kraw, entry, still_allowed):
                    cut += kraw
                    n_cut += 1
        if n_cut:
            r.revoked += self.ct.delete_batch(cut, n_cut)


    def _verdict(self, kraw: bytes, entry: CtEntry, still_allowed: Callable[[TrackedConnection], bool]) -> bool:
        """still_allowed of one entry, once per verdict key: what a
        verdict depends on (module doc) is the endpoint, the direction, the
        peer address, the protocol and the port on the side the connection
        was opened to, and whether the node itself opened it (the reason).
        Connections differing only in the opener's port (every client
        connection to a server: thousands) share one evaluation."""
        port_at = _PEER_PORT if entry.origin == DIR_EGRESS else _POD_PORT
        key = (entry.endpoint_id, entry.origin, entry.reason, kraw[_FAMILY], kraw[_PROTO],
               kraw[_PEER:_PEER + _ADDR_SIZE], kraw[port_at:port_at + 2])
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = still_allowed(_tracked(CtKey.from_buffer_copy(kraw), entry))
            self.result.evaluated += 1
        return verdict


def _tracked(k: CtKey, v: CtEntry) -> TrackedConnection:
    return TrackedConnection(v.endpoint_id, addr_from_bytes(k.family, k.pod), addr_from_bytes(k.family, k.peer),
                             k.proto, socket.ntohs(k.pod_port), socket.ntohs(k.peer_port), v.origin == DIR_EGRESS,
                             v.reason)


def revoke(maps: DatapathMaps, affected: Affected, still_allowed: Callable[[TrackedConnection], bool] | None,
           recheck_services: bool = False, chunk: int = 2048) -> RevokeResult:
    """A whole revocation at once (tests, tools)."""
    return Revocation(maps, affected, still_allowed, recheck_services, chunk).run()
