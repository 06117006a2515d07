"""Daemon.reconcile_once's report of map writes that did not happen, with a
stand-in sync that fails a huge number of entries on every pass: at most one
log line per pass (none while the set is unchanged), a bounded status and
status file, and a pass that asks to be retried. No kernel: the maps, the
programs and the sync are stand-ins; nothing gets attached."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from enforcer.daemon.failures import ERRORS_KEPT, OBJECTS_KEPT
from enforcer.daemon.runtime import Daemon, DaemonConfig
from enforcer.datapath.sync import SAMPLE_MAX, SyncReport
from enforcer.model.state import ClusterStore


class FailingSync:
    """MapSync's interface; every pass fails the same `objects` objects
    (`per_object` entries each), or nothing once `objects` is 0."""

    def __init__(self, objects: int, per_object: int = 3) -> None:
        self.objects, self.per_object = objects, per_object
        self.applied = SimpleNamespace(endpoints={}, ipcache={}, policy={})

    def apply(self, want, describe) -> SyncReport:  # type: ignore[no-untyped-def]
        n = self.objects
        return SyncReport(objects={f"NetworkPolicy ns/p{i}": self.per_object for i in range(n)},
                          not_written={"policy": {"full": n * self.per_object}} if n else {},
                          samples=[f"NetworkPolicy ns/p{i} (ingress rule 0): map policy_v1: update failed"
                                   for i in range(min(n, SAMPLE_MAX))])


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    store = ClusterStore()
    store.replace_all([], [])
    d = Daemon(DaemonConfig(node_name="n", status_file=tmp_path / "status.json", node_devices=()), store)
    d.sync = FailingSync(100_000)  # type: ignore[assignment]
    d.maps = SimpleNamespace()  # type: ignore[assignment]
    d.loaded = SimpleNamespace(fds={})  # type: ignore[assignment]
    d._previous_attachments = set()
    d.synced.set()  # as after a first pass: no gc.freeze() of this test process
    monkeypatch.setattr(d, "_attach", lambda desired: None)
    monkeypatch.setattr(d.resolver, "resolve", lambda pods: {})
    return d


def test_a_full_map_costs_one_line_and_a_bounded_status(daemon, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="enforcer.daemon")
    lines = []
    for _ in range(5):  # the same failures on every pass
        caplog.clear()
        assert daemon.reconcile_once() is True  # retried soon
        lines.append([r for r in caplog.records if "map writes" in r.getMessage()])
    assert [len(x) for x in lines] == [1, 0, 0, 0, 0]  # then once a minute (tests/datapath/test_sync.py)
    line = lines[0][0].getMessage()
    assert lines[0][0].levelno == logging.ERROR and len(line) < 1000
    assert "300000 entries of 100000 objects" in line and "policy: 300000 no room" in line

    st = daemon.status
    assert len(st.failures) == OBJECTS_KEPT and st.failures[0] == "NetworkPolicy ns/p0: 3 entries"
    assert st.write_failures.objects_total == 100_000 and st.write_failures.entries == 300_000
    assert len(st.errors) <= ERRORS_KEPT and st.errors_total == 100_000
    doc = json.loads((tmp_path / "status.json").read_text())
    assert len(doc["errors"]) <= ERRORS_KEPT and doc["errors_total"] == 100_000
    assert doc["write_failures"]["by_map"] == {"policy": {"full": 300_000}}
    assert len(doc["write_failures"]["objects"]) == OBJECTS_KEPT
    assert (tmp_path / "status.json").stat().st_size < 100_000

    daemon.sync.objects = 1  # another set of objects: said at once
    caplog.clear()
    daemon.reconcile_once()
    assert len([r for r in caplog.records if "map writes failing" in r.getMessage()]) == 1

    daemon.sync.objects = 0  # every write went in: said once, then nothing
    for expected in (1, 0):
        caplog.clear()
        assert daemon.reconcile_once() is False
        assert len([r for r in caplog.records if "map writes" in r.getMessage()]) == expected
    assert not daemon.status.failures and daemon.status.write_failures.entries == 0
