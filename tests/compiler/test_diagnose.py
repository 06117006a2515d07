"""compiler.diagnose: the NodePort/LoadBalancer SNAT trap, found from the
model alone. Table-driven: each case is a cluster (a Service and policies
over a fixed set of pods) and the (service, policy, effect) triples
expected."""

from __future__ import annotations

import random
from typing import Any

import pytest

from enforcer.compiler.diagnose import (
    ANY_CLIENT_ADMITTED,
    CLIENTS_DENIED,
    ERROR,
    MIXED,
    NODES_UNKNOWN,
    SNAT_TRAP,
    WARNING,
    Diagnostic,
    diagnose,
    diagnostic_changes,
)
from enforcer.model.objects import NetworkPolicy, Pod, Service
from enforcer.model.state import ClusterSnapshot, ClusterStore

from .cluster import namespace, policy

N1, N2 = "192.168.56.11", "192.168.56.12"
HTTP = [("http", 8080, "TCP")]


def pod(key: str, labels: dict[str, str], ip: str, host_ips: list[str], *, ports=HTTP,  # type: ignore[no-untyped-def]
        phase: str = "Running", host_network: bool = False) -> dict[str, Any]:
    ns, name = key.split("/")
    status: dict[str, Any] = {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
    if host_ips:
        status["hostIP"], status["hostIPs"] = host_ips[0], [{"ip": a} for a in host_ips]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "n1" if N1 in host_ips else "n2", "hostNetwork": host_network,
                     "containers": [{"name": "c", "ports": [{"name": n, "containerPort": p, "protocol": proto}
                                                             for n, p, proto in ports]}]},
            "status": status}


def service(name: str = "web", ns: str = "foo", *, type: str = "NodePort", etp: str | None = None,  # noqa: A002
            selector: dict[str, str] | None = None, target: int | str = 8080, protocol: str = "TCP",
            cluster_ips: tuple[str, ...] = ("10.96.0.10",), no_selector: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type, "clusterIPs": list(cluster_ips),
                            "ports": [{"port": 80, "targetPort": target, "protocol": protocol,
                                       **({"nodePort": 30080} if type != "ClusterIP" else {})}]}
    if not no_selector:
        spec["selector"] = selector or {"app": "web"}
    if etp:
        spec["externalTrafficPolicy"] = etp
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def endpoint_slice(pod_key: str, ip: str, service_name: str = "web") -> dict[str, Any]:
    ns, name = pod_key.split("/")
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-manual", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "namespace": ns, "name": name}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]}


def ip_block(cidr: str, *excepts: str) -> dict[str, Any]:
    return {"ipBlock": {"cidr": cidr, **({"except": list(excepts)} if excepts else {})}}


def allow(name: str = "allow-ext", ns: str = "foo", *, peers: list | None = None,  # type: ignore[type-arg]
          ports: list | None = None, selects: dict[str, str] | None = None,  # type: ignore[type-arg]
          types: list[str] | None = None, egress: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {"to" if egress else "from": peers if peers is not None else [ip_block("203.0.113.0/24")]}
    if ports is not None:
        rule["ports"] = ports
    spec: dict[str, Any] = {"podSelector": {"matchLabels": selects if selects is not None else {"app": "web"}},
                            "egress" if egress else "ingress": [rule]}
    if types is not None:
        spec["policyTypes"] = types
    return policy(ns, name, spec)


def tcp(port: int | str, end: int | None = None, protocol: str = "TCP") -> dict[str, Any]:
    return {"protocol": protocol, "port": port, **({"endPort": end} if end else {})}


def cluster(*extra: dict[str, Any], host_ips: bool = True, web_phase: str = "Running") -> list[dict[str, Any]]:
    def hosts(ip: str) -> list[str]:
        return [ip] if host_ips else []
    return [namespace("foo", {}), namespace("bar", {}),
            pod("foo/web-1", {"app": "web"}, "10.244.1.2", hosts(N1), phase=web_phase),
            pod("foo/web-2", {"app": "web"}, "10.244.2.2", hosts(N2), phase=web_phase),
            pod("foo/db", {"app": "db"}, "10.244.2.3", hosts(N2), ports=[("pg", 5432, "TCP")]),
            pod("bar/client", {"app": "client"}, "10.244.1.3", hosts(N1)), *extra]


def snapshot(objects: list[dict[str, Any]]) -> ClusterSnapshot:
    store = ClusterStore()
    store.replace_all(objects, [])
    snap = store.snapshot()
    assert not snap.errors, snap.errors
    return snap


A = [("foo/web", "foo/allow-ext", CLIENTS_DENIED)]
B = [("foo/web", "foo/allow-ext", ANY_CLIENT_ADMITTED)]
NONE: list[tuple[str, str, str]] = []

# (id, objects, expected (service, policy, effect) in order)
CASES = [
    ("a: ipBlock misses the node addresses", cluster(service(), allow()), A),
    ("a: default ETP is Cluster, LoadBalancer too", cluster(service(type="LoadBalancer"), allow()), A),
    ("a: explicit ETP Cluster", cluster(service(etp="Cluster"), allow()), A),
    ("a: no selector, backends from a manual EndpointSlice",
     cluster(service(no_selector=True), endpoint_slice("foo/web-1", "10.244.1.2"), allow()), A),
    ("EndpointSlices win over the selector: the slice's pod is not selected by the policy",
     cluster(service(), endpoint_slice("foo/db", "10.244.2.3"), allow()), NONE),
    ("a: except carves the nodes out", cluster(service(), allow(peers=[ip_block("0.0.0.0/0", "192.168.56.0/24")])), A),
    ("b: 0.0.0.0/0 holds every node", cluster(service(), allow(peers=[ip_block("0.0.0.0/0")])), B),
    ("b: the node subnet", cluster(service(), allow(peers=[ip_block("192.168.56.0/24")])), B),
    ("b: one of several ipBlock peers holds the nodes",
     cluster(service(), allow(peers=[ip_block("203.0.113.0/24"), ip_block("192.168.0.0/16")])), B),
    ("b: ipBlock next to a podSelector peer",
     cluster(service(), allow(peers=[{"podSelector": {}}, ip_block("0.0.0.0/0")])), B),
    ("mixed: one node's address only", cluster(service(), allow(peers=[ip_block(f"{N1}/32")])),
     [("foo/web", "foo/allow-ext", MIXED)]),
    ("unknown: no pod reports hostIPs", cluster(service(), allow(), host_ips=False),
     [("foo/web", "foo/allow-ext", NODES_UNKNOWN)]),
    # not the trap
    ("ETP Local keeps the client address", cluster(service(etp="Local"), allow()), NONE),
    ("ClusterIP only: no external traffic", cluster(service(type="ClusterIP"), allow()), NONE),
    ("policy without ipBlock", cluster(service(), allow(peers=[{"namespaceSelector": {}}])), NONE),
    ("policy allowing every peer (no from)", cluster(service(), allow(peers=[])), NONE),
    ("policy in another namespace", cluster(service(), allow(ns="bar", selects={})), NONE),
    ("policy not selecting the backends", cluster(service(), allow(selects={"app": "db"})), NONE),
    ("port not covered", cluster(service(), allow(ports=[tcp(9090)])), NONE),
    ("protocol not covered", cluster(service(), allow(ports=[tcp(8080, protocol="UDP")])), NONE),
    ("service port is not the backend port", cluster(service(), allow(ports=[tcp(80)])), NONE),
    ("named policy port of another number", cluster(service(target=5432), allow(ports=[tcp("http")])), NONE),
    ("egress-only policy", cluster(service(), allow(egress=True, types=["Egress"])), NONE),
    ("service without selector nor EndpointSlice", cluster(service(no_selector=True), allow()), NONE),
    ("service selecting no pod", cluster(service(selector={"app": "none"}), allow()), NONE),
    ("backends not running", cluster(service(), allow(), web_phase="Succeeded"), NONE),
    ("IPv6 ipBlock, IPv4-only Service", cluster(service(), allow(peers=[ip_block("::/0")])), NONE),
    # ports
    ("numeric port covered", cluster(service(), allow(ports=[tcp(8080)])), A),
    ("endPort range covers", cluster(service(), allow(ports=[tcp(8000, 8100)])), A),
    ("port without number: whole protocol", cluster(service(), allow(ports=[{"protocol": "TCP"}])), A),
    ("named targetPort resolved through the pod", cluster(service(target="http"), allow(ports=[tcp(8080)])), A),
    ("named policy port resolved through the pod", cluster(service(), allow(ports=[tcp("http")])), A),
    ("named targetPort missing on the pods", cluster(service(target="grpc"), allow()), NONE),
    ("Ingress+Egress policy types", cluster(service(), allow(types=["Ingress", "Egress"])), A),
    ("two policies, two services, sorted",
     cluster(service("web"), service("api", selector={"app": "web"}, type="LoadBalancer"),
             allow("z-all", peers=[ip_block("0.0.0.0/0")]), allow("a-ext")),
     [("foo/api", "foo/a-ext", CLIENTS_DENIED), ("foo/api", "foo/z-all", ANY_CLIENT_ADMITTED),
      ("foo/web", "foo/a-ext", CLIENTS_DENIED), ("foo/web", "foo/z-all", ANY_CLIENT_ADMITTED)]),
]


@pytest.mark.parametrize("objects,expected", [pytest.param(o, e, id=i) for i, o, e in CASES])
def test_snat_trap(objects, expected):
    found = diagnose(snapshot(objects))
    assert [(d.service, d.policy, d.effect) for d in found] == expected
    assert all(d.code == SNAT_TRAP for d in found)


BY_ID = {i: o for i, o, _ in CASES}


@pytest.mark.parametrize("case,severity", [
    ("a: ipBlock misses the node addresses", WARNING),    # allowed traffic denied
    ("b: 0.0.0.0/0 holds every node", ERROR),             # denied traffic admitted
    ("mixed: one node's address only", ERROR),
    ("unknown: no pod reports hostIPs", WARNING),
])
def test_severity(case, severity):
    (found,) = diagnose(snapshot(BY_ID[case]))
    assert found.severity == severity


FIX = ("set spec.externalTrafficPolicy: Local on Service foo/web "
       "(clients keep their address; only nodes with a ready backend answer)")


@pytest.mark.parametrize("peers,says", [
    ([ip_block("203.0.113.0/24")], ["holds no node address (192.168.56.11, 192.168.56.12)",
                                    "the external clients it allows are denied"]),
    ([ip_block("0.0.0.0/0")], ["admits every client that reaches any node"]),
    ([ip_block(f"{N1}/32")], ["some node addresses (192.168.56.11) and not others (192.168.56.12)"]),
])
def test_message_names_service_policy_case_and_fix(peers, says):
    (d,) = diagnose(snapshot(cluster(service(), allow(peers=peers))))
    assert d.fix == FIX
    for part in ["NetworkPolicy foo/allow-ext", "NodePort Service foo/web", "externalTrafficPolicy Cluster",
                 "8080/TCP", "foo/web-1, foo/web-2", "ingress rule 0", f"Fix: {FIX}", *says]:
        assert part in d.message, (part, d.message)


def test_order_does_not_depend_on_input_order():
    objects = BY_ID["two policies, two services, sorted"]
    first = diagnose(snapshot(objects))
    for seed in range(5):
        shuffled = list(objects)
        random.Random(seed).shuffle(shuffled)
        assert diagnose(snapshot(shuffled)) == first


def d(policy: str, effect: str, message: str = "m") -> Diagnostic:
    return Diagnostic(SNAT_TRAP, WARNING, "foo/web", policy, effect, message, "fix")


@pytest.mark.parametrize("before,after,appeared,gone", [
    ([], [d("p", CLIENTS_DENIED)], [d("p", CLIENTS_DENIED)], []),
    ([d("p", CLIENTS_DENIED)], [d("p", CLIENTS_DENIED, "other words")], [], []),  # same problem: not news
    ([d("p", CLIENTS_DENIED)], [d("p", ANY_CLIENT_ADMITTED)], [d("p", ANY_CLIENT_ADMITTED)], [d("p", CLIENTS_DENIED)]),
    ([d("p", CLIENTS_DENIED), d("q", MIXED)], [d("q", MIXED)], [], [d("p", CLIENTS_DENIED)]),
])
def test_changes(before, after, appeared, gone):
    assert diagnostic_changes(before, after) == (appeared, gone)


def large_cluster(n_namespaces: int) -> ClusterSnapshot:
    """200 pods per namespace, 10 policies (half with ipBlock) and a
    NodePort Service in each."""
    objects: list[dict[str, Any]] = []
    for n in range(n_namespaces):
        ns = f"ns{n}"
        objects.append(namespace(ns, {}))
        objects.append(service("web", ns, selector={"app": "web1"}))
        for i in range(200):
            host = f"192.168.{n % 4}.{1 + i % 50}"
            objects.append(pod(f"{ns}/p{i}", {"app": f"web{i % 10}"}, f"10.{n}.{i // 250}.{i % 250}", [host]))
        for j in range(10):
            peers = [ip_block("203.0.113.0/24")] if j % 2 else [{"podSelector": {}}]
            objects.append(allow(f"pol{j}", ns, peers=peers, selects={"app": f"web{j}"}))
    return snapshot(objects)


def count_pod_checks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts, from now on, every look at a pod diagnose can take: a
    Service's or a policy's selector tried on it, its phase read."""
    counts = {"Service.selects": 0, "NetworkPolicy.selects": 0, "Pod.is_running": 0}

    def counted(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(Service, "selects", counted("Service.selects", Service.selects))
    monkeypatch.setattr(NetworkPolicy, "selects", counted("NetworkPolicy.selects", NetworkPolicy.selects))
    monkeypatch.setattr(Pod, "is_running", property(counted("Pod.is_running", Pod.is_running.fget)))
    return counts


def test_work_grows_with_the_cluster_not_with_services_times_pods(monkeypatch):
    """diagnose runs after every compile, so its work must grow linearly
    with the cluster: each Service looks at the pods of its own namespace,
    not at every pod of the cluster. Counted, not timed: twice the
    namespaces (Services, pods, policies) must cost twice the pod checks,
    where Services x pods would cost four times."""
    small, large = large_cluster(25), large_cluster(50)
    counts = count_pod_checks(monkeypatch)
    work = {}
    for n, snap in ((25, small), (50, large)):
        for k in counts:
            counts[k] = 0
        found = diagnose(snap)
        assert [(x.service, x.policy) for x in found] == [(f"ns{i}/web", f"ns{i}/pol1")
                                                          for i in sorted(range(n), key=str)]
        work[n] = dict(counts)
    total = {n: sum(w.values()) for n, w in work.items()}
    assert total[25] > 0, "nothing counted: diagnose no longer calls the wrapped methods (update this test)"
    assert total[50] <= 2.1 * total[25], f"pod checks grow faster than the cluster: {work}"
    # And in absolute terms: a few checks per pod, not one per (Service, pod).
    assert total[50] <= 5 * len(large.pods), f"{total[50]} pod checks for {len(large.pods)} pods: {work[50]}"
