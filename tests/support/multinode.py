"""A multi-node cluster in network namespaces: nodes on a shared underlay,
pods wired Calico-style on each, routes between the nodes' pod CIDRs
without encapsulation (Calico BGP without overlay, flannel host-gw), an
external client, and kube-proxy's iptables mode emulated on every node
(kubeproxy.py).

  <prefix>-ul     the underlay: bridge br0 (no address, bridge netfilter
                  off), one port "n<node>" per node and "ext0" for the
                  external client.
  <prefix>-<node> node i (1, 2, ... in the order given): eth0 on the
                  underlay with 100.64.0.i/24 and fd00:64::i/64 (the node's
                  own addresses: its InternalIP, the NodePort address, the
                  MASQUERADE source); dummy0 (no address: the proxy-ARP
                  anchor for 169.254.1.1, and the route to the service
                  CIDRs so the node's own sockets can reach a ClusterIP);
                  pod CIDR 10.244.i.0/24 and fd00:244:i::/64, each pod on a
                  veth "lxc<pod>" with a /32 and /128 route as in the
                  one-node lab; routes to every other node's pod CIDRs via
                  that node's underlay address; 198.51.100.10/32 and
                  2001:db8:100::10/128 on-link on eth0 (the external
                  client). Forwarding on, rp_filter and ICMP redirects off.
  <prefix>-<pod>  a pod: eth0 with 10.244.i.(2+k)/32 and fd00:244:i::(2+k)/128,
                  default routes via 169.254.1.1 / fe80::1; serve.py on
                  the lab's ports, answering "<name> <peer address>" (the
                  source the pod saw, after any NAT).
  <prefix>-ext    the external client: eth0 on the underlay with only
                  198.51.100.10/32 and 2001:db8:100::10/128, the underlay
                  subnets on-link and every pod CIDR via its node (an
                  outside router that learnt the pod routes, as from BGP).

Every node runs the same Services through kube-proxy's rules (nat table
for ClusterIP and NodePort, filter table for the rejects/drops and
KUBE-FORWARD), rewritten by update_services().

Pods may declare named container ports (container_ports: pod ->
ContainerPort list; every pod serves the lab's ports whatever it declares).
A Service port with a named target (ServicePort(8080, target_name="http"))
is resolved per backend pod, as the EndpointSlice controller does: each
endpoint is DNATed to its own pod's port of that name, and a pod without it
is not an endpoint of that port. cluster_manifest() writes the declared
ports into the Pods and, on request, the EndpointSlices with the resolved
numbers.

    with MultiNodeLab("enm7", {"n1": ["a", "b"], "n2": ["c"]},
                      services=[Service("web", "10.96.0.10", (ServicePort(80),), ("a", "c"))]) as lab:
        lab.probe_result("b", "10.96.0.10", 80).answered_by   # "a" or "c"
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from enforcer.lab.netns import ip_batch, ip_json, netns_add, netns_delete, netns_list, sysctl
from enforcer.lab.probe import ProbeResult, ProbeSpec, probe, probe_many
from enforcer.lab.topology import (
    DEFAULT_PORTS,
    GATEWAY4,
    IFNAMSIZ,
    Pod,
    disable_bridge_netfilter,
    make_node_netns,
    make_pod_netns,
    start_server,
    stop_process,
    wait_servers,
    wire_routed_pod,
)

from . import kubeproxy
from .kubeproxy import ContainerPort, Endpoint, Service, ServicePort

log = logging.getLogger(__name__)

EXT = "ext"          # the external client, as a probe source
UNDERLAY = "ul"
EXT_IPV4 = ipaddress.IPv4Address("198.51.100.10")
EXT_IPV6 = ipaddress.IPv6Address("2001:db8:100::10")
UNDERLAY_NET4 = ipaddress.IPv4Network("100.64.0.0/24")
UNDERLAY_NET6 = ipaddress.IPv6Network("fd00:64::/64")
CLUSTER_CIDR4 = ipaddress.IPv4Network("10.244.0.0/16")   # every node's pod CIDR is a /24 of it
CLUSTER_CIDR6 = ipaddress.IPv6Network("fd00:244::/32")   # ... a /64 of it
SERVICE_CIDR4 = ipaddress.IPv4Network("10.96.0.0/16")
SERVICE_CIDR6 = ipaddress.IPv6Network("fd00:96::/112")
BRIDGE = "br0"
EXT_PORT = "ext0"    # the external client's port on the underlay bridge
RESERVED = (EXT, UNDERLAY)
_NAME = re.compile(r"^[a-z][a-z0-9]*$")
MAX_NODES = 250
MAX_PODS_PER_NODE = 250


@dataclass
class Node:
    name: str
    index: int           # 1-based: addresses and pod CIDRs are numbered by it
    netns: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    pod_cidr4: ipaddress.IPv4Network
    pod_cidr6: ipaddress.IPv6Network
    pods: list[str] = field(default_factory=list)

    def ip(self, family: int = 4) -> str:
        return str(self.ipv4 if family == 4 else self.ipv6)

    @property
    def underlay_port(self) -> str:
        return f"n{self.name}"   # its port on the underlay bridge


@dataclass
class NodePod(Pod):
    """A pod and the node it lives on."""

    node: str = ""
    node_netns: str = ""


class MultiNodeLab:
    """Build with up(), tear down with down() (idempotent, also after a
    partial up()), or use as a context manager."""

    def __init__(self, prefix: str, nodes: Mapping[str, Sequence[str]], services: Sequence[Service] = (),
                 ports: Sequence[int] = DEFAULT_PORTS, python: str = sys.executable,
                 server_start_timeout: float = 15.0, iptables: str = "iptables",
                 container_ports: Mapping[str, Sequence[ContainerPort]] | None = None) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
            raise ValueError(f"lab prefix {prefix!r}: 1-12 lowercase letters/digits, starting with a letter")
        if not nodes or len(nodes) > MAX_NODES:
            raise ValueError(f"1 to {MAX_NODES} nodes, not {len(nodes)}")
        self.prefix = prefix
        self.ports = tuple(ports)
        self.python = python
        self.server_start_timeout = server_start_timeout
        self.iptables = iptables
        self.underlay_netns = f"{prefix}-{UNDERLAY}"
        self.ext_netns = f"{prefix}-{EXT}"
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, NodePod] = {}
        for i, (node_name, pod_names) in enumerate(nodes.items(), start=1):
            self._check_name(node_name, "node", len("n"))
            node = Node(node_name, i, f"{prefix}-{node_name}",
                        UNDERLAY_NET4.network_address + i, UNDERLAY_NET6.network_address + i,
                        ipaddress.IPv4Network(f"10.244.{i}.0/24"), ipaddress.IPv6Network(f"fd00:244:{i:x}::/64"))
            self.nodes[node_name] = node
            if len(pod_names) > MAX_PODS_PER_NODE:
                raise ValueError(f"node {node_name}: at most {MAX_PODS_PER_NODE} pods")
            for k, pod_name in enumerate(pod_names):
                self._check_name(pod_name, "pod", len("lxc"))
                node.pods.append(pod_name)
                self.pods[pod_name] = NodePod(
                    name=pod_name, netns=f"{prefix}-{pod_name}",
                    ipv4=node.pod_cidr4.network_address + 2 + k, ipv6=node.pod_cidr6.network_address + 2 + k,
                    host_ifname=f"lxc{pod_name}", node=node_name, node_netns=node.netns)
        self.container_ports: dict[str, tuple[ContainerPort, ...]] = {}
        for pod_name, declared in (container_ports or {}).items():
            if pod_name not in self.pods:
                raise ValueError(f"container_ports: {pod_name!r} is not a pod of lab {prefix}")
            declared = tuple(declared)
            names = [cp.name for cp in declared]
            if len(set(names)) != len(names):
                raise ValueError(f"pod {pod_name}: container port names not unique: {names}")
            self.container_ports[pod_name] = declared
        self.services: list[Service] = []
        self._check_services(services)
        self._initial_services = list(services)
        self.is_up = False

    def _check_name(self, name: str, kind: str, ifprefix: int) -> None:
        if not _NAME.match(name) or len(name) + ifprefix > IFNAMSIZ:
            raise ValueError(f"{kind} name {name!r}: lowercase letters/digits, at most {IFNAMSIZ - ifprefix} chars")
        if name in RESERVED or name in self.nodes or name in self.pods:
            raise ValueError(f"{kind} name {name!r}: taken (node and pod names are unique, not {RESERVED})")

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> MultiNodeLab:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> MultiNodeLab:
        """Build everything (nothing if up already); on any failure tear
        down what was built and re-raise."""
        if self.is_up:
            return self
        removed = self.cleanup_stale(self.prefix)
        if removed:
            log.warning("lab %s: removed stale namespaces %s", self.prefix, ", ".join(removed))
        try:
            self._make_underlay()
            self._make_ext()
            for node in self.nodes.values():
                self._make_node(node)
            for pod in self.pods.values():
                make_pod_netns(pod.node_netns, pod)
                wire_routed_pod(pod.node_netns, pod)
            for node in self.nodes.values():
                links = {link["ifname"]: link["ifindex"] for link in ip_json("link", "show", netns=node.netns)}
                for name in node.pods:
                    self.pods[name].host_ifindex = links[self.pods[name].host_ifname]
            for pod in self.pods.values():
                start_server(pod, self.ports, self.python, ["--report-peer"])
            for node in self.nodes.values():
                for family in (4, 6):
                    kubeproxy.install_jumps(node.netns, family, self.iptables)
            self.is_up = True
            self.update_services(self._initial_services)
            wait_servers(list(self.pods.values()), self.server_start_timeout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop the servers and delete every namespace of this lab. Safe to call twice."""
        for pod in self.pods.values():
            stop_process(pod.server)
            pod.server = None
        for pod in self.pods.values():
            netns_delete(pod.netns)
        for node in self.nodes.values():
            netns_delete(node.netns)
        netns_delete(self.ext_netns)
        netns_delete(self.underlay_netns)
        self.is_up = False

    @staticmethod
    def cleanup_stale(prefix: str) -> list[str]:
        """Delete every namespace named "<prefix>-*", killing what runs in it."""
        removed = []
        for name in netns_list():
            if name.startswith(prefix + "-") and netns_delete(name):
                removed.append(name)
        return removed

    # -- building ----------------------------------------------------------
    def _make_underlay(self) -> None:
        netns_add(self.underlay_netns)
        disable_bridge_netfilter(self.underlay_netns)  # a plain switch: no iptables, no conntrack
        sysctl(self.underlay_netns, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1})
        ip_batch(["link set lo up", f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"],
                 netns=self.underlay_netns)

    def _plug(self, netns: str, port: str) -> None:
        """A veth from the underlay bridge (port `port`) to eth0 in netns."""
        ip_batch([f"link add {port} type veth peer name eth0 netns {netns}",
                  f"link set {port} master {BRIDGE}", f"link set {port} up"], netns=self.underlay_netns)

    def _make_ext(self) -> None:
        netns_add(self.ext_netns)
        sysctl(self.ext_netns, {
            "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.conf.all.accept_redirects": 0, "net.ipv4.conf.default.accept_redirects": 0,
            "net.ipv6.conf.all.accept_redirects": 0, "net.ipv6.conf.default.accept_redirects": 0,
        })
        self._plug(self.ext_netns, EXT_PORT)
        lines = ["link set lo up",
                 f"addr add {EXT_IPV4}/32 dev eth0", f"addr add {EXT_IPV6}/128 dev eth0 nodad", "link set eth0 up",
                 f"route add {UNDERLAY_NET4} dev eth0 scope link src {EXT_IPV4}",
                 f"route add {UNDERLAY_NET6} dev eth0 src {EXT_IPV6}"]
        for node in self.nodes.values():
            lines += [f"route add {node.pod_cidr4} via {node.ipv4} dev eth0",
                      f"route add {node.pod_cidr6} via {node.ipv6} dev eth0"]
        ip_batch(lines, netns=self.ext_netns)

    def _make_node(self, node: Node) -> None:
        make_node_netns(node.netns)
        sysctl(node.netns, {
            # A NodePort connection leaves by the interface it came in on
            # (eth0 to eth0, DNATed to a pod on another node): no redirects.
            "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.default.send_redirects": 0,
            "net.ipv4.conf.all.accept_redirects": 0, "net.ipv4.conf.default.accept_redirects": 0,
            "net.ipv6.conf.all.accept_redirects": 0, "net.ipv6.conf.default.accept_redirects": 0,
        })
        self._plug(node.netns, node.underlay_port)
        lines = [
            "link set lo up",
            f"addr add {node.ipv4}/{UNDERLAY_NET4.prefixlen} dev eth0",
            f"addr add {node.ipv6}/{UNDERLAY_NET6.prefixlen} dev eth0 nodad",
            "link set eth0 up",
            "link set dummy0 up",
            # Proxy ARP answers for 169.254.1.1 on every lxc only if the
            # node routes it out another interface.
            f"route add {GATEWAY4}/32 dev dummy0",
            # The node's own sockets need a route to a ClusterIP for nat
            # OUTPUT to see the packet (pods have their default route).
            f"route add {SERVICE_CIDR4} dev dummy0",
            f"route add {SERVICE_CIDR6} dev dummy0",
            f"route add {EXT_IPV4}/32 dev eth0 scope link",
            f"route add {EXT_IPV6}/128 dev eth0",
        ]
        for other in self.nodes.values():
            if other is not node:
                lines += [f"route add {other.pod_cidr4} via {other.ipv4} dev eth0",
                          f"route add {other.pod_cidr6} via {other.ipv6} dev eth0"]
        ip_batch(lines, netns=node.netns)

    # -- services ----------------------------------------------------------
    def _check_services(self, services: Sequence[Service]) -> None:
        keys = [s.key for s in services]
        if len(set(keys)) != len(keys):
            raise ValueError(f"services not unique: {keys}")
        node_ports = [(p.node_port, p.protocol) for s in services for p in s.ports if p.node_port is not None]
        if len(set(node_ports)) != len(node_ports):
            raise ValueError(f"node ports used twice: {node_ports}")
        for s in services:
            if ipaddress.ip_address(s.cluster_ip) not in SERVICE_CIDR4:
                raise ValueError(f"service {s.key}: cluster IP {s.cluster_ip} outside {SERVICE_CIDR4}")
            if s.cluster_ipv6 is not None and ipaddress.ip_address(s.cluster_ipv6) not in SERVICE_CIDR6:
                raise ValueError(f"service {s.key}: cluster IP {s.cluster_ipv6} outside {SERVICE_CIDR6}")
            unknown = [b for b in s.backends if b not in self.pods]
            if unknown:
                raise ValueError(f"service {s.key}: backends {unknown} are not pods of lab {self.prefix}")

    def endpoints(self, svc: Service, family: int = 4) -> list[Endpoint]:
        """The Service's endpoints in one family. With a named target port,
        each carries its own pod's numbers (those it serves)."""
        if all(p.target_name is None for p in svc.ports):
            return [Endpoint(self.pods[b].ip(family), self.pods[b].node) for b in svc.backends]
        return [Endpoint(self.pods[b].ip(family), self.pods[b].node, ports=self.endpoint_ports(svc, b))
                for b in svc.backends]

    def endpoint_ports(self, svc: Service, pod: str) -> tuple[tuple[str, int], ...]:
        """(Service port name, target port on `pod`) for each port of the
        Service that pod serves."""
        declared = self.container_ports.get(pod, ())
        return tuple((p.name, t) for p in svc.ports if (t := kubeproxy.resolve_target(p, declared)) is not None)

    def rules(self, node: str, family: int = 4, services: Sequence[Service] | None = None) -> kubeproxy.Rules:
        """What kube-proxy on `node` writes for the services (default: the lab's)."""
        services = self.services if services is None else services
        cidr = CLUSTER_CIDR4 if family == 4 else CLUSTER_CIDR6
        return kubeproxy.render(node, family, str(cidr), [(s, self.endpoints(s, family)) for s in services])

    def update_services(self, services: Sequence[Service]) -> None:
        """Rewrite every node's kube-proxy rules for this set of Services
        (those no longer listed lose their chains). Existing connections
        keep their conntrack entries, as with kube-proxy."""
        if not self.is_up:
            raise RuntimeError(f"lab {self.prefix} is not up")
        services = list(services)
        self._check_services(services)
        for node in self.nodes.values():
            for family in (4, 6):
                kubeproxy.sync(node.netns, self.rules(node.name, family, services), family, self.iptables)
        self.services = services

    def iptables_save(self, node: str, family: int = 4, table: str | None = None) -> str:
        return kubeproxy.save(self.node(node).netns, family, table, self.iptables)

    # -- as Kubernetes objects ----------------------------------------------
    def cluster_manifest(self, namespace: str = "default", labels: Mapping[str, Mapping[str, str]] | None = None,
                         services: bool = False, endpoint_slices: bool = False) -> dict[str, Any]:
        """A List with the Namespace and one Running Pod per lab pod, each
        with its node as spec.nodeName, its addresses and its declared
        container ports (what a daemon per node, on a shared manifest
        directory, needs). labels: pod name -> labels (default {"pod":
        <name>}). services: add the lab's Services (v1 objects without
        selector); endpoint_slices: and their EndpointSlices."""
        items: list[dict[str, Any]] = [{
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"kubernetes.io/metadata.name": namespace}}}]
        for pod in self.pods.values():
            container: dict[str, Any] = {"name": "serve", "image": "lab"}
            if self.container_ports.get(pod.name):
                container["ports"] = [cp.manifest() for cp in self.container_ports[pod.name]]
            items.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": namespace, "uid": f"{self.prefix}-{pod.name}",
                             "labels": dict(labels[pod.name]) if labels and pod.name in labels
                             else {"pod": pod.name}},
                "spec": {"nodeName": pod.node, "containers": [container]},
                "status": {"phase": "Running", "podIP": str(pod.ipv4),
                           "podIPs": [{"ip": str(pod.ipv4)}, {"ip": str(pod.ipv6)}]},
            })
        if services:
            items += [svc.manifest() for svc in self.services]
        if endpoint_slices:
            items += [s for svc in self.services for s in self.endpoint_slice_manifests(svc, namespace)]
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def endpoint_slice_manifests(self, svc: Service, namespace: str = "default") -> list[dict[str, Any]]:
        """The Service's discovery.k8s.io/v1 EndpointSlices, as the
        controller writes them: per address family, one slice per set of
        resolved ports (a named target port makes backends differ), each
        endpoint with its node and pod."""
        groups: dict[tuple[int, tuple[tuple[str, int], ...]], list[NodePod]] = {}
        for b in svc.backends:
            for family in (4, 6):
                if svc.cluster_ip_of(family) is not None:
                    groups.setdefault((family, self.endpoint_ports(svc, b)), []).append(self.pods[b])
        protocols = {p.name: p.protocol for p in svc.ports}
        out = []
        for i, ((family, ports), pods) in enumerate(groups.items()):
            out.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{svc.name}-{i}", "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": svc.name}},
                "addressType": f"IPv{family}",
                "endpoints": [{"addresses": [p.ip(family)], "conditions": {"ready": True}, "nodeName": p.node,
                               "targetRef": {"kind": "Pod", "name": p.name, "namespace": namespace}}
                              for p in pods],
                "ports": [{"name": n, "port": t, "protocol": protocols[n]} for n, t in ports],
            })
        return out

    def dnat_counts(self, node: str, svc: Service, family: int = 4, port: int = 0) -> dict[str, int]:
        """Backend pod -> connections kube-proxy on `node` DNATed to it for
        the Service's port (index `port` in svc.ports), from its KUBE-SEP
        counters (nat sees a connection's first packet only)."""
        sp = svc.ports[port]
        counts = kubeproxy.dnat_counts(kubeproxy.save(self.node(node).netns, family, "nat", self.iptables,
                                                      counters=True))
        out = {}
        for b, ep in zip(svc.backends, self.endpoints(svc, family), strict=False):
            target = ep.target(sp)
            if target is not None:
                out[b] = counts.get(kubeproxy.endpoint_chain_name(svc, sp, ep.ip, target), 0)
        return out

    # -- using -------------------------------------------------------------
    def pod(self, name: str) -> NodePod:
        try:
            return self.pods[name]
        except KeyError:
            raise KeyError(f"no pod {name!r} in lab {self.prefix} (pods: {', '.join(self.pods)})") from None

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r} in lab {self.prefix} (nodes: {', '.join(self.nodes)})") from None

    def node_of(self, pod: str) -> str:
        """The name of the node the pod lives on."""
        return self.pod(pod).node

    def netns_of(self, source: str) -> str:
        """Namespace of a probe source: a pod, a node or "ext"."""
        if source == EXT:
            return self.ext_netns
        if source in self.nodes:
            return self.nodes[source].netns
        return self.pod(source).netns

    def probe_result(self, src: str, dst_ip: str, port: int, proto: str = "tcp",
                     timeout: float = 1.0, src_ip: str | None = None) -> ProbeResult:
        """One probe; when OK, answered_by is the pod that answered and
        peer the source address that pod saw."""
        return probe(self.netns_of(src), str(dst_ip), port, proto, timeout, src_ip)

    def probe(self, src: str, dst_ip: str, port: int, proto: str = "tcp",
              timeout: float = 1.0, src_ip: str | None = None) -> bool:
        return self.probe_result(src, dst_ip, port, proto, timeout, src_ip).ok

    def probe_many(self, probes: Sequence[tuple[str, str, int, str]], timeout: float = 1.0) -> list[ProbeResult]:
        """(src, dst_ip, port, proto) each, run concurrently."""
        return probe_many([ProbeSpec(self.netns_of(s), str(d), p, proto) for s, d, p, proto in probes], timeout)


__all__ = ["EXT", "EXT_IPV4", "EXT_IPV6", "ContainerPort", "MultiNodeLab", "Node", "NodePod", "Service",
           "ServicePort"]
