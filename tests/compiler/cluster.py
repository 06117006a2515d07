"""A small cluster for compiler tests, as API dicts."""

from __future__ import annotations

import ipaddress
from typing import Any

from enforcer.compiler.compile import Compiler, DesiredState, NodeContext
from enforcer.compiler.evaluate import evaluate
from enforcer.model.state import ClusterStore

NODE = "n1"
NAMESPACES = {"x": {"team": "a"}, "y": {"team": "b"}, "z": {}}
# pod key -> (labels, ipv4, ipv6, node)
PODS = {
    "x/a": ({"pod": "a", "app": "web"}, "10.0.1.1", "fd00::101", NODE),
    "x/b": ({"pod": "b"}, "10.0.1.2", "fd00::102", NODE),
    "y/a": ({"pod": "a", "app": "web"}, "10.0.2.1", "fd00::201", NODE),
    "y/b": ({"pod": "b", "tier": "db"}, "10.0.2.2", "fd00::202", "n2"),
    "z/c": ({"pod": "c"}, "10.0.3.3", "fd00::303", NODE),
}
PORTS = [("serve-80-tcp", 80, "TCP"), ("serve-81-tcp", 81, "TCP"), ("serve-80-udp", 80, "UDP"),
         ("dns", 53, "UDP")]


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(key: str, labels: dict[str, str], ips: list[str], node: str,
        ports: list[tuple[str, int, str]] = PORTS) -> dict[str, Any]:
    ns, name = key.split("/")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]},
    }


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def base_objects() -> list[dict[str, Any]]:
    objs = [namespace(name, labels) for name, labels in NAMESPACES.items()]
    objs += [pod(k, labels, [v4, v6], node) for k, (labels, v4, v6, node) in PODS.items()]
    return objs


def compile_objects(objects: list[dict[str, Any]], interfaces: dict[str, int] | None = None,
                    compiler: Compiler | None = None) -> DesiredState:
    store = ClusterStore()
    store.replace_all(objects, [])
    local = [k for k, v in PODS.items() if v[3] == NODE]
    node = NodeContext(NODE, (ipaddress.ip_address("10.9.0.1"),),
                       interfaces if interfaces is not None else {k: 100 + i for i, k in enumerate(local)})
    return (compiler or Compiler()).compile(store.snapshot(), node)


def ip_of(who: str, family: int = 4) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if who in PODS:
        return ipaddress.ip_address(PODS[who][1 if family == 4 else 2])
    return ipaddress.ip_address(who)


def allowed(state: DesiredState, src: str, dst: str, proto: str = "TCP", port: int = 80, family: int = 4) -> bool:
    num = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}[proto]
    return evaluate(state, ip_of(src, family), ip_of(dst, family), num, port).allowed
