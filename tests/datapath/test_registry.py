"""The map registry is the one table of map facts: what is derived from it
agrees with it, and the loader's pin checks and orphan removal use it."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from enforcer.cli import MAP_SIZE_FIELDS
from enforcer.datapath import bpfsys, registry
from enforcer.datapath.loader import check_pins, load_datapath_programs, remove_old_pins, remove_pins
from enforcer.datapath.reasons import REASON_SLOTS
from enforcer.datapath.source import DatapathConfig
from enforcer.errors import PinError

CONFIG_FIELDS = {f.name for f in dataclasses.fields(DatapathConfig)}


def test_one_entry_per_map_and_pin():
    names = [s.name for s in registry.MAPS]
    assert len(set(names)) == len(names)
    pins = [p for s in registry.MAPS for p in (s.pin, *s.old_pins)]
    assert len(set(pins)) == len(pins)
    assert registry.BY_NAME["conntrack"].pin == "conntrack_v2"
    assert registry.BY_NAME["conntrack"].old_pins == ("conntrack_v1",)
    # v2: the entry holds the verdict reason; v3: and the audited verdict
    assert registry.BY_NAME["policy"].pin == "policy_v3"
    assert registry.BY_NAME["policy"].old_pins == ("policy_v1", "policy_v2")
    for spec in registry.MAPS:
        assert spec.kind in registry.KINDS, spec.name
        assert spec.sizable == (spec.capacity in CONFIG_FIELDS), spec.name


def test_config_derives_capacities_and_flags():
    config = DatapathConfig(policy_max=100, max_endpoint_id=8)
    sizes = config.map_max_entries()
    assert list(sizes) == [s.name for s in registry.MAPS]
    assert sizes["policy"] == 100 and sizes["endpoint_ids"] == 8
    assert sizes["metrics"] == 8 * 2 * REASON_SLOTS and sizes["event_limit"] == 1
    flags = config.cflags()
    for spec in registry.MAPS:
        assert f"-D{spec.size_define}={sizes[spec.name]}" in flags
        assert f'-D{spec.pin_define}="{spec.pin}"' in flags


def test_map_size_option_names_are_the_registry_s():
    assert MAP_SIZE_FIELDS == registry.map_size_fields()
    assert set(MAP_SIZE_FIELDS) == {s.name for s in registry.MAPS if s.sizable}
    assert "metrics" not in MAP_SIZE_FIELDS and "event_limit" not in MAP_SIZE_FIELDS
    assert set(MAP_SIZE_FIELDS.values()) <= CONFIG_FIELDS


def test_differences_name_what_differs():
    spec = registry.BY_NAME["policy"]
    config = DatapathConfig(policy_max=64)
    info = bpfsys.MapInfo(type=bpfsys.BPF_MAP_TYPE_LPM_TRIE, key_size=ctypes.sizeof(spec.key),
                          value_size=ctypes.sizeof(spec.value), max_entries=64,
                          map_flags=registry.BPF_F_NO_PREALLOC)
    assert spec.differences(config, info) == []
    info.type, info.max_entries, info.map_flags = bpfsys.BPF_MAP_TYPE_HASH, 32, 0
    assert spec.differences(config, info) == ["kind hash (expected lpm_trie)", "max_entries 32 (expected 64)",
                                              "flags 0 (expected 1)"]


# -- pins on the kernel ----------------------------------------------------

@pytest.fixture
def pin_dir():
    path = Path(f"/sys/fs/bpf/enforcer-test-pkt-{os.getpid()}-registry")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pin_maps(pin_dir: Path, decls: dict[str, str]) -> None:
    """Pin a map under each name: `name -> "kind", key, value, max_entries`
    (bcc's kind names; u32 keys and values), made with bpf(2), no compiler."""
    for name, decl in decls.items():
        kind, key, value, size = decl.split(", ")
        assert key == value == "u32", decl
        fd = bpfsys.map_create(registry.KINDS[kind.strip('"')], 4, 4, int(size), name=name[:15])
        try:
            bpfsys.obj_pin(fd, str(pin_dir / name))
        finally:
            os.close(fd)
        assert (pin_dir / name).exists()


def test_a_pin_of_another_layout_is_refused(pin_dir):
    pin_maps(pin_dir, {"policy_v3": '"hash", u32, u32, 16'})
    with pytest.raises(PinError) as err:
        check_pins(DatapathConfig(pin_dir=pin_dir))
    message = str(err.value)
    assert f"pinned map {pin_dir}/policy_v3 has kind hash (expected lpm_trie)" in message
    for what in ("key size 4 (expected 16)", "value size 4 (expected 12)", "max_entries 16", "enforcer cleanup"):
        assert what in message


def test_load_reuses_fitting_pins_refuses_resized_ones_and_removes_old_layouts(pin_dir):
    foreign = {"conntrack_v3": '"hash", u32, u32, 4', "somebody_else_v1": '"hash", u32, u32, 4'}
    pin_maps(pin_dir, {"conntrack_v1": '"hash", u32, u32, 4', "policy_v1": '"hash", u32, u32, 4',
                       "fragments_v1": '"lru_hash", u32, u32, 4', **foreign})
    config = DatapathConfig(pin_dir=pin_dir, policy_max=64, ct_max=128)

    loaded = load_datapath_programs(config)
    loaded.cleanup()
    assert loaded.reused_pins == []
    present = {p.name for p in pin_dir.iterdir()}
    assert present == {s.pin for s in registry.MAPS} | set(foreign), "orphans of earlier layouts removed, others kept"

    assert check_pins(config) == [s.name for s in registry.MAPS]
    with pytest.raises(PinError, match=r"policy_v3 has max_entries 64 \(expected 262144\)"):
        check_pins(dataclasses.replace(config, policy_max=262144))
    with pytest.raises(PinError, match=r"conntrack_v2 has max_entries 128 \(expected 256\)"):
        load_datapath_programs(dataclasses.replace(config, ct_max=256))

    pin_maps(pin_dir, {"conntrack_v1": '"hash", u32, u32, 4'})
    assert remove_pins(config) == [s.name for s in registry.MAPS] + ["conntrack_v1"]
    assert {p.name for p in pin_dir.iterdir()} == set(foreign), "only our own pins are removed"
    assert remove_old_pins(pin_dir) == []


def test_the_loader_child_pins_programs_reuses_maps_and_reports_pin_errors(pin_dir):
    """What the daemon does (loadchild.load_pinned): the child compiles and
    pins; a second load reuses every map and replaces the program pins; a
    resized map is refused with the child's PinError; cleanup removes it all."""
    from enforcer.datapath.loadchild import load_pinned
    from enforcer.datapath.loader import LOAD_PINS, PROGRAMS

    pin_maps(pin_dir, {"conntrack_v1": '"hash", u32, u32, 4'})
    config = DatapathConfig(pin_dir=pin_dir, policy_max=64, ct_max=128)
    first = load_pinned(config)
    try:
        assert first.reused_pins == [] and first.removed_pins == ["conntrack_v1"]
        assert set(first.fds) == set(PROGRAMS) and first.kernel_hz in (100, 250, 300, 1000)
        assert bpfsys.map_info(first.events_fd).type == 27  # BPF_MAP_TYPE_RINGBUF
        ids = {name: bpfsys.prog_id(fd) for name, fd in first.fds.items()}
    finally:
        first.cleanup()
    assert {p.name for p in pin_dir.iterdir()} == {s.pin for s in registry.MAPS} | set(LOAD_PINS)

    second = load_pinned(config)
    try:
        assert second.reused_pins == [s.name for s in registry.MAPS]
        assert all(bpfsys.prog_id(fd) != ids[name] for name, fd in second.fds.items()), "pins replaced"
    finally:
        second.cleanup()
    assert {p.name for p in pin_dir.iterdir()} == {s.pin for s in registry.MAPS} | set(LOAD_PINS)

    with pytest.raises(PinError, match=r"conntrack_v2 has max_entries 128 \(expected 256\)"):
        load_pinned(dataclasses.replace(config, ct_max=256))
    assert remove_pins(config) == [s.name for s in registry.MAPS] + list(LOAD_PINS)
    assert not pin_dir.exists()
