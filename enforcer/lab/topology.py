"""A one-node cluster in network namespaces, wired the way Calico wires pods
(mode "routed", the default) or the way flannel's bridge plugin does (mode
"bridge").

Routed (Calico):
  <prefix>-node     the node: forwarding on, dummy0 with the node's own
                    addresses, one host-side veth "lxc<pod>" per pod with
                    proxy ARP, fe80::1 and a /32 + /128 route to the pod.
  <prefix>-<pod>    one per pod: eth0 with a /32 and a /128, routes
                    169.254.1.1 dev eth0 scope link, default via 169.254.1.1,
                    default via fe80::1 dev eth0.

Bridge (flannel):
  <prefix>-node     the node: forwarding on, dummy0 with the node's own
                    addresses, a bridge cni0 carrying the pods' gateway
                    10.244.0.1/24 and fd00:244::1/64 (so the node routes the
                    pod subnet to cni0), one host-side veth "veth<pod>" per
                    pod enslaved to cni0. Bridge netfilter is switched off
                    (bridge-nf-call-*tables 0): the enforcer must not need it.
  <prefix>-<pod>    one per pod: eth0 with a /24 and a /64, default routes via
                    10.244.0.1 and fd00:244::1.

In both, a server (serve.py) in each pod answers TCP and UDP on the lab's
ports with the pod's name.

Pod-to-pod traffic crosses two host-side veths, where the enforcer's tc
programs sit: the sender's (tc ingress, its egress policy) and the
receiver's (tc egress, its ingress policy). Routed, the node routes it;
bridged, cni0 switches it from one port to the other (never leaving the
bridge, no route lookup, no netfilter).

    with Lab("enl42", ["a", "b"]) as lab:
        lab.probe("a", lab.pod("b").ipv4, 80)
    with Lab("enl43", ["a", "b"], mode="bridge") as lab:
        lab.add_pod("c")
        ...
        lab.remove_pod("c")
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from .netns import LabCommandError, ip, ip_batch, ip_json, netns_add, netns_delete, netns_list, netns_path, sysctl
from .probe import ProbeResult, ProbeSpec, format_matrix, probe, probe_many

log = logging.getLogger(__name__)

NODE = "node"  # name of the node as a probe source
NODE_IPV4 = ipaddress.IPv4Address("10.245.0.1")
NODE_IPV6 = ipaddress.IPv6Address("fd00:245::1")
POD_NET4 = ipaddress.IPv4Network("10.244.0.0/16")
POD_NET6 = ipaddress.IPv6Network("fd00:244::/64")
GATEWAY4 = "169.254.1.1"
GATEWAY6 = "fe80::1"
ROUTED, BRIDGE = "routed", "bridge"
MODES = (ROUTED, BRIDGE)
BRIDGE_IFNAME = "cni0"
BRIDGE_NET4 = ipaddress.IPv4Network("10.244.0.0/24")   # bridged pods' subnet
BRIDGE_NET6 = ipaddress.IPv6Network("fd00:244::/64")
BRIDGE_GATEWAY4 = BRIDGE_NET4.network_address + 1       # on cni0
BRIDGE_GATEWAY6 = BRIDGE_NET6.network_address + 1
DEFAULT_PORTS = (80, 81)
IFNAMSIZ = 15
_POD_NAME = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass
class Pod:
    name: str
    netns: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    host_ifname: str      # host-side veth, in the node namespace
    host_ifindex: int = 0  # its ifindex in the node namespace (once up)
    server: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def ip(self, family: int = 4) -> str:
        return str(self.ipv4 if family == 4 else self.ipv6)


class Lab:
    """Build with up(), tear down with down() (idempotent, also after a
    partial up()), or use as a context manager."""

    def __init__(self, prefix: str, pods: Sequence[str], ports: Sequence[int] = DEFAULT_PORTS,
                 python: str = sys.executable, server_start_timeout: float = 15.0,
                 mode: str = ROUTED) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
            raise ValueError(f"lab prefix {prefix!r}: 1-12 lowercase letters/digits, starting with a letter")
        if len(set(pods)) != len(pods) or NODE in pods:
            raise ValueError(f"pod names must be unique and not {NODE!r}: {list(pods)}")
        if mode not in MODES:
            raise ValueError(f"lab mode {mode!r}: one of {MODES}")
        self.prefix = prefix
        self.mode = mode
        self.node_netns = f"{prefix}-{NODE}"
        self.ports = tuple(ports)
        self.python = python
        self.server_start_timeout = server_start_timeout
        self.pods: dict[str, Pod] = {}
        self._next_index = 0  # pod addresses are .2 + index, never handed out twice
        for name in pods:
            self.pods[name] = self._new_pod(name)
        self.is_up = False

    def _new_pod(self, name: str, index: int | None = None) -> Pod:
        kind = "lxc" if self.mode == ROUTED else "veth"
        host_ifname = f"{kind}{name}"
        if not _POD_NAME.match(name) or len(host_ifname) > IFNAMSIZ:
            raise ValueError(f"pod name {name!r}: lowercase letters/digits, at most {IFNAMSIZ - len(kind)} chars")
        if name == NODE:
            raise ValueError(f"a pod cannot be named {NODE!r}")
        if index is None:
            index = self._next_index
        self._next_index = max(self._next_index, index + 1)
        if self.mode == BRIDGE and index + 2 >= BRIDGE_NET4.num_addresses - 1:
            raise ValueError(f"pod index {index}: beyond the bridge subnet {BRIDGE_NET4}")
        return Pod(name=name, netns=f"{self.prefix}-{name}",
                   ipv4=POD_NET4.network_address + 2 + index,
                   ipv6=POD_NET6.network_address + 2 + index,
                   host_ifname=host_ifname)

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> Lab:
        """Build everything; on any failure tear down what was built and re-raise."""
        removed = self.cleanup_stale(self.prefix)
        if removed:
            log.warning("lab %s: removed stale namespaces %s", self.prefix, ", ".join(removed))
        try:
            self._make_node()
            for pod in self.pods.values():
                self._make_pod(pod)
            links = {link["ifname"]: link["ifindex"] for link in ip_json("link", "show", netns=self.node_netns)}
            for pod in self.pods.values():
                pod.host_ifindex = links[pod.host_ifname]
            for pod in self.pods.values():
                self._start_server(pod)
            self._wait_servers(list(self.pods.values()))
        except BaseException:
            self.down()
            raise
        self.is_up = True
        return self

    def add_pod(self, name: str, index: int | None = None) -> Pod:
        """A new pod in a lab that is up, wired like the others, its server
        answering. index picks its addresses (.2 + index); by default the
        next never used. On failure nothing of it is left."""
        if not self.is_up:
            raise RuntimeError(f"lab {self.prefix} is not up")
        if name in self.pods:
            raise ValueError(f"pod {name!r} already in lab {self.prefix}")
        pod = self._new_pod(name, index)
        taken = {(p.ipv4, p.ipv6) for p in self.pods.values()}
        if (pod.ipv4, pod.ipv6) in taken:
            raise ValueError(f"pod {name!r}: addresses {pod.ipv4}, {pod.ipv6} are in use")
        self.pods[name] = pod
        try:
            self._make_pod(pod)
            links = {link["ifname"]: link["ifindex"] for link in ip_json("link", "show", netns=self.node_netns)}
            pod.host_ifindex = links[pod.host_ifname]
            self._start_server(pod)
            self._wait_servers([pod])
        except BaseException:
            self.remove_pod(name)
            raise
        return pod

    def remove_pod(self, name: str) -> Pod:
        """Stop the pod's server and delete its namespace (its veth goes
        with it, from the node too). Returns the pod as it was."""
        pod = self.pods.pop(name)
        stop_process(pod.server)
        pod.server = None
        # Deleting the host side takes the pair down at once; a namespace's
        # devices go only when the kernel gets round to cleaning it up.
        if netns_path(self.node_netns).exists():
            ip("link", "del", pod.host_ifname, netns=self.node_netns, check=False)
        netns_delete(pod.netns)
        return pod

    def down(self) -> None:
        """Stop the servers and delete every namespace of this lab (which
        removes the veths and any tc filter on them). Safe to call twice."""
        for pod in self.pods.values():
            stop_process(pod.server)
            pod.server = None
        # Pods first: their veth peers go with them, then the node.
        for pod in self.pods.values():
            netns_delete(pod.netns)
        netns_delete(self.node_netns)
        self.is_up = False

    @staticmethod
    def cleanup_stale(prefix: str) -> list[str]:
        """Delete every namespace named "<prefix>-*" (a crashed run's lab),
        killing what still runs in it. Returns the names removed."""
        removed = []
        for name in netns_list():
            if name.startswith(prefix + "-") and netns_delete(name):
                removed.append(name)
        return removed

    # -- building ----------------------------------------------------------
    def _make_node(self) -> None:
        make_node_netns(self.node_netns)
        ip_batch([
            "link set lo up",
            f"addr add {NODE_IPV4}/32 dev dummy0",
            f"addr add {NODE_IPV6}/128 dev dummy0 nodad",
            "link set dummy0 up",
            # Proxy ARP answers for 169.254.1.1 on every lxc only if the
            # node routes it out another interface.
            f"route add {GATEWAY4}/32 dev dummy0",
        ], netns=self.node_netns)
        if self.mode == BRIDGE:
            self._make_bridge()

    def _make_bridge(self) -> None:
        """cni0 holds the gateway addresses; its connected routes send the
        pod subnet to it."""
        ip_batch([
            f"link add {BRIDGE_IFNAME} type bridge",
            f"addr add {BRIDGE_GATEWAY4}/{BRIDGE_NET4.prefixlen} dev {BRIDGE_IFNAME}",
            f"addr add {BRIDGE_GATEWAY6}/{BRIDGE_NET6.prefixlen} dev {BRIDGE_IFNAME} nodad",
            f"link set {BRIDGE_IFNAME} up",
        ], netns=self.node_netns)
        # Kernels with br_netfilter default to handing bridged frames to
        # iptables; kube-proxy wants that, the enforcer must not need it.
        disable_bridge_netfilter(self.node_netns)

    def _make_pod(self, pod: Pod) -> None:
        make_pod_netns(self.node_netns, pod)
        if self.mode == BRIDGE:
            self._wire_bridged_pod(pod)
        else:
            self._wire_routed_pod(pod)

    def _wire_bridged_pod(self, pod: Pod) -> None:
        ip_batch([
            f"link set {pod.host_ifname} master {BRIDGE_IFNAME}",
            f"link set {pod.host_ifname} up",
        ], netns=self.node_netns)
        ip_batch([
            "link set lo up",
            f"addr add {pod.ipv4}/{BRIDGE_NET4.prefixlen} dev eth0",
            f"addr add {pod.ipv6}/{BRIDGE_NET6.prefixlen} dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {BRIDGE_GATEWAY4} dev eth0",
            f"route add ::/0 via {BRIDGE_GATEWAY6} dev eth0",
        ], netns=pod.netns)

    def _wire_routed_pod(self, pod: Pod) -> None:
        wire_routed_pod(self.node_netns, pod)

    def _start_server(self, pod: Pod) -> None:
        start_server(pod, self.ports, self.python)

    def _wait_servers(self, pods: Sequence[Pod]) -> None:
        wait_servers(pods, self.server_start_timeout)

    # -- using -------------------------------------------------------------
    def pod(self, name: str) -> Pod:
        try:
            return self.pods[name]
        except KeyError:
            raise KeyError(f"no pod {name!r} in lab {self.prefix} (pods: {', '.join(self.pods)})") from None

    def netns_of(self, source: str) -> str:
        """Namespace of a probe source: a pod name or "node"."""
        return self.node_netns if source == NODE else self.pod(source).netns

    def add_address(self, pod: str, address: str) -> None:
        """An extra address on a pod's eth0 (e.g. to try spoofing)."""
        extra = " nodad" if ipaddress.ip_address(address).version == 6 else ""
        bits = 32 if ipaddress.ip_address(address).version == 4 else 128
        ip_batch([f"addr add {address}/{bits} dev eth0{extra}"], netns=self.pod(pod).netns)

    def del_address(self, pod: str, address: str) -> None:
        bits = 32 if ipaddress.ip_address(address).version == 4 else 128
        ip_batch([f"addr del {address}/{bits} dev eth0"], netns=self.pod(pod).netns)

    def probe_result(self, src: str, dst_ip: str, port: int, proto: str = "tcp",
                     timeout: float = 1.0, src_ip: str | None = None) -> ProbeResult:
        return probe(self.netns_of(src), str(dst_ip), port, proto, timeout, src_ip)

    def probe(self, src: str, dst_ip: str, port: int, proto: str = "tcp",
              timeout: float = 1.0, src_ip: str | None = None) -> bool:
        """Whether src ("node" or a pod) reaches dst_ip:port and gets an answer."""
        return self.probe_result(src, dst_ip, port, proto, timeout, src_ip).ok

    def matrix(self, port: int, proto: str = "tcp", family: int = 4, timeout: float = 1.0,
               sources: Sequence[str] | None = None) -> dict[tuple[str, str], ProbeResult | None]:
        """(source, target pod) -> result, probed concurrently; a pod to
        itself is not probed (None): it never crosses the node."""
        sources = list(sources) if sources is not None else [NODE, *self.pods]
        pairs = [(s, t) for s in sources for t in self.pods if s != t]
        specs = [ProbeSpec(self.netns_of(s), self.pod(t).ip(family), port, proto) for s, t in pairs]
        results: dict[tuple[str, str], ProbeResult | None] = {(s, s): None for s in sources}
        results.update(zip(pairs, probe_many(specs, timeout), strict=False))
        return results

    def format_matrix(self, port: int, proto: str = "tcp", family: int = 4, timeout: float = 1.0,
                      sources: Sequence[str] | None = None) -> str:
        sources = list(sources) if sources is not None else [NODE, *self.pods]
        results = self.matrix(port, proto, family, timeout, sources)
        title = f"{proto}/{port} IPv{family}"
        return format_matrix(title, sources, list(self.pods), results)



# -- building blocks, shared with the multi-node lab (multinode.py) ------------

def make_node_netns(netns: str) -> None:
    """A node namespace: forwarding on, no reverse-path filter, no DAD, and
    dummy0 (up to the caller to give it addresses and routes)."""
    netns_add(netns)
    sysctl(netns, {
        "net.ipv4.ip_forward": 1,
        "net.ipv6.conf.all.forwarding": 1,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
        "net.ipv6.conf.all.accept_dad": 0,
        "net.ipv6.conf.default.accept_dad": 0,
    })
    add_dummy(netns)


def add_dummy(netns: str) -> None:
    """dummy0, the holder of the node's own addresses. Kernels built
    without the dummy driver get an ifb device instead: it too is
    NOARP, has carrier and discards what is sent to it."""
    try:
        ip_batch(["link add dummy0 type dummy"], netns=netns)
    except LabCommandError as e:
        if "Unknown device type" not in str(e):
            raise
        ip_batch(["link add dummy0 type ifb"], netns=netns)


def disable_bridge_netfilter(netns: str) -> None:
    """bridge-nf-call-*tables 0 in netns: frames a bridge switches are not
    handed to iptables. (The sysctls exist, in every namespace, only with
    br_netfilter loaded; a new namespace starts with them on.)"""
    sysctl(netns, {f"net.bridge.bridge-nf-call-{t}": 0 for t in ("iptables", "ip6tables", "arptables")
                   if os.path.exists(f"/proc/sys/net/bridge/bridge-nf-call-{t}")})


def make_pod_netns(node_netns: str, pod: Pod) -> None:
    """The pod's namespace and its veth pair: eth0 in the pod, the host
    side (pod.host_ifname, down, unaddressed) in the node."""
    netns_add(pod.netns)
    # Addresses are usable at once (no DAD), on both ends of the veth.
    sysctl(pod.netns, {
        "net.ipv6.conf.all.accept_dad": 0,
        "net.ipv6.conf.default.accept_dad": 0,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
    })
    ip_batch(["link set lo up",
              f"link add {pod.host_ifname} type veth peer name eth0 netns {pod.netns}"],
             netns=node_netns)


def wire_routed_pod(node_netns: str, pod: Pod) -> None:
    """Calico-style: proxy ARP and fe80::1 on the host side, a /32 and a
    /128 route to the pod; in the pod, default routes via 169.254.1.1 and
    fe80::1. The node needs a route to 169.254.1.1 out another interface
    (dummy0) for proxy ARP to answer."""
    sysctl(node_netns, {
        f"net.ipv4.conf.{pod.host_ifname}.proxy_arp": 1,
        # Answer proxy ARP at once, not after a random 0-0.8 s delay
        # (the default), which made a pod's first packet slow to answer.
        f"net.ipv4.neigh.{pod.host_ifname}.proxy_delay": 0,
        f"net.ipv6.conf.{pod.host_ifname}.accept_dad": 0,
        f"net.ipv6.conf.{pod.host_ifname}.disable_ipv6": 0,
    })
    ip_batch([
        f"link set {pod.host_ifname} up",
        f"addr add {GATEWAY6}/64 dev {pod.host_ifname} nodad",
        f"route add {pod.ipv4}/32 dev {pod.host_ifname}",
        f"route add {pod.ipv6}/128 dev {pod.host_ifname}",
    ], netns=node_netns)
    ip_batch([
        "link set lo up",  # a pod reaches its own address, as in Kubernetes
        f"addr add {pod.ipv4}/32 dev eth0",
        f"addr add {pod.ipv6}/128 dev eth0 nodad",
        "link set eth0 up",
        f"route add {GATEWAY4} dev eth0 scope link",
        f"route add default via {GATEWAY4} dev eth0",
        f"route add ::/0 via {GATEWAY6} dev eth0",
    ], netns=pod.netns)


def start_server(pod: Pod, ports: Sequence[int], python: str = sys.executable,
                 extra_args: Sequence[str] = ()) -> None:
    """serve.py in the pod's namespace (pod.server); wait_servers() waits
    for its "ready"."""
    cmd = ["ip", "netns", "exec", pod.netns, python, "-m", "enforcer.lab.serve",
           "--name", pod.name, "--addr", str(pod.ipv4), "--addr", str(pod.ipv6), *extra_args]
    for port in ports:
        cmd += ["--port", str(port)]
    # `ip netns exec` execs the command: the pid is the server's own.
    pod.server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  start_new_session=True)


def wait_servers(pods: Sequence[Pod], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pod in pods:
        assert pod.server is not None and pod.server.stdout is not None
        left = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([pod.server.stdout], [], [], left)
        line = pod.server.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise LabCommandError(f"server in pod {pod.name} did not start "
                                  f"(exit code {pod.server.poll()}, said {line!r})")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("lab: process %d did not exit after SIGKILL", proc.pid)
    if proc.stdout:
        proc.stdout.close()
