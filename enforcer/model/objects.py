"""Namespace, Pod, networking.k8s.io/v1 NetworkPolicy, v1 Service and
discovery.k8s.io/v1 EndpointSlice, parsed and validated from API dicts.

Invalid input never widens what is allowed:
- a policy whose rule is invalid keeps its other rules; the invalid rule
  allows nothing (a rule's peers and ports narrow each other, so dropping a
  peer or a port entry would widen it: the whole rule goes);
- a policy whose pod selector or policy types cannot be read is kept as
  *fail-closed*: it isolates every pod of its namespace in the directions it
  names (both when unreadable) and allows nothing;
- an object without a readable namespace/name is reported and ignored.
Every problem is reported as an InvalidObjectError naming the object.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import InvalidObjectError
from .selectors import Interner, LabelSelector, SelectorError, check_label_key, check_label_value

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
INGRESS = "Ingress"
EGRESS = "Egress"
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _meta(raw: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[str | None, str]:
    meta = raw.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InvalidObjectError(kind, None, "<unnamed>", "metadata.name is missing")
    ns = meta.get("namespace", "default") if namespaced else None
    if namespaced and (not isinstance(ns, str) or not ns):
        raise InvalidObjectError(kind, None, meta["name"], "metadata.namespace is invalid")
    return ns, meta["name"]


def _labels(raw: Mapping[str, Any], kind: str, ns: str | None, name: str) -> dict[str, str]:
    labels = (raw.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, dict):
        raise InvalidObjectError(kind, ns, name, "metadata.labels must be a map")
    try:
        for k, v in labels.items():
            check_label_key(k, "metadata.labels")
            check_label_value(v, f"metadata.labels[{k}]")
    except SelectorError as e:
        raise InvalidObjectError(kind, ns, name, str(e)) from e
    return dict(labels)


def _resource_version(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Mapping[str, str]
    resource_version: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "Namespace":
        _, name = _meta(raw, "Namespace", namespaced=False)
        labels = _labels(raw, "Namespace", None, name)
        # The API server sets this label on every namespace (1.21+); manifests
        # written by hand may lack it, and policies rely on it.
        labels["kubernetes.io/metadata.name"] = name
        return cls(name, labels, _resource_version(raw))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    node_name: str | None
    host_network: bool
    ips: tuple[IPAddress, ...]
    ports: tuple[ContainerPort, ...]
    phase: str
    resource_version: str = ""
    host_ips: tuple[IPAddress, ...] = ()  # status.hostIPs: its node's addresses

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def is_running(self) -> bool:
        """Has addresses that belong to it: scheduled, IP assigned, not
        finished (a finished pod's IP may already be someone else's)."""
        return bool(self.ips) and self.phase not in ("Succeeded", "Failed")

    def named_port(self, name: str, protocol: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "Pod":
        ns, name = _meta(raw, "Pod", namespaced=True)
        assert ns is not None
        labels = _labels(raw, "Pod", ns, name)
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        if not isinstance(spec, dict) or not isinstance(status, dict):
            raise InvalidObjectError("Pod", ns, name, "spec and status must be objects")
        ips: list[IPAddress] = []
        raw_ips = [e.get("ip") for e in status.get("podIPs") or [] if isinstance(e, dict)]
        if not raw_ips and status.get("podIP"):
            raw_ips = [status["podIP"]]
        for ip in raw_ips:
            try:
                addr = ipaddress.ip_address(ip)
            except (ValueError, TypeError) as e:
                raise InvalidObjectError("Pod", ns, name, f"status.podIPs: invalid address {ip!r}") from e
            if addr not in ips:
                ips.append(addr)
        raw_host_ips = [e.get("ip") for e in status.get("hostIPs") or [] if isinstance(e, dict)]
        if not raw_host_ips and status.get("hostIP"):
            raw_host_ips = [status["hostIP"]]
        host_ips: list[IPAddress] = []
        for ip in raw_host_ips:
            try:
                host_ips.append(ipaddress.ip_address(ip))
            except (ValueError, TypeError) as e:
                raise InvalidObjectError("Pod", ns, name, f"status.hostIPs: invalid address {ip!r}") from e
        ports: list[ContainerPort] = []
        containers = list(spec.get("containers") or [])
        # Sidecars (restartable init containers) serve ports like containers.
        containers += [c for c in spec.get("initContainers") or []
                       if isinstance(c, dict) and c.get("restartPolicy") == "Always"]
        for c in containers:
            for p in (c.get("ports") or []) if isinstance(c, dict) else []:
                try:
                    num = int(p["containerPort"])
                except (KeyError, TypeError, ValueError) as e:
                    raise InvalidObjectError("Pod", ns, name, f"container port {p!r} has no valid containerPort") from e
                proto = p.get("protocol") or "TCP"
                if proto not in PROTOCOLS or not 1 <= num <= 65535:
                    raise InvalidObjectError("Pod", ns, name, f"invalid container port {num}/{proto}")
                ports.append(_container_ports(ContainerPort(p.get("name"), num, proto)))
        return cls(
            namespace=ns, name=name, uid=str((raw.get("metadata") or {}).get("uid") or f"{ns}/{name}"),
            labels=labels, node_name=spec.get("nodeName"), host_network=bool(spec.get("hostNetwork")),
            ips=tuple(ips), ports=tuple(ports), phase=str(status.get("phase") or "Running"),
            resource_version=_resource_version(raw), host_ips=tuple(host_ips),
        )


@dataclass(frozen=True, slots=True, weakref_slot=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()
    # A block is a key of the compiler's caches and part of every peer and
    # rule key holding it: hashing tens of thousands of excepts on every
    # lookup would make one large block cost every pass. Computed once.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.cidr, self.excepts)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Peer:
    """One entry of from/to: an ipBlock, or pods chosen by selectors.
    namespace_selector None means "the policy's own namespace"."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PolicyPort:
    protocol: str
    port: int | str | None  # None = every port of the protocol
    end_port: int | None = None


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PolicyRule:
    """peers () = every peer; ports () = every port of every protocol."""

    peers: tuple[Peer, ...]
    ports: tuple[PolicyPort, ...]
    valid: bool = True


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector | None  # None: fail-closed, whole namespace
    policy_types: frozenset[str]
    ingress: tuple[PolicyRule, ...]
    egress: tuple[PolicyRule, ...]
    errors: tuple[str, ...] = field(default=())
    resource_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def fail_closed(self) -> bool:
        return self.pod_selector is None

    def error(self) -> InvalidObjectError | None:
        if not self.errors:
            return None
        return InvalidObjectError("NetworkPolicy", self.namespace, self.name, "; ".join(self.errors))

    def selects(self, pod: Pod) -> bool:
        if pod.namespace != self.namespace:
            return False
        return self.pod_selector is None or self.pod_selector.matches(pod.labels)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "NetworkPolicy":
        ns, name = _meta(raw, "NetworkPolicy", namespaced=True)
        assert ns is not None
        errors: list[str] = []
        spec = raw.get("spec")
        if not isinstance(spec, dict):
            errors.append("spec is missing")
            spec = {}
        unknown = set(spec) - {"podSelector", "policyTypes", "ingress", "egress"}
        if unknown:
            errors.append(f"spec: unknown field(s) {', '.join(sorted(unknown))} (its rules allow nothing: "
                          f"a field this enforcer does not know may narrow them)")

        pod_selector: LabelSelector | None
        if "podSelector" not in spec:
            errors.append("spec.podSelector is required")
            pod_selector = None
        else:
            try:
                pod_selector = LabelSelector.parse(spec["podSelector"], "spec.podSelector")
            except SelectorError as e:
                errors.append(str(e))
                pod_selector = None

        ingress_raw, egress_raw = spec.get("ingress"), spec.get("egress")
        types_raw = spec.get("policyTypes")
        types: frozenset[str]
        if types_raw in (None, []):
            # API server defaulting: Ingress always; Egress when egress rules exist.
            types = _POLICY_TYPES[frozenset([INGRESS] + ([EGRESS] if egress_raw else []))]
        elif (isinstance(types_raw, list) and all(t in (INGRESS, EGRESS) for t in types_raw)
              and len(set(types_raw)) == len(types_raw)):
            types = _POLICY_TYPES[frozenset(types_raw)]
        else:
            errors.append(f"spec.policyTypes: must be a list of Ingress/Egress without repeats, got {types_raw!r}")
            types = _POLICY_TYPES[frozenset([INGRESS, EGRESS])]
            pod_selector = None  # cannot tell what it meant: fail closed

        ingress = _parse_rules(ingress_raw, "spec.ingress", "from", errors)
        egress = _parse_rules(egress_raw, "spec.egress", "to", errors)
        if pod_selector is None:
            ingress, egress = (), ()
        elif unknown:
            nothing = _rules(PolicyRule((), (), valid=False))
            ingress, egress = tuple(nothing for _ in ingress), tuple(nothing for _ in egress)
        return cls(ns, name, pod_selector, types, ingress, egress, tuple(errors), _resource_version(raw))


def _parse_rules(raw: Any, where: str, peers_field: str, errors: list[str]) -> tuple[PolicyRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"{where}: must be a list")
        return ()
    rules = []
    for i, r in enumerate(raw):
        at = f"{where}[{i}]"
        try:
            rules.append(_parse_rule(r, at, peers_field))
        except ValueError as e:
            errors.append(f"{e} (rule ignored: it allows nothing)")
            rules.append(_rules(PolicyRule((), (), valid=False)))
    return tuple(rules)


def _parse_rule(raw: Any, at: str, peers_field: str) -> PolicyRule:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{at}: must be an object")
    unknown = set(raw) - {peers_field, "ports"}
    if unknown:
        raise ValueError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
    peers = tuple(_parse_peer(p, f"{at}.{peers_field}[{j}]") for j, p in enumerate(raw.get(peers_field) or []))
    ports = tuple(_parse_port(p, f"{at}.ports[{j}]") for j, p in enumerate(raw.get("ports") or []))
    return _rules(PolicyRule(peers, ports))


def _parse_network(value: Any, at: str) -> IPNetwork:
    try:
        # Host bits are normalised away, as the API server's sloppy parse
        # and upstream e2e (a /4 built from a pod IP) expect.
        return ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{at}: invalid CIDR {value!r}") from e


def _parse_peer(raw: Any, at: str) -> Peer:
    if not isinstance(raw, dict):
        raise ValueError(f"{at}: must be an object")
    unknown = set(raw) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown:
        raise ValueError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
    if "ipBlock" in raw:
        if "podSelector" in raw or "namespaceSelector" in raw:
            raise ValueError(f"{at}: ipBlock cannot be combined with selectors")
        block = raw["ipBlock"]
        if not isinstance(block, dict) or "cidr" not in block:
            raise ValueError(f"{at}.ipBlock: cidr is required")
        unknown = set(block) - {"cidr", "except"}
        if unknown:
            raise ValueError(f"{at}.ipBlock: unknown field(s) {', '.join(sorted(unknown))}")
        cidr = _parse_network(block["cidr"], f"{at}.ipBlock.cidr")
        excepts = []
        for k, e in enumerate(block.get("except") or []):
            net = _parse_network(e, f"{at}.ipBlock.except[{k}]")
            if net.version != cidr.version or not net.subnet_of(cidr) or net.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
                raise ValueError(f"{at}.ipBlock.except[{k}]: {net} must be strictly within {cidr}")
            excepts.append(net)
        return _peers(Peer(ip_block=_ip_blocks(IPBlock(cidr, tuple(excepts)))))
    if "podSelector" not in raw and "namespaceSelector" not in raw:
        raise ValueError(f"{at}: must set podSelector, namespaceSelector or ipBlock")
    try:
        pod_sel = LabelSelector.parse(raw["podSelector"], f"{at}.podSelector") if "podSelector" in raw else None
        ns_sel = (LabelSelector.parse(raw["namespaceSelector"], f"{at}.namespaceSelector")
                  if "namespaceSelector" in raw else None)
    except SelectorError as e:
        raise ValueError(str(e)) from e
    return _peers(Peer(pod_selector=pod_sel, namespace_selector=ns_sel))


def _parse_port(raw: Any, at: str) -> PolicyPort:
    if not isinstance(raw, dict):
        raise ValueError(f"{at}: must be an object")
    unknown = set(raw) - {"protocol", "port", "endPort"}
    if unknown:
        raise ValueError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
    proto = raw.get("protocol") or "TCP"
    if proto not in PROTOCOLS:
        raise ValueError(f"{at}.protocol: must be TCP, UDP or SCTP, got {proto!r}")
    port = raw.get("port")
    end = raw.get("endPort")
    if isinstance(port, bool):
        raise ValueError(f"{at}.port: invalid {port!r}")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, int):
        if not 1 <= port <= 65535:
            raise ValueError(f"{at}.port: {port} is not in 1-65535")
    elif isinstance(port, str):
        if not _IANA_SVC_NAME.match(port) or "--" in port or not re.search("[a-z]", port):
            raise ValueError(f"{at}.port: {port!r} is not a valid port name")
    elif port is not None:
        raise ValueError(f"{at}.port: invalid {port!r}")
    if end is not None:
        if not isinstance(end, int) or isinstance(end, bool):
            raise ValueError(f"{at}.endPort: must be a number")
        if not isinstance(port, int):
            raise ValueError(f"{at}.endPort: needs a numeric port")
        if not port <= end <= 65535:
            raise ValueError(f"{at}.endPort: {end} must be between port {port} and 65535")
    return _policy_ports(PolicyPort(proto, port, end))


# Values repeated across objects, held once (see Interner).
_POLICY_TYPES = {t: t for t in (frozenset([INGRESS]), frozenset([EGRESS]), frozenset([INGRESS, EGRESS]))}
_container_ports: Interner[ContainerPort] = Interner(lambda p: (p.name, p.port, p.protocol))
_policy_ports: Interner[PolicyPort] = Interner(lambda p: (p.protocol, type(p.port), p.port, p.end_port))
_ip_blocks: Interner[IPBlock] = Interner(lambda b: (b.cidr, b.excepts))
_peers: Interner[Peer] = Interner(lambda p: (p.pod_selector, p.namespace_selector, p.ip_block))
_rules: Interner[PolicyRule] = Interner(lambda r: (r.peers, r.ports, r.valid))


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str | None
    protocol: str
    port: int
    target_port: int | str  # a number or a container port name
    node_port: int | None


@dataclass(frozen=True, slots=True)
class Service:
    """What the enforcer needs of a v1 Service: how traffic reaches its
    backends (type, ports, externalTrafficPolicy) and which pods back it."""

    namespace: str
    name: str
    type: str  # ClusterIP, NodePort, LoadBalancer, ExternalName
    selector: Mapping[str, str] | None  # None: no selector (manual endpoints)
    ports: tuple[ServicePort, ...]
    external_traffic_policy: str  # Cluster or Local
    cluster_ips: tuple[IPAddress, ...] = ()
    resource_version: str = ""
    # Addresses kube-proxy also answers the ports on, on every node:
    # spec.externalIPs, and status.loadBalancer.ingress IPs (those with
    # ipMode Proxy excepted: the load balancer proxies, nothing is DNATed).
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def external(self) -> bool:
        """Reachable from outside the cluster through every node."""
        return self.type in ("NodePort", "LoadBalancer")

    def selects(self, pod: Pod) -> bool:
        return (self.selector is not None and pod.namespace == self.namespace
                and all(pod.labels.get(k) == v for k, v in self.selector.items()))

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "Service":
        ns, name = _meta(raw, "Service", namespaced=True)
        assert ns is not None
        spec = raw.get("spec") or {}
        if not isinstance(spec, dict):
            raise InvalidObjectError("Service", ns, name, "spec must be an object")
        kind = spec.get("type") or "ClusterIP"
        selector = spec.get("selector")
        if selector is not None and not isinstance(selector, dict):
            raise InvalidObjectError("Service", ns, name, "spec.selector must be a map")
        ports = []
        for i, p in enumerate(spec.get("ports") or []):
            try:
                port = int(p["port"])
                target = p.get("targetPort", port)
                target = int(target) if isinstance(target, int) or str(target).isdigit() else str(target)
                proto = p.get("protocol") or "TCP"
                if proto not in PROTOCOLS:
                    raise ValueError(f"protocol {proto!r}")
                node_port = int(p["nodePort"]) if p.get("nodePort") else None
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidObjectError("Service", ns, name, f"spec.ports[{i}]: invalid ({e})") from e
            ports.append(ServicePort(p.get("name"), proto, port, target, node_port))
        ips: list[IPAddress] = []
        for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
            if ip and ip != "None":
                try:
                    ips.append(ipaddress.ip_address(ip))
                except ValueError as e:
                    raise InvalidObjectError("Service", ns, name, f"spec.clusterIPs: invalid address {ip!r}") from e
        etp = spec.get("externalTrafficPolicy") or "Cluster"
        status = raw.get("status") or {}
        lb = (status.get("loadBalancer") or {}) if isinstance(status, dict) else {}
        lb_ips = [e.get("ip") for e in (lb.get("ingress") or []) if isinstance(lb, dict)
                  and isinstance(e, dict) and e.get("ip") and e.get("ipMode") != "Proxy"]
        return cls(ns, name, kind, dict(selector) if selector is not None else None, tuple(ports),
                   "Local" if etp == "Local" else "Cluster", tuple(ips), _resource_version(raw),
                   _addresses(spec.get("externalIPs"), "Service", ns, name, "spec.externalIPs"),
                   _addresses(lb_ips, "Service", ns, name, "status.loadBalancer.ingress"))


def _addresses(raw: Any, kind: str, ns: str | None, name: str, field: str) -> tuple[IPAddress, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidObjectError(kind, ns, name, f"{field}: must be a list")
    out: list[IPAddress] = []
    for ip in raw:
        try:
            addr = ipaddress.ip_address(ip)
        except (ValueError, TypeError) as e:
            raise InvalidObjectError(kind, ns, name, f"{field}: invalid address {ip!r}") from e
        if addr not in out:
            out.append(addr)
    return tuple(out)


ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice. Conditions as the API defines
    their absence (and kube-proxy reads them): ready and serving absent
    mean true, terminating absent means false."""

    addresses: tuple[IPAddress, ...]  # () in an FQDN slice
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    target_pod: str | None = None  # "ns/name" when targetRef is a Pod


@dataclass(frozen=True, slots=True)
class SlicePort:
    name: str | None
    port: int | None  # None: every port (the slice does not restrict them)
    protocol: str


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice: some of a Service's backends
    (the Service it belongs to is named by its kubernetes.io/service-name
    label; a slice without it belongs to none)."""

    namespace: str
    name: str
    service_name: str | None
    address_type: str  # IPv4, IPv6 or FQDN
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]
    resource_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str | None:
        return f"{self.namespace}/{self.service_name}" if self.service_name else None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "EndpointSlice":
        ns, name = _meta(raw, "EndpointSlice", namespaced=True)
        assert ns is not None
        labels = _labels(raw, "EndpointSlice", ns, name)

        def invalid(reason: str) -> InvalidObjectError:
            return InvalidObjectError("EndpointSlice", ns, name, reason)

        address_type = raw.get("addressType")
        if address_type not in ADDRESS_TYPES:
            raise invalid(f"addressType: must be one of {', '.join(ADDRESS_TYPES)}, got {address_type!r}")
        # The API sends null for a slice without endpoints (or ports).
        raw_endpoints = [] if raw.get("endpoints") is None else raw["endpoints"]
        raw_ports = [] if raw.get("ports") is None else raw["ports"]
        if not isinstance(raw_endpoints, list) or not isinstance(raw_ports, list):
            raise invalid("endpoints and ports must be lists")
        endpoints = tuple(_parse_slice_endpoint(e, f"endpoints[{i}]", address_type, ns, invalid)
                          for i, e in enumerate(raw_endpoints))
        ports = tuple(_parse_slice_port(p, f"ports[{i}]", invalid) for i, p in enumerate(raw_ports))
        return cls(ns, name, labels.get(SERVICE_NAME_LABEL) or None, address_type, endpoints, ports,
                   _resource_version(raw))


def _parse_slice_endpoint(raw: Any, at: str, address_type: str, namespace: str,
                          invalid: Callable[[str], InvalidObjectError]) -> SliceEndpoint:
    if not isinstance(raw, dict):
        raise invalid(f"{at}: must be an object")
    raw_addresses = raw.get("addresses")
    if not isinstance(raw_addresses, list):
        raise invalid(f"{at}.addresses: must be a list")
    addresses: list[IPAddress] = []
    if address_type != "FQDN":
        version = 4 if address_type == "IPv4" else 6
        for a in raw_addresses:
            try:
                addr = ipaddress.ip_address(a)
            except (ValueError, TypeError) as e:
                raise invalid(f"{at}.addresses: invalid address {a!r}") from e
            if addr.version != version:
                raise invalid(f"{at}.addresses: {a} is not an {address_type} address")
            if addr not in addresses:
                addresses.append(addr)
    conditions = raw.get("conditions")
    conditions = {} if conditions is None else conditions
    if not isinstance(conditions, dict):
        raise invalid(f"{at}.conditions: must be an object")
    flags: dict[str, bool] = {}
    for cond in ("ready", "serving", "terminating"):
        value = conditions.get(cond)
        if value is not None and not isinstance(value, bool):
            raise invalid(f"{at}.conditions.{cond}: must be true or false, got {value!r}")
        flags[cond] = value if value is not None else cond != "terminating"
    node_name = raw.get("nodeName")
    if node_name is not None and not isinstance(node_name, str):
        raise invalid(f"{at}.nodeName: must be a string")
    ref = raw.get("targetRef")
    if ref is not None and not isinstance(ref, dict):
        raise invalid(f"{at}.targetRef: must be an object")
    target_pod = None
    if ref and ref.get("kind") == "Pod" and isinstance(ref.get("name"), str) and ref["name"]:
        target_pod = f"{ref.get('namespace') or namespace}/{ref['name']}"
    return SliceEndpoint(tuple(addresses), flags["ready"], flags["serving"], flags["terminating"],
                         node_name or None, target_pod)


def _parse_slice_port(raw: Any, at: str, invalid: Callable[[str], InvalidObjectError]) -> SlicePort:
    if not isinstance(raw, dict):
        raise invalid(f"{at}: must be an object")
    port = raw.get("port")
    # The API server does not range-check it; kube-proxy ignores 0. Outside
    # 1-65535 no packet can carry it: the slice is reported, not guessed at.
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
        raise invalid(f"{at}.port: {port!r} is not a port number (1-65535)")
    proto = raw.get("protocol") or "TCP"
    if proto not in PROTOCOLS:
        raise invalid(f"{at}.protocol: unsupported {proto!r}")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid(f"{at}.name: must be a string")
    return SlicePort(name or None, port, proto)


def parse_object(raw: Mapping[str, Any]) -> Namespace | Pod | NetworkPolicy | Service | EndpointSlice:
    kind = raw.get("kind")
    if kind == "Service":
        return Service.parse(raw)
    if kind == "EndpointSlice":
        _check_api_version(raw, "EndpointSlice", "discovery.k8s.io/v1")
        return EndpointSlice.parse(raw)
    if kind == "Namespace":
        return Namespace.parse(raw)
    if kind == "Pod":
        return Pod.parse(raw)
    if kind == "NetworkPolicy":
        _check_api_version(raw, "NetworkPolicy", "networking.k8s.io/v1")
        return NetworkPolicy.parse(raw)
    raise InvalidObjectError(str(kind or "<no kind>"), None, (raw.get("metadata") or {}).get("name", "<unnamed>"),
                             "unsupported kind")


def _check_api_version(raw: Mapping[str, Any], kind: str, supported: str) -> None:
    """Another version of the kind has other fields: never read it as this one."""
    api = raw.get("apiVersion")
    if api not in (None, supported):
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        raise InvalidObjectError(kind, meta.get("namespace"), meta.get("name", "<unnamed>"),
                                 f"unsupported apiVersion {api!r}")
