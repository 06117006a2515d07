"""Smoke test of bench/prefix_bench.py at small sizes and a small per-pass
budget (so staging runs): every row converges to the policy as written, the
other change is taken in by the first pass, the JSON carries the goals, and
the pins are gone afterwards. Loads BPF programs for real maps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "prefix_bench.py"


def test_prefix_bench_small():
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--sizes", "200,1000", "--prefixes-per-pass", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["goals"] == {"compile_50k_prefixes_le_2s": None,  # no 50k row asked for
                               "other_change_le_1s": result["goals"]["other_change_le_1s"]}
    rows = {(r["shape"], r["prefixes"]): r for r in result["rows"]}
    assert set(rows) == {(s, n) for s in ("excepts", "blocks") for n in (200, 1000)}
    for (shape, n), r in rows.items():
        assert r["other_change_pass"] == 1, r
        # 1000 prefixes at 300 a pass: staged over several passes.
        assert r["passes"] >= (4 if n == 1000 else 1), r
        assert r["ipcache_entries"] >= n, r
        assert r["policy_entries"] == (n if shape == "blocks" else 1), r
    # Its own pins (named after its pid): other runs may have theirs meanwhile.
    assert not Path(f"/sys/fs/bpf/enforcer-cbench-{proc.pid}-prefix").exists(), "the benchmark left its pins"
