"""Guard of bench/traffic_bench.py on a tiny cluster, in seconds: it builds
its labs, runs every variant (no enforcement, the enforcer at two policy
counts, iptables+ipset as kube-router writes it, nftables) and the watch
daemon, reports its goal keys and figures, and leaves no namespace or pin
behind. No timing is asserted. Needs root, BPF and network namespaces (the
suite runs as root); the iptables and nftables variants need ipset and nft."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .loader import bench_module

BENCH = Path(__file__).resolve().parents[2] / "bench"
TINY = ["--pods", "120", "--namespaces", "6", "--nodes", "3", "--policies", "12", "--reps", "1",
        "--tput-seconds", "1", "--crr-seconds", "0.2", "--rr-seconds", "0.2", "--updates", "1"]


@pytest.fixture(scope="module")
def tb():
    with bench_module("traffic_bench") as mod:
        yield mod


def _ours() -> set[str]:
    pid = os.getpid()
    netns = {p.name for p in Path("/run/netns").glob(f"tfb{pid}*")} if Path("/run/netns").exists() else set()
    return netns | {p.name for p in Path("/sys/fs/bpf").glob(f"enforcer-tfb-{pid}-*")}


@pytest.mark.skipif(not (shutil.which("ipset") and shutil.which("nft") and shutil.which("gcc")),
                    reason="needs ipset, nft and gcc (make setup installs them)")
def test_tiny_run_reports_its_goals(tb, capsys):
    assert tb.main(TINY) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert set(r["goals"]) == {"throughput_ratio_ge_0_97", "conn_rate_ratio_ge_0_95", "update_p99_le_100ms_watch",
                               "update_p99_le_150ms_file"}
    assert all(isinstance(v, bool) for v in r["goals"].values())
    assert r["order"] == ["none", "enforcer 12", "iptables", "nftables"]
    for name, v in r["variants"].items():
        for m in ("tput_gbps", "crr_per_s", "rr_p50_us", "rr_p99_us"):
            assert v[m]["n"] == 1 and v[m]["median"] > 0 and "ratio" in v[m], (name, m)
        assert v["crr_errors"] == 0, name
        if v["kind"] != "none":
            assert v["update"]["revoke"]["n"] == 1 and v["update"]["grant"]["n"] == 1, name
            assert v["converge"]["wall_s"] >= 0 and v["converge"]["cpu_s"] >= 0, name
    assert r["variants"]["enforcer 12"]["converge"]["rss_mb"] > 0
    assert r["variants"]["iptables"]["converge"]["sets"] > 0 and r["variants"]["nftables"]["converge"]["rules"] > 0
    assert r["watch"]["update_all"]["n"] == 2 and r["watch"]["converge"]["rss_mb"] > 0
    assert "throughput Gbit/s" in "\n".join(out[:-1])  # the table came first
    assert not _ours()  # namespaces and pins gone


def test_kube_router_rendering_of_a_small_cluster(tb):
    """Every local pod a policy selects has its firewall chain, ESTABLISHED
    first; every policy its chain; the lab's policy admits the client."""
    cluster = tb.cb.build_cluster(120, 11, n_namespaces=6, n_nodes=3)
    objects = tb.cluster_objects(cluster)
    index = tb.Index(objects)
    local = tb.local_pods(objects)
    r = tb.render_kube_router(index, local)
    lines = r.rules.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert sum(ln.startswith(":KUBE-NWPLCY-") for ln in lines) == len(index.policies) == 12
    fw = [ln.split()[1] for ln in lines if ln.startswith("-A KUBE-POD-FW-")]
    first = {}
    for ln in lines:
        if ln.startswith("-A KUBE-POD-FW-"):
            first.setdefault(ln.split()[1], ln)
    assert fw and all("--ctstate RELATED,ESTABLISHED -j ACCEPT" in ln for ln in first.values())
    server = next(p for p in index.policies if p.key == "tfb/server-from-client")
    assert server.targets == [tb.SERVER_IP] and server.ingress[0].pod_ips == [tb.CLIENT_IP]
    nft = tb.render_nftables(index, local)
    assert f"{tb.SERVER_IP} : jump" in nft.rules and "ct state established,related accept" in nft.rules


def test_run_all_lists_the_traffic_benchmark():
    text = (BENCH / "run_all.py").read_text()
    assert '("traffic", HERE / "traffic_bench.py")' in text
