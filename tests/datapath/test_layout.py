"""The Python mirrors in enforcer.datapath.layout agree with the C structs,
and the C map declarations with the registry.

Two ways: against the types bcc derives from the compiled C (same size, and
every field at the same offset with the same size and name), and by the
generated _Static_asserts the loader appends at every daemon start
(registry.layout_checks), which must fail the compile, naming the struct
and field, when a layout disagrees."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path

import pytest

from enforcer.datapath import layout, loader, registry
from enforcer.datapath.loader import DATAPATH_SOURCE
from enforcer.datapath.source import BPF_DIR, DatapathConfig, amalgamate
from enforcer.errors import BuildError

SHARED = dict((c_type.removeprefix("struct "), py) for c_type, py in registry.SHARED_STRUCTS)


def pin_dir_for(tag: str) -> Path:
    return Path(f"/sys/fs/bpf/enforcer-test-pkt-{os.getpid()}-{tag}")


@pytest.fixture(scope="module")
def compiled():
    """The datapath as the loader compiles it (layout checks included),
    plus a map of each shared struct so bcc exposes its type."""
    from bcc import BPF

    pin = pin_dir_for("layout")
    pin.mkdir(parents=True, exist_ok=True)
    text = amalgamate(DATAPATH_SOURCE) + registry.layout_checks()
    for name in SHARED:
        text += f"BPF_HASH(layout_{name}, u32, struct {name}, 1);\n"
    bpf = BPF(text=text.encode(), cflags=DatapathConfig(pin_dir=pin).cflags())
    try:
        yield bpf
    finally:
        bpf.cleanup()
        shutil.rmtree(pin, ignore_errors=True)


def assert_same_layout(ours: type, theirs: type, what: str) -> None:
    assert ctypes.sizeof(ours) == ctypes.sizeof(theirs), f"{what}: size"
    if not hasattr(ours, "_fields_"):
        return
    their_names = [f[0] for f in theirs._fields_ if not f[0].startswith("__pad")]
    our_names = [f[0] for f in ours._fields_]
    assert our_names == their_names, f"{what}: field names/order"
    for name in our_names:
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a.offset, a.size) == (b.offset, b.size), f"{what}.{name}: offset/size"


@pytest.mark.parametrize("spec", registry.MAPS, ids=lambda s: s.name)
def test_map_layouts_match_c(compiled, spec):
    table = compiled[spec.name.encode()]
    leaf = table.Leaf
    if issubclass(leaf, ctypes.Array):  # per-CPU map: bcc gives one slot per CPU
        leaf = leaf._type_
    assert_same_layout(spec.key, table.Key, f"{spec.name} key")
    assert_same_layout(spec.value, leaf, f"{spec.name} value")


@pytest.mark.parametrize("name", list(SHARED))
def test_shared_structs_match_c(compiled, name):
    assert_same_layout(SHARED[name], compiled[f"layout_{name}".encode()].Leaf, name)


def _declarations() -> dict[str, list[str]]:
    """Every BPF_TABLE_PINNED declaration of the datapath, by map name:
    [kind, key type, value type, name, max_entries, pin, flags]."""
    text = amalgamate(DATAPATH_SOURCE)
    decls = re.findall(r"^BPF_TABLE_PINNED(7?)\(([^;]*)\);", text, re.M | re.S)
    out = {}
    for seven, args in decls:
        parts = [" ".join(p.split()) for p in args.split(",")]
        if not seven:
            parts.append("0")
        out[parts[3]] = parts
    return out


def test_c_declarations_are_the_registry():
    """A map added in C without a registry entry, or declared otherwise than
    the registry says (kind, key and value types, flags; capacity and pin
    only by the registry's -D names), fails here."""
    decls = _declarations()
    assert set(decls) == set(registry.BY_NAME)
    for name, (kind, key_c, value_c, _, size, pin, flags) in decls.items():
        spec = registry.BY_NAME[name]
        assert kind == f'"{spec.kind}"', name
        assert (key_c, value_c) == (spec.key_c, spec.value_c), name
        assert size == spec.size_define, name
        assert pin == f'PIN_DIR "/" {spec.pin_define}', name
        assert flags == registry.FLAG_NAMES.get(spec.flags, str(spec.flags)), name
    assert not re.search(r'_v\d+"', amalgamate(DATAPATH_SOURCE)), "a literal pin name in C"


def test_compiled_maps_are_what_the_registry_declares(compiled):
    cfg = DatapathConfig(pin_dir=pin_dir_for("layout"))
    from enforcer.datapath import bpfsys

    for spec in registry.MAPS:
        info = bpfsys.map_info(compiled[spec.name.encode()].map_fd)
        assert spec.differences(cfg, info) == [], spec.name


def test_layout_constants_match_c():
    """#define values Python relies on equal the C ones."""
    defines: dict[str, int] = {}
    for header in (BPF_DIR / "lib").glob("*.h"):
        for m in re.finditer(r"^#define\s+([A-Z_0-9]+)\s+(0x[0-9a-fA-F]+|\d+)\b", header.read_text(), re.M):
            defines[m.group(1)] = int(m.group(2), 0)
    names = [n for n in dir(layout) if n.isupper() and isinstance(getattr(layout, n), int)]
    checked = [n for n in names if n in defines]
    assert len(checked) >= 20, checked
    for n in checked:
        assert getattr(layout, n) == defines[n], n
    # The prefix lengths are not #defined in C: they come from the layout.
    assert not set(registry.PREFIX_DEFINES) & set(defines)


def test_prefix_lengths_come_from_the_layout():
    assert (layout.IPCACHE_PREFIX_BASE, layout.POLICY_PREFIX_EXACT, layout.POLICY_PREFIX_PROTO,
            layout.POLICY_PREFIX_FULL) == (32, 56, 64, 80)
    flags = DatapathConfig().cflags()
    for name, value in registry.PREFIX_DEFINES.items():
        assert f"-D{name}={value}" in flags


def test_layout_checks_cover_every_field():
    text = registry.layout_checks()
    for c_type, py in registry.layout_structs():
        assert f"sizeof({c_type}) == {ctypes.sizeof(py)}," in text
        for name, *_ in getattr(py, "_fields_", ()):
            assert f"__builtin_offsetof({c_type}, {name}) == {getattr(py, name).offset}," in text
    covered = {c for c, _ in registry.layout_structs()}
    assert {s.key_c for s in registry.MAPS} | {s.value_c for s in registry.MAPS} <= covered
    assert "struct verdict_event" in covered


def test_a_mirror_with_implicit_padding_is_refused():
    class Gappy(ctypes.Structure):
        _fields_ = [("family", ctypes.c_uint8), ("identity", ctypes.c_uint32)]

    with pytest.raises(BuildError, match="Gappy has 3 bytes of implicit padding"):
        registry.layout_checks([("struct gappy", Gappy)])


# -- the compile fails when C and Python disagree --------------------------

class SwappedPolicyKey(ctypes.Structure):
    """direction and protocol swapped: same size, two fields misplaced."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("identity", ctypes.c_uint32),
                ("endpoint_id", ctypes.c_uint16), ("protocol", ctypes.c_uint8), ("direction", ctypes.c_uint8),
                ("dport", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class RenamedPolicyKey(ctypes.Structure):
    _fields_ = [(n if n != "protocol" else "proto", t) for n, t in layout.PolicyKey._fields_]


class WiderPolicyEntry(ctypes.Structure):
    _fields_ = [*layout.PolicyEntry._fields_, ("more", ctypes.c_uint32)]


@pytest.fixture
def policy_only(tmp_path):
    """A small source: the policy map's header alone."""
    source = tmp_path / "policy_only.c"
    source.write_text(f'#include "{BPF_DIR / "lib" / "policy.h"}"\n')
    pin = pin_dir_for("policy-only")
    yield source, DatapathConfig(pin_dir=pin)
    shutil.rmtree(pin, ignore_errors=True)


def test_the_small_source_compiles_with_the_right_layout(policy_only):
    source, cfg = policy_only
    loaded = loader._compile(source, cfg.cflags(), (), checks=registry.layout_checks(
        [("struct policy_key", layout.PolicyKey), ("struct policy_entry", layout.PolicyEntry)]))
    loaded.cleanup()


@pytest.mark.parametrize("c_type, mirror, says", [
    ("struct policy_key", SwappedPolicyKey, "struct policy_key field protocol: offset differs"),
    ("struct policy_key", RenamedPolicyKey, "no member named 'proto' in 'struct policy_key'"),
    ("struct policy_entry", WiderPolicyEntry, "struct policy_entry: size differs"),
], ids=["offset", "name", "size"])
def test_a_wrong_layout_fails_the_compile_naming_the_field(policy_only, c_type, mirror, says):
    source, cfg = policy_only
    with pytest.raises(BuildError) as err:
        loader._compile(source, cfg.cflags(), (), checks=registry.layout_checks([(c_type, mirror)]))
    assert says in str(err.value)
    assert not cfg.pin_dir.exists() or not any(cfg.pin_dir.iterdir())


def test_a_prefix_length_the_c_key_disagrees_with_fails_the_compile(policy_only):
    source, cfg = policy_only
    flags = [f if not f.startswith("-DPOLICY_PREFIX_EXACT=") else "-DPOLICY_PREFIX_EXACT=48"
             for f in cfg.cflags()]
    with pytest.raises(BuildError, match="POLICY_PREFIX_EXACT"):
        loader._compile(source, flags, ())


def test_the_daemon_start_refuses_a_layout_mismatch(monkeypatch):
    """load_datapath_programs (what `enforcer run` calls first) compiles the
    layout checks with the datapath: a wrong mirror stops it, no map pinned."""
    wrong = [(c, SwappedPolicyKey if c == "struct policy_key" else py) for c, py in registry.layout_structs()]
    monkeypatch.setattr(loader, "layout_checks", lambda: registry.layout_checks(wrong))
    cfg = DatapathConfig(pin_dir=pin_dir_for("refuse"))
    try:
        with pytest.raises(BuildError, match="struct policy_key field protocol"):
            loader.load_datapath_programs(cfg)
        assert list(cfg.pin_dir.iterdir()) == []
    finally:
        shutil.rmtree(cfg.pin_dir, ignore_errors=True)
