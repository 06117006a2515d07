"""The bytecode cache on the real kernel (enforcer/datapath/bytecode.py,
loader.py): a hit loads the same programs a compile does (the kernel's
prog tag hashes the instructions with map fds zeroed) on the same pins; a
cflag that changes code misses, one that only sizes a map or names a pin
does not; a corrupt or unloadable entry is recompiled; the daemon's load
from a warm cache runs no compiler (no child, no bcc)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.datapath import bpfsys, loader, registry
from enforcer.datapath.source import DatapathConfig


def pin_dir_for(tag: str) -> Path:
    return Path(f"/sys/fs/bpf/enforcer-test-bcache-{os.getpid()}-{tag}")


BASE = DatapathConfig(ct_max=1024, policy_max=1024, ipcache_max=1024)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    """The datapath compiled once for the module, into a cache of its own:
    (that cache, the compiled programs as the kernel has them). Each test
    starts from a copy (a compile costs seconds of CPU)."""
    cache = tmp_path_factory.mktemp("seed") / "bpf-cache"
    cfg = dataclasses.replace(BASE, pin_dir=pin_dir_for("seed"), cache_dir=str(cache))
    try:
        compiled = loader.load_datapath_programs(cfg)
        try:
            assert not compiled.from_cache and compiled.bpf is not None
            yield cache, programs(compiled), maps_of(compiled)
        finally:
            compiled.cleanup()
    finally:
        loader.remove_pins(cfg)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "bpf-cache"


@pytest.fixture
def warm(seeded, cache: Path) -> Path:
    shutil.copytree(seeded[0], cache)
    return cache


@pytest.fixture
def config(cache: Path, request: pytest.FixtureRequest):
    cfg = dataclasses.replace(BASE, pin_dir=pin_dir_for(request.node.name[:20]), cache_dir=str(cache))
    yield cfg
    loader.remove_pins(cfg)


def programs(loaded: loader.LoadedPrograms) -> dict[str, tuple[str, int, bytes]]:
    """Each program's tag, translated length and name, as the kernel has it."""
    out = {}
    for name, fd in loaded.fds.items():
        info = bpfsys.prog_info(fd)
        out[name] = (bytes(info.tag).hex(), info.xlated_prog_len, info.name)
    return out


def maps_of(loaded: loader.LoadedPrograms) -> dict[str, tuple[int, ...]]:
    out = {}
    for name in [s.name for s in registry.MAPS] + [loader.EVENTS_MAP]:
        info = bpfsys.map_info(loaded.map_fd(name))
        out[name] = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags, info.name)
    return out


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


def test_a_hit_loads_the_programs_a_compile_does(seeded, warm, config):
    _, fresh, fresh_maps = seeded
    assert len(entries(warm)) == 1
    hit = loader.load_datapath_programs(config)
    try:
        assert hit.from_cache and hit.bpf is None
        assert programs(hit) == fresh, "same instructions (tags), lengths and names"
        assert maps_of(hit) == fresh_maps, "the same maps: kinds, sizes, flags, names (events ring included)"
        assert hit.reused_pins == []
        pinned_ids = {s.name: bpfsys.map_info(hit.map_fd(s.name)).id for s in registry.MAPS}
    finally:
        hit.cleanup()
    assert sorted(p.name for p in config.pin_dir.iterdir()) == sorted(s.pin for s in registry.MAPS)

    again = loader.load_datapath_programs(config)  # on the pins the first left
    try:
        assert again.from_cache and again.reused_pins == [s.name for s in registry.MAPS]
        assert {s.name: bpfsys.map_info(again.map_fd(s.name)).id for s in registry.MAPS} == pinned_ids
        assert programs(again) == fresh
    finally:
        again.cleanup()


def test_pin_and_size_flags_share_an_entry_code_flags_do_not(seeded, warm, config):
    first = seeded[1]
    resized = dataclasses.replace(config, ct_max=2048, events_ring_pages=2)
    loaded = loader.load_datapath_programs(resized)
    try:
        assert loaded.from_cache, "capacities and the pin directory change no instruction"
        assert programs(loaded) == first
        assert bpfsys.map_info(loaded.map_fd("conntrack")).max_entries == 2048
        assert bpfsys.map_info(loaded.map_fd(loader.EVENTS_MAP)).max_entries == 2 * os.sysconf("SC_PAGE_SIZE")
    finally:
        loaded.cleanup()
    loader.remove_pins(resized)

    changed = dataclasses.replace(config, ct_timeout_syn=61)
    loaded = loader.load_datapath_programs(changed)
    try:
        assert not loaded.from_cache, "a timeout is in the code: compiled"
        assert programs(loaded) != first
    finally:
        loaded.cleanup()
    assert len(entries(warm)) == 2


def test_the_unkeyed_flags_really_change_no_instruction(seeded, config):
    """What the key leaves out (loader.datapath_unkeyed) changed, no cache:
    compiled to the same tags as the seed. A capacity used in code would
    fail this."""
    big = dataclasses.replace(config, cache_dir="", **{
        spec.capacity: 2 * spec.max_entries(config) for spec in registry.MAPS if spec.sizable},
        events_ring_pages=4)
    loaded = loader.load_datapath_programs(big)
    try:
        assert not loaded.from_cache
        assert programs(loaded) == seeded[1]
    finally:
        loaded.cleanup()


def test_a_corrupt_or_unloadable_entry_is_recompiled(seeded, warm, config):
    fresh = seeded[1]
    (entry,) = entries(warm)
    good = entry.read_text()

    entry.write_text(good[: len(good) // 2])
    with pytest.raises(loader.CacheMiss):  # the daemon's try: no compile, nothing left
        loader.load_datapath_programs(config, compile=False)
    assert not entry.exists(), "a corrupt entry is removed"
    assert not config.pin_dir.exists() or not any(config.pin_dir.iterdir())

    raw = json.loads(good)  # parses, but the verifier refuses it: `exit` with r0 unset
    raw["programs"]["to_pod"].update(insns="lQAAAAAAAAA=", map_refs=[])
    entry.write_text(json.dumps(raw))
    loaded = loader.load_datapath_programs(config)
    try:
        assert not loaded.from_cache and programs(loaded) == fresh
    finally:
        loaded.cleanup()
    assert entry.read_text() == good, "recompiled and rewritten whole"
    hit = loader.load_datapath_programs(config)
    try:
        assert hit.from_cache and programs(hit) == fresh
    finally:
        hit.cleanup()


def test_without_compile_a_miss_creates_nothing(config, cache):
    with pytest.raises(loader.CacheMiss):
        loader.load_datapath_programs(config, compile=False)
    assert not config.pin_dir.exists() or not any(config.pin_dir.iterdir())
    assert not entries(cache)


def test_the_daemon_loads_a_warm_cache_without_child_or_bcc(config, cache):
    """loadchild.load_pinned, in a process of its own: the first load
    compiles in the child; the second is done in-process, bcc never imported."""
    script = (
        "import json, sys, logging\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from enforcer.datapath.loadchild import config_from_json, load_pinned\n"
        "p = load_pinned(config_from_json(sys.argv[1]))\n"
        "print(json.dumps({'bcc': 'bcc' in sys.modules, 'programs': sorted(p.fds)}))\n"
        "p.cleanup()\n"
    )
    from enforcer.datapath.loadchild import config_to_json

    outcomes = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script, config_to_json(config)], capture_output=True,
                              text=True, timeout=300, check=True)
        outcomes.append((json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr))
    (first, first_log), (second, second_log) = outcomes
    assert "by a child process" in first_log
    assert "from cached bytecode" in second_log and "by a child process" not in second_log
    assert first["programs"] == second["programs"] == sorted(loader.PROGRAMS)
    assert not first["bcc"] and not second["bcc"]
    assert {p.name for p in config.pin_dir.iterdir()} == {s.pin for s in registry.MAPS} | set(loader.LOAD_PINS)


def test_the_small_programs_are_cached_too(monkeypatch, cache):
    monkeypatch.setenv("ENFORCER_BPF_CACHE_DIR", str(cache))
    tags = []
    for _ in range(2):
        loaded = loader.load_noop_program()
        try:
            tags.append((loaded.from_cache, programs(loaded)))
        finally:
            loaded.cleanup()
    assert [hit for hit, _ in tags] == [False, True]
    assert tags[0][1] == tags[1][1]
