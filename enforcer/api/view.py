"""A read-only view of one compiled state: the snapshot it came from and
what it compiled to, with the indexes the API needs (who owns an address,
what an identity is, which endpoint an id is)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property

from ..compiler.compile import CidrIdentity, DesiredState, EndpointSpec, PodIdentity
from ..compiler.diagnose import Diagnostic, diagnose
from ..datapath.layout import IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD
from ..model.objects import IPAddress, Pod
from ..model.state import ClusterSnapshot

PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58}


@dataclass(frozen=True)
class StateView:
    snapshot: ClusterSnapshot
    desired: DesiredState
    extra: dict = field(default_factory=dict, compare=False)  # type: ignore[type-arg]

    @cached_property
    def pod_by_ip(self) -> dict[IPAddress, Pod]:
        out: dict[IPAddress, Pod] = {}
        for pod in sorted(self.snapshot.pods.values(), key=lambda p: p.key):
            if pod.is_running and not pod.host_network:
                for ip in pod.ips:
                    out.setdefault(ip, pod)
        return out

    @cached_property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        """Problems of the snapshot's configuration (compiler.diagnose)."""
        return diagnose(self.snapshot)

    @cached_property
    def endpoint_by_id(self) -> dict[int, EndpointSpec]:
        return self.desired.endpoint_by_id()

    @cached_property
    def endpoints_by_pod(self) -> dict[str, list[tuple[IPAddress, EndpointSpec]]]:
        out: dict[str, list[tuple[IPAddress, EndpointSpec]]] = {}
        for ip, ep in sorted(self.desired.endpoints.items(), key=lambda kv: (kv[0].version, kv[0])):
            out.setdefault(ep.pod, []).append((ip, ep))
        return out

    def describe_identity(self, ident: int) -> str:
        if ident == IDENTITY_HOST:
            return "host (this node)"
        if ident == IDENTITY_WORLD:
            return "world (no pod, no ipBlock)"
        if ident == IDENTITY_ANY:
            return "any peer"
        key = self.desired.identities.get(ident)
        if isinstance(key, PodIdentity):
            labels = ",".join(f"{k}={v}" for k, v in sorted(key.labels))
            block = f" in {key.block_class}" if key.block_class else ""
            return f"pods of {key.namespace} with {{{labels}}} (IPv{key.family}{block})"
        if isinstance(key, CidrIdentity):
            return f"ipBlock prefix {key.prefix}"
        return f"identity {ident}"

    def resolve(self, who: str) -> IPAddress:
        """An IP, or namespace/pod (its first address)."""
        try:
            return ipaddress.ip_address(who)
        except ValueError:
            pass
        pod = self.snapshot.pods.get(who)
        if pod is None or not pod.ips:
            raise LookupError(f"{who!r} is neither an IP address nor a running pod (namespace/name)")
        return pod.ips[0]
