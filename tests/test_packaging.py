"""The package build generates the gRPC code from proto/ and ships the BPF
sources: a wheel built from this tree holds both (nothing generated is
committed: enforcer/v1 is gitignored build output)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_generated_grpc_code_and_bpf_sources(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("enforcer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"enforcer/v1/enforcer_pb2.py", "enforcer/v1/enforcer_pb2_grpc.py"} <= names
    for src in (ROOT / "bpf").rglob("*"):
        if src.is_file():
            assert f"enforcer/_bpf/{src.relative_to(ROOT / 'bpf')}" in names


def test_generated_code_is_not_tracked():
    tracked = subprocess.run(["git", "ls-files", "enforcer/v1"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""
