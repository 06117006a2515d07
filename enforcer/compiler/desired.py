"""What the compiler produces: the datapath state one node needs
(DesiredState: ipcache, endpoints, policy entries, Service frontends) and
what it was made of, for the API and explain (identities, rules), and the
node context it is given."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..datapath.sync import MapContents
from ..errors import InvalidObjectError
from ..model.objects import IPAddress, IPNetwork
from ..records import EndpointIdRecord, EndpointRecord, Frontend, PolicyMapKey, PolicyValue
from .rulerefs import RuleRef

if TYPE_CHECKING:
    from .tiers import TierProgram


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Per address family: a dual-stack pod has one identity per family, so
    an IPv4 ipBlock holding its IPv4 address says nothing of its IPv6 one."""

    namespace: str
    labels: frozenset[tuple[str, str]]
    family: int
    block_class: IPNetwork | None  # innermost ipBlock prefix holding the IP
    named_ports: frozenset[tuple[str, str, int]]  # (name, protocol, port)

    def named_port(self, name: str, protocol: str) -> int | None:
        for n, p, num in self.named_ports:
            if n == name and p == protocol:
                return num
        return None


@dataclass(frozen=True, slots=True)
class CidrIdentity:
    prefix: IPNetwork


IdentityKey = PodIdentity | CidrIdentity



@dataclass(frozen=True, slots=True)
class EndpointSpec:
    pod: str  # namespace/name
    endpoint_id: int
    ifindex: int
    identity: int
    flags: int


@dataclass
class DesiredState:
    ipcache: dict[IPNetwork, int] = field(default_factory=dict)
    endpoints: dict[IPAddress, EndpointSpec] = field(default_factory=dict)
    policy: dict[PolicyMapKey, PolicyValue] = field(default_factory=dict)
    services: dict[Frontend, str] = field(default_factory=dict)  # -> Service "ns/name"
    # Read-side context (API, explain): not written to maps.
    rules: dict[int, RuleRef] = field(default_factory=dict)
    identities: dict[int, IdentityKey] = field(default_factory=dict)
    selected_by: dict[str, list[str]] = field(default_factory=dict)  # pod -> policies
    # pod -> cluster policies selecting it, in evaluation order (Admin, then
    # Baseline; by priority, then name)
    cluster_selected_by: dict[str, list[str]] = field(default_factory=dict)
    # (endpoint id, direction) -> what the tiers judge it by (tiers.py), for
    # explain; only endpoints a cluster policy governs in that direction.
    tier_programs: dict[tuple[int, int], TierProgram] = field(default_factory=dict)
    # Same-priority cluster policies of one tier selecting one local pod:
    # ordered by name, reported (the API leaves the order undefined).
    notices: list[str] = field(default_factory=list)
    entries_by_policy: dict[str, int] = field(default_factory=dict)
    # Policies selecting local pods that are in audit mode (judged, not
    # enforced): NetworkPolicies as namespace/name, cluster policies by key.
    audited: set[str] = field(default_factory=set)
    audit_all: bool = False  # every policy in audit mode (--audit-all)
    errors: list[InvalidObjectError] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # local pods without an interface yet
    # Policies whose latest version waits while its prefixes are staged
    # (admission.py): another pass is due at once.
    pending: list[str] = field(default_factory=list)
    # Interfaces of local pods that got no endpoint id: the programs go on
    # them all the same and, finding no endpoint, drop (fail-closed).
    blocked_interfaces: set[int] = field(default_factory=set)
    # What changed since the compiler's previous result (see MapContents).
    _token: object = field(default_factory=object, repr=False, compare=False)
    _base: object = field(default=None, repr=False, compare=False)
    _changed: Mapping[str, AbstractSet[object]] | None = field(default=None, repr=False, compare=False)

    def map_contents(self) -> MapContents:
        return MapContents(
            ipcache=dict(self.ipcache),
            endpoints={ip: EndpointRecord(e.endpoint_id, e.ifindex, e.identity, e.flags)
                       for ip, e in self.endpoints.items()},
            policy=dict(self.policy),
            endpoint_ids={e.endpoint_id: EndpointIdRecord(e.ifindex, e.identity, e.flags)
                          for e in self.endpoints.values()},
            services=set(self.services),
            token=self._token, base=self._base, changed=self._changed,
        )

    def endpoint_by_id(self) -> dict[int, EndpointSpec]:
        return {e.endpoint_id: e for e in self.endpoints.values()}

    def describe(self, kind: str, key: object) -> str:
        """Which object a map entry is for, for error messages."""
        if kind == "policy" and isinstance(key, tuple):
            value = self.policy.get(PolicyMapKey(*key))
            ref = self.rules.get(value.rule_id) if value is not None else None
            if ref is None:
                return f"policy entry {key}"
            if ref.tier != "NetworkPolicy":
                return f"{ref.kind} {ref.policy} ({ref.direction.lower()} rule {ref.index})"
            return f"NetworkPolicy {ref.policy} ({ref.direction.lower()} rule {ref.index})"
        if kind == "endpoint" and isinstance(key, IPAddress) and key in self.endpoints:
            return f"Pod {self.endpoints[key].pod} (address {key})"
        if kind == "service" and isinstance(key, tuple) and (fe := Frontend(*key)) in self.services:
            return f"Service {self.services[fe]} (frontend {fe.address} {fe.protocol}/{fe.port})"
        if kind == "ipcache" and isinstance(key, IPNetwork):
            ident = self.ipcache.get(key)
            what = self.identities.get(ident) if ident is not None else None
            return f"ipcache {key} ({what})" if what else f"ipcache {key}"
        return f"{kind} {key}"


@dataclass
class NodeContext:
    """What the compiler needs to know about the node, gathered by the
    daemon (the compiler does no I/O)."""

    name: str
    addresses: tuple[IPAddress, ...] = ()
    interfaces: Mapping[str, int] = field(default_factory=dict)  # pod key -> host-side ifindex
