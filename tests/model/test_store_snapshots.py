"""Snapshots share the tables that did not change: an unchanged table is
the very same mapping in the next snapshot (what the API view derived from
it is kept), and every way of changing a table gives a new one with the
new content; a snapshot never changes after it was taken."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from enforcer.api.view import StateView
from enforcer.compiler.compile import Compiler
from enforcer.compiler.desired import NodeContext
from enforcer.model.state import ClusterStore


def pod(name: str, ip: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "foo", "uid": f"u-{name}", "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def pol(name: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "foo"}, "spec": {"podSelector": {}}}


NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"}}
BASE = [NS, pod("a", "10.0.0.1"), pod("b", "10.0.0.2"), pol("p")]

# (how, the change, whether pods changed)
CHANGES: list[tuple[str, Callable[[ClusterStore], None], bool]] = [
    ("upsert a policy", lambda s: s.upsert(pol("q")), False),
    ("delete a policy", lambda s: s.delete("NetworkPolicy", "foo", "p"), False),
    ("replace_all, a policy more", lambda s: s.replace_all([*BASE, pol("q")], []), False),
    ("replace_kind NetworkPolicy", lambda s: s.replace_kind("NetworkPolicy", [pol("r")]), False),
    ("a bookmark", lambda s: s.set_source_revision("rv-9"), False),
    ("upsert a pod", lambda s: s.upsert(pod("c", "10.0.0.3")), True),
    ("relabel a pod", lambda s: s.upsert(pod("a", "10.0.0.1", app="x")), True),
    ("delete a pod", lambda s: s.delete("Pod", "foo", "b"), True),
    ("replace_all, a pod fewer", lambda s: s.replace_all([NS, pod("a", "10.0.0.1"), pol("p")], []), True),
    ("replace_kind Pod", lambda s: s.replace_kind("Pod", [pod("a", "10.0.0.9")]), True),
]


@pytest.mark.parametrize("how,change,pods_changed", CHANGES, ids=[c[0] for c in CHANGES])
def test_an_unchanged_table_is_shared_and_a_changed_one_is_new(how: str, change: Callable[[ClusterStore], None],
                                                               pods_changed: bool) -> None:
    store = ClusterStore()
    store.replace_all(list(BASE), [])
    before = store.snapshot()
    kept = dict(before.pods), dict(before.policies)
    change(store)
    after = store.snapshot()
    assert (after.pods is not before.pods) is pods_changed, how
    assert dict(after.pods) == dict(store.pods) and dict(after.policies) == dict(store.policies)
    assert (dict(before.pods), dict(before.policies)) == kept  # the earlier snapshot did not move
    assert after.namespaces is before.namespaces


@pytest.mark.parametrize("how,change,pods_changed", CHANGES, ids=[c[0] for c in CHANGES])
def test_the_view_keeps_its_pod_index_only_while_the_pods_are_the_same(
        how: str, change: Callable[[ClusterStore], None], pods_changed: bool) -> None:
    store = ClusterStore()
    store.replace_all(list(BASE), [])
    node = NodeContext("n1", (), {})
    snap = store.snapshot()
    view = StateView(snap, Compiler().compile(snap, node))
    first = view.pod_by_ip
    change(store)
    snap = store.snapshot()
    following = view.following(snap, Compiler().compile(snap, node))
    assert (following.pod_by_ip is first) is not pods_changed, how
    assert following.pod_by_ip == StateView(snap, following.desired).pod_by_ip  # what a fresh view says
    assert ipaddress.ip_address("10.0.0.1") in following.pod_by_ip or how == "replace_kind Pod"
