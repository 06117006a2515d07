"""The ClusterNetworkPolicy conformance suite (upstream v0.2.0 plus the extra
cases) against the real daemon in the netns lab: every upstream test in
IPv4 (--keep-established on, which an Admin Deny must override), a subset
and the extra cases in IPv6. See README.md."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import cases as C
from .runner import CNPLab, failures, run_test

pytestmark = pytest.mark.lab

#: Lab prefixes "cnp4<pid>", "cnp6<pid>" (namespaces cnp4<pid>-*); pins
#: /sys/fs/bpf/enforcer-cnp-<prefix>.
PREFIX = "cnp"
DAEMON_ARGS = {4: ("--keep-established",), 6: ()}
PARAMS = [pytest.param(family, case, id=f"ipv{family}-{case.id}")
          for family in (4, 6) for case in C.cases_for(family)]


@pytest.fixture(scope="module")
def cnp_lab(request: pytest.FixtureRequest) -> Iterator[CNPLab]:
    family = request.param
    lab = CNPLab(prefix=f"{PREFIX}{family}{os.getpid()}", family=family, daemon_args=DAEMON_ARGS[family])
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize(("cnp_lab", "case"), PARAMS, indirect=["cnp_lab"])
def test_cnp_case(cnp_lab: CNPLab, case: C.UpstreamTest) -> None:
    report = failures(run_test(cnp_lab, case))
    if report:
        raise AssertionError(f"{case.id}:\n{report}\n{cnp_lab.diagnostics()}")
