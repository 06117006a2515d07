"""The bytecode cache's pure parts (enforcer/datapath/bytecode.py): where map
fds sit in the instructions (ld_imm64), how they are recorded and patched,
the entry format, the key, and the cache directory's files. No BPF."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from enforcer.datapath import bytecode
from enforcer.datapath.bytecode import (
    BytecodeCache,
    BytecodeError,
    Entry,
    MapDecl,
    ProgramImage,
    cache_key,
    find_map_refs,
    patch_map_fds,
)


def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


def ld_map_fd(dst: int, fd: int) -> bytes:
    """`r<dst> = map[fd]`, as clang emits bcc's map references: two slots."""
    return insn(0x18, dst, bytecode.BPF_PSEUDO_MAP_FD, imm=fd) + insn(0, imm=0)


def ld_imm64(dst: int, value: int) -> bytes:
    return insn(0x18, dst, 0, imm=value & 0xFFFFFFFF) + insn(0, imm=value >> 32)


MOV_R0_0 = insn(0xB7)
EXIT = insn(0x95)
CALL_MAP_LOOKUP = insn(0x85, imm=1)
# r1 = map[7]; r6 = 0x1_0000_0007 (a constant that looks like fd 7); r1 = map[9]; call; r0 = 0; exit
PROGRAM = ld_map_fd(1, 7) + ld_imm64(6, 0x1_0000_0007) + ld_map_fd(1, 9) + CALL_MAP_LOOKUP + MOV_R0_0 + EXIT
FDS = {7: "policy", 9: "events"}


def fields(insns: bytes, i: int) -> tuple[int, int, int, int, int]:
    op, regs, off, imm = struct.unpack_from("<BBhi", insns, i * 8)
    return op, regs & 0xF, regs >> 4, off, imm


def test_map_references_are_the_ld_imm64s_of_a_map_fd():
    assert find_map_refs(PROGRAM, FDS) == [(0, "policy"), (4, "events")]


def test_patching_writes_each_fd_into_its_first_slot_and_zero_into_the_second():
    patched = patch_map_fds(PROGRAM, [(0, "policy"), (4, "events")], {"policy": 40, "events": 41})
    assert len(patched) == len(PROGRAM)
    assert fields(patched, 0) == (0x18, 1, 1, 0, 40)
    assert fields(patched, 1) == (0, 0, 0, 0, 0)
    assert fields(patched, 4) == (0x18, 1, 1, 0, 41)
    assert fields(patched, 5) == (0, 0, 0, 0, 0)
    # everything else as it was, the constant that looks like fd 7 included
    changed = [i for i in range(len(PROGRAM) // 8) if patched[i * 8:i * 8 + 8] != PROGRAM[i * 8:i * 8 + 8]]
    assert changed == [0, 4]
    assert fields(patched, 2) == (0x18, 6, 0, 0, 7) and fields(patched, 3)[4] == 1


def test_recording_then_patching_with_the_same_fds_is_the_identity():
    assert patch_map_fds(PROGRAM, find_map_refs(PROGRAM, FDS), {"policy": 7, "events": 9}) == PROGRAM


def test_the_second_slot_of_a_ld_imm64_is_never_taken_for_an_instruction():
    # a second slot whose bytes read as a map ld_imm64: skipped, not recorded
    tricky = insn(0x18, 2, 0, imm=5) + insn(0x18, 1, 1, imm=7) + EXIT
    assert find_map_refs(tricky, FDS) == []


@pytest.mark.parametrize("program, says", [
    (ld_map_fd(1, 8) + EXIT, "fd 8, which is no map"),
    (insn(0x18, 1, 2, imm=7) + insn(0) + EXIT, "pseudo source 2"),  # BPF_PSEUDO_MAP_VALUE
    (EXIT + insn(0x18, 1, 1, imm=7), "no second half"),
    (EXIT[:5], "not whole instructions"),
], ids=["unknown-fd", "map-value", "truncated", "partial"])
def test_what_cannot_be_relocated_is_refused(program, says):
    with pytest.raises(BytecodeError, match=says):
        find_map_refs(program, FDS)


@pytest.mark.parametrize("refs, fds, says", [
    ([(2, "policy")], {"policy": 1}, "not a ld_imm64 of a map fd"),
    ([(8, "policy")], {"policy": 1}, "outside"),
    ([(0, "conntrack")], {"policy": 1}, "no fd for map conntrack"),
], ids=["not-a-map-load", "out-of-range", "unknown-map"])
def test_a_reference_that_does_not_fit_the_instructions_is_refused(refs, fds, says):
    with pytest.raises(BytecodeError, match=says):
        patch_map_fds(PROGRAM, refs, fds)


def entry(key: str = "k" * 64) -> Entry:
    return Entry(key, {"prog": ProgramImage("prog", PROGRAM, ((0, "policy"), (4, "events")), 3, "GPL", 0, 0x060100)},
                 {"policy": MapDecl("policy", 11, 16, 8, 1024, 1), "events": MapDecl("events", 27, 0, 0, 4096)})


def test_an_entry_survives_its_json():
    e = entry()
    assert Entry.from_json(e.to_json()) == e


@pytest.mark.parametrize("damage", [
    lambda raw: raw.update(format=99),
    lambda raw: raw["programs"]["prog"].update(insns="not base64!"),
    lambda raw: raw["programs"]["prog"].update(map_refs=[[2, "policy"]]),
    lambda raw: raw["programs"]["prog"].update(map_refs=[[0, "nosuchmap"]]),
    lambda raw: raw["maps"].pop("events"),
    lambda raw: raw.pop("programs"),
], ids=["format", "base64", "ref-not-at-a-map-load", "ref-to-unknown-map", "map-missing", "no-programs"])
def test_a_damaged_entry_does_not_parse(damage):
    raw = json.loads(entry().to_json())
    damage(raw)
    with pytest.raises((ValueError, KeyError, TypeError)):
        Entry.from_json(json.dumps(raw))


def test_the_key_leaves_out_only_the_unkeyed_flags():
    flags = ["-DPIN_DIR=\"/sys/fs/bpf/a\"", "-DCT_MAX=10", "-DCT_TIMEOUT_SYN=60"]
    base = cache_key("text", flags, ["f"], 3, unkeyed=("-DPIN_DIR=", "-DCT_MAX="))
    assert cache_key("text", ["-DPIN_DIR=\"/b\"", "-DCT_MAX=99", "-DCT_TIMEOUT_SYN=60"], ["f"], 3,
                     unkeyed=("-DPIN_DIR=", "-DCT_MAX=")) == base
    assert cache_key("text", flags[:2] + ["-DCT_TIMEOUT_SYN=61"], ["f"], 3, unkeyed=("-DPIN_DIR=", "-DCT_MAX=")) != base
    assert cache_key("text", flags, ["f"], 3) != base, "unkeyed only when the caller says"
    assert cache_key("text2", flags, ["f"], 3, unkeyed=("-DPIN_DIR=", "-DCT_MAX=")) != base
    assert cache_key("text", flags, ["g"], 3, unkeyed=("-DPIN_DIR=", "-DCT_MAX=")) != base


def test_the_key_depends_on_kernel_and_bcc(monkeypatch):
    base = cache_key("text", [], ["f"], 3)
    monkeypatch.setattr(bytecode, "_bcc_version", lambda: "0.0.1")
    assert cache_key("text", [], ["f"], 3) != base
    monkeypatch.undo()
    monkeypatch.setattr(bytecode, "_kernel_build", lambda: {"release": "1.2.3"})
    assert cache_key("text", [], ["f"], 3) != base


def test_cache_dir_from_config_environment_or_default(monkeypatch):
    monkeypatch.delenv(bytecode.CACHE_DIR_ENV, raising=False)
    assert bytecode.cache_dir_for(None) == bytecode.DEFAULT_CACHE_DIR
    assert bytecode.cache_dir_for("/x") == Path("/x")
    assert bytecode.cache_dir_for("") is None
    monkeypatch.setenv(bytecode.CACHE_DIR_ENV, "/y")
    assert bytecode.cache_dir_for(None) == Path("/y")
    assert bytecode.cache_dir_for("/x") == Path("/x")
    monkeypatch.setenv(bytecode.CACHE_DIR_ENV, "off")
    assert bytecode.cache_dir_for(None) is None


def test_the_cache_writes_whole_entries_and_discards_corrupt_ones(tmp_path):
    cache = BytecodeCache(tmp_path / "cache")
    e = entry()
    assert cache.get(e.key) is None
    assert cache.put(e)
    assert os.listdir(tmp_path / "cache") == [f"{e.key}.json"], "no temporary file left"
    assert cache.get(e.key) == e
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert cache.path(e.key).stat().st_mode & 0o777 == 0o600

    cache.path(e.key).write_text(cache.path(e.key).read_text()[:100])  # cut short
    assert cache.get(e.key) is None
    assert not cache.path(e.key).exists(), "a corrupt entry is removed"

    other = entry("o" * 64)
    cache.put(other)
    os.replace(cache.path(other.key), cache.path(e.key))  # an entry under another's name
    assert cache.get(e.key) is None and not cache.path(e.key).exists()


def test_an_entry_others_may_write_is_not_read(tmp_path):
    cache = BytecodeCache(tmp_path)
    e = entry()
    cache.put(e)
    os.chmod(cache.path(e.key), 0o666)
    assert cache.get(e.key) is None


def test_a_cache_that_cannot_be_written_is_no_error(tmp_path):
    (tmp_path / "file").write_text("")
    assert not BytecodeCache(tmp_path / "file" / "cache").put(entry())


def test_one_compile_at_a_time_per_key(tmp_path):
    """compiling(key) holds an flock: a second holder of the same key waits."""
    import threading
    import time

    cache = BytecodeCache(tmp_path / "cache")
    order = []
    with cache.compiling("k"):
        def second() -> None:
            with cache.compiling("k"):
                order.append("second")
        t = threading.Thread(target=second)
        t.start()
        with cache.compiling("other"):  # another key: no wait
            pass
        time.sleep(0.2)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


def test_no_lock_file_no_wait(tmp_path):
    (tmp_path / "file").write_text("")
    with BytecodeCache(tmp_path / "file" / "cache").compiling("k"):
        pass
