"""ClusterNetworkPolicy (v1alpha2) as the CRD validates it (OpenAPI + CEL,
experimental channel), fail-closed peers and protocols, domainNames; the
v1alpha1 AdminNetworkPolicy/BaselineAdminNetworkPolicy conversion; Node;
the store keeping a cluster policy's last valid version in every path."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
from typing import Any

import pytest

from enforcer.errors import InvalidObjectError
from enforcer.model import parse_object
from enforcer.model.clusterpolicy import (
    ACCEPT,
    ADMIN,
    BASELINE,
    DENY,
    PASS,
    ClusterNetworkPolicy,
    ClusterPeer,
    ClusterRule,
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
)
from enforcer.model.node import Node
from enforcer.model.policy import PolicyPort
from enforcer.model.selectors import LabelSelector
from enforcer.model.state import ClusterStore, parse_for_store

V2 = "policy.networking.k8s.io/v1alpha2"
V1 = "policy.networking.k8s.io/v1alpha1"
ALL = LabelSelector()


def sel(**labels: str) -> LabelSelector:
    return LabelSelector.parse({"matchLabels": labels}, "test")


def cnp(spec: dict[str, Any] | None = None, name: str = "p", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}}
    base.update(spec or {})
    base.update(fields)
    return {"apiVersion": V2, "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": base}


def egress(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return cnp({"egress": list(rules), **spec})


def ingress(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return cnp({"ingress": list(rules), **spec})


def rule(action: str = "Deny", peers: list[Any] | None = None, peers_field: str = "to", **extra: Any) -> dict[str, Any]:
    return {"action": action, peers_field: peers if peers is not None else [{"namespaces": {}}], **extra}


def tcp(n: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"number": n}}}


def tcp_range(s: int, e: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"range": {"start": s, "end": e}}}}


def networks(*cidrs: str) -> dict[str, Any]:
    return {"networks": list(cidrs)}


# --------------------------------------------------------------------------
# Valid objects, parsed


def test_a_full_policy_parses_to_the_model():
    raw = cnp({
        "tier": "Baseline", "priority": 1000,
        "subject": {"pods": {"podSelector": {"matchLabels": {"app": "web"}}}},
        "ingress": [{"name": "from-monitoring", "action": "Accept",
                     "from": [{"namespaces": {"matchLabels": {"team": "mon"}}},
                              {"pods": {"namespaceSelector": {"matchLabels": {"team": "a"}},
                                        "podSelector": {"matchLabels": {"app": "db"}}}}],
                     "protocols": [tcp(80), {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}},
                                   {"sctp": {"destinationPort": {"number": 9}}}, {"destinationNamedPort": "http"}]}],
        "egress": [{"action": "Pass", "to": [networks("10.0.0.1/8", "fd00::/8"), {"nodes": {}},
                                             {"pods": {"podSelector": {}}}]},
                   {"action": "Deny", "to": [networks("0.0.0.0/0")]}],
    })
    raw["metadata"]["resourceVersion"] = "42"
    pol = parse_object(raw)
    assert pol == ClusterNetworkPolicy(
        name="p", tier=BASELINE, priority=1000, subject_namespaces=None, subject_pod_namespaces=ALL,
        subject_pods=sel(app="web"),
        ingress=(ClusterRule("from-monitoring", ACCEPT, (
            ClusterPeer("namespaces", namespace_selector=sel(team="mon")),
            ClusterPeer("pods", namespace_selector=sel(team="a"), pod_selector=sel(app="db"))), (
            PolicyPort("TCP", 80), PolicyPort("UDP", 1000, 2000), PolicyPort("SCTP", 9),
            PolicyPort("TCP", "http"), PolicyPort("UDP", "http"), PolicyPort("SCTP", "http"))),),
        egress=(ClusterRule("", PASS, (
            ClusterPeer("networks", networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))),
            ClusterPeer("nodes", node_selector=ALL),
            ClusterPeer("pods", namespace_selector=ALL, pod_selector=ALL)), ()),
            ClusterRule("", DENY, (ClusterPeer("networks", networks=(ipaddress.ip_network("0.0.0.0/0"),)),), ())),
        resource_version="42")
    assert pol.key == "p" and pol.display == "ClusterNetworkPolicy p" and pol.error() is None


@pytest.mark.parametrize("name, raw", [
    ("priority 0", cnp(priority=0)),
    ("priority 1000", cnp(priority=1000)),
    ("tier Baseline", cnp(tier="Baseline")),
    ("no rules", cnp()),
    ("empty rule lists", cnp(ingress=[], egress=[])),
    ("25 ingress rules", ingress(*[rule(peers_field="from")] * 25)),
    ("25 egress rules", egress(*[rule()] * 25)),
    ("25 peers", egress(rule(peers=[{"namespaces": {}}] * 25))),
    ("25 protocols", egress(rule(protocols=[tcp(n) for n in range(1, 26)]))),
    ("25 networks", egress(rule(peers=[networks(*[f"10.0.{i}.0/24" for i in range(25)])]))),
    ("rule name of 100", egress(rule(name="n" * 100))),
    ("port 1 and 65535", egress(rule(protocols=[tcp(1), tcp(65535)]))),
    ("range 1-65535", egress(rule(protocols=[tcp_range(1, 65535)]))),
    ("CIDR with host bits", egress(rule(peers=[networks("10.1.2.3/8")]))),
    ("CIDR of 43 characters", egress(rule(peers=[networks("fd00:1111:2222:3333:4444:5555:6666:7777/128")]))),
    ("v4 and v6 mixed", egress(rule(peers=[networks("10.0.0.0/8", "::/0")]))),
    ("named port with pods peers", egress(rule(peers=[{"pods": {"podSelector": {}}}],
                                               protocols=[{"destinationNamedPort": "dns"}]))),
    ("named port on ingress", ingress(rule(peers_field="from", protocols=[{"destinationNamedPort": "dns"}]))),
    ("pods without namespaceSelector", cnp(subject={"pods": {"podSelector": {}}})),
    ("null fields are absent", cnp(subject={"namespaces": {}, "pods": None}, ingress=None)),
    ("nodes peer", egress(rule(peers=[{"nodes": {"matchLabels": {"role": "infra"}}}]))),
    ("selector expressions", cnp(subject={"namespaces": {"matchExpressions": [
        {"key": "team", "operator": "In", "values": ["a", "b"]}]}})),
    ("status", {**cnp(), "status": {"conditions": []}}),
    ("no apiVersion (read as v1alpha2)", {k: v for k, v in cnp().items() if k != "apiVersion"}),
])
def test_valid(name, raw):
    pol = parse_object(raw)
    assert isinstance(pol, ClusterNetworkPolicy) and not pol.warnings, name


def test_range_end_is_inclusive_and_networks_normalised_and_deduplicated():
    pol = parse_object(egress(rule(peers=[networks("10.1.2.3/8", "10.0.0.0/8", "fd00::1/64")],
                                   protocols=[tcp_range(80, 81)])))
    assert pol.egress[0].ports == (PolicyPort("TCP", 80, 81),)
    assert pol.egress[0].peers[0].networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/64"))


# --------------------------------------------------------------------------
# Invalid objects: each raises, naming the object and the field


def without(raw: dict[str, Any], *path: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    d = raw
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]
    return raw


INVALID = [
    # spec level
    ("no spec", without(cnp(), "spec"), "spec is required"),
    ("spec not an object", {**cnp(), "spec": []}, "spec: must be an object"),
    ("unknown spec field", cnp(futureField=1), "spec: unknown field(s) futureField"),
    ("no tier", without(cnp(), "spec", "tier"), "spec.tier is required"),
    ("tier enum", cnp(tier="admin"), "spec.tier"),
    ("no priority", without(cnp(), "spec", "priority"), "spec.priority is required"),
    ("priority below 0", cnp(priority=-1), "spec.priority"),
    ("priority above 1000", cnp(priority=1001), "spec.priority"),
    ("priority not an integer", cnp(priority="10"), "spec.priority"),
    ("priority a bool", cnp(priority=True), "spec.priority"),
    # subject
    ("no subject", without(cnp(), "spec", "subject"), "spec.subject is required"),
    ("empty subject", cnp(subject={}), "spec.subject: must set exactly one"),
    ("two subjects", cnp(subject={"namespaces": {}, "pods": {"podSelector": {}}}), "spec.subject: must set exactly one"),
    ("unknown subject field", cnp(subject={"nodes": {}}), "spec.subject: unknown field(s) nodes"),
    ("subject pods without podSelector", cnp(subject={"pods": {"namespaceSelector": {}}}),
     "spec.subject.pods.podSelector is required"),
    ("unknown field in subject pods", cnp(subject={"pods": {"podSelector": {}, "x": 1}}), "spec.subject.pods: unknown"),
    ("bad selector", cnp(subject={"namespaces": {"matchLabels": {"a b": "c"}}}), "spec.subject.namespaces"),
    ("unknown selector field", cnp(subject={"namespaces": {"matchFields": {}}}), "spec.subject.namespaces"),
    # rules
    ("ingress not a list", cnp(ingress={}), "spec.ingress: must be a list"),
    ("26 ingress rules", ingress(*[rule(peers_field="from")] * 26), "spec.ingress: must have at most 25"),
    ("26 egress rules", egress(*[rule()] * 26), "spec.egress: must have at most 25"),
    ("rule not an object", egress("x"), "spec.egress[0]: must be an object"),
    ("unknown rule field", egress(rule(ports=[])), "spec.egress[0]: unknown field(s) ports"),
    ("from on egress", egress(rule(peers_field="from")), "spec.egress[0]: unknown field(s) from"),
    ("no action", egress(without(rule(), "action")), "spec.egress[0].action is required"),
    ("action enum", egress(rule(action="Allow")), "spec.egress[0].action"),
    ("action lower case", ingress(rule(action="deny", peers_field="from")), "spec.ingress[0].action"),
    ("rule name over 100", egress(rule(name="n" * 101)), "spec.egress[0].name"),
    ("rule name not a string", egress(rule(name=7)), "spec.egress[0].name"),
    ("no to", egress({"action": "Deny"}), "spec.egress[0].to is required"),
    ("no from", ingress({"action": "Deny"}), "spec.ingress[0].from is required"),
    ("empty to", egress(rule(peers=[])), "spec.egress[0].to: must have 1 to 25"),
    ("26 peers", egress(rule(peers=[{"namespaces": {}}] * 26)), "spec.egress[0].to: must have 1 to 25"),
    # peers
    ("empty peer", egress(rule(peers=[{}])), "spec.egress[0].to[0]: must set exactly one"),
    ("two peer fields", egress(rule(peers=[{"namespaces": {}, "nodes": {}}])), "spec.egress[0].to[0]: must set exactly one"),
    ("known and unknown peer fields", egress(rule(peers=[{"namespaces": {}, "cidrGroups": {}}])),
     "spec.egress[0].to[0]: must set exactly one"),
    ("peer not an object", egress(rule(peers=["10.0.0.0/8"])), "spec.egress[0].to[0]: must be an object"),
    ("pods peer without podSelector", ingress(rule(peers_field="from", peers=[{"pods": {}}])),
     "spec.ingress[0].from[0].pods.podSelector is required"),
    ("bad nodes selector", egress(rule(peers=[{"nodes": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}])),
     "spec.egress[0].to[0].nodes"),
    # networks
    ("networks empty", egress(rule(peers=[networks()])), "spec.egress[0].to[0].networks: must have 1 to 25"),
    ("26 networks", egress(rule(peers=[networks(*[f"10.0.{i}.0/24" for i in range(26)])])),
     "spec.egress[0].to[0].networks: must have 1 to 25"),
    ("network not a CIDR", egress(rule(peers=[networks("10.0.0.0/33")])), "spec.egress[0].to[0].networks[0]"),
    ("network without length", egress(rule(peers=[networks("10.0.0.1")])), "spec.egress[0].to[0].networks[0]"),
    ("network of names", egress(rule(peers=[networks("example.com/8")])), "spec.egress[0].to[0].networks[0]"),
    ("network with leading zeros", egress(rule(peers=[networks("10.0.0.0/08")])), "spec.egress[0].to[0].networks[0]"),
    ("network with a space", egress(rule(peers=[networks(" 10.0.0.0/8")])), "spec.egress[0].to[0].networks[0]"),
    ("network with a newline", egress(rule(peers=[networks("10.0.0.0/8\n")])), "spec.egress[0].to[0].networks[0]"),
    ("network over 43 characters", egress(rule(peers=[networks("0000:0000:0000:0000:0000:ffff:255.255.255.255/128")])),
     "spec.egress[0].to[0].networks[0]: must be at most 43"),
    ("network not a string", egress(rule(peers=[networks(8)])), "spec.egress[0].to[0].networks[0]"),  # type: ignore[arg-type]
    ("duplicate networks", egress(rule(peers=[networks("10.0.0.0/8", "10.0.0.0/8")])),
     "spec.egress[0].to[0].networks[1]: duplicate"),
    # domainNames
    ("domainNames empty", egress(rule("Accept", peers=[{"domainNames": []}])), "spec.egress[0].to[0].domainNames"),
    ("domain name pattern", egress(rule("Accept", peers=[{"domainNames": ["*.com"]}])),
     "spec.egress[0].to[0].domainNames[0]"),
    ("wildcard inside", egress(rule("Accept", peers=[{"domainNames": ["a.*.example.com"]}])),
     "spec.egress[0].to[0].domainNames[0]"),
    ("domain name with a newline", egress(rule("Accept", peers=[{"domainNames": ["example.com\n"]}])),
     "spec.egress[0].to[0].domainNames[0]"),
    ("duplicate domain names", egress(rule("Accept", peers=[{"domainNames": ["a.io", "a.io"]}])),
     "spec.egress[0].to[0].domainNames[1]: duplicate"),
    # protocols
    ("protocols empty", egress(rule(protocols=[])), "spec.egress[0].protocols: must have 1 to 25"),
    ("26 protocols", egress(rule(protocols=[tcp(n) for n in range(1, 27)])), "spec.egress[0].protocols: must have 1 to 25"),
    ("empty protocol", egress(rule(protocols=[{}])), "spec.egress[0].protocols[0]: must set exactly one"),
    ("two protocols in one entry", egress(rule(protocols=[{**tcp(80), **{"udp": {"destinationPort": {"number": 53}}}}])),
     "spec.egress[0].protocols[0]: must set exactly one"),
    ("tcp without destinationPort", egress(rule(protocols=[{"tcp": {}}])),
     "spec.egress[0].protocols[0].tcp.destinationPort is required"),
    ("unknown tcp field", egress(rule(protocols=[{"tcp": {"destinationPort": {"number": 1}, "flags": "S"}}])),
     "spec.egress[0].protocols[0].tcp: unknown field(s) flags"),
    ("destinationPort empty", egress(rule(protocols=[{"udp": {"destinationPort": {}}}])),
     "spec.egress[0].protocols[0].udp.destinationPort: must set exactly one"),
    ("number and range", egress(rule(protocols=[{"tcp": {"destinationPort": {"number": 1, "range": {
        "start": 1, "end": 2}}}}])), "spec.egress[0].protocols[0].tcp.destinationPort: must set exactly one"),
    ("port 0", egress(rule(protocols=[tcp(0)])), "spec.egress[0].protocols[0].tcp.destinationPort.number"),
    ("port 65536", egress(rule(protocols=[tcp(65536)])), "spec.egress[0].protocols[0].tcp.destinationPort.number"),
    ("port a string", egress(rule(protocols=[{"tcp": {"destinationPort": {"number": "80"}}}])),
     "spec.egress[0].protocols[0].tcp.destinationPort.number"),
    ("range of one port", egress(rule(protocols=[tcp_range(80, 80)])),
     "spec.egress[0].protocols[0].tcp.destinationPort.range: start (80) must be less than end (80)"),
    ("range reversed", egress(rule(protocols=[tcp_range(90, 80)])), "destinationPort.range: start (90)"),
    ("range without end", egress(rule(protocols=[{"sctp": {"destinationPort": {"range": {"start": 1}}}}])),
     "spec.egress[0].protocols[0].sctp.destinationPort.range.end is required"),
    ("range end 65536", egress(rule(protocols=[tcp_range(1, 65536)])), "destinationPort.range.end"),
    ("unknown range field", egress(rule(protocols=[{"tcp": {"destinationPort": {"range": {"start": 1, "end": 2,
                                                                                           "step": 1}}}}])),
     "destinationPort.range: unknown field(s) step"),
    ("empty named port", egress(rule(protocols=[{"destinationNamedPort": ""}])),
     "spec.egress[0].protocols[0].destinationNamedPort"),
    ("named port not a string", egress(rule(protocols=[{"destinationNamedPort": 80}])),
     "spec.egress[0].protocols[0].destinationNamedPort"),
    # the experimental CEL rule
    ("named port with networks", egress(rule(peers=[{"namespaces": {}}, networks("10.0.0.0/8")],
                                             protocols=[{"destinationNamedPort": "dns"}])),
     "spec.egress[0]: networks/nodes/domainNames peers cannot be combined with destinationNamedPort"),
    ("named port with nodes", egress(rule(peers=[{"nodes": {}}], protocols=[tcp(1), {"destinationNamedPort": "x"}])),
     "spec.egress[0]: networks/nodes/domainNames"),
    ("named port with domainNames", egress(rule("Accept", peers=[{"domainNames": ["a.io"]}],
                                                protocols=[{"destinationNamedPort": "https"}])),
     "spec.egress[0]: networks/nodes/domainNames"),
    # metadata and version
    ("no name", {**cnp(), "metadata": {}}, "metadata.name"),
    ("v1alpha1 ClusterNetworkPolicy", {**cnp(), "apiVersion": V1}, "unsupported apiVersion"),
]


@pytest.mark.parametrize("case, raw, field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid(case, raw, field):
    with pytest.raises(InvalidObjectError) as info:
        parse_object(raw)
    e = info.value
    assert e.kind == "ClusterNetworkPolicy" and e.namespace is None
    assert e.name == ("<unnamed>" if case == "no name" else "p")
    assert field in e.reason, e.reason
    assert str(e).startswith(f"ClusterNetworkPolicy {e.name}: ")


def test_the_store_reports_an_invalid_policy_by_name():
    entry = parse_for_store(cnp(priority=2000, name="bad"))
    assert isinstance(entry[0], InvalidObjectError) and entry[2] == "ClusterNetworkPolicy:/bad"


# --------------------------------------------------------------------------
# Fail closed: applied, with a warning naming the rule

DENY_ALL = ClusterRule("r", DENY, (), (), match_all_peers=True)
NOTHING = ClusterRule("r", ACCEPT, (), ())
NS_PEER = ClusterPeer("namespaces", namespace_selector=ALL)

FAIL_CLOSED = [
    # (case, direction, rule, expected ClusterRule, words of the warning)
    ("unknown peer on Accept", "egress", rule("Accept", [{"cidrGroups": ["x"]}], name="r"), NOTHING,
     'egress rule 2 ("r"): peer(s) to[0] (cidrGroups)'),
    ("unknown peer among others on Accept", "egress",
     rule("Accept", [{"namespaces": {}}, {"cidrGroups": ["x"]}], name="r"), NOTHING, "it matches nothing"),
    ("unknown peer on Deny", "egress", rule("Deny", [{"namespaces": {}}, {"cidrGroups": ["x"]}], name="r"),
     DENY_ALL, "this Deny rule denies all traffic"),
    ("unknown peer on Pass", "ingress", rule("Pass", [{"serviceAccounts": {}}], "from", name="r"), DENY_ALL,
     'ingress rule 2 ("r"): peer(s) from[0] (serviceAccounts)'),
    ("egress-only peer on ingress", "ingress", rule("Deny", [networks("10.0.0.0/8")], "from", name="r"), DENY_ALL,
     "from[0] (networks)"),
    ("unknown protocol on Accept", "egress", rule("Accept", name="r", protocols=[tcp(80), {"icmp": {"type": 8}}]),
     NOTHING, "protocols entr(ies) [1] (icmp)"),
    ("unknown protocol on Deny", "egress", rule("Deny", name="r", protocols=[{"icmp": {}}]), DENY_ALL,
     "this Deny rule denies all traffic"),
    ("domainNames only, Accept", "egress", rule("Accept", [{"domainNames": ["*.example.com"]}], name="r"), NOTHING,
     "domainNames peers are not supported"),
    ("domainNames and a network, Accept", "egress",
     rule("Accept", [{"domainNames": ["example.com."]}, {"namespaces": {}}], name="r",
          protocols=[tcp(443)]),
     ClusterRule("r", ACCEPT, (NS_PEER,), (PolicyPort("TCP", 443),)), "the rule's other peers stay"),
    ("domainNames on Deny", "egress", rule("Deny", [{"domainNames": ["example.com"]}, {"namespaces": {}}], name="r"),
     DENY_ALL, "this Deny rule denies all traffic"),
    ("domainNames on Pass", "egress", rule("Pass", [{"domainNames": ["example.com"]}], name="r"), DENY_ALL,
     "this Pass rule denies all traffic"),
]


@pytest.mark.parametrize("case, direction, raw_rule, expected, words", FAIL_CLOSED, ids=[c[0] for c in FAIL_CLOSED])
def test_fail_closed(case, direction, raw_rule, expected, words):
    ok = rule("Accept", [{"namespaces": {}}], "to" if direction == "egress" else "from", name="ok")
    pol = parse_object(cnp({direction: [ok, raw_rule]}))
    rules = pol.egress if direction == "egress" else pol.ingress
    assert rules[0] == ClusterRule("ok", ACCEPT, (NS_PEER,), ())  # the other rule as written
    assert rules[1] == expected
    assert len(pol.warnings) == 1 and words in pol.warnings[0] and pol.warnings[0].startswith(f"{direction} rule 2 ")
    err = pol.error()
    assert err is not None and err.kind == "ClusterNetworkPolicy" and err.name == "p" and err.namespace is None
    assert words in err.reason


def test_an_unnamed_rule_is_named_by_its_place():
    pol = parse_object(egress(rule(), rule("Deny", [{"cidrGroups": {}}])))
    assert pol.warnings[0].startswith("egress rule 2: ")


def test_fail_closed_never_hides_an_invalid_object():
    with pytest.raises(InvalidObjectError, match=r"spec.egress\[1\].to\[0\].networks\[0\]"):
        parse_object(egress(rule("Deny", [{"cidrGroups": {}}]), rule(peers=[networks("nope")])))


# --------------------------------------------------------------------------
# selects


@pytest.mark.parametrize("subject, pod, ns, selected", [
    ({"namespaces": {}}, {}, {}, True),
    ({"namespaces": {"matchLabels": {"team": "a"}}}, {"app": "x"}, {"team": "a"}, True),
    ({"namespaces": {"matchLabels": {"team": "a"}}}, {"team": "a"}, {"team": "b"}, False),
    ({"pods": {"podSelector": {}}}, {}, {}, True),
    ({"pods": {"podSelector": {"matchLabels": {"app": "x"}}}}, {"app": "x"}, {"team": "z"}, True),
    ({"pods": {"podSelector": {"matchLabels": {"app": "x"}}}}, {"app": "y"}, {}, False),
    ({"pods": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "x"}}}},
     {"app": "x"}, {"team": "b"}, False),
    ({"pods": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "x"}}}},
     {"app": "x"}, {"team": "a"}, True),
])
def test_selects(subject, pod, ns, selected):
    assert parse_object(cnp(subject=subject)).selects(pod, ns) is selected


# --------------------------------------------------------------------------
# v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy


def anp(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "AdminNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def banp(spec: dict[str, Any], name: str = "default") -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def converted(raw_v2: dict[str, Any], kind: str) -> ClusterNetworkPolicy:
    return dataclasses.replace(ClusterNetworkPolicy.parse(raw_v2), source_kind=kind)


def test_admin_network_policy_converts_to_its_cluster_network_policy():
    subject = {"pods": {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}}}
    raw = anp({
        "priority": 7, "subject": subject,
        "ingress": [{"name": "i", "action": "Allow", "from": [{"namespaces": {"matchLabels": {"x": "y"}}}],
                     "ports": [{"portNumber": {"protocol": "UDP", "port": 53}},
                               {"portNumber": {"port": 80}},
                               {"portRange": {"start": 1000, "end": 2000}},
                               {"portRange": {"protocol": "SCTP", "start": 5, "end": 5}},
                               {"namedPort": "http"}]}],
        "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8"]}, {"nodes": {}}]},
                   {"name": "e", "action": "Deny", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}],
    })
    expected = converted(cnp({
        "tier": "Admin", "priority": 7, "subject": subject,
        "ingress": [{"name": "i", "action": "Accept", "from": [{"namespaces": {"matchLabels": {"x": "y"}}}],
                     "protocols": [{"udp": {"destinationPort": {"number": 53}}}, tcp(80), tcp_range(1000, 2000),
                                   {"sctp": {"destinationPort": {"number": 5}}}, {"destinationNamedPort": "http"}]}],
        "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8"]}, {"nodes": {}}]},
                   {"name": "e", "action": "Deny", "to": [{"pods": {"podSelector": {}}}]}],
    }), "AdminNetworkPolicy")
    pol = parse_object(raw)
    assert pol == expected
    assert (pol.tier, pol.priority, pol.key, pol.display) == (ADMIN, 7, "AdminNetworkPolicy/p", "AdminNetworkPolicy p")
    assert parse_admin_network_policy(raw) == pol


def test_baseline_admin_network_policy_converts_to_a_baseline_policy_at_1000():
    raw = banp({"subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
                "egress": [{"action": "Allow", "to": [{"networks": ["::/0"]}],
                            "ports": [{"portNumber": {"protocol": "TCP", "port": 443}}]}]})
    expected = converted(cnp({
        "tier": "Baseline", "priority": 1000, "subject": {"namespaces": {}},
        "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
        "egress": [{"action": "Accept", "to": [{"networks": ["::/0"]}], "protocols": [tcp(443)]}]},
        name="default"), "BaselineAdminNetworkPolicy")
    pol = parse_object(raw)
    assert pol == expected and parse_baseline_admin_network_policy(raw) == pol
    assert (pol.tier, pol.priority, pol.key) == (BASELINE, 1000, "BaselineAdminNetworkPolicy/default")


def test_v1alpha1_fail_closed_and_domain_names_as_in_v1alpha2():
    pol = parse_object(anp({"priority": 1, "subject": {"namespaces": {}},
                            "egress": [{"action": "Allow", "to": [{"domainNames": ["a.io"]}]},
                                       {"name": "x", "action": "Pass", "to": [{"futurePeer": {}}]}]}))
    assert pol.egress == (ClusterRule("", ACCEPT, (), ()), ClusterRule("x", DENY, (), (), match_all_peers=True))
    assert len(pol.warnings) == 2 and pol.error().kind == "AdminNetworkPolicy"  # type: ignore[union-attr]
    # A BaselineAdminNetworkPolicy has no domainNames: a peer it does not know, on Deny: deny all.
    pol = parse_object(banp({"subject": {"namespaces": {}},
                             "egress": [{"action": "Deny", "to": [{"domainNames": ["a.io"]}]}]}))
    assert pol.egress == (ClusterRule("", DENY, (), (), match_all_peers=True),)


SUBJ = {"namespaces": {}}
INVALID_V1ALPHA1 = [
    ("ANP priority 1001", anp({"priority": 1001, "subject": SUBJ}), "spec.priority"),
    ("ANP no priority", anp({"subject": SUBJ}), "spec.priority is required"),
    ("ANP tier field", anp({"priority": 1, "tier": "Admin", "subject": SUBJ}), "spec: unknown field(s) tier"),
    ("ANP action Accept", anp({"priority": 1, "subject": SUBJ, "egress": [rule("Accept")]}), "spec.egress[0].action"),
    ("ANP protocols field", anp({"priority": 1, "subject": SUBJ, "egress": [rule(protocols=[tcp(80)])]}),
     "spec.egress[0]: unknown field(s) protocols"),
    ("ANP 101 rules", anp({"priority": 1, "subject": SUBJ, "egress": [rule()] * 101}), "spec.egress: must have at most 100"),
    ("ANP 101 peers", anp({"priority": 1, "subject": SUBJ, "egress": [rule(peers=[{"namespaces": {}}] * 101)]}),
     "spec.egress[0].to: must have 1 to 100"),
    ("ANP 101 ports", anp({"priority": 1, "subject": SUBJ,
                           "egress": [rule(ports=[{"portNumber": {"port": n}} for n in range(1, 102)])]}),
     "spec.egress[0].ports: must have 1 to 100"),
    ("ANP pods without namespaceSelector", anp({"priority": 1, "subject": {"pods": {"podSelector": {}}}}),
     "spec.subject.pods.namespaceSelector is required"),
    ("ANP port protocol", anp({"priority": 1, "subject": SUBJ,
                               "egress": [rule(ports=[{"portNumber": {"protocol": "ICMP", "port": 1}}])]}),
     "spec.egress[0].ports[0].portNumber.protocol"),
    ("ANP port without number", anp({"priority": 1, "subject": SUBJ,
                                     "egress": [rule(ports=[{"portNumber": {"protocol": "TCP"}}])]}),
     "spec.egress[0].ports[0].portNumber.port is required"),
    ("ANP range reversed", anp({"priority": 1, "subject": SUBJ,
                                "egress": [rule(ports=[{"portRange": {"start": 9, "end": 8}}])]}),
     "spec.egress[0].ports[0].portRange: start (9)"),
    ("ANP two ports in one entry", anp({"priority": 1, "subject": SUBJ, "egress": [rule(ports=[
        {"portNumber": {"port": 1}, "namedPort": "x"}])]}), "spec.egress[0].ports[0]: must set exactly one"),
    ("ANP named port with networks", anp({"priority": 1, "subject": SUBJ, "egress": [rule(
        peers=[networks("10.0.0.0/8")], ports=[{"namedPort": "dns"}])]}),
     "spec.egress[0]: networks/nodes/domainNames peers cannot be combined with namedPort"),
    ("ANP sameLabels", anp({"priority": 1, "subject": SUBJ, "ingress": [rule(peers_field="from", peers=[
        {"namespaces": {"sameLabels": ["team"]}}])]}), "sameLabels"),
    ("ANP old namespaceSelector peer", anp({"priority": 1, "subject": SUBJ, "ingress": [rule(peers_field="from", peers=[
        {"namespaces": {"namespaceSelector": {}}}])]}), "before v0.1.5"),
    ("BANP not named default", banp({"subject": SUBJ}, name="other"), 'named "default"'),
    ("BANP priority", banp({"priority": 1, "subject": SUBJ}), "spec: unknown field(s) priority"),
    ("BANP Pass", banp({"subject": SUBJ, "egress": [rule("Pass")]}), "spec.egress[0].action: must be one of Allow, Deny"),
    ("BANP 101 rules", banp({"subject": SUBJ, "ingress": [rule(peers_field="from")] * 101}), "spec.ingress"),
    ("ANP as v1alpha2", {**anp({"priority": 1, "subject": SUBJ}), "apiVersion": V2}, "unsupported apiVersion"),
]


@pytest.mark.parametrize("case, raw, field", INVALID_V1ALPHA1, ids=[c[0] for c in INVALID_V1ALPHA1])
def test_invalid_v1alpha1(case, raw, field):
    with pytest.raises(InvalidObjectError) as info:
        parse_object(raw)
    assert info.value.kind == raw["kind"] and info.value.name == raw["metadata"]["name"]
    assert field in info.value.reason, info.value.reason


def test_v1alpha1_limits_are_100():
    pol = parse_object(anp({"priority": 1, "subject": SUBJ,
                            "egress": [rule(peers=[{"namespaces": {}}] * 100,
                                            ports=[{"portNumber": {"port": n}} for n in range(1, 101)])] * 100}))
    assert len(pol.egress) == 100 and len(pol.egress[0].ports) == 100


# --------------------------------------------------------------------------
# Node


def node(addresses: Any, name: str = "n1", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels,
                                                              "resourceVersion": "9"},
            "status": {"addresses": addresses}}


@pytest.mark.parametrize("addresses, expected", [
    ([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "ExternalIP", "address": "203.0.113.1"},
      {"type": "Hostname", "address": "n1"}, {"type": "InternalDNS", "address": "n1.local"}],
     ["10.0.0.2", "203.0.113.1"]),
    ([{"type": "InternalIP", "address": "fd00::2"}, {"type": "InternalIP", "address": "10.0.0.9"},
      {"type": "ExternalIP", "address": "10.0.0.9"}, {"type": "InternalIP", "address": "10.0.0.1"}],
     ["10.0.0.1", "10.0.0.9", "fd00::2"]),  # deduplicated, sorted, IPv4 first
    ([], []),
    (None, []),
])
def test_node_addresses(addresses, expected):
    n = parse_object(node(addresses, role="worker"))
    assert isinstance(n, Node) and n.key == "n1" and n.labels == {"role": "worker"} and n.resource_version == "9"
    assert [str(a) for a in n.addresses] == expected


@pytest.mark.parametrize("raw, words", [
    (node([{"type": "InternalIP", "address": "10.0.0.300"}]), "status.addresses[0] (InternalIP): invalid address"),
    (node([{"type": "Hostname", "address": "n1"}, {"type": "ExternalIP", "address": 7}]),
     "status.addresses[1] (ExternalIP): invalid address 7"),
    (node("10.0.0.1"), "status.addresses: must be a list"),
    ({**node([]), "metadata": {"name": "n1", "labels": {"bad key": "v"}}}, "metadata.labels"),
    ({**node([]), "apiVersion": "v2"}, "unsupported apiVersion"),
])
def test_invalid_node(raw, words):
    with pytest.raises(InvalidObjectError) as info:
        parse_object(raw)
    assert info.value.kind == "Node" and info.value.name == "n1" and words in info.value.reason, info.value.reason


# --------------------------------------------------------------------------
# The store: the last valid version of a cluster policy stays, in every path

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}


def errors_of(store: ClusterStore) -> list[str]:
    return sorted(str(e) for e in store.snapshot().errors)


def test_replace_all_keeps_the_last_valid_version():
    store = ClusterStore()
    store.replace_all([NS, cnp(priority=10), anp({"priority": 3, "subject": SUBJ}), node([], name="n1")], [])
    snap = store.snapshot()
    assert set(snap.cluster_policies) == {"p", "AdminNetworkPolicy/p"} and set(snap.nodes) == {"n1"}
    # An edit that does not validate: the last valid version stays, reported.
    store.replace_all([NS, cnp(priority=2000), anp({"priority": 3, "subject": SUBJ}), cnp(tier="x", name="new")], [])
    snap = store.snapshot()
    assert snap.cluster_policies["p"].priority == 10
    assert set(snap.cluster_policies) == {"p", "AdminNetworkPolicy/p"}  # never valid: nothing of "new"
    assert errors_of(store) == ["ClusterNetworkPolicy new: spec.tier: must be Admin or Baseline, got 'x'",
                                "ClusterNetworkPolicy p: spec.priority: 2000 is not in 0-1000"]
    assert not snap.nodes  # Nodes come and go with the manifests
    # Still invalid on the next pass: still kept.
    store.replace_all([NS, cnp(priority=2000), anp({"priority": 3, "subject": SUBJ})], [])
    assert store.snapshot().cluster_policies["p"].priority == 10
    # Fixed: the new version applies, the error goes.
    store.replace_all([NS, cnp(priority=20), anp({"priority": 3, "subject": SUBJ})], [])
    assert store.snapshot().cluster_policies["p"].priority == 20 and not errors_of(store)
    # Gone from the manifests (even while invalid): gone.
    store.replace_all([NS, anp({"priority": 3000, "subject": SUBJ})], [])
    assert set(store.snapshot().cluster_policies) == {"AdminNetworkPolicy/p"}
    store.replace_all([NS], [])
    assert not store.snapshot().cluster_policies and not errors_of(store)


def test_replace_parsed_keeps_the_last_valid_version():
    store = ClusterStore()
    store.replace_parsed([parse_for_store(banp({"subject": SUBJ}))], [])
    store.replace_parsed([parse_for_store(banp({"subject": SUBJ, "egress": [rule("Pass")]}))], [])
    snap = store.snapshot()
    assert list(snap.cluster_policies) == ["BaselineAdminNetworkPolicy/default"]
    assert snap.cluster_policies["BaselineAdminNetworkPolicy/default"].egress == ()
    assert [e.kind for e in snap.errors] == ["BaselineAdminNetworkPolicy"]


def test_upsert_keeps_the_last_valid_version_and_delete_removes_it():
    store = ClusterStore()
    store.upsert(cnp(priority=10))
    store.upsert(cnp(priority=-1))
    assert store.snapshot().cluster_policies["p"].priority == 10 and len(errors_of(store)) == 1
    store.upsert(anp({"priority": 4, "subject": SUBJ}))
    store.upsert(node([{"type": "InternalIP", "address": "10.0.0.1"}]))
    assert set(store.snapshot().cluster_policies) == {"p", "AdminNetworkPolicy/p"}
    store.delete("ClusterNetworkPolicy", None, "p")
    assert set(store.snapshot().cluster_policies) == {"AdminNetworkPolicy/p"} and not errors_of(store)
    store.delete("AdminNetworkPolicy", None, "p")
    store.delete("Node", None, "n1")
    assert not store.snapshot().cluster_policies and not store.snapshot().nodes


def test_replace_kind_replaces_its_own_kind_only():
    store = ClusterStore()
    store.replace_kind("ClusterNetworkPolicy", [cnp(name="c")])
    store.replace_kind("AdminNetworkPolicy", [anp({"priority": 1, "subject": SUBJ}, name="a")])
    store.replace_kind("BaselineAdminNetworkPolicy", [banp({"subject": SUBJ})])
    assert set(store.snapshot().cluster_policies) == {"c", "AdminNetworkPolicy/a", "BaselineAdminNetworkPolicy/default"}
    # A relist: an invalid version keeps the last valid one; the other kinds stay.
    store.replace_kind("AdminNetworkPolicy", [anp({"priority": 1001, "subject": SUBJ}, name="a")])
    store.replace_kind("ClusterNetworkPolicy", [])
    snap = store.snapshot()
    assert set(snap.cluster_policies) == {"AdminNetworkPolicy/a", "BaselineAdminNetworkPolicy/default"}
    assert snap.cluster_policies["AdminNetworkPolicy/a"].priority == 1
    assert [e.kind for e in snap.errors] == ["AdminNetworkPolicy"]
    store.replace_kind("Node", [node([], name="n1"), node([], name="n2")])
    assert set(store.snapshot().nodes) == {"n1", "n2"}
