"""Audit mode, compiled: a NetworkPolicy or cluster policy annotated
enforcer.dev/audit: "true" (or every policy, with --audit-all) is judged but
not enforced.

Each scenario is compiled three ways: with its audited objects in audit
mode, without them, and with them enforced. For every pair of pods, both
families, a few ports and protocols, and a peer outside the cluster, each
hook of the audited compilation must allow exactly what the compilation
without the audited objects allows, and report an audited drop exactly where
that allows and the compilation enforcing them drops: an audited default
deny beside enforced allows reports what would break, no more, no less.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from enforcer.compiler.compile import Compiler
from enforcer.compiler.evaluate import evaluate
from enforcer.datapath.reasons import Reason
from enforcer.model.meta import AUDIT_ANNOTATION

from .cluster import PODS, base_objects, compile_objects, ip_of, policy
from .test_cluster_policies import TCP80, cnp, ns_peer, ns_subject

R = Reason
PEERS = [*PODS, "192.0.2.7"]  # the last: outside the cluster (IPv4 only)
PROBES = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 53)]
PROTO = {"TCP": 6, "UDP": 17}


def audited(obj: dict[str, Any], value: str = "true") -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("annotations", {})[AUDIT_ANNOTATION] = value
    return out


def deny_all(ns: str, name: str = "deny-all") -> dict[str, Any]:
    return policy(ns, name, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})


def allow_from(ns: str, name: str, selector: dict[str, str], from_ns: str, port: int) -> dict[str, Any]:
    return policy(ns, name, {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                             "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                                 "kubernetes.io/metadata.name": from_ns}}}],
                                          "ports": [{"protocol": "TCP", "port": port}]}]})


def allow_dns_egress(ns: str) -> dict[str, Any]:
    return policy(ns, "dns", {"podSelector": {}, "policyTypes": ["Egress"],
                              "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})


# name -> (enforced objects, audited objects)
SCENARIOS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "audited default deny, nothing enforced": ([], [deny_all("x")]),
    "audited default deny beside enforced allows": (
        [allow_from("x", "web-from-y", {"app": "web"}, "y", 80), allow_dns_egress("x")], [deny_all("x")]),
    # NetworkPolicies add up: an audited allow beside an enforced one that
    # already isolates the pod would drop nothing more.
    "audited allow beside an enforced allow reports nothing": (
        [allow_from("x", "web-from-y", {"app": "web"}, "y", 80)],
        [allow_from("x", "web-from-z", {"app": "web"}, "z", 80)]),
    "audited Admin deny over an enforced NetworkPolicy allow": (
        [allow_from("x", "web-from-y", {"app": "web"}, "y", 80)],
        [cnp("deny-y", "Admin", 10, ns_subject("x"), ingress=[
            {"action": "Deny", "from": [ns_peer("y")], "protocols": TCP80}])]),
    "audited Baseline deny beside an enforced Admin accept": (
        [cnp("accept-z", "Admin", 5, ns_subject("x"), ingress=[{"action": "Accept", "from": [ns_peer("z")]}])],
        [cnp("baseline-deny", "Baseline", 10, ns_subject("x"), ingress=[
            {"action": "Deny", "from": [{"namespaces": {}}]}])]),
    "audited egress deny of every namespace but one": (
        [], [policy("y", "egress-to-x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]})]),
}


def compile_with(objects: list[dict[str, Any]], audit_all: bool = False):  # type: ignore[no-untyped-def]
    return compile_objects(base_objects() + objects, compiler=Compiler(audit_all=audit_all))


def check(audit_state, without, enforced, name: str) -> int:  # type: ignore[no-untyped-def]
    """The audited compilation against the other two; how many hooks
    report an audited drop."""
    reported = 0
    for family in (4, 6):
        for src in PEERS:
            for dst in PEERS:
                if src == dst or (family == 6 and "." in src + dst and (src not in PODS or dst not in PODS)):
                    continue
                for proto, port in PROBES:
                    args = (ip_of(src, family), ip_of(dst, family), PROTO[proto], port)
                    got, base, full = (evaluate(s, *args) for s in (audit_state, without, enforced))
                    where = (name, src, dst, proto, port, family)
                    assert [h.allowed for h in got.hooks] == [h.allowed for h in base.hooks], where
                    for h, b, f in zip(got.hooks, base.hooks, full.hooks, strict=True):
                        would_drop = b.allowed and not f.allowed
                        assert bool(h.audit_code) == would_drop, (where, h.direction, h.audit_code)
                        if would_drop:
                            assert h.audit_code == f.code, where  # the drop it would be, by its reason
                            assert h.audit_decider == f.decider, where  # and its rule
                            reported += 1
    return reported


@pytest.mark.parametrize("name", SCENARIOS)
def test_audited_objects_allow_what_they_would_not_and_report_it(name):
    enforced_objs, audited_objs = SCENARIOS[name]
    audit_state = compile_with(enforced_objs + [audited(o) for o in audited_objs])
    without = compile_with(enforced_objs)
    enforced = compile_with(enforced_objs + audited_objs)
    reported = check(audit_state, without, enforced, name)
    assert (reported > 0) == ("reports nothing" not in name), reported
    assert audit_state.audited == {o["metadata"]["name"] if "namespace" not in o["metadata"] else
                                   f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in audited_objs}


@pytest.mark.parametrize("name", SCENARIOS)
def test_audit_all_audits_every_policy(name):
    enforced_objs, audited_objs = SCENARIOS[name]
    everything = enforced_objs + audited_objs
    audit_state = compile_with(everything, audit_all=True)
    assert check(audit_state, compile_with([]), compile_with(everything), name) > 0


def test_audit_costs_no_entry_where_nothing_is_audited():
    """Enforced policies compile to the same entries with an audited
    policy elsewhere (another namespace's pods)."""
    enforced = [allow_from("x", "web-from-y", {"app": "web"}, "y", 80)]
    plain = compile_with(enforced)
    beside = compile_with(enforced + [audited(deny_all("z"))])
    x_eps = {e.endpoint_id for e in plain.endpoints.values() if e.pod.startswith("x/")}
    assert {k: v for k, v in beside.policy.items() if k.endpoint_id in x_eps} == \
        {k: v for k, v in plain.policy.items() if k.endpoint_id in x_eps}


@pytest.mark.parametrize("value, is_audited, error", [
    ("true", True, False), ("false", False, False), ("yes", False, True), ("", False, True)])
def test_the_annotation_value(value, is_audited, error):
    """Anything but "true" or "false" is a mistake: reported, and the
    policy enforced (the reading that opens nothing)."""
    state = compile_with([audited(deny_all("x"), value)])
    assert (state.audited == {"x/deny-all"}) == is_audited
    errors = [str(e) for e in state.errors if AUDIT_ANNOTATION in str(e)]
    assert bool(errors) == error, errors
    assert all("deny-all" in e and "enforced, not audited" in e for e in errors), errors
    hooks = evaluate(state, ip_of("x/b"), ip_of("x/a"), 6, 80).hooks
    assert all(h.allowed for h in hooks) == is_audited
    assert all(h.code != R.DROP_POLICY or not is_audited for h in hooks)


def test_incremental_compile_follows_the_annotation():
    """Switching a policy from audit mode to enforced (and back) in one
    compiler gives what a fresh compiler gives."""
    compiler = Compiler()
    objs = [allow_from("x", "web-from-y", {"app": "web"}, "y", 80)]
    for step in ([audited(deny_all("x"))], [deny_all("x")], [audited(deny_all("x"))], []):
        got = compile_objects(base_objects() + objs + step, compiler=compiler)
        fresh = compile_with(objs + step)
        assert got.policy == fresh.policy and got.audited == fresh.audited, step
        assert {ip: e.flags for ip, e in got.endpoints.items()} == {ip: e.flags for ip, e in fresh.endpoints.items()}
