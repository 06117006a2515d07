"""Directory source: formats, List kinds, half-written files, deletions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from enforcer.model.state import ClusterStore
from enforcer.sources.directory import DirectorySource, parse_manifests

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}


def pol(name: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"}, "spec": {"podSelector": {}}}


@pytest.mark.parametrize("text,count", [
    ("kind: Namespace\nmetadata: {name: a}\n---\nkind: Namespace\nmetadata: {name: b}\n", 2),
    (json.dumps({"kind": "List", "items": [NS, pol("p")]}), 2),
    (json.dumps({"kind": "NetworkPolicyList", "items": [pol("p"), pol("q")]}), 2),
    ("---\n# only a comment\n---\n", 0),
    (json.dumps(NS), 1),
])
def test_parse_manifests(text, count):
    assert len(parse_manifests(text)) == count


@pytest.mark.parametrize("text", ["kind: [unclosed", "- just\n- a list\n", "{\"kind\": "])
def test_parse_manifests_rejects(text):
    with pytest.raises(ValueError):
        parse_manifests(text)


def wait_for(pred, timeout=5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_changes_and_deletions_are_picked_up(tmp_path: Path):
    store = ClusterStore()
    (tmp_path / "ns.yaml").write_text(json.dumps(NS))
    (tmp_path / "p.json").write_text(json.dumps(pol("p1")))
    src = DirectorySource(tmp_path, store, interval=0.05)
    src.start()
    try:
        wait_for(lambda: set(store.snapshot().policies) == {"x/p1"})
        (tmp_path / "q.yml").write_text(json.dumps({"kind": "List", "items": [pol("p2"), pol("p3")]}))
        wait_for(lambda: set(store.snapshot().policies) == {"x/p1", "x/p2", "x/p3"})
        (tmp_path / "p.json").unlink()
        wait_for(lambda: set(store.snapshot().policies) == {"x/p2", "x/p3"})
        (tmp_path / "README.md").write_text("not a manifest")
        (tmp_path / ".hidden.yaml").write_text(json.dumps(pol("hidden")))
        time.sleep(0.3)
        assert "x/hidden" not in store.snapshot().policies
    finally:
        src.stop()


def test_half_written_file_is_never_read_short(tmp_path: Path):
    """A writer rewrites a 40-policy file in place, slowly; the store must
    only ever hold all 40 (old content) or all 40 new ones, never fewer."""
    store = ClusterStore()
    def docs(gen):
        return "\n---\n".join(json.dumps(dict(pol(f"p{i}"), spec={"podSelector": {"matchLabels": {"g": str(gen)}}}))
                                          for i in range(40))
    path = tmp_path / "policies.yaml"
    path.write_text(docs(0))
    seen_counts: set[int] = set()
    src = DirectorySource(tmp_path, store, interval=0.02)
    store.on_change = lambda: seen_counts.add(len(store.policies))
    src.start()
    try:
        wait_for(lambda: len(store.snapshot().policies) == 40)
        for gen in range(1, 4):
            # Worst case for a reader: every prefix the writer leaves behind
            # is itself a valid manifest with fewer documents.
            with path.open("w") as f:
                for doc in docs(gen).split("\n---\n"):
                    f.write(doc + "\n---\n")
                    f.flush()
                    time.sleep(0.005)
            wait_for(lambda gen=gen: all(p.pod_selector and str(p.pod_selector) == f"g={gen}"
                                         for p in store.snapshot().policies.values()))
    finally:
        src.stop()
    assert seen_counts == {40}


def test_unparseable_file_keeps_last_content_and_is_reported(tmp_path: Path, monkeypatch):
    import enforcer.sources.directory as d

    monkeypatch.setattr(d, "BROKEN_REPORT_AFTER_S", 0.1)
    store = ClusterStore()
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(pol("keep")))
    src = DirectorySource(tmp_path, store, interval=0.02)
    src.start()
    try:
        wait_for(lambda: "x/keep" in store.snapshot().policies)
        path.write_text("kind: [broken")
        wait_for(lambda: any("p.yaml" in str(e) for e in store.snapshot().errors))
        assert "x/keep" in store.snapshot().policies
        err = next(str(e) for e in store.snapshot().errors if "p.yaml" in str(e))
        assert "last readable content stays in force" in err
        path.write_text(json.dumps(pol("fixed")))
        wait_for(lambda: set(store.snapshot().policies) == {"x/fixed"} and not store.snapshot().errors)
    finally:
        src.stop()


SVC_YAML = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
"""
SLICES_YAML = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-abc, namespace: x, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints:
  - addresses: [10.0.0.1]
    conditions: {ready: true}
    nodeName: n1
    targetRef: {kind: Pod, namespace: x, name: web-0}
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-bad, namespace: x, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [not-an-ip]}]
"""


def test_services_and_endpoint_slices_fill_the_snapshot(tmp_path: Path):
    from enforcer.model.services import service_backends

    store = ClusterStore()
    (tmp_path / "ns.json").write_text(json.dumps(NS))
    (tmp_path / "svc.yaml").write_text(SVC_YAML)
    (tmp_path / "slices.yaml").write_text(SLICES_YAML)
    src = DirectorySource(tmp_path, store, interval=0.05)
    src.start()
    try:
        wait_for(store.ready.is_set)
        snap = store.snapshot()
        assert set(snap.services) == {"x/web"} and set(snap.endpoint_slices) == {"x/web-abc"}
        assert [str(e) for e in snap.errors] == ["EndpointSlice x/web-bad: endpoints[0].addresses: "
                                                 "invalid address 'not-an-ip'"]
        (b,) = service_backends(snap, snap.services["x/web"])
        assert (str(b.address), b.ports, b.pod, b.node_name, b.ready) == ("10.0.0.1", (8080,), "x/web-0", "n1", True)
        (tmp_path / "slices.yaml").unlink()
        wait_for(lambda: not store.snapshot().endpoint_slices and not store.snapshot().errors)
        assert set(store.snapshot().services) == {"x/web"}
    finally:
        src.stop()
