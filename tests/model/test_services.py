"""service_backends: a Service's backends from its EndpointSlices when it
has any, else from its selector over running pods (named target ports
resolved per pod)."""

from __future__ import annotations

from typing import Any

import pytest

from enforcer.model.services import Backend, backends_by_service, service_backends, slices_by_service
from enforcer.model.state import ClusterStore


def svc(name: str = "web", selector: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
        cluster_ips: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}]}
    if selector is not None:
        spec["selector"] = selector
    if cluster_ips:
        spec["clusterIPs"] = cluster_ips
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "foo"}, "spec": spec}


def pod(name: str, *ips: str, node: str = "n1", phase: str = "Running", ports: list[dict[str, Any]] | None = None,
        namespace: str = "foo", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
            "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]}}


def eps(name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
        service: str | None = "web", address_type: str = "IPv4", namespace: str = "foo") -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
            "metadata": {"name": name, "namespace": namespace, "labels": labels}, "endpoints": endpoints,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def ep(ip: str, pod_name: str | None = None, node: str | None = "n1", **conditions: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if node:
        out["nodeName"] = node
    if pod_name:
        out["targetRef"] = {"kind": "Pod", "namespace": "foo", "name": pod_name}
    return out


def backend(ip: str, *ports: int | None, pod: str | None = None, node: str | None = "n1", ready: bool = True) -> tuple:
    return (ip, ports, pod, node, ready)


NAMED = [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]

CASES = {
    "selector: running pods, numeric targetPort": (
        [svc(selector={"app": "web"}), pod("a", "10.0.0.2", app="web"), pod("b", "10.0.0.1", node="n2", app="web"),
         pod("other", "10.0.0.3", app="db"), pod("done", "10.0.0.4", phase="Succeeded", app="web"),
         pod("pending", app="web"), pod("elsewhere", "10.0.0.5", namespace="bar", app="web")],
        [backend("10.0.0.1", 8080, pod="foo/b", node="n2"), backend("10.0.0.2", 8080, pod="foo/a")]),
    "selector: named targetPort resolved per pod; a pod without it does not serve that port": (
        [svc(selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "http"},
                                             {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]),
         pod("a", "10.0.0.1", ports=NAMED, app="web"),
         pod("b", "10.0.0.2", ports=[{"name": "http", "containerPort": 9090}], app="web"),
         pod("c", "10.0.0.3", ports=[{"name": "dns", "containerPort": 53}], app="web")],  # TCP "dns", not UDP
        [backend("10.0.0.1", 8080, 5353, pod="foo/a"), backend("10.0.0.2", 9090, None, pod="foo/b"),
         backend("10.0.0.3", None, None, pod="foo/c")]),
    "selector: dual-stack pod, single-stack service keeps its family": (
        [svc(selector={"app": "web"}, cluster_ips=["fd00:96::10"]), pod("a", "10.0.0.1", "fd00::1", app="web")],
        [backend("fd00::1", 8080, pod="foo/a")]),
    "selector: dual-stack pod without cluster IPs keeps both": (
        [svc(selector={"app": "web"}), pod("a", "10.0.0.1", "fd00::1", app="web")],
        [backend("10.0.0.1", 8080, pod="foo/a"), backend("fd00::1", 8080, pod="foo/a")]),
    "no selector, no slices: no backends": (
        [svc(), pod("a", "10.0.0.1", app="web")], []),
    "empty selector is no selector": (
        [svc(selector={}), pod("a", "10.0.0.1", app="web")], []),
    "slices win over the selector": (
        [svc(selector={"app": "web"}), pod("a", "10.0.0.1", app="web"),
         eps("web-1", [ep("10.0.0.7", "x", node="n3"), ep("10.0.0.8", node=None, ready=False)])],
        [backend("10.0.0.7", 8080, pod="foo/x", node="n3"), backend("10.0.0.8", 8080, node=None, ready=False)]),
    "slices: ports matched by name and protocol; unset port and missing port serve nothing": (
        [svc(ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "all", "port": 1}]),
         eps("web-1", [ep("10.0.0.1")], ports=[{"name": "http", "port": 8080, "protocol": "TCP"},
                                              {"name": "dns", "port": 53, "protocol": "TCP"},
                                              {"name": "all", "protocol": "TCP"}])],
        [backend("10.0.0.1", 8080, None, None)]),
    "slices: unnamed single port": (
        [svc(ports=[{"port": 80, "targetPort": 8080}]),
         eps("web-1", [ep("10.0.0.1")], ports=[{"port": 8080, "protocol": "TCP"}])],
        [backend("10.0.0.1", 8080)]),
    "slices: several, per family; other services' and unlabelled slices ignored; FQDN has no addresses": (
        [svc(), eps("web-b", [ep("fd00::1")], address_type="IPv6"), eps("web-a", [ep("10.0.0.2"), ep("10.0.0.1")]),
         eps("db-1", [ep("10.0.0.9")], service="db"), eps("loose", [ep("10.0.0.10")], service=None),
         eps("web-other-ns", [ep("10.0.0.11")], namespace="bar"),
         eps("web-fqdn", [{"addresses": ["db.example.com"]}], address_type="FQDN")],
        [backend("10.0.0.1", 8080), backend("10.0.0.2", 8080), backend("fd00::1", 8080)]),
    "slices: an address in two slices counts once, ready wins": (
        [svc(), eps("web-a", [ep("10.0.0.1", ready=False)]), eps("web-b", [ep("10.0.0.1", "p")])],
        [backend("10.0.0.1", 8080, pod="foo/p")]),
    "slices: absent conditions are ready; terminating not-ready kept as not ready": (
        [svc(), eps("web-1", [{"addresses": ["10.0.0.1"]},
                              ep("10.0.0.2", ready=False, serving=True, terminating=True)])],
        [backend("10.0.0.1", 8080, node=None), backend("10.0.0.2", 8080, ready=False)]),
    "slices existing but empty: no backends, no fallback to the selector": (
        [svc(selector={"app": "web"}), pod("a", "10.0.0.1", app="web"), eps("web-1", None)],
        []),
}


@pytest.mark.parametrize("objects,want", CASES.values(), ids=CASES.keys())
def test_service_backends(objects, want):
    store = ClusterStore()
    store.replace_all(objects, [])
    snap = store.snapshot()
    assert not snap.errors, snap.errors
    service = snap.services["foo/web"]
    got = service_backends(snap, service)
    assert all(isinstance(b, Backend) for b in got)
    assert [(str(b.address), b.ports, b.pod, b.node_name, b.ready) for b in got] == want
    # The indexed form gives the same answer.
    assert service_backends(snap, service, slices_by_service(snap).get("foo/web", [])) == got
    assert backends_by_service(snap)["foo/web"] == got
