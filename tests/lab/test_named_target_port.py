"""Named targetPorts must not open a bypass, proved on the wire.

A Service may name its targetPort ("http"); the EndpointSlice controller
resolves the name per backend pod (its container port of that name, which
can differ between backends) and kube-proxy DNATs each connection to the
number of the backend it picked. The enforcer judges a pod's egress to a
ClusterIP after DNAT, on the translated (backend address, port): an egress
policy allowing only port 80 lets the client reach the backend whose "http"
is 80 and not those whose "http" is 81, through the same ClusterIP.

Lab (prefix ntp<tag>, pins /sys/fs/bpf/enforcer-np-ntp<tag>-<node>):
  n1: b (the client), e (http=81: judged at e's veth, same node)
  n2: c (http=80), d (http=81: judged on n1's eth0, before the underlay)
Service "named": ClusterIP 10.96.2.10 / fd00:96::210, port 8080 TCP,
targetPort "http", backends c, d, e. Every pod serves 80 and 81 whatever
it declares, so only the policy can keep b from d and e.

kube-proxy picks a backend at random per connection: each case probes in
rounds of concurrent connections until every backend has been picked
(counted by its KUBE-SEP chain's DNAT counter on n1), then checks that the
answers came exactly from the backends the policy allows, every
connection to the others went unanswered, and b's egress drop counter
grew by at least as many.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from enforcer.datapath.layout import DIR_EGRESS
from enforcer.datapath.reasons import Reason
from enforcer.lab.probe import Outcome, ProbeResult, ProbeSpec, probe_many
from tests.support import kubeproxy
from tests.support.kubeproxy import ContainerPort, Endpoint, Service, ServicePort
from tests.support.multinode import MultiNodeLab

from .multinode_daemons import MultiNodeDaemons

TAG = os.getpid()
PREFIX = f"ntp{TAG}"
NODES = {"n1": ["b", "e"], "n2": ["c", "d"]}
CLIENT = "b"
BACKENDS = ("c", "d", "e")
HTTP = {"c": 80, "d": 81, "e": 81}  # each backend's container port named "http"
CONTAINER_PORTS = {pod: [ContainerPort("http", port), ContainerPort("metrics", 9090)] for pod, port in HTTP.items()}
NAMED = Service("named", "10.96.2.10", (ServicePort(8080, target_name="http"),), BACKENDS,
                cluster_ipv6="fd00:96::210")
FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
ROUND = 24        # concurrent connections per round
MAX_ROUNDS = 6    # a backend unpicked after 144 connections (p = (2/3)^144 each): something is wrong
TIMEOUT = 2.0


# -- the emulation, without namespaces ----------------------------------------

def test_named_target_renders_each_endpoints_own_port() -> None:
    """Each KUBE-SEP chain DNATs to its own endpoint's port (the chain name
    hashes it, as kube-proxy's does); an endpoint whose pod has no port of
    that name is not among the port's endpoints at all; numeric targets
    and Endpoint(ip, node) render as before."""
    port = NAMED.ports[0]
    eps = [Endpoint("10.244.2.2", "n2", 80), Endpoint("10.244.2.3", "n2", ports=(("", 81),)),
           Endpoint("10.244.1.3", "n1", ports=(("other", 80),))]  # serves no port named ""
    rules = kubeproxy.render("n1", 4, "10.244.0.0/16", [(NAMED, eps)])
    dnat = [line.split("--to-destination ")[1] for line in rules.nat if "-j DNAT" in line]
    assert dnat == ["10.244.2.2:80", "10.244.2.3:81"]
    for ip, target in (("10.244.2.2", 80), ("10.244.2.3", 81)):
        sep = kubeproxy.endpoint_chain_name(NAMED, port, ip, target)
        assert sep in rules.nat_chains and f"-A {sep} " in "\n".join(rules.nat)
    spread = [line for line in rules.nat if line.startswith(f"-A {kubeproxy.chain_name('SVC', NAMED, port)} ")
              and "KUBE-SEP-" in line]
    assert len(spread) == 2 and "--probability 0.5000000000" in spread[0] and "statistic" not in spread[1]
    # Nobody serving the name: kube-proxy's "has no endpoints" REJECT.
    alone = kubeproxy.render("n1", 4, "10.244.0.0/16", [(NAMED, [Endpoint("10.244.2.2", "n2")])])
    assert any("has no endpoints" in line and "-j REJECT" in line for line in alone.filter)
    # Numeric targets: unchanged.
    plain = Service("plain", "10.96.2.11", (ServicePort(8080, 81),), ("c",))
    old = kubeproxy.render("n1", 4, "10.244.0.0/16", [(plain, [Endpoint("10.244.2.2", "n2")])])
    assert [line.split("--to-destination ")[1] for line in old.nat if "-j DNAT" in line] == ["10.244.2.2:81"]
    with pytest.raises(ValueError):
        ServicePort(8080, 80, target_name="http")


def test_manifests_carry_the_name_and_the_resolved_numbers() -> None:
    """The Service says targetPort "http"; the Pods declare their ports;
    the EndpointSlices carry each backend's number. The model resolves the
    name from the Pods (selector) and reads it from the slices to the same
    numbers the lab DNATs to."""
    from enforcer.model.objects import EndpointSlice, Pod, parse_object
    from enforcer.model.objects import Service as Service_
    from enforcer.model.services import service_backends
    from enforcer.model.state import ClusterSnapshot

    lab = MultiNodeLab(PREFIX, NODES, services=[NAMED], container_ports=CONTAINER_PORTS)
    assert NAMED.manifest()["spec"]["ports"] == [{"protocol": "TCP", "port": 8080, "targetPort": "http"}]
    assert parse_object(NAMED.manifest()).ports[0].target_port == "http"
    lab.services = [NAMED]  # as up() would set them, without building anything
    manifest = lab.cluster_manifest(services=True, endpoint_slices=True)
    pods = {i["metadata"]["name"]: i for i in manifest["items"] if i["kind"] == "Pod"}
    assert pods["d"]["spec"]["containers"][0]["ports"] == [
        {"name": "http", "containerPort": 81, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert "ports" not in pods["b"]["spec"]["containers"][0]
    want = {(lab.pod(p).ip(f), HTTP[p]) for p in BACKENDS for f in (4, 6)}
    assert {(e.ip, e.target(NAMED.ports[0])) for f in (4, 6) for e in lab.endpoints(NAMED, f)} == want

    def resolved(snapshot: ClusterSnapshot, svc_raw: dict[str, Any]) -> set[tuple[str, int | None]]:
        svc = parse_object(svc_raw)
        assert isinstance(svc, Service_)
        return {(str(b.address), b.ports[0]) for b in service_backends(snapshot, svc)}

    def snapshot(items: list[dict[str, Any]]) -> ClusterSnapshot:
        objs = [parse_object(i) for i in items]
        return ClusterSnapshot(namespaces={}, policies={},
                               pods={o.key: o for o in objs if isinstance(o, Pod)},
                               endpoint_slices={o.key: o for o in objs if isinstance(o, EndpointSlice)})

    # What kube-proxy reads: the slices, with the numbers resolved.
    assert resolved(snapshot(manifest["items"]), NAMED.manifest()) == want
    # What the controller resolves them from: the selected pods' ports (b,
    # selected too, declares no "http": it serves nothing of this port, and
    # the lab leaves it out of the port's endpoints likewise).
    relabelled = lab.cluster_manifest(labels={p: {"pod": p, "tier": "web"} for p in (*BACKENDS, CLIENT)})
    b_ips = {lab.pod(CLIENT).ip(f) for f in (4, 6)}
    assert resolved(snapshot(relabelled["items"]), NAMED.manifest(selector={"tier": "web"})) == \
        want | {(ip, None) for ip in b_ips}
    with_b = Service("named", NAMED.cluster_ip, NAMED.ports, (*BACKENDS, CLIENT), cluster_ipv6=NAMED.cluster_ipv6)
    assert [e.target(with_b.ports[0]) for e in lab.endpoints(with_b)] == [80, 81, 81, None]
    assert not any(ip in line for ip in b_ips for line in lab.rules("n1", 4, [with_b]).nat)


# -- on the wire, one enforcer daemon per node ----------------------------------

class Cluster(MultiNodeDaemons):
    """The lab with `enforcer run` in each node, on one manifest directory
    holding the Pods (with their named ports), the Service and its
    EndpointSlices, and one NetworkPolicy at a time."""

    def apply_egress(self, ports: list[dict[str, Any]]) -> None:
        """b's only egress: TCP to every pod of the namespace on these ports."""
        self.apply_policy("default", "b-egress", {
            "podSelector": {"matchLabels": {"pod": CLIENT}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {}}], "ports": ports}]})

    def egress_counters(self) -> Counter[Reason]:
        """The client's egress verdict counters (its node's maps)."""
        return Counter({reason: pkts for (direction, reason), pkts in self.counters(CLIENT).items()
                        if direction == DIR_EGRESS})


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    env = Cluster(MultiNodeLab(PREFIX, NODES, services=[NAMED], container_ports=CONTAINER_PORTS), "np")
    request.addfinalizer(env.close)  # before start(): a failed start is cleaned up too
    env.lab.up()
    yield env.start(env.lab.cluster_manifest(services=True, endpoint_slices=True))  # type: ignore[misc]


def describe(r: ProbeResult) -> str:
    return f"{r.outcome.value} by {r.answered_by} from {r.peer}" if r.ok else f"{r.outcome.value} {r.detail}"


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_every_node_dnats_each_backend_to_its_own_port(cluster: Cluster, family: int) -> None:
    """What kube-proxy wrote, read back with iptables-save: per node, one
    DNAT per backend, to that backend's "http"."""
    want = sorted(kubeproxy.endpoint_string(cluster.lab.pod(p).ip(family), HTTP[p]) for p in BACKENDS)
    for node in cluster.lab.nodes:
        saved = cluster.lab.iptables_save(node, family, "nat")
        assert sorted(line.split("--to-destination ")[1] for line in saved.splitlines() if "-j DNAT" in line) == want


CASES = [  # id, b's egress ports, the backends that must answer
    pytest.param([{"protocol": "TCP", "port": 80}], {"c"}, id="port-80"),
    pytest.param([{"protocol": "TCP", "port": "http"}], {"c", "d", "e"}, id="named-http"),
    pytest.param([{"protocol": "TCP", "port": 81}], {"d", "e"}, id="port-81"),
]


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ports, allowed", CASES)
def test_egress_through_a_named_target_port(cluster: Cluster, family: int, ports: list[dict[str, Any]],
                                            allowed: set[str]) -> None:
    """b -> ClusterIP:8080, targetPort "http": c serves it on 80, d (other
    node) and e (b's node) on 81. A policy port of 80 or 81 is judged on
    the port kube-proxy translated to, so only the backends whose "http" is
    that number answer; a named policy port ("http") resolves per
    destination pod and admits all three."""
    cluster.apply_egress(ports)
    lab = cluster.lab
    vip = NAMED.cluster_ip_of(family)
    assert vip is not None
    client_ip = lab.pod(CLIENT).ip(family)
    before_dnat = lab.dnat_counts("n1", NAMED, family)
    before = cluster.egress_counters()
    results: list[ProbeResult] = []
    picked: dict[str, int] = {}
    for _ in range(MAX_ROUNDS):
        results += probe_many([ProbeSpec(lab.netns_of(CLIENT), vip, 8080, "tcp", timeout=TIMEOUT)] * ROUND)
        after_dnat = lab.dnat_counts("n1", NAMED, family)
        picked = {p: after_dnat[p] - before_dnat[p] for p in BACKENDS}
        if all(picked.values()):
            break
    after = cluster.egress_counters()
    answered = Counter(r.answered_by for r in results if r.ok)
    report = (f"picked by kube-proxy {picked}, answered {dict(answered)}, "
              f"others {Counter(describe(r) for r in results if not r.ok)}\n{cluster.log_tails()}")

    # kube-proxy tried every backend. A connection whose client port was
    # used a moment before can find netfilter's entry for it and go to the
    # same backend without passing the DNAT rule again (not counted): so
    # at most one pick per connection, and answers at least as many.
    assert all(picked.values()), f"a backend was never picked: {report}"
    assert sum(picked.values()) <= len(results), report
    # The allowed backends answered every connection they got, to b itself;
    # the others none: every other connection was dropped (a timeout).
    assert set(answered) == set(allowed), report
    assert all(answered[p] >= picked[p] for p in allowed), report
    assert sum(1 for r in results if not r.ok) >= sum(picked[p] for p in BACKENDS if p not in allowed), report
    assert {r.peer for r in results if r.ok} == {client_ip}, report
    assert all(r.outcome is Outcome.TIMEOUT for r in results if not r.ok), report
    # The denied connections were dropped by b's egress policy (SYNs and
    # their retransmissions), each passed on from b's veth to be judged after DNAT.
    denied = sum(n for p, n in picked.items() if p not in allowed)
    assert after[Reason.DROP_POLICY] - before[Reason.DROP_POLICY] >= denied, report
    assert after[Reason.ALLOW_SERVICE_DEFERRED] - before[Reason.ALLOW_SERVICE_DEFERRED] >= len(results), report
    if denied == 0:
        assert after[Reason.DROP_POLICY] == before[Reason.DROP_POLICY], report
