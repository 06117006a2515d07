"""A small cluster compiled for node n1, and the verdict events the datapath
would report for a connection in it: the history's tests run on the real
compiler and the API's state view, without a kernel (the lab test,
tests/lab/test_suggest_lab.py, runs the real datapath)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from enforcer.api.view import StateView
from enforcer.compiler.compile import Compiler, NodeContext
from enforcer.compiler.evaluate import evaluate, identity_of
from enforcer.datapath.events import Verdict
from enforcer.datapath.reasons import Reason
from enforcer.model.meta import PROTOCOLS
from enforcer.model.state import ClusterStore
from tests.compiler.cluster import namespace, pod

NODE = "n1"
NODE_IP = "10.9.0.1"
EXTERNAL = "198.51.100.10"  # no pod, no ipBlock
NAMESPACES = {"x": {"team": "a"}, "y": {"team": "b"}, "z": {}, "kube-system": {}}
# pod key -> labels, IPv4, IPv6, node
PODS: dict[str, tuple[dict[str, str], str, str, str]] = {
    "x/web-1": ({"app": "web", "pod-template-hash": "5d8f"}, "10.0.1.1", "fd00::101", NODE),
    "x/web-2": ({"app": "web", "pod-template-hash": "77c2"}, "10.0.1.2", "fd00::102", NODE),  # the same workload
    "x/api": ({"app": "api"}, "10.0.1.3", "fd00::103", NODE),
    "x/api-canary": ({"app": "api", "track": "canary"}, "10.0.1.4", "fd00::104", NODE),  # a superset of x/api's
    "y/client": ({"app": "client"}, "10.0.2.1", "fd00::201", NODE),
    "y/other": ({"app": "other"}, "10.0.2.2", "fd00::202", NODE),
    "z/db": ({"app": "db"}, "10.0.3.1", "fd00::301", "n2"),  # on another node: only its peers' hooks are here
    "kube-system/coredns-1": ({"k8s-app": "kube-dns", "pod-template-hash": "9f"}, "10.0.9.1", "fd00::901", "n2"),
}
LOCAL = [k for k, v in PODS.items() if v[3] == NODE]


def objects(policies: Iterable[dict[str, Any]] = (), relabel: dict[str, dict[str, str]] | None = None,
            ) -> list[dict[str, Any]]:
    """The namespaces, the pods (relabel: pod key -> labels instead of
    PODS's) and policies."""
    objs = [namespace(n, labels) for n, labels in NAMESPACES.items()]
    objs += [pod(key, (relabel or {}).get(key, labels), [v4, v6], node, ports=[])
             for key, (labels, v4, v6, node) in PODS.items()]
    return objs + list(policies)


def view(policies: Iterable[dict[str, Any]] = (), relabel: dict[str, dict[str, str]] | None = None) -> StateView:
    store = ClusterStore()
    store.replace_all(objects(policies, relabel), [])
    snap = store.snapshot()
    node = NodeContext(NODE, (ipaddress.ip_address(NODE_IP),), {k: 100 + i for i, k in enumerate(LOCAL)})
    return StateView(snap, Compiler().compile(snap, node))


def address(who: str, family: int = 4) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A pod's address (namespace/name) or an address."""
    if who in PODS:
        return ipaddress.ip_address(PODS[who][1 if family == 4 else 2])
    return ipaddress.ip_address(who)


def verdicts(state: StateView, src: str, dst: str, protocol: str = "TCP", port: int = 80, family: int = 4,
             when_ns: int = 1_000_000_000) -> list[Verdict]:
    """The events of a new connection src -> dst:port, as each local hook on
    its way reports it (the sender's egress, then the receiver's ingress,
    none after a drop; the node's own traffic has none)."""
    s, d = address(src, family), address(dst, family)
    proto = PROTOCOLS[protocol] if protocol in PROTOCOLS else {"ICMP": 1}[protocol]
    out = []
    for hook in evaluate(state.desired, s, d, proto, port).hooks:
        if hook.code == Reason["ALLOW_HOST"]:
            continue
        egress = hook.direction == "egress"
        ep = state.desired.endpoints[s if egress else d]
        out.append(Verdict(timestamp_ns=when_ns, allowed=hook.allowed, reason=Reason(hook.code),
                           direction=hook.direction, endpoint_id=ep.endpoint_id, ifindex=ep.ifindex,
                           peer_identity=identity_of(state.desired, d if egress else s),
                           rule_id=0,
                           proto=proto, src=s, dst=d, sport=40000, dport=port if proto != 1 else 0, tcp_flags=2))
        if not hook.allowed:
            break
    return out
