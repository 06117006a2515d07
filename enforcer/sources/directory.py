"""Manifests from a local directory, as `kubectl get -o yaml` prints them:
YAML or JSON, several documents per file, `List` kinds.

Polled, so it works on any filesystem (ConfigMap volumes swap symlinks;
network filesystems send no events). A file is read only once its size and
mtime have held still for one poll, and a file that does not parse keeps
its last good content until it does: a writer caught mid-write is retried,
never read as a shorter manifest (which would silently drop the policies
after the cut). A file is read again only when its stat (device, inode,
size, mtime, ctime) changes. Where inotify works it only speeds this up
(inotify.py): a change wakes the poll at once, and a file its writer closed
or renamed into place is complete, so it is read in that poll (and undone
if it changed again while being read) instead of one poll later; and one
written to and not closed since is still being written, so it must hold
still for OPEN_FILE_HOLD_S, not one poll (a writer pausing mid-file on a
loaded node is not read short).

Whatever the tree holds, one path costs the scan one error, never the scan:
links are followed, but a directory reached twice (a link to itself or to
a parent) is walked once and a file reached twice is read once (both by
device and inode); a path that cannot be read (a link loop, a dangling
link, a FIFO or device, which are never opened, a name too long, no
permission, a file larger than `max_manifest_bytes`, text that is not
UTF-8, an empty file, YAML that nests too deep or expands through aliases
to too many nodes) is reported by path as an invalid object (`enforcer
status`, `enforcer_invalid_objects`) once it has stayed so for
BROKEN_REPORT_AFTER_S, and whatever was last read from it stays in force.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import re
import stat as stat_mod
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, SequenceNode

from ..errors import InvalidObjectError
from ..model.state import ClusterStore, ParsedEntry, kind_of, parse_for_store
from .inotify import DirectoryWatch

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's loader when PyYAML was built with it (4x faster), same semantics.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
BROKEN_REPORT_AFTER_S = 2.0  # a file still unreadable after this is reported
# A manifest file larger than this is not read (--max-manifest-bytes). The
# API server refuses objects over ~1.5 MB; a file holds several.
DEFAULT_MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# YAML bounds, checked on the parsed node graph before anything is built
# from it: nesting depth (Kubernetes objects nest ~15 deep), and the number
# of nodes a file holds once aliases are expanded, which without aliases is
# at most ~2 per byte ("billion laughs" expands a few hundred bytes into
# 10^9 nodes).
MAX_YAML_DEPTH = 100
YAML_NODES_BASE = 100_000
YAML_NODES_PER_BYTE = 2
# How often the directory is polled; a changed file is read once it has
# held still for one poll (enforcer run --poll-interval).
DEFAULT_POLL_INTERVAL_S = 0.1
MIN_INTERVAL_S = 0.01  # whatever interval is asked for, the poll never spins
# A file inotify says is still open for writing (written to, not closed
# since) is read once it has held still this long: a writer that pauses
# mid-file for longer than a poll is not read short; one that keeps its
# file open for good is read all the same.
OPEN_FILE_HOLD_S = 1.0
POLL_FAILURE_LOG_EVERY_S = 60.0  # a poll that keeps failing is logged at most this often

# What decides whether a file has changed: st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns.
StatKey = tuple[int, int, int, int, int]


def _key_of(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Unreadable(Exception):
    """A file's content cannot be used; the message says why."""


@dataclass
class _FileState:
    stat: StatKey
    objects: list[ParsedEntry]  # parsed once per change; the raw dicts are not kept
    digest: str = ""  # of the content in force (the last readable one); "" when there was none
    broken_since: float | None = None
    reason: str | None = None  # why the file's current content is not in force


@dataclass
class Scan:
    """What one walk of the directory found."""

    files: dict[Path, StatKey] = field(default_factory=dict)  # manifests to read, each file once
    errors: dict[Path, str] = field(default_factory=dict)  # paths that cannot be read, and why
    unlisted: list[Path] = field(default_factory=list)  # directories that could not be listed
    listed: list[Path] = field(default_factory=list)  # directories listed (watched for changes: inotify.py)

    def hides(self, path: Path) -> bool:
        """Whether `path` lies in a directory that could not be listed (so
        whether it is still there is unknown)."""
        return any(d in path.parents for d in self.unlisted)


def _os_error(e: OSError) -> str:
    code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "?"
    return f"{e.strerror or e} ({code})"


def _file_type(mode: int) -> str:
    for test, name in ((stat_mod.S_ISFIFO, "a FIFO"), (stat_mod.S_ISCHR, "a character device"),
                       (stat_mod.S_ISBLK, "a block device"), (stat_mod.S_ISSOCK, "a socket"),
                       (stat_mod.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return f"file type {stat_mod.S_IFMT(mode):#o}"


def _may_hold_manifests(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink() or entry.is_dir(follow_symlinks=False)
    except OSError:
        return True  # not even its type is known


def _too_big(limit: int) -> str:
    # No size in the text: a file that keeps growing must not change its report at every poll.
    return f"larger than the limit of {limit} bytes (--max-manifest-bytes): not read"


def scan_manifests(directory: Path, max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES) -> Scan:
    """The manifest files under `directory` (names ending in SUFFIXES, no
    hidden names or directories: ConfigMap volumes reach their `..data`
    through links), following links, in a fixed order (names sorted, depth
    first): a directory or file reached twice is taken once, under the
    first path that reaches it. Paths that cannot be taken are in `errors`;
    nothing here raises and nothing is opened but directories."""
    directory = Path(directory)
    scan = Scan()
    try:
        top = os.stat(directory)
    except FileNotFoundError:
        return scan  # no directory (yet): no manifests
    except OSError as e:
        scan.errors[directory] = _os_error(e)
        scan.unlisted.append(directory)
        return scan
    if not stat_mod.S_ISDIR(top.st_mode):
        return scan
    dirs_seen = {(top.st_dev, top.st_ino)}
    files_seen: set[tuple[int, int]] = set()
    stack = [directory]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed meanwhile: what it held is gone
        except OSError as e:
            scan.errors[here] = _os_error(e)
            scan.unlisted.append(here)
            continue
        scan.listed.append(here)
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            path = here / name
            manifest = name.endswith(SUFFIXES)
            try:
                st = os.stat(entry.path)
            except FileNotFoundError:
                if entry.is_symlink():  # a link to nothing (a lost mount, a ConfigMap key being removed)
                    scan.errors[path] = "a symbolic link to nothing (dangling)"
                continue  # else: removed meanwhile
            except OSError as e:
                # A directory, or a link that cannot be followed (it may stand for
                # one), may hold manifests; another file that is no manifest is no matter.
                if manifest or _may_hold_manifests(entry):
                    scan.errors[path] = _os_error(e)
                continue
            mode = st.st_mode
            if stat_mod.S_ISDIR(mode):
                ident = (st.st_dev, st.st_ino)
                if ident not in dirs_seen:  # else: reached before (a link back up, or twice)
                    dirs_seen.add(ident)
                    subdirs.append(path)
            elif not manifest:
                continue
            elif not stat_mod.S_ISREG(mode):
                scan.errors[path] = f"not a regular file ({_file_type(mode)}): never opened"
            elif (st.st_dev, st.st_ino) not in files_seen:  # else: read under the first path reaching it
                files_seen.add((st.st_dev, st.st_ino))
                if st.st_size > max_manifest_bytes:
                    scan.errors[path] = _too_big(max_manifest_bytes)
                else:
                    scan.files[path] = _key_of(st)
        stack.extend(reversed(subdirs))
    return scan


def read_manifest_bytes(path: Path, max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES) -> bytes:
    """A manifest file's bytes. Opened non-blocking and checked to be a
    regular file (a FIFO swapped in after the scan neither blocks nor is
    read); never more than `max_manifest_bytes` + 1 bytes are read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise _Unreadable(f"not a regular file ({_file_type(st.st_mode)}): not read")
        if st.st_size > max_manifest_bytes:
            raise _Unreadable(_too_big(max_manifest_bytes))
        chunks = []
        left = max_manifest_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_manifest_bytes:  # grew since the stat
            raise _Unreadable(_too_big(max_manifest_bytes))
        return data
    finally:
        os.close(fd)


def content_revision(files: dict[str, str]) -> str:
    """Revision of a directory's content in force: a digest over (relative
    path, content digest) in path order. Anyone holding the same files can
    compute it, so a writer can wait until the daemon has applied what it
    wrote."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + files[rel].encode() + b"\n")
    return "sha256:" + h.hexdigest()[:16]


def directory_revision(directory: Path, max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES) -> str:
    """content_revision of the manifests in `directory` as they are now: the
    files DirectorySource reads (the same walk, links and all), each under
    the same path."""
    directory = Path(directory)
    files = {}
    for path in scan_manifests(directory, max_manifest_bytes).files:
        try:
            data = read_manifest_bytes(path, max_manifest_bytes)
        except (OSError, _Unreadable):
            continue  # gone or changed meanwhile: the source cannot have it in force either
        files[str(path.relative_to(directory))] = hashlib.sha256(data).hexdigest()
    return content_revision(files)


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """All objects in a YAML/JSON text, `List` kinds flattened. Raises
    ValueError when the text does not parse, nests deeper than
    MAX_YAML_DEPTH or expands through aliases to more nodes than its size
    allows.

    A text that is one JSON document (`kubectl get -o json`) is parsed as
    JSON: twenty times faster than YAML, even libyaml's (10k policies and
    10k pods: 0.5 s against 10.5 s). The same bounds hold, counted as
    the YAML walk counts them. Whatever JSON refuses (YAML flow style such
    as `{a: 1}`, several documents, NaN, nesting too deep for its parser)
    is read as YAML, as before."""
    if _JSON_START.match(text):
        doc = _parse_json(text)
        if doc is not _NOT_JSON:
            _check_json_depth(doc)
            return list(_flatten(doc))
    return _parse_yaml(text)


_JSON_START = re.compile(r"[ \t\r\n]*[\[{]")
_NOT_JSON = object()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # YAML reads NaN and Infinity as strings


def _parse_json(text: str) -> Any:
    """The JSON document text holds, or _NOT_JSON."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _check_json_depth(root: Any) -> None:
    """MAX_YAML_DEPTH on a parsed JSON document, counted as _check_document
    counts YAML nodes (a mapping's keys and every scalar are nodes one
    level below their container), so a text nests too deep read either way."""
    level = [root]
    depth = 0
    while level:
        depth += 1
        below: list[Any] = []
        leaves = False
        for node in level:
            kind = type(node)
            if kind is dict:
                children: Iterable[Any] = node.values()
                leaves = leaves or bool(node)  # its keys
            elif kind is list:
                children = node
            else:
                continue
            for child in children:
                if type(child) is dict or type(child) is list:
                    below.append(child)
                else:
                    leaves = True
        if depth + (1 if leaves and not below else 0) > MAX_YAML_DEPTH:
            raise ValueError(f"YAML nested more than {MAX_YAML_DEPTH} levels deep: not read")
        level = below


def _parse_yaml(text: str) -> list[dict[str, Any]]:
    budget = limit = YAML_NODES_BASE + YAML_NODES_PER_BYTE * len(text)
    out: list[dict[str, Any]] = []
    loader = _YAML_LOADER(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            budget = _check_document(node, budget, limit)
            out.extend(_flatten(loader.construct_document(node)))
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML/JSON: {e}") from e
    except RecursionError:  # the pure-Python loader composes recursively
        raise ValueError("not valid YAML/JSON: nested too deeply") from None
    finally:
        loader.dispose()
    return out


def _check_document(root: Any, budget: int, limit: int) -> int:
    """Walk a document's node graph level by level as the constructor will
    see it (aliases expanded, so a recursive alias never ends): refuse it
    past MAX_YAML_DEPTH levels or once more than `budget` nodes are seen.
    Returns the budget left. The walk itself costs at most `budget` steps."""
    level = [root]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"YAML nested more than {MAX_YAML_DEPTH} levels deep: not read")
        budget -= len(level)
        if budget < 0:
            raise ValueError(f"YAML expands through aliases to more than {limit} nodes "
                             f"({YAML_NODES_BASE} + {YAML_NODES_PER_BYTE} per byte): not read")
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind is MappingNode:
                for key, value in node.value:
                    below.append(key)
                    below.append(value)
            elif kind is SequenceNode:
                below.extend(node.value)
        level = below
    return budget


def _flatten(doc: Any) -> Iterable[dict[str, Any]]:
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ValueError(f"a document is a {type(doc).__name__}, not an object")
    kind = doc.get("kind", "")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        items: list[Any] = []
        for item in doc["items"]:
            items.extend(_flatten(item))
        return items
    return [doc]


def parse_manifest_bytes(data: bytes) -> list[ParsedEntry]:
    """A manifest file's objects, parsed for the store. Raises _Unreadable
    (or ValueError) when the file as a whole cannot be used."""
    if not data:
        raise _Unreadable("empty file (0 bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Unreadable(f"not UTF-8 text (byte {e.start}: {e.reason})") from None
    out = []
    for i, raw in enumerate(parse_manifests(text)):
        try:
            out.append(parse_for_store(raw))
        except Exception as e:  # an object the model cannot even name (metadata not a mapping, ...)
            raise _Unreadable(f"object {i + 1} cannot be read ({type(e).__name__}: {e})") from None
    return out


def _stat_key(path: Path) -> StatKey | None:
    try:
        return _key_of(os.stat(path))
    except OSError:
        return None


class _NoWatch:
    """Polling only (watch=False)."""

    active = False

    def finished(self) -> set[Path]:
        return set()

    def writing(self) -> set[Path]:
        return set()

    def watch(self, _directories: Iterable[Path]) -> None:
        pass

    def wait(self, _timeout: float) -> bool:
        return False

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


_NO_WATCH = _NoWatch()


class DirectorySource:
    def __init__(self, directory: Path, store: ClusterStore, interval: float = DEFAULT_POLL_INTERVAL_S,
                 max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES, watch: bool = True) -> None:
        if max_manifest_bytes <= 0:
            raise ValueError("max_manifest_bytes must be positive")
        self.directory = Path(directory)
        self.store = store
        self.interval = max(interval, MIN_INTERVAL_S)
        self.max_manifest_bytes = max_manifest_bytes
        self._files: dict[Path, _FileState] = {}
        # Changed files: the stat key seen, and the regular poll that first saw it.
        self._pending: dict[Path, tuple[StatKey, int]] = {}
        self._regular_polls = 0  # polls at the interval (not woken early by inotify)
        self._path_errors: dict[Path, tuple[float, str]] = {}  # path -> (since, why)
        self._unlisted: set[Path] = set()  # directories the last scan could not list
        self._published_errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()
        self.poll_failures = 0  # polls that raised (each is a bug: they are logged, rate-limited)
        # inotify (watch=True): made by start() for the polling thread's
        # waits, closed by stop(); poll() called directly runs without.
        self._use_watch = watch
        self._watch: DirectoryWatch | _NoWatch = _NO_WATCH
        self._listed: list[Path] = []  # the directories the last scan listed

    def start(self) -> None:
        if self._use_watch:
            self._watch = DirectoryWatch()
            self._watch.watch(self._listed)
        self._thread = threading.Thread(target=self._run, name="directory-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._watch.interrupt()
        if self._thread:
            self._thread.join(timeout=2)
        self._watch.close()
        self._watch = _NO_WATCH

    def _run(self) -> None:
        last_logged: float | None = None
        unlogged = 0
        # The wait comes first in every turn: whatever a poll does or raises,
        # the next one is `interval` later, or sooner when inotify reports a
        # change (but never within MIN_INTERVAL_S of the last: a writer
        # touching files in a loop does not make the poll spin).
        while True:
            woken = False
            if self._watch.active:
                woken = self._watch.wait(self.interval)
                if woken:
                    self._stop.wait(MIN_INTERVAL_S)
                if self._stop.is_set():
                    break
            elif self._stop.wait(self.interval):
                break
            try:
                self.poll(woken)
            except Exception:  # keep polling whatever one pass hit
                self.poll_failures += 1
                now = time.monotonic()
                if last_logged is None or now - last_logged >= POLL_FAILURE_LOG_EVERY_S:
                    log.exception("directory source: poll of %s failed (%d more failures not logged since "
                                  "the last report); polling goes on every %.3g s",
                                  self.directory, unlogged, self.interval)
                    last_logged, unlogged = now, 0
                else:
                    unlogged += 1

    def poll(self, woken: bool = False) -> bool:
        """One pass; returns whether the store was updated. woken: inotify
        woke it before the interval was up."""
        now = time.monotonic()
        if not woken:
            self._regular_polls += 1
        finished = self._watch.finished()  # before the scan: a later close is seen by the next poll
        writing = self._watch.writing()
        open_hold = max(1, math.ceil(OPEN_FILE_HOLD_S / self.interval))
        scan = scan_manifests(self.directory, self.max_manifest_bytes)
        self._listed = scan.listed
        self._watch.watch(scan.listed)
        self._path_errors = {path: (self._path_errors.get(path, (now,))[0], why)
                             for path, why in scan.errors.items()}
        self._unlisted = set(scan.unlisted)
        changed = False
        for path in [p for p in self._files if p not in scan.files]:
            if path in scan.errors or scan.hides(path):
                continue  # there but unreadable now: its last content stays in force
            del self._files[path]
            changed = True
        pending: dict[Path, tuple[StatKey, int]] = {}
        for path, key in scan.files.items():
            known = self._files.get(path)
            if known is not None and known.stat == key:
                continue  # unchanged since it was last read (parsed or not): not read again
            seen = self._pending.get(path)
            if seen is None or seen[0] != key:
                seen = (key, self._regular_polls)  # changed since the last poll
            # Regular polls it has held still across (a poll inotify woke
            # early does not count: a file must hold still for an interval);
            # one its writer has not closed since writing needs more: a
            # pause mid-file, most likely.
            still = self._regular_polls - seen[1] >= (open_hold if path in writing else 1)
            if path in writing:
                finished.discard(path)  # closed, then written to again: not finished
            if not still and path not in finished:
                pending[path] = seen  # wait
                continue
            early = not still
            saved = dataclasses.replace(known) if early and known is not None else None
            read = self._read(path, key, known, now)
            if early and _stat_key(path) != key:
                # Written again since its writer's close: what was read may
                # be a part. Undone; it waits to hold still like any change.
                if saved is None:
                    self._files.pop(path, None)
                else:
                    self._files[path] = saved
                pending[path] = (key, self._regular_polls)
                continue
            changed |= read
        self._pending = pending
        errors = self._errors(now)
        texts = [str(e) for e in errors]
        if texts != self._published_errors:
            for text in sorted(set(texts) - set(self._published_errors)):
                log.warning("directory source: %s", text)
            changed = True
        if not self.synced.is_set():
            if self._pending:
                return False  # first read not complete: publish nothing partial
            changed = True
        if changed:
            self._publish(errors)
            self._published_errors = texts
        self.synced.set()
        return changed

    def _read(self, path: Path, key: StatKey, known: _FileState | None, now: float) -> bool:
        """Read and parse one file; returns whether the content in force changed."""
        try:
            data = read_manifest_bytes(path, self.max_manifest_bytes)
            objects = parse_manifest_bytes(data)
        except OSError as e:
            reason = _os_error(e)
        except (_Unreadable, ValueError) as e:
            reason = str(e)
        except Exception as e:  # a bug somewhere below: this file is reported, the others go on
            log.exception("directory source: reading %s failed", path)
            reason = f"cannot be read ({type(e).__name__}: {e})"
        else:
            self._files[path] = _FileState(key, objects, hashlib.sha256(data).hexdigest())
            return True
        state = known or _FileState(key, [])
        state.stat = key
        if state.broken_since is None:
            state.broken_since = now
        state.reason = reason
        self._files[path] = state
        return False

    def _errors(self, now: float) -> list[InvalidObjectError]:
        """Every path that has stayed unreadable for BROKEN_REPORT_AFTER_S."""
        reasons: dict[Path, tuple[float, str]] = {
            path: (st.broken_since, st.reason) for path, st in self._files.items()
            if st.reason is not None and st.broken_since is not None}
        reasons.update(self._path_errors)
        errors = []
        for path in sorted(reasons):
            since, why = reasons[path]
            if now - since < BROKEN_REPORT_AFTER_S:
                continue
            st = self._files.get(path)
            if st is not None:
                kept = "its last readable content stays in force" if st.digest else "nothing from it is in force"
            elif any(path in p.parents for p in self._files):
                kept = "what was last read under it stays in force"
            else:
                kept = "nothing under it is in force" if path in self._unlisted else "nothing from it is in force"
            errors.append(InvalidObjectError("File", None, self._rel(path), f"{path.name}: {why} ({kept})"))
        return errors

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.directory))

    def _publish(self, file_errors: list[InvalidObjectError]) -> None:
        objects: list[ParsedEntry] = []
        where: dict[tuple[int, str], list[Path]] = {}
        for path in sorted(self._files):
            for entry in self._files[path].objects:
                objects.append(entry)
                where.setdefault((entry[1], entry[2]), []).append(path)
        duplicates = []
        last_of = {(entry[1], entry[2]): entry[0] for entry in objects}
        for slot_key, paths in where.items():
            if len(paths) > 1:
                duplicates.append(self._duplicate_error(last_of[slot_key], paths))
        revision = content_revision({self._rel(p): st.digest for p, st in self._files.items()})
        self.store.replace_parsed(objects, file_errors + duplicates, source_revision=revision)

    def _duplicate_error(self, obj: Any, paths: list[Path]) -> InvalidObjectError:
        """The same object (kind, namespace, name) more than once: the last
        one in path and document order is in force, as `kubectl apply -f`
        of the directory would leave it."""
        kind = obj.kind if isinstance(obj, InvalidObjectError) else kind_of(obj)
        rels = [self._rel(p) for p in paths]
        if len(set(rels)) == 1:
            where = f"{len(rels)} times in {rels[0]}; the last one is in force"
        else:
            where = f"{len(rels)} times, in {', '.join(rels)}; the one in {rels[-1]} (the last) is in force"
        return InvalidObjectError(kind, getattr(obj, "namespace", None), obj.name, f"defined {where}")
