"""A read-only view of one compiled state: the snapshot it came from and
what it compiled to, with the indexes the API needs (who owns an address,
what an identity is, which endpoint an id is)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from ..compiler.desired import CidrIdentity, DesiredState, EndpointSpec, PodIdentity
from ..compiler.diagnose import Diagnostic, diagnose
from ..datapath.layout import IDENTITY_ANY, IDENTITY_HOST, IDENTITY_SERVICE_UNWRITTEN, IDENTITY_WORLD
from ..model.objects import IPAddress, Pod
from ..model.state import ClusterSnapshot

# An API answer is bounded whatever the state holds (a million invalid
# objects, a full map): each repeated field keeps its first LIST_MAX items
# and says how many it left out, each string keeps STRING_MAX characters.
# A StatusResponse is then at most about 1.3 MB, well under gRPC's 4 MB.
LIST_MAX = 100
STRING_MAX = 1024

T = TypeVar("T")


def clip(text: str, limit: int = STRING_MAX) -> str:
    """text, cut to limit characters (the last one an ellipsis) when longer."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def capped(items: Sequence[T], limit: int = LIST_MAX) -> tuple[Sequence[T], int]:
    """The first limit items and how many were left out."""
    return items[:limit], max(0, len(items) - limit)


PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58}


@dataclass(frozen=True)
class StateView:
    snapshot: ClusterSnapshot
    desired: DesiredState

    @cached_property
    def pod_by_ip(self) -> dict[IPAddress, Pod]:
        out: dict[IPAddress, Pod] = {}
        for pod in sorted(self.snapshot.pods.values(), key=lambda p: p.key):
            if pod.is_running and not pod.host_network:
                for ip in pod.ips:
                    out.setdefault(ip, pod)
        return out

    def following(self, snapshot: ClusterSnapshot, desired: DesiredState) -> StateView:
        """The view of the next state, keeping what this one computed from
        a table the new snapshot shares (the store hands out an unchanged
        table as the same mapping): a policy change does not index 10k
        pods again for the first flow after the pass."""
        view = StateView(snapshot, desired)
        if snapshot.pods is self.snapshot.pods and "pod_by_ip" in self.__dict__:
            view.__dict__["pod_by_ip"] = self.__dict__["pod_by_ip"]  # cached_property's own slot
        return view

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
        if ident == IDENTITY_SERVICE_UNWRITTEN:
            return "a Service address the services map could not hold (only rules allowing every peer allow it)"
        if ident == IDENTITY_ANY:
            return "any peer"
        key = self.desired.identities.get(ident)
        if isinstance(key, PodIdentity):
            labels = ",".join(f"{k}={v}" for k, v in sorted(key.labels))
            block = f" in {key.block_class}" if key.block_class else ""
            return clip(f"pods of {key.namespace} with {{{labels}}} (IPv{key.family}{block})")
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
