"""Load the tc programs and pin their maps (and, for a daemon, the
programs and the events ring buffer: load_and_pin, run by loadchild.py in a
short-lived child so bcc and LLVM never enter the daemon).

The pinned maps (registry.py) are created by the loader itself, from the
registry, before anything is compiled or loaded: a pin that exists is
reused when it fits and refused (PinError) when it does not (another
layout or size); pins of earlier layouts are removed. The C declares them
pinned (BPF_TABLE_PINNED) at the same paths, so bcc opens those pins
rather than creating maps, which is what lets a restarted daemon pick up
conntrack and every entry where the old one left them.

Compiled bytecode is cached (bytecode.py): a unit compiled before, with the
same source, code-changing cflags, kernel and bcc, is loaded from its
recorded instructions with no compiler (the map fds patched in, the
verifier checking them as ever); otherwise bcc compiles it, the datapath's
text gets registry.py's layout checks appended (C and Python structs that
disagree fail the compile), every map's C declaration is checked against
the registry, and the result is recorded for the next load.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import logging
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BuildError, ConfigError, EnforcerError, PinError
from . import bpfsys
from .bytecode import (
    BytecodeCache,
    BytecodeError,
    Entry,
    MapDecl,
    ProgramImage,
    cache_dir_for,
    cache_key,
    find_map_refs,
    patch_map_fds,
)
from .registry import KINDS, MAPS, layout_checks
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


def datapath_unkeyed() -> tuple[str, ...]:
    """cflags that do not change the datapath's instructions (only its maps'
    pins and sizes, which the loader creates): left out of the cache key."""
    names = ["PIN_DIR", "EVENTS_RING_PAGES"]
    for spec in MAPS:
        names += [spec.size_define, spec.pin_define]
    return tuple(f"-D{name}=" for name in names)


def open_pins(config: DatapathConfig) -> tuple[dict[str, int], list[str], list[str]]:
    """Every registry map, pinned in config.pin_dir: a fitting pin opened
    (check_pins raises PinError on one that does not fit, before anything is
    created), a missing one created as the registry declares it and pinned.
    Returns (fds by map name, names reused, names created). What the cache
    and the compile share: bcc then finds every pin and creates none."""
    reused = check_pins(config)
    fds: dict[str, int] = {}
    created: list[str] = []
    try:
        for spec in MAPS:
            path = config.pin_dir / spec.pin
            if spec.name in reused:
                fds[spec.name] = bpfsys.obj_get(str(path))
                continue
            fd = bpfsys.map_create(KINDS[spec.kind], ctypes.sizeof(spec.key), ctypes.sizeof(spec.value),
                                   spec.max_entries(config), spec.flags, spec.name)
            fds[spec.name] = fd
            bpfsys.obj_pin(fd, str(path))
            created.append(spec.name)
    except OSError as e:
        _drop_pins(config, fds, created)
        raise PinError(f"creating the pinned maps in {config.pin_dir} failed: {e}") from e
    return fds, reused, created


def _drop_pins(config: DatapathConfig, fds: Mapping[str, int], created: list[str]) -> None:
    for fd in fds.values():
        os.close(fd)
    for name in created:
        (config.pin_dir / next(s.pin for s in MAPS if s.name == name)).unlink(missing_ok=True)


def _check_maps(loaded: LoadedPrograms, config: DatapathConfig, pinned: Mapping[str, int]) -> None:
    """Every map's C declaration (BPF_TABLE_PINNED) agrees with registry.py
    on kind, key and value sizes, capacity and flags, and bcc opened the
    loader's pin rather than making a map of its own."""
    tables = _bcc_tables(loaded.bpf)
    for spec in MAPS:
        if spec.name not in tables:
            raise BuildError(f"map {spec.name} is not declared in the datapath's C")
        decl, fd = tables[spec.name]
        declared = bpfsys.MapInfo(type=decl.type, key_size=decl.key_size, value_size=decl.value_size,
                                  max_entries=decl.max_entries, map_flags=decl.flags)
        wrong = spec.differences(config, declared)
        if wrong:
            raise BuildError(f"map {spec.name} as compiled has {', '.join(wrong)}: its declaration "
                             "in bpf/lib and enforcer/datapath/registry.py disagree")
        if bpfsys.map_info(fd).id != bpfsys.map_info(pinned[spec.name]).id:
            raise BuildError(f"map {spec.name}: the compiled datapath did not open its pin "
                             f"{config.pin_dir / spec.pin} (is it declared BPF_TABLE_PINNED there?)")


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
    """Programs held by this process: compiled by bcc (bpf, which holds
    their fds and its maps') or loaded from the bytecode cache (bpf None;
    the fds are this object's). Dropping it keeps nothing attached alive by
    itself: tc holds its own references, pins theirs."""

    bpf: Any = None  # bcc.BPF, when compiled in this process
    fds: dict[str, int] = field(default_factory=dict)  # programs by name
    map_fds: dict[str, int] = field(default_factory=dict)  # maps by name (those bcc holds: map_fd())
    owned: list[int] = field(default_factory=list)  # fds cleanup() closes
    reused_pins: list[str] = field(default_factory=list)
    removed_pins: list[str] = field(default_factory=list)  # of earlier layouts
    from_cache: bool = False

    def fd(self, name: str) -> int:
        return self.fds[name]

    def map_fd(self, name: str) -> int:
        """A map of the unit (the events ring buffer, a test's map) by name."""
        if name in self.map_fds:
            return self.map_fds[name]
        if self.bpf is not None:
            return int(self.bpf[name.encode()].map_fd)
        raise KeyError(name)

    def cleanup(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        for fd in self.owned:
            os.close(fd)
        self.owned, self.fds, self.map_fds = [], {}, {}


class CacheMiss(EnforcerError):
    """No usable cached bytecode, and compiling was not asked for."""


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


def _bcc_tables(bpf: Any) -> dict[str, tuple[MapDecl, int]]:
    """Every map of a bcc module as its C declares it, with bcc's fd."""
    from bcc.libbcc import lib

    c = ctypes
    for fn, restype in (("bpf_num_tables", c.c_size_t), ("bpf_table_name", c.c_char_p),
                        ("bpf_table_fd_id", c.c_int), ("bpf_table_type_id", c.c_int),
                        ("bpf_table_max_entries_id", c.c_size_t), ("bpf_table_flags_id", c.c_int),
                        ("bpf_table_key_size_id", c.c_size_t), ("bpf_table_leaf_size_id", c.c_size_t)):
        getattr(lib, fn).restype = restype
        getattr(lib, fn).argtypes = [c.c_void_p] if fn == "bpf_num_tables" else [c.c_void_p, c.c_size_t]
    out = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i).decode()
        out[name] = (MapDecl(name, lib.bpf_table_type_id(bpf.module, i), lib.bpf_table_key_size_id(bpf.module, i),
                             lib.bpf_table_leaf_size_id(bpf.module, i), lib.bpf_table_max_entries_id(bpf.module, i),
                             lib.bpf_table_flags_id(bpf.module, i)),
                     lib.bpf_table_fd_id(bpf.module, i))
    return out


def _record(bpf: Any, key: str, functions: tuple[str, ...]) -> Entry:
    """What the cache keeps of a compiled unit: each function's instructions
    as bcc loaded them, their map references by name, and the maps."""
    from bcc.libbcc import lib

    tables = _bcc_tables(bpf)
    fd_names = {fd: name for name, (_decl, fd) in tables.items()}
    license = lib.bpf_module_license(bpf.module).decode()
    kern_version = int(lib.bpf_module_kern_version(bpf.module))
    programs = {}
    for name in functions:
        insns = bytes(bpf.dump_func(name.encode()))
        refs = tuple(find_map_refs(insns, fd_names))
        # kept with the fds zeroed, as the kernel's tag hashes them: the same unit, the same entry
        programs[name] = ProgramImage(name, patch_map_fds(insns, refs, dict.fromkeys(fd_names.values(), 0)), refs,
                                      bpfsys.BPF_PROG_TYPE_SCHED_CLS, license, 0, kern_version)
    return Entry(key, programs, {name: decl for name, (decl, _fd) in tables.items()})


def _load_entry(entry: Entry, functions: tuple[str, ...], pinned: Mapping[str, int],
                sizes: Mapping[str, int]) -> LoadedPrograms:
    """A cached unit loaded: its maps created (pinned ones given, by
    name; sizes: capacities that differ from the recorded), their fds
    patched into the instructions, each function loaded."""
    loaded = LoadedPrograms(from_cache=True)
    try:
        for decl in entry.maps.values():
            if decl.name in pinned:
                loaded.map_fds[decl.name] = pinned[decl.name]
                continue
            fd = bpfsys.map_create(decl.type, decl.key_size, decl.value_size,
                                   sizes.get(decl.name, decl.max_entries), decl.flags, decl.name)
            loaded.owned.append(fd)
            loaded.map_fds[decl.name] = fd
        for name in functions:
            image = entry.programs[name]
            fd = bpfsys.prog_load(image.prog_type, patch_map_fds(image.insns, image.map_refs, loaded.map_fds),
                                  image.license, name, image.prog_flags, image.kern_version)
            loaded.owned.append(fd)
            loaded.fds[name] = fd
    except BaseException:
        loaded.cleanup()
        raise
    return loaded


@dataclass
class _Unit:
    """One compilation unit and where its cached bytecode would be."""

    source: Path
    text: str
    cflags: list[str]
    functions: tuple[str, ...]
    cache: BytecodeCache | None
    key: str

    @classmethod
    def of(cls, source: Path, cflags: list[str], functions: tuple[str, ...], checks: str = "",
           cached: bool = False, unkeyed: tuple[str, ...] = (), cache_dir: str | None = None) -> _Unit:
        text = amalgamate(source) + checks
        directory = cache_dir_for(cache_dir) if cached else None
        cache = BytecodeCache(directory) if directory is not None else None
        key = cache_key(text, cflags, functions, bpfsys.BPF_PROG_TYPE_SCHED_CLS, unkeyed) if cache else ""
        return cls(source, text, cflags, functions, cache, key)

    def cached(self) -> bool:
        return self.cache is not None and self.cache.path(self.key).exists()

    def load(self, pinned: Mapping[str, int] | None = None, sizes: Mapping[str, int] | None = None,
             verify: Callable[[LoadedPrograms], None] | None = None, compile: bool = True) -> LoadedPrograms:
        """From the cache if it holds the unit and it loads, else compiled
        (and recorded) or, when not compile, CacheMiss."""
        hit = self._from_cache(pinned, sizes)
        if hit is not None:
            return hit
        if not compile:
            raise CacheMiss(f"no cached bytecode of {self.source.name}")
        with self.cache.compiling(self.key) if self.cache is not None else contextlib.nullcontext():
            hit = self._from_cache(pinned, sizes)  # compiled by another process meanwhile
            return hit if hit is not None else self._compile(verify)

    def _from_cache(self, pinned: Mapping[str, int] | None, sizes: Mapping[str, int] | None) -> LoadedPrograms | None:
        if self.cache is None:
            return None
        entry = self.cache.get(self.key)
        if entry is None or not set(self.functions) <= entry.programs.keys():
            return None
        try:
            return _load_entry(entry, self.functions, pinned or {}, sizes or {})
        except (OSError, BytecodeError, KeyError) as e:
            log.warning("cached bytecode of %s (%s) did not load: %s; discarded, compiling",
                        self.source.name, self.cache.path(self.key), e)
            self.cache.discard(self.key)
            return None

    def _compile(self, verify: Callable[[LoadedPrograms], None] | None) -> LoadedPrograms:
        loaded = _compile_text(self.text, self.cflags, self.functions, self.source.name)
        try:
            if verify is not None:
                verify(loaded)
            if self.cache is not None:
                try:
                    entry = _record(loaded.bpf, self.key, self.functions)
                except BytecodeError as e:
                    log.warning("bytecode of %s not cacheable: %s", self.source.name, e)
                else:
                    self.cache.put(entry)
        except BaseException:
            loaded.cleanup()
            raise
        return loaded


def _compile_text(text: str, cflags: list[str], functions: tuple[str, ...], what: str) -> LoadedPrograms:
    from bcc import BPF  # Debian's python3-bpfcc

    bpf = _build(text, cflags, what)
    loaded = LoadedPrograms(bpf=bpf)
    for name in functions:
        try:
            fn = bpf.load_func(name.encode(), BPF.SCHED_CLS)
        except Exception as e:
            bpf.cleanup()
            raise BuildError(f"loading {what}:{name} failed (verifier): {e}") from e
        loaded.fds[name] = fn.fd
    return loaded


def _compile(source: Path, cflags: list[str], functions: tuple[str, ...], checks: str = "",
             cached: bool = False) -> LoadedPrograms:
    """source's functions loaded as sched_cls programs: compiled by bcc or,
    when cached (only for a unit with no pinned maps: the cache creates a
    unit's maps afresh), from the bytecode cache."""
    return _Unit.of(source, cflags, functions, checks, cached=cached).load()


# The jiffies probe, assembled: `call bpf_jiffies64; exit` (a compiler for
# two instructions would cost a second of CPU per process).
BPF_FUNC_JIFFIES64 = 118
_JIFFIES_PROBE = struct.pack("<BBhi", 0x85, 0, 0, BPF_FUNC_JIFFIES64) + struct.pack("<BBhi", 0x95, 0, 0, 0)
STANDARD_HZ = (100, 250, 300, 1000)
# HZ already known (measured by a parent process: the test suite measures it
# once for its ~40 daemons). Unset, every process measures it (~0.5 s).
KERNEL_HZ_ENV = "ENFORCER_KERNEL_HZ"


# Where the running kernel's build configuration may be: its own copy
# (CONFIG_IKCONFIG_PROC) first, then the distribution's file.
KERNEL_CONFIGS = ("/proc/config.gz", "/boot/config-{release}")


@lru_cache(maxsize=1)
def kernel_hz() -> int:
    """The running kernel's HZ (jiffies per second): $ENFORCER_KERNEL_HZ if
    set, else CONFIG_HZ from the kernel's build configuration, else
    measured (run a program returning jiffies twice, a known time apart,
    and take the nearest standard value). The datapath clock converts
    jiffies with it. The configuration is preferred: it is exact, costs
    no 0.3 s wait, and a loaded machine cannot skew it (HZ is in the
    bytecode cache's key: a wrong measurement would also recompile)."""
    given = os.environ.get(KERNEL_HZ_ENV)
    if given:
        if not given.isdigit() or int(given) not in STANDARD_HZ:
            raise ConfigError(f"{KERNEL_HZ_ENV}={given!r}: one of {', '.join(map(str, STANDARD_HZ))}")
        return int(given)
    configured = configured_kernel_hz()
    return configured if configured is not None else measure_kernel_hz()


def configured_kernel_hz(paths: Sequence[str] = KERNEL_CONFIGS) -> int | None:
    """CONFIG_HZ of the running kernel from the first readable
    configuration among paths ({release}: `uname -r`), None when none
    says (or says a value that is not a standard HZ)."""
    release = os.uname().release
    for template in paths:
        path = template.format(release=release)
        try:
            with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        value = line.strip().partition("=")[2]
                        return int(value) if value.isdigit() and int(value) in STANDARD_HZ else None
        except (OSError, EOFError, UnicodeDecodeError):
            continue
    return None


def measure_kernel_hz() -> int:
    fd = bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, _JIFFIES_PROBE, name="jiffies_now")
    try:
        frame = bytes(60)
        t0, j0 = time.monotonic(), bpfsys.prog_test_run(fd, frame).retval & 0xFFFFFFFF
        time.sleep(0.3)
        t1, j1 = time.monotonic(), bpfsys.prog_test_run(fd, frame).retval & 0xFFFFFFFF
    finally:
        os.close(fd)
    measured = ((j1 - j0) & 0xFFFFFFFF) / (t1 - t0)
    return min(STANDARD_HZ, key=lambda hz: abs(hz - measured))


def events_ring_bytes(config: DatapathConfig) -> int:
    """The events ring buffer's size: BPF_RINGBUF_OUTPUT's pages."""
    return config.events_ring_pages * os.sysconf("SC_PAGE_SIZE")


def load_datapath_programs(config: DatapathConfig, compile: bool = True) -> LoadedPrograms:
    """Load from_pod/to_pod/to_network, creating or reusing the pins: from
    the bytecode cache when it has them, else compiled (and cached). Not
    compile: CacheMiss rather than compiling, with nothing created."""
    config.validate()
    unit = _Unit.of(DATAPATH_SOURCE, config.cflags(kernel_hz()), PROGRAMS, layout_checks(), cached=True,
                    unkeyed=datapath_unkeyed(), cache_dir=config.cache_dir)
    if not compile and not unit.cached():
        raise CacheMiss("no cached bytecode of the datapath")
    ensure_bpffs()
    config.pin_dir.mkdir(parents=True, exist_ok=True)
    pinned, reused, created = open_pins(config)
    try:
        loaded = unit.load(pinned, {EVENTS_MAP: events_ring_bytes(config)},
                           verify=lambda compiled: _check_maps(compiled, config, pinned), compile=compile)
    except BaseException:
        _drop_pins(config, pinned, created)
        raise
    loaded.owned += pinned.values()
    loaded.map_fds.update(pinned)
    loaded.reused_pins = reused
    loaded.removed_pins = orphans = remove_old_pins(config.pin_dir)
    log.info("datapath %s: pins in %s (%s)%s", "loaded from cached bytecode" if loaded.from_cache else "compiled",
             config.pin_dir, f"reused {', '.join(reused)}" if reused else "new",
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


def load_and_pin(config: DatapathConfig, compile: bool = True) -> dict[str, Any]:
    """load_datapath_programs, then pin each program (LOAD_PINS) and the
    events ring buffer in config.pin_dir beside the maps, replacing an
    earlier load's; this process's references are dropped. Returns what
    was done (the pins' names, maps reused, orphans removed, HZ, whether
    the bytecode came from the cache)."""
    loaded = load_datapath_programs(config, compile=compile)
    try:
        programs = {}
        for name, fd in loaded.fds.items():
            _pin_replacing(fd, config.pin_dir / program_pin(name))
            programs[name] = program_pin(name)
        _pin_replacing(loaded.map_fd(EVENTS_MAP), config.pin_dir / EVENTS_PIN)
    except OSError as e:
        raise PinError(f"pinning the programs in {config.pin_dir} failed: {e}") from e
    finally:
        loaded.cleanup()
    return {"pin_dir": str(config.pin_dir), "programs": programs, "events": EVENTS_PIN,
            "reused_pins": loaded.reused_pins, "removed_pins": loaded.removed_pins, "kernel_hz": kernel_hz(),
            "from_cache": loaded.from_cache}


def load_noop_program() -> LoadedPrograms:
    return _compile(NOOP_PROGRAM_SOURCE, [], ("noop",), cached=True)


def load_parse_check_program() -> LoadedPrograms:
    """bpf/tests/parse_equiv.c: fast and full parsers side by side."""
    return _compile(PARSE_EQUIV_SOURCE, ["-Wno-unused-function"], ("parse_equiv",), cached=True)


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
