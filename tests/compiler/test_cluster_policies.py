"""ClusterNetworkPolicy through the compiler: the tiers' semantics as the
compiled maps give them (evaluate.py reads them as the datapath does), and
the incremental compiler agreeing with a fresh one while cluster policies,
Nodes and everything else change."""

from __future__ import annotations

import copy
import ipaddress
import random
from typing import Any

import pytest

from enforcer.compiler.compile import Compiler, NodeContext
from enforcer.compiler.evaluate import evaluate
from enforcer.datapath.layout import EP_F_EGRESS_HOST_JUDGED, EP_F_INGRESS_ISOLATED, EP_F_SELF_JUDGED
from enforcer.datapath.reasons import Reason
from enforcer.model.state import ClusterStore

from .cluster import NODE, PODS, allowed, base_objects, compile_objects, ip_of, policy
from .test_incremental import World, assert_same, fresh_compile

NODE_IP = "10.9.0.1"


def cnp(name: str, tier: str, priority: int, subject: dict[str, Any], ingress: list | None = None,
        egress: list | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": subject}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def ns_subject(name: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def ns_peer(name: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def node_obj(name: str, ip: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


ALL = {"namespaces": {}}
TCP80 = [{"tcp": {"destinationPort": {"number": 80}}}]
DENY_Y_INGRESS_FROM_X = cnp("deny-x-to-y", "Admin", 10, ns_subject("y"),
                            ingress=[{"action": "Deny", "from": [ns_peer("x")]}])
NP_Y_ALLOW_ALL = policy("y", "allow-all", {"podSelector": {}, "policyTypes": ["Ingress"],
                                           "ingress": [{}]})
NP_Y_DENY_ALL = policy("y", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]})
BASELINE_Y_DENY_ALL = cnp("baseline-y", "Baseline", 10, ns_subject("y"),
                          ingress=[{"action": "Deny", "from": [ALL]}])


# (name, objects, [(src, dst, proto, port, allowed)])
CASES = [
    ("Admin Deny beats a NetworkPolicy allow", [DENY_Y_INGRESS_FROM_X, NP_Y_ALLOW_ALL],
     [("x/a", "y/a", "TCP", 80, False), ("z/c", "y/a", "TCP", 80, True)]),
    ("Admin Pass hands over to NetworkPolicy",
     [cnp("pass-x", "Admin", 5, ns_subject("y"), ingress=[{"action": "Pass", "from": [ns_peer("x")]}]),
      DENY_Y_INGRESS_FROM_X, NP_Y_ALLOW_ALL],
     [("x/a", "y/a", "TCP", 80, True)]),
    ("priority: lower first",
     [cnp("a-deny", "Admin", 20, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL]}]),
      cnp("b-accept", "Admin", 10, ns_subject("y"), ingress=[{"action": "Accept", "from": [ns_peer("x")]}])],
     [("x/a", "y/a", "TCP", 80, True), ("z/c", "y/a", "TCP", 80, False)]),
    ("Baseline applies only where no NetworkPolicy isolates",
     [BASELINE_Y_DENY_ALL], [("x/a", "y/a", "TCP", 80, False), ("y/a", "x/a", "TCP", 80, True)]),
    ("NetworkPolicy isolation is final over Baseline (allow)",
     [BASELINE_Y_DENY_ALL, NP_Y_ALLOW_ALL], [("x/a", "y/a", "TCP", 80, True)]),
    ("NetworkPolicy isolation is final over Baseline (deny)",
     [cnp("baseline-accept", "Baseline", 1, ns_subject("y"), ingress=[{"action": "Accept", "from": [ALL]}]),
      NP_Y_DENY_ALL], [("x/a", "y/a", "TCP", 80, False)]),
    ("Pass in Baseline goes to the default allow",
     [cnp("b-pass", "Baseline", 1, ns_subject("y"), ingress=[{"action": "Pass", "from": [ns_peer("x")]}]),
      BASELINE_Y_DENY_ALL], [("x/a", "y/a", "TCP", 80, True), ("z/c", "y/a", "TCP", 80, False)]),
    ("egress Accept at the sender does not skip the receiver's ingress",
     [cnp("x-out", "Admin", 1, ns_subject("x"), egress=[{"action": "Accept", "to": [ALL]}]),
      DENY_Y_INGRESS_FROM_X], [("x/a", "y/a", "TCP", 80, False), ("x/a", "z/c", "TCP", 80, True)]),
    ("ports: a protocol rule leaves the others to later tiers",
     [cnp("y-80", "Admin", 1, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL], "protocols": TCP80}])],
     [("x/a", "y/a", "TCP", 80, False), ("x/a", "y/a", "TCP", 81, True), ("x/a", "y/a", "UDP", 80, True),
      ("x/a", "y/a", "ICMP", 0, True)]),
    ("a rule without protocols matches ICMP", [DENY_Y_INGRESS_FROM_X], [("x/a", "y/a", "ICMP", 0, False)]),
    ("networks match pod addresses",
     [cnp("no-10-0-2", "Admin", 1, ns_subject("x"), egress=[{"action": "Deny", "to": [{"networks": ["10.0.2.0/24"]}]}])],
     [("x/a", "y/a", "TCP", 80, False), ("x/a", "z/c", "TCP", 80, True)]),
    ("named port on the destination pod",
     [cnp("dns", "Admin", 1, ns_subject("x"), egress=[
         {"action": "Deny", "to": [ALL], "protocols": [{"destinationNamedPort": "dns"}]}])],
     [("x/a", "y/a", "UDP", 53, False), ("x/a", "y/a", "TCP", 53, True), ("x/a", "y/a", "UDP", 54, True)]),
    ("nodes: the own node, denied at Admin even though NetworkPolicy never denies it",
     [node_obj(NODE, NODE_IP, {"role": "worker"}),
      cnp("no-nodes", "Admin", 1, ns_subject("x"), egress=[{"action": "Deny", "to": [{"nodes": {}}]}]),
      policy("x", "np-egress", {"podSelector": {}, "policyTypes": ["Egress"]})],
     [("x/a", NODE_IP, "TCP", 10250, False), ("y/a", NODE_IP, "TCP", 10250, True)]),
    ("nodes: another node's address and host-network pods on it",
     [node_obj("n2", "10.9.0.2", {"role": "worker"}),
      cnp("no-n2", "Admin", 1, ns_subject("x"), egress=[
          {"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "worker"}}}]}])],
     [("x/a", "10.9.0.2", "TCP", 22, False), ("x/a", "10.9.0.3", "TCP", 22, True)]),
    ("an NP-isolated pod still reaches its own node",
     [node_obj(NODE, NODE_IP), policy("x", "np-egress", {"podSelector": {}, "policyTypes": ["Egress"]}),
      cnp("unrelated", "Admin", 1, ns_subject("x"), egress=[{"action": "Deny", "to": [ns_peer("z")]}])],
     [("x/a", NODE_IP, "TCP", 10250, True), ("x/a", "y/a", "TCP", 80, False)]),
    ("fail closed: an unknown peer makes Deny deny everything",
     [cnp("future", "Admin", 1, ns_subject("y"), ingress=[{"action": "Deny", "from": [{"cidrGroups": ["x"]}]}])],
     [("z/c", "y/a", "TCP", 80, False)]),
    ("fail closed: an unknown peer makes Accept match nothing",
     [cnp("future", "Admin", 1, ns_subject("y"), ingress=[{"action": "Accept", "from": [{"cidrGroups": ["x"]}]}]),
      BASELINE_Y_DENY_ALL],
     [("z/c", "y/a", "TCP", 80, False)]),
    ("v1alpha1 AdminNetworkPolicy converted",
     [{"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
       "metadata": {"name": "old"}, "spec": {"priority": 3, "subject": ns_subject("y"),
                                             "ingress": [{"action": "Deny", "from": [ns_peer("x")]}]}}],
     [("x/a", "y/a", "TCP", 80, False), ("z/c", "y/a", "TCP", 80, True)]),
]


@pytest.mark.parametrize("name, objects, probes", CASES, ids=[c[0] for c in CASES])
def test_semantics(name, objects, probes):
    state = compile_objects(base_objects() + objects)
    for src, dst, proto, port, want in probes:
        assert allowed(state, src, dst, proto, port) == want, (name, src, dst, proto, port)


def test_flags_and_the_deciding_rule_are_named():
    state = compile_objects(base_objects() + [DENY_Y_INGRESS_FROM_X])
    ep = state.endpoints[ip_of("y/a")]
    assert ep.flags & EP_F_INGRESS_ISOLATED and ep.flags & EP_F_SELF_JUDGED
    assert not ep.flags & EP_F_EGRESS_HOST_JUDGED  # no egress rules: egress untouched
    verdict = evaluate(state, ip_of("x/a"), ip_of("y/a"), 6, 80)
    hook = verdict.hooks[-1]
    assert hook.code == Reason["DROP_ADMIN"] and hook.tier == "Admin"
    assert hook.decider is not None and hook.decider.policy == "deny-x-to-y" and hook.decider.action == "Deny"
    assert state.cluster_selected_by["y/a"] == ["deny-x-to-y"]
    program = state.tier_programs[(ep.endpoint_id, 0)]
    trace: list[str] = []
    program.walk(next(iter(program.admin[0].peers or [])), 6, 80, trace)
    assert trace == ["Admin deny-x-to-y (priority 10) ingress rule 0: Deny"]


def test_equal_priorities_are_ordered_by_name_and_reported():
    a = cnp("a", "Admin", 5, ns_subject("y"), ingress=[{"action": "Accept", "from": [ALL]}])
    b = cnp("b", "Admin", 5, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL]}])
    state = compile_objects(base_objects() + [b, a])
    assert allowed(state, "x/a", "y/a")
    assert any("a and b have the same priority" in n for n in state.notices)


def test_warnings_and_invalid_cluster_policies_are_reported():
    bad = cnp("bad", "Admin", 5000, ns_subject("y"), ingress=[{"action": "Deny", "from": [ALL]}])
    domains = cnp("domains", "Admin", 1, ns_subject("x"), egress=[
        {"action": "Accept", "to": [{"domainNames": ["example.com"]}]}])
    state = compile_objects(base_objects() + [bad, domains])
    text = " | ".join(str(e) for e in state.errors)
    assert "bad" in text and "priority" in text
    assert "domains" in text and "domainNames" in text
    assert allowed(state, "x/a", "y/a")  # the invalid one, never valid, applies nothing


CNP_SHAPES = [
    lambda r: cnp("c1", r.choice(["Admin", "Baseline"]), r.randrange(0, 3), ns_subject(r.choice("xyz")),
                  ingress=[{"action": r.choice(["Accept", "Deny", "Pass"]), "from": [ns_peer(r.choice("xyz"))]}]),
    lambda r: cnp("c2", r.choice(["Admin", "Baseline"]), 1, {"pods": {"podSelector": {"matchLabels": {"pod": "a"}}}},
                  egress=[{"action": r.choice(["Accept", "Deny", "Pass"]),
                           "to": [{"networks": [r.choice(["10.0.0.0/16", "10.0.2.0/24", "10.9.0.0/24"])]}],
                           "protocols": TCP80}]),
    lambda r: cnp("c3", "Admin", 2, ns_subject(r.choice("xyz")), egress=[
        {"action": r.choice(["Deny", "Accept"]), "to": [{"nodes": {"matchLabels": {"role": r.choice(["a", "b"])}}}]},
        {"action": "Pass", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}],
         "protocols": [{"destinationNamedPort": "dns"}]}]),
    lambda r: cnp("c4", "Baseline", 3, ns_subject(r.choice("xyz")), ingress=[{"action": "Deny", "from": [ALL]}]),
]


class ClusterWorld(World):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.cnps: dict[str, dict] = {}
        self.nodes = {"n1": node_obj("n1", "10.9.0.1", {"role": "a"}), "n2": node_obj("n2", "10.9.0.2", {"role": "b"})}

    def objects(self) -> list[dict]:
        return [*super().objects(), *self.cnps.values(), *self.nodes.values()]

    def change(self, store: ClusterStore) -> str:
        rng = self.rng
        if rng.random() < 0.6:
            return super().change(store)
        kind = rng.choice(["cnp_set", "cnp_delete", "node_labels"])
        if kind == "cnp_set":
            raw = rng.choice(CNP_SHAPES)(rng)
            self.cnps[raw["metadata"]["name"]] = raw
            store.upsert(raw)
        elif kind == "cnp_delete" and self.cnps:
            name = rng.choice(list(self.cnps))
            del self.cnps[name]
            store.delete("ClusterNetworkPolicy", None, name)
        else:
            name = rng.choice(list(self.nodes))
            raw = copy.deepcopy(self.nodes[name])
            raw["metadata"]["labels"] = {"role": rng.choice(["a", "b"])}
            self.nodes[name] = raw
            store.upsert(raw)
        return kind


@pytest.mark.parametrize("seed", range(12))
def test_incremental_equals_fresh_with_cluster_policies(seed):
    world = ClusterWorld(seed)
    store = ClusterStore()
    store.replace_all(world.objects(), [])
    compiler = Compiler()
    compiler.compile(store.snapshot(), world.node())
    for step in range(40):
        kind = world.change(store)
        held = compiler.endpoint_ids.items()
        snap, node = store.snapshot(), world.node()
        got = compiler.compile(snap, node)
        want = fresh_compile(compiler, snap, node, held)
        assert_same(got, want, f"seed {seed} step {step} ({kind})")
        assert got.tier_programs.keys() == want.tier_programs.keys(), f"seed {seed} step {step} ({kind})"


def test_a_random_cluster_agrees_with_a_brute_force_walk():
    """Every local pair's verdict from the maps equals the pipeline walked
    by hand from the objects (an independent reading of the spec)."""
    rng = random.Random(7)
    for _ in range(30):
        cnps = [shape(rng) for shape in CNP_SHAPES if rng.random() < 0.7]
        nps = [NP_Y_ALLOW_ALL] if rng.random() < 0.5 else []
        state = compile_objects(base_objects() + cnps + nps + [node_obj("n1", NODE_IP, {"role": "a"})])
        for src in PODS:
            for dst in PODS:
                if src == dst:
                    continue
                for proto, port in (("TCP", 80), ("UDP", 53), ("TCP", 81)):
                    want = _brute(cnps, nps, src, dst, proto, port)
                    assert allowed(state, src, dst, proto, port) == want, (cnps, nps, src, dst, proto, port)


def _labels_ns(ns: str) -> dict[str, str]:
    from .cluster import NAMESPACES
    return {**NAMESPACES[ns], "kubernetes.io/metadata.name": ns}


def _sel(sel: dict | None, labels: dict[str, str]) -> bool:
    if sel is None:
        return True
    return all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items())


def _selects(spec_subject: dict, pod: str) -> bool:
    ns, _ = pod.split("/")
    if "namespaces" in spec_subject:
        return _sel(spec_subject["namespaces"], _labels_ns(ns))
    p = spec_subject["pods"]
    return _sel(p.get("namespaceSelector", {}), _labels_ns(ns)) and _sel(p["podSelector"], PODS[pod][0])


def _peer_matches(peer: dict, who: str) -> bool:
    if "namespaces" in peer:
        return _selects({"namespaces": peer["namespaces"]}, who)
    if "pods" in peer:
        return _selects({"pods": peer["pods"]}, who)
    if "networks" in peer:
        return any(ip_of(who) in ipaddress.ip_network(n) for n in peer["networks"])
    return False  # nodes: pods are never nodes


def _proto_matches(protocols: list | None, dst: str, proto: str, port: int) -> bool:
    if not protocols:
        return True
    for p in protocols:
        if "destinationNamedPort" in p:
            from .cluster import PORTS
            if any(n == p["destinationNamedPort"] and num == port and pr == proto for n, num, pr in PORTS):
                return True
            continue
        (name, body), = p.items()
        if name.upper() != proto:
            continue
        dp = body["destinationPort"]
        lo, hi = (dp["number"], dp["number"]) if "number" in dp else (dp["range"]["start"], dp["range"]["end"])
        if lo <= port <= hi:
            return True
    return False


def _side(cnps: list, nps: list, pod: str, peer: str, direction: str, dst: str, proto: str, port: int) -> bool:
    def tier(name: str) -> bool | None:
        mine = sorted((c for c in cnps if c["spec"]["tier"] == name and _selects(c["spec"]["subject"], pod)),
                      key=lambda c: (c["spec"]["priority"], c["metadata"]["name"]))
        for c in mine:
            for r in c["spec"].get(direction, []):
                peers = r.get("from") or r.get("to")
                if any(_peer_matches(p, peer) for p in peers) and _proto_matches(r.get("protocols"), dst, proto, port):
                    if r["action"] == "Pass":
                        return None
                    return r["action"] == "Accept"
        return None
    verdict = tier("Admin")
    if verdict is not None:
        return verdict
    if direction == "ingress" and any(pol["metadata"]["namespace"] == pod.split("/")[0] for pol in nps):
        return True  # NP_Y_ALLOW_ALL: isolates y's ingress and allows everything
    verdict = tier("Baseline")
    return True if verdict is None else verdict


def _brute(cnps: list, nps: list, src: str, dst: str, proto: str, port: int) -> bool:
    ok = True
    if PODS[src][3] == NODE:
        ok &= _side(cnps, nps, src, dst, "egress", dst, proto, port)
    if PODS[dst][3] == NODE:
        ok &= _side(cnps, nps, dst, src, "ingress", dst, proto, port)
    return ok


def test_node_context_for_own_node():
    # The own node found by name: its addresses are IDENTITY_HOST's.
    store = ClusterStore()
    store.replace_all(base_objects() + [node_obj(NODE, NODE_IP), cnp(
        "no-own-node", "Baseline", 1, ns_subject("x"), egress=[{"action": "Deny", "to": [{"nodes": {}}]}])], [])
    node = NodeContext(NODE, (ipaddress.ip_address(NODE_IP),), {"x/a": 100})
    state = Compiler().compile(store.snapshot(), node)
    assert not evaluate(state, ip_of("x/a"), ipaddress.ip_address(NODE_IP), 6, 10250).allowed


def test_a_rule_naming_every_pod_costs_keys_for_those_it_does_not_name():
    """Keys go to the identities outside the largest class: a Baseline
    "deny from every namespace" costs the same with 5 or 60 workloads."""
    from .cluster import pod

    def entries(extra: int) -> int:
        objs = base_objects() + [BASELINE_Y_DENY_ALL]
        objs += [pod(f"z/w{i}", {"app": f"w{i}"}, [f"10.0.3.{100 + i}"], "n2") for i in range(extra)]
        state = compile_objects(objs)
        ep = state.endpoints[ip_of("y/a")].endpoint_id
        return sum(1 for k in state.policy if k.endpoint_id == ep)

    assert entries(0) == entries(55) <= 4
