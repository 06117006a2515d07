"""Ordered map sync against real pinned maps: order, minimal writes,
restart read-back, and a full map reported against the object it was for."""

from __future__ import annotations

import ipaddress

import pytest

from enforcer.datapath.maps import BpfMap
from enforcer.datapath.sync import MapContents, MapSync

from .harness import new_harness


@pytest.fixture
def small():
    h = new_harness("sync", policy_max=8)
    try:
        for name in ("endpoints", "policy"):
            h.maps[name].clear()
        h.maps.clear_identities()
        yield h
    finally:
        h.close()


def contents(n_rules: int, flags: int = 1, ident: int = 300) -> MapContents:
    return MapContents(
        ipcache={ipaddress.ip_network("10.0.0.1/32"): ident, ipaddress.ip_network("10.2.0.0/16"): 500},
        endpoints={ipaddress.ip_address("10.0.0.1"): (1, 1, ident, flags)},
        policy={(400 + i, 1, 0, 6, 80, 80): 7 for i in range(n_rules)},
    )


def test_order_and_minimal_writes(small, monkeypatch):
    log: list[tuple[str, str]] = []
    orig_update, orig_delete = BpfMap.update, BpfMap.delete
    monkeypatch.setattr(BpfMap, "update", lambda self, k, v, flags=0: (log.append(("write", self.name)), orig_update(self, k, v, flags))[1])
    monkeypatch.setattr(BpfMap, "delete", lambda self, k: (log.append(("delete", self.name)), orig_delete(self, k))[1])
    sync = MapSync(small.maps)
    report = sync.apply(contents(3))
    assert report.written == 6 and not report.failures
    assert [n for _, n in log] == ["policy_v1"] * 3 + ["ipcache_hosts_v1", "ipcache_v1", "endpoints_v1"]
    log.clear()
    assert not sync.apply(contents(3)).changed and log == []  # nothing to do: nothing written
    # Identity change + one rule fewer: new allows, then ipcache, endpoint; deletions last.
    want = contents(2, ident=301)
    want.policy[(301, 1, 0, 6, 81, 80)] = 8
    want.endpoints = {}
    sync.apply(want)
    assert log == [("write", "policy_v1"), ("write", "ipcache_hosts_v1"), ("delete", "endpoints_v1"),
                   ("delete", "policy_v1")]


def test_restart_reads_back_and_writes_nothing(small):
    MapSync(small.maps).apply(contents(3))
    again = MapSync(small.maps)
    assert again.applied.policy == contents(3).policy
    assert again.applied.endpoints == contents(3).endpoints
    assert not again.apply(contents(3)).changed


def test_full_map_is_reported_against_its_object_and_retried(small):
    sync = MapSync(small.maps)
    report = sync.apply(contents(12), describe=lambda kind, key: f"NetworkPolicy x/big ({kind} {key[0]})"
                        if kind == "policy" else f"{kind} {key}")
    assert len(report.failures) == 4
    assert all(f.startswith("NetworkPolicy x/big (policy 4") and "8 entries at most" in f for f in report.failures)
    # What failed was not recorded as applied; everything else went in.
    assert len(sync.applied.policy) == 8 and small.maps["policy"].count() == 8
    assert sync.applied.endpoints == contents(12).endpoints  # isolation went on: denies, never allows
    # Shrinking while full: this pass still adds before it removes (never the
    # reverse), so its adds fail and its removals make room; the reconcile
    # loop retries a pass with failures and the next one completes.
    smaller = contents(12)
    for key in list(smaller.policy)[:6]:
        del smaller.policy[key]
    assert sync.apply(smaller).failures
    report = sync.apply(smaller)
    assert not report.failures and small.maps["policy"].count() == 6
    assert sync.read().policy == smaller.policy
