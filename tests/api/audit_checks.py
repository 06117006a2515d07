"""Audit mode on the wire (run by test_api_lab.py, on its lab): the same
policies probed twice with real connections, once enforced and once
annotated enforcer.dev/audit: "true".

Audited, they must drop nothing (every pair connects), and the flows the
daemon reports as audit verdicts must name exactly the (source, destination)
pairs the enforced run dropped: an audited policy reports what it would
break, no more, no less. Counters and explain say the same.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from enforcer.api import client
from enforcer.model.meta import AUDIT_ANNOTATION
from enforcer.v1 import enforcer_pb2 as pb
from tests.conformance import model as M

PORT = 80
ALL_PAIRS = [(s, d) for s in M.ALL_PODS for d in M.ALL_PODS if s != d]


def ns_selector(ns: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}


def netpol(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


# Both directions, both tiers: x is default-deny with a few allows, and an
# Admin cluster policy denies z's traffic to y/b.
POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("x-deny-all", netpol("x", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
    ("x-web-from-y", netpol("x", "web-from-y", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [ns_selector("y")], "ports": [{"protocol": "TCP", "port": PORT}]}]})),
    ("x-egress-to-z", netpol("x", "egress-to-z", {
        "podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [ns_selector("z")]}]})),
    ("cluster-deny-z-to-yb", {
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-z-to-yb"},
        "spec": {"tier": "Admin", "priority": 10,
                 "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}},
                 "ingress": [{"name": "no-z", "action": "Deny",
                              "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}}),
]


def audited(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("annotations", {})[AUDIT_ANNOTATION] = "true"
    return out


def apply(lab, objects: list[tuple[str, dict[str, Any]]]) -> None:  # type: ignore[no-untyped-def]
    for f in (lab.source / "policies").iterdir():
        f.unlink()
    for name, obj in objects:
        lab._write(f"policies/{name}.yaml", [obj])
    lab.sync()


def probe_all(lab, expect_drops: bool) -> dict[tuple[str, str], bool]:  # type: ignore[no-untyped-def]
    """Every pair once, TCP/80; a pair that fails is retried (as the
    conformance runner does) before it counts as dropped. expect_drops: a
    probe waits DENIED_TIMEOUT (a pass answers in ms), else ALLOWED_TIMEOUT."""
    expected = dict.fromkeys(ALL_PAIRS, not expect_drops)
    seen = lab.observe("TCP", PORT, ALL_PAIRS, expected)
    for _ in range(2):
        failed = [p for p, ok in seen.items() if not ok]
        if not failed:
            break
        seen.update(lab.observe("TCP", PORT, failed, expected))
    return seen


def audit_pairs(lab, since: float, want: set[tuple[str, str]]) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(source, destination) pods of the audit flows since `since`, once
    they include `want` (the ring buffer is read every 200 ms) or 5 s
    passed; flows of other ports (none here) are left out."""
    stub = client.connect(lab.daemon.socket)
    deadline = time.monotonic() + 5
    while True:
        flows = list(stub.StreamFlows(pb.StreamFlowsRequest(
            since_recent=True, verdict=pb.StreamFlowsRequest.VERDICT_FILTER_AUDIT), timeout=10))
        got = {(f"{f.source.namespace}/{f.source.pod}", f"{f.destination.namespace}/{f.destination.pod}")
               for f in flows if f.time_unix >= since and f.destination.port == PORT}
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def check_audit_against_enforcement(lab) -> None:  # type: ignore[no-untyped-def]
    lab.reset()
    try:
        apply(lab, POLICIES)
        enforced = probe_all(lab, expect_drops=True)
        dropped = {pair for pair, ok in enforced.items() if not ok}
        # The policies drop in both directions and in both tiers.
        assert ("y/a", "x/b") in dropped and ("x/a", "y/a") in dropped and ("z/a", "y/b") in dropped
        assert ("y/a", "x/a") not in dropped and ("x/a", "z/a") not in dropped

        apply(lab, [(name, audited(obj)) for name, obj in POLICIES])
        since = time.time()
        on_the_wire = probe_all(lab, expect_drops=False)
        assert [p for p, ok in on_the_wire.items() if not ok] == [], "audited policies dropped these"
        reported = audit_pairs(lab, since, dropped)
        assert reported == dropped, (f"reported but not dropped when enforced: {sorted(reported - dropped)}; "
                                     f"dropped but not reported: {sorted(dropped - reported)}")

        stub = client.connect(lab.daemon.socket)
        flows = list(stub.StreamFlows(pb.StreamFlowsRequest(
            since_recent=True, verdict=pb.StreamFlowsRequest.VERDICT_FILTER_AUDIT), timeout=10))
        mine = [f for f in flows if f.time_unix >= since]
        admin = [f for f in mine if (f.source.namespace, f.destination.namespace, f.destination.pod) == ("z", "y", "b")]
        assert admin and all(f.allowed and f.reason == pb.REASON_DROP_ADMIN and f.rule.policy == "deny-z-to-yb"
                             for f in admin)
        default_deny = [f for f in mine if f.reason == pb.REASON_DROP_POLICY]
        assert default_deny and all(f.audited_policies and "x/deny-all" in f.audited_policies for f in default_deny)

        listed = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10)
        assert all(p.audit for p in listed.policies) and all(c.audit for c in listed.cluster_policies)
        assert len(listed.policies) == 3 and len(listed.cluster_policies) == 1

        counters = stub.GetCounters(pb.GetCountersRequest(), timeout=10).counters
        assert sum(c.packets for c in counters if c.reason == pb.REASON_ALLOW_AUDIT) >= len(dropped)

        ips = lab.pod_ips()
        why = stub.Explain(pb.ExplainRequest(source=ips["y/a"][0], destination=ips["x/b"][0], protocol="TCP",
                                             port=PORT), timeout=10)
        assert why.allowed and why.audit and why.maps_agree
        (hook,) = [h for h in why.hooks if h.audit]
        assert "x/deny-all" in hook.audit_why and "x/deny-all" in hook.audited_policies
    finally:
        apply(lab, [])
