"""The seeds' scenario: ipBlock policies and NodePort traffic.

Namespace foo: pod c (node n2), isolated; its only ingress rule admits the
external client 198.51.100.10/32 on TCP 80 (an "allow the load balancer"
policy). Namespace bar: pods a and b (node n1), which foo's policy denies.
foo/web is a NodePort Service (30090) with externalTrafficPolicy Cluster,
foo/web-local the same with Local (30091), both to c:80.

With Cluster the client reaches the NodePort on n1, the node without the
backend: kube-proxy masquerades it to n1's address, so the ipBlock cannot
match. The enforcer must not fail silently: the client is denied, and the
daemon says why and how to fix it (status, `enforcer diagnose`, a log
line naming the Service, the policy and the fix). It must not fail open
either: neither through the backend's own node (masqueraded to the node's
address, which is not "the node" for such a packet) nor for bar's pods.
With Local the client keeps its address and is admitted through the node
with the backend; bar stays denied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from enforcer.lab.probe import ProbeSpec, probe_many
from tests.support.kubeproxy import LOCAL, Service, ServicePort
from tests.support.multinode import EXT, EXT_IPV4, MultiNodeLab

from .multinode_daemons import DENIED, OK, MultiNodeDaemons, node_port_manifest

pytestmark = pytest.mark.lab

PREFIX = f"enst{os.getpid()}"
NODES = {"n1": ["a", "b"], "n2": ["c"]}
WEB = Service("web", "10.96.0.40", (ServicePort(8080, 80, node_port=30090),), ("c",), namespace="foo")
WEB_LOCAL = Service("web-local", "10.96.0.41", (ServicePort(8081, 80, node_port=30091),), ("c",),
                    external_traffic_policy=LOCAL, namespace="foo")
POLICY = ("foo", "allow-lb")
FIX = "set spec.externalTrafficPolicy: Local on Service foo/web"


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[MultiNodeDaemons]:
    env = MultiNodeDaemons(MultiNodeLab(PREFIX, NODES, services=[WEB, WEB_LOCAL]), "np")
    request.addfinalizer(env.close)
    env.lab.up()
    env.start(node_port_manifest(env.lab, {"web": "c", "web-local": "c"},
                                 namespaces={"a": "bar", "b": "bar", "c": "foo"}))
    env.apply_policy(*POLICY, {
        "podSelector": {}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": f"{EXT_IPV4}/32"}}],
                     "ports": [{"protocol": "TCP", "port": 80}]}]})
    yield env


def test_the_policy_itself_admits_the_client_and_denies_bar(cluster: MultiNodeDaemons) -> None:
    """Straight to c's address (the outside router knows the pod routes):
    the ipBlock works, bar is denied."""
    c = str(cluster.lab.pod("c").ipv4)
    results = probe_many([ProbeSpec(cluster.lab.netns_of(EXT), c, 80, "tcp", timeout=3.0),
                          ProbeSpec(cluster.lab.netns_of("a"), c, 80, "tcp", timeout=1.0)])
    assert [r.outcome for r in results] == [OK, DENIED], results


def test_cluster_mode_denies_and_reports(cluster: MultiNodeDaemons) -> None:
    cluster.check_node_ports([
        (EXT, "n1", 30090, DENIED),  # the seeds' case: masqueraded to n1's address
        (EXT, "n2", 30090, DENIED),  # masqueraded to n2's, c's own node: not "the node" either
        ("a", "n1", 30090, DENIED),  # bar, through the NodePort: no way in
        ("a", "n2", 30090, DENIED),
        ("b", "n1", 30090, DENIED),
    ], backend="c")

    for node in ("n1", "n2"):
        code, found = cluster.diagnose(node)
        assert code == 3, found
        assert [(d["code"], d["service"], d["policy"], d["effect"]) for d in found] == \
            [("snat-trap", "foo/web", "foo/allow-lb", "clients-denied")]
        assert FIX in found[0]["message"] or FIX in found[0]["fix"]

        status = cluster.cli(node, "status", "--json")
        assert status.returncode == 0, status.stderr
        diagnostics = json.loads(status.stdout)["diagnostics"]
        assert [(d["service"], d["policy"]) for d in diagnostics] == [("foo/web", "foo/allow-lb")]

        log = cluster.daemons[node].log_text()
        lines = [line for line in log.splitlines() if "foo/web" in line and "WARNING" in line]
        assert len(lines) == 1, log[-3000:]
        assert "foo/allow-lb" in lines[0] and FIX in lines[0], lines[0]


def test_local_mode_admits_the_client_and_still_denies_bar(cluster: MultiNodeDaemons) -> None:
    cluster.check_node_ports([
        (EXT, "n2", 30091, OK),      # the node with the backend: the client's own address
        (EXT, "n1", 30091, DENIED),  # no local backend: kube-proxy drops it
        ("a", "n2", 30091, DENIED),  # bar keeps its own address: denied by the ipBlock
        ("a", "n1", 30091, DENIED),
    ], backend="c")
    for node in ("n1", "n2"):
        _code, found = cluster.diagnose(node)
        assert all(d["service"] != "foo/web-local" for d in found), found
