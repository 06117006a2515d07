"""Equal priorities decide the same on every node: two Admin
ClusterNetworkPolicies at the same priority with opposite actions (Accept,
Deny) selecting the same pods; the one first by name wins (tiers.py),
and every node's daemon must see the same winner. A two-node lab
(tests/support/multinode.py), one daemon per node on one manifest
directory; the pairs (cases.EQUAL_PRIORITY_PAIRS) cross the nodes both
ways and stay on each node, and each server's node judges its ingress.
Renaming one policy flips the order, and every pair with it.

Lab: prefix cnpe<pid>, pins /sys/fs/bpf/enforcer-cnp-cnpe<pid>-<node>."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from enforcer.lab.probe import Outcome, ProbeSpec, probe_many
from tests.lab.multinode_daemons import MultiNodeDaemons, node_port_manifest
from tests.support.multinode import MultiNodeLab

from ..runner import ALLOWED_TIMEOUT, DENIED_TIMEOUT
from . import cases as C

pytestmark = pytest.mark.lab

PREFIX = f"cnpe{os.getpid()}"


@pytest.fixture(scope="module")
def two_nodes(request: pytest.FixtureRequest) -> Iterator[MultiNodeDaemons]:
    env = MultiNodeDaemons(MultiNodeLab(PREFIX, {n: list(p) for n, p in C.EQUAL_PRIORITY_NODES.items()}), "cnp")
    request.addfinalizer(env.close)
    env.lab.up()
    env.start(node_port_manifest(env.lab, {}))
    yield env


def _policy_file(name: str) -> str:
    return f"policies/clusternetworkpolicy-{name}.yaml"


def test_equal_priorities_follow_name_order_on_both_nodes(two_nodes: MultiNodeDaemons) -> None:
    env, written = two_nodes, set()
    wrong = []
    for accept, deny, winner in C.EQUAL_PRIORITY_STEPS:
        for name in written - {accept, deny}:  # the rename: the old name goes
            (env.source / _policy_file(name)).unlink()
        for name, action in ((accept, "Accept"), (deny, "Deny")):
            env.write(_policy_file(name), C.equal_priority_policy(name, action))
        written = {accept, deny}
        env.sync()
        want = Outcome.OK if winner == "Accept" else Outcome.TIMEOUT
        specs = [ProbeSpec(env.lab.netns_of(client), str(env.lab.pod(server).ipv4), 80, "tcp",
                           timeout=ALLOWED_TIMEOUT if want is Outcome.OK else DENIED_TIMEOUT)
                 for client, server in C.EQUAL_PRIORITY_PAIRS]
        for (client, server), r in zip(C.EQUAL_PRIORITY_PAIRS, probe_many(specs), strict=True):
            if r.outcome is not want:
                wrong.append(f"{accept} (Accept) vs {deny} (Deny), {winner} first by name: "
                             f"{client} ({env.lab.node_of(client)}) -> {server} ({env.lab.node_of(server)}) "
                             f"{r.outcome.value}, want {want.value}")
    assert not wrong, "\n".join(wrong) + "\n" + env.log_tails()
