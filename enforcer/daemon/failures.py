"""What the daemon says about map writes that did not happen (a full map,
say): bounded figures for the status, the API and the metrics, and one
summary line per pass at most in the log.

A full map fails the same entries on every pass, and passes with failures
are retried every fraction of a second: anything said per entry, or on
every pass, grows without bound (one line per entry once filled a disk at
50 000 lines a second). So the status keeps counts per map, the first few
objects and messages, and the log speaks when the set of objects changes,
else once a minute while it lasts, and once when it clears.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..datapath.sync import REASONS, SyncReport

OBJECTS_KEPT = 20  # objects the status names
ERRORS_KEPT = 100  # lines of the status's errors (invalid objects, then objects not written)
LOG_OBJECTS = 5    # objects a log line names
REMIND_EVERY = 60.0  # seconds between two summaries of an unchanged set

REASON_WORDS = {"full": "no room", "other": "failed", "held": "held back"}


@dataclass(frozen=True)
class WriteFailures:
    """The map writes of one pass that did not happen, bounded."""

    entries: int = 0  # entries not written
    by_map: dict[str, dict[str, int]] = field(default_factory=dict)  # map -> reason -> entries
    objects: tuple[str, ...] = ()  # the first OBJECTS_KEPT: "NetworkPolicy ns/a: 4 entries"
    objects_total: int = 0
    samples: tuple[str, ...] = ()  # the first messages (SyncReport.samples)
    held_removals: int = 0  # ipcache entries kept for a write that failed

    @classmethod
    def of(cls, report: SyncReport) -> WriteFailures:
        objects: list[str] = []
        for name, n in report.objects.items():
            if len(objects) == OBJECTS_KEPT:
                break
            objects.append(f"{name}: {n} {'entry' if n == 1 else 'entries'}")
        return cls(entries=report.failed, by_map={m: dict(r) for m, r in sorted(report.not_written.items())},
                   objects=tuple(objects), objects_total=len(report.objects), samples=tuple(report.samples),
                   held_removals=report.held_removals)

    def per_map(self) -> str:
        """Per map, e.g. "policy: 4 no room; ipcache: 1 held back"."""
        return "; ".join(
            f"{m}: " + ", ".join(f"{by[r]} {REASON_WORDS[r]}" for r in REASONS if by.get(r))
            for m, by in self.by_map.items())

    def summary(self) -> str:
        named = [_cut(o, 200) for o in self.objects[:LOG_OBJECTS]]
        more = self.objects_total - len(named)
        return (f"map writes failing: {self.entries} entries of {self.objects_total} "
                f"object{'s' if self.objects_total != 1 else ''} not written ({self.per_map()}): "
                + ", ".join(named) + (f" and {more} more" if more > 0 else "")
                + (f"; e.g. {_cut(self.samples[0], 300)}" if self.samples else "")
                + "; retried, what they would change is not in force (`enforcer status`)")

    def as_dict(self) -> dict:
        return {"entries": self.entries, "by_map": {m: dict(r) for m, r in self.by_map.items()},
                "objects": list(self.objects), "objects_total": self.objects_total,
                "samples": list(self.samples), "held_removals": self.held_removals}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class FailureLog:
    """At most one line per pass: when the set of objects not written
    changes (ERROR), else at most every `every` seconds while failures last
    (ERROR), and once when they clear (INFO)."""

    def __init__(self, logger: logging.Logger, every: float = REMIND_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._objects: frozenset[str] = frozenset()
        self._said_at: float | None = None

    def note(self, report: SyncReport, failures: WriteFailures | None = None) -> None:
        objects = frozenset(report.objects)
        now = self.clock()
        if not objects:
            if self._objects:
                self.logger.info("map writes recovered: every entry written")
            self._objects, self._said_at = objects, None
            return
        if objects == self._objects and self._said_at is not None and now - self._said_at < self.every:
            return
        self.logger.error("%s", (failures or WriteFailures.of(report)).summary())
        self._objects, self._said_at = objects, now
