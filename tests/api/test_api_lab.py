"""The API against the real daemon in the lab: status, flows, explain
against real probes, socket permissions, reflection, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from enforcer.api import client
from enforcer.lab.probe import ProbeSpec, probe_many
from enforcer.sources.directory import directory_revision
from enforcer.v1 import enforcer_pb2 as pb
from tests.conformance import cases as C
from tests.conformance import model as M
from tests.conformance.runner import lab_name

from .audit_checks import check_audit_against_enforcement

pytestmark = pytest.mark.lab


def stub(lab):
    return client.connect(lab.daemon.socket)


def write_policy(lab, name: str, policy: dict) -> None:
    lab._write(f"policies/{name}.yaml", [policy])
    lab.sync()


def test_status_matches_what_was_applied(api_lab):
    api_lab.reset()
    write_policy(api_lab, "x-deny", C.gen_network_policy_with_name_and_pod_selector("deny-all", {})
                 | {"metadata": {"name": "deny-all", "namespace": "x"}})
    api_lab._write("policies/x-broken.yaml", [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                               "metadata": {"name": "broken", "namespace": "x"},
                                               "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}])
    api_lab.sync()
    st = stub(api_lab).Status(pb.StatusRequest(), timeout=10)
    assert st.ready and st.node == "lab-node"
    assert st.source_revision == directory_revision(api_lab.source)
    assert (st.namespaces, st.pods, st.network_policies, st.local_endpoints) == (3, 9, 2, 9)
    maps = {m.name: m for m in st.maps}
    assert maps["endpoints"].entries == 18 and maps["endpoints"].capacity > 0  # 9 pods x 2 families
    assert maps["ipcache_hosts"].entries >= 18
    (bad,) = [o for o in st.invalid_objects if o.name == "broken"]
    assert (bad.kind, bad.namespace) == ("NetworkPolicy", "x") and "invalid CIDR '10.0.0.0/33'" in bad.error
    assert not st.sync_failures and st.entries_not_written == 0 and not st.map_write_failures
    assert (st.invalid_objects_omitted, st.unplaced_pods_omitted, st.sync_failures_omitted) == (0, 0, 0)
    eps = stub(api_lab).ListEndpoints(pb.ListEndpointsRequest(), timeout=10).endpoints
    xa = next(e for e in eps if (e.namespace, e.pod) == ("x", "a"))
    assert xa.ingress_isolated and not xa.egress_isolated and xa.interface == api_lab.lab.pod("xa").host_ifname
    assert set(xa.policies) == {"x/deny-all", "x/broken"}
    pols = {f"{p.namespace}/{p.name}": p for p in stub(api_lab).ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies}
    assert pols["x/deny-all"].selected_endpoints == ["x/a", "x/b", "x/c"] and pols["x/deny-all"].entries == 0
    assert "invalid CIDR" in pols["x/broken"].error


def _flows(lab, **req) -> list[pb.Flow]:
    return list(stub(lab).StreamFlows(pb.StreamFlowsRequest(since_recent=True, **req), timeout=10))


def test_flows_attribute_drops_and_allows(api_lab):
    api_lab.reset()
    ya, xa = api_lab.pod_ips()["y/a"][0], api_lab.pod_ips()["x/a"][0]
    allow = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "allow-y-81", "namespace": "x"},
             "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                                   "ports": [{"port": 81}]}]}}
    write_policy(api_lab, "x-allow", allow)
    netns = api_lab.lab.pod("ya").netns
    denied, allowed = probe_many([ProbeSpec(netns, xa, 80), ProbeSpec(netns, xa, 81)])
    assert not denied.ok and allowed.ok
    time.sleep(0.3)  # the ring buffer is polled every 200 ms
    drops = [f for f in _flows(api_lab, namespace="x", verdict=2)
             if f.destination.ip == xa and f.destination.port == 80 and f.source.ip == ya]
    assert drops, "the denied probe is not in the flow stream"
    d = drops[-1]
    assert (d.source.namespace, d.source.pod, d.destination.namespace, d.destination.pod) == ("y", "a", "x", "a")
    assert (d.reason, d.allowed, d.endpoint, d.direction) == (pb.REASON_DROP_POLICY, False, "x/a", pb.DIRECTION_INGRESS)
    assert d.protocol == "TCP" and "pods of y" in d.source.identity_description
    oks = [f for f in _flows(api_lab, pod="a", namespace="x", verdict=1)
           if f.destination.ip == xa and f.destination.port == 81 and f.source.ip == ya and f.reason == pb.REASON_ALLOW_POLICY]
    assert oks, "the allowed probe is not in the flow stream"
    assert (oks[-1].rule.policy, oks[-1].rule.rule_index, oks[-1].rule.direction) == ("x/allow-y-81", 0, pb.DIRECTION_INGRESS)
    # Filters hold: nothing of another namespace, no drop when asking for allowed.
    assert all("z" in (f.source.namespace, f.destination.namespace) for f in _flows(api_lab, namespace="z"))
    assert all(f.allowed for f in _flows(api_lab, verdict=1))
    # Flows go to the API; the log gets none without --log-flows.
    assert "enforcer.flows" not in api_lab.daemon.log_text()


CASE = C.CASES_BY_ID["netpol/should-enforce-policy-based-on-podselector-and-namespaceselector"]


@pytest.mark.parametrize("port,protocol", [(80, "TCP"), (81, "UDP")])
def test_explain_agrees_with_real_probes_for_all_81_pairs(api_lab, port, protocol):
    api_lab.reset()
    for step in CASE.steps:
        if isinstance(step, C.ApplyPolicy):
            api_lab.apply(step)
    api_lab.sync()
    ips = api_lab.pod_ips()
    pairs = [(s, d) for s in M.ALL_PODS for d in M.ALL_PODS]
    real = probe_many([ProbeSpec(api_lab.lab.pod(lab_name(s)).netns, ips[d][0], port, protocol.lower())
                       for s, d in pairs], timeout=1.0)
    s = stub(api_lab)
    disagree = []
    for (src, dst), result in zip(pairs, real, strict=False):
        resp = s.Explain(pb.ExplainRequest(source=src, destination=dst, protocol=protocol, port=port), timeout=10)
        assert resp.maps_agree, f"{src} -> {dst}: maps disagree: {resp}"
        if resp.allowed != result.ok:
            disagree.append(f"{src}->{dst}: explain {resp.allowed}, probe {result.outcome}")
    assert not disagree, disagree
    # ...and the probes are the upstream truth table for this case.
    expected = next(p for p in CASE.probes if p.port == 80).expected
    if protocol == "TCP":
        for (src, dst), result in zip(pairs, real, strict=False):
            if src != dst:
                assert result.ok == expected[src][dst], (src, dst)


def test_explain_names_the_rules_and_isolating_policies(api_lab):
    api_lab.reset()
    for step in CASE.steps:
        if isinstance(step, C.ApplyPolicy):
            api_lab.apply(step)
    api_lab.sync()
    allowed_pair = next((s, d) for s, row in next(iter(CASE.probes)).expected.items() for d, v in row.items()
                        if v and s != d and d.startswith("x/a"))
    resp = stub(api_lab).Explain(pb.ExplainRequest(source=allowed_pair[0], destination=allowed_pair[1], port=80), timeout=10)
    ingress = next(h for h in resp.hooks if h.direction == pb.DIRECTION_INGRESS)
    assert ingress.why == "allowed by policy" and ingress.rules and ingress.isolating_policies
    denied = stub(api_lab).Explain(pb.ExplainRequest(source="z/c", destination="x/a", port=80), timeout=10)
    assert not denied.allowed and "no rule allows" in denied.summary
    with pytest.raises(grpc.RpcError) as err:
        stub(api_lab).Explain(pb.ExplainRequest(source="nope/none", destination="x/a", port=80), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


NON_ROOT_CLIENT = """
import sys, grpc
from enforcer.v1 import enforcer_pb2 as pb, enforcer_pb2_grpc as g
try:
    g.EnforcerStub(grpc.insecure_channel("unix:" + sys.argv[1])).Status(pb.StatusRequest(), timeout=5)
    print("CONNECTED")
except grpc.RpcError as e:
    print("REFUSED", e.code().name, e.details())
"""


def test_socket_is_root_only(api_lab):
    sock = api_lab.daemon.socket
    assert (os.stat(sock).st_mode & 0o777) == 0o600 and os.stat(sock).st_uid == 0
    def as_nobody() -> None:
        os.setgid(65534)
        os.setuid(65534)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", NON_ROOT_CLIENT, str(sock)], capture_output=True, text=True,
                         preexec_fn=as_nobody, env=env, timeout=30)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    # root gets in
    assert stub(api_lab).Status(pb.StatusRequest(), timeout=10).ready


def test_reflection_lists_the_services(api_lab):
    channel = grpc.insecure_channel(f"unix:{api_lab.daemon.socket}")
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"enforcer.v1.Enforcer", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def enforcer_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "enforcer", *args], capture_output=True, text=True, timeout=60)


def test_cli_tables_json_and_clear_errors(api_lab, tmp_path):
    sock = str(api_lab.daemon.socket)
    out = enforcer_cli("status", "--socket", sock)
    assert out.returncode == 0 and "ready" in out.stdout and "map" in out.stdout, out.stderr
    st = json.loads(enforcer_cli("status", "--socket", sock, "--json").stdout)
    assert st["ready"] is True and st["node"] == "lab-node"
    eps = enforcer_cli("endpoints", "--socket", sock)
    assert "x/a" in eps.stdout and "ingress-isolated" in eps.stdout
    ex = enforcer_cli("explain", "y/a", "x/b", "--port", "80", "--socket", sock)
    assert ex.returncode == 0 and "y/a -> x/b TCP/80" in ex.stdout
    flows = enforcer_cli("flows", "--socket", sock, "--json")
    assert flows.returncode == 0 and all(json.loads(line) for line in flows.stdout.splitlines())
    missing = enforcer_cli("status", "--socket", str(tmp_path / "none.sock"))
    assert missing.returncode == 1 and "no daemon socket" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_flows_follow_streams_live_drops(api_lab):
    api_lab.reset()
    write_policy(api_lab, "z-deny", {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                     "metadata": {"name": "deny", "namespace": "z"}, "spec": {"podSelector": {}}})
    proc = subprocess.Popen([sys.executable, "-m", "enforcer", "flows", "--follow", "--json", "--verdict", "denied",
                             "--namespace", "z", "--socket", str(api_lab.daemon.socket)],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # subscribed
        zb = api_lab.pod_ips()["z/b"][0]
        deadline = time.monotonic() + 15
        found = None
        while found is None and time.monotonic() < deadline:
            probe_many([ProbeSpec(api_lab.lab.pod("xa").netns, zb, 81, "udp")], timeout=0.5)
            line = proc.stdout.readline()
            flow = json.loads(line)
            if flow["destination"].get("pod") == "b" and flow["destination"]["port"] == 81:
                found = flow
        assert found and found["reason"] == "REASON_DROP_POLICY" and found["protocol"] == "UDP"
        assert found["source"]["namespace"] == "x" and found["endpoint"] == "z/b"
    finally:
        proc.kill()
        proc.wait()


def test_cluster_policy_tiers_in_flows_explain_policies_and_status(api_lab):
    """An Admin Deny and a Baseline Deny against the real datapath: the
    drops' flows name the tier and the rule, explain's trace and its check
    against the live maps (reason and rule id) agree, `enforcer policies`
    lists them with their local subjects, status counts them."""
    api_lab.reset()
    ns = {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}
    admin = {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
             "metadata": {"name": "deny-y"},
             "spec": {"tier": "Admin", "priority": 10, "subject": ns,
                      "ingress": [{"name": "block", "action": "Deny", "from": [
                          {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}}
    baseline = {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "baseline-x"},
                "spec": {"tier": "Baseline", "priority": 5, "subject": ns,
                         "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                                      "protocols": [{"tcp": {"destinationPort": {"number": 81}}}]}]}}
    api_lab._write("policies/cnp.yaml", [admin, baseline])
    api_lab.sync()
    ips = api_lab.pod_ips()
    xa = ips["x/a"][0]
    by_y, by_z, ok = probe_many([ProbeSpec(api_lab.lab.pod("ya").netns, xa, 80),
                                 ProbeSpec(api_lab.lab.pod("zc").netns, xa, 81),
                                 ProbeSpec(api_lab.lab.pod("zc").netns, xa, 80)])
    assert not by_y.ok and not by_z.ok and ok.ok
    time.sleep(0.3)  # the ring buffer is polled every 200 ms
    admin_drops = [f for f in _flows(api_lab, tier="Admin") if f.destination.ip == xa and f.source.ip == ips["y/a"][0]]
    assert admin_drops and all(f.tier == "Admin" for f in _flows(api_lab, tier="Admin"))
    d = admin_drops[-1]
    assert (d.reason, d.rule.policy, d.rule.tier, d.rule.kind, d.rule.priority, d.rule.action, d.rule.rule_name) == \
        (pb.REASON_DROP_ADMIN, "deny-y", "Admin", "ClusterNetworkPolicy", 10, "Deny", "block")
    base = [f for f in _flows(api_lab, tier="Baseline") if f.destination.ip == xa and f.destination.port == 81]
    assert base and base[-1].reason == pb.REASON_DROP_BASELINE and base[-1].rule.policy == "baseline-x"
    assert 'DROP_ADMIN by Admin deny-y (priority 10) ingress rule 0 "block"' in client.flow_line(d)
    s = stub(api_lab)
    resp = s.Explain(pb.ExplainRequest(source="y/a", destination="x/a", port=80), timeout=10)
    h = next(h for h in resp.hooks if h.direction == pb.DIRECTION_INGRESS)
    assert resp.maps_agree and not resp.allowed and h.tier == "Admin", resp
    assert list(h.trace) == ['Admin deny-y (priority 10) ingress rule 0 "block": Deny']
    assert list(h.cluster_policies) == ["deny-y", "baseline-x"]
    resp = s.Explain(pb.ExplainRequest(source="z/c", destination="x/a", port=81), timeout=10)
    h = next(h for h in resp.hooks if h.direction == pb.DIRECTION_INGRESS)
    assert resp.maps_agree and list(h.trace) == ["NetworkPolicy: not isolated",
                                                 "Baseline baseline-x (priority 5) ingress rule 0: Deny"], resp
    ex = enforcer_cli("explain", "y/a", "x/a", "--port", "80", "--socket", str(api_lab.daemon.socket))
    assert 'ingress of x/a: denied by Admin deny-y (priority 10) ingress rule 0 "block"' in ex.stdout, ex.stdout
    cnps = {c.name: c for c in s.ListPolicies(pb.ListPoliciesRequest(), timeout=10).cluster_policies}
    assert list(cnps["deny-y"].selected_endpoints) == ["x/a", "x/b", "x/c"] and cnps["deny-y"].entries > 0
    assert cnps["baseline-x"].tier == "Baseline"
    assert s.Status(pb.StatusRequest(), timeout=10).cluster_network_policies == 2


def test_an_audited_policy_drops_nothing_and_reports_what_enforcing_it_drops(api_lab):
    """audit_checks.py: the same policies enforced, then audited; audited
    they drop nothing, and the audit flows name exactly the pairs the
    enforced run dropped."""
    check_audit_against_enforcement(api_lab)
