"""ipBlock scaling: one NetworkPolicy naming N prefixes (N excepts in one
ipBlock, or N separate ipBlocks), and a change in another namespace made at
the same moment.

For each N (1k, 10k, 50k, 100k) and shape, on a small cluster compiled and
synced to real pinned maps: the parse of the object, the compile of every
pass until it is in force (the per-pass prefix budget stages it), the sync
of those passes, the longest pass, and the wait of the other change (the
pass it is taken in: the first; at worst, arriving as the longest pass
starts, that pass and its own). `scaling_vs_linear` is the compile time
per prefix against the 1k row's (1.0: linear). Limits per object are raised
for the benchmark so that 100k is compiled, not refused.

Goals: compile_50k_prefixes_le_2s (the whole compile of either 50k shape),
other_change_le_1s (at every N and shape within the default limits per
object, the worst wait of the other change, compile and sync; rows past
them, which the limits refuse unless an operator raises them, are shown
and marked). Printed last: one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from enforcer.compiler.admission import (  # noqa: E402
    MAX_ENTRIES_PER_POLICY_POD,
    MAX_PREFIXES_PER_POLICY,
    PREFIXES_PER_PASS,
    CompileLimits,
)
from enforcer.compiler.compile import Compiler, NodeContext  # noqa: E402
from enforcer.compiler.evaluate import evaluate  # noqa: E402
from enforcer.datapath.sync import MapSync  # noqa: E402
from enforcer.model.state import ClusterStore  # noqa: E402

SIZES = (1000, 10000, 50000, 100000)
SHAPES = ("excepts", "blocks")
NAMESPACES = 20
PODS_PER_NS = 10
NODE = "n1"


def _load_compiler_bench() -> Any:
    spec = importlib.util.spec_from_file_location("compiler_bench", ROOT / "bench" / "compiler_bench.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def cluster() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for n in range(NAMESPACES):
        ns = f"ns{n}"
        objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"n": str(n)}}})
        for p in range(PODS_PER_NS):
            objs.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"p{p}", "namespace": ns, "uid": f"u-{n}-{p}", "labels": {"app": f"a{p % 3}"}},
                "spec": {"nodeName": NODE if p < 2 else "n2", "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": f"10.1.{n}.{p + 1}", "podIPs": [{"ip": f"10.1.{n}.{p + 1}"}]},
            })
    # ns1 admits ns2 on port 80: the "other change" revokes it.
    objs.append(allow_ns2(True))
    return objs


def allow_ns2(allow: bool) -> dict[str, Any]:
    ingress = [{"from": [{"namespaceSelector": {"matchLabels": {"n": "2"}}}], "ports": [{"port": 80}]}] if allow else []
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-ns2", "namespace": "ns1"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": ingress}}


def prefixes(n: int) -> list[str]:
    start = int(ipaddress.IPv4Address("11.0.0.0"))
    return [str(ipaddress.IPv4Network((start + i * 4, 30))) for i in range(n)]


def big_policy(shape: str, n: int) -> dict[str, Any]:
    if shape == "excepts":
        peers = [{"ipBlock": {"cidr": "11.0.0.0/8", "except": prefixes(n - 1)}}]
    else:
        peers = [{"ipBlock": {"cidr": c}} for c in prefixes(n)]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "big", "namespace": "ns0"},
            "spec": {"podSelector": {"matchLabels": {"app": "a0"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": peers, "ports": [{"port": 443}]}]}}


def one_row(maps: Any, shape: str, n: int, per_pass: int) -> dict[str, Any]:
    store = ClusterStore()
    store.replace_all(cluster(), [])
    limits = CompileLimits(max_prefixes_per_policy=10**7, max_entries_per_policy_pod=10**7, prefixes_per_pass=per_pass)
    compiler = Compiler(limits=limits)
    sync = MapSync(maps)
    local = sorted(k for k, p in store.snapshot().pods.items() if p.node_name == NODE)
    node = NodeContext(NODE, (ipaddress.ip_address("10.9.0.1"),), {k: 100 + i for i, k in enumerate(local)})
    state = compiler.compile(store.snapshot(), node)
    sync.apply(state.map_contents())
    src, dst = ipaddress.ip_address("10.1.2.5"), ipaddress.ip_address("10.1.1.1")
    assert evaluate(state, src, dst, 6, 80).allowed

    doc = big_policy(shape, n)
    started = time.perf_counter()
    store.upsert(doc)
    parse_s = time.perf_counter() - started
    store.upsert(allow_ns2(False))  # the other change, at the same moment
    compile_s: list[float] = []
    sync_s: list[float] = []
    other_pass = None
    while True:
        t0 = time.perf_counter()
        state = compiler.compile(store.snapshot(), node)
        t1 = time.perf_counter()
        report = sync.apply(state.map_contents())
        t2 = time.perf_counter()
        if report.failures:
            raise RuntimeError(f"{shape} {n}: sync failed: {report.failures[:3]}")
        compile_s.append(t1 - t0)
        sync_s.append(t2 - t1)
        if other_pass is None and not evaluate(state, src, dst, 6, 80).allowed:
            other_pass = len(compile_s)
        if not state.pending:
            break
    if state.errors:
        raise RuntimeError(f"{shape} {n}: {state.errors[:3]}")
    inside = ipaddress.ip_address("11.0.0.1")
    expect_inside = shape == "blocks"
    if evaluate(state, ipaddress.ip_address("10.1.0.1"), inside, 6, 443).allowed != expect_inside:
        raise RuntimeError(f"{shape} {n}: the policy is not in force as written")
    passes = [c + s for c, s in zip(compile_s, sync_s, strict=False)]
    assert other_pass is not None
    ipcache_entries, policy_entries = len(state.ipcache), state.entries_by_policy.get("ns0/big", 0)
    # A change elsewhere arriving just as the longest pass starts waits for
    # it, then for its own pass: time that one too (the allow back).
    store.upsert(allow_ns2(True))
    t0 = time.perf_counter()
    state = compiler.compile(store.snapshot(), node)
    sync.apply(state.map_contents())
    own_pass = time.perf_counter() - t0
    assert evaluate(state, src, dst, 6, 80).allowed
    # Clear the maps for the next row.
    sync.apply(type(state.map_contents())())
    return {
        "shape": shape, "prefixes": n, "parse_ms": round(parse_s * 1e3, 1),
        "compile_ms": round(sum(compile_s) * 1e3, 1), "sync_ms": round(sum(sync_s) * 1e3, 1),
        "passes": len(passes), "longest_pass_ms": round(max(passes) * 1e3, 1),
        "other_change_pass": other_pass, "other_change_wait_ms": round(sum(passes[:other_pass]) * 1e3, 1),
        "other_change_worst_wait_ms": round((max(passes) + own_pass) * 1e3, 1),
        "ipcache_entries": ipcache_entries, "policy_entries": policy_entries,
        "within_default_limits": n <= MAX_PREFIXES_PER_POLICY and policy_entries <= MAX_ENTRIES_PER_POLICY_POD,
    }


def run(sizes: tuple[int, ...], per_pass: int) -> dict[str, Any]:
    cb = _load_compiler_bench()
    rows = []
    with cb.pinned_maps("-prefix") as maps:
        for n in sizes:
            for shape in SHAPES:
                rows.append(one_row(maps, shape, n, per_pass))
                print(format_row(rows[-1]), flush=True)
    base = {r["shape"]: r["compile_ms"] / r["prefixes"] for r in rows if r["prefixes"] == sizes[0]}
    for r in rows:
        per_prefix = r["compile_ms"] / r["prefixes"]
        r["scaling_vs_linear"] = round(per_prefix / base[r["shape"]], 2) if base[r["shape"]] else None
    at_50k = [r["compile_ms"] for r in rows if r["prefixes"] == 50000]
    goals = {
        # None: no 50k row in this run (--sizes).
        "compile_50k_prefixes_le_2s": max(at_50k) <= 2000 if at_50k else None,
        # Within the default limits per object: past them a policy is
        # refused (fail-closed) unless the operator raises them, as this
        # benchmark does to show the larger rows.
        "other_change_le_1s": all(r["other_change_worst_wait_ms"] <= 1000 for r in rows if r["within_default_limits"]),
    }
    return {"rows": rows, "prefixes_per_pass": per_pass, "goals": goals}


def format_row(r: dict[str, Any]) -> str:
    return (f"{r['shape']:>8} {r['prefixes']:>7} prefixes: parse {r['parse_ms']:>7.1f} ms,"
            f" compile {r['compile_ms']:>7.1f} ms"
            f" + sync {r['sync_ms']:>7.1f} ms in {r['passes']:>2} passes (longest {r['longest_pass_ms']:>6.1f} ms);"
            f" other change in pass {r['other_change_pass']} after {r['other_change_wait_ms']:.1f} ms,"
            f" at worst {r['other_change_worst_wait_ms']:.1f} ms"
            + ("" if r["within_default_limits"] else " (past the default limits per object)"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--prefixes-per-pass", type=int, default=PREFIXES_PER_PASS)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("prefix_bench: must run as root (loads BPF programs for real maps)", file=sys.stderr)
        return 1
    result = run(tuple(int(x) for x in args.sizes.split(",")), args.prefixes_per_pass)
    print("goals: " + ", ".join(f"{k}={'not measured' if ok is None else 'met' if ok else 'MISSED'}"
                                for k, ok in result["goals"].items()))
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
