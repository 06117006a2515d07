"""v1 Node: its name, labels and addresses (ClusterNetworkPolicy `nodes`
peers match the InternalIP and ExternalIP addresses of status.addresses,
as kube-network-policies does)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidObjectError
from .meta import IPAddress, labels_of, meta_of, resource_version_of

NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: Mapping[str, str]
    addresses: tuple[IPAddress, ...]  # InternalIP and ExternalIP, deduplicated, sorted (IPv4 first)
    resource_version: str = ""

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Node:
        _, name = meta_of(raw, "Node", namespaced=False)
        labels = labels_of(raw, "Node", None, name)
        status = raw.get("status") or {}
        if not isinstance(status, dict):
            raise InvalidObjectError("Node", None, name, "status must be an object")
        entries = status.get("addresses") or []
        if not isinstance(entries, list):
            raise InvalidObjectError("Node", None, name, "status.addresses: must be a list")
        addresses: set[IPAddress] = set()
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or e.get("type") not in NODE_ADDRESS_TYPES:
                continue  # Hostname, InternalDNS, ExternalDNS: not addresses policy can match
            ip = e.get("address")
            try:
                if not isinstance(ip, str):
                    raise TypeError(ip)  # ip_address would take an integer
                addresses.add(ipaddress.ip_address(ip))
            except (ValueError, TypeError) as err:
                raise InvalidObjectError("Node", None, name,
                                         f"status.addresses[{i}] ({e.get('type')}): invalid address {ip!r}") from err
        return cls(name, labels, tuple(sorted(addresses, key=lambda a: (a.version, a))),
                   resource_version_of(raw))
