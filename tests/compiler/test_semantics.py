"""NetworkPolicy semantics of the compiled state, table-driven: each case is
a set of policies and the connections that must (not) be allowed, decided by
the same lookups the datapath makes (enforcer.compiler.evaluate)."""

from __future__ import annotations

import pytest

from .cluster import allowed, base_objects, compile_objects, policy

INGRESS_ONLY = ["Ingress"]
E = "Egress"


def P(ns: str, name: str, **spec):  # noqa: N802 - reads like a manifest
    return policy(ns, name, spec)


# (name, policies, [(src, dst, proto, port, expected), ...])
CASES = [
    ("no policy: nothing isolated", [], [
        ("x/b", "x/a", "TCP", 80, True), ("192.0.2.9", "x/a", "UDP", 5, True), ("x/a", "192.0.2.9", "TCP", 1, True)]),
    ("default deny ingress", [P("x", "deny", podSelector={}, policyTypes=INGRESS_ONLY)], [
        ("x/b", "x/a", "TCP", 80, False), ("y/a", "x/a", "TCP", 80, False), ("x/a", "y/a", "TCP", 80, True),
        ("10.9.0.1", "x/a", "TCP", 80, True)]),  # own node always allowed
    ("ingress: [] isolates with nothing allowed", [P("x", "deny", podSelector={}, ingress=[])], [
        ("x/b", "x/a", "TCP", 80, False)]),
    ("allow all ingress - {}", [P("x", "deny", podSelector={}, ingress=[]), P("x", "all", podSelector={}, ingress=[{}])], [
        ("y/a", "x/a", "UDP", 9, True), ("192.0.2.9", "x/b", "SCTP", 7, True)]),
    ("podSelector peer means the policy's namespace", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}])], [
        ("x/b", "x/a", "TCP", 80, True), ("y/b", "x/a", "TCP", 80, False), ("z/c", "x/a", "TCP", 80, False),
        ("y/a", "x/b", "TCP", 80, True)]),  # x/b is not selected
    ("namespaceSelector alone: every pod there", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}])], [
        ("y/a", "x/a", "TCP", 80, True), ("y/b", "x/a", "UDP", 53, True), ("x/b", "x/a", "TCP", 80, False),
        ("z/c", "x/a", "TCP", 80, False)]),
    ("namespaceSelector and podSelector in one peer: AND", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}])], [
        ("y/b", "x/a", "TCP", 80, True), ("x/b", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("two peers: union", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}},
                                                       {"podSelector": {"matchLabels": {"pod": "b"}}}]}])], [
        ("y/a", "x/a", "TCP", 80, True), ("x/b", "x/a", "TCP", 80, True), ("z/c", "x/a", "TCP", 80, False)]),
    ("metadata.name label selects a namespace by name", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}])], [
        ("z/c", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("matchExpressions In / NotIn / Exists / DoesNotExist", [
        P("x", "in", podSelector={"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
          ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
              {"key": "tier", "operator": "Exists"}]}}]}]),
        P("x", "notin", podSelector={"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]},
          ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
              {"key": "app", "operator": "DoesNotExist"}]}}]}])], [
        ("y/b", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False),    # x/a: needs tier
        ("z/c", "x/b", "TCP", 80, True), ("y/a", "x/b", "TCP", 80, False)]),  # x/b: needs no app
    ("ports: protocol defaults to TCP; numeric", [
        P("x", "p", podSelector={}, ingress=[{"ports": [{"port": 80}]}])], [
        ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "UDP", 80, False), ("y/a", "x/a", "TCP", 81, False)]),
    ("port entry without a number: every port of its protocol", [
        P("x", "p", podSelector={}, ingress=[{"ports": [{"protocol": "UDP"}]}])], [
        ("y/a", "x/a", "UDP", 5353, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("endPort ranges", [
        P("x", "p", podSelector={}, ingress=[{"ports": [{"port": 1000, "endPort": 2000}, {"protocol": "SCTP", "port": 5000, "endPort": 5001}]}])], [
        ("y/a", "x/a", "TCP", 999, False), ("y/a", "x/a", "TCP", 1000, True), ("y/a", "x/a", "TCP", 2000, True),
        ("y/a", "x/a", "TCP", 2001, False), ("y/a", "x/a", "SCTP", 5001, True), ("y/a", "x/a", "SCTP", 5002, False)]),
    ("named port, ingress: the selected pod's container port", [
        P("x", "p", podSelector={}, ingress=[{"ports": [{"port": "serve-81-tcp"}, {"port": "dns", "protocol": "UDP"}]}])], [
        ("y/a", "x/a", "TCP", 81, True), ("y/a", "x/a", "TCP", 80, False), ("y/a", "x/a", "UDP", 53, True)]),
    ("named port must match its protocol", [
        P("x", "p", podSelector={}, ingress=[{"ports": [{"port": "dns", "protocol": "TCP"}]}])], [
        ("y/a", "x/a", "TCP", 53, False), ("y/a", "x/a", "UDP", 53, False)]),
    ("named port, egress: the peer pod's container port", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=[E],
          egress=[{"to": [{"namespaceSelector": {}}], "ports": [{"port": "serve-81-tcp"}]}])], [
        ("x/a", "y/a", "TCP", 81, True), ("x/a", "y/a", "TCP", 80, False), ("x/a", "192.0.2.9", "TCP", 81, False)]),
    ("named port, egress, any peer: pods with that port only", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=[E], egress=[{"ports": [{"port": "serve-80-tcp"}]}])], [
        ("x/a", "z/c", "TCP", 80, True), ("x/a", "192.0.2.9", "TCP", 80, False)]),
    ("policies union", [
        P("x", "one", podSelector={}, ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]),
        P("x", "two", podSelector={}, ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}], "ports": [{"port": 81}]}])], [
        ("x/b", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 81, True), ("y/a", "x/a", "TCP", 80, False)]),
    ("egress rules imply Egress when policyTypes is absent", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, egress=[{"to": [{"podSelector": {}}]}])], [
        ("x/a", "x/b", "TCP", 80, True), ("x/a", "y/a", "TCP", 80, False),
        ("y/a", "x/a", "TCP", 80, False)]),  # and Ingress, with no rule: isolated
    ("egress: [] without policyTypes does not isolate egress", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{}], egress=[])], [
        ("x/a", "y/a", "TCP", 80, True)]),
    ("policyTypes Egress with no rules: egress default deny", [
        P("x", "p", podSelector={}, policyTypes=[E])], [
        ("x/a", "y/a", "TCP", 80, False), ("x/a", "10.9.0.1", "TCP", 10250, True), ("y/a", "x/a", "TCP", 80, True)]),
    ("ipBlock applies to pod IPs, except carves out", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}])], [
        ("x/b", "x/a", "TCP", 80, True), ("z/c", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False),
        ("y/b", "x/a", "TCP", 80, False), ("10.0.7.7", "x/a", "TCP", 80, True), ("10.0.2.7", "x/a", "TCP", 80, False),
        ("192.0.2.9", "x/a", "TCP", 80, False)]),
    ("ipBlock with host bits set is normalised (upstream's podIP/4)", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.2.1/31"}}]}])], [
        ("y/a", "x/a", "TCP", 80, True), ("10.0.2.0", "x/a", "TCP", 80, True), ("y/b", "x/a", "TCP", 80, False)]),
    ("egress ipBlock /32 of one pod", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=[E], egress=[{"to": [{"ipBlock": {"cidr": "10.0.3.3/32"}}]}])], [
        ("x/a", "z/c", "TCP", 80, True), ("x/a", "y/a", "TCP", 80, False)]),
    ("IPv4 ipBlock says nothing of a pod's IPv6 address", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.2.0/24"}}]}])], [
        ("y/a", "x/a", "TCP", 80, True), ("y/a", "x/a", "TCP", 80, False, 6)]),
    ("IPv6 ipBlock does not match IPv4", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "::/0"}}]}])], [
        ("192.0.2.9", "x/a", "TCP", 80, False), ("2001:db8::9", "x/a", "TCP", 80, True)]),
    ("invalid rule allows nothing, the policy still isolates and its valid rules stay", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]},
                                              {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}])], [
        ("y/a", "x/a", "TCP", 80, False), ("x/b", "x/a", "TCP", 80, True)]),
    ("unknown field in a rule: the rule is ignored (fail closed)", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"podSelector": {}}], "someFutureField": True}])], [
        ("x/b", "x/a", "TCP", 80, False)]),
    ("unknown field in the spec: the policy isolates what it selects and allows nothing (fail closed)", [
        P("x", "p", podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {}}]}],
          someFutureField={"deny": True})], [
        ("x/b", "x/a", "TCP", 80, False), ("x/a", "x/b", "TCP", 80, True)]),
    ("unreadable podSelector: isolates the whole namespace, allows nothing", [
        P("x", "p", podSelector={"matchExpressions": [{"key": "pod", "operator": "Near"}]}, ingress=[{}])], [
        ("y/a", "x/a", "TCP", 80, False), ("y/a", "x/b", "TCP", 80, False), ("x/a", "y/a", "TCP", 80, True)]),
    ("except outside the cidr is invalid: rule dropped", [
        P("x", "p", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.2.0/24"]}}]}])], [
        ("x/b", "x/a", "TCP", 80, False)]),
]


def check_family(policies, check, family: int) -> int:  # type: ignore[no-untyped-def]
    """The family a check is judged in: the one it names (6th element), its
    literal address's, in an ipBlock case the block's; else the run's."""
    blocks = [b for p in policies for r in p["spec"].get("ingress", []) + p["spec"].get("egress", [])
              for b in (r or {}).get("from", []) + (r or {}).get("to", []) if "ipBlock" in b]
    block_families = {6 if ":" in b["ipBlock"]["cidr"] else 4 for b in blocks}
    literal = [w for w in check[:2] if "/" not in w]
    if len(check) > 5:
        return check[5]
    if literal:
        return 6 if ":" in literal[0] else 4
    if block_families:
        return next(iter(block_families))
    return family


# Every (case, family) that has something to check in that family.
RUNS = [pytest.param(name, policies, checks, family, id=f"{family}-{name}")
        for name, policies, checks in CASES for family in (4, 6)
        if any(check_family(policies, c, family) == family for c in checks)]


@pytest.mark.parametrize("name,policies,checks,family", RUNS)
def test_semantics(name, policies, checks, family):
    """A check holds for IPv4 and IPv6 alike unless it names a family (6th
    element) or a literal address; in a case with an ipBlock, checks between
    pods hold for the block's family unless they name one."""
    state = compile_objects(base_objects() + policies)
    for check in checks:
        if check_family(policies, check, family) != family:
            continue
        src, dst, proto, port, expected = check[:5]
        got = allowed(state, src, dst, proto, port, family)
        assert got == expected, f"{name}: {src} -> {dst} {proto}/{port} (IPv{family}) expected {expected}"


def test_invalid_objects_are_reported_by_name():
    state = compile_objects(base_objects() + [
        P("x", "broken", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": "300.1.1.1/8"}}]}]),
        {"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", "metadata": {"namespace": "x"}, "spec": {}},
        {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "bad", "namespace": "x"}, "status": {"podIP": "nope"}},
    ])
    text = "\n".join(str(e) for e in state.errors)
    assert "NetworkPolicy x/broken: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR '300.1.1.1/8'" in text
    assert "NetworkPolicy <unnamed>: metadata.name is missing" in text
    assert "Pod x/bad: status.podIPs: invalid address 'nope'" in text
    assert allowed(state, "x/b", "y/a")  # nothing else affected
