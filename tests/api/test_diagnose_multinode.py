"""The SNAT trap on the wire, and `enforcer diagnose` saying so.

Two lab nodes (n1: a, b; n2: c) with kube-proxy's rules and one daemon
each; c backs a NodePort Service with externalTrafficPolicy Cluster (np,
30090) and one with Local (np-local, 30091), both to c:80. A policy on c
admits TCP 80 from one ipBlock only. What diagnose reports for np is what
happens to real connections through np; through np-local the ipBlock means
what it says, and nothing is reported for it:

- ipBlock = the external client (198.51.100.10/32): case a, clients-denied.
  The client is denied through np (c sees the node's address, even through
  c's own node) and admitted through np-local.
- ipBlock = the nodes' subnet (100.64.0.0/24): case b, any-client-admitted.
  The client and pod b (whose own address the policy does not admit) both
  reach c through np; through np-local the client is denied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from enforcer.lab.probe import Outcome, ProbeSpec, probe_many
from tests.lab.multinode_daemons import DENIED, OK, MultiNodeDaemons, node_port_manifest
from tests.support.kubeproxy import LOCAL, Service, ServicePort
from tests.support.multinode import EXT, EXT_IPV4, MultiNodeLab

pytestmark = pytest.mark.lab

PREFIX = f"enmd{os.getpid()}"
NODES = {"n1": ["a", "b"], "n2": ["c"]}
NP = Service("np", "10.96.0.30", (ServicePort(8080, 80, node_port=30090),), ("c",))
NP_LOCAL = Service("np-local", "10.96.0.31", (ServicePort(8081, 80, node_port=30091),), ("c",),
                   external_traffic_policy=LOCAL)


def admit_to_c(cluster: MultiNodeDaemons, cidr: str) -> None:
    cluster.apply_policy("default", "c-from-block", {
        "podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": 80}]}]})


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[MultiNodeDaemons]:
    env = MultiNodeDaemons(MultiNodeLab(PREFIX, NODES, services=[NP, NP_LOCAL]), "diag")
    request.addfinalizer(env.close)
    env.lab.up()
    yield env.start(node_port_manifest(env.lab, {"np": "c", "np-local": "c"}))


def check(cluster: MultiNodeDaemons, table: list[tuple[str, str, int, Outcome]]) -> None:
    cluster.check_node_ports(table, backend="c")


def test_case_a_the_allowed_client_is_denied_through_cluster_mode(cluster: MultiNodeDaemons) -> None:
    admit_to_c(cluster, f"{EXT_IPV4}/32")
    check(cluster, [
        (EXT, "n1", 30090, DENIED),  # SNATed to n1's address
        (EXT, "n2", 30090, DENIED),  # SNATed to n2's, c's own node: still not the client
        (EXT, "n2", 30091, OK),      # Local: c sees the client
    ])
    for node in ("n1", "n2"):
        code, found = cluster.diagnose(node)
        assert code == 3
        assert [(d["service"], d["policy"], d["effect"]) for d in found] == \
            [("default/np", "default/c-from-block", "clients-denied")]
        assert "set spec.externalTrafficPolicy: Local on Service default/np" in found[0]["message"]


def test_case_b_every_client_is_admitted_through_cluster_mode(cluster: MultiNodeDaemons) -> None:
    admit_to_c(cluster, "100.64.0.0/24")  # the nodes' subnet
    lab = cluster.lab
    direct = probe_many([ProbeSpec(lab.netns_of("b"), str(lab.pod("c").ipv4), 80, "tcp", timeout=1.0)])[0]
    assert direct.outcome is DENIED, "b's own address is not in the ipBlock"
    check(cluster, [
        (EXT, "n1", 30090, OK),      # the client, not in the ipBlock, arrives as n1
        ("b", "n1", 30090, OK),      # b too: the policy cannot tell it from a node
        (EXT, "n2", 30090, OK),
        (EXT, "n2", 30091, DENIED),  # Local: the client's own address, not in the ipBlock
    ])
    code, found = cluster.diagnose("n1")
    assert code == 3
    assert [(d["service"], d["policy"], d["effect"], d["severity"]) for d in found] == \
        [("default/np", "default/c-from-block", "any-client-admitted", "error")]
