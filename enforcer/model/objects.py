"""The kinds the enforcer reads, one module each (namespace, pod, policy,
service, endpointslice, node, clusterpolicy: ClusterNetworkPolicy and the
v1alpha1 AdminNetworkPolicy/BaselineAdminNetworkPolicy converted to it;
what they share in meta), and parse_object, which
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
from .clusterpolicy import (
    ACCEPT,
    ADMIN,
    ANP_KIND,
    API_VERSION,
    API_VERSION_V1ALPHA1,
    BANP_KIND,
    BASELINE,
    CNP_KIND,
    DENY,
    PASS,
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
)
from .endpointslice import ADDRESS_TYPES, SERVICE_NAME_LABEL, EndpointSlice, SliceEndpoint, SlicePort
from .meta import PROTOCOLS, IPAddress, IPNetwork, check_api_version
from .namespace import Namespace
from .node import Node
from .pod import ContainerPort, Pod
from .policy import EGRESS, INGRESS, IPBlock, NetworkPolicy, Peer, PolicyPort, PolicyRule
from .service import Service, ServicePort

__all__ = [
    "ACCEPT", "ADDRESS_TYPES", "ADMIN", "BASELINE", "CLUSTER_SCOPED_KINDS", "DENY", "EGRESS", "INGRESS", "PASS",
    "PROTOCOLS", "SERVICE_NAME_LABEL", "ClusterNetworkPolicy", "ClusterPeer", "ClusterRule", "ContainerPort",
    "EndpointSlice", "IPAddress", "IPBlock", "IPNetwork", "Namespace", "NetworkPolicy", "Node", "Parsed", "Peer",
    "Pod", "PolicyPort", "PolicyRule", "Service", "ServicePort", "SliceEndpoint", "SlicePort", "parse_object",
]

# Kinds without a namespace (their objects are keyed by name).
CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "Node", CNP_KIND, ANP_KIND, BANP_KIND})

Parsed = Namespace | Pod | NetworkPolicy | Service | EndpointSlice | Node | ClusterNetworkPolicy


def parse_object(raw: Mapping[str, Any]) -> Parsed:
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
    if kind == "Node":
        check_api_version(raw, "Node", "v1")
        return Node.parse(raw)
    if kind == CNP_KIND:
        check_api_version(raw, CNP_KIND, API_VERSION)
        return ClusterNetworkPolicy.parse(raw)
    if kind == ANP_KIND:
        check_api_version(raw, ANP_KIND, API_VERSION_V1ALPHA1)
        return parse_admin_network_policy(raw)
    if kind == BANP_KIND:
        check_api_version(raw, BANP_KIND, API_VERSION_V1ALPHA1)
        return parse_baseline_admin_network_policy(raw)
    raise InvalidObjectError(str(kind or "<no kind>"), None, (raw.get("metadata") or {}).get("name", "<unnamed>"),
                             "unsupported kind")
