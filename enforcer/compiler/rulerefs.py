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

    def describe(self) -> str:
        """e.g. `Admin deny-x (priority 10) ingress rule 0 "block"`, or
        `NetworkPolicy ns/name ingress rule 1`: how explain's trace, flows
        and the CLI name a rule."""
        if self.tier in ("Admin", "Baseline"):
            # (A converted v1alpha1 policy's key already names its kind.)
            name = f' "{self.name}"' if self.name else ""
            return (f"{self.tier} {self.policy} (priority {self.priority}) "
                    f"{self.direction.lower()} rule {self.index}{name}")
        return f"NetworkPolicy {self.policy} {self.direction.lower()} rule {self.index}"
