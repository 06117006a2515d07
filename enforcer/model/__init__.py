"""Typed model of the Kubernetes objects the enforcer reads, parsed from the
dicts the Kubernetes API returns (both sources share it)."""

from .objects import (
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    ContainerPort,
    IPBlock,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    parse_object,
)
from .selectors import LabelSelector, Requirement

__all__ = [
    "ClusterNetworkPolicy", "ClusterPeer", "ClusterRule", "ContainerPort", "IPBlock", "LabelSelector", "Namespace",
    "NetworkPolicy", "Node", "Peer", "Pod",
    "PolicyPort", "PolicyRule", "Requirement", "parse_object",
]
