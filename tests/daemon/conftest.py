"""Fixtures for the daemon tests: each test module gets a lab of its own with
the real daemon on it (`DaemonLab`), made through `daemon_lab(...)`, and
closed by a finalizer whatever happens.

Names are this process's: namespaces "end<pid><letter>-*", pins
/sys/fs/bpf/enforcer-daemontest-<pid>-*, work directories
/tmp/enforcer-daemontest-<pid>-*. What a killed earlier run left (its pid no
longer exists) is removed at the start of the session."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from enforcer.lab.topology import ROUTED, Lab

from .harness import PIN_PREFIX, PIN_ROOT, DaemonLab

TAG = os.getpid()
# One letter per module, so modules never share a namespace prefix; k, f
# and g are tests/faults' (which make their labs with make_daemon_lab too).
PREFIX_LETTERS = "blrvi" + "kfg" + "pmx"
_OWNED = re.compile(rf"^{PIN_PREFIX}(\d+)-")


def prefix(letter: str) -> str:
    assert letter in PREFIX_LETTERS
    return f"end{TAG}{letter}"


def pin_dir(name: str) -> Path:
    return PIN_ROOT / f"{PIN_PREFIX}{os.getpid()}-{name}"


def sweep_crashed_runs() -> None:
    for root in (PIN_ROOT, Path(tempfile.gettempdir())):
        for path in root.glob(f"{PIN_PREFIX}*"):
            m = _OWNED.match(path.name)
            if not m:
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or Path(f"/proc/{pid}").exists():
                continue
            for letter in PREFIX_LETTERS:
                Lab.cleanup_stale(f"end{pid}{letter}")  # kills its daemon and servers too
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _no_crashed_leftovers() -> None:
    sweep_crashed_runs()


def make_daemon_lab(request: pytest.FixtureRequest, letter: str, pods: Sequence[str], mode: str = ROUTED,
                    labels: Mapping[str, Mapping[str, str]] | None = None,
                    daemon_args: Sequence[str] = ()) -> DaemonLab:
    env = DaemonLab(prefix(letter), pods, pin_dir(letter), mode=mode, labels=labels)
    request.addfinalizer(env.close)  # before start: a failed start is cleaned up too
    env.start(daemon_args)
    return env
