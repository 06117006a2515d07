"""Admission: limits per object and the per-pass prefix budget
(enforcer/compiler/admission.py). A large policy is staged over several
passes without delaying anyone else, is never half-applied, and a policy
past a limit is enforced fail-closed and named."""

from __future__ import annotations

import ipaddress

import pytest

from enforcer.compiler.admission import CompileLimits
from enforcer.compiler.compile import Compiler, NodeContext
from enforcer.model.state import ClusterStore

from .cluster import NODE, PODS, allowed, base_objects, policy
from .test_incremental import World, assert_same, fresh_compile


def excepts(n: int, base: str = "11.0.0.0") -> list[str]:
    start = int(ipaddress.IPv4Address(base))
    return [str(ipaddress.IPv4Network((start + i * 4, 30))) for i in range(n)]


def egress_block(name: str, cidr: str, n_except: int, ns: str = "x") -> dict:
    return policy(ns, name, {"podSelector": {}, "policyTypes": ["Egress"],
                             "egress": [{"to": [{"ipBlock": {"cidr": cidr, "except": excepts(n_except)}}]}]})


def egress_blocks(name: str, n: int, ns: str = "x") -> dict:
    return policy(ns, name, {"podSelector": {}, "policyTypes": ["Egress"],
                             "egress": [{"to": [{"ipBlock": {"cidr": c}} for c in excepts(n)]}]})


ALLOW_Y_FROM_Z = policy("y", "from-z", {"podSelector": {}, "policyTypes": ["Ingress"],
                                        "ingress": [{"from": [{"namespaceSelector": {}}]}]})
DENY_Y = policy("y", "from-z", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []})


class Node:
    def __init__(self, limits: CompileLimits) -> None:
        self.store = ClusterStore()
        self.store.replace_all(base_objects(), [])
        local = [k for k, v in PODS.items() if v[3] == NODE]
        self.node = NodeContext(NODE, (ipaddress.ip_address("10.9.0.1"),), {k: 100 + i for i, k in enumerate(local)})
        self.compiler = Compiler(limits=limits)
        self.passes = 0

    def compile(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        return self.compiler.compile(self.store.snapshot(), self.node)

    def converge(self, at_most: int = 100):  # type: ignore[no-untyped-def]
        for _ in range(at_most):
            state = self.compile()
            if not state.pending:
                return state
        raise AssertionError(f"still staging after {at_most} passes")


def test_a_large_policy_is_staged_and_a_change_elsewhere_is_not_delayed():
    n = Node(CompileLimits(prefixes_per_pass=100))
    n.store.upsert(ALLOW_Y_FROM_Z)
    first = n.compile()
    assert allowed(first, "z/c", "y/a")
    # A 1000-except policy and, at the same time, a revocation elsewhere.
    n.store.upsert(egress_block("big", "11.0.0.0/8", 1000))
    n.store.upsert(DENY_Y)
    state = n.compile()
    assert state.pending == ["x/big"]
    assert not allowed(state, "z/c", "y/a"), "the revocation waited for the large policy"
    # Not half-applied: the large policy is not in force yet (x is not
    # isolated by it), and its staged prefixes change no verdict.
    assert allowed(state, "x/a", "11.0.0.1") and allowed(state, "x/a", "12.0.0.1")
    assert len(state.ipcache) < 1000
    passes = 1
    while state.pending:
        state = n.compile()
        passes += 1
    assert passes >= 1000 // 100
    assert not allowed(state, "x/a", "11.0.0.1"), "an except of the large policy"
    assert allowed(state, "x/a", "11.0.16.1"), "past the excepts, inside the cidr"
    assert not allowed(state, "x/a", "12.0.0.1"), "x is isolated for egress now"
    assert_same(state, fresh_compile(n.compiler, n.store.snapshot(), n.node), "after staging")


@pytest.mark.parametrize("change", ["update", "delete", "replace-while-staging", "delete-while-staging"])
def test_staging_keeps_the_version_in_force_and_converges(change):
    n = Node(CompileLimits(prefixes_per_pass=50))
    n.store.upsert(egress_block("big", "11.0.0.0/8", 10))
    state = n.converge()
    assert not allowed(state, "x/a", "11.0.0.1") and allowed(state, "x/a", "11.0.16.1")
    if change == "update":
        n.store.upsert(egress_block("big", "11.0.0.0/8", 400))
        state = n.compile()
        assert state.pending == ["x/big"]
        # The version in force stays in force meanwhile.
        assert not allowed(state, "x/a", "11.0.0.1") and allowed(state, "x/a", "11.0.0.41")
    elif change == "delete":
        n.store.delete("NetworkPolicy", "x", "big")
        state = n.compile()
        assert not state.pending and allowed(state, "x/a", "12.0.0.1"), "a deletion waits for nothing"
    else:
        n.store.upsert(egress_block("big", "11.0.0.0/8", 400))
        assert n.compile().pending == ["x/big"]
        if change == "replace-while-staging":
            n.store.upsert(egress_block("big", "10.0.0.0/8", 300))
        else:
            n.store.delete("NetworkPolicy", "x", "big")
    state = n.converge()
    assert_same(state, fresh_compile(n.compiler, n.store.snapshot(), n.node), change)
    assert len(n.compiler._state.cidrs.prefixes) == len(fresh_compile(n.compiler, n.store.snapshot(), n.node).ipcache) - \
        sum(1 for net in state.ipcache if net.prefixlen == net.max_prefixlen), "staged prefixes left behind"


@pytest.mark.parametrize("case", [
    # (what, policy, limits, expected error text)
    ("prefixes", egress_block("big", "11.0.0.0/8", 300), CompileLimits(max_prefixes_per_policy=200),
     "names 301 ipBlock prefixes, more than the limit of 200"),
    ("entries", egress_blocks("big", 300), CompileLimits(max_entries_per_policy_pod=200),
     "compiles to more than 200 policy entries for pod"),
])
def test_a_policy_past_a_limit_fails_closed_and_is_named(case):
    what, big, limits, text = case
    n = Node(limits)
    allow_dns = policy("x", "dns", {"podSelector": {}, "policyTypes": ["Egress"],
                                    "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})
    n.store.upsert(allow_dns)
    n.store.upsert(big)
    state = n.converge()
    errors = [str(e) for e in state.errors]
    assert any(e.startswith("NetworkPolicy x/big: ") and text in e for e in errors), errors
    # Fail-closed: x is isolated for egress; the large policy allows nothing,
    # the other policy still allows what it allows.
    assert not allowed(state, "x/a", "11.0.0.1") and not allowed(state, "x/a", "11.0.16.1")
    assert allowed(state, "x/a", "8.8.8.8", "UDP", 53)
    # Nothing else is affected.
    assert allowed(state, "y/a", "11.0.0.1")
    # Back under the limit: enforced as written.
    n.store.upsert(egress_block("big", "11.0.0.0/8", 10) if what == "prefixes" else egress_blocks("big", 10))
    state = n.converge()
    assert not any("x/big" in str(e) for e in state.errors)
    assert allowed(state, "x/a", "11.0.0.1") == (what == "entries")


@pytest.mark.parametrize("seed", range(4))
def test_staging_with_a_tiny_budget_converges_to_a_fresh_compile(seed):
    """The random world of test_incremental, every change staged a prefix
    per pass: once converged, the state is a fresh compiler's."""
    world = World(seed)
    store = ClusterStore()
    store.replace_all(world.objects(), [])
    compiler = Compiler(limits=CompileLimits(prefixes_per_pass=1))
    for step in range(60):
        kind = world.change(store) if step else "first"
        snap, node = store.snapshot(), world.node()
        for _ in range(50):
            before = compiler.endpoint_ids.items()
            got = compiler.compile(snap, node)
            if not got.pending:
                break
        else:
            raise AssertionError(f"seed {seed} step {step}: still staging")
        assert_same(got, fresh_compile(compiler, snap, node, before), f"seed {seed} step {step} ({kind})")


@pytest.mark.parametrize("kind", ["prefixes", "addresses"])
def test_a_policy_that_does_not_fit_the_ipcache_fails_closed_and_is_tried_again(kind):
    """What is in force keeps its room; a policy whose new prefixes do not
    fit is fail-closed and named (an except left out of the ipcache would
    open what it excepts), and is taken in once room is freed."""
    if kind == "prefixes":
        limits = CompileLimits(ipcache_capacity=150)
        first, second = egress_block("first", "11.0.0.0/8", 100), egress_block("second", "12.0.0.0/8", 100, ns="y")
        second["spec"]["egress"][0]["to"][0]["ipBlock"]["except"] = excepts(100, "12.0.0.0")
        inside_second = "12.1.0.1"
    else:
        # Pod and node addresses use full-length entries too: 5 pods x 2
        # families + the node address.
        limits = CompileLimits(ipcache_hosts_capacity=11 + 120)
        first = policy("x", "first", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
            {"ipBlock": {"cidr": f"11.0.0.{i}/32"}} for i in range(100)]}]})
        second = policy("y", "second", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
            {"ipBlock": {"cidr": f"12.0.0.{i}/32"}} for i in range(100)]}]})
        inside_second = "12.0.0.1"
    n = Node(limits)
    n.store.upsert(first)
    assert not n.converge().errors
    n.store.upsert(second)
    state = n.converge()
    errors = [str(e) for e in state.errors]
    assert any(e.startswith("NetworkPolicy y/second: ") and "do not fit in this node's ipcache" in e
               for e in errors), errors
    assert not allowed(state, "y/a", inside_second), "fail-closed: y is isolated, the policy allows nothing"
    assert allowed(state, "x/a", "11.0.0.1") == (kind == "addresses") and not allowed(state, "x/a", "13.0.0.1")
    n.store.delete("NetworkPolicy", "x", "first")
    state = n.converge()
    assert not state.errors, state.errors
    assert allowed(state, "y/a", inside_second)


def test_when_the_policy_map_cannot_hold_everything_the_largest_policy_is_refused():
    """Not left to the order of writes: the flood fails closed and is named,
    an allow elsewhere that fits is in force; once room is freed (the flood
    shrinks), it is taken in."""
    n = Node(CompileLimits(policy_capacity=60))
    small = policy("y", "from-x", {"podSelector": {}, "policyTypes": ["Ingress"],
                                    "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    n.store.upsert(small)
    flood = policy("x", "flood", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"ports": [{"port": p} for p in range(1000, 1040)]}]})
    n.store.upsert(flood)
    state = n.converge()
    assert len(state.policy) <= 60
    errors = [str(e) for e in state.errors]
    assert [e for e in errors if "policy map" in e] and all(e.startswith("NetworkPolicy x/flood: ") for e in errors
                                                            if "policy map" in e), errors
    assert allowed(state, "z/c", "y/a"), "the small allow elsewhere is in force"
    assert not allowed(state, "x/a", "8.8.8.8", "TCP", 1000), "the flood fails closed: x isolated, nothing allowed"
    again = n.compile()  # nothing changed: stays refused, no churn
    assert again.policy == state.policy and any("x/flood" in str(e) for e in again.errors)
    flood["spec"]["egress"][0]["ports"] = [{"port": 1000}]
    n.store.upsert(flood)
    state = n.converge()
    assert not any("policy map" in str(e) for e in state.errors), state.errors
    assert allowed(state, "x/a", "8.8.8.8", "TCP", 1000) and allowed(state, "z/c", "y/a")
