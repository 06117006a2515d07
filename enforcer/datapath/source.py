"""Preparing the BPF C for bcc: configuration as -D flags, and one source
text with our own headers inlined.

Why inline: bcc rewrites map operations (`policy.lookup(&k)`) into map
helper calls only in the main file it compiles. In an included header they
stay calls through a function-pointer member, which the kernel rejects
("unknown opcode 8d"). Inlining our headers, with #line markers so compiler
errors still name the real file and line, keeps bpf/ as small
single-concern headers and gives bcc the one file it can rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ConfigError
from .layout import MARK_EP_BITS
from .paths import BPF_DIR, DEFAULT_PIN_DIR
from .registry import MAPS, map_cflags

__all__ = ["BPF_DIR", "DEFAULT_PIN_DIR", "DatapathConfig", "amalgamate"]

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def amalgamate(path: Path, _seen: set[Path] | None = None) -> str:
    """path's text with every `#include "..."` of our own files inlined once."""
    seen = _seen if _seen is not None else set()
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    out = [f'#line 1 "{path}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        m = _LOCAL_INCLUDE.match(line)
        if m:
            out.append(amalgamate(path.parent / m.group(1), seen))
            out.append(f'#line {lineno + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class DatapathConfig:
    """Compile-time settings of the datapath. Map sizes are fixed when a map
    is first pinned; a later config with other sizes is refused (PinError)
    until `enforcer cleanup` removes the pins. Which field sizes which map,
    and the -D names the C gets them by, is in registry.py."""

    pin_dir: Path = DEFAULT_PIN_DIR
    ipcache_max: int = 524288
    ipcache_hosts_max: int = 262144
    endpoints_max: int = 4096
    max_endpoint_id: int = 512
    policy_max: int = 262144
    ct_max: int = 131072
    fragments_max: int = 8192
    services_max: int = 65536
    svc_pending_max: int = 16384
    # skb->mark bits [mark_shift, mark_shift + 10) carry a deferred sender's
    # endpoint id (bpf/lib/services.h); nothing else on the node may use them.
    mark_shift: int = 20
    ct_timeout_syn: int = 60
    ct_timeout_tcp: int = 21600
    ct_timeout_close: int = 10
    ct_timeout_other: int = 60
    ct_timeout_service_other: int = 25
    events_per_sec: int = 1000
    events_burst: int = 200
    events_ring_pages: int = 256
    # Benchmark builds only: conntrack hits are looked up but ignored, so a
    # repeated SYN measures the new-flow path every time.
    bench_ignore_conntrack_hits: bool = False
    # Benchmark builds only, with the above: the new-flow path leaves out
    # the conntrack insert, or the allowed flow's event (what each costs:
    # datapath_bench.py's breakdown).
    bench_skip_ct_create: bool = False
    bench_skip_event: bool = False
    # Where compiled bytecode is cached (bytecode.py): a directory, "" for
    # no cache, None for $ENFORCER_BPF_CACHE_DIR or /var/cache/enforcer/bpf.
    cache_dir: str | None = None

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or f.name in ("pin_dir", "mark_shift", "cache_dir"):
                continue
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"datapath config {f.name}: must be a positive integer, got {value!r}")
        if self.max_endpoint_id > 1 << MARK_EP_BITS:
            raise ConfigError(f"datapath config max_endpoint_id: at most {1 << MARK_EP_BITS} "
                              "(endpoint ids travel in skb->mark, bpf/lib/services.h)")
        if not isinstance(self.mark_shift, int) or not 0 <= self.mark_shift <= 32 - MARK_EP_BITS:
            raise ConfigError(f"datapath config mark_shift: 0..{32 - MARK_EP_BITS}, got {self.mark_shift!r}")
        if self.ct_timeout_service_other >= 30:
            raise ConfigError("datapath config ct_timeout_service_other: must stay below netfilter's "
                              "30 s UDP timeout (bpf/lib/services.h)")
        pages = self.events_ring_pages
        if pages & (pages - 1):
            raise ConfigError(f"datapath config events_ring_pages: must be a power of two, got {pages}")
        if not str(self.pin_dir).startswith("/sys/fs/bpf"):
            raise ConfigError(f"datapath config pin_dir: {self.pin_dir} is not under /sys/fs/bpf")

    def cflags(self, kernel_hz: int = 250) -> list[str]:
        flags = [
            f"-DKERNEL_HZ={kernel_hz}",
            f'-DPIN_DIR="{self.pin_dir}"',
            f"-DMARK_EP_SHIFT={self.mark_shift}",
            f"-DCT_TIMEOUT_SERVICE_OTHER={self.ct_timeout_service_other}",
            f"-DCT_TIMEOUT_SYN={self.ct_timeout_syn}",
            f"-DCT_TIMEOUT_TCP={self.ct_timeout_tcp}",
            f"-DCT_TIMEOUT_CLOSE={self.ct_timeout_close}",
            f"-DCT_TIMEOUT_OTHER={self.ct_timeout_other}",
            f"-DEVENTS_PER_SEC={self.events_per_sec}",
            f"-DEVENTS_BURST={self.events_burst}",
            f"-DEVENTS_RING_PAGES={self.events_ring_pages}",
            "-Wno-unused-function",
            "-Werror=implicit-function-declaration",
        ]
        flags += map_cflags(self)
        if self.bench_ignore_conntrack_hits:
            flags.append("-DBENCH_IGNORE_CONNTRACK_HITS")
            if self.bench_skip_ct_create:
                flags.append("-DBENCH_SKIP_CT_CREATE")
            if self.bench_skip_event:
                flags.append("-DBENCH_SKIP_EVENT")
        return flags

    def map_max_entries(self) -> dict[str, int]:
        """max_entries each pinned map is created with (registry.py)."""
        return {spec.name: spec.max_entries(self) for spec in MAPS}
