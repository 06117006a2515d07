"""The base objects of upstream's conformance/base/manifests.yaml as the API
would return them once running, for a manifest directory: the Namespaces as
written (plus kubernetes.io/metadata.name, which the API server adds), and
the Pods the StatefulSet controller makes from each template (2 replicas:
<sts>-0, <sts>-1, template labels plus statefulset.kubernetes.io/pod-name
and apps.kubernetes.io/pod-index; containers and their named ports as in
the template, so destinationNamedPort resolves). centaur is hostNetwork: its
status.podIP is the node's address. Plus the Node object the NodePeers
tests select (kubernetes.io/os: linux, as kind's nodes carry).

Pods are named "<house>/<pod>" here ("gryffindor/harry-potter-0"); each
lab pod is named by lab_name() ("hp0"): a netns and veth name must be short.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from . import cases as C

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
HOUSE_LABEL = "conformance-house"
REPLICAS = 2  # helper.go numStatufulSetReplicas


@functools.cache
def _base() -> tuple[dict[str, Any], ...]:
    return tuple(C.manifest_objects("base/manifests.yaml"))


def base_objects() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_base()))


def _statefulsets() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["namespace"].removeprefix(C.NS_PREFIX): o
            for o in base_objects() if o["kind"] == "StatefulSet"}


_STS = _statefulsets()
HOUSES: tuple[str, ...] = tuple(o["metadata"]["labels"][HOUSE_LABEL] for o in base_objects()
                                if o["kind"] == "Namespace")
STATEFULSET = {house: sts["metadata"]["name"] for house, sts in _STS.items()}
ALL_PODS: tuple[str, ...] = tuple(f"{h}/{STATEFULSET[h]}-{i}" for h in HOUSES for i in range(REPLICAS))
HOST_NETWORK_PODS: tuple[str, ...] = tuple(p for p in ALL_PODS
                                           if _STS[p.split("/")[0]]["spec"]["template"]["spec"].get("hostNetwork"))
POD_NETWORK_PODS: tuple[str, ...] = tuple(p for p in ALL_PODS if p not in HOST_NETWORK_PODS)
#: What each pod-network pod serves (the template's agnhost commands):
#: TCP 80, 8080; UDP 53, 5353; SCTP 9003, 9005.
POD_PORTS = {"TCP": (80, 8080), "UDP": (53, 5353), "SCTP": (9003, 9005)}
#: What centaur serves on the node (HostNetworkPorts 0-7): TCP HP0, HP1;
#: UDP HP2, HP4 (netexec, with HTTP on HP3, HP5); SCTP HP6, HP7.
HOST_PORTS = {"TCP": C.HOST_NETWORK_PORTS[0:2] + (C.HOST_NETWORK_PORTS[3], C.HOST_NETWORK_PORTS[5]),
              "UDP": (C.HOST_NETWORK_PORTS[2], C.HOST_NETWORK_PORTS[4]),
              "SCTP": (C.HOST_NETWORK_PORTS[6], C.HOST_NETWORK_PORTS[7])}


def namespace(house: str) -> str:
    return C.NS_PREFIX + house


def split(pod: str) -> tuple[str, str]:
    house, name = pod.split("/")
    return house, name


def lab_name(pod: str) -> str:
    """"gryffindor/harry-potter-0" -> "hp0"."""
    _, name = split(pod)
    *words, index = name.split("-")
    return "".join(w[0] for w in words) + index


def is_host_network(pod: str) -> bool:
    return pod in HOST_NETWORK_PODS


def namespace_labels(house: str) -> dict[str, str]:
    """The labels base/manifests.yaml gives the namespace."""
    for o in _base():
        if o["kind"] == "Namespace" and o["metadata"]["name"] == namespace(house):
            return dict(o["metadata"].get("labels", {}))
    raise KeyError(house)


def render_namespace(house: str, labels: dict[str, str]) -> dict[str, Any]:
    final = dict(labels)
    final[NAMESPACE_NAME_LABEL] = namespace(house)
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace(house), "labels": final},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def pod_labels(pod: str) -> dict[str, str]:
    house, name = split(pod)
    labels = dict(_STS[house]["spec"]["template"]["metadata"]["labels"])
    labels["statefulset.kubernetes.io/pod-name"] = name
    labels["apps.kubernetes.io/pod-index"] = name.rsplit("-", 1)[1]
    return labels


def render_pod(pod: str, node_name: str, ips: list[str], host_ips: list[str]) -> dict[str, Any]:
    """ips: the pod's addresses, primary family first (for a hostNetwork
    pod: the node's, as the API reports it)."""
    house, name = split(pod)
    template = copy.deepcopy(_STS[house]["spec"]["template"])
    spec = template["spec"]
    spec["nodeName"] = node_name
    spec.setdefault("restartPolicy", "Always")
    for c in spec["containers"]:
        for p in c.get("ports", []):
            p.setdefault("protocol", "TCP")
            if spec.get("hostNetwork"):
                p.setdefault("hostPort", p["containerPort"])
    status: dict[str, Any] = {"phase": "Running", "hostIP": host_ips[0], "hostIPs": [{"ip": i} for i in host_ips],
                              "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace(house), "labels": pod_labels(pod),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                              "name": STATEFULSET[house], "uid": f"sts-{house}",
                                              "controller": True}]},
            "spec": spec, "status": status}


def render_node(name: str, internal_ips: list[str]) -> dict[str, Any]:
    """A Node as kind's look: the labels the NodePeers tests select
    (kubernetes.io/os: linux) and InternalIP addresses."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                                                  "kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": a} for a in internal_ips]
                       + [{"type": "Hostname", "address": name}]}}
