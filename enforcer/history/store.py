"""The history's file: SQLite (WAL) under the daemon's state directory.

One writer (the recorder's thread) adds rows in batches, one transaction
each, and evicts the rows seen longest ago once there are more than
max_rows; readers (API threads) open their own read-only connection per
request, which WAL lets read while a batch is written.

A file that is not a history this version can read (corrupt, not SQLite,
another schema) is moved aside, named in the log, and a new history is
started: history is a convenience, enforcement must never wait on it. A
file that cannot be opened at all (a directory, a read-only filesystem)
raises HistoryError; the daemon then runs without history.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import HistoryError
from ..files import make_private_dir
from .rows import FlowKey, FlowRow, labels_from_json, labels_json

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/enforcer")
DB_NAME = "history.db"
DEFAULT_MAX_ROWS = 100_000
SCHEMA_VERSION = 1
# The WAL file is truncated back to this after a checkpoint: a burst of
# writes must not leave a large file behind.
WAL_LIMIT_BYTES = 4 << 20

KEY_COLUMNS = ("namespace", "pod", "labels", "direction", "peer_kind", "peer_namespace", "peer_labels",
               "peer_address", "protocol", "port", "verdict")
_COLUMNS = ", ".join(KEY_COLUMNS)
_SCHEMA = f"""
CREATE TABLE flows (
  id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: page tokens stay valid across evictions
  namespace TEXT NOT NULL, pod TEXT NOT NULL, labels TEXT NOT NULL, direction TEXT NOT NULL,
  peer_kind TEXT NOT NULL, peer_namespace TEXT NOT NULL, peer_labels TEXT NOT NULL, peer_address TEXT NOT NULL,
  protocol TEXT NOT NULL, port INTEGER NOT NULL, verdict TEXT NOT NULL,
  count INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE UNIQUE INDEX flows_key ON flows({_COLUMNS});
CREATE INDEX flows_last_seen ON flows(last_seen);
CREATE INDEX flows_namespace ON flows(namespace, id);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_MATCH_KEY = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
_UPDATE = (f"UPDATE flows SET count = count + ?, first_seen = min(first_seen, ?), last_seen = max(last_seen, ?) "
           f"WHERE {_MATCH_KEY}")
_INSERT = (f"INSERT INTO flows ({_COLUMNS}, count, first_seen, last_seen) "
           f"VALUES ({', '.join('?' * (len(KEY_COLUMNS) + 3))})")
_EVICT = "DELETE FROM flows WHERE id IN (SELECT id FROM flows ORDER BY last_seen, id LIMIT ?)"

# SQLite's primary result codes for a file that is not a database it can read.
_UNREADABLE_FILE = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


@dataclass
class Tally:
    """What a batch adds to one row."""

    count: int
    first_seen: float
    last_seen: float

    def add(self, when: float, count: int = 1) -> None:
        self.count += count
        self.first_seen = min(self.first_seen, when)
        self.last_seen = max(self.last_seen, when)


@dataclass(frozen=True)
class Filter:
    """Which rows a read returns: of local pods in namespace ("" every one),
    last seen at or after since (unix time; 0 every row)."""

    namespace: str = ""
    since: float = 0.0

    def where(self, after_id: int) -> tuple[str, list[object]]:
        clauses: list[str] = ["id > ?"]
        params: list[object] = [after_id]
        if self.namespace:
            clauses.append("namespace = ?")
            params.append(self.namespace)
        if self.since:
            clauses.append("last_seen >= ?")
            params.append(self.since)
        return " AND ".join(clauses), params


class _NotAHistory(Exception):
    """The file is there but holds no history this version can read."""


def _key_params(key: FlowKey) -> tuple[object, ...]:
    return (key.namespace, key.pod, labels_json(key.labels), key.direction, key.peer_kind, key.peer_namespace,
            labels_json(key.peer_labels), key.peer_address, key.protocol, key.port, key.verdict)


def _row(record: tuple[Any, ...]) -> tuple[int, FlowRow]:
    (row_id, namespace, pod, labels, direction, peer_kind, peer_namespace, peer_labels, peer_address, protocol,
     port, verdict, count, first_seen, last_seen) = record
    key = FlowKey(namespace, pod, labels_from_json(labels), direction, peer_kind, peer_namespace,
                  labels_from_json(peer_labels), peer_address, protocol, port, verdict)
    return row_id, FlowRow(key, count, first_seen, last_seen)


class HistoryStore:
    """Open with open_store(); add() from one thread at a time; read from any."""

    def __init__(self, path: Path, max_rows: int, connection: sqlite3.Connection) -> None:
        self.path = path
        self.max_rows = max_rows
        self._db = connection
        self.rows = connection.execute("SELECT count(*) FROM flows").fetchone()[0]
        self.evicted = 0
        with connection:  # max_rows may have been lowered since the file was written
            evicted = self._evict_excess(self.rows)
        self.rows -= evicted
        self.evicted += evicted

    def add(self, batch: Mapping[FlowKey, Tally]) -> int:
        """One transaction: every row of batch added to (or created), then
        the oldest evicted beyond max_rows. Returns how many were evicted."""
        inserted = 0
        with self._db:  # a transaction: committed, or rolled back on an error
            for key, tally in batch.items():
                params = _key_params(key)
                if self._db.execute(_UPDATE, (tally.count, tally.first_seen, tally.last_seen, *params)).rowcount:
                    continue
                self._db.execute(_INSERT, (*params, tally.count, tally.first_seen, tally.last_seen))
                inserted += 1
            evicted = self._evict_excess(self.rows + inserted)
        self.rows += inserted - evicted
        self.evicted += evicted
        return evicted

    def _evict_excess(self, rows: int) -> int:
        """Delete the rows seen longest ago beyond max_rows (in the caller's
        transaction); how many."""
        excess = rows - self.max_rows
        return self._db.execute(_EVICT, (excess,)).rowcount if excess > 0 else 0

    def _reader(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=2.0)

    def read(self, which: Filter, after_id: int = 0, limit: int = 1000) -> list[tuple[int, FlowRow]]:
        """Rows matching which with an id above after_id, by id (ids only
        grow: a reader paging by the last id it got never sees a row twice)."""
        where, params = which.where(after_id)
        reader = self._reader()
        try:
            records = reader.execute(f"SELECT id, {_COLUMNS}, count, first_seen, last_seen FROM flows "
                                     f"WHERE {where} ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        finally:
            reader.close()
        return [_row(r) for r in records]

    def count(self, which: Filter, after_id: int = 0) -> int:
        where, params = which.where(after_id)
        reader = self._reader()
        try:
            return int(reader.execute(f"SELECT count(*) FROM flows WHERE {where}", params).fetchone()[0])
        finally:
            reader.close()

    def close(self) -> None:
        self._db.close()


def open_store(path: Path, max_rows: int) -> HistoryStore:
    """The history in path, created (0600, its directory 0700 if missing)
    when there is none. A file holding no history this version reads is
    moved aside (logged) and replaced; HistoryError when no history can be
    kept there at all."""
    if max_rows < 1:
        raise HistoryError(f"flow history: at most {max_rows} rows: must be at least 1")
    try:
        make_private_dir(path.parent)
        return _open(path, max_rows)
    except _NotAHistory as e:
        aside = _move_aside(path)
        log.error("flow history %s cannot be read (%s): moved to %s; starting a new history", path, e, aside)
    except (sqlite3.Error, OSError) as e:
        raise HistoryError(f"flow history {path} cannot be opened: {e}") from None
    try:
        return _open(path, max_rows)
    except (_NotAHistory, sqlite3.Error, OSError) as e:
        raise HistoryError(f"flow history {path} cannot be opened: {e}") from None


def _open(path: Path, max_rows: int) -> HistoryStore:
    if not path.exists():
        # Created 0600 here: sqlite3 would create it with the umask's mode
        # (and its -wal and -shm files take the database file's mode).
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)  # opened here, written by the recorder
    try:
        _check(db)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash loses the last batches, never the file
        db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        return HistoryStore(path, max_rows, db)
    except BaseException:
        db.close()
        raise


def _check(db: sqlite3.Connection) -> None:
    """A history of this schema (created if the file is empty), readable."""
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            db.executescript(_SCHEMA)
            return
        if version != SCHEMA_VERSION or "flows" not in tables:
            raise _NotAHistory(f"schema version {version} with tables {sorted(tables)}, "
                               f"not version {SCHEMA_VERSION}")
        problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise _NotAHistory("; ".join(map(str, problems[:3])))
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorname", "") in _UNREADABLE_FILE:
            raise _NotAHistory(str(e)) from None
        raise


def _move_aside(path: Path) -> Path:
    """path (and its -wal and -shm files) renamed to path.corrupt-<time>[-n]."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    candidates = (path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{n}" if n else "")) for n in itertools.count())
    aside = next(p for p in candidates if not p.exists())
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(aside.with_name(aside.name + suffix))
    path.rename(aside)
    return aside
