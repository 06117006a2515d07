"""Durations as people type them: 90s, 30m, 1h, 2d, 1w, 1h30m."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds; ValueError for anything but one or more <number><unit>."""
    parts = _PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 1h, 2d, 1w, 1h30m)")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"not a duration: {text!r} (must be longer than 0)")
    return float(seconds)
