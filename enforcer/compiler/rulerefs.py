"""RuleRef: which rule of which policy a compiled entry came from (a
NetworkPolicy rule, or a cluster policy rule with its tier)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleRef:
    policy: str  # namespace/name; a cluster policy's key (its name)
    direction: str  # Ingress / Egress
    index: int
    # A cluster policy rule: its tier (Admin, Baseline), kind, priority,
    # action and name; a NetworkPolicy rule keeps the defaults.
    tier: str = "NetworkPolicy"
    kind: str = "NetworkPolicy"
    priority: int = 0
    action: str = "Accept"
    name: str = ""
