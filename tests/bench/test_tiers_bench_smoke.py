"""Guard of bench/tiers_bench.py on a tiny cluster: it runs, reports its
goal key (tiers.new_flow_over_np_le_20ns in run_all's goals) and figures
both ways, every measured frame got the verdict the compiled state predicts
(checked inside the benchmark), and its pins are gone afterwards. No timing
is asserted. Loads BPF programs (the suite runs as root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .loader import bench_module

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY = ["--pods", "300", "--policies", "60", "--cluster-policies", "30", "--namespaces", "10", "--nodes", "4",
        "--repeat", "200", "--runs", "1", "--flows-per-class", "1"]


@pytest.fixture(scope="module")
def tb():
    with bench_module("tiers_bench") as mod:
        yield mod


def _pins() -> set[str]:
    return {p.name for p in Path("/sys/fs/bpf").glob(f"enforcer-tbench-{os.getpid()}-*")}


def test_tiny_run_reports_its_goal(tb, capsys):
    before = _pins()
    assert tb.main(TINY) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert set(r["goals"]) == {"new_flow_over_np_le_20ns"}
    assert isinstance(r["goals"]["new_flow_over_np_le_20ns"], bool)
    assert r["goal_classes"] and r["flows"]
    for k in ("np", "tiered"):
        assert r["entries"][k]["policy"] > 0 and r["compile"][k]["compile_s"] >= 0
        assert r["compile"][k]["rss_peak_mb"] > 0
    assert r["entries"]["tiered"]["governed_directions"] > 0 == r["entries"]["np"]["governed_directions"]
    assert all(set(f["samples_ns"]) == {"noop", "np", "tiered"} for f in r["flows"])
    assert "over NP" in "\n".join(out[:-1])  # the table came first
    assert _pins() == before


def test_cluster_policies_parse_and_select_local_namespaces(tb):
    from enforcer.model.clusterpolicy import ClusterNetworkPolicy

    cluster = tb.cb.build_cluster(300, 60, n_namespaces=10, n_nodes=4)
    policies = tb.cluster_policies(cluster, 200)
    parsed = [ClusterNetworkPolicy.parse(p) for p in policies]
    assert {p.tier for p in parsed} == {"Admin", "Baseline"}
    assert {r.action for p in parsed for r in (*p.ingress, *p.egress)} == {"Accept", "Deny", "Pass"}
    assert not any(p.warnings for p in parsed)
    local = set(tb.local_namespaces(cluster))
    for p in parsed:  # the API server adds kubernetes.io/metadata.name to every namespace
        labels = [dict(cluster.namespaces[ns]["metadata"]["labels"], **{"kubernetes.io/metadata.name": ns})
                  for ns in local]
        assert any(p.selects({"app": "x", "tier": "backend"} if p.subject_pods is None else {}, ls)
                   or p.subject_pods is not None for ls in labels), p.name


def test_run_all_lists_the_tiers_benchmark():
    text = (BENCH / "run_all.py").read_text()
    assert '("tiers", HERE / "tiers_bench.py")' in text
