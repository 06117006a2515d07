"""What the model keeps once: replace_all does not parse again an object it
was handed before (the directory source hands over every file's objects on
each change), and equal values parsed from many objects are one instance,
held only while some object holds it."""

from __future__ import annotations

import copy
import gc

from enforcer.model import objects, selectors
from enforcer.model.state import ClusterStore

from .cluster import base_objects, policy


def _pol(name: str, app: str = "web") -> dict:
    return policy("x", name, {"podSelector": {"matchLabels": {"app": app}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "fe"}}}],
                                           "ports": [{"port": 80}]}]})


def test_replace_all_parses_only_new_objects(monkeypatch):
    objs = base_objects() + [_pol("a"), _pol("b")]
    store = ClusterStore()
    store.replace_all(objs, [])
    first = store.snapshot()
    parsed = []
    real = objects.parse_object
    monkeypatch.setattr("enforcer.model.state.parse_object", lambda raw: parsed.append(raw) or real(raw))

    store.replace_all(list(objs), [])  # the same objects: nothing parsed, nothing changed
    assert parsed == [] and store.revision == first.revision
    assert store.snapshot().policies["x/a"] is first.policies["x/a"]

    edited = copy.deepcopy(objs[-1])
    edited["spec"]["ingress"][0]["ports"] = [{"port": 81}]
    store.replace_all(objs[:-1] + [edited], [])  # one new object: parsed, the rest reused
    assert parsed == [edited] and store.revision == first.revision + 1
    assert store.snapshot().policies["x/b"].ingress[0].ports[0].port == 81
    assert store.snapshot().policies["x/a"] is first.policies["x/a"]

    same = copy.deepcopy(objs[-2])  # equal content, another object: parsed, no change
    store.replace_all(objs[:-2] + [same, edited], [])
    assert parsed == [edited, same] and store.revision == first.revision + 1


def test_replace_all_keeps_errors_of_reused_objects():
    bad = policy("x", "bad", {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}})
    unnamed = {"kind": "Pod", "metadata": {"namespace": "x"}}
    store = ClusterStore()
    store.replace_all([bad, unnamed], [])
    for _ in range(2):
        snap = store.snapshot()
        assert snap.policies["x/bad"].fail_closed
        assert any("metadata.name is missing" in str(e) for e in snap.errors)
        store.replace_all([bad, unnamed], [])


def test_equal_values_are_shared_and_released():
    store = ClusterStore()
    store.replace_all([_pol(f"p{i}") for i in range(50)], [])
    pols = list(store.snapshot().policies.values())
    assert len({id(p.pod_selector) for p in pols}) == 1
    assert len({id(p.ingress[0]) for p in pols}) == 1  # the whole rule
    assert len({id(p.policy_types) for p in pols}) == 1
    sel = pols[0].pod_selector
    assert sel == selectors.LabelSelector.parse({"matchLabels": {"app": "web"}}, "t")

    unique = "only-here-7f3a"
    store.replace_all([_pol("solo", app=unique)], [])
    assert any(r.values == frozenset([unique]) for r in list(selectors._requirements._table.values()))
    del pols, sel
    store.replace_all([], [])
    gc.collect()
    assert not any(r.values == frozenset([unique]) for r in list(selectors._requirements._table.values()))
