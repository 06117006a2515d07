"""Compiled BPF bytecode kept between loads, so that a daemon start or a
test harness does not run clang again for a program it compiled before.

After bcc compiles and loads a unit (loader.py), each program's
instructions (bcc's BPF.dump_func: exactly the bytes it loaded) are
recorded with their map references: bcc puts each map's fd into the
immediate of a `ld_imm64 rX, fd` marked BPF_PSEUDO_MAP_FD, which becomes
(instruction index -> map name), the immediate kept as 0. The unit's maps are recorded too (kind,
key and value sizes, capacity, flags). An entry is one JSON file named by a
hash of everything that changes the instructions (cache_key): the source
text as compiled, the cflags except those that only name pins or size maps,
the kernel release and its headers, the bcc version.

A hit loads with no compiler at all: the loader creates (or opens the pins
of) the maps, writes their fds into the recorded immediates (patch_map_fds)
and loads the instructions with BPF_PROG_LOAD; the kernel verifier checks
them as it checks bcc's. An entry that does not parse, does not fit its
key or does not load is discarded and the unit compiled again: the cache
never makes a load fail.

No bcc here: a hit must not load LLVM (loadchild.py, the daemon).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = 1
INSN_SIZE = 8
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_DW | BPF_IMM: two instruction slots
BPF_PSEUDO_MAP_FD = 1  # ld_imm64 src_reg: the immediate is a map fd
# Where the cache lives unless the config says (DatapathConfig.cache_dir)
# or the environment does ("" or "off": no cache).
DEFAULT_CACHE_DIR = Path("/var/cache/enforcer/bpf")
CACHE_DIR_ENV = "ENFORCER_BPF_CACHE_DIR"


class BytecodeError(ValueError):
    """Instructions the cache cannot record or restore (a relocation it
    does not know, a map reference that is not a ld_imm64, ...)."""


def _insn(insns: bytes | bytearray, i: int) -> tuple[int, int, int, int]:
    """(opcode, registers byte, offset, immediate) of instruction i."""
    return struct.unpack_from("<BBhi", insns, i * INSN_SIZE)


def _src_reg(regs: int) -> int:
    return regs >> 4  # little-endian BPF: dst_reg in the low nibble, src_reg in the high


def find_map_refs(insns: bytes, fd_names: Mapping[int, str]) -> list[tuple[int, str]]:
    """(instruction index, map name) of every map fd in insns, by the fds
    the compiler used (fd_names). Refuses what a plain copy would not
    reproduce: another ld_imm64 pseudo source (map values, BTF ids,
    functions) or an fd no recorded map has."""
    if len(insns) % INSN_SIZE:
        raise BytecodeError(f"{len(insns)} bytes: not whole instructions")
    refs = []
    count = len(insns) // INSN_SIZE
    i = 0
    while i < count:
        op, regs, _off, imm = _insn(insns, i)
        if op != BPF_LD_IMM64:
            i += 1
            continue
        if i + 1 >= count:
            raise BytecodeError(f"ld_imm64 at {i} has no second half")
        src = _src_reg(regs)
        if src == BPF_PSEUDO_MAP_FD:
            name = fd_names.get(imm)
            if name is None:
                raise BytecodeError(f"ld_imm64 at {i} loads fd {imm}, which is no map of this unit")
            if _insn(insns, i + 1)[3] != 0:
                raise BytecodeError(f"ld_imm64 at {i}: a map fd with nonzero upper half")
            refs.append((i, name))
        elif src != 0:
            raise BytecodeError(f"ld_imm64 at {i} has pseudo source {src}: not relocatable here")
        i += 2
    return refs


def patch_map_fds(insns: bytes, refs: Iterable[tuple[int, str]], fds: Mapping[str, int]) -> bytes:
    """insns with each referenced map's fd (fds, by name) in its ld_imm64:
    the low 32 bits in the first slot's immediate, 0 in the second's."""
    out = bytearray(insns)
    count = len(insns) // INSN_SIZE
    for index, name in refs:
        if not 0 <= index < count - 1:
            raise BytecodeError(f"map reference at {index}: outside {count} instructions")
        op, regs, _off, _imm = _insn(out, index)
        if op != BPF_LD_IMM64 or _src_reg(regs) != BPF_PSEUDO_MAP_FD:
            raise BytecodeError(f"map reference at {index}: not a ld_imm64 of a map fd (opcode {op:#x})")
        if name not in fds:
            raise BytecodeError(f"map reference at {index}: no fd for map {name}")
        struct.pack_into("<i", out, index * INSN_SIZE + 4, fds[name])
        struct.pack_into("<i", out, (index + 1) * INSN_SIZE + 4, 0)
    return bytes(out)


@dataclass(frozen=True)
class MapDecl:
    """A map of the unit as the compiler declared it."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


@dataclass(frozen=True)
class ProgramImage:
    name: str
    insns: bytes
    map_refs: tuple[tuple[int, str], ...]
    prog_type: int
    license: str = "GPL"
    prog_flags: int = 0
    kern_version: int = 0


@dataclass
class Entry:
    key: str
    programs: dict[str, ProgramImage]
    maps: dict[str, MapDecl] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "key": self.key,
            "maps": {m.name: [m.type, m.key_size, m.value_size, m.max_entries, m.flags] for m in self.maps.values()},
            "programs": {p.name: {"insns": base64.b64encode(p.insns).decode(), "map_refs": list(p.map_refs),
                                  "prog_type": p.prog_type, "license": p.license, "prog_flags": p.prog_flags,
                                  "kern_version": p.kern_version} for p in self.programs.values()},
        })

    @classmethod
    def from_json(cls, text: str) -> Entry:
        """Parsed and checked: every map reference is a ld_imm64 of a map
        fd naming a recorded map. Raises (ValueError, KeyError, TypeError)."""
        raw = json.loads(text)
        if raw["format"] != FORMAT:
            raise BytecodeError(f"format {raw['format']}, not {FORMAT}")
        maps = {name: MapDecl(name, *(int(v) for v in decl)) for name, decl in raw["maps"].items()}
        programs = {}
        for name, p in raw["programs"].items():
            insns = base64.b64decode(p["insns"], validate=True)
            refs = tuple((int(i), str(m)) for i, m in p["map_refs"])
            if not insns or len(insns) % INSN_SIZE:
                raise BytecodeError(f"program {name}: {len(insns)} bytes")
            patch_map_fds(insns, refs, dict.fromkeys(maps, 0))  # every reference where it should be
            programs[name] = ProgramImage(name, insns, refs, int(p["prog_type"]), str(p["license"]),
                                          int(p["prog_flags"]), int(p["kern_version"]))
        return cls(str(raw["key"]), programs, maps)


def _bcc_version() -> str:
    """bcc's version, read from its version.py: importing bcc would load
    libbcc (LLVM), which a cache hit must not."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return "none"
    for location in spec.submodule_search_locations:
        path = Path(location) / "version.py"
        if path.exists():
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", path.read_text())
            if m:
                return m.group(1)
    return "unknown"


def _kernel_build() -> dict[str, str]:
    """The running kernel's release and the headers bcc compiles against
    (the /lib/modules links setup makes may point at another kernel's)."""
    release = os.uname().release
    out = {"release": release}
    for link in ("build", "source"):
        out[link] = os.path.realpath(f"/lib/modules/{release}/{link}")
    return out


def cache_key(text: str, cflags: Iterable[str], functions: Iterable[str], prog_type: int,
              unkeyed: tuple[str, ...] = ()) -> str:
    """The hash naming an entry: what the compiled instructions depend on.
    unkeyed: prefixes of cflags left out (`-DPIN_DIR=`, capacities, pin
    names: they only name pins or size maps, which the loader creates)."""
    keyed = [flag for flag in cflags if not flag.startswith(unkeyed)]
    material = json.dumps({"format": FORMAT, "text": text, "cflags": keyed, "functions": sorted(functions),
                           "prog_type": prog_type, "kernel": _kernel_build(), "bcc": _bcc_version()})
    return hashlib.sha256(material.encode()).hexdigest()


def cache_dir_for(configured: str | None) -> Path | None:
    """configured (DatapathConfig.cache_dir): a directory, "" for none, or
    None: $ENFORCER_BPF_CACHE_DIR, else DEFAULT_CACHE_DIR. "off" is none too."""
    value = configured if configured is not None else os.environ.get(CACHE_DIR_ENV, str(DEFAULT_CACHE_DIR))
    return Path(value) if value and value != "off" else None


class BytecodeCache:
    """Entries in one directory, one file each (<key>.json), written
    through a temporary file and a rename: a reader sees a whole entry or
    none. Only files this user owns and nobody else may write are read:
    their bytecode is loaded into the kernel."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                    log.warning("BPF bytecode cache %s: not owned by this user or writable by others: ignored", path)
                    return None
                text = f.read().decode()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("BPF bytecode cache %s unreadable (%s): compiling", path, e)
            return None
        try:
            entry = Entry.from_json(text)
            if entry.key != key:
                raise BytecodeError(f"holds key {entry.key[:12]}")
        except (ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("BPF bytecode cache %s is corrupt (%s): discarded", path, e)
            self.discard(key)
            return None
        return entry

    def put(self, entry: Entry) -> bool:
        """Write entry; a failure (read-only, full disk) is logged, never raised."""
        path = self.path(entry.key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(entry.to_json())
            os.replace(tmp, path)
        except OSError as e:
            log.warning("BPF bytecode cache: writing %s failed (%s): not cached", path, e)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        return True

    @contextlib.contextmanager
    def compiling(self, key: str) -> Iterator[None]:
        """Held while key's unit is compiled (an flock on .<key>.lock): a
        process about to compile the same unit waits, then finds it cached,
        rather than compiling it again beside (daemons and harnesses that
        start together). Without a lock file (read-only), no waiting."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def discard(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as e:
            log.warning("BPF bytecode cache: removing %s failed: %s", self.path(key), e)
