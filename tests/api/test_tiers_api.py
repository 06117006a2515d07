"""Observability of ClusterNetworkPolicy tiers through the API, from states
the compiler made out of manifests (no daemon, no kernel): explain's
pipeline trace and its check against the live maps (here a stand-in that
answers lookups the way the kernel's maps do, from the compiled contents),
flows and counters carrying the tier and the rule, metrics' tier label,
`enforcer policies` listing cluster policies with their local subjects,
status reporting notices and invalid cluster policies; and the CLI's text
for each."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from enforcer.api import client
from enforcer.api.explain import explain
from enforcer.api.flows import FlowHub, flow_from_verdict, matches
from enforcer.api.metrics import DaemonCollector
from enforcer.api.service import EnforcerService
from enforcer.api.view import LIST_MAX, StateView
from enforcer.compiler.compile import Compiler, NodeContext
from enforcer.compiler.evaluate import IpcacheIndex, _keys_longest_first
from enforcer.daemon.failures import WriteFailures
from enforcer.daemon.runtime import Status
from enforcer.datapath.events import Verdict
from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS
from enforcer.datapath.reasons import Reason
from enforcer.model.state import ClusterStore
from enforcer.records import PolicyMapKey, PolicyValue
from enforcer.v1 import enforcer_pb2 as pb
from tests.compiler.cluster import NODE, PODS, base_objects, ip_of, policy
from tests.compiler.test_cluster_policies import ALL, NODE_IP, cnp, node_obj, ns_peer, ns_subject

LOCAL = [k for k, v in PODS.items() if v[3] == NODE]


def build(objects: list[dict[str, Any]]) -> StateView:
    store = ClusterStore()
    store.replace_all(base_objects() + objects, [])
    snap = store.snapshot()
    node = NodeContext(NODE, (ipaddress.ip_address(NODE_IP),), {k: 100 + i for i, k in enumerate(LOCAL)})
    return StateView(snap, Compiler().compile(snap, node))


class LiveMap:
    def __init__(self, lookup) -> None:  # type: ignore[no-untyped-def]
        self.lookup = lookup


class LiveMaps:
    """Stands in for DatapathMaps: the maps as sync would write the
    compiled state (`policy`: its policy map, possibly tampered with),
    looked up as the kernel does (hash maps exact, LPM tries longest)."""

    def __init__(self, view: StateView, policy: dict[PolicyMapKey, PolicyValue] | None = None) -> None:
        d = view.desired
        self.policy = dict(d.policy) if policy is None else policy
        prefixes = IpcacheIndex(d.ipcache, prefixes_only=True)

        def endpoint(key):  # type: ignore[no-untyped-def]
            spec = d.endpoints.get(key.ip())
            return None if spec is None else SimpleNamespace(id=spec.endpoint_id, flags=spec.flags)

        def host(key):  # type: ignore[no-untyped-def]
            ident = d.ipcache.get(key.network())
            return None if ident is None else SimpleNamespace(identity=ident)

        def lpm(key):  # type: ignore[no-untyped-def]
            ip = key.network().network_address
            return SimpleNamespace(identity=prefixes.lookup(ip))

        def policy_lpm(key):  # type: ignore[no-untyped-def]
            for k in _keys_longest_first(key.identity, key.endpoint_id, key.direction, key.protocol,
                                         socket.ntohs(key.dport)):
                if (v := self.policy.get(k)) is not None:
                    return SimpleNamespace(rule_id=v.rule_id, reason=v.reason, audit_rule_id=v.audit_rule_id,
                                           audit_reason=v.audit_reason)
            return None

        self.maps = {"endpoints": LiveMap(endpoint), "ipcache_hosts": LiveMap(host), "ipcache": LiveMap(lpm),
                     "policy": LiveMap(policy_lpm)}

    def __getitem__(self, name: str) -> LiveMap:
        return self.maps[name]


class StandIn:
    """What EnforcerService and DaemonCollector read of a Daemon."""

    def __init__(self, view: StateView | None, counters: dict | None = None) -> None:  # type: ignore[type-arg]
        self._view = view
        self.status = Status(ready=True, write_failures=WriteFailures())
        self.config = SimpleNamespace(node_name=NODE)
        self.maps = LiveMaps(view) if view is not None else None
        self._counters = counters or {}

    def view(self) -> StateView | None:
        return self._view

    def map_occupancy(self) -> dict[str, tuple[int, int]]:
        return {}

    def counters(self, endpoint_id: int) -> dict:  # type: ignore[type-arg]
        return self._counters.get(endpoint_id, {})

    def event_stats(self) -> dict[str, int]:
        return {}

    def interface_names(self) -> dict[int, str]:
        return {}


class Stub:
    """client's calls answered by the service in-process."""

    def __init__(self, service: EnforcerService) -> None:
        self.service = service

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self.service, name)
        return lambda req, timeout=None: method(req, None)


def explain_of(view: StateView, src: str, dst: str, proto: str = "TCP", port: int = 80,
               maps: Any = "live") -> pb.ExplainResponse:
    live = LiveMaps(view) if maps == "live" else maps
    return explain(view, live, pb.ExplainRequest(source=src, destination=dst, protocol=proto, port=port))


def hook(resp: pb.ExplainResponse, direction: int) -> pb.HookExplanation:
    (h,) = [h for h in resp.hooks if h.direction == direction]
    return h


PASS_X = cnp("pass-x", "Admin", 5, ns_subject("y"), ingress=[{"name": "skip", "action": "Pass", "from": [ns_peer("x")]}])
BASELINE_DENY = cnp("baseline-y", "Baseline", 10, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL]}])
BASELINE_PASS_X = cnp("b-pass", "Baseline", 1, ns_subject("y"), ingress=[{"action": "Pass", "from": [ns_peer("x")]}])
DENY_X = cnp("deny-x", "Admin", 10, ns_subject("y"), ingress=[{"name": "block", "action": "Deny", "from": [ns_peer("x")]}])
NP_Y_ALLOW_ALL = policy("y", "allow-all", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]})
NP_Y_DENY_ALL = policy("y", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]})
NO_NODES = cnp("no-nodes", "Admin", 1, ns_subject("x"), egress=[{"action": "Deny", "to": [{"nodes": {}}]}])
ANP_OLD = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
           "metadata": {"name": "old"}, "spec": {"priority": 3, "subject": ns_subject("z"),
                                                 "ingress": [{"name": "r", "action": "Deny", "from": [ns_peer("x")]}]}}

# (name, objects, src, dst, port, the ingress of dst: (allowed, tier, trace, first line of it in the CLI))
EXPLAIN_CASES = [
    ("Admin Deny names its rule", [DENY_X], "x/a", "y/a", 80,
     (False, "Admin", ['Admin deny-x (priority 10) ingress rule 0 "block": Deny'],
      'ingress of y/a: denied by Admin deny-x (priority 10) ingress rule 0 "block"')),
    ("Admin Pass -> NetworkPolicy not isolated -> Baseline Deny", [PASS_X, BASELINE_DENY], "x/a", "y/a", 80,
     (False, "Baseline", ['Admin pass-x (priority 5) ingress rule 0 "skip": Pass', "NetworkPolicy: not isolated",
                          "Baseline baseline-y (priority 10) ingress rule 0: Deny"],
      "ingress of y/a: denied by Baseline baseline-y (priority 10) ingress rule 0")),
    ("Admin Pass -> NetworkPolicy isolated, final over Baseline", [PASS_X, BASELINE_DENY, NP_Y_ALLOW_ALL],
     "x/a", "y/a", 80,
     (True, "NetworkPolicy", ['Admin pass-x (priority 5) ingress rule 0 "skip": Pass',
                              "NetworkPolicy: isolated: allowed (final)"],
      "ingress of y/a: allowed by NetworkPolicy y/allow-all ingress rule 0")),
    ("NetworkPolicy isolated and no rule allows", [PASS_X, NP_Y_DENY_ALL], "x/a", "y/a", 80,
     (False, "NetworkPolicy", ['Admin pass-x (priority 5) ingress rule 0 "skip": Pass',
                               "NetworkPolicy: isolated: no rule allows (final)"],
      "ingress of y/a: denied (no rule allows) [NetworkPolicy]")),
    ("no Admin rule matches, Baseline Pass -> default allow", [DENY_X, BASELINE_PASS_X, BASELINE_DENY],
     "z/c", "y/a", 80,
     (False, "Baseline", ["NetworkPolicy: not isolated", "Baseline baseline-y (priority 10) ingress rule 0: Deny"],
      "ingress of y/a: denied by Baseline baseline-y (priority 10) ingress rule 0")),
    ("Baseline Pass goes to the default", [BASELINE_PASS_X, BASELINE_DENY], "x/a", "y/a", 80,
     (True, "default", ["NetworkPolicy: not isolated", "Baseline b-pass (priority 1) ingress rule 0: Pass",
                        "default: allow"],
      "ingress of y/a: allowed (default allow)")),
    ("a converted AdminNetworkPolicy names its kind", [ANP_OLD], "x/a", "z/c", 80,
     (False, "Admin", ['Admin AdminNetworkPolicy/old (priority 3) ingress rule 0 "r": Deny'],
      'ingress of z/c: denied by Admin AdminNetworkPolicy/old (priority 3) ingress rule 0 "r"')),
    ("NetworkPolicy only: no trace, as before", [NP_Y_ALLOW_ALL], "x/a", "y/a", 80,
     (True, "NetworkPolicy", [], "ingress of y/a: allowed by NetworkPolicy y/allow-all ingress rule 0")),
]


@pytest.mark.parametrize("name, objects, src, dst, port, want", EXPLAIN_CASES, ids=[c[0] for c in EXPLAIN_CASES])
def test_explain_trace_tier_rule_and_cli(name, objects, src, dst, port, want):
    allowed, tier, trace, line = want
    view = build(objects)
    resp = explain_of(view, src, dst, port=port)
    h = hook(resp, pb.DIRECTION_INGRESS)
    assert (h.allowed, h.tier, list(h.trace)) == (allowed, tier, trace), name
    assert list(h.cluster_policies) == view.desired.cluster_selected_by.get(dst, [])
    assert h.maps_agree and resp.maps_agree, h.maps_detail
    text = client.show_explain(SimpleNamespace(Explain=lambda req, timeout: resp), False, pb.ExplainRequest())
    assert f"  {line}\n" in text + "\n", text
    for step in trace:
        assert f"\n      {step}" in text, text


def test_explain_trace_admin_pass_then_networkpolicy_then_baseline():
    """The pipeline in order: Admin's Pass hands over, NetworkPolicy does
    not isolate, Baseline's Deny decides; every RuleRef field is filled."""
    view = build([PASS_X, BASELINE_DENY, node_obj(NODE, NODE_IP)])
    resp = explain_of(view, "x/a", "y/a")
    h = hook(resp, pb.DIRECTION_INGRESS)
    assert list(h.trace) == ['Admin pass-x (priority 5) ingress rule 0 "skip": Pass',
                             "NetworkPolicy: not isolated",
                             "Baseline baseline-y (priority 10) ingress rule 0: Deny"]
    assert [s.split()[0] for s in h.trace] == ["Admin", "NetworkPolicy:", "Baseline"]
    assert h.tier == "Baseline" and not h.allowed and not resp.allowed
    assert list(h.cluster_policies) == ["pass-x", "baseline-y"]  # evaluation order
    (rule,) = h.rules
    assert (rule.policy, rule.direction, rule.rule_index, rule.tier, rule.kind, rule.priority, rule.action,
            rule.rule_name) == ("baseline-y", pb.DIRECTION_INGRESS, 0, "Baseline", "ClusterNetworkPolicy", 10,
                                "Deny", "")
    assert h.why == "denied by Baseline baseline-y (priority 10) ingress rule 0"
    assert "y/a ingress: denied by Baseline baseline-y" in resp.summary
    assert "DROP_BASELINE" in h.maps_detail and h.maps_agree
    # The other end: x/a's egress, no cluster policy: today's output.
    e = hook(resp, pb.DIRECTION_EGRESS)
    assert (e.allowed, e.why, list(e.trace), list(e.cluster_policies)) == (True, "not isolated", [], [])


def test_explain_host_egress_judged_by_the_map():
    """EP_F_EGRESS_HOST_JUDGED: the own node in egress is looked up in the
    policy map (IDENTITY_HOST); without it, the host passes."""
    view = build([node_obj(NODE, NODE_IP), NO_NODES])
    resp = explain_of(view, "x/a", NODE_IP, port=10250)
    h = hook(resp, pb.DIRECTION_EGRESS)
    assert not h.allowed and h.tier == "Admin" and list(h.trace) == ["Admin no-nodes (priority 1) egress rule 0: Deny"]
    assert h.maps_agree and "DROP_ADMIN" in h.maps_detail
    other = hook(explain_of(view, "y/a", NODE_IP, port=10250), pb.DIRECTION_EGRESS)
    assert other.allowed and other.why == "host" and not other.trace and other.maps_agree


def _tamper(view: StateView, reason: str | None = None, rule_id: int | None = None) -> LiveMaps:
    """The live maps with every entry of the compiled reason DROP_ADMIN
    changed."""
    tampered = {}
    for k, v in view.desired.policy.items():
        if v.reason == Reason["DROP_ADMIN"]:
            v = replace_value(v, reason, rule_id)
        tampered[k] = v
    return LiveMaps(view, tampered)


def replace_value(v: PolicyValue, reason: str | None, rule_id: int | None) -> PolicyValue:
    return PolicyValue(v.rule_id if rule_id is None else rule_id,
                       v.reason if reason is None else int(Reason[reason]))


# (name, how the live map differs, maps_agree)
MAPS_CASES = [
    ("the same entries", None, None, True),
    ("another reason of the same verdict (Baseline's Deny)", "DROP_BASELINE", None, False),
    ("another rule", None, 12345, False),
    ("the verdict flipped", "ALLOW_ADMIN", None, False),
]


@pytest.mark.parametrize("name, reason, rule_id, agree", MAPS_CASES, ids=[c[0] for c in MAPS_CASES])
def test_maps_agree_compares_reason_and_rule(name, reason, rule_id, agree):
    view = build([DENY_X])
    resp = explain_of(view, "x/a", "y/a", maps=_tamper(view, reason, rule_id))
    h = hook(resp, pb.DIRECTION_INGRESS)
    assert h.maps_agree == agree and resp.maps_agree == agree, h.maps_detail
    if not agree:
        assert "compiled: DROP_ADMIN" in h.maps_detail
    # An unrelated hook still agrees.
    assert hook(explain_of(view, "z/c", "y/a", maps=_tamper(view, reason, rule_id)), pb.DIRECTION_INGRESS).maps_agree


def test_maps_agree_for_every_local_pair_and_protocol():
    view = build([PASS_X, DENY_X, BASELINE_DENY, NO_NODES, node_obj(NODE, NODE_IP), NP_Y_ALLOW_ALL, ANP_OLD])
    maps = LiveMaps(view)
    for src in [*PODS, NODE_IP]:
        for dst in [*PODS, NODE_IP]:
            if src == dst:
                continue
            for proto, port in (("TCP", 80), ("UDP", 53), ("ICMP", 0), ("TCP", 10250)):
                resp = explain_of(view, src, dst, proto, port, maps=maps)
                assert resp.maps_agree or not resp.hooks, (src, dst, proto, port, resp)


def _verdict(view: StateView, src: str, dst: str, reason: str, direction: str, rule_id: int) -> Verdict:
    pod = dst if direction == "ingress" else src
    ep = view.desired.endpoints[ip_of(pod)]
    return Verdict(timestamp_ns=1, allowed=not reason.startswith("DROP_"), reason=Reason[reason],
                   direction=direction, endpoint_id=ep.endpoint_id, ifindex=ep.ifindex, peer_identity=0,
                   rule_id=rule_id, proto=6, src=ip_of(src), dst=ip_of(dst), sport=40000, dport=80, tcp_flags=2)


def _rule_id(view: StateView, policy_key: str) -> int:
    return next(i for i, r in view.desired.rules.items() if r.policy == policy_key)


# (name, src, dst, reason, which policy's rule (None: none), tier, the CLI's verdict text)
FLOW_CASES = [
    ("an Admin drop names its rule", "x/a", "y/a", "DROP_ADMIN", "deny-x", "Admin",
     'DROP_ADMIN by Admin deny-x (priority 10) ingress rule 0 "block"'),
    ("a Baseline drop", "z/c", "y/a", "DROP_BASELINE", "baseline-y", "Baseline",
     "DROP_BASELINE by Baseline baseline-y (priority 10) ingress rule 0"),
    ("a NetworkPolicy allow", "z/c", "x/a", "ALLOW_POLICY", "x/allow", "NetworkPolicy",
     "ALLOW_POLICY by NetworkPolicy x/allow ingress rule 0"),
    ("NetworkPolicy's default deny has no rule", "z/c", "x/b", "DROP_POLICY", None, "NetworkPolicy",
     "DROP_POLICY (NetworkPolicy)"),
    ("not isolated: no tier", "x/a", "z/c", "ALLOW_NOT_ISOLATED", None, "", "ALLOW_NOT_ISOLATED"),
]
FLOW_OBJECTS = [DENY_X, BASELINE_DENY,
                policy("x", "allow", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
                policy("x", "deny", {"podSelector": {"matchLabels": {"pod": "b"}}})]


@pytest.mark.parametrize("name, src, dst, reason, pol, tier, text", FLOW_CASES, ids=[c[0] for c in FLOW_CASES])
def test_flows_carry_tier_and_rule(name, src, dst, reason, pol, tier, text):
    view = build(FLOW_OBJECTS)
    rule_id = _rule_id(view, pol) if pol else 0
    flow = flow_from_verdict(_verdict(view, src, dst, reason, "ingress", rule_id), view, 0.0)
    assert flow.tier == tier
    if pol:
        ref = view.desired.rules[rule_id]
        assert (flow.rule.policy, flow.rule.tier, flow.rule.kind, flow.rule.priority, flow.rule.action,
                flow.rule.rule_name, flow.rule.rule_index) == (ref.policy, ref.tier, ref.kind, ref.priority,
                                                               ref.action, ref.name, ref.index)
    else:
        assert not flow.HasField("rule")
    assert client.flow_line(flow).endswith(f"of {dst}: {text})"), client.flow_line(flow)
    for want in ("Admin", "Baseline", "NetworkPolicy"):
        assert matches(flow, pb.StreamFlowsRequest(tier=want)) == (want == tier)
        assert matches(flow, pb.StreamFlowsRequest(tier=want.lower())) == (want == tier)
    assert matches(flow, pb.StreamFlowsRequest())


def test_stream_flows_filters_by_tier():
    view = build(FLOW_OBJECTS)
    hub = FlowHub(lambda: view)
    for _, src, dst, reason, pol, _, _ in FLOW_CASES:
        hub.publish(_verdict(view, src, dst, reason, "ingress", _rule_id(view, pol) if pol else 0))
    got = {t: [f.reason for f in hub.subscribe(pb.StreamFlowsRequest(since_recent=True, tier=t), lambda: True)]
           for t in ("Admin", "Baseline", "NetworkPolicy")}
    assert got == {"Admin": [pb.REASON_DROP_ADMIN], "Baseline": [pb.REASON_DROP_BASELINE],
                   "NetworkPolicy": [pb.REASON_ALLOW_POLICY, pb.REASON_DROP_POLICY]}
    denied_admin = pb.StreamFlowsRequest(since_recent=True, tier="Admin", verdict=pb.StreamFlowsRequest.VERDICT_FILTER_ALLOWED)
    assert not list(hub.subscribe(denied_admin, lambda: True))
    context = SimpleNamespace(abort=lambda code, text: (_ for _ in ()).throw(ValueError(code, text)))
    service = EnforcerService(StandIn(view), hub, "directory:/x")
    with pytest.raises(ValueError, match="unknown tier"):
        list(service.StreamFlows(pb.StreamFlowsRequest(tier="Gold"), context))  # type: ignore[arg-type]


def test_cli_flows_has_a_tier_filter():
    from enforcer.cli import build_parser

    args = build_parser().parse_args(["flows", "--tier", "Admin"])
    assert args.tier == "Admin"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["flows", "--tier", "Gold"])


COUNTERS = {(DIR_INGRESS, Reason["DROP_ADMIN"]): (3, 300), (DIR_INGRESS, Reason["ALLOW_BASELINE"]): (4, 400),
            (DIR_EGRESS, Reason["ALLOW_POLICY"]): (5, 500), (DIR_EGRESS, Reason["DROP_POLICY"]): (6, 600),
            (DIR_EGRESS, Reason["ALLOW_NOT_ISOLATED"]): (7, 700), (DIR_INGRESS, Reason["DROP_BASELINE"]): (8, 800),
            (DIR_INGRESS, Reason["ALLOW_ADMIN"]): (9, 900), (DIR_EGRESS, Reason["ALLOW_AUDIT"]): (10, 1000)}
# reason -> (direction, packets, tier label)
METRIC_LINES = [
    ("DROP_ADMIN", "ingress", 3, "Admin", "denied"),
    ("ALLOW_ADMIN", "ingress", 9, "Admin", "allowed"),
    ("ALLOW_BASELINE", "ingress", 4, "Baseline", "allowed"),
    ("DROP_BASELINE", "ingress", 8, "Baseline", "denied"),
    ("ALLOW_POLICY", "egress", 5, "NetworkPolicy", "allowed"),
    ("DROP_POLICY", "egress", 6, "NetworkPolicy", "denied"),
    ("ALLOW_NOT_ISOLATED", "egress", 7, "", "allowed"),
    ("ALLOW_AUDIT", "egress", 10, "", "audit"),  # passed; a policy in audit mode would drop it
]


@pytest.mark.parametrize("reason, direction, packets, tier, verdict", METRIC_LINES, ids=[m[0] for m in METRIC_LINES])
def test_metrics_and_counters_carry_the_tier(reason, direction, packets, tier, verdict):
    view = build([DENY_X])
    ep_id = view.desired.endpoints[ip_of("y/a")].endpoint_id
    daemon = StandIn(view, {ep_id: COUNTERS})
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    text = generate_latest(registry).decode()
    assert (f'enforcer_verdicts_total{{direction="{direction}",namespace="y",pod="a",reason="{reason}",'
            f'tier="{tier}",verdict="{verdict}"}} {float(packets)}') in text, text
    resp = EnforcerService(daemon, FlowHub(lambda: view), "x").GetCounters(  # type: ignore[arg-type]
        pb.GetCountersRequest(namespace="y", pod="a"), None)
    (c,) = [c for c in resp.counters if c.reason == pb.Reason.Value(f"REASON_{reason}")]
    assert (c.tier, c.packets) == (tier, packets)
    table = client.show_counters(Stub(EnforcerService(daemon, FlowHub(lambda: view), "x")), False, "y", "a")
    assert any(reason in line and (tier or "-") in line.split() for line in table.splitlines()), table


DOMAINS = cnp("domains", "Admin", 1, ns_subject("x"), egress=[
    {"action": "Accept", "to": [{"domainNames": ["example.com"]}]}, {"action": "Deny", "to": [ns_peer("y")]}])
SAME_A = cnp("a", "Admin", 5, ns_subject("y"), ingress=[{"action": "Accept", "from": [ALL]}])
SAME_B = cnp("b", "Admin", 5, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL]}])
INVALID = cnp("bad", "Admin", 5000, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL]}])


def test_policies_list_cluster_policies_with_local_subjects():
    view = build([DENY_X, BASELINE_DENY, DOMAINS, ANP_OLD, NP_Y_ALLOW_ALL,
                  cnp("nobody-here", "Admin", 7, ns_subject("nope"), ingress=[{"action": "Deny", "from": [ALL]}])])
    service = EnforcerService(StandIn(view), FlowHub(lambda: view), "x")
    resp = service.ListPolicies(pb.ListPoliciesRequest(), None)  # type: ignore[arg-type]
    got = [(c.name, c.tier, c.priority, c.kind, list(c.selected_endpoints), c.ingress_rules, c.egress_rules)
           for c in resp.cluster_policies]
    assert got == [  # evaluation order: Admin by priority, then Baseline
        ("domains", "Admin", 1, "ClusterNetworkPolicy", ["x/a", "x/b"], 0, 2),
        ("AdminNetworkPolicy/old", "Admin", 3, "AdminNetworkPolicy", ["z/c"], 1, 0),
        ("nobody-here", "Admin", 7, "ClusterNetworkPolicy", [], 1, 0),
        ("deny-x", "Admin", 10, "ClusterNetworkPolicy", ["y/a"], 1, 0),  # y/b is on another node
        ("baseline-y", "Baseline", 10, "ClusterNetworkPolicy", ["y/a"], 1, 0),
    ]
    by = {c.name: c for c in resp.cluster_policies}
    assert by["deny-x"].entries > 0 and by["nobody-here"].entries == 0
    # baseline-y decides nothing for y/a: an NetworkPolicy isolates its ingress.
    assert by["baseline-y"].entries == 0
    assert any("domainNames" in w for w in by["domains"].warnings) and not by["deny-x"].warnings
    assert [p.name for p in resp.policies] == ["allow-all"]  # NetworkPolicies as before
    text = client.show_policies(Stub(service), False)
    assert "cluster policy" in text and "selects (local)" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("deny-x ")]
    assert line.split()[:7] == ["deny-x", "Admin", "10", "ClusterNetworkPolicy", "enforce", "1/0",
                                str(by["deny-x"].entries)]
    assert "y/a" in line
    assert "domainNames" in next(ln for ln in text.splitlines() if ln.startswith("domains "))


def test_policies_without_cluster_policies_print_as_before():
    view = build([NP_Y_ALLOW_ALL])
    service = EnforcerService(StandIn(view), FlowHub(lambda: view), "x")
    assert not service.ListPolicies(pb.ListPoliciesRequest(), None).cluster_policies  # type: ignore[arg-type]
    assert "cluster policy" not in client.show_policies(Stub(service), False)


def test_status_reports_cluster_policies_notices_and_invalid_ones():
    view = build([SAME_A, SAME_B, INVALID, DOMAINS])
    service = EnforcerService(StandIn(view), FlowHub(lambda: view), "directory:/x")
    st = service.Status(pb.StatusRequest(), None)  # type: ignore[arg-type]
    assert st.cluster_network_policies == len(view.snapshot.cluster_policies) == 3  # bad was never valid
    assert len(st.notices) == 1 and "a and b have the same priority (5)" in st.notices[0]
    assert st.notices_omitted == 0
    invalid = {(o.kind, o.name): o.error for o in st.invalid_objects}
    assert "priority" in invalid[("ClusterNetworkPolicy", "bad")]
    assert "domainNames" in invalid[("ClusterNetworkPolicy", "domains")]
    text = client.show_status(Stub(service), False)
    assert "3 cluster network policies" in text
    assert "cluster policy notices:\n  Admin cluster policies a and b have the same priority" in text
    assert "ClusterNetworkPolicy bad:" in text


def test_status_notices_are_bounded():
    view = build([SAME_A, SAME_B])
    many = replace_desired(view, notices=[f"notice {i}" for i in range(10 * LIST_MAX)])
    st = EnforcerService(StandIn(many), FlowHub(lambda: many), "x").Status(pb.StatusRequest(), None)  # type: ignore[arg-type]
    assert len(st.notices) == LIST_MAX and st.notices_omitted == 9 * LIST_MAX
    text = client.show_status(Stub(EnforcerService(StandIn(many), FlowHub(lambda: many), "x")), False)
    assert f"... and {9 * LIST_MAX} more notices" in text


def replace_desired(view: StateView, **changes: Any) -> StateView:
    desired = replace(view.desired, **changes)
    return StateView(view.snapshot, desired)
