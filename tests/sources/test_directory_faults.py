"""Directory source against hostile trees: one bad path costs one error
(named, in the store's errors like any invalid object), never the scan, the
other files, or a hot loop. Scans are counted in reads, never timed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import enforcer.sources.directory as d
from enforcer.model.state import ClusterStore
from enforcer.sources.directory import DirectorySource, directory_revision, parse_manifests

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
ROOT = Path(__file__).resolve().parents[2]


def pol(name: str, app: str = "a") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"app": app}}}}


def write(path: Path, *objs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n---\n".join(json.dumps(o) for o in objs))


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
# Each level of Lists multiplies what _flatten would hand the store by 9.
LIST_BOMB = ("l0: &l0 {kind: List, items: [" + ",".join([json.dumps(pol("boom"))] * 9) + "]}\n" + "".join(
    f"l{i}: &l{i} {{kind: List, items: [" + ",".join([f"*l{i - 1}"] * 9) + "]}\n" for i in range(1, 9))
    + "kind: List\nitems: [*l8]\n")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Every manifest read by the source (or directory_revision), by path."""
    counts: Counter = Counter()
    real = d.read_manifest_bytes

    def counting(path: Path, limit: int = d.DEFAULT_MAX_MANIFEST_BYTES) -> bytes:
        counts[str(path)] += 1
        return real(path, limit)

    monkeypatch.setattr(d, "read_manifest_bytes", counting)
    monkeypatch.setattr(d, "BROKEN_REPORT_AFTER_S", 0.0)
    return counts


def synced_source(directory: Path, **kw) -> tuple[DirectorySource, ClusterStore]:
    store = ClusterStore()
    src = DirectorySource(directory, store, **kw)
    for _ in range(2):  # the first poll sees files, the second reads those that held still
        src.poll()
    assert src.synced.is_set() and store.ready.is_set()
    return src, store


def file_errors(store: ClusterStore) -> dict[str, str]:
    return {e.name: e.reason for e in store.snapshot().errors if e.kind == "File"}


# --- trees: each builds its bad paths beside good.yaml and returns
# {relative path: what its error says} for the paths that must be reported.

def link_to_parent(t: Path) -> dict[str, str]:
    write(t / "sub" / "inner.yaml", pol("inner"))
    (t / "sub" / "up").symlink_to("..")
    (t / "sub" / "deeper").mkdir()
    (t / "sub" / "deeper" / "top").symlink_to("../..")
    return {}


def link_to_self(t: Path) -> dict[str, str]:
    write(t / "sub" / "inner.yaml", pol("inner"))
    (t / "sub" / "me").symlink_to(".")
    (t / "me.yaml").symlink_to(".")  # a directory link with a manifest's name
    return {}


def file_linked_twice(t: Path) -> dict[str, str]:
    write(t / "sub" / "inner.yaml", pol("inner"))
    (t / "again.yaml").symlink_to("good.yaml")
    (t / "zz-alias").symlink_to("sub")  # the directory reached twice: walked once
    os.link(t / "sub" / "inner.yaml", t / "hardlink.yaml")
    return {}


def link_loop(t: Path) -> dict[str, str]:
    (t / "a.yaml").symlink_to("b.yaml")
    (t / "b.yaml").symlink_to("a.yaml")
    (t / "loopdir").symlink_to("loopdir")
    return {"a.yaml": "ELOOP", "b.yaml": "ELOOP", "loopdir": "ELOOP"}


def dangling(t: Path) -> dict[str, str]:
    (t / "gone.yaml").symlink_to("nowhere.yaml")
    (t / "mount").symlink_to("/nonexistent-enforcer-mount")
    return {"gone.yaml": "dangling", "mount": "dangling"}


def fifo(t: Path) -> dict[str, str]:
    os.mkfifo(t / "pipe.yaml")
    return {"pipe.yaml": "not a regular file (a FIFO): never opened"}


def device(t: Path) -> dict[str, str]:
    (t / "zero.yaml").symlink_to("/dev/zero")  # endless if it were read
    return {"zero.yaml": "not a regular file (a character device)"}


def dir_named_yaml(t: Path) -> dict[str, str]:
    write(t / "x.yaml" / "inner.yaml", pol("inner"))  # a directory: walked, not read as a file
    return {}


def long_names(t: Path) -> dict[str, str]:
    write(t / ("n" * 250 + ".yaml"), pol("inner"))  # NAME_MAX is 255: a legal name, read
    # A path longer than PATH_MAX (4096), built relative to directory fds.
    fd = os.open(t, os.O_RDONLY)
    depth = 0
    try:
        while len(str(t)) + depth * 251 < 4200:
            os.mkdir("d" * 250, dir_fd=fd)
            nfd = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        wfd = os.open("deep.yaml", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, json.dumps(pol("deep")).encode())
        os.close(wfd)
    finally:
        os.close(fd)
    # The first directory whose path is too long to name is reported.
    first_too_long = next(i for i in range(1, depth + 1) if len(str(t)) + i * 251 >= 4096)
    return {"/".join(["d" * 250] * first_too_long): "ENAMETOOLONG"}


def huge(t: Path) -> dict[str, str]:
    with (t / "huge.yaml").open("wb") as f:
        f.write(json.dumps(pol("huge")).encode())
        f.truncate(50 * 1024 * 1024)  # 50 MiB (sparse): over the 8 MiB limit, never read
    return {"huge.yaml": "larger than the limit of 8388608 bytes (--max-manifest-bytes): not read"}


def not_utf8(t: Path) -> dict[str, str]:
    (t / "latin1.yaml").write_bytes(b"kind: Namespace\nmetadata: {name: caf\xe9}\n")
    return {"latin1.yaml": "not UTF-8 text (byte 36: invalid continuation byte)"}


def alias_bomb(t: Path) -> dict[str, str]:
    (t / "lol.yaml").write_text(BOMB)
    (t / "lists.yaml").write_text(LIST_BOMB)
    (t / "recursive.yaml").write_text("&a [*a]\n")
    return {"lol.yaml": "expands through aliases to more than", "lists.yaml": "expands through aliases",
            "recursive.yaml": "nested more than 100 levels deep"}


def deep_nesting(t: Path) -> dict[str, str]:
    (t / "deep.yaml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    (t / "deeper.json").write_text("[" * 100_000 + "]" * 100_000)
    block = "".join(" " * i + "k:\n" for i in range(300))
    (t / "block.yaml").write_text(block)
    return {"deep.yaml": "nested more than 100 levels deep", "deeper.json": "not valid YAML/JSON",
            "block.yaml": "nested more than 100 levels deep"}


def empty(t: Path) -> dict[str, str]:
    (t / "empty.yaml").write_bytes(b"")
    (t / "comments.yaml").write_text("# nothing here yet\n---\n")  # no objects, but no error either
    return {"empty.yaml": "empty file (0 bytes) (nothing from it is in force)"}


def not_objects(t: Path) -> dict[str, str]:
    (t / "list.yaml").write_text("- a\n- b\n")
    (t / "meta.yaml").write_text(json.dumps({"kind": "Namespace", "metadata": "x"}))
    (t / "syntax.yaml").write_text("kind: [unclosed\n")
    return {"list.yaml": "a document is a list, not an object",
            "meta.yaml": "object 1 cannot be read (AttributeError",
            "syntax.yaml": "not valid YAML/JSON"}


TREES: dict[str, Callable[[Path], dict[str, str]]] = {f.__name__: f for f in (
    link_to_parent, link_to_self, file_linked_twice, link_loop, dangling, fifo, device, dir_named_yaml,
    long_names, huge, not_utf8, alias_bomb, deep_nesting, empty, not_objects)}
# Which good policies each tree holds besides good.yaml's.
INNER = {"link_to_parent": {"x/inner"}, "link_to_self": {"x/inner"}, "file_linked_twice": {"x/inner"},
         "dir_named_yaml": {"x/inner"}, "long_names": {"x/inner"}}


@pytest.mark.parametrize("tree", TREES)
def test_bad_paths_are_named_and_the_rest_is_read(tmp_path: Path, reads: Counter, tree: str):
    write(tmp_path / "good.yaml", NS, pol("good"))
    try:
        expected = TREES[tree](tmp_path)
        src, store = synced_source(tmp_path)
        snap = store.snapshot()
        assert set(snap.policies) == {"x/good"} | INNER.get(tree, set())
        assert set(snap.namespaces) == {"x"}
        errors = file_errors(store)
        assert set(errors) == set(expected), errors
        for rel, text in expected.items():
            assert text in errors[rel], (rel, errors[rel])
            assert errors[rel].startswith(Path(rel).name + ": ")
        # Only File errors: a file or directory reached twice is no duplicate object.
        assert len(snap.errors) == len(errors), snap.errors
        # Every file is read at most once, whatever links reach it; nothing
        # that is no regular file, nor anything too big, is ever opened.
        assert all(n == 1 for n in reads.values()), reads
        assert not any(Path(p).name in ("pipe.yaml", "zero.yaml", "huge.yaml") for p in reads)
        first = Counter(reads)
        for _ in range(5):
            assert not src.poll()  # nothing changed: no re-read, no new publish
        assert reads == first
        assert store.snapshot().revision == snap.revision
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # the PATH_MAX tree needs rmtree's fd walk


def test_revision_agrees_with_links_and_unreadable_paths(tmp_path: Path, reads: Counter):
    """directory_revision makes the same walk as the source: links, a
    directory reached twice, a file reached twice, and paths that cannot be
    read leave both the same."""
    write(tmp_path / "good.yaml", NS, pol("good"))
    for build in (link_to_parent, link_to_self, file_linked_twice, link_loop, dangling, fifo, device, huge,
                  dir_named_yaml):
        sub = tmp_path / build.__name__
        sub.mkdir()
        write(sub / "good.yaml", pol(f"good-{build.__name__.replace('_', '-')}"))
        build(sub)
    _, store = synced_source(tmp_path)
    assert {f"x/good-{n.replace('_', '-')}" for n in TREES} & set(store.snapshot().policies) == {
        "x/good-link-to-parent", "x/good-link-to-self", "x/good-file-linked-twice", "x/good-link-loop",
        "x/good-dangling", "x/good-fifo", "x/good-device", "x/good-huge", "x/good-dir-named-yaml"}
    assert store.snapshot().source_revision == directory_revision(tmp_path)
    # A ConfigMap volume: keys are links into ..data, a link to a hidden, timestamped directory.
    cm = tmp_path / "cm"
    write(cm / "..2024_01" / "p.yaml", pol("cm-1"))
    (cm / "..data").symlink_to("..2024_01")
    (cm / "p.yaml").symlink_to("..data/p.yaml")
    src = DirectorySource(tmp_path, store)
    for _ in range(2):
        src.poll()
    assert "x/cm-1" in store.snapshot().policies
    assert store.snapshot().source_revision == directory_revision(tmp_path)
    write(cm / "..2024_02" / "p.yaml", pol("cm-2"))  # the kubelet's atomic swap
    (cm / "..data_tmp").symlink_to("..2024_02")
    os.rename(cm / "..data_tmp", cm / "..data")
    for _ in range(2):
        src.poll()
    assert "x/cm-2" in store.snapshot().policies and "x/cm-1" not in store.snapshot().policies
    assert store.snapshot().source_revision == directory_revision(tmp_path)


def test_size_limit_is_a_parameter(tmp_path: Path, reads: Counter):
    write(tmp_path / "ns.yaml", NS)
    write(tmp_path / "big.yaml", *[pol(f"p{i}") for i in range(20)])
    size = (tmp_path / "big.yaml").stat().st_size
    _, store = synced_source(tmp_path, max_manifest_bytes=size - 1)
    assert not store.snapshot().policies
    assert file_errors(store) == {"big.yaml": f"big.yaml: larger than the limit of {size - 1} bytes "
                                              "(--max-manifest-bytes): not read (nothing from it is in force)"}
    assert str(tmp_path / "big.yaml") not in reads
    _, store = synced_source(tmp_path, max_manifest_bytes=size)
    assert len(store.snapshot().policies) == 20 and not file_errors(store)
    with pytest.raises(ValueError):
        DirectorySource(tmp_path, ClusterStore(), max_manifest_bytes=0)


def test_file_grown_past_the_limit_keeps_its_last_content(tmp_path: Path, reads: Counter):
    write(tmp_path / "ns.yaml", NS)
    write(tmp_path / "p.yaml", pol("keep"))
    src, store = synced_source(tmp_path, max_manifest_bytes=4096)
    write(tmp_path / "p.yaml", *[pol(f"p{i}") for i in range(100)])
    src.poll()
    assert set(store.snapshot().policies) == {"x/keep"}
    assert file_errors(store)["p.yaml"].endswith("not read (its last readable content stays in force)")
    # Grown between the scan's stat and the read: the read stops at the limit.
    with pytest.raises(d._Unreadable, match="larger than the limit of 100 bytes"):
        d.read_manifest_bytes(tmp_path / "p.yaml", 100)


def test_duplicate_objects_are_reported_and_the_last_is_in_force(tmp_path: Path, reads: Counter):
    write(tmp_path / "a.yaml", NS, pol("twice", "first"), pol("twice", "second"))
    write(tmp_path / "b.yaml", pol("across", "in-b"))
    write(tmp_path / "c.yaml", pol("across", "in-c"), {"kind": "Namespace", "metadata": {"name": "x"}})
    _, store = synced_source(tmp_path)
    snap = store.snapshot()
    assert str(snap.policies["x/twice"].pod_selector) == "app=second"
    assert str(snap.policies["x/across"].pod_selector) == "app=in-c"
    assert sorted(str(e) for e in snap.errors) == [
        "Namespace x: defined 2 times, in a.yaml, c.yaml; the one in c.yaml (the last) is in force",
        "NetworkPolicy x/across: defined 2 times, in b.yaml, c.yaml; the one in c.yaml (the last) is in force",
        "NetworkPolicy x/twice: defined 2 times in a.yaml; the last one is in force",
    ]


def test_wrong_kinds_are_reported_as_unsupported_objects(tmp_path: Path, reads: Counter):
    """As from the API: an object of a kind the enforcer does not read is an
    invalid object named by kind and name; its file's other objects count."""
    write(tmp_path / "mixed.yaml", NS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
          pol("p"), {"apiVersion": "networking.k8s.io/v2", "kind": "NetworkPolicy",
                     "metadata": {"name": "future", "namespace": "x"}})
    _, store = synced_source(tmp_path)
    snap = store.snapshot()
    assert set(snap.policies) == {"x/p"}
    assert sorted(str(e) for e in snap.errors) == ["ConfigMap cm: unsupported kind",
                                                   "NetworkPolicy x/future: unsupported apiVersion "
                                                   "'networking.k8s.io/v2'"]


def test_broken_file_is_not_parsed_again_until_it_changes(tmp_path: Path, reads: Counter, monkeypatch):
    parsed = Counter()
    real = d.parse_manifests
    monkeypatch.setattr(d, "parse_manifests", lambda text: parsed.update([len(text)]) or real(text))
    write(tmp_path / "ns.yaml", NS)
    (tmp_path / "lol.yaml").write_text(BOMB)
    src, store = synced_source(tmp_path)
    for _ in range(10):
        src.poll()
    assert parsed[len(BOMB)] == 1 and reads[str(tmp_path / "lol.yaml")] == 1
    write(tmp_path / "lol.yaml", pol("fixed"))
    for _ in range(2):
        src.poll()
    assert "x/fixed" in store.snapshot().policies and not file_errors(store)


def test_report_waits_until_a_path_stays_broken(tmp_path: Path, reads: Counter, monkeypatch):
    """A link dangling for a moment (a ConfigMap key being removed) is not
    reported; the report comes once it has stayed so BROKEN_REPORT_AFTER_S."""
    clock = [1000.0]
    monkeypatch.setattr(d, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(d, "BROKEN_REPORT_AFTER_S", 2.0)
    write(tmp_path / "ns.yaml", NS)
    (tmp_path / "gone.yaml").symlink_to("nowhere.yaml")
    src, store = synced_source(tmp_path)
    assert not file_errors(store)
    clock[0] += 1.0
    assert not src.poll() and not file_errors(store)
    clock[0] += 1.5
    assert src.poll() and "gone.yaml" in file_errors(store)
    (tmp_path / "gone.yaml").unlink()
    assert src.poll() and not file_errors(store)


def test_file_vanishing_between_scan_and_read(tmp_path: Path, reads: Counter, monkeypatch):
    write(tmp_path / "ns.yaml", NS)
    write(tmp_path / "p.yaml", pol("p"))
    write(tmp_path / "racy.yaml", pol("racy"))
    real = d.read_manifest_bytes

    def remove_first(path: Path, limit: int = d.DEFAULT_MAX_MANIFEST_BYTES) -> bytes:
        if path.name == "racy.yaml":
            path.unlink()
        return real(path, limit)

    monkeypatch.setattr(d, "read_manifest_bytes", remove_first)
    src, store = synced_source(tmp_path)
    assert set(store.snapshot().policies) == {"x/p"}
    src.poll()  # now it is gone from the scan too: nothing to report
    assert set(store.snapshot().policies) == {"x/p"} and not file_errors(store)


def test_unlistable_directory_keeps_what_was_read_under_it(tmp_path: Path, reads: Counter, monkeypatch):
    write(tmp_path / "ns.yaml", NS)
    write(tmp_path / "sub" / "p.yaml", pol("p"))
    src, store = synced_source(tmp_path)
    real = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) == tmp_path / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(d.os, "scandir", scandir)
    src.poll()
    assert set(store.snapshot().policies) == {"x/p"}
    assert file_errors(store) == {"sub": "sub: Permission denied (EACCES) (what was last read under it stays in force)"}
    monkeypatch.setattr(d.os, "scandir", real)
    (tmp_path / "sub" / "p.yaml").unlink()
    src.poll()
    assert not store.snapshot().policies and not file_errors(store)


def test_permission_denied_for_real():
    """EACCES from the kernel: root ignores modes, so the scan runs as
    nobody in a child process (as itself when the suite is not root), on a
    tree with a 000 file and a 000 directory."""
    work = Path(tempfile.mkdtemp(prefix="enforcer-eacces-"))
    try:
        os.chmod(work, 0o755)
        write(work / "ns.yaml", NS)
        write(work / "good.yaml", pol("good"))
        write(work / "secret.yaml", pol("secret"))
        write(work / "closed" / "inner.yaml", pol("inner"))
        for p in (work / "ns.yaml", work / "good.yaml", work / "closed" / "inner.yaml"):
            os.chmod(p, 0o644)
        os.chmod(work / "secret.yaml", 0)
        os.chmod(work / "closed", 0)
        child = (
            "import json, sys\n"
            "import enforcer.sources.directory as d\n"
            "from enforcer.model.state import ClusterStore\n"
            "d.BROKEN_REPORT_AFTER_S = 0.0\n"
            "store = ClusterStore()\n"
            "src = d.DirectorySource(sys.argv[1], store)\n"
            "src.poll(); src.poll()\n"
            "snap = store.snapshot()\n"
            "print(json.dumps({'policies': sorted(snap.policies), 'errors': {e.name: e.reason for e in snap.errors}}))\n")
        as_nobody = {"user": 65534, "group": 65534} if os.geteuid() == 0 else {}
        proc = subprocess.run([sys.executable, "-c", child, str(work)], **as_nobody, cwd="/",
                              env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["policies"] == ["x/good"]
        assert got["errors"] == {
            "closed": "closed: Permission denied (EACCES) (nothing under it is in force)",
            "secret.yaml": "secret.yaml: Permission denied (EACCES) (nothing from it is in force)"}
    finally:
        if (work / "closed").exists():
            os.chmod(work / "closed", 0o755)  # else only root could remove what is in it
        shutil.rmtree(work)


@pytest.mark.parametrize("text,message", [
    (BOMB, "expands through aliases"),
    (LIST_BOMB, "expands through aliases"),
    ("&a [*a]", "nested more than 100 levels deep"),
    ("&a {x: *a}", "nested more than 100 levels deep"),
    ("[" * 101 + "]" * 101, "nested more than 100 levels deep"),
    ("[" * 1000 + "]" * 1000, "nested (more than 100 levels deep|too deeply)"),  # the latter: pure Python's stack
])
@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_parse_manifests_bounds(monkeypatch, text: str, message: str, loader: str):
    if loader == "python":
        monkeypatch.setattr(d, "_YAML_LOADER", yaml.SafeLoader)
    elif d._YAML_LOADER is yaml.SafeLoader:
        pytest.skip("PyYAML is built without libyaml here")
    with pytest.raises(ValueError, match=message):
        parse_manifests(text)


@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_parse_manifests_within_bounds(monkeypatch, loader: str):
    if loader == "python":
        monkeypatch.setattr(d, "_YAML_LOADER", yaml.SafeLoader)
    nested: list = []
    for _ in range(98):
        nested = [nested]
    assert parse_manifests("a: " + "[" * 99 + "]" * 99) == [{"a": nested}]  # 100 levels with the mapping
    with pytest.raises(ValueError, match="nested more than 100 levels deep"):
        parse_manifests("a: " + "[" * 100 + "]" * 100)
    # Aliases are fine while they stay within what the file's size allows.
    assert parse_manifests("a: &a [1, 2, 3]\nb: [*a, *a, *a]\nkind: Namespace\n")[0]["b"] == [[1, 2, 3]] * 3


def test_deep_text_never_raises_recursion_error(monkeypatch):
    monkeypatch.setattr(d, "_YAML_LOADER", yaml.SafeLoader)  # composes recursively
    with pytest.raises(ValueError, match="not valid YAML/JSON: nested too deeply"):
        parse_manifests("[" * 50_000 + "]" * 50_000)


class StopAfter(threading.Event):
    """A stop event whose wait() records its timeout and stops the loop after n waits."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return len(self.timeouts) > self.n


def test_failing_poll_keeps_its_interval_and_is_logged_once(tmp_path: Path, monkeypatch, caplog):
    src = DirectorySource(tmp_path, ClusterStore(), interval=0.25, watch=False)  # the interval alone paces it
    calls = []

    def broken_poll(woken: bool = False) -> bool:
        calls.append(len(src._stop.timeouts))  # type: ignore[attr-defined]
        raise RuntimeError("a bug in one scan")

    monkeypatch.setattr(src, "poll", broken_poll)
    src._stop = StopAfter(20)
    with caplog.at_level(logging.ERROR, logger="enforcer.sources.directory"):
        src._run()
    # Every poll came after a full interval's wait, never back to back.
    assert src._stop.timeouts == [0.25] * 21 and calls == list(range(1, 21))
    assert src.poll_failures == 20
    (record,) = caplog.records  # logged once, with its traceback
    assert "poll of" in record.getMessage() and record.exc_info and "a bug in one scan" in str(record.exc_info[1])


def test_interval_has_a_floor(tmp_path: Path):
    assert DirectorySource(tmp_path, ClusterStore(), interval=0).interval == d.MIN_INTERVAL_S


def test_missing_directory_is_empty_and_synced(tmp_path: Path):
    _, store = synced_source(tmp_path / "not-there")
    assert not store.snapshot().policies and not store.snapshot().errors


def test_cli_flag(tmp_path: Path):
    from enforcer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "--node", "n", "--source", str(tmp_path), "--max-manifest-bytes", "1000"])
    assert args.max_manifest_bytes == 1000
    assert parser.parse_args(["run", "--node", "n"]).max_manifest_bytes is None  # the source's default
    for bad in ("0", "-1", "8MiB"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "--node", "n", "--max-manifest-bytes", bad])


def test_poll_interval_flag(tmp_path: Path):
    from enforcer.cli import build_parser
    from enforcer.sources.directory import DEFAULT_POLL_INTERVAL_S, MIN_INTERVAL_S, DirectorySource

    parser = build_parser()
    args = parser.parse_args(["run", "--node", "n", "--source", str(tmp_path), "--poll-interval", "0.02"])
    assert args.poll_interval == 0.02
    assert parser.parse_args(["run", "--node", "n"]).poll_interval is None  # the source's default
    assert DirectorySource(tmp_path, ClusterStore()).interval == DEFAULT_POLL_INTERVAL_S == 0.1
    assert DirectorySource(tmp_path, ClusterStore(), interval=0.0001).interval == MIN_INTERVAL_S
    for bad in ("0", "-1", "nan", "inf", "fast"):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", "--node", "n", "--poll-interval", bad])


def _outcome(parse, text: str) -> object:
    try:
        return parse(text)
    except ValueError as e:
        return "nested too deep" if "nested more than" in str(e) else "refused"


def _nest(levels: int, inner: str = "") -> str:
    return "[" * levels + inner + "]" * levels


@pytest.mark.parametrize("text", [
    json.dumps({"kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"}}]}),
    _nest(100), _nest(101), _nest(99, "1"), _nest(100, "1"), _nest(99, "{}"), _nest(99, '{"k": 1}'),
    '{"a": ' + _nest(99) + "}", '{"a": ' + _nest(98, "1") + "}", '{"a": ' + _nest(99, "1") + "}",
    '{"a": {}}', "{}", "[]", '  \n{"a": "\\u00e9", "b": [1, 2.5, true, null]}',
    '{"a": 1, "a": 2}',  # the last of duplicate keys wins both ways
    '{"n": NaN}', "{a: 1}", '{"a": 1}\n---\n{"b": 2}', '{"a": [1, 2}',
])
def test_json_is_read_as_yaml_reads_it(text: str):
    """The JSON fast path gives what the YAML reading gives: the same
    objects, the same depth bound (counted the same way), and what JSON
    refuses but YAML reads (flow style, NaN, several documents) still read."""
    assert _outcome(parse_manifests, text) == _outcome(d._parse_yaml, text)


def test_json_path_taken(monkeypatch):
    """A JSON document does not reach the YAML loader at all (that is the speed)."""
    monkeypatch.setattr(d, "_parse_yaml", lambda text: pytest.fail("read as YAML"))
    assert parse_manifests(json.dumps({"kind": "Namespace", "metadata": {"name": "a"}})) == [
        {"kind": "Namespace", "metadata": {"name": "a"}}]
