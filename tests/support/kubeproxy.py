"""kube-proxy's iptables mode, emulated: the filter and nat rules kube-proxy
(v1.28+ proxier, pkg/proxy/iptables) writes for ClusterIP and NodePort
Services, rendered from a small Service description and applied with
iptables-restore in a node's namespace.

Layout (per node, per IP family, mark 0x4000, cluster CIDR as the "local
traffic detector"):

  nat   PREROUTING, OUTPUT -> KUBE-SERVICES
          -d VIP --dport P               -> KUBE-SVC-<h>      (per service port)
          last: addrtype dst LOCAL       -> KUBE-NODEPORTS
        KUBE-NODEPORTS  --dport NP       -> KUBE-EXT-<h>
        KUBE-SVC-<h>    ! -s clusterCIDR -> KUBE-MARK-MASQ
                        statistic random 1/n, 1/(n-1), ... -> KUBE-SEP-<e>
        KUBE-EXT-<h>    Cluster: -> KUBE-MARK-MASQ, -> KUBE-SVC-<h>
                        Local:   -s clusterCIDR -> KUBE-SVC-<h> (pods short-circuit)
                                 src LOCAL -> KUBE-MARK-MASQ, src LOCAL -> KUBE-SVC-<h>
                                 -> KUBE-SVL-<h> (only if the node has local endpoints)
        KUBE-SVL-<h>    like KUBE-SVC-<h>, local endpoints only
        KUBE-SEP-<e>    -s <endpoint> -> KUBE-MARK-MASQ (hairpin), DNAT --to-destination ep:targetPort
                        (the endpoint's own port: a named targetPort is resolved per
                        backend pod, as its EndpointSlice carries it)
        KUBE-MARK-MASQ  MARK --or-mark 0x4000
        POSTROUTING -> KUBE-POSTROUTING: unmarked RETURN, clear the mark, MASQUERADE --random-fully
  filter INPUT/FORWARD (ctstate NEW) -> KUBE-EXTERNAL-SERVICES:
          NodePort with no endpoints at all: REJECT; ETP=Local with no
          local endpoint: DROP ("has no local endpoints")
        FORWARD/OUTPUT (ctstate NEW) -> KUBE-SERVICES: ClusterIP with no endpoints: REJECT
        FORWARD -> KUBE-FORWARD: INVALID DROP, marked ACCEPT, RELATED/ESTABLISHED ACCEPT
        KUBE-NODEPORTS (health check ports) and KUBE-PROXY-FIREWALL: present, empty

Chain names are kube-proxy's: KUBE-SVC-/SVL-/EXT-/FW- + base32(sha256(
"ns/name[:portname]" + protocol))[:16], KUBE-SEP- + the same over
"... + protocol + ip:port".

Named targetPorts: a ServicePort with target_name ("http") has no number
of its own. The EndpointSlice controller resolves the name per backend pod
(its container port of that name and protocol; a pod without one is left
out of that port's endpoints) and kube-proxy only ever sees the numbers:
an Endpoint carries them (port, or ports per Service port name), and each
KUBE-SEP chain DNATs to its own endpoint's ip:port. resolve_target() is the
controller's lookup (Kubernetes' FindPort).

install_jumps() once on a fresh namespace (kube-proxy's EnsureRule of its
jump rules), then sync() as often as the Services change: like kube-proxy,
one `iptables-restore --noflush` that redeclares (so flushes) every chain
it writes and deletes the service chains it no longer writes.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enforcer.lab.netns import run

MASQ_MARK = "0x4000"
NODEPORT_RANGE = range(30000, 32768)
PROTOCOLS = ("TCP", "UDP")
CLUSTER, LOCAL = "Cluster", "Local"
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

# (table, builtin chain, kube-proxy chain, comment, only for new connections)
# in kube-proxy's order; each is prepended, so the last ends up first.
JUMPS = (
    ("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", True),
    ("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", True),
    ("filter", "INPUT", "KUBE-NODEPORTS", "kubernetes health check service ports", False),
    ("filter", "FORWARD", "KUBE-SERVICES", "kubernetes service portals", True),
    ("filter", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", True),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules", False),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", True),
    ("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", True),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", True),
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", False),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals", False),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules", False),
)
FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | None = None  # None: the same as port
    protocol: str = "TCP"
    node_port: int | None = None    # set: the Service is of type NodePort
    name: str = ""                  # the port's name (needed when a Service has several)
    target_name: str | None = None  # set: targetPort is this container port name, resolved per endpoint

    def __post_init__(self) -> None:
        if self.target_name is not None and not self.target_name:
            raise ValueError(f"port {self.port}: empty targetPort name")
        if self.target_name is not None and self.target_port is not None:
            raise ValueError(f"port {self.port}: targetPort is a number or a name ({self.target_name!r}), not both")

    @property
    def target(self) -> int:
        """The numeric targetPort (a named one has none: see Endpoint.target)."""
        if self.target_name is not None:
            raise ValueError(f"port {self.port}: targetPort {self.target_name!r} is named, "
                             "resolved per endpoint")
        return self.port if self.target_port is None else self.target_port

    @property
    def target_ref(self) -> int | str:
        """targetPort as the Service spec writes it: a number or a name."""
        return self.target_name if self.target_name is not None else self.target


@dataclass(frozen=True)
class ContainerPort:
    """A pod's container port (spec.containers[].ports[]): what a named
    targetPort (or a named NetworkPolicy port) resolves to."""

    name: str
    port: int
    protocol: str = "TCP"

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "containerPort": self.port, "protocol": self.protocol}


def resolve_target(port: ServicePort, container_ports: Sequence[ContainerPort] = ()) -> int | None:
    """The target port of `port` on a backend pod with these container
    ports, as the EndpointSlice controller resolves it (FindPort): a number
    is itself, declared or not; a name is the container port of that name
    and protocol, None if the pod has none (it then serves no traffic of
    this Service port)."""
    if port.target_name is None:
        return port.target
    for cp in container_ports:
        if cp.name == port.target_name and cp.protocol == port.protocol:
            return cp.port
    return None


@dataclass(frozen=True)
class Service:
    """A Service and its endpoints as pod names (the lab turns them into
    the pods' addresses, on whatever node they live)."""

    name: str
    cluster_ip: str                       # IPv4, from the service CIDR
    ports: tuple[ServicePort, ...]
    backends: tuple[str, ...]             # pod names
    namespace: str = "default"
    external_traffic_policy: str = CLUSTER
    cluster_ipv6: str | None = None       # set: dual-stack (ip6tables rules too)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "backends", tuple(self.backends))
        if self.external_traffic_policy not in (CLUSTER, LOCAL):
            raise ValueError(f"service {self.key}: externalTrafficPolicy {self.external_traffic_policy!r}")
        if not self.ports:
            raise ValueError(f"service {self.key}: no ports")
        names = [p.name for p in self.ports]
        if len(self.ports) > 1 and (len(set(names)) != len(names) or "" in names):
            raise ValueError(f"service {self.key}: several ports need distinct names")
        for p in self.ports:
            if p.protocol not in PROTOCOLS:
                raise ValueError(f"service {self.key}: protocol {p.protocol!r}: one of {PROTOCOLS}")
            if p.node_port is not None and p.node_port not in NODEPORT_RANGE:
                raise ValueError(f"service {self.key}: nodePort {p.node_port} outside 30000-32767")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_node_port(self) -> bool:
        return any(p.node_port is not None for p in self.ports)

    def cluster_ip_of(self, family: int) -> str | None:
        return self.cluster_ip if family == 4 else self.cluster_ipv6

    def manifest(self, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The v1 Service object (without a selector unless given: the lab
        names the backends itself, as manual endpoints would)."""
        ips = [self.cluster_ip] + ([self.cluster_ipv6] if self.cluster_ipv6 else [])
        spec: dict[str, Any] = {
            "type": "NodePort" if self.is_node_port else "ClusterIP",
            "clusterIP": ips[0], "clusterIPs": ips,
            "ipFamilies": ["IPv4", "IPv6"][:len(ips)],
            "ipFamilyPolicy": "RequireDualStack" if len(ips) > 1 else "SingleStack",
            "ports": [{**({"name": p.name} if p.name else {}), "protocol": p.protocol, "port": p.port,
                       "targetPort": p.target_ref, **({"nodePort": p.node_port} if p.node_port else {})}
                      for p in self.ports],
        }
        if self.is_node_port:
            spec["externalTrafficPolicy"] = self.external_traffic_policy
        if selector is not None:
            spec["selector"] = dict(selector)
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": spec}


@dataclass(frozen=True)
class Endpoint:
    """A backend address, on a node. Its target port, per Service port, as
    its EndpointSlice carries it: `ports` ((Service port name, number), ...)
    when set, else `port` for every Service port, else the ServicePort's
    numeric target."""

    ip: str
    node: str
    port: int | None = None
    ports: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple((str(n), int(p)) for n, p in self.ports))

    def target(self, port: ServicePort) -> int | None:
        """Where kube-proxy DNATs `port`'s traffic picked for this endpoint;
        None: the endpoint does not serve `port` (left out of its chains)."""
        if self.ports:
            return dict(self.ports).get(port.name)
        if self.port is not None:
            return self.port
        return None if port.target_name is not None else port.target


@dataclass
class Rules:
    """One iptables-restore input's worth, for one node and family."""

    filter: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)  # chain names, in order
    nat: list[str] = field(default_factory=list)

    def restore_input(self, stale_nat_chains: Sequence[str] = ()) -> str:
        out = ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *self.filter, "COMMIT",
               "*nat", *(f":{c} - [0:0]" for c in [*self.nat_chains, *stale_nat_chains]), *self.nat,
               *(f"-X {c}" for c in stale_nat_chains), "COMMIT"]
        return "\n".join(out) + "\n"


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_port_name(svc: Service, port: ServicePort) -> str:
    return svc.key + (f":{port.name}" if port.name else "")


def chain_name(prefix: str, svc: Service, port: ServicePort) -> str:
    return f"KUBE-{prefix}-" + _hash(service_port_name(svc, port) + port.protocol.lower())


def endpoint_string(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


def endpoint_chain_name(svc: Service, port: ServicePort, ip: str, target: int | None = None) -> str:
    """target: the endpoint's own port (default: the ServicePort's numeric target)."""
    return "KUBE-SEP-" + _hash(service_port_name(svc, port) + port.protocol.lower()
                               + endpoint_string(ip, port.target if target is None else target))


def probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


def _q(text: str) -> str:
    return f'"{text}"'


def render(node: str, family: int, cluster_cidr: str,
           services: Sequence[tuple[Service, Sequence[Endpoint]]]) -> Rules:
    """The rules kube-proxy on `node` writes for these Services (with the
    endpoints of each, on any node) in one IP family."""
    r = Rules(nat_chains=list(NAT_CHAINS))
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    r.nat += [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m comment --comment {_q('kubernetes service traffic requiring SNAT')} "
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    sep_rules: list[str] = []
    for svc, endpoints in services:
        vip = svc.cluster_ip_of(family)
        if vip is None:
            continue  # single-stack: nothing in this family
        for port in svc.ports:
            _render_port(r, sep_rules, node, cluster_cidr, svc, port, vip, endpoints)
    r.nat += sep_rules
    local = "::1/128" if family == 6 else "127.0.0.0/8"
    r.nat.append(f"-A KUBE-SERVICES -m comment --comment "
                 f"{_q('kubernetes service nodeports; NOTE: this must be the last rule in this chain')} "
                 f"-m addrtype --dst-type LOCAL ! -d {local} -j KUBE-NODEPORTS")
    r.filter += [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f"-A KUBE-FORWARD -m comment --comment {_q('kubernetes forwarding rules')} -m mark --mark {mark} -j ACCEPT",
        f"-A KUBE-FORWARD -m comment --comment {_q('kubernetes forwarding conntrack rule')} "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    return r


def _render_port(r: Rules, sep_rules: list[str], node: str, cluster_cidr: str, svc: Service,
                 port: ServicePort, vip: str, endpoints: Sequence[Endpoint]) -> None:
    proto = port.protocol.lower()
    name = service_port_name(svc, port)
    # This port's endpoints, each with its own target port (kube-proxy's
    # endpoints map is per service port: one that does not serve it is not
    # among them).
    served = [(e, t) for e in endpoints if (t := e.target(port)) is not None]
    endpoints = [Endpoint(e.ip, e.node, t) for e, t in served]
    local_eps = [e for e in endpoints if e.node == node]
    policy_local = svc.external_traffic_policy == LOCAL
    external_eps = local_eps if policy_local else list(endpoints)
    svc_chain, svl_chain, ext_chain = (chain_name(p, svc, port) for p in ("SVC", "SVL", "EXT"))
    match_vip = f"-m {proto} -p {proto} -d {vip} --dport {port.port}"

    if not endpoints:  # no endpoints anywhere: REJECT, no nat chains at all
        comment = _q(f"{name} has no endpoints")
        r.filter.append(f"-A KUBE-SERVICES -m comment --comment {comment} {match_vip} -j REJECT")
        if port.node_port is not None:
            r.filter.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} -m addrtype --dst-type LOCAL "
                            f"-m {proto} -p {proto} --dport {port.node_port} -j REJECT")
        return

    r.nat.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' cluster IP')} {match_vip} -j {svc_chain}")
    if port.node_port is not None:
        r.nat.append(f"-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} "
                     f"--dport {port.node_port} -j {ext_chain}")
        if not external_eps:
            r.filter.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {_q(name + ' has no local endpoints')} "
                            f"-m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {port.node_port} -j DROP")

    # KUBE-SVC: masquerade what comes from outside the cluster CIDR, then the endpoints.
    r.nat_chains.append(svc_chain)
    r.nat.append(f"-A {svc_chain} -m comment --comment {_q(name + ' cluster IP')} {match_vip} "
                 f"! -s {cluster_cidr} -j KUBE-MARK-MASQ")
    _spread(r, svc, port, svc_chain, endpoints)

    if port.node_port is not None:
        r.nat_chains.append(ext_chain)
        if not policy_local:
            r.nat.append(f"-A {ext_chain} -m comment --comment "
                         f"{_q(f'masquerade traffic for {name} external destinations')} -j KUBE-MARK-MASQ")
        else:
            r.nat += [
                f"-A {ext_chain} -m comment --comment {_q(f'pod traffic for {name} external destinations')} "
                f"-s {cluster_cidr} -j {svc_chain}",
                f"-A {ext_chain} -m comment --comment {_q(f'masquerade LOCAL traffic for {name} external destinations')} "
                "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                f"-A {ext_chain} -m comment --comment {_q(f'route LOCAL traffic for {name} external destinations')} "
                f"-m addrtype --src-type LOCAL -j {svc_chain}",
            ]
        if external_eps:
            r.nat.append(f"-A {ext_chain} -j {svl_chain if policy_local else svc_chain}")
        if policy_local and local_eps:
            r.nat_chains.append(svl_chain)
            _spread(r, svc, port, svl_chain, local_eps)

    # One KUBE-SEP per endpoint reachable from here (all of them: ClusterIP
    # traffic uses the Cluster policy whatever externalTrafficPolicy says).
    for ep in endpoints:
        sep = endpoint_chain_name(svc, port, ep.ip, ep.port)
        r.nat_chains.append(sep)
        sep_rules += [
            f"-A {sep} -m comment --comment {name} -s {ep.ip} -j KUBE-MARK-MASQ",
            f"-A {sep} -m comment --comment {name} -m {proto} -p {proto} "
            f"-j DNAT --to-destination {endpoint_string(ep.ip, ep.port)}",
        ]


def _spread(r: Rules, svc: Service, port: ServicePort, chain: str, endpoints: Sequence[Endpoint]) -> None:
    """kube-proxy's load balancing: rule i matches with probability 1/(n-i),
    the last always; each endpoint is picked with probability 1/n.
    endpoints: resolved (each with its port set)."""
    name = service_port_name(svc, port)
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        assert ep.port is not None
        stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        r.nat.append(f"-A {chain} -m comment --comment {_q(f'{name} -> {endpoint_string(ep.ip, ep.port)}')}"
                     f"{stat} -j {endpoint_chain_name(svc, port, ep.ip, ep.port)}")


# -- applying ------------------------------------------------------------------

def _tool(iptables: str, family: int, what: str) -> str:
    base = iptables.replace("iptables", "ip6tables") if family == 6 else iptables
    return f"{base}-{what}"


def restore(netns: str, text: str, family: int = 4, iptables: str = "iptables") -> None:
    """iptables-restore --noflush in netns (only the chains the input
    declares are flushed)."""
    run(["ip", "netns", "exec", netns, _tool(iptables, family, "restore"), "-w", "5", "--noflush"], input=text)


def save(netns: str, family: int = 4, table: str | None = None, iptables: str = "iptables",
         counters: bool = False) -> str:
    """iptables-save (counters: with each rule's [packets:bytes])."""
    cmd = ["ip", "netns", "exec", netns, _tool(iptables, family, "save")]
    if counters:
        cmd.append("-c")
    if table:
        cmd += ["-t", table]
    return run(cmd)


def dnat_counts(saved: str) -> dict[str, int]:
    """KUBE-SEP chain -> packets its DNAT rule translated, from an
    `iptables-save -c -t nat`. nat sees only a connection's first packet,
    so this counts the connections kube-proxy sent to that endpoint."""
    out: dict[str, int] = {}
    for line in saved.splitlines():
        if not line.startswith("[") or " -j DNAT " not in line:
            continue
        count, _, rule = line.partition(" ")
        parts = rule.split()
        if len(parts) > 1 and parts[0] == "-A" and parts[1].startswith("KUBE-SEP-"):
            out[parts[1]] = out.get(parts[1], 0) + int(count[1:].split(":")[0])
    return out


def install_jumps(netns: str, family: int = 4, iptables: str = "iptables") -> None:
    """kube-proxy's chains and the jumps to them from the built-in chains,
    on a namespace that has none yet (a second call would add them twice)."""
    lines: dict[str, list[str]] = {"filter": [f":{c} - [0:0]" for c in FILTER_CHAINS],
                                   "nat": [f":{c} - [0:0]" for c in NAT_CHAINS]}
    for table, builtin, target, comment, new_only in JUMPS:
        state = "-m conntrack --ctstate NEW " if new_only else ""
        lines[table].append(f"-I {builtin} {state}-m comment --comment {_q(comment)} -j {target}")
    text = "".join(f"*{t}\n" + "\n".join(ls) + "\nCOMMIT\n" for t, ls in lines.items())
    restore(netns, text, family, iptables)


def nat_chains_in(saved: str) -> set[str]:
    """Chain names an iptables-save of the nat table declares."""
    return {line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")}


def sync(netns: str, rules: Rules, family: int = 4, iptables: str = "iptables") -> None:
    """Write the rules; delete the service chains that are no longer
    written (found, as kube-proxy does, in iptables-save)."""
    existing = nat_chains_in(save(netns, family, "nat", iptables))
    stale = sorted(c for c in existing - set(rules.nat_chains) if c.startswith(SERVICE_CHAIN_PREFIXES))
    restore(netns, rules.restore_input(stale), family, iptables)
