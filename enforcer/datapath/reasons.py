"""Verdict reasons, read from bpf/lib/reasons.h: the C enum is the one
definition, this module exposes it to Python as an IntEnum."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from .paths import BPF_DIR

REASONS_HEADER = BPF_DIR / "lib" / "reasons.h"
_ENTRY = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)\s*=\s*(\d+)\s*,")
_SLOTS = re.compile(r"^#define\s+REASON_SLOTS\s+(\d+)")


def parse_reasons(path: Path = REASONS_HEADER) -> dict[str, int]:
    """Every `NAME = value,` of enum verdict_reason, in file order."""
    entries: dict[str, int] = {}
    in_enum = False
    for line in path.read_text().splitlines():
        if line.startswith("enum verdict_reason"):
            in_enum = True
            continue
        if in_enum:
            if line.startswith("}"):
                break
            m = _ENTRY.match(line)
            if m:
                entries[m.group(1)] = int(m.group(2))
    if not entries:
        raise RuntimeError(f"no verdict reasons found in {path}")
    return entries


def parse_reason_slots(path: Path = REASONS_HEADER) -> int:
    for line in path.read_text().splitlines():
        m = _SLOTS.match(line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"REASON_SLOTS not defined in {path}")


Reason = enum.IntEnum(  # type: ignore[misc]
    "Reason", {k: v for k, v in parse_reasons().items() if not k.startswith("__")}
)
REASON_SLOTS = parse_reason_slots()


def is_drop(reason: int) -> bool:
    try:
        return Reason(reason).name.startswith("DROP_")
    except ValueError:
        return False
