"""The reconcile loop's order of work (daemon/reconcile.py): passes first,
background slices between them, and one slice after each pass while passes
keep coming, so the background work always moves forward and a pass that
falls due waits for one slice at most. No root: plain threads."""

from __future__ import annotations

import threading
import time

from enforcer.daemon.reconcile import BoundedRunner


class Recorder:
    def __init__(self, slices: int, slice_s: float = 0.0) -> None:
        self.log: list[str] = []
        self.left = slices
        self.slice_s = slice_s
        self.runner: BoundedRunner | None = None
        self.lock = threading.Lock()

    def pass_(self) -> bool:
        with self.lock:
            self.log.append("pass")
        return False

    def slice_(self) -> bool:
        """As revoke_step: one slice of the job under way, if any."""
        if self.left <= 0:
            return False
        time.sleep(self.slice_s)
        with self.lock:
            self.log.append("slice")
            self.left -= 1
        return self.left > 0


def wait_for(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def test_slices_run_while_no_pass_is_due() -> None:
    r = Recorder(slices=5)
    runner = BoundedRunner(r.pass_, min_interval=0.0, background=r.slice_)
    runner.start()
    try:
        runner.trigger()
        wait_for(lambda: r.left == 0)
        assert r.log == ["pass"] + ["slice"] * 5
    finally:
        runner.stop()


def test_passes_that_keep_coming_alternate_with_slices() -> None:
    """A change arrives during every pass and every slice: passes never
    starve the slices (one runs after each pass), and slices never hold a
    due pass up for more than one."""
    r = Recorder(slices=6, slice_s=0.005)
    runner = BoundedRunner(r.pass_, min_interval=0.0, background=r.slice_)
    pass_, slice_ = r.pass_, r.slice_

    def pass_and_trigger() -> bool:
        runner.trigger()
        return pass_()

    def slice_and_trigger() -> bool:
        runner.trigger()
        return slice_()

    runner.fn, runner.background = pass_and_trigger, slice_and_trigger
    runner.start()
    try:
        runner.trigger()
        wait_for(lambda: r.left == 0)
    finally:
        runner.stop()
    log = r.log[:len(r.log) - r.log[::-1].index("slice")]  # up to the last slice
    assert log.count("slice") == 6 and log[0] == "pass"
    assert "slice slice" not in " ".join(log), log  # never two slices while a pass is due
    assert "pass pass" not in " ".join(log), log  # never two passes without a slice between
