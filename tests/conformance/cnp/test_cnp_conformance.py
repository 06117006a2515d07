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


class Labs:
    """One lab per family, started by the first case of that family and
    kept for the module (xdist gives each family its own worker: see
    tests/conftest.py SPLIT_BY_LAB_PARAM). Not an indirect parameter of a
    module-scoped fixture: pytest tears such a fixture down whenever the
    parameter set changes, i.e. before every case (a lab and daemon start
    per case). A family's start that failed fails its every case."""

    def __init__(self) -> None:
        self.labs: dict[int, CNPLab] = {}
        self.failed: dict[int, BaseException] = {}

    def get(self, family: int) -> CNPLab:
        if family in self.failed:
            raise RuntimeError(f"the IPv{family} lab did not start") from self.failed[family]
        if family not in self.labs:
            self.close()  # one lab at a time (without xdist, IPv4's before IPv6's)
            lab = CNPLab(prefix=f"{PREFIX}{family}{os.getpid()}", family=family, daemon_args=DAEMON_ARGS[family])
            try:
                lab.start()
            except BaseException as e:
                lab.close()
                self.failed[family] = e
                raise
            self.labs[family] = lab
        return self.labs[family]

    def close(self) -> None:
        for lab in self.labs.values():
            lab.close()
        self.labs.clear()


@pytest.fixture(scope="module")
def cnp_labs() -> Iterator[Labs]:
    labs = Labs()
    try:
        yield labs
    finally:
        labs.close()


@pytest.mark.parametrize(("family", "case"), PARAMS)
def test_cnp_case(cnp_labs: Labs, family: int, case: C.UpstreamTest) -> None:
    lab = cnp_labs.get(family)
    report = failures(run_test(lab, case))
    if report:
        raise AssertionError(f"{case.id}:\n{report}\n{lab.diagnostics()}")
