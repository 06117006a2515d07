"""The Python mirrors in enforcer.datapath.layout agree with the C structs:
same size, and every field at the same offset with the same size, as bcc
derives them from the compiled C."""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

import pytest

from enforcer.datapath import layout
from enforcer.datapath.loader import POD_PROGRAM_SOURCE
from enforcer.datapath.source import DatapathConfig, amalgamate

# Structs that are not a map's key or value but cross the C/Python line.
EXTRA_STRUCTS = {"verdict_event": layout.VerdictEvent}


@pytest.fixture(scope="module")
def compiled():
    from bcc import BPF

    pin = Path(f"/sys/fs/bpf/enforcer-test-pkt-{os.getpid()}-layout")
    pin.mkdir(parents=True, exist_ok=True)
    text = amalgamate(POD_PROGRAM_SOURCE)
    for name in EXTRA_STRUCTS:
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


@pytest.mark.parametrize("name", list(layout.MAP_LAYOUTS))
def test_map_layouts_match_c(compiled, name):
    key_t, value_t = layout.MAP_LAYOUTS[name]
    table = compiled[name.encode()]
    leaf = table.Leaf
    if issubclass(leaf, ctypes.Array):  # per-CPU map: bcc gives one slot per CPU
        leaf = leaf._type_
    assert_same_layout(key_t, table.Key, f"{name} key")
    assert_same_layout(value_t, leaf, f"{name} value")


@pytest.mark.parametrize("name", list(EXTRA_STRUCTS))
def test_shared_structs_match_c(compiled, name):
    assert_same_layout(EXTRA_STRUCTS[name], compiled[f"layout_{name}".encode()].Leaf, name)


def test_every_pinned_map_has_a_layout(compiled):
    """A map added in C without a Python mirror fails here."""
    import re

    text = amalgamate(POD_PROGRAM_SOURCE)
    decls = re.findall(r"^BPF_TABLE_PINNED7?\(([^;]*)\);", text, re.M | re.S)
    pinned = {d.split(",")[3].strip() for d in decls}
    assert pinned == set(layout.MAP_LAYOUTS)
    for name in pinned:
        assert f'"/{layout.PIN_NAMES[name]}"' in text, f"{name}: pin name differs from layout.PIN_NAMES"


def test_layout_constants_match_c():
    """#define values Python relies on equal the C ones."""
    import re

    defines: dict[str, int] = {}
    for header in (POD_PROGRAM_SOURCE.parent / "lib").glob("*.h"):
        for m in re.finditer(r"^#define\s+([A-Z_0-9]+)\s+(0x[0-9a-fA-F]+|\d+)\b", header.read_text(), re.M):
            defines[m.group(1)] = int(m.group(2), 0)
    names = [n for n in dir(layout) if n.isupper() and isinstance(getattr(layout, n), int)]
    checked = [n for n in names if n in defines]
    assert len(checked) >= 20, checked
    for n in checked:
        assert getattr(layout, n) == defines[n], n
