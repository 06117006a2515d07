"""Datapath micro-benchmark: ns per packet of the enforcing tc program,
against the no-op tc program (bpf/noop.c) measured in the same run, with
BPF_PROG_TEST_RUN.

Two builds of bpf/pod_tc.c, each with its own pin directory
(/sys/fs/bpf/enforcer-bench-<pid>-<n>-*, removed at the end, also on failure):

  established  the normal build. The flow's SYN (and the peer's SYN-ACK) go
               through once so conntrack holds an entry that has seen a
               reply; the ACK of that flow is what is measured.
  new flow     built with bench_ignore_conntrack_hits: a SYN takes the whole
               new-flow path on every repetition (conntrack lookup, ipcache
               lookup, policy lookup, conntrack create, event).

Maps: the pod's endpoint (ifindex 1, the loopback device a test-run skb
appears on), isolated in both directions; an ipcache of pod /32 and /128
entries and CIDR prefixes of both families (the peer among them); N policy
entries per direction for the endpoint, the one that allows the measured
flow among them.

Every measured frame is first checked to take the path it is said to
measure (verdict and verdict-reason counter), and after each measurement the
counter of that reason must have grown by the number of repetitions.

Prints a table, then as its last line one JSON object with every figure.
Goals are reported, never asserted: the exit status is 0 unless the
benchmark itself fails.

Run as root: `make bench` or `.venv/bin/python bench/datapath_bench.py`.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import ipaddress
import itertools
import json
import os
import platform
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from enforcer.datapath import bpfsys
from enforcer.datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_HOST,
)
from enforcer.datapath.loader import (
    FROM_POD,
    TO_NETWORK,
    TO_POD,
    LoadedPrograms,
    load_datapath_programs,
    load_noop_program,
    remove_pins,
)
from enforcer.datapath.maps import DatapathMaps, PolicyRule
from enforcer.datapath.reasons import REASON_SLOTS, Reason
from enforcer.datapath.source import DatapathConfig

TC_ACT_UNSPEC = -1
TC_ACT_SHOT = 2
IPPROTO_TCP = 6
IPPROTO_UDP = 17

PIN_PREFIX = "/sys/fs/bpf/enforcer-bench"
_instances = itertools.count()  # several Bench objects in one process (tests)

# Defaults of a full run.
REPEAT = 1_000_000
RUNS = 5
POLICY_SIZES = (1, 100, 10_000)
IPCACHE_ENTRIES = 100_000

# Goals (over noop, ns), reported only.
GOAL_ESTABLISHED_NS = 60
GOAL_NEW_FLOW_NS = 250
GOAL_RATIO = 1.3

# The measured pod and its peer: both pods of this cluster, dual-stack.
LOOPBACK_IFINDEX = 1
ENDPOINT_ID = 7
POD_IDENTITY = 1000
PEER_IDENTITY = 4242
RULE_ID_MATCH = 1
POD_V4, PEER_V4 = "10.0.1.5", "10.0.7.9"
POD_V6, PEER_V6 = "fd00:10:0:1::5", "fd00:10:0:7::9"
NODE_V4 = "192.168.0.10"  # this node: IDENTITY_HOST
ALLOWED_PORT = 8080  # the port the match entry allows (TCP, peer identity)
DENIED_PORT = 6379  # no entry allows this port for the peer or for any peer
POD_EPHEMERAL_PORT = 40000  # pod's source port of the egress flow
PEER_EPHEMERAL_PORT = 50000  # peer's source port of the ingress flow

POD_MAC = "02:00:00:00:01:05"
PEER_MAC = "02:00:00:00:07:09"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- frames

def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    v6 = ":" in src
    smac, dmac = (POD_MAC, PEER_MAC) if src in (POD_V4, POD_V6) else (PEER_MAC, POD_MAC)
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    seq, ack = (1000, 0) if flags == "S" else (1001, 2001)
    return bytes(Ether(src=smac, dst=dmac) / ip / TCP(sport=sport, dport=dport, flags=flags,
                                                      seq=seq, ack=ack if "A" in flags else 0))


@dataclass(frozen=True)
class Variant:
    """One measured direction and family. `prog` judges the measured frames,
    `reverse` carries the peer's answer in the handshake."""

    name: str       # e.g. "egress_ipv4"
    label: str      # for the table
    direction: int  # DIR_EGRESS: from_pod, the pod's egress policy
    family: int     # 4 or 6

    @property
    def prog(self) -> str:
        return FROM_POD if self.direction == DIR_EGRESS else TO_POD

    @property
    def reverse(self) -> str:
        return TO_POD if self.direction == DIR_EGRESS else FROM_POD

    def _addrs(self) -> tuple[str, str]:
        return (POD_V4, PEER_V4) if self.family == 4 else (POD_V6, PEER_V6)

    def _ends(self, server_port: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """(client, server) as (address, port): the client is the side whose
        policy direction we measure opening the connection."""
        pod, peer = self._addrs()
        if self.direction == DIR_EGRESS:
            return (pod, POD_EPHEMERAL_PORT), (peer, server_port)
        return (peer, PEER_EPHEMERAL_PORT), (pod, server_port)

    def syn(self, server_port: int = ALLOWED_PORT) -> bytes:
        (c, cp), (s, sp) = self._ends(server_port)
        return tcp_frame(c, s, cp, sp, "S")

    def syn_ack(self) -> bytes:
        (c, cp), (s, sp) = self._ends(ALLOWED_PORT)
        return tcp_frame(s, c, sp, cp, "SA")

    def ack(self) -> bytes:
        (c, cp), (s, sp) = self._ends(ALLOWED_PORT)
        return tcp_frame(c, s, cp, sp, "A")


VARIANTS = {
    v.name: v
    for v in (
        Variant("egress_ipv4", "from_pod (egress) IPv4 TCP", DIR_EGRESS, 4),
        Variant("egress_ipv6", "from_pod (egress) IPv6 TCP", DIR_EGRESS, 6),
        Variant("ingress_ipv4", "to_pod (ingress) IPv4 TCP", DIR_INGRESS, 4),
    )
}
HEADLINE = "egress_ipv4"


# ---------------------------------------------------------------- map contents

def ipcache_contents(total: int, seed: int = 1) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]:
    """`total` ipcache entries: 60% IPv4 pod /32s (110 pods per node /24),
    15% IPv6 pod /128s, 20% IPv4 and 5% IPv6 CIDR prefixes of assorted
    lengths (ipBlock peers). Pods share identities as replicas of a workload
    do. The measured pod and peer and this node are always present."""
    rng = random.Random(seed)
    n_v4_pods = total * 60 // 100
    n_v6_pods = total * 15 // 100
    n_v4_cidr = total * 20 // 100
    specials: dict = {
        ipaddress.ip_network(POD_V4): POD_IDENTITY,
        ipaddress.ip_network(PEER_V4): PEER_IDENTITY,
        ipaddress.ip_network(POD_V6): POD_IDENTITY,
        ipaddress.ip_network(PEER_V6): PEER_IDENTITY,
        ipaddress.ip_network(NODE_V4): IDENTITY_HOST,
    }
    n_v6_cidr = max(0, total - n_v4_pods - n_v6_pods - n_v4_cidr - len(specials))
    workloads = max(1, (n_v4_pods + n_v6_pods) // 20)
    out: dict = {}

    def pod_identity() -> int:
        return 5000 + rng.randrange(workloads)

    for i in range(n_v4_pods):
        node, host = divmod(i, 110)
        addr = (10 << 24) | (node << 8) | (host + 2)
        out[ipaddress.IPv4Network((addr, 32))] = pod_identity()
    v6_base = int(ipaddress.IPv6Address("fd00:10::"))
    for i in range(n_v6_pods):
        node, host = divmod(i, 110)
        addr = v6_base | (node << 64) | (host + 2)
        out[ipaddress.IPv6Network((addr, 128))] = pod_identity()
    cidr_identity = 1 << 24  # CIDR identities, as Cilium allocates them locally
    v4_lengths = [8, 12, 16, 16, 20, 22, 24, 24, 24, 26, 28, 29, 30, 32, 32]
    while n_v4_cidr > 0:
        plen = rng.choice(v4_lengths)
        addr = rng.randrange(11 << 24, 224 << 24)  # outside the pod range 10/8
        net = ipaddress.IPv4Network((addr >> (32 - plen) << (32 - plen), plen))
        if net not in out:
            out[net] = cidr_identity
            cidr_identity += 1
            n_v4_cidr -= 1
    v6_lengths = [16, 24, 32, 32, 40, 48, 48, 56, 64, 64, 64, 96, 128]
    while n_v6_cidr > 0:
        plen = rng.choice(v6_lengths)
        addr = rng.randrange(0x2 << 124, 0x4 << 124)  # 2000::/3
        net = ipaddress.IPv6Network((addr >> (128 - plen) << (128 - plen), plen))
        if net not in out:
            out[net] = cidr_identity
            cidr_identity += 1
            n_v6_cidr -= 1
    out.update(specials)
    items = list(out.items())
    rng.shuffle(items)  # insertion order should not favour anyone
    return items


COMMON_PORTS = [80, 443, 8080, 8443, 5432, 3306, 6379, 9090, 9091, 9100, 2379, 27017,
                5672, 15672, 11211, 9200, 9300, 8000, 8081, 3000, 4317, 4318, 50051]
PEER_OTHER_PORTS = [443, 9090]  # the peer's identity is allowed on these too


def policy_rules(direction: int, seed: int = 2) -> Iterator[PolicyRule]:
    """Endless stream of the endpoint's other policy rules in one direction:
    a realistic mix over distinct peer identities (single TCP ports, UDP
    ports, port ranges, protocol-wide and all-protocol allows). None allows
    DENIED_PORT for the peer's identity or for any peer."""
    rng = random.Random(seed + direction)
    rule_id = 1000 + direction * 1_000_000
    base = dict(endpoint_id=ENDPOINT_ID, direction=direction)
    # The peer's identity on other ports, and DNS for any peer, come first:
    # those are the entries nearest the measured one in the trie.
    first = [PolicyRule(identity=PEER_IDENTITY, protocol=IPPROTO_TCP, port=p, end_port=None,
                        rule_id=rule_id + i, **base) for i, p in enumerate(PEER_OTHER_PORTS)]
    first += [PolicyRule(identity=IDENTITY_ANY, protocol=proto, port=53, end_port=None,
                         rule_id=rule_id + 10 + proto, **base) for proto in (IPPROTO_UDP, IPPROTO_TCP)]
    first.append(PolicyRule(identity=PEER_IDENTITY, protocol=IPPROTO_TCP, port=9000, end_port=9099,
                            rule_id=rule_id + 50, **base))
    yield from first
    rule_id += 100
    identity = 256
    while True:
        identity += rng.randrange(1, 4)  # distinct identities, not dense
        if identity == PEER_IDENTITY:
            continue
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
            rule_id += 1
            kind = rng.random()
            if kind < 0.60:
                yield PolicyRule(identity=identity, protocol=IPPROTO_TCP, port=rng.choice(COMMON_PORTS),
                                 end_port=None, rule_id=rule_id, **base)
            elif kind < 0.75:
                yield PolicyRule(identity=identity, protocol=IPPROTO_UDP,
                                 port=rng.choice([53, 123, 514, 4789, 8125]), end_port=None,
                                 rule_id=rule_id, **base)
            elif kind < 0.88:
                start = rng.choice([1024, 3000, 8000, 9000, 30000, 32768])
                yield PolicyRule(identity=identity, protocol=IPPROTO_TCP, port=start,
                                 end_port=start + rng.choice([9, 99, 999, 2767]), rule_id=rule_id, **base)
            elif kind < 0.96:
                yield PolicyRule(identity=identity, protocol=IPPROTO_TCP, port=None, end_port=None,
                                 rule_id=rule_id, **base)
            else:
                yield PolicyRule(identity=identity, protocol=None, port=None, end_port=None,
                                 rule_id=rule_id, **base)


def match_rule(direction: int) -> PolicyRule:
    return PolicyRule(endpoint_id=ENDPOINT_ID, direction=direction, identity=PEER_IDENTITY,
                      protocol=IPPROTO_TCP, port=ALLOWED_PORT, end_port=None, rule_id=RULE_ID_MATCH)


class PolicyFiller:
    """Grows one direction's policy entries (map keys) to exactly n, the
    match entry first; a range that would overshoot is replaced by a single
    port of the same identity."""

    def __init__(self, direction: int) -> None:
        self.direction = direction
        self.entries = 0
        self._rules = policy_rules(direction)

    def grow(self, maps: list[DatapathMaps], n: int) -> None:
        if self.entries == 0 and n > 0:
            self._add(maps, match_rule(self.direction))
        while self.entries < n:
            rule = next(self._rules)
            if self.entries + len(rule.keys()) > n:
                rule = PolicyRule(endpoint_id=rule.endpoint_id, direction=rule.direction,
                                  identity=rule.identity if rule.identity != IDENTITY_ANY else 999,
                                  protocol=IPPROTO_TCP, port=443, end_port=None, rule_id=rule.rule_id)
            self._add(maps, rule)

    def _add(self, maps: list[DatapathMaps], rule: PolicyRule) -> None:
        if rule.identity in (PEER_IDENTITY, IDENTITY_ANY) and rule.rule_id != RULE_ID_MATCH:
            # Only the match entry may allow the measured flow, and nothing
            # the denied SYN.
            assert rule.protocol is not None and rule.port is not None, rule
            hi = rule.end_port if rule.end_port is not None else rule.port
            assert rule.protocol != IPPROTO_TCP or not (
                rule.port <= DENIED_PORT <= hi or rule.port <= ALLOWED_PORT <= hi), rule
        for m in maps:
            m.add_rule(rule)
        self.entries += len(rule.keys())


# ---------------------------------------------------------------- the bench

@dataclass
class Build:
    name: str
    config: DatapathConfig
    programs: LoadedPrograms | None = None
    maps: DatapathMaps | None = None
    owns_pins: bool = False  # only pins this process created are removed

    def fd(self, prog: str) -> int:
        assert self.programs is not None
        return self.programs.fd(prog)


@dataclass
class Measurement:
    samples: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))


class Bench:
    """Both builds and the no-op program, loaded, with their maps filled.
    A context manager: leaving it unloads everything and removes the pins."""

    def __init__(self, ipcache_entries: int = IPCACHE_ENTRIES,
                 variants: tuple[str, ...] = tuple(VARIANTS), progress: Callable[[str], None] = log) -> None:
        self.ipcache_entries = ipcache_entries
        self.variants = [VARIANTS[v] for v in variants]
        self.progress = progress
        base = f"{PIN_PREFIX}-{os.getpid()}-{next(_instances)}"
        self.established = Build("established", DatapathConfig(pin_dir=Path(f"{base}-established")))
        self.new_flow = Build("new_flow", DatapathConfig(pin_dir=Path(f"{base}-newflow"),
                                                         bench_ignore_conntrack_hits=True))
        # The breakdown's builds: the new-flow path without one step each.
        self.without_ct = Build("new_flow_no_ct_create", DatapathConfig(
            pin_dir=Path(f"{base}-noct"), bench_ignore_conntrack_hits=True, bench_skip_ct_create=True))
        self.without_event = Build("new_flow_no_event", DatapathConfig(
            pin_dir=Path(f"{base}-noev"), bench_ignore_conntrack_hits=True, bench_skip_event=True))
        self.builds = (self.established, self.new_flow, self.without_ct, self.without_event)
        self.noop: LoadedPrograms | None = None
        self.fillers = {d: PolicyFiller(d) for d in (DIR_EGRESS, DIR_INGRESS)}
        self.policy_entries = 0

    # lifecycle
    def __enter__(self) -> Bench:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        for b in self.builds:
            if b.config.pin_dir.exists():
                raise RuntimeError(f"{b.config.pin_dir} exists already")
            b.owns_pins = True
            t = time.monotonic()
            b.programs = load_datapath_programs(b.config)
            b.maps = DatapathMaps(b.config.pin_dir)
            self.progress(f"compiled and loaded the {b.name} build in {time.monotonic() - t:.1f}s "
                          f"(pins {b.config.pin_dir})")
        self.noop = load_noop_program()
        self._fill_endpoints()
        self._fill_ipcache()

    def close(self) -> None:
        for b in self.builds:
            if b.maps is not None:
                b.maps.close()
                b.maps = None
            if b.programs is not None:
                b.programs.cleanup()
                b.programs = None
            try:
                if b.owns_pins:
                    remove_pins(b.config)
                    b.owns_pins = False
            except OSError as e:
                self.progress(f"could not remove {b.config.pin_dir}: {e}")
        if self.noop is not None:
            self.noop.cleanup()
            self.noop = None

    @property
    def all_maps(self) -> list[DatapathMaps]:
        return [b.maps for b in self.builds if b.maps is not None]

    def _fill_endpoints(self) -> None:
        flags = EP_F_EGRESS_ISOLATED | EP_F_INGRESS_ISOLATED
        for m in self.all_maps:
            m.set_endpoint(POD_V4, ENDPOINT_ID, LOOPBACK_IFINDEX, POD_IDENTITY, flags)
            m.set_endpoint(POD_V6, ENDPOINT_ID, LOOPBACK_IFINDEX, POD_IDENTITY, flags)
            # Other pods of this node, behind other interfaces.
            for i in range(1, 110):
                if i == ENDPOINT_ID:
                    continue
                m.set_endpoint(f"10.0.1.{100 + i}", i, 100 + i, 5000 + i, flags if i % 2 else 0)
                m.set_endpoint(f"fd00:10:0:1::{100 + i:x}", i, 100 + i, 5000 + i, flags if i % 2 else 0)

    def _fill_ipcache(self) -> None:
        t = time.monotonic()
        contents = ipcache_contents(self.ipcache_entries)
        step = max(1, len(contents) // 4)
        for m in self.all_maps:
            for i, (net, identity) in enumerate(contents, 1):
                m.set_identity(net, identity)
                if i % step == 0 or i == len(contents):
                    self.progress(f"ipcache {m.pin_dir.name}: {i}/{len(contents)}")
        self.progress(f"ipcache filled ({len(contents)} entries x {len(self.all_maps)} builds) "
                      f"in {time.monotonic() - t:.1f}s")

    def set_policy_size(self, n: int) -> None:
        """Grow the endpoint's policy to n entries per direction (never shrinks)."""
        if n < self.policy_entries:
            raise ValueError("policy sizes must be measured in increasing order")
        for filler in self.fillers.values():
            filler.grow(self.all_maps, n)
        self.policy_entries = n

    # running
    def run(self, fd: int, frame: bytes, repeat: int = 1) -> bpfsys.TestRunResult:
        return bpfsys.prog_test_run(fd, frame, repeat=repeat)

    def counter(self, build: Build, direction: int, reason: int) -> int:
        assert build.maps is not None
        idx = ctypes.c_uint32((ENDPOINT_ID * 2 + direction) * REASON_SLOTS + int(reason))
        return sum(c.packets for c in build.maps["metrics"].lookup_percpu(idx))

    def run_checked(self, build: Build, prog: str, direction: int, frame: bytes,
                    verdict: int, reason: int, repeat: int = 1) -> bpfsys.TestRunResult:
        """Run and insist on the verdict and that every repetition was counted
        under `reason` (so took the path that reason names)."""
        before = self.counter(build, direction, reason)
        res = self.run(build.fd(prog), frame, repeat)
        got = self.counter(build, direction, reason) - before
        if res.retval != verdict or got != repeat:
            raise AssertionError(
                f"{build.name}/{prog}: verdict {res.retval} (want {verdict}), "
                f"{got} of {repeat} repetitions counted as {Reason(reason).name}")
        return res

    def prepare_established(self, v: Variant) -> None:
        """Handshake through the normal build: SYN allowed by policy, the
        peer's SYN-ACK is a reply, so the entry has seen both directions."""
        b = self.established
        assert b.maps is not None
        b.maps.flush_conntrack(ENDPOINT_ID)  # start from no entry, as a real first SYN does
        self.run_checked(b, v.prog, v.direction, v.syn(), TC_ACT_UNSPEC, Reason.ALLOW_POLICY)
        self.run_checked(b, v.reverse, 1 - v.direction, v.syn_ack(), TC_ACT_UNSPEC, Reason.ALLOW_REPLY)
        self.run_checked(b, v.prog, v.direction, v.ack(), TC_ACT_UNSPEC, Reason.ALLOW_ESTABLISHED)

    def verdicts(self, v: Variant) -> dict[str, int]:
        """The verdicts of the measured frames (and of a denied SYN) in both
        builds, each checked against the reason it must be counted under."""
        out = {}
        self.prepare_established(v)
        out["established_ack"] = self.run_checked(
            self.established, v.prog, v.direction, v.ack(), TC_ACT_UNSPEC, Reason.ALLOW_ESTABLISHED).retval
        for _i in range(2):  # the second SYN hits the entry the first created
            out["new_flow_syn"] = self.run_checked(
                self.new_flow, v.prog, v.direction, v.syn(), TC_ACT_UNSPEC, Reason.ALLOW_POLICY).retval
        for b in self.builds:
            out[f"{b.name}_denied_syn"] = self.run_checked(
                b, v.prog, v.direction, v.syn(DENIED_PORT), TC_ACT_SHOT, Reason.DROP_POLICY).retval
        return out

    def measure_noop(self, frame: bytes, repeat: int) -> int:
        assert self.noop is not None
        res = self.run(self.noop.fd("noop"), frame, repeat)
        assert res.retval == TC_ACT_UNSPEC
        return res.duration_ns

    def measure(self, kind: str, v: Variant, repeat: int) -> int:
        """One run of `repeat` repetitions; returns the kernel's mean ns."""
        if kind == "established":
            return self.run_checked(self.established, v.prog, v.direction, v.ack(), TC_ACT_UNSPEC,
                                    Reason.ALLOW_ESTABLISHED, repeat).duration_ns
        return self.measure_new_flow(self.new_flow, v, repeat)

    def measure_new_flow(self, build: Build, v: Variant, repeat: int,
                         counted: Reason = Reason.ALLOW_POLICY) -> int:
        """One run of the allowed SYN through a new-flow build (the full
        one, or one of the breakdown's); counted: the reason it must be
        counted under (ALLOW_AUDIT while the match entry is audited)."""
        return self.run_checked(build, v.prog, v.direction, v.syn(), TC_ACT_UNSPEC,
                                counted, repeat).duration_ns

    def set_match_audited(self, v: Variant, audited: bool) -> None:
        """The match entry with, or without, an audited drop (policy.h):
        the same key, so the lookup is the same; audit mode's whole cost
        is what the entry's audited verdict makes the program do."""
        rule = match_rule(v.direction)
        if audited:
            rule = dataclasses.replace(rule, audit_reason=int(Reason.DROP_POLICY))
        assert self.new_flow.maps is not None
        self.new_flow.maps.add_rule(rule)

    def event_stats(self) -> dict[str, dict[str, int]]:
        return {b.name: b.maps.event_stats() for b in self.builds if b.maps is not None}


KINDS = ("established", "new_flow")


def run_benchmark(bench: Bench, repeat: int = REPEAT, runs: int = RUNS,
                  policy_sizes: tuple[int, ...] = POLICY_SIZES) -> dict:
    """Measure every variant, kind and policy size; returns the result
    object (the JSON the script prints last)."""
    t0 = time.monotonic()
    noop = Measurement()
    # figures[variant][kind][N] -> Measurement
    figures: dict[str, dict[str, dict[int, Measurement]]] = {
        v.name: {k: {} for k in KINDS} for v in bench.variants}
    verdicts: dict[str, dict[str, int]] = {}
    for n in sorted(policy_sizes):
        bench.set_policy_size(n)
        bench.progress(f"policy: {n} entries per direction for endpoint {ENDPOINT_ID}")
        for v in bench.variants:
            verdicts[v.name] = bench.verdicts(v)  # also (re)creates the tracked flow
            frames = {"established": v.ack(), "new_flow": v.syn()}
            for kind in KINDS:
                m = figures[v.name][kind][n] = Measurement()
                # One discarded run warms caches, branch predictors and the
                # CPU clock; then the baseline interleaves with the program
                # so drift hits both.
                bench.measure_noop(frames[kind], repeat)
                bench.measure(kind, v, repeat)
                for _ in range(runs):
                    noop.samples.append(bench.measure_noop(frames[kind], repeat))
                    m.samples.append(bench.measure(kind, v, repeat))
                bench.progress(f"  {v.name:13} {kind:11} N={n:<6} runs {m.samples} ns "
                               f"(noop now {noop.samples[-runs:]})")
    # Where the new flow's time goes, at the largest N for the headline
    # variant: the same SYN through builds without the conntrack insert and
    # without the event, interleaved with the full one and the no-op.
    head_v = next((v for v in bench.variants if v.name == HEADLINE), bench.variants[0])
    parts = {"full": Measurement(), "no_ct_create": Measurement(), "no_event": Measurement()}
    part_builds = {"full": bench.new_flow, "no_ct_create": bench.without_ct, "no_event": bench.without_event}
    part_noop = Measurement()
    for build in part_builds.values():
        bench.measure_new_flow(build, head_v, repeat)  # warm-up, discarded
    for _ in range(runs):
        part_noop.samples.append(bench.measure_noop(head_v.syn(), repeat))
        for name, build in part_builds.items():
            parts[name].samples.append(bench.measure_new_flow(build, head_v, repeat))
    breakdown = {
        "variant": head_v.name, "policy_entries": int(max(policy_sizes)),
        "noop_ns": part_noop.median,
        "new_flow_over_noop_ns": parts["full"].median - part_noop.median,
        "ct_create_ns": parts["full"].median - parts["no_ct_create"].median,
        "event_ns": parts["full"].median - parts["no_event"].median,
        "samples_ns": {k: m.samples for k, m in parts.items()}, "noop_samples_ns": part_noop.samples,
    }
    breakdown["rest_ns"] = (breakdown["new_flow_over_noop_ns"] - breakdown["ct_create_ns"]
                            - breakdown["event_ns"])
    bench.progress(f"  breakdown ({head_v.name}, N={max(policy_sizes)}): {breakdown}")
    # Audit mode: the same SYN with the match entry holding an audited drop
    # (it passes, counted ALLOW_AUDIT, its event an EVENT_AUDIT) against the
    # ordinary one, in pairs whose order alternates (drift hits both); the
    # difference is the median of the pairs' differences.
    audit = {"enforced": Measurement(), "audited": Measurement()}
    audit_noop = Measurement()
    differences: list[int] = []
    for i in range(2 * runs + 1):  # the first pair warms up, discarded

        def audited_run() -> int:
            bench.set_match_audited(head_v, True)
            try:
                return bench.measure_new_flow(bench.new_flow, head_v, repeat, Reason.ALLOW_AUDIT)
            finally:
                bench.set_match_audited(head_v, False)

        noop_ns = bench.measure_noop(head_v.syn(), repeat)
        if i % 2:
            audited_ns = audited_run()
            enforced_ns = bench.measure_new_flow(bench.new_flow, head_v, repeat)
        else:
            enforced_ns = bench.measure_new_flow(bench.new_flow, head_v, repeat)
            audited_ns = audited_run()
        if i or runs == 0:
            audit_noop.samples.append(noop_ns)
            audit["enforced"].samples.append(enforced_ns)
            audit["audited"].samples.append(audited_ns)
            differences.append(audited_ns - enforced_ns)
    audit_mode = {
        "variant": head_v.name, "policy_entries": int(max(policy_sizes)),
        "enforced_new_flow_over_noop_ns": audit["enforced"].median - audit_noop.median,
        "audited_new_flow_over_noop_ns": audit["audited"].median - audit_noop.median,
        "audited_over_enforced_ns": statistics.median(differences) if differences else 0.0,
        "extra_lookups": 0,  # by construction: the audited verdict rides in the entry found (policy.h)
        "samples_ns": {k: m.samples for k, m in audit.items()}, "noop_samples_ns": audit_noop.samples,
    }
    bench.progress(f"  audit mode ({head_v.name}, N={max(policy_sizes)}): {audit_mode}")
    # to_network on a node interface: every packet leaving the node crosses
    # it, and all but a Service's first packet carry no deferral mark.
    passthrough = Measurement()
    frame = bench.variants[0].ack()
    net_fd = bench.established.fd(TO_NETWORK)
    before = bench.counter(bench.established, DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED)
    bench.measure_noop(frame, repeat)
    bench.run(net_fd, frame, repeat)
    for _ in range(runs):
        noop.samples.append(bench.measure_noop(frame, repeat))
        res = bench.run(net_fd, frame, repeat)
        assert res.retval == TC_ACT_UNSPEC
        passthrough.samples.append(res.duration_ns)
    assert bench.counter(bench.established, DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED) == before
    bench.progress(f"  to_network unmarked: runs {passthrough.samples} ns")
    noop_ns = noop.median
    sizes = [str(n) for n in sorted(policy_sizes)]
    lo, hi = sizes[0], sizes[-1]

    def block(vname: str) -> dict:
        fig = figures[vname]
        out: dict = {}
        for kind in KINDS:
            out[f"{kind}_ns"] = {str(n): m.median for n, m in fig[kind].items()}
            out[f"{kind}_over_noop_ns"] = {str(n): m.median - noop_ns for n, m in fig[kind].items()}
            out[f"{kind}_samples_ns"] = {str(n): m.samples for n, m in fig[kind].items()}
        out["ratio_10k_over_1"] = {
            kind: round(out[f"{kind}_over_noop_ns"][hi] / out[f"{kind}_over_noop_ns"][lo], 3)
            if out[f"{kind}_over_noop_ns"][lo] > 0 else None
            for kind in KINDS}
        out["goals"] = goals(out)
        return out

    variants = {v.name: block(v.name) for v in bench.variants}
    head = variants[HEADLINE] if HEADLINE in variants else next(iter(variants.values()))
    result = {
        "noop_ns": noop_ns,
        "established_ns": head["established_ns"],
        "new_flow_ns": head["new_flow_ns"],
        "established_over_noop_ns": head["established_over_noop_ns"],
        "new_flow_over_noop_ns": head["new_flow_over_noop_ns"],
        "ratio_10k_over_1": head["ratio_10k_over_1"],
        "ratio_basis": f"over-noop ns, N={hi} / N={lo}",
        "goals": head["goals"],
        "goals_all_variants": {g: all(b["goals"][g] for b in variants.values()) for g in head["goals"]},
        "headline": HEADLINE if HEADLINE in variants else next(iter(variants)),
        "variants": {k: {kk: vv for kk, vv in b.items() if not kk.endswith("_samples_ns")}
                     for k, b in variants.items()},
        "samples_ns": {k: {kind: b[f"{kind}_samples_ns"] for kind in KINDS} for k, b in variants.items()},
        "noop_samples_ns": noop.samples,
        "to_network_unmarked_ns": passthrough.median,
        "to_network_unmarked_over_noop_ns": passthrough.median - noop_ns,
        "to_network_unmarked_samples_ns": passthrough.samples,
        "verdicts": verdicts,
        "new_flow_breakdown": breakdown,
        "audit_mode": audit_mode,
        "events": bench.event_stats(),
        "policy_entries_per_direction": [int(s) for s in sizes],
        "ipcache_entries": bench.ipcache_entries,
        "repeat": repeat,
        "runs": runs,
        "warmup_runs": 1,
        "statistic": "median of runs; each run is the kernel's mean ns per repetition",
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - t0, 1),
    }
    return result


def goals(block: dict) -> dict[str, bool]:
    est = block["established_over_noop_ns"].values()
    new = block["new_flow_over_noop_ns"].values()
    ratios = [r for r in block["ratio_10k_over_1"].values() if r is not None]
    return {
        "established_over_noop_le_60": max(est) <= GOAL_ESTABLISHED_NS,
        "new_flow_over_noop_le_250": max(new) <= GOAL_NEW_FLOW_NS,
        "ratio_10k_over_1_le_1_3": bool(ratios) and max(ratios) <= GOAL_RATIO,
    }


def format_table(result: dict) -> str:
    sizes = [str(n) for n in result["policy_entries_per_direction"]]
    lines = [
        f"BPF_PROG_TEST_RUN, kernel {result['kernel']}, {result['cpus']} CPUs; "
        f"{result['runs']} runs x {result['repeat']:,} repetitions (after a discarded warm-up run), "
        "median of the runs' means.",
        f"ipcache: {result['ipcache_entries']:,} entries (IPv4/IPv6 pod /32,/128 and CIDR prefixes); "
        f"policy entries N per direction for the endpoint.",
        f"noop tc program (baseline): {result['noop_ns']:.0f} ns",
        f"to_network, a node interface's program, on a packet without deferral mark: "
        f"{result['to_network_unmarked_ns']:.0f} ns ({result['to_network_unmarked_over_noop_ns']:+.0f} over noop)",
        "",
    ]
    head = f"{'variant':28} {'path':12}" + "".join(f"{'N=' + s:>16}" for s in sizes) + f"{'ratio':>8}"
    lines += [head, "-" * len(head)]
    for vname, b in result["variants"].items():
        label = VARIANTS[vname].label
        for kind in KINDS:
            cells = "".join(
                f"{b[f'{kind}_ns'][s]:>7.0f} ({b[f'{kind}_over_noop_ns'][s]:>+5.0f})" for s in sizes)
            r = b["ratio_10k_over_1"][kind]
            lines.append(f"{label:28} {kind.replace('_', ' '):12}{cells:>{16 * len(sizes)}}"
                         f"{(f'{r:.2f}' if r is not None else 'n/a'):>8}")
            label = ""
    lines += [
        "",
        "cells: ns/packet (ns over noop). ratio: over-noop ns at the largest N / at the smallest N.",
        "established = ACK of a tracked flow (normal build); new flow = SYN through ipcache, policy,",
        "conntrack create and event on every repetition (bench_ignore_conntrack_hits build).",
        "Verdict events are rate limited per CPU (token bucket), so in a 1e6-repetition run nearly all",
        "are suppressed, as they would be under a real flood of new flows: "
        + "; ".join(f"{k} build: {v['suppressed']:,} suppressed, {v['lost']:,} lost"
                    for k, v in result["events"].items())
        + " (lost = ring buffer full: the benchmark has no reader).",
        "",
    ]
    bd = result["new_flow_breakdown"]
    lines += [
        f"where a new flow's {bd['new_flow_over_noop_ns']:.0f} ns over noop go ({bd['variant']}, "
        f"N={bd['policy_entries']:,}; the same SYN through builds leaving one step out, interleaved): "
        f"conntrack insert (LRU hash update) {bd['ct_create_ns']:.0f} ns, event (token bucket) "
        f"{bd['event_ns']:.0f} ns, everything else (parse, conntrack/endpoint/Service/ipcache lookups, "
        f"policy LPM, counters) {bd['rest_ns']:.0f} ns",
        "",
        f"audit mode ({result['audit_mode']['variant']}, N={result['audit_mode']['policy_entries']:,}): a new flow "
        f"an audited policy would drop {result['audit_mode']['audited_new_flow_over_noop_ns']:.0f} ns over noop, "
        f"the same flow enforced {result['audit_mode']['enforced_new_flow_over_noop_ns']:.0f} ns "
        f"(median of paired differences {result['audit_mode']['audited_over_enforced_ns']:+.0f} ns; no extra "
        "lookup: the audited verdict is in the entry the enforced lookup finds)",
        "",
        f"goals ({result['headline']}, over noop): "
        + ", ".join(f"{k}={'met' if ok else 'MISSED'}" for k, ok in result["goals"].items()),
        "goals over all variants: "
        + ", ".join(f"{k}={'met' if ok else 'MISSED'}" for k, ok in result["goals_all_variants"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=REPEAT)
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--policy-sizes", default=",".join(map(str, POLICY_SIZES)))
    p.add_argument("--ipcache-entries", type=int, default=IPCACHE_ENTRIES)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("datapath_bench: must run as root (loads BPF programs)", file=sys.stderr)
        return 1

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through Bench.close()

    old = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    sizes = tuple(int(s) for s in args.policy_sizes.split(","))
    try:
        with Bench(ipcache_entries=args.ipcache_entries, variants=tuple(args.variants.split(","))) as bench:
            result = run_benchmark(bench, repeat=args.repeat, runs=args.runs, policy_sizes=sizes)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print(format_table(result))
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
