"""Verdict reasons are append-only and one definition serves C and Python."""

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

from enforcer.datapath.reasons import REASON_SLOTS, REASONS_HEADER, Reason, is_drop, parse_reasons

GOLDEN = Path(__file__).with_name("reasons.golden")


def c_compiler() -> str:
    """A host C compiler (scripts/setup.sh installs gcc)."""
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    versioned = sorted(glob.glob("/usr/bin/gcc-[0-9]*"))
    if versioned:
        return versioned[-1]
    pytest.fail("no C compiler (cc, gcc, clang, gcc-N): scripts/setup.sh installs gcc")


def values_seen_by_c(names: list[str], tmp_path: Path) -> dict[str, int]:
    """Each name's value as the C compiler evaluates it with reasons.h
    included: an independent reading of the header (no regex)."""
    program = tmp_path / "reasons.c"
    program.write_text(f'#include <stdio.h>\n#include "{REASONS_HEADER}"\nint main(void) {{\n'
                       + "".join(f'    printf("{n} %ld\\n", (long)({n}));\n' for n in names)
                       + "    return 0;\n}\n")
    binary = tmp_path / "reasons"
    built = subprocess.run([c_compiler(), "-std=c11", "-Wall", "-Werror", "-o", str(binary), str(program)],
                           capture_output=True, text=True)
    assert built.returncode == 0, f"{program.read_text()}\n{built.stderr}"
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def golden() -> dict[str, int]:
    out = {}
    for line in GOLDEN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split()
            out[name] = int(value)
    return out


def test_published_reasons_never_change():
    current = parse_reasons()
    for name, value in golden().items():
        assert current.get(name) == value, f"{name} was {value}: reasons are append-only"


def test_golden_lists_every_reason():
    """Append new reasons to reasons.golden in the same change."""
    current = {k: v for k, v in parse_reasons().items() if not k.startswith("__")}
    assert current == golden()


def test_values_are_dense_and_fit_the_counter_slots():
    values = sorted(parse_reasons().values())
    assert values == list(range(len(values)))
    assert parse_reasons()["__REASON_MAX"] == max(v for k, v in parse_reasons().items() if k != "__REASON_MAX") + 1
    assert parse_reasons()["__REASON_MAX"] <= REASON_SLOTS


def test_python_enum_mirrors_the_header(tmp_path):
    """The Python enum against the values the C compiler gives the same
    names (the datapath is compiled from that header, the Python side is a
    regex reading of it): a line the regex misreads or skips (hex, an
    implicit value, an entry in a comment) fails here."""
    c = values_seen_by_c([r.name for r in Reason] + ["__REASON_MAX", "REASON_SLOTS"], tmp_path)
    assert {r.name: r.value for r in Reason} == {r.name: c[r.name] for r in Reason}
    # Values are dense from 0 (test above), so an enumerator Python missed moves __REASON_MAX.
    assert c["__REASON_MAX"] == len(Reason), "the C enum has entries the Python enum lacks"
    assert c["REASON_SLOTS"] == REASON_SLOTS
    assert all(r.name.startswith(("ALLOW_", "DROP_")) for r in Reason if r.value)
    assert is_drop(Reason.DROP_POLICY) and not is_drop(Reason.ALLOW_POLICY) and not is_drop(99)
