"""The Kubernetes source's cluster-scoped kinds against the fake API server:
Nodes, ClusterNetworkPolicies (v1alpha2) and the v1alpha1
AdminNetworkPolicy/BaselineAdminNetworkPolicy, listed and watched; a CRD
that is not installed (404) holds nothing back and is picked up once
installed; a policy that stops validating keeps its last valid version."""

from __future__ import annotations

import logging
import time

import pytest

from enforcer.model.clusterpolicy import ACCEPT, ADMIN, BASELINE, DENY
from enforcer.model.state import ClusterStore
from enforcer.sources.kubernetes import KubernetesSource

from .fake_apiserver import CRD_KINDS, FakeApiServer
from .test_source import client_for, fast_backoff, ns, wait_for  # noqa: F401  (fast_backoff: an autouse fixture)


def node(name: str, *ips: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]
                       + [{"type": "Hostname", "address": name}]}}


def cnp(name: str, priority: int = 10, action: str = "Deny", tier: str = "Admin", **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"tier": tier, "priority": priority, "subject": {"namespaces": {}},
                     "ingress": [{"name": "r", "action": action, "from": [{"namespaces": {}}]}], **extra}}


def anp(name: str, priority: int = 5) -> dict:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"priority": priority, "subject": {"namespaces": {}},
                     "egress": [{"action": "Allow", "to": [{"networks": ["10.0.0.0/8"]}]}]}}


def banp() -> dict:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}


@pytest.fixture
def make_fake():
    fakes: list[FakeApiServer] = []

    def make(absent: tuple[str, ...] = ()) -> FakeApiServer:
        f = FakeApiServer(absent=absent)
        f.bookmark_interval = 0.2
        fakes.append(f.start())
        return f

    yield make
    for f in fakes:
        f.stop()


@pytest.fixture
def run_source():
    sources: list[KubernetesSource] = []

    def run(fake: FakeApiServer) -> tuple[ClusterStore, KubernetesSource]:
        store = ClusterStore()
        src = KubernetesSource(store, client_for(fake))
        sources.append(src)
        src.start()
        return store, src

    yield run
    for s in sources:
        s.stop()


def test_nodes_and_cluster_policies_listed_and_watched(make_fake, run_source):
    fake = make_fake()
    fake.create(ns("x"))
    fake.create(node("n1", "192.168.0.1", "fd00::1", role="worker"))
    fake.create(cnp("deny-all"))
    fake.create(anp("allow-net"))
    fake.create(banp())
    store, src = run_source(fake)
    wait_for(store.ready.is_set)
    snap = store.snapshot()
    assert [str(a) for a in snap.nodes["n1"].addresses] == ["192.168.0.1", "fd00::1"]
    assert snap.nodes["n1"].labels == {"role": "worker"}
    assert set(snap.cluster_policies) == {"deny-all", "AdminNetworkPolicy/allow-net",
                                         "BaselineAdminNetworkPolicy/default"}
    pol = snap.cluster_policies["deny-all"]
    assert (pol.tier, pol.priority, pol.ingress[0].action) == (ADMIN, 10, DENY)
    converted = snap.cluster_policies["AdminNetworkPolicy/allow-net"]
    assert (converted.tier, converted.priority, converted.egress[0].action) == (ADMIN, 5, ACCEPT)
    assert snap.cluster_policies["BaselineAdminNetworkPolicy/default"].tier == BASELINE
    assert src._revision() == f"rv:{min(int(r.resource_version) for r in src.reflectors)}"
    # Watched: updates, adds and deletes of every kind.
    fake.update(node("n1", "192.168.0.2", role="worker"))
    fake.create(node("n2", "192.168.0.3"))
    fake.update(cnp("deny-all", priority=20))
    fake.create(cnp("baseline", tier="Baseline", action="Accept"))
    fake.delete("AdminNetworkPolicy", None, "allow-net")
    fake.delete("BaselineAdminNetworkPolicy", None, "default")
    wait_for(lambda: store.snapshot().source_revision == f"rv:{fake.resource_version}")
    snap = store.snapshot()
    assert {k: [str(a) for a in n.addresses] for k, n in snap.nodes.items()} == {"n1": ["192.168.0.2"],
                                                                                 "n2": ["192.168.0.3"]}
    assert set(snap.cluster_policies) == {"deny-all", "baseline"}
    assert snap.cluster_policies["deny-all"].priority == 20
    assert not snap.errors
    fake.delete("Node", None, "n2")
    wait_for(lambda: set(store.snapshot().nodes) == {"n1"})


def test_a_relist_of_one_policy_kind_leaves_the_others(make_fake, run_source):
    """The three kinds share the store's cluster_policies table: a 410 relist
    of one replaces that kind's policies only."""
    fake = make_fake()
    fake.create(cnp("c"))
    fake.create(anp("a"))
    store, src = run_source(fake)
    wait_for(lambda: len(store.snapshot().cluster_policies) == 2)
    fake.stop()
    fake.delete("AdminNetworkPolicy", None, "a")
    fake.create(anp("b"))
    fake.compact()
    fake.start()
    wait_for(lambda: set(store.snapshot().cluster_policies) == {"c", "AdminNetworkPolicy/b"})


def test_a_crd_not_installed_does_not_block_and_is_picked_up_once_installed(make_fake, run_source, caplog):
    fake = make_fake(absent=CRD_KINDS)
    fake.create(ns("x"))
    fake.create(node("n1", "192.168.0.1"))
    with caplog.at_level(logging.INFO, logger="enforcer.sources.kubernetes"):
        store, src = run_source(fake)
        wait_for(store.ready.is_set)  # ready without the CRDs
        by_kind = {r.kind.name: r for r in src.reflectors}
        assert all(by_kind[k].absent and not by_kind[k].lists for k in CRD_KINDS)
        assert src._revision() == f"rv:{fake.resource_version}"  # the absent kinds do not hold it at rv:0
        assert set(store.snapshot().nodes) == {"n1"} and not store.snapshot().errors
        # Asked again, with backoff, and logged once per kind (no warning spam).
        wait_for(lambda: all(by_kind[k].absent_checks >= 3 for k in CRD_KINDS))
        fake.create(ns("y"))
        wait_for(lambda: "y" in store.snapshot().namespaces)
        # Installed later: listed and watched from then on.
        fake.install("ClusterNetworkPolicy")
        fake.create(cnp("late"))
        wait_for(lambda: "late" in store.snapshot().cluster_policies)
        assert by_kind["ClusterNetworkPolicy"].lists == 1 and not by_kind["ClusterNetworkPolicy"].absent
        fake.update(cnp("late", priority=99))
        wait_for(lambda: store.snapshot().cluster_policies["late"].priority == 99)
        wait_for(lambda: store.snapshot().source_revision == f"rv:{fake.resource_version}")
    records = [r for r in caplog.records if r.name == "enforcer.sources.kubernetes"]
    for kind in CRD_KINDS:
        assert sum(1 for r in records if r.getMessage().startswith(f"{kind}: not served")) == 1
    assert not [r for r in records if r.levelno >= logging.WARNING and r.getMessage().split(":")[0] in CRD_KINDS]
    assert sum(r.errors for r in src.reflectors) == 0


def test_a_crd_removed_takes_its_policies_and_comes_back(make_fake, run_source):
    fake = make_fake()
    fake.create(cnp("c"))
    store, src = run_source(fake)
    wait_for(lambda: "c" in store.snapshot().cluster_policies)
    fake.uninstall("ClusterNetworkPolicy")
    reflector = next(r for r in src.reflectors if r.kind.name == "ClusterNetworkPolicy")
    wait_for(lambda: reflector.absent and not store.snapshot().cluster_policies)
    fake.install("ClusterNetworkPolicy")
    fake.create(cnp("d"))
    wait_for(lambda: set(store.snapshot().cluster_policies) == {"d"})


def test_never_ready_while_a_required_kind_fails(make_fake):
    """Only the optional kinds (CRDs) may be absent: a Node list that fails
    (503) still holds readiness back."""
    fake = make_fake()
    fake.failing["/api/v1/nodes"] = 503
    store = ClusterStore()
    src = KubernetesSource(store, client_for(fake))
    src.start()
    try:
        by_kind = {r.kind.name: r for r in src.reflectors}
        wait_for(lambda: by_kind["Node"].errors > 0 and all(r.lists for k, r in by_kind.items() if k != "Node"))
        time.sleep(0.2)
        assert not store.ready.is_set()
        del fake.failing["/api/v1/nodes"]
        wait_for(store.ready.is_set)
    finally:
        src.stop()


def test_an_invalid_policy_keeps_its_last_valid_version(make_fake, run_source):
    fake = make_fake()
    fake.create(cnp("p", priority=10))
    fake.create(cnp("never-valid", priority=5000))
    store, src = run_source(fake)
    wait_for(lambda: "p" in store.snapshot().cluster_policies)
    snap = store.snapshot()
    assert "never-valid" not in snap.cluster_policies
    assert [str(e) for e in snap.errors] == ["ClusterNetworkPolicy never-valid: spec.priority: 5000 is not in 0-1000"]
    # Through the watch: an edit with a typo; the last valid version stays, reported.
    fake.update(cnp("p", priority=10, action="Dney"))
    wait_for(lambda: len(store.snapshot().errors) == 2)
    snap = store.snapshot()
    assert snap.cluster_policies["p"].ingress[0].action == DENY and snap.cluster_policies["p"].priority == 10
    assert any("ClusterNetworkPolicy p: spec.ingress[0].action" in str(e) for e in snap.errors)
    # Through a relist (410): still the last valid version.
    fake.stop()
    fake.create(ns("moves-the-version"))
    fake.compact()
    fake.start()
    reflector = next(r for r in src.reflectors if r.kind.name == "ClusterNetworkPolicy")
    wait_for(lambda: reflector.lists == 2)
    snap = store.snapshot()
    assert snap.cluster_policies["p"].priority == 10 and len(snap.errors) == 2
    # Fixed: applied, the error goes; deleted while invalid: gone with its error.
    fake.update(cnp("p", priority=11))
    fake.delete("ClusterNetworkPolicy", None, "never-valid")
    wait_for(lambda: not store.snapshot().errors and store.snapshot().cluster_policies["p"].priority == 11)
