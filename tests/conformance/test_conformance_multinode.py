"""Upstream NetworkPolicy e2e cases on two nodes, one daemon per node:
every TCP and UDP case, probing pod IPs and, as upstream does, each pod's
Service ClusterIP through kube-proxy (multinode_runner.py). IPv4 and IPv6.

Every case's tables must hold in both modes: a policy is about pods, and
reaching a pod through its Service changes nothing upstream expects.
"""

from __future__ import annotations

import os

import pytest

from .multinode_runner import PLACEMENT, TARGETS, MultiNodeConformanceLab, wire_cases
from .runner import run_case

CASES = wire_cases()


def test_every_case_probes_pairs_on_one_node_and_across() -> None:
    """The placement gives every case allowed pairs on one node and across
    nodes, and denied pairs of both kinds wherever it denies more than one."""
    node = {pod: n for n, pods in PLACEMENT.items() for pod in pods}
    assert len(CASES) == 45 and set(PLACEMENT) == {"n1", "n2"}
    for case in CASES:
        kinds: dict[bool, set[bool]] = {True: set(), False: set()}  # allowed? -> {same node?}
        denied = 0
        for probe in case.probes:
            for f, t, allowed in probe.checked_pairs():
                kinds[allowed].add(node[f] == node[t])
                denied += not allowed
        assert kinds[True] == {True, False}, case.id
        assert denied < 2 or kinds[False] == {True, False}, case.id


@pytest.fixture(scope="module", params=[4, 6], ids=["ipv4", "ipv6"])
def multinode_lab(request):
    lab = MultiNodeConformanceLab(prefix=f"cf2m{request.param}{os.getpid()}", family=request.param,
                                  pin_dir_prefix="/sys/fs/bpf/cf2-")
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


@pytest.mark.lab
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("target", TARGETS, ids=["pod-ip", "cluster-ip"])
def test_upstream_case_on_two_nodes(multinode_lab, target, case):
    multinode_lab.target = target
    run_case(multinode_lab, case, keep_going=True)
