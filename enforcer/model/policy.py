"""networking.k8s.io/v1 NetworkPolicy, parsed and validated from API dicts.

Invalid input never widens what is allowed:
- a policy whose rule is invalid keeps its other rules; the invalid rule
  allows nothing (a rule's peers and ports narrow each other, so dropping a
  peer or a port entry would widen it: the whole rule goes);
- a policy whose pod selector or policy types cannot be read is kept as
  *fail-closed*: it isolates every pod of its namespace in the directions it
  names (both when unreadable) and allows nothing;
- a policy with a spec field this enforcer does not know isolates what it
  selects and allows nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidObjectError
from .meta import IANA_SVC_NAME, PROTOCOLS, IPNetwork, audit_of, meta_of, resource_version_of
from .pod import Pod
from .selectors import Interner, LabelSelector, SelectorError

INGRESS = "Ingress"
EGRESS = "Egress"


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
    audit: bool = False  # annotated for audit mode (meta.AUDIT_ANNOTATION): judged, not enforced

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
    def parse(cls, raw: Mapping[str, Any]) -> NetworkPolicy:
        ns, name = meta_of(raw, "NetworkPolicy", namespaced=True)
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
        audit, audit_error = audit_of(raw)
        if audit_error:
            errors.append(audit_error)
        return cls(ns, name, pod_selector, types, ingress, egress, tuple(errors), resource_version_of(raw), audit)


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
        if not IANA_SVC_NAME.match(port) or "--" in port or not re.search("[a-z]", port):
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
_policy_ports: Interner[PolicyPort] = Interner(lambda p: (p.protocol, type(p.port), p.port, p.end_port))
_ip_blocks: Interner[IPBlock] = Interner(lambda b: (b.cidr, b.excepts))
_peers: Interner[Peer] = Interner(lambda p: (p.pod_selector, p.namespace_selector, p.ip_block))
_rules: Interner[PolicyRule] = Interner(lambda r: (r.peers, r.ports, r.valid))
