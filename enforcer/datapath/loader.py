"""Compile the tc programs with bcc, load them, and pin their maps (and,
for a daemon, the programs and the events ring buffer: load_and_pin, run by
loadchild.py in a short-lived child so bcc and LLVM never enter the daemon).

Maps are declared pinned in C (BPF_TABLE_PINNED): bcc reuses a pin that
exists and creates and pins one that does not. That is what lets a restarted
daemon pick up conntrack and every entry where the old one left them.
Before compiling we check existing pins against what this build expects,
because bcc would otherwise silently reuse a map of another layout or size;
the datapath's text gets registry.py's layout checks appended, so C and
Python structs that disagree fail the compile; once loaded, every map must
be what the registry declares, and pins of earlier layouts are removed.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BuildError, ConfigError, PinError
from . import bpfsys
from .registry import MAPS, layout_checks
from .source import BPF_DIR, DatapathConfig, amalgamate

log = logging.getLogger(__name__)

# Every program in one unit (bpf/datapath.c): they share maps and the ring buffer.
DATAPATH_SOURCE = BPF_DIR / "datapath.c"
PARSE_EQUIV_SOURCE = BPF_DIR / "tests" / "parse_equiv.c"
NOOP_PROGRAM_SOURCE = BPF_DIR / "noop.c"
FROM_POD = "from_pod"
TO_POD = "to_pod"
TO_NETWORK = "to_network"
PROGRAMS = (FROM_POD, TO_POD, TO_NETWORK)
# What load_and_pin pins besides the maps: each program, and the events ring
# buffer (a new one every load: bcc creates it with the programs that write
# it). Replaced on every load, so their names carry no layout version.
EVENTS_MAP = "events"
EVENTS_PIN = "events_ring"


def program_pin(program: str) -> str:
    return f"prog_{program}"


LOAD_PINS = (*(program_pin(p) for p in PROGRAMS), EVENTS_PIN)


def ensure_bpffs(path: Path = Path("/sys/fs/bpf")) -> None:
    if not os.path.ismount(path):
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True)


def check_pins(config: DatapathConfig) -> list[str]:
    """Names of maps already pinned. Raises PinError when a pin does not
    match what this build would create (kind, key and value sizes,
    max_entries, flags: registry.py)."""
    present = []
    for spec in MAPS:
        path = config.pin_dir / spec.pin
        if not path.exists():
            continue
        fd = bpfsys.obj_get(str(path))
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        wrong = spec.differences(config, info)
        if wrong:
            raise PinError(
                f"pinned map {path} has {', '.join(wrong)}; "
                "run `enforcer cleanup` (drops conntrack and all entries) or restore the old config"
            )
        present.append(spec.name)
    return present


def _check_maps(loaded: LoadedPrograms, config: DatapathConfig) -> None:
    """Every map the compiled datapath holds is what registry.py declares:
    its C declaration (BPF_TABLE_PINNED) agrees on kind, key and value types
    and flags. A map this load created is unpinned again when it does not."""
    for spec in MAPS:
        wrong = spec.differences(config, bpfsys.map_info(loaded.bpf[spec.name.encode()].map_fd))
        if wrong:
            loaded.cleanup()
            for other in MAPS:
                if other.name not in loaded.reused_pins:
                    (config.pin_dir / other.pin).unlink(missing_ok=True)
            raise BuildError(f"map {spec.name} as compiled has {', '.join(wrong)}: its declaration "
                             "in bpf/lib and enforcer/datapath/registry.py disagree")


def remove_old_pins(pin_dir: Path) -> list[str]:
    """Pins of earlier layouts of our maps (registry.py's versions) in our
    own pin directory: an upgraded node's orphans, which nothing reads.
    Only those exact names: nothing else in the directory is touched."""
    removed = []
    for spec in MAPS:
        for name in spec.old_pins:
            path = pin_dir / name
            if path.exists() and not path.is_dir():
                path.unlink()
                removed.append(name)
    return removed


@dataclass
class LoadedPrograms:
    """Programs held by this process. Dropping the object keeps nothing
    attached alive by itself: tc holds its own references."""

    bpf: Any  # bcc.BPF
    fds: dict[str, int] = field(default_factory=dict)
    reused_pins: list[str] = field(default_factory=list)
    removed_pins: list[str] = field(default_factory=list)  # of earlier layouts

    def fd(self, name: str) -> int:
        return self.fds[name]

    def cleanup(self) -> None:
        self.bpf.cleanup()


def _build(text: str, cflags: list[str], what: str) -> Any:
    """bcc.BPF(text): bcc prints clang's diagnostics on fd 2 and raises a
    bare "Failed to compile BPF module"; the error lines go into the
    BuildError (and everything still to stderr)."""
    from bcc import BPF  # Debian's python3-bpfcc

    failure: Exception | None = None
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return BPF(text=text.encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception
            failure = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            output = captured.read()
            shown = memoryview(output)
            while shown:
                shown = shown[os.write(2, shown):]
    errors = [line for line in output.decode(errors="replace").splitlines() if "error:" in line]
    # A failed layout check (registry.layout_checks) says it all in its message.
    errors = [m.group(1) if (m := re.search(r'"(layout: [^"]*)"', line)) else line for line in errors]
    raise BuildError(f"compiling {what} failed: {'; '.join(errors[:8]) or failure}") from failure


def _compile(source: Path, cflags: list[str], functions: tuple[str, ...], checks: str = "") -> LoadedPrograms:
    from bcc import BPF  # Debian's python3-bpfcc

    bpf = _build(amalgamate(source) + checks, cflags, source.name)
    loaded = LoadedPrograms(bpf=bpf)
    for name in functions:
        try:
            fn = bpf.load_func(name.encode(), BPF.SCHED_CLS)
        except Exception as e:
            raise BuildError(f"loading {source.name}:{name} failed (verifier): {e}") from e
        loaded.fds[name] = fn.fd
    return loaded


_JIFFIES_PROBE = b"""
#include <uapi/linux/bpf.h>
int jiffies_now(struct __sk_buff *skb) { return (int)bpf_jiffies64(); }
"""
STANDARD_HZ = (100, 250, 300, 1000)
# HZ already known (measured by a parent process: the test suite measures it
# once for its ~40 daemons). Unset, every process measures it (~0.5 s).
KERNEL_HZ_ENV = "ENFORCER_KERNEL_HZ"


@lru_cache(maxsize=1)
def kernel_hz() -> int:
    """The running kernel's HZ (jiffies per second): $ENFORCER_KERNEL_HZ if
    set, else measured (run a program returning jiffies twice, a known time
    apart, and take the nearest standard value). The datapath clock
    converts jiffies with it."""
    given = os.environ.get(KERNEL_HZ_ENV)
    if given:
        if not given.isdigit() or int(given) not in STANDARD_HZ:
            raise ConfigError(f"{KERNEL_HZ_ENV}={given!r}: one of {', '.join(map(str, STANDARD_HZ))}")
        return int(given)
    return measure_kernel_hz()


def measure_kernel_hz() -> int:
    from bcc import BPF

    bpf = BPF(text=_JIFFIES_PROBE)
    try:
        fd = bpf.load_func(b"jiffies_now", BPF.SCHED_CLS).fd
        frame = bytes(60)
        t0, j0 = time.monotonic(), bpfsys.prog_test_run(fd, frame).retval & 0xFFFFFFFF
        time.sleep(0.3)
        t1, j1 = time.monotonic(), bpfsys.prog_test_run(fd, frame).retval & 0xFFFFFFFF
    finally:
        bpf.cleanup()
    measured = ((j1 - j0) & 0xFFFFFFFF) / (t1 - t0)
    return min(STANDARD_HZ, key=lambda hz: abs(hz - measured))


def load_datapath_programs(config: DatapathConfig) -> LoadedPrograms:
    """Compile and load from_pod/to_pod/to_network, creating or reusing
    the pins."""
    config.validate()
    ensure_bpffs()
    config.pin_dir.mkdir(parents=True, exist_ok=True)
    reused = check_pins(config)
    loaded = _compile(DATAPATH_SOURCE, config.cflags(kernel_hz()), PROGRAMS, checks=layout_checks())
    loaded.reused_pins = reused
    _check_maps(loaded, config)
    loaded.removed_pins = orphans = remove_old_pins(config.pin_dir)
    log.info("datapath loaded: pins in %s (%s)%s", config.pin_dir,
             f"reused {', '.join(reused)}" if reused else "new",
             f"; removed pins of earlier layouts: {', '.join(orphans)}" if orphans else "")
    return loaded


def _pin_replacing(fd: int, path: Path) -> None:
    """Pin fd at path, replacing what is there in one step (a rename within
    the bpffs): whoever opens the path gets the old object or the new."""
    tmp = path.with_name(f"{path.name}_new_{os.getpid()}")  # bpffs names have no dots
    tmp.unlink(missing_ok=True)
    bpfsys.obj_pin(fd, str(tmp))
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def load_and_pin(config: DatapathConfig) -> dict[str, Any]:
    """load_datapath_programs, then pin each program (LOAD_PINS) and the
    events ring buffer in config.pin_dir beside the maps, replacing an
    earlier load's; this process's references are dropped. Returns what
    was done (the pins' names, maps reused, orphans removed, HZ)."""
    loaded = load_datapath_programs(config)
    try:
        programs = {}
        for name, fd in loaded.fds.items():
            _pin_replacing(fd, config.pin_dir / program_pin(name))
            programs[name] = program_pin(name)
        _pin_replacing(loaded.bpf[EVENTS_MAP.encode()].map_fd, config.pin_dir / EVENTS_PIN)
    except OSError as e:
        raise PinError(f"pinning the programs in {config.pin_dir} failed: {e}") from e
    finally:
        loaded.cleanup()
    return {"pin_dir": str(config.pin_dir), "programs": programs, "events": EVENTS_PIN,
            "reused_pins": loaded.reused_pins, "removed_pins": loaded.removed_pins, "kernel_hz": kernel_hz()}


def load_noop_program() -> LoadedPrograms:
    return _compile(NOOP_PROGRAM_SOURCE, [], ("noop",))


def load_parse_check_program() -> LoadedPrograms:
    """bpf/tests/parse_equiv.c: fast and full parsers side by side."""
    return _compile(PARSE_EQUIV_SOURCE, ["-Wno-unused-function"], ("parse_equiv",))


def remove_pins(config: DatapathConfig) -> list[str]:
    """Our pins in config.pin_dir (names of the maps removed, pin names of
    earlier layouts' orphans, then of the programs and the events ring
    buffer), then the directory if that emptied it."""
    removed = []
    for spec in MAPS:
        path = config.pin_dir / spec.pin
        if path.exists():
            path.unlink()
            removed.append(spec.name)
    removed += remove_old_pins(config.pin_dir)
    for name in LOAD_PINS:
        path = config.pin_dir / name
        if path.exists() and not path.is_dir():
            path.unlink()
            removed.append(name)
        for tmp in config.pin_dir.glob(f"{name}_new_*") if config.pin_dir.exists() else ():
            tmp.unlink()  # a load killed between pin and rename
    if config.pin_dir.exists() and not any(config.pin_dir.iterdir()):
        config.pin_dir.rmdir()
    return removed
