"""Typed access to the pinned datapath maps.

Opened from their pins, so the daemon, the CLI and tests share one view
whether or not they loaded the programs themselves.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from ..errors import MapError, MapFullError, PinError
from ..records import Frontend
from . import bpfsys
from .layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    IDENTITY_ANY,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
    Counter,
    CtEntry,
    CtKey,
    EndpointInfo,
    EndpointKey,
    EventBucket,
    IPAddress,
    IpcacheHostKey,
    IpcacheKey,
    IpcacheValue,
    IPNetwork,
    PolicyEntry,
    PolicyKey,
    ServiceKey,
    ServiceValue,
    addr_from_bytes,
    is_host,
)
from .policykeys import policy_map_keys, to_policy_key
from .reasons import REASON_SLOTS, Reason
from .registry import MAPS
from .source import DEFAULT_PIN_DIR

K = TypeVar("K", bound=ctypes.Structure | ctypes._SimpleCData)
V = TypeVar("V", bound=ctypes.Structure)


class BpfMap(Generic[K, V]):
    """One map by fd with ctypes key/value types. Per-CPU maps return and
    take one value per possible CPU."""

    def __init__(self, name: str, fd: int, key_type: type[K], value_type: type[V]) -> None:
        self.name = name
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        info = bpfsys.map_info(fd)
        self.max_entries = int(info.max_entries)
        self.percpu = info.type in bpfsys.PERCPU_TYPES
        if info.key_size != ctypes.sizeof(key_type) or info.value_size != ctypes.sizeof(value_type):
            raise PinError(
                f"map {name}: kernel has key/value {info.key_size}/{info.value_size} bytes, "
                f"this enforcer expects {ctypes.sizeof(key_type)}/{ctypes.sizeof(value_type)}; "
                "run `enforcer cleanup` to drop the old pins"
            )

    @classmethod
    def open_pinned(cls, path: Path, key_type: type[K], value_type: type[V]) -> BpfMap[K, V]:
        try:
            fd = bpfsys.obj_get(str(path))
        except OSError as e:
            raise PinError(f"cannot open pinned map {path}: {e.strerror}") from e
        return cls(path.name, fd, key_type, value_type)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buffer(self) -> ctypes.Array:
        if self.percpu:
            return (self.value_type * bpfsys.possible_cpus())()
        return (self.value_type * 1)()

    def lookup(self, key: K) -> V | None:
        buf = self._value_buffer()
        if not self._call("lookup", bpfsys.map_lookup, key, buf):
            return None
        return buf[0]

    def lookup_percpu(self, key: K) -> list[V]:
        buf = self._value_buffer()
        if not self._call("lookup", bpfsys.map_lookup, key, buf):
            return []
        return list(buf)

    def update(self, key: K, value: V, flags: int = bpfsys.BPF_ANY) -> None:
        try:
            bpfsys.map_update(self.fd, key, value, flags)  # type: ignore[arg-type]  # K, V: ctypes
        except OSError as e:
            if e.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
                raise MapFullError(self.name, "update", e.errno,
                                   f"{self.max_entries} entries at most") from e
            raise MapError(self.name, "update", e.errno or 0) from e

    def delete(self, key: K) -> bool:
        return bool(self._call("delete", bpfsys.map_delete, key))

    def keys(self) -> Iterator[K]:
        prev: K | None = None
        while True:
            nxt = self.key_type()
            if not self._call("next_key", bpfsys.map_next_key, prev, nxt):
                return
            yield nxt
            prev = nxt

    def items(self) -> Iterator[tuple[K, V]]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:  # deleted under us: skip
                yield k, v

    def count(self) -> int:
        return sum(1 for _ in self.keys())

    def batches(self, chunk: int = 2048) -> BatchReader:
        """Read the map a chunk of entries at a time (BPF_MAP_LOOKUP_BATCH):
        see BatchReader. Not for per-CPU maps."""
        return BatchReader(self, chunk)

    def delete_batch(self, keys: bytes | bytearray, n: int) -> int:
        """Delete n keys packed one after the other (BPF_MAP_DELETE_BATCH);
        a key not there (expired, evicted meanwhile) is passed over. Returns
        how many were deleted."""
        size = ctypes.sizeof(self.key_type)
        if n <= 0:
            return 0
        buf = (ctypes.c_uint8 * (n * size)).from_buffer_copy(bytes(keys[:n * size]))
        done = start = 0
        while start < n:
            view = (ctypes.c_uint8 * ((n - start) * size)).from_buffer(buf, start * size)
            count, err = bpfsys.map_delete_batch(self.fd, view, n - start)
            done += count
            start += count
            if err == 0:
                break
            if err != errno.ENOENT:
                raise MapError(self.name, "delete_batch", err)
            start += 1  # the key that was not there
        return done

    def update_batch(self, keys: bytes | bytearray, values: bytes | bytearray, n: int) -> int:
        """Write n entries packed one after the other (BPF_MAP_UPDATE_BATCH;
        the kernel takes no BPF_EXIST or BPF_NOEXIST there: every entry is
        created or replaced). Returns how many were written."""
        ks, vs = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        if n <= 0:
            return 0
        kbuf = (ctypes.c_uint8 * (n * ks)).from_buffer_copy(bytes(keys[:n * ks]))
        vbuf = (ctypes.c_uint8 * (n * vs)).from_buffer_copy(bytes(values[:n * vs]))
        count, err = bpfsys.map_update_batch(self.fd, kbuf, vbuf, n)
        if err in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
            raise MapFullError(self.name, "update_batch", err, f"{self.max_entries} entries at most")
        if err:
            raise MapError(self.name, "update_batch", err)
        return count

    def clear(self) -> int:
        n = 0
        for k in list(self.keys()):
            n += self.delete(k)
        return n

    def _call(self, op: str, fn, *args):
        try:
            return fn(self.fd, *args)
        except OSError as e:
            raise MapError(self.name, op, e.errno or 0) from e


class BatchReader:
    """A walk over a hash map in chunks (BPF_MAP_LOOKUP_BATCH), one call
    per chunk, which may be spread over time: each next() returns the next
    chunk's entries as raw bytes (n keys packed, n values packed), an empty
    chunk once the walk is done. A hash map is walked bucket by bucket and
    an entry never changes bucket, so an entry present throughout the walk
    is returned once; entries added or removed meanwhile may or may not be."""

    def __init__(self, bpf_map: BpfMap, chunk: int) -> None:
        self.map = bpf_map
        self.chunk = max(1, chunk)
        self.key_size = ctypes.sizeof(bpf_map.key_type)
        self.value_size = ctypes.sizeof(bpf_map.value_type)
        self.done = False
        self.calls = 0
        self._token_in = (ctypes.c_uint8 * 8)()
        self._token_out = (ctypes.c_uint8 * 8)()
        self._started = False
        self._alloc(self.chunk)

    def _alloc(self, chunk: int) -> None:
        self.chunk = chunk
        self._keys = (ctypes.c_uint8 * (chunk * self.key_size))()
        self._values = (ctypes.c_uint8 * (chunk * self.value_size))()

    def next(self) -> tuple[int, bytes, bytes]:
        if self.done:
            return 0, b"", b""
        while True:
            try:
                self.calls += 1
                n, end = bpfsys.map_lookup_batch(self.map.fd, self._token_in if self._started else None,
                                                 self._token_out, self._keys, self._values, self.chunk)
            except OSError as e:
                if e.errno == errno.ENOSPC and self.chunk < (1 << 20):  # a bucket bigger than the chunk
                    self._alloc(self.chunk * 2)
                    continue
                raise MapError(self.map.name, "lookup_batch", e.errno or 0) from e
            break
        self._started = True
        ctypes.memmove(self._token_in, self._token_out, 8)
        self.done = end
        return (n, ctypes.string_at(self._keys, n * self.key_size),
                ctypes.string_at(self._values, n * self.value_size))


@dataclass(frozen=True)
class PolicyRule:
    """One allow as the datapath sees it. protocol None = every protocol
    (and so every port); port None = every port of the protocol; end_port
    extends port into a range."""

    endpoint_id: int
    direction: int
    identity: int
    protocol: int | None
    port: int | None
    end_port: int | None
    rule_id: int
    reason: int = int(Reason["ALLOW_POLICY"])  # the verdict the entries hold (DROP_ADMIN, ...)
    audit_reason: int = 0  # the drop an audited policy would make of what this allows (policy.h)
    audit_rule_id: int = 0

    def keys(self) -> list[PolicyKey]:
        """The keys the compiler would write for this allow (policykeys.py)."""
        return [to_policy_key(k) for k in policy_map_keys(self.identity, self.endpoint_id, self.direction,
                                                          self.protocol, self.port, self.end_port)]


def policy_key_text(key: PolicyKey) -> str:
    """Human form of a policy key, for dumps and errors."""
    who = "any" if key.identity == IDENTITY_ANY else str(key.identity)
    d = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}.get(key.direction, str(key.direction))
    if key.prefixlen <= POLICY_PREFIX_EXACT:
        what = "any"
    elif key.prefixlen == POLICY_PREFIX_PROTO:
        what = f"{key.protocol}/any"
    else:
        bits = key.prefixlen - POLICY_PREFIX_PROTO
        port = socket.ntohs(key.dport)
        what = f"{key.protocol}/{port}" + ("" if bits == 16 else f"/{bits}")
    return f"ep={key.endpoint_id} {d} peer={who} {what}"


class DatapathMaps:
    """All pinned maps under a pin directory."""

    def __init__(self, pin_dir: Path = DEFAULT_PIN_DIR) -> None:
        self.pin_dir = Path(pin_dir)
        self._maps: dict[str, BpfMap] = {}
        try:
            for spec in MAPS:
                self._maps[spec.name] = BpfMap.open_pinned(self.pin_dir / spec.pin, spec.key, spec.value)
        except Exception:
            self.close()
            raise

    def __enter__(self) -> DatapathMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def __getitem__(self, name: str) -> BpfMap:
        return self._maps[name]

    # ipcache: host prefixes in the exact-match map, others in the trie
    def set_identity(self, net: IPNetwork | str, identity: int) -> None:
        net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
        if is_host(net):
            self._maps["ipcache_hosts"].update(IpcacheHostKey.of(net.network_address), IpcacheValue(identity=identity))
        else:
            self._maps["ipcache"].update(IpcacheKey.of(net), IpcacheValue(identity=identity))

    def delete_identity(self, net: IPNetwork | str) -> bool:
        net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
        if is_host(net):
            return self._maps["ipcache_hosts"].delete(IpcacheHostKey.of(net.network_address))
        return self._maps["ipcache"].delete(IpcacheKey.of(net))

    def identities(self) -> dict[IPNetwork, int]:
        out = {k.network(): v.identity for k, v in self._maps["ipcache"].items()}
        out.update({k.network(): v.identity for k, v in self._maps["ipcache_hosts"].items()})
        return out

    def clear_identities(self) -> None:
        self._maps["ipcache"].clear()
        self._maps["ipcache_hosts"].clear()

    # endpoints
    def set_endpoint(self, ip: IPAddress | str, endpoint_id: int, ifindex: int,
                     identity: int, flags: int) -> None:
        ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        self._maps["endpoints"].update(
            EndpointKey.of(ip), EndpointInfo(ifindex=ifindex, identity=identity, id=endpoint_id, flags=flags))

    def endpoints(self) -> dict[IPAddress, EndpointInfo]:
        return {k.ip(): v for k, v in self._maps["endpoints"].items()}

    # endpoints by id (the deferred sender of a Service packet)
    def set_endpoint_id(self, endpoint_id: int, ifindex: int, identity: int, flags: int) -> None:
        self._maps["endpoint_ids"].update(
            ctypes.c_uint32(endpoint_id), EndpointInfo(ifindex=ifindex, identity=identity, id=endpoint_id, flags=flags))

    def delete_endpoint_id(self, endpoint_id: int) -> bool:
        return self._maps["endpoint_ids"].delete(ctypes.c_uint32(endpoint_id))

    # Service frontends: (address, protocol number, port)
    def set_service(self, ip: IPAddress | str, proto: int, port: int) -> None:
        ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        self._maps["services"].update(ServiceKey.of(ip, proto, port), ServiceValue())

    def delete_service(self, ip: IPAddress | str, proto: int, port: int) -> bool:
        ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        return self._maps["services"].delete(ServiceKey.of(ip, proto, port))

    def services(self) -> set[Frontend]:
        return {Frontend(*k.frontend()) for k in self._maps["services"].keys()}

    # policy
    def add_rule(self, rule: PolicyRule) -> int:
        keys = rule.keys()
        for k in keys:
            self._maps["policy"].update(k, PolicyEntry(rule_id=rule.rule_id, reason=rule.reason,
                                                       audit_rule_id=rule.audit_rule_id,
                                                       audit_reason=rule.audit_reason))
        return len(keys)

    # conntrack
    def conntrack(self) -> list[tuple[CtKey, CtEntry]]:
        return list(self._maps["conntrack"].items())

    def flush_conntrack(self, endpoint_id: int | None = None) -> int:
        ct = self._maps["conntrack"]
        n = 0
        for k, v in list(ct.items()):
            if endpoint_id is None or v.endpoint_id == endpoint_id:
                n += ct.delete(k)
        return n

    # metrics
    def counters(self, endpoint_id: int) -> dict[tuple[int, Reason], tuple[int, int]]:
        """(direction, reason) -> (packets, bytes), summed over CPUs; only
        non-zero counters."""
        metrics = self._maps["metrics"]
        out: dict[tuple[int, Reason], tuple[int, int]] = {}
        for direction in (DIR_INGRESS, DIR_EGRESS):
            for reason in Reason:
                idx = ctypes.c_uint32((endpoint_id * 2 + direction) * REASON_SLOTS + int(reason))
                per_cpu: list[Counter] = metrics.lookup_percpu(idx)
                pkts = sum(c.packets for c in per_cpu)
                if pkts:
                    out[(direction, reason)] = (pkts, sum(c.bytes for c in per_cpu))
        return out

    def event_stats(self) -> dict[str, int]:
        per_cpu: list[EventBucket] = self._maps["event_limit"].lookup_percpu(ctypes.c_uint32(0))
        return {"suppressed": sum(b.suppressed for b in per_cpu), "lost": sum(b.lost for b in per_cpu)}


def ct_key_text(key: CtKey) -> str:
    pod, peer = addr_from_bytes(key.family, key.pod), addr_from_bytes(key.family, key.peer)
    return (f"if={key.ifindex} proto={key.proto} pod={pod}:{socket.ntohs(key.pod_port)} "
            f"peer={peer}:{socket.ntohs(key.peer_port)}")
