"""The Kubernetes source against the fake API server, driven by the real
`kubernetes` client: list then watch, resourceVersion continuity, bookmarks,
410 Gone, restarts and outages, readiness."""

from __future__ import annotations

import time

import kubernetes
import pytest

import enforcer.sources.kubernetes as k8s_source
from enforcer.model.state import ClusterStore
from enforcer.sources.kubernetes import KubernetesSource

from .fake_apiserver import FakeApiServer


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(namespace: str, name: str, ip: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def policy(namespace: str, name: str, **spec) -> dict:  # type: ignore[no-untyped-def]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"podSelector": {}, **spec}}


def wait_for(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def fake():
    f = FakeApiServer()
    f.bookmark_interval = 0.2
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(k8s_source, "BACKOFF_START_S", 0.05)
    monkeypatch.setattr(k8s_source, "BACKOFF_MAX_S", 0.2)


def client_for(fake: FakeApiServer):
    cfg = kubernetes.client.Configuration()
    cfg.host = fake.url
    return kubernetes.client.ApiClient(cfg)


@pytest.fixture
def source(fake):
    store = ClusterStore()
    src = KubernetesSource(store, client_for(fake))
    yield store, src
    src.stop()


def lists(fake: FakeApiServer, path_part: str) -> int:
    return sum(1 for path, q in fake.requests if path_part in path and q.get("watch") not in ("true", "1"))


def test_list_then_watch_with_continuity(fake, source):
    store, src = source
    fake.create(ns("x", team="a"))
    fake.create(pod("x", "a", "10.0.0.1", app="web"))
    fake.create(policy("x", "deny"))
    listed_at = fake.resource_version
    src.start()
    wait_for(store.ready.is_set)
    snap = store.snapshot()
    assert set(snap.pods) == {"x/a"} and set(snap.policies) == {"x/deny"} and snap.namespaces["x"].labels["team"] == "a"
    # Each kind listed once, then watched from the list's resourceVersion with bookmarks.
    watches = [q for _, q in fake.requests if q.get("watch") in ("true", "1")]
    assert len(watches) == 3 and all(q["resourceVersion"] == str(listed_at) and q["allowWatchBookmarks"] == "true"
                                     for q in watches)
    # Adds, updates (label changes), deletes.
    fake.create(pod("x", "b", "10.0.0.2", app="db"))
    fake.update(pod("x", "a", "10.0.0.1", app="web", tier="front"))
    fake.update(ns("x", team="b"))
    fake.delete("NetworkPolicy", "x", "deny")
    wait_for(lambda: store.snapshot().source_revision == f"rv:{fake.resource_version}")
    snap = store.snapshot()
    assert set(snap.pods) == {"x/a", "x/b"} and snap.pods["x/a"].labels["tier"] == "front"
    assert snap.namespaces["x"].labels["team"] == "b" and not snap.policies
    assert lists(fake, "pods") == 1  # no relist was needed


def test_bookmarks_advance_the_resource_version(fake, source):
    store, src = source
    fake.create(ns("x"))
    src.start()
    wait_for(store.ready.is_set)
    fake.create(ns("y"))  # moves the global version; no Pod event follows
    pods = next(r for r in src.reflectors if r.kind.name == "Pod")
    wait_for(lambda: pods.resource_version == str(fake.resource_version))
    assert fake.bookmarks_sent > 0


def test_expired_watch_relists_and_catches_deletes_made_meanwhile(fake, source):
    store, src = source
    for i in range(3):
        fake.create(policy("x", f"p{i}"))
    src.start()
    wait_for(lambda: len(store.snapshot().policies) == 3)
    fake.stop()
    # While the client is disconnected: changes, then compaction of history.
    fake.delete("NetworkPolicy", "x", "p0")
    fake.create(policy("x", "p9"))
    fake.compact()
    fake.start()
    wait_for(lambda: set(store.snapshot().policies) == {"x/p1", "x/p2", "x/p9"})
    assert lists(fake, "networkpolicies") == 2  # 410 Gone -> one relist


def test_restart_with_history_resumes_without_relisting(fake, source):
    store, src = source
    fake.create(policy("x", "a"))
    src.start()
    wait_for(lambda: "x/a" in store.snapshot().policies)
    last = fake.resource_version
    fake.restart(lose_history=False, down_for=0.3)
    fake.create(policy("x", "b"))
    wait_for(lambda: "x/b" in store.snapshot().policies)
    assert lists(fake, "networkpolicies") == 1
    resumed = [q for p, q in fake.requests if "networkpolicies" in p and q.get("watch") in ("true", "1")]
    assert int(resumed[-1]["resourceVersion"]) >= last


def test_outage_keeps_the_last_state_and_ready_waits_for_every_kind(fake):
    fake.create(ns("x"))
    fake.create(policy("x", "keep"))
    fake.stop()
    store = ClusterStore()
    src = KubernetesSource(store, client_for(fake))
    src.start()
    try:
        time.sleep(0.5)
        assert not store.ready.is_set()  # nothing listed: never ready, nothing compiled
        fake.start()
        wait_for(store.ready.is_set)
        fake.stop()
        time.sleep(0.5)  # outage: reconnects fail, backing off
        assert "x/keep" in store.snapshot().policies
        assert sum(r.errors for r in src.reflectors) > 0
        fake.start()
        fake.create(policy("x", "after"))
        wait_for(lambda: "x/after" in store.snapshot().policies)
    finally:
        src.stop()


def test_a_field_from_a_newer_api_fails_closed(fake, source):
    """The API server accepts fields this enforcer does not know (a newer
    Kubernetes): the rule carrying one allows nothing, the policy still
    isolates, and the error names the policy."""
    store, src = source
    fake.create(policy("x", "p", ingress=[{"from": [{"podSelector": {}}]}]))
    src.start()
    wait_for(lambda: "x/p" in store.snapshot().policies)
    fake.update(policy("x", "p", ingress=[{"from": [{"podSelector": {}}], "futureField": {"x": 1}}]))
    wait_for(lambda: bool(store.snapshot().policies["x/p"].errors))
    pol = store.snapshot().policies["x/p"]
    assert not pol.ingress[0].valid and "Ingress" in pol.policy_types
    assert "futureField" in str(pol.error()) and "x/p" in str(pol.error())
