"""Shared test set-up. The suite runs as root on the real kernel: the
datapath tests load BPF programs and the lab tests build network namespaces.
Running it as another user is a set-up error, not a reason to skip."""

import os

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the enforcer test suite must run as root (make test does)")
