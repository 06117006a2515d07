"""Service frontends this node's kube-proxy DNATs: where a pod's egress
verdict has to wait until after DNAT (bpf/lib/services.h).

A frontend is (address, protocol number, port): every port of a Service on
its ClusterIPs, externalIPs and load-balancer IPs, and every NodePort on
each of this node's addresses (kube-proxy answers NodePorts on all of them
by default). Headless and ExternalName
Services have no frontend: nothing translates their traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..model.objects import PROTOCOLS, IPAddress, Service
from ..records import Frontend


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
                out.setdefault(Frontend(ip, proto, port.port), key)
            if svc.external and port.node_port:
                for ip in node:
                    out.setdefault(Frontend(ip, proto, port.node_port), key)
    return out


def fit_frontends(frontends: dict[Frontend, str], capacity: int | None, node_addresses: Iterable[IPAddress]
                  ) -> tuple[dict[Frontend, str], dict[str, tuple[IPAddress, ...]]]:
    """Frontends the services map can hold. A frontend left out would have
    its packets judged before DNAT, on the Service address, which an
    ipBlock around it could allow whatever the backend: so when they do not
    all fit, the Services with the most frontends are left out first (a
    flood costs its author), each whole, and their addresses returned to be
    given an identity no peer rule allows (IDENTITY_SERVICE_UNWRITTEN).
    NodePorts (on the node's own addresses, which cannot be given another
    identity) are kept whatever they cost. Returns (the frontends kept,
    Service -> addresses left out)."""
    if capacity is None or len(frontends) <= capacity:
        return frontends, {}
    node = set(node_addresses)
    by_service: dict[str, list[Frontend]] = {}
    for fe, key in frontends.items():
        if fe[0] not in node:
            by_service.setdefault(key, []).append(fe)
    kept = dict(frontends)
    left_out: dict[str, tuple[IPAddress, ...]] = {}
    for key, fes in sorted(by_service.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(kept) <= capacity:
            break
        for fe in fes:
            del kept[fe]
        left_out[key] = tuple(sorted({fe[0] for fe in fes}, key=lambda a: (a.version, a)))
    # An address left out is left out for every Service sharing it.
    gone = {a for addrs in left_out.values() for a in addrs}
    for fe in [fe for fe in kept if fe[0] in gone]:
        del kept[fe]
    return kept, left_out
