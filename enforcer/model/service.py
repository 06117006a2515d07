"""v1 Service: its addresses, ports and traffic policy (where kube-proxy
translates, compiler/services.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidObjectError
from .meta import PROTOCOLS, IPAddress, addresses_of, meta_of, resource_version_of
from .pod import Pod


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str | None
    protocol: str
    port: int
    target_port: int | str  # a number or a container port name
    node_port: int | None


@dataclass(frozen=True, slots=True)
class Service:
    """What the enforcer needs of a v1 Service: how traffic reaches its
    backends (type, ports, externalTrafficPolicy) and which pods back it."""

    namespace: str
    name: str
    type: str  # ClusterIP, NodePort, LoadBalancer, ExternalName
    selector: Mapping[str, str] | None  # None: no selector (manual endpoints)
    ports: tuple[ServicePort, ...]
    external_traffic_policy: str  # Cluster or Local
    cluster_ips: tuple[IPAddress, ...] = ()
    resource_version: str = ""
    # Addresses kube-proxy also answers the ports on, on every node:
    # spec.externalIPs, and status.loadBalancer.ingress IPs (those with
    # ipMode Proxy excepted: the load balancer proxies, nothing is DNATed).
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def external(self) -> bool:
        """Reachable from outside the cluster through every node."""
        return self.type in ("NodePort", "LoadBalancer")

    def selects(self, pod: Pod) -> bool:
        return (self.selector is not None and pod.namespace == self.namespace
                and all(pod.labels.get(k) == v for k, v in self.selector.items()))

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Service:
        ns, name = meta_of(raw, "Service", namespaced=True)
        assert ns is not None
        spec = raw.get("spec") or {}
        if not isinstance(spec, dict):
            raise InvalidObjectError("Service", ns, name, "spec must be an object")
        kind = spec.get("type") or "ClusterIP"
        selector = spec.get("selector")
        if selector is not None and not isinstance(selector, dict):
            raise InvalidObjectError("Service", ns, name, "spec.selector must be a map")
        ports = []
        for i, p in enumerate(spec.get("ports") or []):
            try:
                port = int(p["port"])
                target = p.get("targetPort", port)
                target = int(target) if isinstance(target, int) or str(target).isdigit() else str(target)
                proto = p.get("protocol") or "TCP"
                if proto not in PROTOCOLS:
                    raise ValueError(f"protocol {proto!r}")
                node_port = int(p["nodePort"]) if p.get("nodePort") else None
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidObjectError("Service", ns, name, f"spec.ports[{i}]: invalid ({e})") from e
            ports.append(ServicePort(p.get("name"), proto, port, target, node_port))
        ips: list[IPAddress] = []
        for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
            if ip and ip != "None":
                try:
                    ips.append(ipaddress.ip_address(ip))
                except ValueError as e:
                    raise InvalidObjectError("Service", ns, name, f"spec.clusterIPs: invalid address {ip!r}") from e
        etp = spec.get("externalTrafficPolicy") or "Cluster"
        status = raw.get("status") or {}
        lb = (status.get("loadBalancer") or {}) if isinstance(status, dict) else {}
        lb_ips = [e.get("ip") for e in (lb.get("ingress") or []) if isinstance(lb, dict)
                  and isinstance(e, dict) and e.get("ip") and e.get("ipMode") != "Proxy"]
        return cls(ns, name, kind, dict(selector) if selector is not None else None, tuple(ports),
                   "Local" if etp == "Local" else "Cluster", tuple(ips), resource_version_of(raw),
                   addresses_of(spec.get("externalIPs"), "Service", ns, name, "spec.externalIPs"),
                   addresses_of(lb_ips, "Service", ns, name, "status.loadBalancer.ingress"))
