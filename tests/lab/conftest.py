"""Lab fixtures: one lab (node + pods a, b, c, loader attached to all three)
for the whole session, reset to "nothing isolated, no policy" before each
test. Names are unique to this process so parallel runs and other users of
the machine (enfb*/enfp* namespaces, enforcer-bench*/enforcer-test-pkt* pins)
are never touched; finalizers remove namespaces, processes, tc filters and
pins even when a test fails."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.session import LabSession

PODS = ("a", "b", "c")
TAG = os.getpid()
PIN_ROOT = Path("/sys/fs/bpf")
_PIN_NAME = re.compile(r"^enforcer-labtest-(\d+)(-.*)?$")


def pin_dir(suffix: str = "") -> Path:
    return PIN_ROOT / f"enforcer-labtest-{os.getpid()}{suffix}"


def new_session(prefix_suffix: str = "", pin_suffix: str = "") -> LabSession:
    return LabSession(f"enl{TAG}{prefix_suffix}", PODS, pin_dir(pin_suffix))


def sweep_crashed_runs() -> None:
    """What an earlier run of these tests left when it was killed (-9):
    its pins are named after its pid; if that pid is gone, remove them and
    the namespaces of its prefixes (killing the servers and loader in them)."""
    for path in PIN_ROOT.glob("enforcer-labtest-*"):
        m = _PIN_NAME.match(path.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        for prefix in (f"enl{pid}", f"enl{pid}r"):
            LabSession.cleanup_stale(prefix)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _no_crashed_leftovers() -> None:
    sweep_crashed_runs()


@pytest.fixture(scope="session")
def lab_session() -> Iterator[LabSession]:
    session = new_session()
    with session:
        yield session


@pytest.fixture
def env(lab_session: LabSession) -> LabSession:
    assert lab_session.loader is not None and lab_session.loader.running, \
        "loader died:\n" + (lab_session.loader.log_tail() if lab_session.loader else "")
    assert lab_session.world is not None
    lab_session.world.reset()
    return lab_session
