"""The daemon's side of the history: the events thread offers each verdict
(with the state view current then) to a bounded queue and goes on at once;
a writer thread resolves names, aggregates rows in memory and writes them
in one transaction a second (or sooner, when many distinct rows wait).

Nothing here may slow enforcement or the event stream: a full queue drops
the event and counts it, a failing write is logged (once a minute) and
counted, and the thread survives both. What the history cannot see is said
in stats(): events the queue had no room for, events it could not
attribute, batches that failed; the datapath's own rate limit (1000 events
a second per CPU) is counted by the daemon (event_stats).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..datapath.events import Verdict
from ..errors import HistoryError
from .observe import ResolvingView, flow_key, verdict_of
from .rows import FlowKey, FlowRow
from .store import DB_NAME, Filter, HistoryStore, Tally, open_store

log = logging.getLogger(__name__)

# Verdicts waiting for the writer: about 8 s of two CPUs' event rate at the
# datapath's limit, a few MB at most.
QUEUE_MAX = 16384
# Distinct rows aggregated in memory before a write is due anyway.
PENDING_MAX = 10_000
WRITE_INTERVAL = 1.0  # seconds between two writes
LOG_EVERY = 60.0      # seconds between two log lines of the same trouble


@dataclass(frozen=True)
class HistoryStats:
    enabled: bool
    disabled_reason: str = ""  # why not, when not enabled
    path: str = ""
    rows: int = 0
    max_rows: int = 0
    events_recorded: int = 0
    events_dropped: int = 0       # the queue was full
    events_unattributed: int = 0  # no state yet, the endpoint gone, or labels too large to keep
    rows_evicted: int = 0         # since the daemon started
    write_errors: int = 0         # batches that could not be written (their rows are lost)


@dataclass
class _Marker:
    """Queued behind the events it must wait for: the writer writes what it
    has when it takes the marker out, then sets done."""

    stop: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class HistoryRecorder:
    def __init__(self, store: HistoryStore | None, disabled_reason: str = "", *, queue_size: int = QUEUE_MAX,
                 write_interval: float = WRITE_INTERVAL) -> None:
        self._store = store
        self._disabled_reason = disabled_reason if store is None else ""
        self._queue: queue.Queue[tuple[Verdict, ResolvingView | None] | _Marker] = queue.Queue(queue_size)
        self._write_interval = write_interval
        self._thread: threading.Thread | None = None
        # bpf_ktime_get_ns is CLOCK_MONOTONIC: offset to wall time (as FlowHub).
        self._offset = time.time() - time.monotonic()
        self._last_log = -LOG_EVERY
        self.events_recorded = 0
        self.events_dropped = 0
        self.events_unattributed = 0
        self.write_errors = 0

    @classmethod
    def disabled(cls, reason: str) -> HistoryRecorder:
        return cls(None, reason)

    @property
    def enabled(self) -> bool:
        return self._store is not None

    # -- the events thread --

    def offer(self, v: Verdict, view: ResolvingView | None) -> None:
        """Never blocks: a full queue costs this event (counted)."""
        if self._store is None:
            return
        try:
            self._queue.put_nowait((v, view))
        except queue.Full:
            self.events_dropped += 1

    # -- life cycle --

    def start(self) -> None:
        if self._store is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="history", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until what was offered before the call is written (at most
        timeout seconds); whether it was."""
        return self._send(_Marker(), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued and close the file."""
        if self._store is None or self._thread is None:
            return
        if self._send(_Marker(stop=True), timeout):
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("flow history: the writer did not finish in %.0f s; its last rows are lost", timeout)
            return
        self._store.close()

    def _send(self, marker: _Marker, timeout: float) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return False
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(max(0.0, deadline - time.monotonic()))

    # -- reading (any thread) --

    def _enabled_store(self) -> HistoryStore:
        if self._store is None:
            raise HistoryError(f"no flow history on this node: {self._disabled_reason}")
        return self._store

    def read(self, which: Filter, after_id: int = 0, limit: int = 1000) -> list[tuple[int, FlowRow]]:
        return self._enabled_store().read(which, after_id, limit)

    def count(self, which: Filter, after_id: int = 0) -> int:
        return self._enabled_store().count(which, after_id)

    def stats(self) -> HistoryStats:
        store = self._store
        if store is None:
            return HistoryStats(enabled=False, disabled_reason=self._disabled_reason)
        return HistoryStats(enabled=True, path=str(store.path), rows=store.rows, max_rows=store.max_rows,
                            events_recorded=self.events_recorded, events_dropped=self.events_dropped,
                            events_unattributed=self.events_unattributed, rows_evicted=store.evicted,
                            write_errors=self.write_errors)

    # -- the writer thread --

    def _run(self) -> None:
        pending: dict[FlowKey, Tally] = {}
        next_write = time.monotonic() + self._write_interval
        while True:
            try:
                item: tuple[Verdict, ResolvingView | None] | _Marker | None = self._queue.get(
                    timeout=max(0.0, next_write - time.monotonic()))
            except queue.Empty:
                item = None
            markers: list[_Marker] = []
            while item is not None:  # everything queued now, up to a full batch
                if isinstance(item, _Marker):
                    markers.append(item)
                else:
                    self._aggregate(pending, *item)
                    if len(pending) >= PENDING_MAX:
                        break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if markers or len(pending) >= PENDING_MAX or time.monotonic() >= next_write:
                self._write(pending)
                pending = {}
                next_write = time.monotonic() + self._write_interval
            for marker in markers:
                marker.done.set()
            if any(m.stop for m in markers):
                return

    def _aggregate(self, pending: dict[FlowKey, Tally], v: Verdict, view: ResolvingView | None) -> None:
        if verdict_of(v) is None:
            return  # not a flow between parties a policy names
        try:
            key = flow_key(v, view) if view is not None else None
        except Exception:  # a bug here must cost this event, not the history (the thread)
            self._log(logging.ERROR, "flow history: cannot attribute a verdict event", exc_info=True)
            key = None
        if key is None:
            self.events_unattributed += 1
            return
        when = v.timestamp_ns / 1e9 + self._offset
        tally = pending.get(key)
        if tally is None:
            pending[key] = Tally(1, when, when)
        else:
            tally.add(when)
        self.events_recorded += 1

    def _write(self, pending: dict[FlowKey, Tally]) -> None:
        if not pending or self._store is None:
            return
        try:
            self._store.add(pending)
        except sqlite3.Error as e:
            self.write_errors += 1
            self._log(logging.ERROR, "flow history %s: %d rows not written: %s (%d failed writes so far)",
                      self._store.path, len(pending), e, self.write_errors)

    def _log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.log(level, msg, *args, exc_info=exc_info)


def open_recorder(state_dir: str, max_rows: int) -> HistoryRecorder:
    """The daemon's recorder: on state_dir/history.db, or disabled (state_dir
    '', or a file that cannot be used: logged, and enforcement goes on)."""
    if not state_dir:
        return HistoryRecorder.disabled("disabled (--state-dir '')")
    try:
        store = open_store(Path(state_dir) / DB_NAME, max_rows)
    except HistoryError as e:
        log.error("%s; enforcing without flow history", e)
        return HistoryRecorder.disabled(str(e))
    log.info("flow history in %s (%d rows, at most %d)", store.path, store.rows, store.max_rows)
    return HistoryRecorder(store)
