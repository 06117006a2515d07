"""Verdict reasons are append-only and one definition serves C and Python."""

from pathlib import Path

from enforcer.datapath.reasons import REASON_SLOTS, Reason, is_drop, parse_reasons

GOLDEN = Path(__file__).with_name("reasons.golden")


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


def test_python_enum_mirrors_the_header():
    assert {r.name: r.value for r in Reason} == {k: v for k, v in parse_reasons().items() if not k.startswith("__")}
    assert all(r.name.startswith(("ALLOW_", "DROP_")) for r in Reason if r.value)
    assert is_drop(Reason.DROP_POLICY) and not is_drop(Reason.ALLOW_POLICY) and not is_drop(99)
