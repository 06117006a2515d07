"""The Status answer stays small whatever the state holds (a million invalid
objects, a million objects a full map left out, huge strings): each list
keeps its first items and says how many it left out. Also the metrics of
map writes that did not happen. No daemon, no kernel: a stand-in daemon."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from enforcer.api.metrics import DaemonCollector
from enforcer.api.service import EnforcerService
from enforcer.api.view import LIST_MAX, STRING_MAX
from enforcer.compiler.diagnose import Diagnostic
from enforcer.daemon.failures import OBJECTS_KEPT, WriteFailures
from enforcer.daemon.runtime import Status
from enforcer.datapath.sync import SAMPLE_MAX, SyncReport
from enforcer.errors import InvalidObjectError
from enforcer.v1 import enforcer_pb2 as pb

MILLION = 1_000_000


class StandIn:
    """What EnforcerService and DaemonCollector read of a Daemon."""

    def __init__(self, status: Status, view: object) -> None:
        self.status = status
        self._view = view
        self.config = SimpleNamespace(node_name="node-1")

    def view(self) -> object:
        return self._view

    def map_occupancy(self) -> dict[str, tuple[int, int]]:
        return {"policy": (262144, 262144), "ipcache": (10, 524288)}

    def counters(self, endpoint_id: int) -> dict:  # type: ignore[type-arg]
        return {}

    def event_stats(self) -> dict[str, int]:
        return {}


def state(n: int, text: int) -> StandIn:
    """n invalid objects, n objects not written, n unplaced pods, n
    diagnostics; every string `text` characters long."""
    s = "x" * text
    # Distinct names, the first ones (those shown) long: a million long ones would not fit in memory.
    report = SyncReport(objects={f"NetworkPolicy ns/p{i}{s if i < OBJECTS_KEPT else ''}": 3 for i in range(n)},
                        not_written={"policy": {"full": 2 * n}, "ipcache_hosts": {"full": n, "held": 0}},
                        samples=[f"NetworkPolicy ns/p{i} (ingress rule 0): {s}" for i in range(SAMPLE_MAX)])
    failures = WriteFailures.of(report)
    status = Status(ready=True, failures=list(failures.objects), write_failures=failures,
                    unplaced=[f"ns/pod{s}"] * n, source_revision=s)
    error = InvalidObjectError("NetworkPolicy", "ns" + s, "bad" + s, "invalid CIDR " + s)
    diagnostic = Diagnostic("snat-trap", "error", "ns/svc" + s, "ns/pol" + s, "mixed", s, s)
    view = SimpleNamespace(snapshot=SimpleNamespace(namespaces={}, pods={}, policies={}, cluster_policies={}), endpoint_by_id={},
                           desired=SimpleNamespace(errors=[error] * n, audit_all=False), diagnostics=(diagnostic,) * n)
    return StandIn(status, view)


@pytest.mark.parametrize("text", [pytest.param(30, id="ordinary-strings"),
                                  pytest.param(100_000, id="huge-strings")])
def test_status_of_a_million_problems_is_bounded(text):
    daemon = state(MILLION, text)
    resp = EnforcerService(daemon, flows=None, source="directory:/x").Status(pb.StatusRequest(), None)  # type: ignore[arg-type]
    size = len(resp.SerializeToString())
    # A full map's answer was ~20 MB once (one string per entry), over gRPC's 4 MB.
    assert size < (1_000_000 if text < 100 else 2_000_000), size
    assert len(resp.invalid_objects) == LIST_MAX and resp.invalid_objects_omitted == MILLION - LIST_MAX
    assert len(resp.unplaced_pods) == LIST_MAX and resp.unplaced_pods_omitted == MILLION - LIST_MAX
    assert len(resp.diagnostics) == LIST_MAX and resp.diagnostics_omitted == MILLION - LIST_MAX
    assert len(resp.sync_failures) == OBJECTS_KEPT and resp.sync_failures_omitted == MILLION - OBJECTS_KEPT
    first = resp.sync_failures[0]
    assert first.startswith("NetworkPolicy ns/p0")
    assert first.endswith(": 3 entries") if text < 100 else len(first) == STRING_MAX
    assert len(resp.sync_failure_samples) == SAMPLE_MAX
    assert resp.entries_not_written == 3 * MILLION
    assert {m.map: (m.full, m.other, m.held) for m in resp.map_write_failures} == \
        {"policy": (2 * MILLION, 0, 0), "ipcache_hosts": (MILLION, 0, 0)}
    strings = [o.error for o in resp.invalid_objects] + [d.message for d in resp.diagnostics] + \
        list(resp.unplaced_pods) + list(resp.sync_failures) + list(resp.sync_failure_samples) + [resp.source_revision]
    assert max(map(len, strings)) <= STRING_MAX


def test_status_of_a_healthy_daemon_omits_nothing():
    daemon = state(3, 10)
    daemon.status.write_failures = WriteFailures()
    daemon.status.failures = []
    resp = EnforcerService(daemon, flows=None, source="directory:/x").Status(pb.StatusRequest(), None)  # type: ignore[arg-type]
    assert len(resp.invalid_objects) == 3 and len(resp.diagnostics) == 3 and len(resp.unplaced_pods) == 3
    assert (resp.invalid_objects_omitted, resp.unplaced_pods_omitted, resp.diagnostics_omitted,
            resp.sync_failures_omitted, resp.entries_not_written) == (0, 0, 0, 0, 0)
    assert not resp.sync_failures and not resp.map_write_failures


def test_metrics_of_map_writes_not_done():
    daemon = state(5, 10)
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    text = generate_latest(registry).decode()
    assert 'enforcer_map_write_failures{map="policy",reason="full"} 10.0' in text
    assert 'enforcer_map_write_failures{map="ipcache_hosts",reason="full"} 5.0' in text
    assert 'enforcer_map_write_failures{map="endpoints",reason="full"} 0.0' in text  # every map, zero included
    assert "enforcer_objects_not_written 5.0" in text
    daemon.status.write_failures = WriteFailures()
    text = generate_latest(registry).decode()
    assert 'enforcer_map_write_failures{map="policy",reason="full"} 0.0' in text
    assert "enforcer_objects_not_written 0.0" in text
