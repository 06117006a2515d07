"""policy.networking.k8s.io ClusterNetworkPolicy (v1alpha2, bundle v0.2.0),
and the v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy (bundle
v0.1.7) converted to it.

The directory source has no API server, so the CRD's validation (OpenAPI
schema and CEL rules, experimental channel) is replicated here: an object
that does not validate raises InvalidObjectError naming it and the field,
and is applied not at all (the store keeps its last valid version).

What validates but this enforcer cannot enforce as written fails closed, as
the API's doc comments say, and is reported (ClusterNetworkPolicy.warnings):
- a peer or a protocols entry with no field this enforcer knows (a newer
  CRD): an Accept rule matches nothing; a Deny or Pass rule becomes
  "deny everything" (ClusterRule.match_all_peers);
- domainNames peers (they need DNS interception, which nothing here does):
  dropped from an Accept rule (the rule matches nothing when they were all
  it had); a Deny or Pass rule holding one denies everything.
Warnings name the rule: `egress rule 2 ("name")`, counted from 1.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidObjectError
from .meta import IPNetwork, audit_of, meta_of, resource_version_of
from .policy import PolicyPort
from .selectors import LabelSelector, SelectorError

ADMIN, BASELINE = "Admin", "Baseline"
ACCEPT, DENY, PASS = "Accept", "Deny", "Pass"

API_VERSION = "policy.networking.k8s.io/v1alpha2"
API_VERSION_V1ALPHA1 = "policy.networking.k8s.io/v1alpha1"
CNP_KIND = "ClusterNetworkPolicy"
ANP_KIND = "AdminNetworkPolicy"
BANP_KIND = "BaselineAdminNetworkPolicy"
KINDS = (CNP_KIND, ANP_KIND, BANP_KIND)
BANP_PRIORITY = 1000  # a BaselineAdminNetworkPolicy is alone in its tier: any priority would do

MAX_PRIORITY = 1000
MAX_RULE_NAME = 100
MAX_CIDR_LENGTH = 43
NAMED_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")

# upstream's pattern, `A-z` typo included (it also admits [\]^_ and the backtick)
_DOMAIN_NAME = re.compile(
    r"^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$")
# isCIDR (netip.ParsePrefix): an address, a slash and a decimal length without leading zeros
_CIDR_SUFFIX = re.compile(r"^[^/\s]+/(0|[1-9][0-9]{0,2})$")


@dataclass(frozen=True, slots=True)
class ClusterPeer:
    """One from/to entry, exactly one kind."""

    kind: str  # "namespaces" | "pods" | "networks" | "nodes"
    namespace_selector: LabelSelector | None = None  # namespaces; pods.namespaceSelector (omitted: selects all)
    pod_selector: LabelSelector | None = None  # pods.podSelector
    networks: tuple[IPNetwork, ...] = ()  # networks, host bits normalised away
    node_selector: LabelSelector | None = None  # nodes


@dataclass(frozen=True, slots=True)
class ClusterRule:
    """peers () and not match_all_peers: the rule matches nothing.
    ports () = every protocol (ICMP too); a number n is PolicyPort(P, n), a
    range PolicyPort(P, start, end) (end inclusive), a named port x three
    entries PolicyPort(P, x) for TCP, UDP and SCTP."""

    name: str
    action: str  # Accept | Deny | Pass
    peers: tuple[ClusterPeer, ...]
    ports: tuple[PolicyPort, ...]
    match_all_peers: bool = False  # fail-closed "deny everything": then action == DENY, ports == ()


@dataclass(frozen=True, slots=True)
class ClusterNetworkPolicy:
    name: str
    tier: str  # ADMIN | BASELINE
    priority: int  # 0..1000
    subject_namespaces: LabelSelector | None  # subject.namespaces (exactly one of the two subjects is set)
    subject_pod_namespaces: LabelSelector | None  # subject.pods.namespaceSelector (omitted: empty selector)
    subject_pods: LabelSelector | None  # subject.pods.podSelector
    ingress: tuple[ClusterRule, ...]
    egress: tuple[ClusterRule, ...]
    warnings: tuple[str, ...] = ()  # applied, but reported
    source_kind: str = CNP_KIND  # or AdminNetworkPolicy / BaselineAdminNetworkPolicy (converted)
    resource_version: str = ""
    audit: bool = False  # annotated for audit mode (meta.AUDIT_ANNOTATION): judged, not enforced

    @property
    def key(self) -> str:
        """Unique in one table whatever kind the policy came as."""
        return self.name if self.source_kind == CNP_KIND else f"{self.source_kind}/{self.name}"

    @property
    def display(self) -> str:
        return f"{self.source_kind} {self.name}"

    def selects(self, pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
        if self.subject_namespaces is not None:
            return self.subject_namespaces.matches(namespace_labels)
        ns_sel = self.subject_pod_namespaces
        pod_sel = self.subject_pods
        return ((ns_sel is None or ns_sel.matches(namespace_labels))
                and (pod_sel is None or pod_sel.matches(pod_labels)))

    def error(self) -> InvalidObjectError | None:
        if not self.warnings:
            return None
        return InvalidObjectError(self.source_kind, None, self.name, "; ".join(self.warnings))

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ClusterNetworkPolicy:
        """A v1alpha2 ClusterNetworkPolicy; raises InvalidObjectError when it
        does not validate."""
        return _parse(raw, _CNP)


def parse_admin_network_policy(raw: Mapping[str, Any]) -> ClusterNetworkPolicy:
    """A v1alpha1 AdminNetworkPolicy as ClusterNetworkPolicy: tier Admin, its
    priority; Allow is Accept; ports converted (see _parse_ports_v1alpha1)."""
    return _parse(raw, _ANP)


def parse_baseline_admin_network_policy(raw: Mapping[str, Any]) -> ClusterNetworkPolicy:
    """A v1alpha1 BaselineAdminNetworkPolicy (the singleton named "default")
    as ClusterNetworkPolicy: tier Baseline, priority 1000."""
    return _parse(raw, _BANP)


# --------------------------------------------------------------------------
# The three kinds differ in a few places only: how they are told apart


@dataclass(frozen=True)
class _Dialect:
    kind: str
    actions: Mapping[str, str]  # as written -> ACCEPT/DENY/PASS
    max_rules: int
    max_peers: int
    max_ports: int
    ports_field: str  # "protocols" (v1alpha2) or "ports" (v1alpha1)
    egress_peers: frozenset[str]
    pods_namespace_selector_required: bool
    has_tier: bool
    has_priority: bool


_INGRESS_PEERS = frozenset({"namespaces", "pods"})
_CNP = _Dialect(CNP_KIND, {"Accept": ACCEPT, "Deny": DENY, "Pass": PASS}, 25, 25, 25, "protocols",
                frozenset({"namespaces", "pods", "networks", "nodes", "domainNames"}), False, True, True)
_ANP = _Dialect(ANP_KIND, {"Allow": ACCEPT, "Deny": DENY, "Pass": PASS}, 100, 100, 100, "ports",
                frozenset({"namespaces", "pods", "networks", "nodes", "domainNames"}), True, False, True)
_BANP = _Dialect(BANP_KIND, {"Allow": ACCEPT, "Deny": DENY}, 100, 100, 100, "ports",
                 frozenset({"namespaces", "pods", "networks", "nodes"}), True, False, False)


class _Invalid(ValueError):
    """The object does not validate; the message names the field."""


class _FailClosed(Exception):
    """A peer or port entry with no field this enforcer knows."""


def _parse(raw: Mapping[str, Any], d: _Dialect) -> ClusterNetworkPolicy:
    _, name = meta_of(raw, d.kind, namespaced=False)
    try:
        return _parse_spec(raw, name, d)
    except (_Invalid, SelectorError) as e:
        raise InvalidObjectError(d.kind, None, name, str(e)) from e


def _fields(raw: Any, at: str, known: frozenset[str] | set[str] | None = None) -> dict[str, Any]:
    """An object's fields, null ones left out (the API server prunes nulls
    of non-nullable fields); with `known`, any other field is invalid."""
    if not isinstance(raw, dict):
        raise _Invalid(f"{at}: must be an object, got {_type(raw)}")
    out = {k: v for k, v in raw.items() if v is not None}
    if known is not None:
        unknown = set(out) - known
        if unknown:
            raise _Invalid(f"{at}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    return out


def _one_field(raw: Any, at: str) -> tuple[str, Any]:
    """The one field a one-of object (a peer, a protocols entry) sets."""
    fields = _fields(raw, at)
    if len(fields) != 1:
        raise _Invalid(f"{at}: must set exactly one field (got {len(fields)}: {', '.join(sorted(fields))})")
    (kind, value), = fields.items()
    return kind, value


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _list(raw: Any, at: str, min_items: int, max_items: int) -> list[Any]:
    if not isinstance(raw, list):
        raise _Invalid(f"{at}: must be a list, got {_type(raw)}")
    if not min_items <= len(raw) <= max_items:
        want = f"at most {max_items}" if min_items == 0 else f"{min_items} to {max_items}"
        raise _Invalid(f"{at}: must have {want} entries, got {len(raw)}")
    return raw


def _int(raw: Any, at: str, lo: int, hi: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _Invalid(f"{at}: must be an integer, got {raw!r}")
    if not lo <= raw <= hi:
        raise _Invalid(f"{at}: {raw} is not in {lo}-{hi}")
    return raw


def _unique(items: list[Any], at: str) -> None:
    seen: set[Any] = set()
    for i, v in enumerate(items):
        if v in seen:
            raise _Invalid(f"{at}[{i}]: duplicate entry {v!r} (the list is a set)")
        seen.add(v)


def _parse_spec(raw: Mapping[str, Any], name: str, d: _Dialect) -> ClusterNetworkPolicy:
    if d is _BANP and name != "default":
        raise _Invalid('metadata.name: only one BaselineAdminNetworkPolicy, named "default", can exist '
                       f'(got {name!r})')
    if "spec" not in raw or raw["spec"] is None:
        raise _Invalid("spec is required")
    known = {"subject", "ingress", "egress"} | ({"tier"} if d.has_tier else set()) \
        | ({"priority"} if d.has_priority else set())
    spec = _fields(raw["spec"], "spec", frozenset(known))
    for required in sorted(known - {"ingress", "egress"}):
        if required not in spec:
            raise _Invalid(f"spec.{required} is required")
    if d.has_tier:
        tier = spec["tier"]
        if tier not in (ADMIN, BASELINE):
            raise _Invalid(f"spec.tier: must be Admin or Baseline, got {tier!r}")
    else:
        tier = BASELINE if d is _BANP else ADMIN
    priority = _int(spec["priority"], "spec.priority", 0, MAX_PRIORITY) if d.has_priority else BANP_PRIORITY

    subject = _fields(spec["subject"], "spec.subject", frozenset({"namespaces", "pods"}))
    if len(subject) != 1:
        raise _Invalid(f"spec.subject: must set exactly one of namespaces, pods (got {len(subject)})")
    subject_namespaces = subject_pod_namespaces = subject_pods = None
    if "namespaces" in subject:
        subject_namespaces = LabelSelector.parse(subject["namespaces"], "spec.subject.namespaces")
    else:
        subject_pod_namespaces, subject_pods = _namespaced_pod(subject["pods"], "spec.subject.pods", d)

    warnings: list[str] = []
    rules: dict[str, tuple[ClusterRule, ...]] = {}
    for direction, peers_field, peer_fields in (("ingress", "from", _INGRESS_PEERS),
                                                ("egress", "to", d.egress_peers)):
        raw_rules = _list(spec.get(direction, []), f"spec.{direction}", 0, d.max_rules)
        rules[direction] = tuple(_parse_rule(r, direction, i, peers_field, peer_fields, d, warnings)
                                 for i, r in enumerate(raw_rules))
    audit, audit_error = audit_of(raw)
    if audit_error:
        warnings.append(audit_error)
    return ClusterNetworkPolicy(
        name=name, tier=tier, priority=priority, subject_namespaces=subject_namespaces,
        subject_pod_namespaces=subject_pod_namespaces, subject_pods=subject_pods,
        ingress=rules["ingress"], egress=rules["egress"], warnings=tuple(warnings), source_kind=d.kind,
        resource_version=resource_version_of(raw), audit=audit)


def _namespaced_pod(raw: Any, at: str, d: _Dialect) -> tuple[LabelSelector, LabelSelector]:
    pods = _fields(raw, at, frozenset({"namespaceSelector", "podSelector"}))
    if "podSelector" not in pods:
        raise _Invalid(f"{at}.podSelector is required")
    if d.pods_namespace_selector_required and "namespaceSelector" not in pods:
        raise _Invalid(f"{at}.namespaceSelector is required")
    return (LabelSelector.parse(pods.get("namespaceSelector"), f"{at}.namespaceSelector"),
            LabelSelector.parse(pods["podSelector"], f"{at}.podSelector"))


def _selector(raw: Any, at: str, d: _Dialect) -> LabelSelector:
    """A LabelSelector; a v1alpha1 object from before v0.1.5 (2024-03) has
    namespaces: {namespaceSelector, sameLabels, notSameLabels} instead, which
    no current CRD accepts."""
    if d is not _CNP and isinstance(raw, dict) and {"sameLabels", "notSameLabels", "namespaceSelector"} & set(raw):
        raise _Invalid(f"{at}: namespaceSelector/sameLabels/notSameLabels are the AdminNetworkPolicy API "
                       "before v0.1.5 (no longer served); write a label selector (namespaces: {matchLabels: ...})")
    return LabelSelector.parse(raw, at)


def _rule_label(direction: str, i: int, name: str) -> str:
    return f'{direction} rule {i + 1}' + (f' ("{name}")' if name else "")


def _parse_rule(raw: Any, direction: str, i: int, peers_field: str, peer_fields: frozenset[str], d: _Dialect,
                warnings: list[str]) -> ClusterRule:
    at = f"spec.{direction}[{i}]"
    rule = _fields(raw, at, frozenset({"name", "action", peers_field, d.ports_field}))
    name = rule.get("name", "")
    if not isinstance(name, str):
        raise _Invalid(f"{at}.name: must be a string, got {_type(name)}")
    if len(name) > MAX_RULE_NAME:
        raise _Invalid(f"{at}.name: must be at most {MAX_RULE_NAME} characters, got {len(name)}")
    if "action" not in rule:
        raise _Invalid(f"{at}.action is required")
    action = d.actions.get(rule["action"]) if isinstance(rule["action"], str) else None
    if action is None:
        raise _Invalid(f"{at}.action: must be one of {', '.join(d.actions)}, got {rule['action']!r}")
    if peers_field not in rule:
        raise _Invalid(f"{at}.{peers_field} is required")
    raw_peers = _list(rule[peers_field], f"{at}.{peers_field}", 1, d.max_peers)
    label = _rule_label(direction, i, name)

    peers: list[ClusterPeer] = []
    unknown_peers: list[str] = []
    domain_peers = 0
    peer_kinds: set[str] = set()
    for j, p in enumerate(raw_peers):
        pat = f"{at}.{peers_field}[{j}]"
        kind, value = _one_field(p, pat)
        if kind not in peer_fields:
            unknown_peers.append(f"{peers_field}[{j}] ({kind})")
            continue
        peer_kinds.add(kind)
        if kind == "domainNames":
            names = _list(value, f"{pat}.domainNames", 1, 25)
            for k, n in enumerate(names):
                if not isinstance(n, str) or not _DOMAIN_NAME.fullmatch(n):
                    raise _Invalid(f"{pat}.domainNames[{k}]: {n!r} is not a domain name")
            _unique(names, f"{pat}.domainNames")
            domain_peers += 1
        else:
            peers.append(_parse_peer(kind, value, pat, d))

    ports, unknown_ports = _parse_ports(rule, at, d)
    if (direction == "egress" and peer_kinds & {"networks", "nodes", "domainNames"}
            and any(p for p in ports if isinstance(p.port, str))):
        named = "namedPort" if d is not _CNP else "destinationNamedPort"
        raise _Invalid(f"{at}: networks/nodes/domainNames peers cannot be combined with {named} "
                       f"(they have no named ports)")

    deny_all = ClusterRule(name, DENY, (), (), match_all_peers=True)
    what = "it matches nothing" if action == ACCEPT else f"this {action} rule denies all traffic"
    failed = False
    if unknown_peers:
        warnings.append(f"{label}: peer(s) {', '.join(unknown_peers)} with no field this enforcer knows "
                        f"(a newer API?); fail closed: {what}")
        failed = True
    if unknown_ports:
        warnings.append(f"{label}: {d.ports_field} entr(ies) {', '.join(unknown_ports)} with no field this "
                        f"enforcer knows (a newer API?); fail closed: {what}")
        failed = True
    if domain_peers:
        if action == ACCEPT:
            rest = "it matches nothing" if not peers else "the rule's other peers stay"
            warnings.append(f"{label}: domainNames peers are not supported (they need DNS interception); "
                            f"dropped, {rest}")
        else:
            warnings.append(f"{label}: domainNames peers are not supported (they need DNS interception); "
                            f"fail closed: {what}")
            failed = True
    if failed:
        return deny_all if action != ACCEPT else ClusterRule(name, ACCEPT, (), ())
    return ClusterRule(name, action, tuple(peers), ports)


def _parse_peer(kind: str, value: Any, at: str, d: _Dialect) -> ClusterPeer:
    if kind == "namespaces":
        return ClusterPeer("namespaces", namespace_selector=_selector(value, f"{at}.namespaces", d))
    if kind == "pods":
        ns_sel, pod_sel = _namespaced_pod(value, f"{at}.pods", d)
        return ClusterPeer("pods", namespace_selector=ns_sel, pod_selector=pod_sel)
    if kind == "nodes":
        return ClusterPeer("nodes", node_selector=LabelSelector.parse(value, f"{at}.nodes"))
    assert kind == "networks"
    cidrs = _list(value, f"{at}.networks", 1, 25)
    nets: list[IPNetwork] = []
    for k, c in enumerate(cidrs):
        cat = f"{at}.networks[{k}]"
        if not isinstance(c, str):
            raise _Invalid(f"{cat}: must be a string, got {_type(c)}")
        if len(c) > MAX_CIDR_LENGTH:
            raise _Invalid(f"{cat}: must be at most {MAX_CIDR_LENGTH} characters, got {len(c)}")
        if not _CIDR_SUFFIX.fullmatch(c) or "%" in c:
            raise _Invalid(f"{cat}: {c!r} is not a CIDR (address/length)")
        try:
            net = ipaddress.ip_network(c, strict=False)  # isCIDR accepts host bits: normalised away
        except ValueError as e:
            raise _Invalid(f"{cat}: {c!r} is not a CIDR") from e
        if net not in nets:
            nets.append(net)
    _unique(cidrs, f"{at}.networks")
    return ClusterPeer("networks", networks=tuple(nets))


def _parse_ports(rule: dict[str, Any], at: str, d: _Dialect) -> tuple[tuple[PolicyPort, ...], list[str]]:
    """(ports, the entries with no field this enforcer knows)."""
    if d.ports_field not in rule:
        return (), []
    pat = f"{at}.{d.ports_field}"
    entries = _list(rule[d.ports_field], pat, 1, d.max_ports)
    known = (frozenset({"tcp", "udp", "sctp", "destinationNamedPort"}) if d is _CNP
             else frozenset({"portNumber", "portRange", "namedPort"}))
    ports: list[PolicyPort] = []
    unknown: list[str] = []
    for j, e in enumerate(entries):
        eat = f"{pat}[{j}]"
        kind, value = _one_field(e, eat)
        if kind not in known:
            unknown.append(f"[{j}] ({kind})")
            continue
        new = _port_v1alpha2(kind, value, f"{eat}.{kind}") if d is _CNP else _port_v1alpha1(kind, value,
                                                                                             f"{eat}.{kind}")
        ports.extend(p for p in new if p not in ports)
    return tuple(ports), unknown


def _named(value: Any, at: str) -> list[PolicyPort]:
    if not isinstance(value, str):
        raise _Invalid(f"{at}: must be a string, got {_type(value)}")
    if not value:
        raise _Invalid(f"{at}: must not be empty (no container port has an empty name)")
    return [PolicyPort(p, value) for p in NAMED_PORT_PROTOCOLS]


def _port_v1alpha2(kind: str, value: Any, at: str) -> list[PolicyPort]:
    if kind == "destinationNamedPort":
        return _named(value, at)
    proto = kind.upper()
    fields = _fields(value, at, frozenset({"destinationPort"}))
    if "destinationPort" not in fields:
        raise _Invalid(f"{at}.destinationPort is required (all ports: range 1-65535)")
    dat = f"{at}.destinationPort"
    dest = _fields(fields["destinationPort"], dat, frozenset({"number", "range"}))
    if len(dest) != 1:
        raise _Invalid(f"{dat}: must set exactly one of number, range (got {len(dest)})")
    if "number" in dest:
        return [PolicyPort(proto, _int(dest["number"], f"{dat}.number", 1, 65535))]
    rat = f"{dat}.range"
    rng = _fields(dest["range"], rat, frozenset({"start", "end"}))
    for f in ("start", "end"):
        if f not in rng:
            raise _Invalid(f"{rat}.{f} is required")
    start, end = _int(rng["start"], f"{rat}.start", 1, 65535), _int(rng["end"], f"{rat}.end", 1, 65535)
    if not start < end:
        raise _Invalid(f"{rat}: start ({start}) must be less than end ({end})")
    return [PolicyPort(proto, start, end)]


def _protocol_v1alpha1(fields: dict[str, Any], at: str) -> str:
    proto = fields.get("protocol") or "TCP"  # the CRD's default
    if proto not in NAMED_PORT_PROTOCOLS:
        raise _Invalid(f"{at}.protocol: must be TCP, UDP or SCTP, got {proto!r}")
    return str(proto)


def _port_v1alpha1(kind: str, value: Any, at: str) -> list[PolicyPort]:
    if kind == "namedPort":
        return _named(value, at)
    if kind == "portNumber":
        fields = _fields(value, at, frozenset({"protocol", "port"}))
        if "port" not in fields:
            raise _Invalid(f"{at}.port is required")
        return [PolicyPort(_protocol_v1alpha1(fields, at), _int(fields["port"], f"{at}.port", 1, 65535))]
    fields = _fields(value, at, frozenset({"protocol", "start", "end"}))
    for f in ("start", "end"):
        if f not in fields:
            raise _Invalid(f"{at}.{f} is required")
    proto = _protocol_v1alpha1(fields, at)
    start, end = _int(fields["start"], f"{at}.start", 1, 65535), _int(fields["end"], f"{at}.end", 1, 65535)
    if start > end:
        # v1alpha1 has no CEL rule here; an empty range cannot be written as
        # a v1alpha2 port, and dropping the entry would widen the rule.
        raise _Invalid(f"{at}: start ({start}) must not be greater than end ({end})")
    return [PolicyPort(proto, start)] if start == end else [PolicyPort(proto, start, end)]
