"""The history's SQLite file: rows add up, the cap evicts the rows seen
longest ago, the history survives a restart, reads page by id, and a file
that is not a history is moved aside (one that cannot be opened at all
raises HistoryError, and the daemon's recorder runs disabled). Modes: the
directory made 0700 only when the store creates it, the file 0600."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from enforcer.errors import HistoryError
from enforcer.history.recorder import open_recorder
from enforcer.history.rows import FlowKey, FlowRow, merge_rows
from enforcer.history.store import DB_NAME, Filter, Tally, open_store


def key(port: int = 80, namespace: str = "x", verdict: str = "allowed", peer: str = "y") -> FlowKey:
    return FlowKey(namespace, "a", (("app", "web"),), "ingress", "pod", peer, (("app", "client"),), "", "TCP", port,
                   verdict)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def rows_of(store) -> dict[FlowKey, tuple[int, float, float]]:
    return {r.key: (r.count, r.first_seen, r.last_seen) for _, r in store.read(Filter())}


def test_rows_add_up_per_key(tmp_path):
    store = open_store(tmp_path / DB_NAME, 100)
    store.add({key(80): Tally(1, 10.0, 10.0), key(81): Tally(2, 11.0, 12.0)})
    store.add({key(80): Tally(3, 5.0, 20.0), key(80, verdict="denied"): Tally(1, 7.0, 7.0)})
    assert rows_of(store) == {key(80): (4, 5.0, 20.0), key(81): (2, 11.0, 12.0),
                              key(80, verdict="denied"): (1, 7.0, 7.0)}
    assert store.rows == 3 and store.evicted == 0
    store.close()


def test_the_cap_evicts_the_rows_seen_longest_ago(tmp_path):
    store = open_store(tmp_path / DB_NAME, 3)
    store.add({key(p): Tally(1, float(p), float(p)) for p in (80, 81, 82)})
    store.add({key(80): Tally(1, 100.0, 100.0)})  # seen again: now the newest
    assert store.add({key(83): Tally(1, 90.0, 90.0), key(84): Tally(1, 95.0, 95.0)}) == 2
    assert sorted(k.port for k in rows_of(store)) == [80, 83, 84]
    assert (store.rows, store.evicted) == (3, 2)
    store.close()


def test_the_history_survives_a_restart_and_a_lower_cap(tmp_path):
    path = tmp_path / DB_NAME
    store = open_store(path, 10)
    store.add({key(p): Tally(p - 79, float(p), float(p)) for p in (80, 81, 82)})
    store.close()
    store = open_store(path, 10)
    assert rows_of(store) == {key(p): (p - 79, float(p), float(p)) for p in (80, 81, 82)}
    store.add({key(80): Tally(1, 200.0, 200.0)})
    store.close()
    store = open_store(path, 2)  # restarted with a lower cap: evicted at once
    assert rows_of(store) == {key(80): (2, 80.0, 200.0), key(82): (3, 82.0, 82.0)}
    assert store.evicted == 1
    store.close()


def test_reads_page_by_id_and_filter(tmp_path):
    store = open_store(tmp_path / DB_NAME, 100)
    store.add({key(p, namespace="x" if p % 2 else "z"): Tally(1, float(p), float(p)) for p in range(1000, 1010)})
    page = store.read(Filter("x"), 0, 3)
    assert [r.key.port for _, r in page] == [1001, 1003, 1005]
    assert store.count(Filter("x"), page[-1][0]) == 2
    assert [r.key.port for _, r in store.read(Filter("x"), page[-1][0], 3)] == [1007, 1009]
    assert [r.key.port for _, r in store.read(Filter("", since=1007.0))] == [1007, 1008, 1009]
    store.close()


def test_directory_made_0700_and_file_0600_when_the_store_creates_them(tmp_path):
    os.chmod(tmp_path, 0o755)
    old = os.umask(0o022)
    try:
        store = open_store(tmp_path / "var" / "lib" / "enforcer" / DB_NAME, 10)
    finally:
        os.umask(old)
    store.add({key(): Tally(1, 1.0, 1.0)})
    assert mode(tmp_path / "var") == mode(tmp_path / "var" / "lib") == mode(tmp_path / "var" / "lib" / "enforcer") == 0o700
    assert mode(store.path) == 0o600 and mode(store.path.with_name(DB_NAME + "-wal")) == 0o600
    assert mode(tmp_path) == 0o755
    store.close()


@pytest.mark.parametrize("existing_mode", [0o755, 0o1777, 0o750])
def test_an_existing_directory_is_left_as_it_is(tmp_path, existing_mode):
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, existing_mode)
    open_store(state / DB_NAME, 10).close()
    assert mode(state) == existing_mode


CORRUPT = [
    ("not a database", lambda p: p.write_bytes(b"this is no sqlite file" * 200)),
    ("truncated database", lambda p: _truncated(p)),
    ("another schema", lambda p: _foreign(p)),
    ("a newer history", lambda p: _newer(p)),
]


def _truncated(path: Path) -> None:
    store = open_store(path, 1000)
    store.add({key(p): Tally(1, 1.0, 1.0) for p in range(500)})
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xff" * 4000 + data[4100:])  # header kept, pages overwritten


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE something (x)")


def _newer(path: Path) -> None:
    open_store(path, 10).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")


@pytest.mark.parametrize("make", [c[1] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_a_file_that_is_no_history_is_moved_aside_and_a_new_one_started(tmp_path, make, caplog):
    path = tmp_path / DB_NAME
    make(path)
    before = path.read_bytes()
    store = open_store(path, 10)
    assert store.rows == 0
    store.add({key(): Tally(1, 1.0, 1.0)})
    (aside,) = tmp_path.glob(f"{DB_NAME}.corrupt-*[0-9]")
    assert aside.read_bytes() == before  # kept for whoever wants to look
    assert f"moved to {aside}" in caplog.text and str(path) in caplog.text
    store.close()


def test_a_path_that_cannot_be_opened_raises_and_the_recorder_runs_disabled(tmp_path, caplog):
    (tmp_path / DB_NAME).mkdir()  # a directory where the file should be
    with pytest.raises(HistoryError, match="cannot be opened"):
        open_store(tmp_path / DB_NAME, 10)
    recorder = open_recorder(str(tmp_path), 10)
    assert not recorder.enabled and "cannot be opened" in recorder.stats().disabled_reason
    assert "enforcing without flow history" in caplog.text
    recorder.start()  # a disabled recorder takes events and does nothing
    recorder.stop()
    assert not open_recorder("", 10).enabled and "disabled" in open_recorder("", 10).stats().disabled_reason


def test_merge_adds_counts_and_spans_times():
    a = [FlowRow(key(80), 2, 10.0, 20.0, "n1"), FlowRow(key(81), 1, 5.0, 5.0, "n1")]
    b = [FlowRow(key(80), 3, 15.0, 30.0, "n2"), FlowRow(key(82), 1, 1.0, 1.0, "n2")]
    assert merge_rows([a, b]) == [FlowRow(key(80), 5, 10.0, 30.0, ""), FlowRow(key(81), 1, 5.0, 5.0, "n1"),
                                  FlowRow(key(82), 1, 1.0, 1.0, "n2")]
