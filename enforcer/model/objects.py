"""The kinds the enforcer reads, one module each (namespace, pod, policy,
service, endpointslice; what they share in meta), and parse_object, which
files a raw API dict under its kind. The names callers use are re-exported
here.

Invalid input never widens what is allowed (policy.py says how for
NetworkPolicy); an object without a readable namespace/name is reported and
ignored. Every problem is reported as an InvalidObjectError naming the
object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidObjectError
from .endpointslice import ADDRESS_TYPES, SERVICE_NAME_LABEL, EndpointSlice, SliceEndpoint, SlicePort
from .meta import PROTOCOLS, IPAddress, IPNetwork, check_api_version
from .namespace import Namespace
from .pod import ContainerPort, Pod
from .policy import EGRESS, INGRESS, IPBlock, NetworkPolicy, Peer, PolicyPort, PolicyRule
from .service import Service, ServicePort

__all__ = [
    "ADDRESS_TYPES", "EGRESS", "INGRESS", "PROTOCOLS", "SERVICE_NAME_LABEL", "ContainerPort", "EndpointSlice",
    "IPAddress", "IPBlock", "IPNetwork", "Namespace", "NetworkPolicy", "Peer", "Pod", "PolicyPort", "PolicyRule",
    "Service", "ServicePort", "SliceEndpoint", "SlicePort", "parse_object",
]


def parse_object(raw: Mapping[str, Any]) -> Namespace | Pod | NetworkPolicy | Service | EndpointSlice:
    kind = raw.get("kind")
    if kind == "Service":
        return Service.parse(raw)
    if kind == "EndpointSlice":
        check_api_version(raw, "EndpointSlice", "discovery.k8s.io/v1")
        return EndpointSlice.parse(raw)
    if kind == "Namespace":
        return Namespace.parse(raw)
    if kind == "Pod":
        return Pod.parse(raw)
    if kind == "NetworkPolicy":
        check_api_version(raw, "NetworkPolicy", "networking.k8s.io/v1")
        return NetworkPolicy.parse(raw)
    raise InvalidObjectError(str(kind or "<no kind>"), None, (raw.get("metadata") or {}).get("name", "<unnamed>"),
                             "unsupported kind")
