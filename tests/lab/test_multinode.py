"""The multi-node lab: two nodes on an underlay, pods routed between them
without encapsulation, an external client, kube-proxy's iptables rules on
every node; and, on a lab of its own, one enforcer daemon per node.

Pods: a, b on n1 (10.244.1.2, .3); c, d on n2 (10.244.2.2, .3). Every
server answers "<pod> <source address it saw>", so a probe tells which
backend a Service picked and whether the connection was SNATed on the way.

Services (ClusterIPs 10.96.0.x and fd00:96::x, dual-stack):
  web         80 TCP+UDP     -> a (n1), c (n2)
  only-a      8080 -> 80 TCP+UDP -> a      only-c  8080 -> 81 TCP+UDP -> c
  np-cluster  NodePort 30080 -> c:80, externalTrafficPolicy Cluster
  np-local    NodePort 30081 -> c:81, externalTrafficPolicy Local

The daemon tests run their own lab (prefix enm<tag>p, Services to-c and
to-d) with `enforcer run` in each node, on one manifest directory, pins in
/sys/fs/bpf/enforcer-mn-<prefix>-<node>. Egress to a ClusterIP is judged
on the backend kube-proxy picked, after DNAT (bpf/lib/services.h).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import pytest

from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS
from enforcer.datapath.reasons import Reason
from enforcer.lab.netns import ip_json
from enforcer.lab.probe import Outcome, ProbeResult, ProbeSpec, probe_many
from tests.support import kubeproxy
from tests.support.kubeproxy import LOCAL, Endpoint, Service, ServicePort
from tests.support.multinode import EXT, EXT_IPV4, EXT_IPV6, MultiNodeLab

from .multinode_daemons import MultiNodeDaemons

TAG = os.getpid()
PREFIX = f"enm{TAG}"
NODES = {"n1": ["a", "b"], "n2": ["c", "d"]}
FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
PASS_TIMEOUT = 3.0
DENY_TIMEOUT = 1.0
SPREAD_PROBES = 24  # both of 2 backends answer unless 24 fair coins all land alike (p = 2^-23)

WEB = Service("web", "10.96.0.10", (ServicePort(80, name="tcp"), ServicePort(80, protocol="UDP", name="udp")),
              ("a", "c"), cluster_ipv6="fd00:96::10")
ONLY_A = Service("only-a", "10.96.0.11", (ServicePort(8080, 80, name="tcp"), ServicePort(8080, 80, "UDP", name="udp")),
                 ("a",), cluster_ipv6="fd00:96::11")
ONLY_C = Service("only-c", "10.96.0.12", (ServicePort(8080, 81, name="tcp"), ServicePort(8080, 81, "UDP", name="udp")),
                 ("c",), cluster_ipv6="fd00:96::12")
NP_CLUSTER = Service("np-cluster", "10.96.0.20", (ServicePort(8080, 80, node_port=30080),), ("c",),
                     cluster_ipv6="fd00:96::20")
NP_LOCAL = Service("np-local", "10.96.0.21", (ServicePort(8081, 81, node_port=30081),), ("c",),
                   external_traffic_policy=LOCAL, cluster_ipv6="fd00:96::21")
SERVICES = [WEB, ONLY_A, ONLY_C, NP_CLUSTER, NP_LOCAL]


def vip(svc: Service, family: int) -> str:
    ip = svc.cluster_ip_of(family)
    assert ip is not None
    return ip


def describe(r: ProbeResult) -> str:
    return f"{r.outcome.value} by {r.answered_by} from {r.peer}" if r.ok else f"{r.outcome.value} {r.detail}"


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[MultiNodeLab]:
    lab = MultiNodeLab(PREFIX, NODES, services=SERVICES)
    request.addfinalizer(lab.down)  # before up(): a failed up is cleaned up too
    yield lab.up()


# -- rules, without namespaces ------------------------------------------------

def test_chain_names_are_kube_proxys() -> None:
    """The hash kube-proxy names its chains with: well-known chains of every
    cluster come out the same."""
    https = ServicePort(443, 6443, name="https")
    kubernetes = Service("kubernetes", "10.96.0.1", (https,), ())
    assert kubeproxy.chain_name("SVC", kubernetes, https) == "KUBE-SVC-NPX46M4PTMTKRN6Y"
    dns = Service("kube-dns", "10.96.0.10", (ServicePort(53, protocol="UDP", name="dns"),
                                             ServicePort(53, name="dns-tcp")), (), namespace="kube-system")
    assert [kubeproxy.chain_name("SVC", dns, p) for p in dns.ports] == \
        ["KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SVC-ERIFXISQEP7F7OF4"]


def test_rendered_rules() -> None:
    """Three endpoints: probabilities 1/3, 1/2, then the last always. An
    ETP=Local NodePort on a node without a local endpoint: no KUBE-SVL
    chain, no jump from KUBE-EXT to it, and a DROP in the filter table."""
    port = ServicePort(80, node_port=30080)
    svc = Service("s", "10.96.0.5", (port,), ("x", "y", "z"), external_traffic_policy=LOCAL)
    eps = [Endpoint("10.244.2.2", "n2"), Endpoint("10.244.2.3", "n2"), Endpoint("10.244.3.2", "n3")]
    rules = kubeproxy.render("n1", 4, "10.244.0.0/16", [(svc, eps)])
    svc_chain, svl_chain, ext_chain = (kubeproxy.chain_name(p, svc, port) for p in ("SVC", "SVL", "EXT"))
    spread = [line for line in rules.nat if line.startswith(f"-A {svc_chain} ") and "KUBE-SEP-" in line]
    assert ["--probability 0.3333333333" in spread[0], "--probability 0.5000000000" in spread[1],
            "statistic" not in spread[2]] == [True, True, True]
    assert svl_chain not in rules.nat_chains and not any(svl_chain in line for line in rules.nat)
    assert any("has no local endpoints" in line and "--dport 30080 -j DROP" in line for line in rules.filter)
    assert ext_chain in rules.nat_chains
    on_n2 = kubeproxy.render("n2", 4, "10.244.0.0/16", [(svc, eps)])
    assert svl_chain in on_n2.nat_chains and f"-A {ext_chain} -j {svl_chain}" in on_n2.nat
    assert not any("DROP" in line and "30080" in line for line in on_n2.filter)


def test_service_manifest_parses_as_the_model_reads_it() -> None:
    from enforcer.model.objects import parse_object
    m = parse_object(NP_LOCAL.manifest(selector={"pod": "c"}))
    assert (m.key, m.type, m.external_traffic_policy, [str(ip) for ip in m.cluster_ips]) == \
        ("default/np-local", "NodePort", "Local", ["10.96.0.21", "fd00:96::21"])
    assert [(p.protocol, p.port, p.target_port, p.node_port) for p in m.ports] == [("TCP", 8081, 81, 30081)]
    assert parse_object(WEB.manifest()).type == "ClusterIP"


# -- the topology -------------------------------------------------------------

@pytest.mark.lab
def test_placement_and_routes(lab: MultiNodeLab) -> None:
    assert {p: lab.node_of(p) for p in lab.pods} == {"a": "n1", "b": "n1", "c": "n2", "d": "n2"}
    assert (str(lab.pod("a").ipv4), str(lab.pod("c").ipv6)) == ("10.244.1.2", "fd00:244:2::2")
    assert (lab.node("n1").ip(4), lab.node("n2").ip(6)) == ("100.64.0.1", "fd00:64::2")
    routes = {r["dst"]: r.get("gateway") for r in ip_json("route", "show", netns=lab.node("n1").netns)}
    assert routes["10.244.2.0/24"] == "100.64.0.2"   # direct routing, no tunnel
    assert routes["10.244.1.2"] is None and routes["10.244.1.3"] is None  # local pods: /32 to their lxc


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_pod_to_pod_across_nodes(lab: MultiNodeLab, family: int) -> None:
    """Both directions, TCP and UDP, no NAT: each server sees the client pod."""
    flows = [(s, d, port, proto) for s, d in (("a", "c"), ("c", "a"), ("b", "d"), ("d", "b"))
             for port, proto in ((80, "tcp"), (81, "udp"))]
    results = lab.probe_many([(s, lab.pod(d).ip(family), port, proto) for s, d, port, proto in flows],
                             timeout=PASS_TIMEOUT)
    wrong = [f"{f}: {describe(r)}" for f, r in zip(flows, results, strict=False)
             if not (r.ok and r.answered_by == f[1] and r.peer == lab.pod(f[0]).ip(family))]
    assert not wrong, "\n".join(wrong)


# -- ClusterIP ----------------------------------------------------------------

@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_cluster_ip_reaches_backend_on_same_and_other_node(lab: MultiNodeLab, family: int) -> None:
    """From b (n1): only-a's backend is on b's node, only-c's on the other;
    port 8080 is DNATed to the target port; the backend sees b itself."""
    b = lab.pod("b").ip(family)
    for svc, backend in ((ONLY_A, "a"), (ONLY_C, "c")):
        for proto in ("tcp", "udp"):
            r = lab.probe_result("b", vip(svc, family), 8080, proto, PASS_TIMEOUT)
            assert (r.outcome, r.answered_by, r.peer) == (Outcome.OK, backend, b), f"{svc.name}: {describe(r)}"


@pytest.mark.lab
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cluster_ip_spreads_over_both_backends(lab: MultiNodeLab, family: int, proto: str) -> None:
    """web has a backend on each node: from a client on either node, over
    many connections, both answer, and neither sees anything but the client."""
    for client in ("b", "d"):
        probes = [(client, vip(WEB, family), 80, proto)] * SPREAD_PROBES
        results = lab.probe_many(probes, timeout=PASS_TIMEOUT)
        assert all(r.ok for r in results), [describe(r) for r in results if not r.ok]
        assert {r.answered_by for r in results} == {"a", "c"}, f"from {client}: only {results[0].answered_by}"
        assert {r.peer for r in results} == {lab.pod(client).ip(family)}


@pytest.mark.lab
def test_cluster_ip_from_a_node_is_masqueraded(lab: MultiNodeLab) -> None:
    """The node's own socket: nat OUTPUT DNATs it, and as its source is
    outside the cluster CIDR, KUBE-SVC marks it for MASQUERADE: the backend
    on the other node sees n1's underlay address."""
    r = lab.probe_result("n1", vip(ONLY_C, 4), 8080, "tcp", PASS_TIMEOUT)
    assert (r.outcome, r.answered_by, r.peer) == (Outcome.OK, "c", lab.node("n1").ip(4)), describe(r)


# -- NodePort -----------------------------------------------------------------

@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_node_port_cluster_policy_snats_to_the_node(lab: MultiNodeLab, family: int) -> None:
    """ETP=Cluster: through n1 (no backend) the connection is DNATed to c on
    n2 and SNATed to n1, so c answers back through n1. kube-proxy marks all
    ETP=Cluster NodePort traffic for MASQUERADE, so through n2 (c's own node)
    c sees n2's address, not the client's."""
    for via in ("n1", "n2"):
        r = lab.probe_result(EXT, lab.node(via).ip(family), 30080, "tcp", PASS_TIMEOUT)
        assert (r.outcome, r.answered_by, r.peer) == (Outcome.OK, "c", lab.node(via).ip(family)), \
            f"via {via}: {describe(r)}"


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_node_port_local_policy_keeps_the_client_address(lab: MultiNodeLab, family: int) -> None:
    """ETP=Local: n1 has no local endpoint and drops (kube-proxy's "has no
    local endpoints" DROP); n2 DNATs to c without SNAT, c sees the external
    client. A pod's traffic to the NodePort is not subject to the policy
    (KUBE-EXT sends the cluster CIDR to KUBE-SVC): b reaches it through n1."""
    ext = str(EXT_IPV4 if family == 4 else EXT_IPV6)
    dropped = lab.probe_result(EXT, lab.node("n1").ip(family), 30081, "tcp", DENY_TIMEOUT)
    assert dropped.outcome is Outcome.TIMEOUT, describe(dropped)
    r = lab.probe_result(EXT, lab.node("n2").ip(family), 30081, "tcp", PASS_TIMEOUT)
    assert (r.outcome, r.answered_by, r.peer) == (Outcome.OK, "c", ext), describe(r)
    r = lab.probe_result("b", lab.node("n1").ip(family), 30081, "tcp", PASS_TIMEOUT)
    assert (r.outcome, r.answered_by, r.peer) == (Outcome.OK, "c", lab.pod("b").ip(family)), describe(r)


@pytest.mark.lab
def test_update_services_rewrites_every_node(lab: MultiNodeLab) -> None:
    """np-local gains a backend on n1 (n1 now serves ext itself, keeping its
    address), only-c loses its backends (REJECT: refused) and only-a goes
    away with its chains. Then back to the original set."""
    try:
        lab.update_services([WEB, replace(ONLY_C, backends=()), NP_CLUSTER, replace(NP_LOCAL, backends=("a", "c"))])
        r = lab.probe_result(EXT, lab.node("n1").ip(4), 30081, "tcp", PASS_TIMEOUT)
        assert (r.outcome, r.answered_by, r.peer) == (Outcome.OK, "a", str(EXT_IPV4)), describe(r)
        assert lab.probe_result("b", vip(ONLY_C, 4), 8080, "tcp", PASS_TIMEOUT).outcome is Outcome.REFUSED
        gone = kubeproxy.chain_name("SVC", ONLY_A, ONLY_A.ports[0])
        for node in lab.nodes:
            assert gone not in lab.iptables_save(node, 4, "nat")
            assert gone not in lab.iptables_save(node, 6, "nat")
    finally:
        lab.update_services(SERVICES)
    r = lab.probe_result("b", vip(ONLY_A, 4), 8080, "tcp", PASS_TIMEOUT)
    assert (r.outcome, r.answered_by) == (Outcome.OK, "a"), describe(r)


# -- the enforcer, one daemon per node -----------------------------------------

@pytest.fixture(scope="module")
def daemons(request: pytest.FixtureRequest) -> MultiNodeDaemons:
    env = MultiNodeDaemons(MultiNodeLab(f"{PREFIX}p", NODES, services=[TO_C, TO_D, TO_A]))
    request.addfinalizer(env.close)
    env.lab.up()
    return env.start(env.lab.cluster_manifest(services=True))


def peer(name: str) -> dict:  # type: ignore[type-arg]
    return {"podSelector": {"matchLabels": {"pod": name}}}


def check(lab: MultiNodeLab, table: list[tuple[str, str, int, str, Outcome, str]]) -> None:
    """(src, dst ip, port, proto, expected outcome, expected answering pod)
    each, probed concurrently; a flow that must be dropped waits only
    DENY_TIMEOUT."""
    specs = [ProbeSpec(lab.netns_of(s), d, port, proto,
                       timeout=DENY_TIMEOUT if want is Outcome.TIMEOUT else PASS_TIMEOUT)
             for s, d, port, proto, want, _ in table]
    wrong = [f"{row[:4]}: expected {row[4].value}, got {describe(r)}" for row, r in zip(table, probe_many(specs), strict=False)
             if r.outcome is not row[4] or (r.ok and r.answered_by != row[5])]
    assert not wrong, "\n".join(wrong)


TO_C = Service("to-c", "10.96.1.2", (ServicePort(8080, 80),), ("c",), cluster_ipv6="fd00:96::102")
TO_D = Service("to-d", "10.96.1.1", (ServicePort(8080, 80),), ("d",), cluster_ipv6="fd00:96::101")
TO_A = Service("to-a", "10.96.1.3", (ServicePort(8080, 80),), ("a",), cluster_ipv6="fd00:96::103")


def write_policies(daemons: MultiNodeDaemons) -> None:
    """c admits only a, on TCP 80; b sends only to d, on TCP 80."""
    daemons.write_policy("default", "c-ingress", {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"],
                                       "ingress": [{"from": [peer("a")], "ports": [{"protocol": "TCP", "port": 80}]}]})
    daemons.write_policy("default", "b-egress", {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                                      "egress": [{"to": [peer("d")], "ports": [{"protocol": "TCP", "port": 80}]}]})
    daemons.sync()


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_policy_across_nodes(daemons: MultiNodeDaemons, family: int) -> None:
    """c (n2) admits only a (n1) on TCP 80: enforced by n2's daemon at c's
    veth. b (n1) may send only to d (n2) on TCP 80: enforced by n1's daemon
    at b's veth. Each node knows the other node's pods by their addresses."""
    write_policies(daemons)
    lab = daemons.lab
    before = {p: daemons.counters(p) for p in ("b", "c")}
    table = [  # src, dst, port, proto, outcome
        ("a", "c", 80, "tcp", Outcome.OK),        # allowed into c, across nodes
        ("a", "c", 81, "tcp", Outcome.TIMEOUT),   # other port: dropped at n2
        ("d", "c", 80, "tcp", Outcome.TIMEOUT),   # other peer, same node as c
        ("b", "d", 80, "tcp", Outcome.OK),        # allowed out of b, across nodes
        ("b", "d", 81, "udp", Outcome.TIMEOUT),   # dropped at n1, never crosses the underlay
        ("b", "a", 80, "tcp", Outcome.TIMEOUT),   # same node, not allowed out of b
        ("d", "b", 80, "tcp", Outcome.OK),        # into b: its answers are replies
        ("c", "a", 81, "udp", Outcome.OK),        # c's egress is not isolated
    ]
    check(lab, [(s, lab.pod(d).ip(family), port, proto, want, d) for s, d, port, proto, want in table])
    after = {p: daemons.counters(p) for p in ("b", "c")}

    def delta(pod: str, direction: int, reason: Reason) -> int:
        return after[pod].get((direction, reason), 0) - before[pod].get((direction, reason), 0)

    assert delta("c", DIR_INGRESS, Reason.DROP_POLICY) >= 2      # n2 dropped a:81 and d:80 at c
    assert delta("c", DIR_INGRESS, Reason.ALLOW_POLICY) >= 1     # and let a:80 in
    assert delta("b", DIR_EGRESS, Reason.DROP_POLICY) >= 2       # n1 dropped b's d:81 and a:80
    assert delta("b", DIR_EGRESS, Reason.ALLOW_POLICY) >= 1


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_policy_on_cluster_ip_traffic_sees_the_backend_at_ingress(daemons: MultiNodeDaemons, family: int) -> None:
    """The receiving side of a Service connection is enforced on what the
    backend gets: the sending node has already DNATed it (PREROUTING), so
    the tc program at c's veth sees the client pod and c itself."""
    write_policies(daemons)
    check(daemons.lab, [
        ("a", vip(TO_C, family), 8080, "tcp", Outcome.OK, "c"),
        ("d", vip(TO_C, family), 8080, "tcp", Outcome.TIMEOUT, "c"),
        # c to itself through its Service (hairpin, masqueraded to n2's
        # address): a pod's traffic to itself is no policy's business.
        ("c", vip(TO_C, family), 8080, "tcp", Outcome.OK, "c"),
    ])


@pytest.mark.lab
@pytest.mark.parametrize("family", FAMILIES)
def test_egress_policy_through_cluster_ips_is_judged_on_the_backend(daemons: MultiNodeDaemons, family: int) -> None:
    """b may send only to d, on TCP 80. Through ClusterIPs (8080 -> 80) the
    verdict is the backend's: d (n2) through to-d is allowed, judged on
    n1's eth0 after DNAT; c (n2) through to-c is denied there; a (n1, same
    node) through to-a is denied at a's veth. Replies come back from the
    ClusterIP and pass (the probes that answer prove it). a is not
    egress-isolated: every Service works for it."""
    write_policies(daemons)
    before = {p: daemons.counters(p) for p in ("a", "b")}
    check(daemons.lab, [
        ("b", vip(TO_D, family), 8080, "tcp", Outcome.OK, "d"),
        ("b", vip(TO_C, family), 8080, "tcp", Outcome.TIMEOUT, ""),
        ("b", vip(TO_A, family), 8080, "tcp", Outcome.TIMEOUT, ""),
        ("a", vip(TO_D, family), 8080, "tcp", Outcome.OK, "d"),
        ("b", daemons.lab.pod("d").ip(family), 80, "tcp", Outcome.OK, "d"),
    ])
    after = {p: daemons.counters(p) for p in ("a", "b")}

    def delta(pod: str, reason: Reason) -> int:
        return after[pod].get((DIR_EGRESS, reason), 0) - before[pod].get((DIR_EGRESS, reason), 0)

    assert delta("b", Reason.ALLOW_SERVICE_DEFERRED) >= 3  # each ClusterIP SYN passed on from b's veth
    assert delta("b", Reason.DROP_POLICY) >= 2             # to-c on eth0, to-a at a's veth (SYN retries: more)
    assert delta("b", Reason.ALLOW_POLICY) >= 2            # to-d after DNAT, d directly
    assert delta("b", Reason.ALLOW_REPLY) == 0             # replies are counted on ingress, not here
    assert delta("a", Reason.ALLOW_NOT_ISOLATED) >= 1      # a's to-d, judged after DNAT
