"""The store files EndpointSlices like every other kind: replace_all,
replace_parsed, replace_kind (a relist), upsert, delete, snapshot; an
invalid slice is reported by name and keeps its last valid version."""

from __future__ import annotations

from typing import Any

from enforcer.model.state import ClusterStore, parse_for_store


def eps(name: str, *ips: str, namespace: str = "foo", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": [{"addresses": [ip]} for ip in ips], **extra}


SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "foo"},
       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
POL = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "foo"},
       "spec": {"podSelector": {}}}
BAD = {"ports": [{"port": "http"}]}


def addresses(store: ClusterStore) -> dict[str, list[str]]:
    return {k: [str(a) for e in s.endpoints for a in e.addresses]
            for k, s in store.snapshot().endpoint_slices.items()}


def error_names(store: ClusterStore) -> list[str]:
    return sorted(f"{e.kind} {e.namespace}/{e.name}" for e in store.snapshot().errors)


def test_replace_all_and_replace_parsed_file_slices_in_their_own_slot():
    objects = [SVC, POL, eps("a", "10.0.0.1"), eps("bad", "10.0.0.2", **BAD)]
    parsed = [parse_for_store(o) for o in objects]
    for fill in (lambda s, n: s.replace_all(objects[:n], []), lambda s, n: s.replace_parsed(parsed[:n], [])):
        store = ClusterStore()
        fill(store, 4)
        snap = store.snapshot()
        assert addresses(store) == {"foo/a": ["10.0.0.1"]}
        assert set(snap.services) == {"foo/web"} and set(snap.policies) == {"foo/p"} and not snap.pods
        assert error_names(store) == ["EndpointSlice foo/bad"]
        rev = snap.revision
        fill(store, 4)
        assert store.snapshot().revision == rev  # the same objects again: no new revision
        fill(store, 2)
        assert not store.snapshot().endpoint_slices and store.snapshot().revision == rev + 1
        assert not store.snapshot().errors


def test_upsert_delete_and_last_valid_version():
    store = ClusterStore()
    store.upsert(eps("a", "10.0.0.1"))
    store.upsert(SVC)
    assert addresses(store) == {"foo/a": ["10.0.0.1"]}
    store.upsert(eps("a", "10.0.0.9", **BAD))
    assert addresses(store) == {"foo/a": ["10.0.0.1"]} and error_names(store) == ["EndpointSlice foo/a"]
    store.upsert(eps("a", "10.0.0.2"))
    assert addresses(store) == {"foo/a": ["10.0.0.2"]} and not error_names(store)
    store.upsert(eps("a", "10.0.0.2", **BAD))
    store.delete("EndpointSlice", "foo", "a")
    assert not store.snapshot().endpoint_slices and not error_names(store)
    assert set(store.snapshot().services) == {"foo/web"}  # other kinds untouched


def test_replace_kind_relists_only_slices():
    store = ClusterStore()
    store.replace_all([SVC, eps("a", "10.0.0.1"), eps("b", "10.0.0.2")], [])
    store.upsert(POL)
    store.replace_kind("EndpointSlice", [eps("b", "10.0.0.3", **BAD), eps("c", "10.0.0.4")], "rv:7")
    snap = store.snapshot()
    # a is gone, b keeps its last valid version and is reported, c is new.
    assert addresses(store) == {"foo/b": ["10.0.0.2"], "foo/c": ["10.0.0.4"]}
    assert error_names(store) == ["EndpointSlice foo/b"] and snap.source_revision == "rv:7"
    assert set(snap.services) == {"foo/web"} and set(snap.policies) == {"foo/p"}
    store.replace_kind("EndpointSlice", [], "rv:8")
    assert not store.snapshot().endpoint_slices and not error_names(store)
    store.replace_kind("Service", [], "rv:9")
    assert not store.snapshot().services
