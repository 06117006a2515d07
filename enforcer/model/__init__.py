"""Typed model of the Kubernetes objects the enforcer reads, parsed from the
dicts the Kubernetes API returns (both sources share it)."""

from .objects import (
    ContainerPort,
    IPBlock,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    parse_object,
)
from .selectors import LabelSelector, Requirement

__all__ = [
    "ContainerPort", "IPBlock", "LabelSelector", "Namespace", "NetworkPolicy", "Peer", "Pod",
    "PolicyPort", "PolicyRule", "Requirement", "parse_object",
]
