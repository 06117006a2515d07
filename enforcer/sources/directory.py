"""Manifests from a local directory, as `kubectl get -o yaml` prints them:
YAML or JSON, several documents per file, `List` kinds.

Polled rather than watched with inotify so it works on any filesystem
(ConfigMap volumes swap symlinks; network filesystems send no events). A
file is read only once its size and mtime have held still for one poll, and
a file that does not parse keeps its last good content until it does: a
writer caught mid-write is retried, never read as a shorter manifest (which
would silently drop the policies after the cut).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import InvalidObjectError
from ..model.state import ClusterStore, ParsedEntry, parse_for_store

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's loader when PyYAML was built with it (4x faster), same semantics.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
BROKEN_REPORT_AFTER_S = 2.0  # a file still unreadable after this is reported


@dataclass
class _FileState:
    stat: tuple[int, int]
    objects: list[ParsedEntry]  # parsed once per change; the raw dicts are not kept
    digest: str = ""  # of the content in force (the last readable one)
    broken_since: float | None = None
    error: str | None = None


def content_revision(files: dict[str, str]) -> str:
    """Revision of a directory's content in force: a digest over (relative
    path, content digest) in path order. Anyone holding the same files can
    compute it, so a writer can wait until the daemon has applied what it
    wrote."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\n")
    return "sha256:" + h.hexdigest()[:16]


def directory_revision(directory: Path) -> str:
    """content_revision of the manifests in `directory` as they are now."""
    files = {}
    for root, _dirs, names in os.walk(directory, followlinks=True):
        if any(part.startswith(".") for part in Path(root).relative_to(directory).parts):
            continue
        for name in names:
            if not name.startswith(".") and name.endswith(SUFFIXES):
                path = Path(root) / name
                files[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return content_revision(files)


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """All objects in a YAML/JSON text, `List` kinds flattened. Raises
    ValueError when the text does not parse."""
    try:
        docs = list(yaml.load_all(text, Loader=_YAML_LOADER))
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML/JSON: {e}") from e
    out: list[dict[str, Any]] = []
    for doc in docs:
        out.extend(_flatten(doc))
    return out


def _flatten(doc: Any) -> Iterable[dict[str, Any]]:
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ValueError(f"a document is a {type(doc).__name__}, not an object")
    kind = doc.get("kind", "")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        items = []
        for item in doc["items"]:
            items.extend(_flatten(item))
        return items
    return [doc]


class DirectorySource:
    def __init__(self, directory: Path, store: ClusterStore, interval: float = 0.1) -> None:
        self.directory = Path(directory)
        self.store = store
        self.interval = interval
        self._files: dict[Path, _FileState] = {}
        self._pending: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="directory-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # keep polling whatever one pass hit
                log.exception("directory source: poll failed")

    def _scan(self) -> dict[Path, tuple[int, int]]:
        found: dict[Path, tuple[int, int]] = {}
        if not self.directory.is_dir():
            return found
        for root, _dirs, files in os.walk(self.directory, followlinks=True):
            if any(part.startswith(".") for part in Path(root).relative_to(self.directory).parts):
                continue  # ..data-style hidden dirs of ConfigMap volumes are reached via their links
            for name in files:
                if name.startswith(".") or not name.endswith(SUFFIXES):
                    continue
                path = Path(root) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                found[path] = (st.st_mtime_ns, st.st_size)
        return found

    def poll(self) -> bool:
        """One pass; returns whether the store was updated."""
        now = time.monotonic()
        seen = self._scan()
        changed = False
        for path in [p for p in self._files if p not in seen]:
            del self._files[path]
            changed = True
        for path, stat in seen.items():
            known = self._files.get(path)
            if known is not None and known.stat == stat and known.broken_since is None:
                self._pending.pop(path, None)
                continue
            if self._pending.get(path) != stat and (known is None or known.stat != stat):
                self._pending[path] = stat  # changed since last poll: wait until it holds still
                continue
            self._pending.pop(path, None)
            changed |= self._read(path, stat, known, now)
        if not self.synced.is_set():
            if self._pending:
                return False  # first read not complete: publish nothing partial
            changed = True
        if changed:
            self._publish()
        self.synced.set()
        return changed

    def _read(self, path: Path, stat: tuple[int, int], known: _FileState | None, now: float) -> bool:
        try:
            data = path.read_bytes()
            objects = [parse_for_store(raw) for raw in parse_manifests(data.decode())]
        except (OSError, UnicodeDecodeError, ValueError) as e:
            state = known or _FileState(stat, [])
            state.stat = stat
            if state.broken_since is None:
                state.broken_since = now
            was_reported = state.error is not None
            if now - state.broken_since >= BROKEN_REPORT_AFTER_S:
                state.error = f"{path.name}: {e}"
            self._files[path] = state
            return state.error is not None and not was_reported
        self._files[path] = _FileState(stat, objects, hashlib.sha256(data).hexdigest())
        return True

    def _publish(self) -> None:
        objects: list[ParsedEntry] = []
        errors: list[InvalidObjectError] = []
        for path in sorted(self._files):
            st = self._files[path]
            objects.extend(st.objects)
            if st.error:
                errors.append(InvalidObjectError("File", None, str(path.relative_to(self.directory)),
                                                 f"{st.error} (its last readable content stays in force)"))
        revision = content_revision({str(p.relative_to(self.directory)): st.digest for p, st in self._files.items()})
        self.store.replace_parsed(objects, errors, source_revision=revision)
