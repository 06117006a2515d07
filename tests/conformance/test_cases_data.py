"""Checks of the ported upstream data only: no kernel, no lab, no daemon.

Besides structure, every expected truth table is cross-checked against a
small, independent NetworkPolicy evaluator written here from the API's
documented semantics: a transcription slip in a policy or in a Reachability
call would show up as a disagreement. Self-pairs are left out, as upstream
never compares them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from enforcer.model import parse_object

from . import cases as C
from . import model as M

FAKE_IPS: dict[str, str] = {pod: f"10.244.{i // 3}.{10 + i}" for i, pod in enumerate(M.ALL_PODS)}
FAKE_IPS6: dict[str, str] = {pod: f"fd00:244::{10 + i:x}" for i, pod in enumerate(M.ALL_PODS)}


def test_report_count(capsys: pytest.CaptureFixture[str]) -> None:
    by_ctx: dict[str, int] = {}
    for c in C.CASES:
        by_ctx[c.context.key] = by_ctx.get(c.context.key, 0) + 1
    with capsys.disabled():
        print(f"\n[conformance] {len(C.CASES)} upstream cases ported "
              f"({', '.join(f'{k}: {v}' for k, v in by_ctx.items())}); "
              f"{sum(c.requires_sctp for c in C.CASES)} need SCTP, "
              f"{sum(len(c.probes) for c in C.CASES)} probes")
    assert len(C.CASES) == 48
    assert by_ctx == {"netpol": 42, "netpol-udp": 3, "netpol-sctp": 3}


def test_ids_unique_and_names_verbatim() -> None:
    assert len({c.id for c in C.CASES}) == len(C.CASES)
    assert len({(c.context.key, c.name) for c in C.CASES}) == len(C.CASES)
    for c in C.CASES:
        assert c.name.startswith("should "), c.name
        assert c.name == c.name.strip() and "  " not in c.name
        assert "Feature:NetworkPolicy" in c.tags
    assert C.CASES[0].name == "should support a 'default-deny-ingress' policy"
    assert ("should support denying of egress traffic on the client side (even if the server explicitly "
            "allows this traffic)") in {c.name for c in C.CASES}


@pytest.mark.parametrize("case", C.CASES, ids=lambda c: c.id)
def test_case_structure(case: C.Case) -> None:
    assert case.probes, "every case probes at least once"
    assert isinstance(case.steps[0], C.WaitForServers)
    assert case.steps[0].ports == case.ports and case.steps[0].protocols == case.protocols
    assert not any(isinstance(s, C.WaitForServers) for s in case.steps[1:])
    assert set(case.protocols) <= set(M.PROTOCOLS) and set(case.ports) <= set(M.PORTS)
    for probe in case.probes:
        # a probe only targets something the pods serve
        assert probe.protocol in case.protocols and probe.port in case.ports
    for step in case.steps + case.cleanup:
        for pod in [getattr(step, "pod", None)]:
            if pod is not None:
                M.split_pod(pod)
        ns = getattr(step, "namespace", None)
        if ns is not None:
            assert ns in M.NAMESPACES
    assert set(case.upstream_head_pods) <= set(M.ALL_PODS) and len(case.upstream_head_pods) >= 2
    json.dumps([getattr(s, "policy", None) for s in case.steps])  # plain JSON data


@pytest.mark.parametrize("case", C.CASES, ids=lambda c: c.id)
def test_truth_tables_total(case: C.Case) -> None:
    for probe in case.probes:
        assert list(probe.expected) == list(M.ALL_PODS)
        for _src, row in probe.expected.items():
            assert list(row) == list(M.ALL_PODS)
            assert all(isinstance(v, bool) for v in row.values())
        assert sum(len(r) for r in probe.expected.values()) == 81
        assert len(list(probe.checked_pairs())) == 72


def _check_selector(sel: Any) -> None:
    assert isinstance(sel, dict) and set(sel) <= {"matchLabels", "matchExpressions"}
    for k, v in sel.get("matchLabels", {}).items():
        assert isinstance(k, str) and isinstance(v, str)
    for e in sel.get("matchExpressions", []):
        assert e["operator"] in ("In", "NotIn", "Exists", "DoesNotExist")
        assert bool(e.get("values")) == (e["operator"] in ("In", "NotIn"))


def _check_policy(policy: Mapping[str, Any]) -> None:
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert set(policy) == {"apiVersion", "kind", "metadata", "spec"}
    meta = policy["metadata"]
    assert isinstance(meta["name"], str) and meta["name"] and len(meta["name"]) <= 253
    assert meta["namespace"] in M.NAMESPACES
    spec = policy["spec"]
    assert set(spec) <= {"podSelector", "ingress", "egress", "policyTypes"}
    _check_selector(spec["podSelector"])
    types = spec["policyTypes"]
    assert types and set(types) <= {"Ingress", "Egress"} and len(set(types)) == len(types)
    if "ingress" in spec:
        assert "Ingress" in types and spec["ingress"]
    if "egress" in spec:
        assert "Egress" in types and spec["egress"]
    for key, peers_key in (("ingress", "from"), ("egress", "to")):
        for r in spec.get(key, []):
            assert set(r) <= {"ports", peers_key}
            for p in r.get(peers_key, []):
                assert p and set(p) <= {"podSelector", "namespaceSelector", "ipBlock"}
                if "ipBlock" in p:
                    assert set(p) == {"ipBlock"} and set(p["ipBlock"]) <= {"cidr", "except"}
                for s in ("podSelector", "namespaceSelector"):
                    if s in p:
                        _check_selector(p[s])
            for port in r.get("ports", []):
                assert port and set(port) <= {"protocol", "port"}
                assert port.get("protocol", "TCP") in M.PROTOCOLS
                if "port" in port:
                    assert isinstance(port["port"], (int, str))


@pytest.mark.parametrize("case", C.CASES, ids=lambda c: c.id)
def test_policies_valid(case: C.Case) -> None:
    for step in case.steps:
        if isinstance(step, C.ApplyPolicy):
            _check_policy(step.policy)
            assert step.operation in ("create", "update")
            for ips in (FAKE_IPS, FAKE_IPS6):
                resolved = C.resolve(step.policy, ips)
                assert not list(C.references(resolved))
                _check_policy(resolved)
                for r in resolved["spec"].get("egress", []) + resolved["spec"].get("ingress", []):
                    for p in r.get("to", []) + r.get("from", []):
                        if "ipBlock" in p:
                            net = ipaddress.ip_network(p["ipBlock"]["cidr"], strict=False)
                            for e in p["ipBlock"].get("except", []):
                                assert ipaddress.ip_network(e).subnet_of(net)  # type: ignore[arg-type]


def test_policies_parse_with_enforcer_model() -> None:
    """The enforcer's own API-object parser accepts every resolved policy and
    the rendered model objects."""
    for case in C.CASES:
        for pol in case.policies:
            for ips in (FAKE_IPS, FAKE_IPS6):
                parse_object(C.resolve(pol, ips))
                parse_object(C.with_api_defaults(C.resolve(pol, ips, canonical=True)))
    for ns in M.NAMESPACES:
        parse_object(M.render_namespace(ns))
    pod = parse_object(M.render_pod("x/a", node_name="n1", pod_ips={"x/a": [FAKE_IPS["x/a"], FAKE_IPS6["x/a"]]}))
    assert pod.named_port("serve-81-udp", "UDP") == 81  # type: ignore[union-attr]


def test_no_create_of_existing_name_and_updates_target_existing() -> None:
    for case in C.CASES:
        live: set[tuple[str, str]] = set()
        for s in case.steps:
            if isinstance(s, C.ApplyPolicy):
                key = (s.namespace, s.name)
                assert (key in live) == (s.operation == "update"), (case.id, key)
                live.add(key)
            elif isinstance(s, C.DeleteAllPolicies):
                live.clear()


# --- the model ------------------------------------------------------------------

def test_model() -> None:
    assert M.ALL_PODS == ("x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c")
    assert [c.port_name for c in M.containers()] == [
        "serve-80-tcp", "serve-80-udp", "serve-80-sctp", "serve-81-tcp", "serve-81-udp", "serve-81-sctp"]
    assert [c.name for c in M.containers([81], ["TCP"])] == ["cont-81-tcp"]
    ns = M.render_namespace("y")
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "y"
    assert "ns" not in ns["metadata"]["labels"]
    assert M.render_namespace("y", framework_labels=False)["metadata"]["labels"] == {
        "kubernetes.io/metadata.name": "y"}
    pod = M.render_pod("z/c", ports=[80], protocols=["TCP", "SCTP"], node_name="node1",
                       pod_ips={"z/c": ["10.0.0.9", "fd00::9"]})
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert pod["metadata"] == {"name": "c", "namespace": "z", "labels": {"pod": "c"}}
    assert pod["spec"]["nodeName"] == "node1"
    assert pod["status"]["podIP"] == "10.0.0.9"
    assert pod["status"]["podIPs"] == [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]
    assert [c["ports"] for c in pod["spec"]["containers"]] == [
        [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}],
        [{"name": "serve-80-sctp", "containerPort": 80, "protocol": "SCTP"}]]
    assert pod["spec"]["containers"][1]["env"] == [{"name": "SERVE_SCTP_PORT_80", "value": "foo"}]
    assert "nodeName" not in M.render_pod("x/a")["spec"] and "podIP" not in M.render_pod("x/a")["status"]
    svc = M.render_service("x/b", ports=[80], protocols=["UDP"])
    assert svc["metadata"]["name"] == "s-x-b" and svc["spec"]["selector"] == {"pod": "b"}
    assert svc["spec"]["ports"][0]["name"] == "service-port-udp-80"
    with pytest.raises(ValueError):
        M.split_pod("w/a")


# --- symbolic references ----------------------------------------------------------

def test_reference_resolution() -> None:
    pol = {"cidr": C.pod_ip_cidr("x/a", 4), "except": [C.pod_ip_cidr("x/b", "host")]}
    assert C.resolve(pol, {"x/a": "10.244.1.7", "x/b": ["10.244.2.3", "fd00::3"]}) == {
        "cidr": "10.244.1.7/4", "except": ["10.244.2.3/32"]}
    assert C.resolve(pol, {"x/a": "10.244.1.7", "x/b": "10.244.2.3"}, canonical=True) == {
        "cidr": "0.0.0.0/4", "except": ["10.244.2.3/32"]}
    assert C.resolve(pol, {"x/a": "fd00:244::7", "x/b": "fd00:244::3"}) == {
        "cidr": "fd00:244::7/4", "except": ["fd00:244::3/128"]}
    refs = [r for c in C.CASES for s in c.steps for r in C.references(getattr(s, "policy", None))]
    assert {(r["pod"], r["prefix"]) for r in refs} == {("y/b", "host"), ("x/a", 4), ("x/b", "host")}
    assert [c.name for c in C.CASES if c.uses_references] == [
        "should allow egress access to server in CIDR block",
        "should enforce except clause while egress access to server in CIDR block",
        "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
    ]


# --- hand-derived spot checks from upstream -------------------------------------

def _probe(case_id: str, index: int = 0) -> C.Probe:
    return C.CASES_BY_ID[case_id].probes[index]


def test_spot_default_deny_ingress() -> None:
    p = _probe("netpol/should-support-a-default-deny-ingress-policy")
    assert (p.protocol, p.port) == ("TCP", 80)
    for src in M.ALL_PODS:
        for dst in M.ALL_PODS:
            # ExpectPeer(&Peer{}, &Peer{Namespace: nsX}, false): into x is false,
            # the self-pairs of x included (they are set, then ignored).
            assert p.expected[src][dst] == (not dst.startswith("x/"))
    assert p.expected["x/a"]["x/a"] is False
    assert len(p.denied()) == 9 * 3 - 3


def test_spot_default_deny_all() -> None:
    p = _probe("netpol/should-support-a-default-deny-all-policy")
    assert {(s, d) for s, d, v in p.checked_pairs() if v} == {
        (s, d) for s in M.ALL_PODS for d in M.ALL_PODS if s != d and "x" not in (s[0], d[0])}


def test_spot_client_side_egress_denial() -> None:
    # The truth table drawn in upstream's comment ("Expected results").
    p = _probe("netpol/should-support-denying-of-egress-traffic-on-the-client-side-even-if-the-server-"
               "explicitly-allows-this-traffic")
    assert {(s, d) for s, d, v in p.checked_pairs() if v and "x/a" in (s, d)} == {
        (s, "x/a") for s in M.ALL_PODS if s != "x/a"} | {("x/a", "y/a")}
    assert all(not p.expected[s]["y/b"] for s in M.ALL_PODS)
    assert [s for s in M.ALL_PODS if p.expected[s]["y/a"]] == ["x/a"]


def test_spot_stacked_policies() -> None:
    c = C.CASES_BY_ID["netpol/should-enforce-multiple-stacked-policies-with-overlapping-podselectors"]
    assert [(p.port, sorted(p.denied())) for p in c.probes][1] == (
        80, sorted((s, "x/a") for s in M.ALL_PODS if s != "x/a"))
    allow81, _, allow80 = c.probes
    assert allow81.expected == allow80.expected
    assert allow81.denied() == {("x/b", "x/a"), ("x/c", "x/a"), ("z/a", "x/a"), ("z/b", "x/a"), ("z/c", "x/a")}


def test_spot_updated_namespace_and_pod() -> None:
    c = C.CASES_BY_ID["netpol/should-allow-ingress-access-from-updated-namespace"]
    assert [type(s).__name__ for s in c.steps] == [
        "WaitForServers", "ApplyPolicy", "Probe", "AddNamespaceLabels", "Probe"]
    assert c.steps[3] == C.AddNamespaceLabels("y", {"ns2": "updated"})
    assert c.cleanup == (C.RemoveNamespaceLabel("y", "ns2"),)
    assert c.probes[1].denied() == {(s, "x/a") for s in ("x/b", "x/c", "z/a", "z/b", "z/c")}
    c = C.CASES_BY_ID["netpol/should-allow-ingress-access-from-updated-pod"]
    assert c.steps[3] == C.AddPodLabels("x/b", {"pod": "b", "pod2": "updated"})
    assert c.cleanup == (C.ResetPodLabels("x/b"),) and c.cleanup[0].labels == {"pod": "b"}  # type: ignore[union-attr]


def test_spot_policy_bodies() -> None:
    c = C.CASES_BY_ID["netpol/should-allow-ingress-access-from-namespace-on-one-named-port"]
    assert c.policies == ({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-client-a-via-ns-selector-80", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"ports": [{"protocol": "TCP", "port": "serve-80-tcp"}],
                         "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}],
            "policyTypes": ["Ingress"],
        },
    },)
    c = C.CASES_BY_ID["netpol/should-work-with-ingress-egress-specified-together"]
    assert c.policies[0]["spec"]["policyTypes"] == ["Egress", "Ingress"]
    assert c.policies[0]["spec"]["egress"] == [{"ports": [{"port": 80}]}]
    assert C.with_api_defaults(c.policies[0])["spec"]["egress"] == [{"ports": [{"port": 80, "protocol": "TCP"}]}]
    c = C.CASES_BY_ID["netpol/should-enforce-updated-policy"]
    upd = [s for s in c.steps if isinstance(s, C.ApplyPolicy)][1]
    assert upd.operation == "update" and upd.policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    c = C.CASES_BY_ID["netpol/should-stop-enforcing-policies-after-they-are-deleted"]
    assert C.DeleteAllPolicies(("x", "y", "z")) in c.steps and C.Sleep(3) in c.steps


def test_sctp_marking() -> None:
    assert [c.id for c in C.CASES if c.requires_sctp] == [
        "netpol-sctp/should-support-a-default-deny-ingress-policy",
        "netpol-sctp/should-enforce-policy-based-on-ports",
        "netpol-sctp/should-enforce-policy-to-allow-traffic-only-from-a-pod-in-a-different-namespace-based-on-"
        "podselector-and-namespaceselector",
    ]
    assert all("Feature:SCTPConnectivity" in c.tags for c in C.CASES if c.requires_sctp)
    assert len(C.cases(sctp=False)) == 45
    assert {c.probed_protocols for c in C.CASES if c.context is C.CTX_UDP} == {frozenset({"UDP"})}


# --- semantic cross-check -----------------------------------------------------------

def _matches(sel: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        key, op, vals = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in vals,
              "NotIn": not (key in labels and labels[key] in vals),
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


class _World:
    def __init__(self, case: C.Case) -> None:
        self.ns_labels = {ns: M.namespace_labels(ns) for ns in M.NAMESPACES}
        self.pod_labels = {p: M.pod_labels(p) for p in M.ALL_PODS}
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.containers = M.containers(case.ports, case.protocols)

    def _peer_ok(self, peer: Mapping[str, Any], policy_ns: str, other: str) -> bool:
        if "ipBlock" in peer:
            ip = ipaddress.ip_address(FAKE_IPS[other])
            block = peer["ipBlock"]
            return (ip in ipaddress.ip_network(block["cidr"], strict=False)
                    and not any(ip in ipaddress.ip_network(e, strict=False) for e in block.get("except", [])))
        ns = M.split_pod(other)[0]
        if "namespaceSelector" in peer:
            if not _matches(peer["namespaceSelector"], self.ns_labels[ns]):
                return False
        elif ns != policy_ns:
            return False
        return _matches(peer.get("podSelector", {}), self.pod_labels[other])

    def _port_ok(self, ports: Sequence[Mapping[str, Any]], dst: str, port: int, proto: str) -> bool:
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != proto:
                continue
            want = p.get("port")
            if want is None or want == port:
                return True
            if isinstance(want, str) and any(c.port_name == want and c.protocol == proto and c.port == port
                                             for c in self.containers):
                return True
        return False

    def _allowed(self, pod: str, other: str, dst: str, port: int, proto: str, direction: str) -> bool:
        ns = M.split_pod(pod)[0]
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [p for (pns, _), p in self.policies.items()
                     if pns == ns and direction in p["spec"]["policyTypes"]
                     and _matches(p["spec"]["podSelector"], self.pod_labels[pod])]
        if not selecting:
            return True
        return any(self._port_ok(r.get("ports", []), dst, port, proto)
                   and (not r.get(peers_key) or any(self._peer_ok(pe, ns, other) for pe in r[peers_key]))
                   for p in selecting for r in p["spec"].get(key, []))

    def connected(self, src: str, dst: str, port: int, proto: str) -> bool:
        served = any(c.port == port and c.protocol == proto for c in self.containers)
        return (served and self._allowed(src, dst, dst, port, proto, "Egress")
                and self._allowed(dst, src, dst, port, proto, "Ingress"))

    def run(self, step: Any) -> None:
        if isinstance(step, C.ApplyPolicy):
            self.policies[(step.namespace, step.name)] = C.resolve(step.policy, FAKE_IPS)
        elif isinstance(step, C.DeleteAllPolicies):
            self.policies = {k: v for k, v in self.policies.items() if k[0] not in step.namespaces}
        elif isinstance(step, C.DeletePolicy):
            self.policies.pop((step.namespace, step.name), None)
        elif isinstance(step, C.AddNamespaceLabels):
            self.ns_labels[step.namespace].update(step.labels)
        elif isinstance(step, C.RemoveNamespaceLabel):
            self.ns_labels[step.namespace].pop(step.key, None)
        elif isinstance(step, C.AddPodLabels):
            self.pod_labels[step.pod].update(step.labels)
        elif isinstance(step, C.ResetPodLabels):
            self.pod_labels[step.pod] = step.labels


@pytest.mark.parametrize("case", C.CASES, ids=lambda c: c.id)
def test_expectations_agree_with_policy_semantics(case: C.Case) -> None:
    world = _World(case)
    for step in case.steps:
        if isinstance(step, C.WaitForServers):
            assert not world.policies
            assert all(world.connected(s, d, port, proto) for port in step.ports for proto in step.protocols
                       for s in M.ALL_PODS for d in M.ALL_PODS)
        elif isinstance(step, C.Probe):
            wrong = [(s, d, v) for s, d, v in step.checked_pairs()
                     if world.connected(s, d, step.port, step.protocol) != v]
            assert not wrong, f"{case.id}: {step.protocol}/{step.port}: {wrong}"
        else:
            world.run(step)
    for step in case.cleanup:
        world.run(step)
    assert world.ns_labels == {ns: M.namespace_labels(ns) for ns in M.NAMESPACES}
    assert world.pod_labels == {p: M.pod_labels(p) for p in M.ALL_PODS}
