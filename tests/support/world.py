"""Map contents for a lab, written straight into the pinned maps: what the
daemon will later derive from Kubernetes objects.

Each pod gets an endpoint id (1, 2, ...) and an identity (256, 257, ...
unless given); the node's own addresses get IDENTITY_HOST.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from enforcer.datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_FIRST_ALLOCATED,
    IDENTITY_HOST,
)
from enforcer.datapath.maps import DatapathMaps, PolicyRule
from enforcer.datapath.reasons import Reason
from enforcer.lab.topology import NODE_IPV4, NODE_IPV6, Lab

DIRECTIONS = {"ingress": DIR_INGRESS, "egress": DIR_EGRESS}
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132,
             "icmp": socket.IPPROTO_ICMP, "icmpv6": socket.IPPROTO_ICMPV6}
_STATE_MAPS = ("ipcache", "ipcache_hosts", "endpoints", "policy", "conntrack", "fragments")


@dataclass(frozen=True)
class PodEntry:
    endpoint_id: int
    identity: int


class LabWorld:
    def __init__(self, lab: Lab, maps: DatapathMaps,
                 identities: Mapping[str, int] | None = None) -> None:
        self.lab = lab
        self.maps = maps
        identities = dict(identities or {})
        self.entries = {
            name: PodEntry(endpoint_id=i + 1,
                           identity=identities.get(name, IDENTITY_FIRST_ALLOCATED + i))
            for i, name in enumerate(lab.pods)
        }
        self._rule_ids = iter(range(1000, 1 << 31))

    # -- identities and endpoints ------------------------------------------
    def endpoint_id(self, pod: str) -> int:
        return self.entries[pod].endpoint_id

    def identity(self, peer: str | int) -> int:
        """A pod's identity; an int passes through (CIDR/reserved identities)."""
        if isinstance(peer, int):
            return peer
        if peer == "any":
            return IDENTITY_ANY
        return self.entries[peer].identity

    def register_node(self) -> None:
        self.maps.set_identity(f"{NODE_IPV4}/32", IDENTITY_HOST)
        self.maps.set_identity(f"{NODE_IPV6}/128", IDENTITY_HOST)

    def register_pod(self, name: str, ingress_isolated: bool = False,
                     egress_isolated: bool = False, ipcache: bool = True) -> None:
        pod, entry = self.lab.pod(name), self.entries[name]
        flags = ((EP_F_INGRESS_ISOLATED if ingress_isolated else 0)
                 | (EP_F_EGRESS_ISOLATED if egress_isolated else 0))
        for ip in (pod.ipv4, pod.ipv6):
            self.maps.set_endpoint(ip, entry.endpoint_id, pod.host_ifindex, entry.identity, flags)
            if ipcache:
                self.maps.set_identity(f"{ip}/{ip.max_prefixlen}", entry.identity)

    def isolate(self, name: str, ingress: bool = False, egress: bool = False) -> None:
        """Set a pod's isolation (what "some policy selects it" means)."""
        self.register_pod(name, ingress_isolated=ingress, egress_isolated=egress, ipcache=False)

    def forget_pod_identity(self, name: str) -> None:
        """Drop a pod's /32 and /128 from the ipcache: its addresses then
        resolve through whatever CIDR holds them."""
        pod = self.lab.pod(name)
        self.maps.delete_identity(f"{pod.ipv4}/32")
        self.maps.delete_identity(f"{pod.ipv6}/128")

    def reset(self) -> None:
        """Empty state maps, then node and every pod registered, nothing
        isolated, no policy, no conntrack. Counters are left running."""
        for name in _STATE_MAPS:
            self.maps[name].clear()
        self.register_node()
        for name in self.lab.pods:
            self.register_pod(name)

    # -- policy --------------------------------------------------------------
    def allow(self, pod: str, direction: str, peer: str | int, proto: str | None = None,
              port: int | None = None, end_port: int | None = None,
              rule_id: int | None = None) -> PolicyRule:
        """Allow pod's traffic in direction with peer (a pod name, "any",
        or an identity number) on proto/port[-end_port]."""
        rule = PolicyRule(
            endpoint_id=self.endpoint_id(pod),
            direction=DIRECTIONS[direction],
            identity=self.identity(peer),
            protocol=PROTOCOLS[proto] if proto is not None else None,
            port=port, end_port=end_port,
            rule_id=rule_id if rule_id is not None else next(self._rule_ids),
        )
        self.maps.add_rule(rule)
        return rule

    # -- counters ------------------------------------------------------------
    def counters(self, pod: str | int) -> dict[tuple[str, Reason], int]:
        """(direction name, reason) -> packets for a pod (or endpoint id;
        0 is traffic that belongs to no endpoint)."""
        ep = pod if isinstance(pod, int) else self.endpoint_id(pod)
        names = {v: k for k, v in DIRECTIONS.items()}
        return {(names[d], r): pkts for (d, r), (pkts, _b) in self.maps.counters(ep).items()}
