"""The fault suite: the real daemon on a netns lab, real traffic, and
something going wrong (the daemon killed, policy changed while it is dead,
hostile packets from a pod policy denies).

Labs are made as the daemon tests make theirs (tests/daemon/conftest.py:
namespaces "end<pid%1000><letter>-*", pins
/sys/fs/bpf/enforcer-daemontest-<pid>-<letter>, work directories
/tmp/enforcer-daemontest-<pid>-*), with letters of their own, so the same
sweep removes what a killed run of either left, and each lab's finalizer
removes its namespaces (servers, veths and tc filters with them), daemon,
pins and files whatever happens.
"""

from __future__ import annotations

import pytest

from tests.daemon.conftest import sweep_crashed_runs


@pytest.fixture(scope="session", autouse=True)
def _no_crashed_leftovers() -> None:
    sweep_crashed_runs()
