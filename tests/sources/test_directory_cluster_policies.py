"""Directory source and the cluster-scoped kinds: ClusterNetworkPolicy,
AdminNetworkPolicy, BaselineAdminNetworkPolicy and Node manifests are read;
a cluster policy edited into something invalid keeps its last valid
version, reported by name; duplicates name the kind they were written as."""

from __future__ import annotations

import json
from pathlib import Path

from enforcer.model.state import ClusterStore
from enforcer.sources.directory import DirectorySource


def cnp(name: str, priority: int) -> dict:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
                     "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}


ANP = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": "a"},
       "spec": {"priority": 3, "subject": {"namespaces": {}}}}
BANP = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": "default"}, "spec": {"subject": {"namespaces": {}}}}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}


def poll_until_read(src: DirectorySource) -> None:
    """A changed file is read once it has held still for one poll."""
    src.poll()
    src.poll()


def test_cluster_kinds_read_and_an_invalid_edit_keeps_the_last_valid_version(tmp_path: Path):
    store = ClusterStore()
    src = DirectorySource(tmp_path, store)
    (tmp_path / "cnp.yaml").write_text(json.dumps(cnp("deny-out", 10)))
    (tmp_path / "v1alpha1.json").write_text(json.dumps({"kind": "List", "items": [ANP, BANP, NODE]}))
    poll_until_read(src)
    snap = store.snapshot()
    assert set(snap.cluster_policies) == {"deny-out", "AdminNetworkPolicy/a", "BaselineAdminNetworkPolicy/default"}
    assert [str(a) for a in snap.nodes["n1"].addresses] == ["10.0.0.1"] and not snap.errors
    # An edit with a typo: the admin Deny stays in force, and is reported.
    (tmp_path / "cnp.yaml").write_text(json.dumps(cnp("deny-out", 1001)) + "\n")
    poll_until_read(src)
    snap = store.snapshot()
    assert snap.cluster_policies["deny-out"].priority == 10
    assert [str(e) for e in snap.errors] == ["ClusterNetworkPolicy deny-out: spec.priority: 1001 is not in 0-1000"]
    # Fixed.
    (tmp_path / "cnp.yaml").write_text(json.dumps(cnp("deny-out", 20)))
    poll_until_read(src)
    assert store.snapshot().cluster_policies["deny-out"].priority == 20 and not store.snapshot().errors
    # Removed: gone.
    (tmp_path / "cnp.yaml").unlink()
    poll_until_read(src)
    assert "deny-out" not in store.snapshot().cluster_policies


def test_a_duplicate_names_the_kind_it_was_written_as(tmp_path: Path):
    store = ClusterStore()
    src = DirectorySource(tmp_path, store)
    (tmp_path / "a.yaml").write_text(json.dumps(ANP))
    (tmp_path / "b.yaml").write_text(json.dumps(ANP))
    poll_until_read(src)
    assert [str(e) for e in store.snapshot().errors] == [
        "AdminNetworkPolicy a: defined 2 times, in a.yaml, b.yaml; the one in b.yaml (the last) is in force"]
