"""v1 Pod: what policy needs of it (labels, addresses, node, named
container ports, phase, host network)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidObjectError
from .meta import PROTOCOLS, IPAddress, labels_of, meta_of, resource_version_of
from .selectors import Interner


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    node_name: str | None
    host_network: bool
    ips: tuple[IPAddress, ...]
    ports: tuple[ContainerPort, ...]
    phase: str
    resource_version: str = ""
    host_ips: tuple[IPAddress, ...] = ()  # status.hostIPs: its node's addresses

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_running(self) -> bool:
        """Has addresses that belong to it: scheduled, IP assigned, not
        finished (a finished pod's IP may already be someone else's)."""
        return bool(self.ips) and self.phase not in ("Succeeded", "Failed")

    def named_port(self, name: str, protocol: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Pod:
        ns, name = meta_of(raw, "Pod", namespaced=True)
        assert ns is not None
        labels = labels_of(raw, "Pod", ns, name)
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        if not isinstance(spec, dict) or not isinstance(status, dict):
            raise InvalidObjectError("Pod", ns, name, "spec and status must be objects")
        ips: list[IPAddress] = []
        raw_ips = [e.get("ip") for e in status.get("podIPs") or [] if isinstance(e, dict)]
        if not raw_ips and status.get("podIP"):
            raw_ips = [status["podIP"]]
        for ip in raw_ips:
            try:
                addr = ipaddress.ip_address(ip)  # type: ignore[arg-type]  # not a string: TypeError, reported
            except (ValueError, TypeError) as e:
                raise InvalidObjectError("Pod", ns, name, f"status.podIPs: invalid address {ip!r}") from e
            if addr not in ips:
                ips.append(addr)
        raw_host_ips = [e.get("ip") for e in status.get("hostIPs") or [] if isinstance(e, dict)]
        if not raw_host_ips and status.get("hostIP"):
            raw_host_ips = [status["hostIP"]]
        host_ips: list[IPAddress] = []
        for ip in raw_host_ips:
            try:
                host_ips.append(ipaddress.ip_address(ip))  # type: ignore[arg-type]  # as above
            except (ValueError, TypeError) as e:
                raise InvalidObjectError("Pod", ns, name, f"status.hostIPs: invalid address {ip!r}") from e
        ports: list[ContainerPort] = []
        containers = list(spec.get("containers") or [])
        # Sidecars (restartable init containers) serve ports like containers.
        containers += [c for c in spec.get("initContainers") or []
                       if isinstance(c, dict) and c.get("restartPolicy") == "Always"]
        for c in containers:
            for p in (c.get("ports") or []) if isinstance(c, dict) else []:
                try:
                    num = int(p["containerPort"])
                except (KeyError, TypeError, ValueError) as e:
                    raise InvalidObjectError("Pod", ns, name, f"container port {p!r} has no valid containerPort") from e
                proto = p.get("protocol") or "TCP"
                if proto not in PROTOCOLS or not 1 <= num <= 65535:
                    raise InvalidObjectError("Pod", ns, name, f"invalid container port {num}/{proto}")
                ports.append(_container_ports(ContainerPort(p.get("name"), num, proto)))
        return cls(
            namespace=ns, name=name, uid=str((raw.get("metadata") or {}).get("uid") or f"{ns}/{name}"),
            labels=labels, node_name=spec.get("nodeName"), host_network=bool(spec.get("hostNetwork")),
            ips=tuple(ips), ports=tuple(ports), phase=str(status.get("phase") or "Running"),
            resource_version=resource_version_of(raw), host_ips=tuple(host_ips),
        )


# Values repeated across pods, held once (see Interner).
_container_ports: Interner[ContainerPort] = Interner(lambda p: (p.name, p.port, p.protocol))
