"""inotify speeds the directory source up and changes nothing else: a file
renamed into place or closed by its writer is read at once (long before
the poll interval), a file still being written waits to hold still for an
interval as without inotify, and polling alone (watch=False, or where
inotify does not work) sees the same changes at its own pace."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from enforcer.model.state import ClusterStore
from enforcer.sources.directory import DirectorySource
from enforcer.sources.inotify import DirectoryWatch

LONG = 1.5  # the poll interval: whatever is seen within 1 s came through inotify


def pol(name: str, gen: int = 0) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"g": str(gen)}}}}


def seen_within(pred, timeout: float) -> float | None:  # noqa: ANN001
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.005)
    return None


def started(tmp_path: Path, watch: bool = True) -> tuple[DirectorySource, ClusterStore]:
    store = ClusterStore()
    (tmp_path / "ns.json").write_text(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))
    src = DirectorySource(tmp_path, store, interval=LONG, watch=watch)
    src.poll()
    src.poll()  # the first read (and the watches) in place
    assert src.synced.is_set() and "x" in store.snapshot().namespaces
    src.start()
    return src, store


def write_policies(f, numbers: range) -> None:  # noqa: ANN001
    """Policies m<number> into an open manifest, flushed (the file stays open)."""
    for i in numbers:
        f.write(json.dumps(pol(f"m{i}")) + "\n---\n")
    f.flush()


def selector(store: ClusterStore, key: str) -> str | None:
    p = store.snapshot().policies.get(key)
    return str(p.pod_selector) if p is not None else None


def test_a_file_renamed_into_place_is_read_at_once(tmp_path: Path) -> None:
    src, store = started(tmp_path)
    try:
        (tmp_path / "sub").mkdir()
        time.sleep(0.05)
        tmp = tmp_path / ".p.json.tmp"  # hidden: never read itself
        tmp.write_text(json.dumps(pol("p")))
        os.replace(tmp, tmp_path / "p.json")
        assert seen_within(lambda: "x/p" in store.snapshot().policies, 1.0) is not None
        # In a directory that appeared after the start too, once a poll has watched it.
        (tmp_path / "sub" / "q.json").write_text(json.dumps(pol("q")))  # written and closed
        assert seen_within(lambda: "x/q" in store.snapshot().policies, LONG + 1.0) is not None
        (tmp_path / "sub" / "q.json").write_text(json.dumps(pol("q", 1)))
        assert seen_within(lambda: selector(store, "x/q") == "g=1", 1.0) is not None
    finally:
        src.stop()


def test_without_inotify_the_same_change_waits_for_the_polls(tmp_path: Path) -> None:
    src, store = started(tmp_path, watch=False)
    try:
        (tmp_path / "p.json").write_text(json.dumps(pol("p")))
        assert seen_within(lambda: "x/p" in store.snapshot().policies, 1.0) is None
        assert seen_within(lambda: "x/p" in store.snapshot().policies, 2 * LONG + 1.0) is not None
    finally:
        src.stop()


def test_a_file_still_being_written_waits_to_hold_still(tmp_path: Path) -> None:
    """The writer keeps the file open and pauses mid-write while another
    file's events wake the poll again and again: what it left so far is
    not read (it would be a shorter manifest), until the writer closes."""
    src, store = started(tmp_path)
    path = tmp_path / "many.yaml"
    try:
        with path.open("w") as f:
            write_policies(f, range(5))
            for k in range(20):  # another file, changed and closed: wakes the poll each time
                (tmp_path / "other.json").write_text(json.dumps(pol("other", k)))
                time.sleep(0.02)
            assert not any(k.startswith("x/m") for k in store.snapshot().policies)
            write_policies(f, range(5, 10))
        assert seen_within(lambda: sum(k.startswith("x/m") for k in store.snapshot().policies) == 10, 1.0)
    finally:
        src.stop()


def test_the_watch_names_finished_files_and_drops_gone_directories(tmp_path: Path) -> None:
    watch = DirectoryWatch()
    try:
        assert watch.active
        (tmp_path / "a").mkdir()
        watch.watch([tmp_path, tmp_path / "a"])
        (tmp_path / "a" / "f.yaml").write_text("x")
        with (tmp_path / "g.yaml").open("w") as f:
            f.write("partial")  # not closed yet: not finished
            assert watch.wait(1.0)
            assert watch.finished() == {tmp_path / "a" / "f.yaml"}
        assert watch.finished() == {tmp_path / "g.yaml"}
        os.rename(tmp_path / "g.yaml", tmp_path / "a" / "h.yaml")
        assert watch.finished() == {tmp_path / "a" / "h.yaml"}
        watch.watch([tmp_path])  # the scan no longer lists a: no more events from it
        (tmp_path / "a" / "i.yaml").write_text("x")
        watch.wait(0.1)  # (the kernel says the removed watch is gone: IN_IGNORED)
        assert watch.finished() == set()
        assert not watch.wait(0.05)  # nothing pending now: wait times out
    finally:
        watch.close()
    assert not watch.active


def test_a_writer_pausing_longer_than_the_poll_is_not_read_short(tmp_path: Path) -> None:
    """With a short interval, a writer that pauses mid-file for several
    polls (a loaded node) leaves a file that holds still: inotify says it
    was written to and not closed, so it is not read until it has held
    still for OPEN_FILE_HOLD_S. Polling alone would read the half."""
    store = ClusterStore()
    counts: set[int] = set()
    store.on_change = lambda: counts.add(sum(k.startswith("x/m") for k in store.policies))
    src = DirectorySource(tmp_path, store, interval=0.02)
    src.poll()  # listed: start() watches it
    src.start()
    path = tmp_path / "many.yaml"
    try:
        with path.open("w") as f:
            write_policies(f, range(5))
            time.sleep(0.3)  # 15 polls
            write_policies(f, range(5, 10))
        assert seen_within(lambda: sum(k.startswith("x/m") for k in store.snapshot().policies) == 10, 1.0)
    finally:
        src.stop()
    assert counts - {0} == {10}, counts


def test_a_file_kept_open_for_good_is_read_once_it_held_still_long(tmp_path: Path) -> None:
    """A writer that never closes its file is not waited for forever."""
    import enforcer.sources.directory as d

    store = ClusterStore()
    src = DirectorySource(tmp_path, store, interval=0.02)
    src.poll()  # listed: start() watches it
    src.start()
    try:
        with (tmp_path / "open.yaml").open("w") as f:
            f.write(json.dumps(pol("kept-open")))
            f.flush()
            took = seen_within(lambda: "x/kept-open" in store.snapshot().policies, d.OPEN_FILE_HOLD_S + 2.0)
            assert took is not None and took >= d.OPEN_FILE_HOLD_S * 0.9, took
    finally:
        src.stop()
