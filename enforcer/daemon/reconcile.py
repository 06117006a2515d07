"""Level-triggered, coalesced reconciliation.

Any number of changes between two passes cost one pass: sources only mark
the state dirty; the loop compiles the latest snapshot whole and syncs the
difference. A pass also runs on a timer (resync), sooner while some local
pod has no interface yet (the pod-start race), and never more often than
min_interval (changes arriving in a burst are batched).

Work that follows a pass but must not delay the next one (revocation) runs
as `background` slices between passes: slice after slice while no pass is
due, and one slice after each pass while passes keep coming, so it always
moves forward and a pass waits for one slice at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BoundedRunner:
    def __init__(self, fn: Callable[[], bool], min_interval: float = 0.02, resync: float = 30.0,
                 retry: float = 0.2, background: Callable[[], bool] | None = None) -> None:
        """fn runs one pass and returns True when it wants to be retried
        soon; background runs one slice of the work after passes and
        returns True while some is left."""
        self.fn = fn
        self.background = background
        self._more = False  # background work may be left
        self._sliced = True  # a slice ran since the last pass
        self.min_interval = min_interval
        self.resync = resync
        self.retry = retry
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def trigger(self) -> None:
        self._dirty.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        wait = 0.0
        last = 0.0
        while not self._stop.is_set():
            if self._more and self.background is not None and (not self._dirty.is_set() or not self._sliced):
                self._sliced = True
                try:
                    self._more = self.background()
                except Exception:
                    log.exception("background work after the pass failed")
                    self._more = False
                continue
            self._dirty.wait(timeout=wait if wait > 0 else None)
            if self._stop.is_set():
                return
            since = time.monotonic() - last
            if since < self.min_interval:
                time.sleep(self.min_interval - since)
            self._dirty.clear()
            last = time.monotonic()
            try:
                again = self.fn()
            except Exception:
                log.exception("reconcile pass failed; retrying")
                again = True
            self._more = True
            self._sliced = False
            wait = self.retry if again else self.resync
