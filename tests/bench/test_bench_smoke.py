"""Smoke test of bench/datapath_bench.py with tiny parameters: the JSON it
prints last has every key, and the frames it measures get the verdicts (and
take the paths) it claims. Loads BPF programs (the suite runs as root:
tests/conftest.py); bcc and scapy come with `make setup`, so a missing one
is an error here, not a skip."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from .loader import bench_module

BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "datapath_bench.py"
TINY = dict(repeat=1000, runs=1, policy_sizes=(1, 10))
TINY_IPCACHE = 1000


@pytest.fixture(scope="module")
def db():
    with bench_module("datapath_bench") as mod:
        yield mod


@pytest.fixture(scope="module")
def bench(db):
    with db.Bench(ipcache_entries=TINY_IPCACHE, progress=lambda _msg: None) as b:
        yield b
    for build in b.builds:
        assert not build.config.pin_dir.exists(), f"{build.config.pin_dir} left behind"


def _bench_pins() -> set[str]:
    return {p.name for p in Path("/sys/fs/bpf").glob(f"enforcer-bench-{os.getpid()}-*")}


def test_main_prints_json_last(db, capsys):
    pins_before = _bench_pins()
    assert db.main(["--repeat", "1000", "--runs", "1", "--policy-sizes", "1,10",
                    "--ipcache-entries", str(TINY_IPCACHE)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    sizes = {"1", "10"}
    assert result["repeat"] == 1000 and result["runs"] == 1
    assert result["noop_ns"] > 0
    for key in ("established_ns", "new_flow_ns", "established_over_noop_ns", "new_flow_over_noop_ns"):
        assert set(result[key]) == sizes, key
        assert all(isinstance(v, (int, float)) for v in result[key].values()), key
    assert set(result["ratio_10k_over_1"]) == {"established", "new_flow"}
    assert set(result["goals"]) == {"established_over_noop_le_60", "new_flow_over_noop_le_250",
                                    "ratio_10k_over_1_le_1_3"}
    assert all(isinstance(v, bool) for v in result["goals"].values())
    assert result["headline"] == "egress_ipv4"
    assert set(result["variants"]) == set(db.VARIANTS)
    for verdicts in result["verdicts"].values():
        assert verdicts == {"established_ack": -1, "new_flow_syn": -1,
                            "established_denied_syn": 2, "new_flow_denied_syn": 2,
                            "new_flow_no_ct_create_denied_syn": 2, "new_flow_no_event_denied_syn": 2}
    bd = result["new_flow_breakdown"]
    assert bd["variant"] == "egress_ipv4" and bd["policy_entries"] == 10
    assert bd["rest_ns"] == bd["new_flow_over_noop_ns"] - bd["ct_create_ns"] - bd["event_ns"]
    assert all(len(x) == 1 for x in bd["samples_ns"].values())
    am = result["audit_mode"]
    assert am["variant"] == "egress_ipv4" and am["extra_lookups"] == 0
    assert all(len(x) == 2 for x in am["samples_ns"].values())  # 2 x runs pairs
    diffs = [a - e for a, e in zip(am["samples_ns"]["audited"], am["samples_ns"]["enforced"], strict=True)]
    assert am["audited_over_enforced_ns"] == statistics.median(diffs)
    assert "noop" in "\n".join(out[:-1])  # the table came first
    assert _bench_pins() == pins_before  # its own pins are gone


@pytest.mark.parametrize("variant", ["egress_ipv4", "egress_ipv6", "ingress_ipv4"])
def test_measured_frames_take_the_claimed_paths(db, bench, variant):
    """Verdicts checked directly with one test run each; the verdict-reason
    counters show which path ran."""
    v = db.VARIANTS[variant]
    bench.set_policy_size(max(bench.policy_entries, 10))
    Reason = db.Reason

    def run(build, prog, frame):
        before = {r: bench.counter(build, v.direction, r)
                  for r in (Reason.ALLOW_ESTABLISHED, Reason.ALLOW_POLICY, Reason.DROP_POLICY)}
        ret = db.bpfsys.prog_test_run(build.fd(prog), frame).retval
        after = {r: bench.counter(build, v.direction, r) - n for r, n in before.items()}
        return ret, {r.name for r, n in after.items() if n}

    bench.prepare_established(v)  # SYN, SYN-ACK, ACK through the normal build
    assert run(bench.established, v.prog, v.ack()) == (db.TC_ACT_UNSPEC, {"ALLOW_ESTABLISHED"})
    # The new-flow build judges the same SYN by policy every time, even
    # once conntrack holds its entry.
    for _ in range(3):
        assert run(bench.new_flow, v.prog, v.syn()) == (db.TC_ACT_UNSPEC, {"ALLOW_POLICY"})
    for build in bench.builds:
        assert run(build, v.prog, v.syn(db.DENIED_PORT)) == (db.TC_ACT_SHOT, {"DROP_POLICY"})
    # The breakdown's builds leave out exactly their step: no conntrack
    # entry from one, no event (nor token-bucket use) from the other.
    for build, tracks, emits in ((bench.new_flow, 1, True), (bench.without_ct, 0, True),
                                 (bench.without_event, 1, False)):
        build.maps.flush_conntrack(db.ENDPOINT_ID)
        before = build.maps.event_stats()
        assert run(build, v.prog, v.syn()) == (db.TC_ACT_UNSPEC, {"ALLOW_POLICY"})
        assert build.maps["conntrack"].count() == tracks, build.name
        assert bench.measure_new_flow(build, v, 2000) > 0
        spent = sum(build.maps.event_stats().values()) > sum(before.values())  # 2000 events: some suppressed
        assert spent is emits, build.name
    # And the measurement helpers agree, over many repetitions.
    assert bench.measure("established", v, 1000) > 0
    assert bench.measure("new_flow", v, 1000) > 0


def test_pins_removed_on_failure(db):
    with pytest.raises(RuntimeError, match="boom"):
        with db.Bench(ipcache_entries=10, variants=("egress_ipv4",), progress=lambda _m: None) as b:
            assert all(build.config.pin_dir.is_dir() for build in b.builds)
            raise RuntimeError("boom")
    assert all(not build.config.pin_dir.exists() for build in b.builds)
