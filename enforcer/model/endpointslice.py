"""discovery.k8s.io/v1 EndpointSlice: a Service's backends as kube-proxy
sees them."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidObjectError
from .meta import PROTOCOLS, IPAddress, labels_of, meta_of, resource_version_of

ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice. Conditions as the API defines
    their absence (and kube-proxy reads them): ready and serving absent
    mean true, terminating absent means false."""

    addresses: tuple[IPAddress, ...]  # () in an FQDN slice
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    target_pod: str | None = None  # "ns/name" when targetRef is a Pod


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str | None
    port: int | None  # None: every port (the slice does not restrict them)
    protocol: str


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice: some of a Service's backends
    (the Service it belongs to is named by its kubernetes.io/service-name
    label; a slice without it belongs to none)."""

    namespace: str
    name: str
    service_name: str | None
    address_type: str  # IPv4, IPv6 or FQDN
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]
    resource_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str | None:
        return f"{self.namespace}/{self.service_name}" if self.service_name else None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> EndpointSlice:
        ns, name = meta_of(raw, "EndpointSlice", namespaced=True)
        assert ns is not None
        labels = labels_of(raw, "EndpointSlice", ns, name)

        def invalid(reason: str) -> InvalidObjectError:
            return InvalidObjectError("EndpointSlice", ns, name, reason)

        address_type = raw.get("addressType")
        if address_type not in ADDRESS_TYPES:
            raise invalid(f"addressType: must be one of {', '.join(ADDRESS_TYPES)}, got {address_type!r}")
        # The API sends null for a slice without endpoints (or ports).
        raw_endpoints = [] if raw.get("endpoints") is None else raw["endpoints"]
        raw_ports = [] if raw.get("ports") is None else raw["ports"]
        if not isinstance(raw_endpoints, list) or not isinstance(raw_ports, list):
            raise invalid("endpoints and ports must be lists")
        endpoints = tuple(_parse_slice_endpoint(e, f"endpoints[{i}]", address_type, ns, invalid)
                          for i, e in enumerate(raw_endpoints))
        ports = tuple(_parse_slice_port(p, f"ports[{i}]", invalid) for i, p in enumerate(raw_ports))
        return cls(ns, name, labels.get(SERVICE_NAME_LABEL) or None, address_type, endpoints, ports,
                   resource_version_of(raw))


def _parse_slice_endpoint(raw: Any, at: str, address_type: str, namespace: str,
                          invalid: Callable[[str], InvalidObjectError]) -> SliceEndpoint:
    if not isinstance(raw, dict):
        raise invalid(f"{at}: must be an object")
    raw_addresses = raw.get("addresses")
    if not isinstance(raw_addresses, list):
        raise invalid(f"{at}.addresses: must be a list")
    addresses: list[IPAddress] = []
    if address_type != "FQDN":
        version = 4 if address_type == "IPv4" else 6
        for a in raw_addresses:
            try:
                addr = ipaddress.ip_address(a)
            except (ValueError, TypeError) as e:
                raise invalid(f"{at}.addresses: invalid address {a!r}") from e
            if addr.version != version:
                raise invalid(f"{at}.addresses: {a} is not an {address_type} address")
            if addr not in addresses:
                addresses.append(addr)
    conditions = raw.get("conditions")
    conditions = {} if conditions is None else conditions
    if not isinstance(conditions, dict):
        raise invalid(f"{at}.conditions: must be an object")
    flags: dict[str, bool] = {}
    for cond in ("ready", "serving", "terminating"):
        value = conditions.get(cond)
        if value is not None and not isinstance(value, bool):
            raise invalid(f"{at}.conditions.{cond}: must be true or false, got {value!r}")
        flags[cond] = value if value is not None else cond != "terminating"
    node_name = raw.get("nodeName")
    if node_name is not None and not isinstance(node_name, str):
        raise invalid(f"{at}.nodeName: must be a string")
    ref = raw.get("targetRef")
    if ref is not None and not isinstance(ref, dict):
        raise invalid(f"{at}.targetRef: must be an object")
    target_pod = None
    if ref and ref.get("kind") == "Pod" and isinstance(ref.get("name"), str) and ref["name"]:
        target_pod = f"{ref.get('namespace') or namespace}/{ref['name']}"
    return SliceEndpoint(tuple(addresses), flags["ready"], flags["serving"], flags["terminating"],
                         node_name or None, target_pod)


def _parse_slice_port(raw: Any, at: str, invalid: Callable[[str], InvalidObjectError]) -> SlicePort:
    if not isinstance(raw, dict):
        raise invalid(f"{at}: must be an object")
    port = raw.get("port")
    # The API server does not range-check it; kube-proxy ignores 0. Outside
    # 1-65535 no packet can carry it: the slice is reported, not guessed at.
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
        raise invalid(f"{at}.port: {port!r} is not a port number (1-65535)")
    proto = raw.get("protocol") or "TCP"
    if proto not in PROTOCOLS:
        raise invalid(f"{at}.protocol: unsupported {proto!r}")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid(f"{at}.name: must be a string")
    return SlicePort(name or None, port, proto)
