"""The Kubernetes source against the fake API server, driven by the real
`kubernetes` client: list then watch, resourceVersion continuity, bookmarks,
410 Gone, restarts and outages, readiness; every kind it watches (Services
and EndpointSlices as well as Namespaces, Pods, NetworkPolicies)."""

from __future__ import annotations

import json
import time

import kubernetes
import pytest

import enforcer.sources.kubernetes as k8s_source
from enforcer.model.state import ClusterStore
from enforcer.sources.kubernetes import KubernetesSource, kinds

from .fake_apiserver import COLLECTIONS, FakeApiServer


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(namespace: str, name: str, ip: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def policy(namespace: str, name: str, **spec) -> dict:  # type: ignore[no-untyped-def]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"podSelector": {}, **spec}}


def svc(namespace: str, name: str, *ports: int, **selector: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "clusterIP": "10.96.0.10",
                     "ports": [{"name": f"p{p}", "port": p, "targetPort": p} for p in ports]}}


def eps(namespace: str, name: str, service: str, *ips: str, port: int = 80, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "n1"} for ip in ips],
            "ports": [{"name": f"p{port}", "port": port, "protocol": "TCP"}], **extra}


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


def lists(fake: FakeApiServer, resource: str) -> int:
    """List requests to one collection (by its resource name: networkpolicies
    is not clusternetworkpolicies)."""
    return sum(1 for path, q in fake.requests
               if path.rsplit("/", 1)[-1] == resource and q.get("watch") not in ("true", "1"))


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
    # Each kind listed once, then watched from the list's resourceVersion with bookmarks
    # (ready comes with the last list; a watch may start a moment later).
    wait_for(lambda: sum(1 for _, q in fake.requests if q.get("watch") in ("true", "1")) >= len(COLLECTIONS))
    watches = [q for _, q in fake.requests if q.get("watch") in ("true", "1")]
    assert len(watches) == len(COLLECTIONS) == 9 and all(q["resourceVersion"] == str(listed_at) and q["allowWatchBookmarks"] == "true"
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
    resumed = [q for p, q in fake.requests if p.endswith("/networkpolicies") and q.get("watch") in ("true", "1")]
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


def test_every_kind_names_its_collection_and_version(fake):
    """Each Kind's list function reads the collection of that kind, and the
    kind/apiVersion the reflector puts back on list items is the one the
    API server serves it as."""
    api = client_for(fake)
    served = {kind: api_version for kind, api_version, _ in COLLECTIONS.values()}
    assert {k.name for k in kinds(api)} == set(served)
    for k in kinds(api):
        body = json.loads(k.list_fn(_preload_content=False).data)
        assert (body["kind"], body["apiVersion"]) == (f"{k.name}List", k.api_version) == (f"{k.name}List", served[k.name])


def slices(store: ClusterStore) -> dict[str, tuple[str, ...]]:
    return {key: tuple(str(a) for e in s.endpoints for a in e.addresses)
            for key, s in store.snapshot().endpoint_slices.items()}


def test_services_and_endpoint_slices_listed_watched_and_relisted(fake, source):
    store, src = source
    fake.create(svc("x", "web", 80, app="web"))
    fake.create(eps("x", "web-1", "web", "10.0.0.1"))
    src.start()
    wait_for(store.ready.is_set)
    snap = store.snapshot()
    assert set(snap.services) == {"x/web"} and snap.services["x/web"].ports[0].port == 80
    assert slices(store) == {"x/web-1": ("10.0.0.1",)}
    assert snap.endpoint_slices["x/web-1"].service_name == "web"
    # Watched: adds, modifications, deletes of both kinds.
    fake.create(svc("x", "db", 5432, app="db"))
    fake.create(eps("x", "db-1", "db", "10.0.0.7", port=5432))
    fake.update(svc("x", "web", 80, 443, app="web"))
    fake.update(eps("x", "web-1", "web", "10.0.0.1", "10.0.0.2"))
    fake.delete("Service", "x", "db")
    wait_for(lambda: store.snapshot().source_revision == f"rv:{fake.resource_version}")
    snap = store.snapshot()
    assert set(snap.services) == {"x/web"} and [p.port for p in snap.services["x/web"].ports] == [80, 443]
    assert slices(store) == {"x/web-1": ("10.0.0.1", "10.0.0.2"), "x/db-1": ("10.0.0.7",)}
    fake.delete("EndpointSlice", "x", "db-1")
    wait_for(lambda: "x/db-1" not in store.snapshot().endpoint_slices)
    assert lists(fake, "services") == lists(fake, "endpointslices") == 1
    # Disconnected while both change; history compacted: 410 Gone, one relist each.
    fake.stop()
    fake.delete("Service", "x", "web")
    fake.create(svc("x", "api", 8080, app="api"))
    fake.delete("EndpointSlice", "x", "web-1")
    fake.create(eps("x", "api-1", "api", "10.0.0.9", port=8080))
    fake.compact()
    fake.start()
    wait_for(lambda: set(store.snapshot().services) == {"x/api"} and slices(store) == {"x/api-1": ("10.0.0.9",)})
    assert lists(fake, "services") == lists(fake, "endpointslices") == 2


@pytest.mark.parametrize("bad", [
    {"endpoints": [{"addresses": ["10.0.0.300"]}]},  # not an address
    {"endpoints": [{"addresses": "10.0.0.5"}]},  # not a list: the client's own models reject it
    {"ports": [{"port": "http", "protocol": "TCP"}]},
    {"ports": [{"port": 80, "protocol": "ICMP"}]},
    {"addressType": "IPv5"},
])
def test_a_malformed_endpoint_slice_is_reported_and_affects_nothing_else(fake, source, bad):
    store, src = source
    fake.create(svc("x", "web", 80, app="web"))
    fake.create(eps("x", "good", "web", "10.0.0.1"))
    fake.create(eps("x", "bad-at-list", "web", "10.0.0.2", **bad))
    src.start()
    wait_for(store.ready.is_set)
    errors = [str(e) for e in store.snapshot().errors]
    assert len(errors) == 1 and "EndpointSlice x/bad-at-list" in errors[0], errors
    assert slices(store) == {"x/good": ("10.0.0.1",)} and set(store.snapshot().services) == {"x/web"}
    # Through the watch: a valid slice turns malformed; its last valid
    # version stays, the error names it, and later events still arrive.
    fake.create(eps("x", "turns-bad", "web", "10.0.0.3"))
    wait_for(lambda: "x/turns-bad" in store.snapshot().endpoint_slices)
    fake.update(eps("x", "turns-bad", "web", "10.0.0.4", **bad))
    fake.create(eps("x", "after", "web", "10.0.0.5"))
    wait_for(lambda: "x/after" in store.snapshot().endpoint_slices)
    snap = store.snapshot()
    assert sorted(str(e).split(":")[0] for e in snap.errors) == ["EndpointSlice x/bad-at-list",
                                                                 "EndpointSlice x/turns-bad"]
    assert slices(store)["x/turns-bad"] == ("10.0.0.3",)
    assert set(snap.services) == {"x/web"} and set(slices(store)) == {"x/good", "x/turns-bad", "x/after"}
    # Fixed: the error goes. Deleted while malformed: gone with its error.
    fake.update(eps("x", "turns-bad", "web", "10.0.0.4"))
    fake.delete("EndpointSlice", "x", "bad-at-list")
    wait_for(lambda: not store.snapshot().errors and slices(store)["x/turns-bad"] == ("10.0.0.4",))
    reflector = next(r for r in src.reflectors if r.kind.name == "EndpointSlice")
    assert reflector.errors == 0 and reflector.lists == 1  # no watch failed on the bad events


def test_ready_and_revision_wait_for_services_and_endpoint_slices(fake):
    fake.create(ns("x"))
    fake.create(svc("x", "web", 80, app="web"))
    fake.failing["/apis/discovery.k8s.io/v1/endpointslices"] = 503
    store = ClusterStore()
    src = KubernetesSource(store, client_for(fake))
    src.start()
    try:
        by_kind = {r.kind.name: r for r in src.reflectors}
        wait_for(lambda: all(r.lists for name, r in by_kind.items() if name != "EndpointSlice"))
        wait_for(lambda: by_kind["EndpointSlice"].errors > 0)
        assert not store.ready.is_set() and src._revision() == "rv:0"
        del fake.failing["/apis/discovery.k8s.io/v1/endpointslices"]
        wait_for(store.ready.is_set)
        assert "x/web" in store.snapshot().services
        assert src._revision() == f"rv:{min(int(r.resource_version) for r in src.reflectors)}"
    finally:
        src.stop()


def test_the_audit_annotation_comes_through_the_watch(fake, source):
    """enforcer.dev/audit on a NetworkPolicy, set and removed by watch
    events: the model's audit flag follows it."""
    from enforcer.model.meta import AUDIT_ANNOTATION

    store, src = source
    fake.create(ns("x"))
    audited = policy("x", "deny")
    audited["metadata"]["annotations"] = {AUDIT_ANNOTATION: "true"}
    fake.create(audited)
    src.start()
    wait_for(lambda: "x/deny" in store.snapshot().policies)
    assert store.snapshot().policies["x/deny"].audit
    fake.update(policy("x", "deny"))
    wait_for(lambda: store.snapshot().source_revision == f"rv:{fake.resource_version}")
    assert not store.snapshot().policies["x/deny"].audit
