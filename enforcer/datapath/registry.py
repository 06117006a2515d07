"""The datapath's maps, declared once.

Each map's entry holds what the C side and Python must agree on: its name
(the C map's, and `enforcer run --map-size`'s), its pin (name and layout
version, and the pins of earlier versions, which are orphans to remove),
key and value (ctypes type and C type), kind, capacity (the DatapathConfig
field that sets it, or how it is computed) and creation flags. From it come:

- the -D flags giving the C each map's capacity (`<NAME>_MAX`) and pin
  name (`<NAME>_PIN`), and the LPM keys' prefix lengths (from layout.py);
- DatapathConfig.map_max_entries() and the `--map-size` names;
- what the loader checks pins and created maps against (kind, key and value
  sizes, max_entries, flags) and what maps.py opens;
- layout_checks(): a C `_Static_assert` of every key and value struct's size
  and of every field's offset and size, which the loader appends to the
  program it compiles, so a daemon whose C and Python disagree does not
  start.

The C headers still declare each map (BPF_TABLE_PINNED, for bcc) with its
kind, C types and flags; tests/datapath/test_layout.py checks those
declarations against this table, and the loader checks every map it
creates or reuses.

Bump a map's version when its key or value layout changes: a new daemon
then never misreads an old pin, and removes it (loader, `enforcer cleanup`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BuildError
from . import bpfsys
from .layout import (
    IPCACHE_PREFIX_BASE,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_FULL,
    POLICY_PREFIX_PROTO,
    Counter,
    CtEntry,
    CtKey,
    EndpointInfo,
    EndpointKey,
    EventBucket,
    FragKey,
    FragRecord,
    IpcacheHostKey,
    IpcacheKey,
    IpcacheValue,
    PolicyEntry,
    PolicyKey,
    ServiceKey,
    ServiceValue,
    SvcPendingKey,
    SvcPendingValue,
    VerdictEvent,
)
from .reasons import REASON_SLOTS

# A DatapathConfig (source.py, which imports this module: not imported here).
Config = Any

CType = type[ctypes.Structure] | type[ctypes._SimpleCData]

BPF_F_NO_PREALLOC = 1  # include/uapi/linux/bpf.h
FLAG_NAMES = {BPF_F_NO_PREALLOC: "BPF_F_NO_PREALLOC"}

# bcc's table type names -> BPF_MAP_TYPE_*
KINDS = {
    "hash": bpfsys.BPF_MAP_TYPE_HASH,
    "array": bpfsys.BPF_MAP_TYPE_ARRAY,
    "percpu_array": bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY,
    "lru_hash": bpfsys.BPF_MAP_TYPE_LRU_HASH,
    "lpm_trie": bpfsys.BPF_MAP_TYPE_LPM_TRIE,
}


@dataclass(frozen=True)
class Computed:
    """A capacity no option sets: computed from the config."""

    how: str
    of: Callable[[Config], int]


@dataclass(frozen=True)
class MapSpec:
    name: str  # the C map's name, and --map-size's
    version: int  # layout version, in the pin name
    kind: str  # bcc table type (KINDS)
    key: CType
    key_c: str  # the C type of the key, as the C declares the map
    value: type[ctypes.Structure]  # of a per-CPU map: one CPU's element
    value_c: str
    capacity: str | Computed  # a DatapathConfig field, or computed
    flags: int = 0
    holds: str = ""

    @property
    def pin(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def old_pins(self) -> tuple[str, ...]:
        """Pin names of earlier layouts: orphans on an upgraded node."""
        return tuple(f"{self.name}_v{v}" for v in range(1, self.version))

    @property
    def size_define(self) -> str:
        return f"{self.name.upper()}_MAX"

    @property
    def pin_define(self) -> str:
        return f"{self.name.upper()}_PIN"

    @property
    def sizable(self) -> bool:
        """Set by an option (`--map-size NAME=N`), not computed."""
        return isinstance(self.capacity, str)

    def max_entries(self, config: Config) -> int:
        if isinstance(self.capacity, Computed):
            return self.capacity.of(config)
        return int(getattr(config, self.capacity))

    def differences(self, config: Config, info: bpfsys.MapInfo) -> list[str]:
        """How a map the kernel describes (a pin, or one bcc just created)
        differs from this entry: empty when it fits."""
        want = {"kind": self.kind, "key size": ctypes.sizeof(self.key),
                "value size": ctypes.sizeof(self.value), "max_entries": self.max_entries(config),
                "flags": self.flags}
        kinds = {v: k for k, v in KINDS.items()}
        have = {"kind": kinds.get(info.type, f"type {info.type}"), "key size": info.key_size,
                "value size": info.value_size, "max_entries": info.max_entries, "flags": info.map_flags}
        return [f"{what} {have[what]} (expected {want[what]})" for what in want if have[what] != want[what]]


# In the order the loader checks pins and maps.py opens them.
MAPS: tuple[MapSpec, ...] = (
    MapSpec("ipcache", 1, "lpm_trie", IpcacheKey, "struct ipcache_key", IpcacheValue, "struct ipcache_value",
            "ipcache_max", BPF_F_NO_PREALLOC, "ipBlock prefixes -> identity"),
    MapSpec("ipcache_hosts", 1, "hash", IpcacheHostKey, "struct ipcache_host_key", IpcacheValue,
            "struct ipcache_value", "ipcache_hosts_max", BPF_F_NO_PREALLOC,
            "pod and node addresses, full-length ipBlocks -> identity"),
    MapSpec("endpoints", 1, "hash", EndpointKey, "struct endpoint_key", EndpointInfo, "struct endpoint_info",
            "endpoints_max", holds="local pod addresses -> endpoint"),
    MapSpec("endpoint_ids", 1, "hash", ctypes.c_uint32, "__u32", EndpointInfo, "struct endpoint_info",
            "max_endpoint_id", holds="endpoint id -> endpoint: local pods + 1 (id 0 is no pod's)"),
    # v2: the entry holds the verdict reason (tiers), not only the rule
    # v3: and the verdict of the policies in audit mode, where it differs
    MapSpec("policy", 3, "lpm_trie", PolicyKey, "struct policy_key", PolicyEntry, "struct policy_entry",
            "policy_max", BPF_F_NO_PREALLOC, "policy entries"),
    # v2: keyed by interface and pod address
    MapSpec("conntrack", 2, "lru_hash", CtKey, "struct ct_key", CtEntry, "struct ct_entry",
            "ct_max", holds="tracked connections"),
    # v2: the upper-layer protocol in the value; IPv6 keyed without it
    MapSpec("fragments", 2, "lru_hash", FragKey, "struct frag_key", FragRecord, "struct frag_record",
            "fragments_max", holds="first fragments' protocol and ports"),
    MapSpec("services", 1, "hash", ServiceKey, "struct service_key", ServiceValue, "struct service_value",
            "services_max", BPF_F_NO_PREALLOC, "Service frontends"),
    MapSpec("svc_pending", 1, "lru_hash", SvcPendingKey, "struct svc_pending_key", SvcPendingValue,
            "struct svc_pending_value", "svc_pending_max", holds="Service packets awaiting their verdict"),
    MapSpec("metrics", 1, "percpu_array", ctypes.c_uint32, "__u32", Counter, "struct counter",
            Computed("endpoint ids x 2 directions x reason slots",
                     lambda config: config.max_endpoint_id * 2 * REASON_SLOTS),
            holds="per-CPU counters by (endpoint, direction, reason)"),
    MapSpec("event_limit", 1, "percpu_array", ctypes.c_uint32, "__u32", EventBucket, "struct event_bucket",
            Computed("one bucket per CPU", lambda config: 1), holds="the events' per-CPU token bucket"),
)
BY_NAME: dict[str, MapSpec] = {spec.name: spec for spec in MAPS}

# Structs crossing the C/Python line that are no map's key or value.
SHARED_STRUCTS: tuple[tuple[str, type[ctypes.Structure]], ...] = (
    ("struct verdict_event", VerdictEvent),  # the events ring buffer's records
)

# LPM prefix lengths, derived from the ctypes keys; the headers check them
# against their structs (ipcache.h, policy.h).
PREFIX_DEFINES: dict[str, int] = {
    "IPCACHE_PREFIX_BASE": IPCACHE_PREFIX_BASE,
    "POLICY_PREFIX_EXACT": POLICY_PREFIX_EXACT,
    "POLICY_PREFIX_PROTO": POLICY_PREFIX_PROTO,
    "POLICY_PREFIX_FULL": POLICY_PREFIX_FULL,
}


def map_cflags(config: Config) -> list[str]:
    """-D flags of every map's capacity and pin name and of the prefix lengths."""
    flags = []
    for spec in MAPS:
        flags.append(f"-D{spec.size_define}={spec.max_entries(config)}")
        flags.append(f'-D{spec.pin_define}="{spec.pin}"')
    flags += [f"-D{name}={value}" for name, value in PREFIX_DEFINES.items()]
    return flags


def map_size_fields() -> dict[str, str]:
    """`--map-size` names -> the DatapathConfig fields they set."""
    return {spec.name: spec.capacity for spec in MAPS if isinstance(spec.capacity, str)}


def layout_structs() -> list[tuple[str, CType]]:
    """(C type, ctypes type) of every map key and value and shared struct, once each."""
    out: dict[str, CType] = {}
    for spec in MAPS:
        for c_type, py_type in ((spec.key_c, spec.key), (spec.value_c, spec.value)):
            if out.setdefault(c_type, py_type) is not py_type:
                raise BuildError(f"registry: {c_type} mirrored by both {out[c_type].__name__} "
                                 f"and {py_type.__name__}")
    for c_type, py_type in SHARED_STRUCTS:
        out.setdefault(c_type, py_type)
    return list(out.items())


def layout_checks(structs: Iterable[tuple[str, CType]] | None = None) -> str:
    """C text asserting that each C type has its ctypes mirror's size, and
    each of the mirror's fields the same offset and size in C (field names
    are the same on both sides: a field C lacks fails the compile too).

    A mirror must have no implicit padding: its fields then cover every
    byte, so a C field Python does not know cannot hide in a gap."""
    lines = ['#line 1 "enforcer/datapath/registry.py: layout checks"']
    for c_type, py_type in structs if structs is not None else layout_structs():
        mirror = py_type.__name__
        size = ctypes.sizeof(py_type)
        lines.append(f'_Static_assert(sizeof({c_type}) == {size}, '
                     f'"layout: {c_type}: size differs from Python {mirror} ({size} bytes)");')
        fields = [name for name, *_ in getattr(py_type, "_fields_", ())]
        covered = sum(getattr(py_type, name).size for name in fields)
        if fields and covered != size:
            raise BuildError(f"layout: Python {mirror} has {size - covered} bytes of implicit padding; "
                             "name them (pad fields) as the C struct does")
        for name in fields:
            f = getattr(py_type, name)
            lines.append(f'_Static_assert(__builtin_offsetof({c_type}, {name}) == {f.offset}, '
                         f'"layout: {c_type} field {name}: offset differs from Python {mirror}.{name} '
                         f'({f.offset})");')
            lines.append(f'_Static_assert(sizeof((({c_type} *)0)->{name}) == {f.size}, '
                         f'"layout: {c_type} field {name}: size differs from Python {mirror}.{name} '
                         f'({f.size} bytes)");')
    return "\n".join(lines) + "\n"
