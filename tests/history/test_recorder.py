"""Verdict events -> history rows: which events count and how each side is
named (pod labels without volatile ones, addresses outside the pods, the
node), and the recorder between the events thread and the file: it never
blocks (a full queue costs events, counted), aggregates, writes on flush and
on stop, and survives a failing write."""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3

import pytest

from enforcer.datapath.events import Verdict
from enforcer.datapath.layout import IDENTITY_HOST, IDENTITY_WORLD
from enforcer.datapath.reasons import Reason
from enforcer.history.observe import flow_key, verdict_of
from enforcer.history.recorder import HistoryRecorder
from enforcer.history.rows import FlowKey
from enforcer.history.store import DB_NAME, Filter, open_store

from . import cluster as C

WEB, API, API_CANARY = (("app", "web"),), (("app", "api"),), (("app", "api"), ("track", "canary"))


def event(reason: str, allowed: bool, audit: bool = False) -> Verdict:
    ip = ipaddress.ip_address("10.0.1.1")
    return Verdict(1, allowed, Reason[reason], "ingress", 1, 1, IDENTITY_WORLD, 0, 6, ip, ip, 1, 80, 2, audit)


@pytest.mark.parametrize("ev,expected", [
    (event("ALLOW_NOT_ISOLATED", True), "allowed"),
    (event("ALLOW_POLICY", True), "allowed"),
    (event("ALLOW_ADMIN", True), "allowed"),
    (event("DROP_POLICY", True, audit=True), "audit"),  # passed; an audited policy would drop it
    (event("DROP_POLICY", False), "denied"),
    (event("DROP_ADMIN", False), "denied"),
    (event("DROP_BASELINE", False), "denied"),
    (event("ALLOW_SELF", True), None),  # a pod's hairpin to itself: no peer a policy names
    (event("DROP_MALFORMED", False), None),
    (event("DROP_SPOOFED_SOURCE", False), None),
    (event("DROP_UNKNOWN_ENDPOINT", False), None),
], ids=lambda x: x if isinstance(x, str | None) else f"{x.reason.name}{'-audit' if x.audit else ''}")
def test_which_events_count_and_as_what(ev, expected):
    assert verdict_of(ev) == expected


def keys(state, src, dst, protocol="TCP", port=80, family=4) -> list[FlowKey]:
    found = [flow_key(v, state) for v in C.verdicts(state, src, dst, protocol, port, family)]
    assert None not in found
    return found  # type: ignore[return-value]


def K(ns, pod, labels, direction, kind, peer_ns="", peer_labels=(), peer_address="", protocol="TCP", port=80,
      verdict="allowed") -> FlowKey:
    return FlowKey(ns, pod, labels, direction, kind, peer_ns, peer_labels, peer_address, protocol, port, verdict)


PLAIN = C.view()
WITH_POLICIES = C.view([
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"app": "api"}},
              "ingress": [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"port": 80}]}]}}])

NAMING = [
    ("pod to pod on this node: both hooks, volatile labels dropped", PLAIN, ("x/web-1", "x/api"), [
        K("x", "web-1", WEB, "egress", "pod", "x", API),
        K("x", "api", API, "ingress", "pod", "x", WEB)]),
    ("IPv6: the same rows as IPv4", PLAIN, ("x/web-1", "x/api", "TCP", 80, 6), [
        K("x", "web-1", WEB, "egress", "pod", "x", API),
        K("x", "api", API, "ingress", "pod", "x", WEB)]),
    ("to a pod of another node: the sender's side only", PLAIN, ("y/client", "z/db", "TCP", 5432), [
        K("y", "client", (("app", "client"),), "egress", "pod", "z", (("app", "db"),), port=5432)]),
    ("to an address outside the pods", PLAIN, ("x/web-1", C.EXTERNAL, "UDP", 53), [
        K("x", "web-1", WEB, "egress", "world", peer_address=C.EXTERNAL, protocol="UDP", port=53)]),
    ("from an address inside a policy's ipBlock; its drop", WITH_POLICIES, (C.EXTERNAL, "x/api", "TCP", 80), [
        K("x", "api", API, "ingress", "cidr", peer_address=C.EXTERNAL)]),
    ("denied at the receiver: the sender's egress passed", WITH_POLICIES, ("x/web-1", "x/api-canary", "TCP", 80), [
        K("x", "web-1", WEB, "egress", "pod", "x", API_CANARY),
        K("x", "api-canary", API_CANARY, "ingress", "pod", "x", WEB, verdict="denied")]),
    ("ICMP: no port", PLAIN, ("x/web-1", "y/other", "ICMP", 0), [
        K("x", "web-1", WEB, "egress", "pod", "y", (("app", "other"),), protocol="ICMP", port=0),
        K("y", "other", (("app", "other"),), "ingress", "pod", "x", WEB, protocol="ICMP", port=0)]),
]


@pytest.mark.parametrize("state,flow,expected", [c[1:] for c in NAMING], ids=[c[0] for c in NAMING])
def test_each_side_is_named_as_a_policy_would_name_it(state, flow, expected):
    assert keys(state, *flow) == expected


def test_the_node_is_the_host_peer():
    v = dataclasses.replace(C.verdicts(PLAIN, "x/web-1", "x/api")[1], src=ipaddress.ip_address(C.NODE_IP),
                            peer_identity=IDENTITY_HOST)
    assert flow_key(v, PLAIN) == K("x", "api", API, "ingress", "host", peer_address=C.NODE_IP)


def test_events_of_unknown_endpoints_and_huge_labels_are_not_attributed():
    v = C.verdicts(PLAIN, "x/web-1", "x/api")[0]
    assert flow_key(dataclasses.replace(v, endpoint_id=999), PLAIN) is None
    huge = C.view(relabel={"x/web-1": {f"k{i}": "v" * 60 for i in range(100)}})
    assert flow_key(C.verdicts(huge, "x/web-1", "x/api")[0], huge) is None  # over rows.LABELS_MAX_BYTES


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / DB_NAME, 1000)
    yield s
    s.close()


def rows(store) -> dict[FlowKey, tuple[int, float, float]]:
    return {r.key: (r.count, r.first_seen, r.last_seen) for _, r in store.read(Filter())}


def test_the_recorder_aggregates_a_workloads_pods_and_writes_on_flush(store):
    recorder = HistoryRecorder(store, write_interval=3600)  # only flush() writes
    recorder.start()
    for i, pod in enumerate(["x/web-1", "x/web-2", "x/web-1"]):
        for v in C.verdicts(PLAIN, pod, "x/api", when_ns=(i + 1) * 1_000_000_000):
            recorder.offer(v, PLAIN)
    recorder.offer(C.verdicts(PLAIN, "x/web-1", "x/api")[0], None)  # before the first sync: no names
    assert recorder.flush()
    offset = recorder._offset
    got = rows(store)
    assert got[K("x", "api", API, "ingress", "pod", "x", WEB)] == (3, 1 + offset, 3 + offset)
    assert got[K("x", "web-1", WEB, "egress", "pod", "x", API)] == (2, 1 + offset, 3 + offset)
    assert got[K("x", "web-2", WEB, "egress", "pod", "x", API)] == (1, 2 + offset, 2 + offset)
    stats = recorder.stats()
    assert (stats.events_recorded, stats.events_unattributed, stats.events_dropped, stats.rows) == (6, 1, 0, 3)
    recorder.stop()


def test_offering_never_blocks_a_full_queue_costs_events(store):
    recorder = HistoryRecorder(store, queue_size=2)  # not started: nothing takes events out
    for v in C.verdicts(PLAIN, "x/web-1", "x/api") * 3:
        recorder.offer(v, PLAIN)
    assert recorder.events_dropped == 4
    recorder.start()
    assert recorder.flush()
    assert recorder.stats().events_recorded == 2 and len(rows(store)) == 2
    recorder.stop()


def test_stop_writes_what_is_queued_and_a_restart_finds_it(tmp_path):
    recorder = HistoryRecorder(open_store(tmp_path / DB_NAME, 100), write_interval=3600)
    recorder.start()
    for v in C.verdicts(PLAIN, "y/client", "x/api"):
        recorder.offer(v, PLAIN)
    recorder.stop()
    again = open_store(tmp_path / DB_NAME, 100)
    assert len(rows(again)) == 2
    again.close()


def test_a_failing_write_is_counted_and_the_recorder_goes_on(store, caplog):
    recorder = HistoryRecorder(store, write_interval=3600)
    real_add, calls = store.add, []

    def add(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_add(batch)

    store.add = add  # type: ignore[method-assign]
    recorder.start()
    for v in C.verdicts(PLAIN, "y/client", "x/api"):
        recorder.offer(v, PLAIN)
    assert recorder.flush()
    assert recorder.stats().write_errors == 1 and "disk is full" in caplog.text
    for v in C.verdicts(PLAIN, "y/other", "x/api"):
        recorder.offer(v, PLAIN)
    assert recorder.flush()
    assert len(rows(store)) == 2 and calls == [2, 2]
    recorder.stop()
