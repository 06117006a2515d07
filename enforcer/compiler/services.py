"""Service frontends this node's kube-proxy DNATs: where a pod's egress
verdict has to wait until after DNAT (bpf/lib/services.h).

A frontend is (address, protocol number, port): every port of a Service on
its ClusterIPs, externalIPs and load-balancer IPs, and every NodePort on
each of this node's addresses (kube-proxy answers NodePorts on all of them
by default). Headless and ExternalName
Services have no frontend: nothing translates their traffic.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..datapath.sync import FrontendTuple as Frontend  # (address, protocol number, port)
from ..model.objects import PROTOCOLS, IPAddress, Service


def service_frontends(services: Mapping[str, Service], node_addresses: Iterable[IPAddress]) -> dict[Frontend, str]:
    """Frontend -> the Service ("ns/name") it belongs to (the first one, in
    key order, if two Services claim the same one)."""
    node = tuple(node_addresses)
    out: dict[Frontend, str] = {}
    for key in sorted(services):
        svc = services[key]
        if svc.type == "ExternalName":
            continue
        for port in svc.ports:
            proto = PROTOCOLS[port.protocol]
            for ip in (*svc.cluster_ips, *svc.external_ips, *svc.load_balancer_ips):
                out.setdefault((ip, proto, port.port), key)
            if svc.external and port.node_port:
                for ip in node:
                    out.setdefault((ip, proto, port.node_port), key)
    return out
