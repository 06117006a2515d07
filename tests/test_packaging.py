"""The package build generates the gRPC code from proto/ and ships the BPF
sources: a wheel built from this tree holds both (nothing generated is
committed: enforcer/v1 is gitignored build output). What only the tests use
(tests/support/) is not in it; the demo lab (enforcer/lab/) is."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Moved out of enforcer/lab/ into tests/support/: the product never imports them.
TEST_ONLY = ("multinode", "kubeproxy", "packet_verdict", "session", "world")
# What `enforcer lab` and `enforcer demo` run on.
DEMO_LAB = ("cluster", "demo", "loader", "netns", "probe", "serve", "topology")


def source_tree(dest: Path) -> Path:
    """A copy of the checkout's files (tracked, or new and not ignored), as a
    fresh clone would have them: an in-tree build would also pack whatever a
    past build left in build/ (modules since moved away, say)."""
    # safe.directory: the checkout may belong to another user (root's, read by nobody in make unit).
    listed = subprocess.run(["git", "-c", f"safe.directory={ROOT}", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_wheel_has_generated_grpc_code_and_bpf_sources_and_no_test_support(tmp_path):
    tree = source_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(tree)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("enforcer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"enforcer/v1/enforcer_pb2.py", "enforcer/v1/enforcer_pb2_grpc.py"} <= names
    for src in (ROOT / "bpf").rglob("*"):
        if src.is_file():
            assert f"enforcer/_bpf/{src.relative_to(ROOT / 'bpf')}" in names
    assert {f"enforcer/lab/{m}.py" for m in DEMO_LAB} <= names
    for m in TEST_ONLY:
        assert not [n for n in names if n.endswith(f"/{m}.py")], m
    assert not [n for n in names if n.startswith("tests/") or "/support/" in n]


def test_generated_code_is_not_tracked():
    listed = subprocess.run(["git", "-c", f"safe.directory={ROOT}", "ls-files", "enforcer/v1"], cwd=ROOT,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == ""
