"""Smoke test of bench/compiler_bench.py on a tiny cluster: the JSON it
prints last has every key, the maps its passes wrote (one change at a time,
through the compiler's incremental path) equal a fresh full compile of the
final state, and its pins are gone afterwards. Loads BPF programs (for
real pinned maps); the suite runs as root (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import pytest

BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "compiler_bench.py"
RUN_ALL = Path(__file__).resolve().parents[2] / "bench" / "run_all.py"
TINY = ["--pods", "200", "--policies", "20,50", "--changes", "42", "--pickup-changes", "2",
        "--namespaces", "10", "--nodes", "4", "--scale-pods", "300", "--scale-policies", "60"]


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cb():
    yield _load(BENCH_SCRIPT, "compiler_bench")
    sys.modules.pop("compiler_bench", None)


def _pins() -> set[str]:
    return {p.name for p in Path("/sys/fs/bpf").glob(f"enforcer-cbench-{os.getpid()}*")}


def test_main_prints_json_last(cb, capsys):
    before = _pins()
    assert cb.main(TINY) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    sizes = {"20", "50"}
    for key in ("cold_total_s", "cold_compile_s", "change_p50_ms", "change_p99_ms", "change_max_ms",
                "change_entries_mean", "change_entries_max"):
        assert set(r[key]) == sizes, key
        assert all(isinstance(v, (int, float)) for v in r[key].values()), key
    for n in sizes:
        cold, change = r["sizes"][n]["cold"], r["sizes"][n]["change"]
        assert cold["failures"] == 0 and cold["written"] > 0 and cold["local_pods"] > 0
        assert cold["written"] == (cold["policy_entries"] + cold["ipcache_entries"] + cold["endpoints"]
                                   + cold["endpoint_ids"] + cold["service_frontends"])
        assert change["count"] == 42 and change["failures"] == 0
        assert set(change["by_kind_p50_ms"]) == set(cb.CHANGE_KINDS)
        # What the passes wrote, change by change, is what a fresh compile makes of the end state.
        assert r["checks"][n] == {"applied_equals_fresh": True, "maps_equal_fresh": True, "desired_equals_fresh": True}
    d = r["daemon"]
    assert d["count"] == 2 and d["p50_ms"] > 0 and d["objects"] > 200
    assert 0 < d["baseline_rss_mb"] <= d["source_rss_mb"] and d["loaded_rss_mb"] <= d["peak_rss_mb"]
    assert r["pickup_p99_ms"] == d["p99_ms"] and r["rss_peak_mb"] == d["peak_rss_mb"]
    assert set(r["goals"]) == {"change_p99_le_100ms_at_20_policies", "cold_le_5s_at_50_policies",
                               "rss_peak_le_200mb", "cold_start_le_5s_at_50", "pickup_p99_le_500ms"}
    # The real daemon: a first start that compiled, a restart from the bytecode cache, the scale row.
    first, again = d["real_first_start"], d["real"]
    assert first["loaded_by_child"] and not first["loaded_from_cache"] and first["loader_child_peak_rss_mb"]
    assert again["loaded_from_cache"] and not again["loaded_by_child"] and not again["bcc_mapped"]
    assert r["daemon_first_start_sync_s"] == first["first_sync_s"] > 0 and r["daemon_peak_rss_mb"] == again["peak_rss_mb"]
    assert r["scale"]["pods"] == 300 and r["scale"]["policies"] == 60 and r["scale"]["errors_total"] == 0
    assert r["scale"]["policy_entries"] > 0 and r["scale"]["first_sync_s"] > 0
    assert all(isinstance(v, bool) for v in r["goals"].values())
    assert "change: p99 (ms)" in "\n".join(out[:-1])  # the table came first
    assert _pins() == before  # its own pins are gone


def test_incremental_passes_equal_a_fresh_compile(cb):
    """Every kind of change, many times, on real pinned maps; then the maps
    hold exactly what a fresh compiler makes of the final state."""
    cluster = cb.build_cluster(200, 60, n_namespaces=8, n_nodes=3)
    with cb.pinned_maps("-smoke") as maps:
        _, p = cb.cold(cluster, maps)
        rng = random.Random(3)
        for i in range(140):
            ch = cb.make_change(cluster, cb.CHANGE_KINDS[i % len(cb.CHANGE_KINDS)], rng)
            ch.apply(p.store)
            written, deleted, failures = p.run()
            assert not failures
        assert cb.full_compile_equals(p.store, p, maps) == {
            "applied_equals_fresh": True, "maps_equal_fresh": True, "desired_equals_fresh": True}
        # The store holds what the changes made of the cluster.
        assert set(p.store.snapshot().pods) == set(cluster.pods)
        assert set(p.store.snapshot().policies) == set(cluster.policies)
    assert not Path(f"{cb.PIN_PREFIX}-{os.getpid()}-smoke").exists()


def test_pins_removed_on_failure(cb):
    with pytest.raises(RuntimeError, match="boom"):
        with cb.pinned_maps("-boom") as maps:
            assert maps.pin_dir.is_dir()
            raise RuntimeError("boom")
    assert not Path(f"{cb.PIN_PREFIX}-{os.getpid()}-boom").exists()


def test_run_all_combines_the_last_lines(monkeypatch, capsys, tmp_path):
    """run_all passes each benchmark's output through and prints one JSON
    object last (stand-in scripts: the real ones are run above and in
    test_bench_smoke)."""
    run_all = _load(RUN_ALL, "run_all")
    try:
        ok = tmp_path / "ok.py"
        ok.write_text('print("table"); print(\'{"goals": {"fast": true}, "x": 1}\')\n')
        bad = tmp_path / "bad.py"
        bad.write_text("import sys; print('half'); sys.exit(3)\n")
        monkeypatch.setattr(run_all, "BENCHMARKS", (("datapath", ok), ("compiler", bad)))
        assert run_all.main([]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        combined = json.loads(out[-1])
        assert out.index("table") < len(out) - 1
        assert combined["datapath"]["x"] == 1 and combined["goals"] == {"datapath.fast": True}
        assert "status 3" in combined["errors"]["compiler"]
        monkeypatch.setattr(run_all, "BENCHMARKS", (("datapath", ok), ("compiler", ok)))
        assert run_all.main([]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["benchmarks"] == ["datapath", "compiler"]
    finally:
        sys.modules.pop("run_all", None)
