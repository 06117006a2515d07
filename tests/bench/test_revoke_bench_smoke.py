"""Guard of bench/revoke_bench.py on a tiny conntrack: it runs the daemon's
pass as the runtime does (compile, sync, then the revocation of the
connections the change can have affected) and the old full walk beside it,
reports its goal key and figures, every change revoked what it had to (the
benchmark checks the map), and its pins are gone afterwards. No timing is
asserted. Loads BPF programs (the suite runs as root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .loader import bench_module

TINY = ["--conntrack", "2000", "--servers", "20", "--clients", "100", "--apps", "10", "--nodes", "3",
        "--changes", "3", "--baseline-changes", "1"]


def _pins() -> set[str]:
    return {p.name for p in Path("/sys/fs/bpf").glob(f"enforcer-rbench-{os.getpid()}*")}


def test_tiny_run_reports_its_goal(capsys):
    with bench_module("revoke_bench") as mod:
        before = _pins()
        assert mod.main(TINY) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r["goals"]) == {"change_pass_p99_le_50ms_with_100k_ct"}
    assert r["conntrack_entries"] == 2000 and r["revoked_per_change"] > 0
    for key in ("pass", "pass_and_revocation"):
        assert r[key]["n"] == 3 and r[key]["p99_ms"] > 0, key
    assert r["baseline_pass_with_full_walk"]["n"] == 1
    assert _pins() == before
