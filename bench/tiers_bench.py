"""Tiers benchmark: what ClusterNetworkPolicy's tiers cost a new flow, and
the compile, beside NetworkPolicy alone.

Two clusters, compiled for node-000 by the real compiler:

  np        the compiler benchmark's cluster (bench/compiler_bench.py:
            10,000 pods, 10,000 NetworkPolicies by default, same seed);
  tiered    the same cluster plus 1,000 ClusterNetworkPolicies
            (cluster_policies(): Admin and Baseline, namespaces / pods /
            networks peers, port numbers, ranges and named ports, Accept,
            Deny and Pass; every subject selects namespaces, or pods in
            namespaces, that have pods on node-000).

Each compiled state (policy map, ipcache, endpoints) is written with MapSync
into its own new-flow build of bpf/pod_tc.c (bench_ignore_conntrack_hits: a
SYN takes the whole new-flow path on every repetition), pins under
/sys/fs/bpf/enforcer-tbench-<pid>-<n>-{np,tiered}, removed at the end, also
on failure. The measured pods' endpoint entries are moved to ifindex 1 (the
loopback device a test-run skb appears on) in both builds alike.

Flows: TCP SYNs (IPv4) of local pods governed by a cluster policy in the
measured direction (egress: from_pod, ingress: to_pod), to or from other
pods, on the ports they serve. Each is judged offline in both states
(compiler/evaluate.py, as the datapath decides) and grouped by class:
direction, NetworkPolicy-alone verdict reason -> tiered verdict reason
(e.g. ingress ALLOW_POLICY->ALLOW_ADMIN). A few flows per class, on
different endpoints, are measured with BPF_PROG_TEST_RUN in both builds and
the no-op program, interleaved (noop, np, tiered; one discarded warm-up
round, then `runs` rounds); the figure of a flow is the median of its
tiered runs minus the median of its np runs, and a class's is the median
over its flows. Every frame is first checked to get the verdict evaluate.py
predicts, and every measured run to be counted under that reason.

The goal, tiers.new_flow_over_np_le_20ns: in every like-for-like class (the
policy map decides with NetworkPolicy alone too, and the verdict does not
change: the same lookups and the same allow or drop path) a new flow costs
at most 20 ns more than with NetworkPolicy alone. Classes where the verdict
changes, or where only a cluster policy makes the map decide (NetworkPolicy
leaves that direction open: no lookup at all without tiers), are reported
beside it.

The compile is measured in a fresh process per state (the manifests built
as dicts, then parse into a ClusterStore and compile): seconds and VmRSS
before, after (store, compiler and result alive) and at peak (VmHWM).

Prints a table, then as its last line one JSON object with every figure.
Goals are reported, never asserted: the exit status is 0 unless the
benchmark itself fails.

Run as root: `make bench` or `.venv/bin/python bench/tiers_bench.py`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import ipaddress
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import compiler_bench as cb  # noqa: E402

from enforcer.compiler.compile import Compiler, DesiredState  # noqa: E402
from enforcer.compiler.evaluate import evaluate  # noqa: E402
from enforcer.datapath import bpfsys  # noqa: E402
from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS  # noqa: E402
from enforcer.datapath.reasons import REASON_SLOTS, Reason  # noqa: E402
from enforcer.datapath.source import DatapathConfig  # noqa: E402
from enforcer.datapath.sync import MapSync  # noqa: E402
from enforcer.model.state import ClusterStore  # noqa: E402

PIN_PREFIX = "/sys/fs/bpf/enforcer-tbench"
_instances = itertools.count()

# Defaults of a full run.
PODS = cb.PODS
POLICIES = 10_000
CLUSTER_POLICIES = 1_000
REPEAT = 500_000
RUNS = 5
FLOWS_PER_CLASS = 3
SEED = cb.SEED

GOAL_OVER_NP_NS = 20.0

TC_ACT_UNSPEC = -1
TC_ACT_SHOT = 2
LOOPBACK_IFINDEX = 1
IPPROTO_TCP = 6
POD_EPHEMERAL_PORT = 40000
PEER_EPHEMERAL_PORT = 50000
SYSTEM_NAMESPACES = ("kube-system", "monitoring", "ingress-nginx", "logging")
# Verdicts the policy map gives (a lookup was made).
MAP_REASONS = frozenset(("ALLOW_POLICY", "DROP_POLICY", "ALLOW_ADMIN", "DROP_ADMIN", "ALLOW_BASELINE",
                         "DROP_BASELINE"))
NP_MAP_REASONS = frozenset(("ALLOW_POLICY", "DROP_POLICY"))
DROP_REASONS = frozenset(("DROP_POLICY", "DROP_ADMIN", "DROP_BASELINE"))


def log(msg: str) -> None:
    print(f"[tbench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cluster policies

def _cnp(name: str, tier: str, priority: int, subject: dict[str, Any], ingress: list | None = None,
         egress: list | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": subject}
    if ingress:
        spec["ingress"] = ingress
    if egress:
        spec["egress"] = egress
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name, "resourceVersion": "1"}, "spec": spec}


def _by_name(ns: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": ns}}


def _tcp(port: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"number": port}}}


def _udp(port: int) -> dict[str, Any]:
    return {"udp": {"destinationPort": {"number": port}}}


def _tcp_range(start: int, end: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"range": {"start": start, "end": end}}}}


DNS_PEER = {"pods": {"namespaceSelector": _by_name("kube-system"),
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}
PROMETHEUS_PEER = {"pods": {"namespaceSelector": _by_name("monitoring"),
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}}
INGRESS_PEER = {"pods": {"namespaceSelector": _by_name("ingress-nginx"),
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}}
METADATA_NETWORKS = ["169.254.169.254/32", "fd00:ec2::254/128"]
EXTERNAL_NETWORKS = ["172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]


def _subject(c: cb.Cluster, ns: str, rng: random.Random) -> dict[str, Any]:
    """A subject selecting namespace ns (or pods in it: a workload, a tier)
    -- or, now and then, every namespace of its team and environment."""
    labels = c.namespaces[ns]["metadata"]["labels"]
    roll = rng.random()
    if roll < 0.45:
        return {"namespaces": _by_name(ns)}
    if roll < 0.60 and "team" in labels and "env" in labels:
        return {"namespaces": {"matchLabels": {"team": labels["team"], "env": labels["env"]}}}
    deps = c.deployments.get(ns) or []
    if roll < 0.85 and deps:
        d = rng.choice(deps)
        return {"pods": {"namespaceSelector": _by_name(ns),
                         "podSelector": {"matchLabels": {"app": d.labels.get("app", d.name)}}}}
    return {"pods": {"namespaceSelector": _by_name(ns),
                     "podSelector": {"matchExpressions": [
                         {"key": "tier", "operator": "In", "values": [rng.choice(["backend", "data", "frontend"])]}]}}}


def _kind_rules(kind: str, c: cb.Cluster, ns: str, rng: random.Random) -> tuple[list | None, list | None]:
    """(ingress, egress) rules of one cluster policy kind for namespace ns."""
    labels = c.namespaces[ns]["metadata"]["labels"]
    team, env = labels.get("team", "x"), labels.get("env", "prod")
    other_env = {"prod": "dev", "staging": "dev", "dev": "staging"}[env] if env in ("prod", "staging", "dev") else "dev"
    if kind == "admin-deny-from-env":
        return [{"name": "no-other-env", "action": "Deny",
                 "from": [{"namespaces": {"matchLabels": {"env": other_env, "team": rng.choice(cb.TEAMS)}}}]}], None
    if kind == "admin-accept-monitoring":
        return [{"name": "scrape", "action": "Accept", "from": [PROMETHEUS_PEER],
                 "protocols": [{"destinationNamedPort": "metrics"}, _tcp(9090)]}], None
    if kind == "admin-pass-team":
        return [{"name": "team-to-np", "action": "Pass",
                 "from": [{"namespaces": {"matchLabels": {"team": team}}}],
                 "protocols": [_tcp(8080), _tcp(50051)]}], None
    if kind == "admin-deny-ports":
        return [{"name": "sensitive-ports", "action": "Deny", "from": [{"namespaces": {}}],
                 "protocols": [_tcp(rng.choice([23, 2375, 6443])), _tcp_range(2000, 2999)]}], None
    if kind == "admin-accept-ingress":
        return [{"name": "from-ingress", "action": "Accept", "from": [INGRESS_PEER],
                 "protocols": [_tcp(80), _tcp(443), _tcp(8080)]}], None
    if kind == "admin-deny-metadata":
        return None, [{"name": "no-metadata", "action": "Deny", "to": [{"networks": list(METADATA_NETWORKS)}]}]
    if kind == "admin-accept-dns":
        return None, [{"name": "dns", "action": "Accept", "to": [DNS_PEER], "protocols": [_udp(53), _tcp(53)]}]
    if kind == "admin-deny-nodeports":
        return None, [{"name": "no-nodeports", "action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
                       "protocols": [_tcp_range(30000, 32767)]}]
    if kind == "admin-pass-data":
        return None, [{"name": "data-to-np", "action": "Pass",
                       "to": [{"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                                        "podSelector": {"matchLabels": {"tier": "data"}}}}],
                       "protocols": [{"destinationNamedPort": "db"}, {"destinationNamedPort": "redis"}]}]
    if kind == "baseline-deny-ingress":
        return [{"name": "default-deny", "action": "Deny", "from": [{"namespaces": {}}]}], None
    if kind == "baseline-accept-namespace":
        return [{"name": "same-namespace", "action": "Accept", "from": [{"namespaces": _by_name(ns)}]}], None
    if kind == "baseline-accept-team-ports":
        return [{"name": "team-http", "action": "Accept",
                 "from": [{"namespaces": {"matchLabels": {"team": team}}}],
                 "protocols": [_tcp_range(8000, 8999), _tcp(50051)]}], None
    if kind == "baseline-pass-env":
        return [{"name": "env-default", "action": "Pass",
                 "from": [{"namespaces": {"matchLabels": {"env": env}}}]}], None
    if kind == "baseline-deny-external":
        return None, [{"name": "no-external", "action": "Deny", "to": [{"networks": list(EXTERNAL_NETWORKS)}]},
                      {"name": "dns", "action": "Accept", "to": [DNS_PEER], "protocols": [_udp(53), _tcp(53)]}]
    raise ValueError(kind)


# Kinds with weights: about 60% Admin, 40% Baseline.
CLUSTER_POLICY_MIX = [
    ("admin-deny-from-env", 10), ("admin-accept-monitoring", 8), ("admin-pass-team", 8), ("admin-deny-ports", 6),
    ("admin-accept-ingress", 6), ("admin-deny-metadata", 8), ("admin-accept-dns", 6), ("admin-deny-nodeports", 4),
    ("admin-pass-data", 4),
    ("baseline-deny-ingress", 10), ("baseline-accept-namespace", 10), ("baseline-accept-team-ports", 8),
    ("baseline-pass-env", 5), ("baseline-deny-external", 7),
]


def local_namespaces(c: cb.Cluster, node: str = cb.NODE) -> list[str]:
    """Application namespaces with a running pod on `node`."""
    out = {raw["metadata"]["namespace"] for raw in c.pods.values()
           if raw["spec"]["nodeName"] == node and raw["status"]["phase"] == "Running"}
    return sorted(out - set(SYSTEM_NAMESPACES))


def cluster_policies(c: cb.Cluster, n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """n ClusterNetworkPolicies (API dicts) of CLUSTER_POLICY_MIX, each
    about one namespace that has pods on the benchmarked node."""
    rng = random.Random(seed * 31 + n)
    namespaces = local_namespaces(c) or sorted(set(c.namespaces) - set(SYSTEM_NAMESPACES))
    kinds, weights = [k for k, _ in CLUSTER_POLICY_MIX], [w for _, w in CLUSTER_POLICY_MIX]
    out = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        ns = rng.choice(namespaces)
        tier = "Admin" if kind.startswith("admin-") else "Baseline"
        ingress, egress = _kind_rules(kind, c, ns, rng)
        out.append(_cnp(f"{kind}-{i:04d}", tier, rng.randrange(0, 1001), _subject(c, ns, rng), ingress, egress))
    return out


# ---------------------------------------------------------------- compiling

@dataclass
class Compiled:
    name: str
    objects: int
    desired: DesiredState
    parse_s: float
    compile_s: float

    def entries(self) -> dict[str, int]:
        d = self.desired
        return {"policy": len(d.policy), "ipcache": len(d.ipcache), "endpoints": len(d.endpoints),
                "identities": len(d.identities), "rules": len(d.rules),
                "governed_directions": len(d.tier_programs)}


def compile_objects(name: str, objects: list[dict[str, Any]]) -> Compiled:
    node = cb.Node()
    gc.collect()
    t0 = time.perf_counter()
    store = ClusterStore()
    store.replace_all(objects, [])
    t1 = time.perf_counter()
    snap = store.snapshot()
    desired = Compiler().compile(snap, node.context(snap))
    t2 = time.perf_counter()
    if desired.errors:
        raise RuntimeError(f"{name}: {len(desired.errors)} objects did not parse, e.g. {desired.errors[0]}")
    return Compiled(name, len(objects), desired, round(t1 - t0, 3), round(t2 - t1, 3))


def bench_objects(kind: str, n_pods: int, n_policies: int, n_cluster: int, seed: int, n_namespaces: int,
                  n_nodes: int) -> list[dict[str, Any]]:
    c = cb.build_cluster(n_pods, n_policies, seed, n_namespaces, n_nodes)
    objects = c.objects()
    if kind == "tiered":
        objects += cluster_policies(c, n_cluster, seed)
    return objects


def compile_child(kind: str, n_pods: int, n_policies: int, n_cluster: int, seed: int, n_namespaces: int,
                  n_nodes: int) -> dict[str, Any]:
    """In a fresh process: the objects as dicts (baseline RSS), then parse
    and compile (RSS with the store, the compiler and its result alive)."""
    objects = bench_objects(kind, n_pods, n_policies, n_cluster, seed, n_namespaces, n_nodes)
    gc.collect()
    base = cb._vm("VmRSS")
    t0 = time.perf_counter()
    store = ClusterStore()
    store.replace_all(objects, [])
    t1 = time.perf_counter()
    snap = store.snapshot()
    desired = Compiler().compile(snap, cb.Node().context(snap))
    t2 = time.perf_counter()
    gc.collect()
    after = cb._vm("VmRSS")
    return {
        "parse_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
        "rss_objects_mb": cb._mb(base), "rss_compiled_mb": cb._mb(after), "rss_compile_mb": cb._mb(after - base),
        "rss_peak_mb": cb._mb(cb._vm("VmHWM")), "policy_entries": len(desired.policy),
    }


def measure_compile(kind: str, args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-child", kind, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"compile child ({kind}) failed: {proc.stderr.strip()[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- flows

@dataclass(frozen=True)
class Flow:
    """A SYN through one pod's hook: `pod` is the local pod whose policy
    direction is measured, `peer` the other end."""

    direction: int
    pod: str  # namespace/name
    pod_ip: str
    peer: str
    peer_ip: str
    port: int
    np_reason: str
    tiered_reason: str

    @property
    def prog(self) -> str:
        return "from_pod" if self.direction == DIR_EGRESS else "to_pod"

    @property
    def dir_name(self) -> str:
        return "egress" if self.direction == DIR_EGRESS else "ingress"

    @property
    def klass(self) -> str:
        return f"{self.dir_name} {self.np_reason}->{self.tiered_reason}"

    @property
    def like_for_like(self) -> bool:
        return (self.np_reason in NP_MAP_REASONS and self.tiered_reason in MAP_REASONS
                and (self.np_reason in DROP_REASONS) == (self.tiered_reason in DROP_REASONS))

    def frame(self) -> bytes:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether

        if self.direction == DIR_EGRESS:
            src, dst, sport = self.pod_ip, self.peer_ip, POD_EPHEMERAL_PORT
        else:
            src, dst, sport = self.peer_ip, self.pod_ip, PEER_EPHEMERAL_PORT
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
                     / TCP(sport=sport, dport=self.port, flags="S", seq=1000))

    def describe(self) -> str:
        arrow = f"{self.pod} -> {self.peer}" if self.direction == DIR_EGRESS else f"{self.peer} -> {self.pod}"
        return f"{arrow}:{self.port}/tcp"


def _hook_reason(state: DesiredState, direction: int, pod_ip: str, peer_ip: str, port: int) -> str:
    pod, peer = ipaddress.ip_address(pod_ip), ipaddress.ip_address(peer_ip)
    src, dst = (pod, peer) if direction == DIR_EGRESS else (peer, pod)
    hooks = evaluate(state, src, dst, IPPROTO_TCP, port).hooks
    hook = hooks[0] if direction == DIR_EGRESS else hooks[-1]
    assert hook.pod == str(state.endpoints[pod].pod)
    return Reason(hook.code).name


def _tcp_ports(raw: dict[str, Any]) -> list[int]:
    return sorted({p["containerPort"] for ctr in raw["spec"]["containers"] for p in ctr.get("ports", [])
                   if p.get("protocol", "TCP") == "TCP"})


def find_flows(np: DesiredState, tiered: DesiredState, objects: list[dict[str, Any]], per_class: int,
               seed: int = SEED, peers_per_pod: int = 40) -> list[Flow]:
    """Up to per_class flows of every class, on distinct endpoints where
    there are enough: local pods a cluster policy governs in the direction,
    peers sampled among the running pods, ports they serve (and a few
    others)."""
    rng = random.Random(seed * 17)
    pods = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in objects
            if o["kind"] == "Pod" and o["status"]["phase"] == "Running"}
    by_ip = {o["status"]["podIP"]: k for k, o in pods.items()}
    local = sorted((e.pod, str(ip)) for ip, e in tiered.endpoints.items()
                   if ip.version == 4 and str(ip) in by_ip)
    rng.shuffle(local)
    peers = sorted(pods)
    extra_ports = [23, 2375, 2500, 6443, 30080]
    classes: dict[str, list[Flow]] = {}
    for pod, pod_ip in local:
        ep = tiered.endpoints[ipaddress.ip_address(pod_ip)]
        if ipaddress.ip_address(pod_ip) not in np.endpoints:
            continue
        for direction in (DIR_EGRESS, DIR_INGRESS):
            if (ep.endpoint_id, direction) not in tiered.tier_programs:
                continue
            seen_here: set[str] = set()
            for peer in rng.sample(peers, min(peers_per_pod, len(peers))):
                if peer == pod:
                    continue
                peer_ip = pods[peer]["status"]["podIP"]
                server = pods[pod] if direction == DIR_INGRESS else pods[peer]
                for port in _tcp_ports(server) + [rng.choice(extra_ports)]:
                    t = _hook_reason(tiered, direction, pod_ip, peer_ip, port)
                    n = _hook_reason(np, direction, pod_ip, peer_ip, port)
                    f = Flow(direction, pod, pod_ip, peer, peer_ip, port, n, t)
                    got = classes.setdefault(f.klass, [])
                    if f.klass in seen_here or len(got) >= per_class:
                        continue  # one flow per class and endpoint direction
                    got.append(f)
                    seen_here.add(f.klass)
    return [f for k in sorted(classes) for f in classes[k]]


# ---------------------------------------------------------------- datapath

@dataclass
class Build:
    name: str
    state: DesiredState
    config: Any
    programs: Any = None
    maps: Any = None
    owns_pins: bool = False

    def fd(self, prog: str) -> int:
        return int(self.programs.fd(prog))


def policy_room(state: DesiredState) -> int:
    """The benchmark build's policy map size: the compiler benchmark's, or
    the next power of two with room for the state (the daemon's default,
    DatapathConfig.policy_max, may be smaller: the table reports both)."""
    room = cb.POLICY_MAX
    while room < len(state.policy) * 5 // 4:
        room *= 2
    return room


@dataclass
class Samples:
    samples: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))


class Datapath:
    """The two new-flow builds, filled with their compiled states, and the
    no-op program. A context manager: leaving it unloads everything and
    removes the pins."""

    def __init__(self, states: dict[str, DesiredState], progress: Callable[[str], None] = log) -> None:
        base = f"{PIN_PREFIX}-{os.getpid()}-{next(_instances)}"
        self.builds = {name: Build(name, state, DatapathConfig(pin_dir=Path(f"{base}-{name}"),
                                                               policy_max=policy_room(state),
                                                               bench_ignore_conntrack_hits=True))
                       for name, state in states.items()}
        self.noop: Any = None
        self.progress = progress
        self.sync_s: dict[str, float] = {}

    def __enter__(self) -> Datapath:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        from enforcer.datapath.loader import load_datapath_programs, load_noop_program
        from enforcer.datapath.maps import DatapathMaps

        for b in self.builds.values():
            if b.config.pin_dir.exists():
                raise RuntimeError(f"{b.config.pin_dir} exists already")
            b.owns_pins = True
            t = time.monotonic()
            b.programs = load_datapath_programs(b.config)
            b.maps = DatapathMaps(b.config.pin_dir)
            self.progress(f"compiled and loaded the {b.name} build in {time.monotonic() - t:.1f}s")
            t = time.monotonic()
            report = MapSync(b.maps).apply(b.state.map_contents(), b.state.describe)
            if report.failed:
                raise RuntimeError(f"{b.name}: {report.failed} map writes failed: {report.failures[:3]}")
            self.sync_s[b.name] = round(time.monotonic() - t, 2)
            self.progress(f"  {b.name}: {report.written:,} entries written in {self.sync_s[b.name]}s")
        self.noop = load_noop_program()

    def close(self) -> None:
        from enforcer.datapath.loader import remove_pins

        for b in self.builds.values():
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
            if b.config.pin_dir.exists():
                shutil.rmtree(b.config.pin_dir, ignore_errors=True)
        if self.noop is not None:
            self.noop.cleanup()
            self.noop = None

    def on_loopback(self, flows: list[Flow]) -> None:
        """The measured pods' endpoints behind ifindex 1, in every build."""
        for b in self.builds.values():
            for ip in sorted({f.pod_ip for f in flows}):
                e = b.state.endpoints[ipaddress.ip_address(ip)]
                b.maps.set_endpoint(ip, e.endpoint_id, LOOPBACK_IFINDEX, e.identity, e.flags)

    def counter(self, b: Build, endpoint_id: int, direction: int, reason: int) -> int:
        idx = ctypes.c_uint32((endpoint_id * 2 + direction) * REASON_SLOTS + reason)
        return sum(c.packets for c in b.maps["metrics"].lookup_percpu(idx))

    def run_checked(self, name: str, f: Flow, frame: bytes, repeat: int) -> int:
        """One run of `repeat` repetitions in build `name`; the verdict and
        the reason counter must be what evaluate.py predicts. Mean ns."""
        b = self.builds[name]
        reason_name = f.np_reason if name == "np" else f.tiered_reason
        reason = int(Reason[reason_name])
        ep_id = b.state.endpoints[ipaddress.ip_address(f.pod_ip)].endpoint_id
        before = self.counter(b, ep_id, f.direction, reason)
        res = bpfsys.prog_test_run(b.fd(f.prog), frame, repeat=repeat)
        got = self.counter(b, ep_id, f.direction, reason) - before
        want = TC_ACT_SHOT if reason_name in DROP_REASONS else TC_ACT_UNSPEC
        if res.retval != want or got != repeat:
            raise AssertionError(f"{name}/{f.prog} {f.describe()}: verdict {res.retval} (want {want}), "
                                 f"{got} of {repeat} repetitions counted as {reason_name}")
        return int(res.duration_ns)

    def noop_run(self, frame: bytes, repeat: int) -> int:
        res = bpfsys.prog_test_run(self.noop.fd("noop"), frame, repeat=repeat)
        assert res.retval == TC_ACT_UNSPEC
        return int(res.duration_ns)


def measure_flows(dp: Datapath, flows: list[Flow], repeat: int, runs: int,
                  progress: Callable[[str], None] = log) -> list[dict[str, Any]]:
    out = []
    for f in flows:
        frame = f.frame()
        for name in dp.builds:
            dp.run_checked(name, f, frame, 1)
        got = {"noop": Samples(), "np": Samples(), "tiered": Samples()}
        dp.noop_run(frame, repeat)  # warm-up round, discarded
        dp.run_checked("np", f, frame, repeat)
        dp.run_checked("tiered", f, frame, repeat)
        for _ in range(runs):
            got["noop"].samples.append(dp.noop_run(frame, repeat))
            got["np"].samples.append(dp.run_checked("np", f, frame, repeat))
            got["tiered"].samples.append(dp.run_checked("tiered", f, frame, repeat))
        over = got["tiered"].median - got["np"].median
        progress(f"  {f.klass:42} {f.describe():58} np {got['np'].samples} tiered {got['tiered'].samples} "
                 f"({over:+.0f} ns)")
        out.append({"class": f.klass, "flow": f.describe(), "like_for_like": f.like_for_like,
                    "noop_ns": got["noop"].median, "np_ns": got["np"].median, "tiered_ns": got["tiered"].median,
                    "over_np_ns": over, "np_over_noop_ns": got["np"].median - got["noop"].median,
                    "tiered_over_noop_ns": got["tiered"].median - got["noop"].median,
                    "samples_ns": {k: v.samples for k, v in got.items()}})
    return out


# ---------------------------------------------------------------- the benchmark

def run_benchmark(n_pods: int = PODS, n_policies: int = POLICIES, n_cluster: int = CLUSTER_POLICIES,
                  repeat: int = REPEAT, runs: int = RUNS, per_class: int = FLOWS_PER_CLASS, seed: int = SEED,
                  n_namespaces: int = cb.NAMESPACES, n_nodes: int = cb.NODES, children: bool = True,
                  progress: Callable[[str], None] = log) -> dict[str, Any]:
    t_start = time.monotonic()
    size_args = ["--pods", str(n_pods), "--policies", str(n_policies), "--cluster-policies", str(n_cluster),
                 "--seed", str(seed), "--namespaces", str(n_namespaces), "--nodes", str(n_nodes)]
    compile_fig: dict[str, Any] = {}
    if children:
        for kind in ("np", "tiered"):
            compile_fig[kind] = measure_compile(kind, size_args)
            progress(f"compile ({kind}, fresh process): {compile_fig[kind]}")
    np_objects = bench_objects("np", n_pods, n_policies, n_cluster, seed, n_namespaces, n_nodes)
    tiered_objects = bench_objects("tiered", n_pods, n_policies, n_cluster, seed, n_namespaces, n_nodes)
    compiled = {"np": compile_objects("np", np_objects), "tiered": compile_objects("tiered", tiered_objects)}
    for name, c in compiled.items():
        progress(f"{name}: {c.objects:,} objects, parse {c.parse_s}s, compile {c.compile_s}s, {c.entries()}")
    flows = find_flows(compiled["np"].desired, compiled["tiered"].desired, tiered_objects, per_class, seed)
    classes = sorted({f.klass for f in flows})
    progress(f"{len(flows)} flows in {len(classes)} classes: {', '.join(classes)}")
    with Datapath({k: c.desired for k, c in compiled.items()}, progress) as dp:
        dp.on_loopback(flows)
        measured = measure_flows(dp, flows, repeat, runs, progress)
        sync_s = dict(dp.sync_s)

    by_class: dict[str, dict[str, Any]] = {}
    for k in classes:
        ms = [m for m in measured if m["class"] == k]
        by_class[k] = {
            "flows": len(ms), "like_for_like": ms[0]["like_for_like"],
            "over_np_ns": float(statistics.median(m["over_np_ns"] for m in ms)),
            "np_ns": float(statistics.median(m["np_ns"] for m in ms)),
            "tiered_ns": float(statistics.median(m["tiered_ns"] for m in ms)),
            "np_over_noop_ns": float(statistics.median(m["np_over_noop_ns"] for m in ms)),
            "tiered_over_noop_ns": float(statistics.median(m["tiered_over_noop_ns"] for m in ms)),
        }
    goal_classes = [k for k, v in by_class.items() if v["like_for_like"]]
    worst = max((by_class[k]["over_np_ns"] for k in goal_classes), default=None)
    other = [by_class[k]["over_np_ns"] for k in by_class if k not in goal_classes]
    noop_all = [s for m in measured for s in m["samples_ns"]["noop"]]
    entries = {k: c.entries() for k, c in compiled.items()}
    return {
        "benchmark": "tiers",
        "pods": n_pods, "policies": n_policies, "cluster_policies": n_cluster,
        "namespaces": n_namespaces, "nodes": n_nodes, "node": cb.NODE,
        "cluster_policy_mix": dict(CLUSTER_POLICY_MIX),
        "new_flow_over_np_ns": worst,
        "new_flow_over_np_basis": "worst like-for-like class: median over its flows of "
                                  "(median tiered ns - median np ns)",
        "new_flow_over_np_other_max_ns": max(other) if other else None,
        "classes": by_class,
        "goal_classes": goal_classes,
        "flows": measured,
        "noop_ns": float(statistics.median(noop_all)) if noop_all else None,
        "entries": entries,
        "policy_entries": {k: v["policy"] for k, v in entries.items()},
        "default_policy_max": DatapathConfig().policy_max,
        "fits_default_policy_map": {k: v["policy"] <= DatapathConfig().policy_max for k, v in entries.items()},
        "compile": compile_fig,
        "compile_in_bench": {k: {"parse_s": c.parse_s, "compile_s": c.compile_s} for k, c in compiled.items()},
        "compile_s": {k: v["compile_s"] for k, v in compile_fig.items()},
        "rss_compile_mb": {k: v["rss_compile_mb"] for k, v in compile_fig.items()},
        "rss_peak_mb": {k: v["rss_peak_mb"] for k, v in compile_fig.items()},
        "sync_s": sync_s,
        "goals": {f"new_flow_over_np_le_{GOAL_OVER_NP_NS:g}ns": worst is not None and worst <= GOAL_OVER_NP_NS},
        "repeat": repeat, "runs": runs, "warmup_runs": 1, "flows_per_class": per_class, "seed": seed,
        "statistic": "per flow: median of runs (each the kernel's mean ns per repetition); per class: "
                     "median over flows",
        "python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - t_start, 1),
    }


def format_table(r: dict[str, Any]) -> str:
    e, cf = r["entries"], r["compile"]
    lines = [
        f"Tiers benchmark: {r['pods']:,} pods, {r['policies']:,} NetworkPolicies, then "
        f"+{r['cluster_policies']:,} ClusterNetworkPolicies; node {r['node']}. "
        f"Python {r['python']}, kernel {r['kernel']}, {r['cpus']} CPUs.",
        "",
        f"{'':38}{'NP alone':>16}{'NP + CNP':>16}",
    ]

    def row(label: str, fn: Callable[[str], str]) -> None:
        lines.append(f"{label:38}" + "".join(f"{fn(k):>16}" for k in ("np", "tiered")))

    row("entries: policy", lambda k: f"{e[k]['policy']:,}")
    row(f"  fit the default policy map ({r['default_policy_max']:,})",
        lambda k: "yes" if r["fits_default_policy_map"][k] else "NO")
    row("entries: ipcache", lambda k: f"{e[k]['ipcache']:,}")
    row("entries: endpoints", lambda k: f"{e[k]['endpoints']:,}")
    row("identities / rules", lambda k: f"{e[k]['identities']:,} / {e[k]['rules']:,}")
    row("directions governed by a CNP", lambda k: f"{e[k]['governed_directions']:,}")
    if cf:
        row("parse into store (s)", lambda k: f"{cf[k]['parse_s']:.3f}")
        row("compile (s)", lambda k: f"{cf[k]['compile_s']:.3f}")
        row("RSS: objects as dicts (MB)", lambda k: f"{cf[k]['rss_objects_mb']}")
        row("RSS: + store, compiled (MB)", lambda k: f"{cf[k]['rss_compiled_mb']}")
        row("RSS: of parse + compile (MB)", lambda k: f"{cf[k]['rss_compile_mb']}")
        row("RSS: peak (MB)", lambda k: f"{cf[k]['rss_peak_mb']}")
    row("write maps, MapSync (s)", lambda k: f"{r['sync_s'].get(k, 0):.2f}")
    lines += ["", f"new flow (TCP SYN, BPF_PROG_TEST_RUN, {r['runs']} runs x {r['repeat']:,} repetitions, "
              f"interleaved with noop; noop {r['noop_ns'] or 0:.0f} ns):",
              f"{'class (direction NP-alone -> tiered reason)':46}{'flows':>6}{'NP ns':>9}{'tiered ns':>11}"
              f"{'over NP':>9}  goal"]
    for k, c in r["classes"].items():
        lines.append(f"{k:46}{c['flows']:>6}{c['np_ns']:>9.0f}{c['tiered_ns']:>11.0f}{c['over_np_ns']:>+9.0f}  "
                     + ("yes" if c["like_for_like"] else "-"))
    worst = r["new_flow_over_np_ns"]
    lines += [
        "",
        "goal classes: the policy map decides with NetworkPolicy alone too and the verdict is the same.",
        f"worst goal class: {'n/a' if worst is None else f'{worst:+.0f} ns'} over NetworkPolicy alone; "
        "goals: " + ", ".join(f"{k}={'met' if ok else 'MISSED'}" for k, ok in r["goals"].items()),
        f"({r['seconds']} s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=PODS)
    p.add_argument("--policies", type=int, default=POLICIES)
    p.add_argument("--cluster-policies", type=int, default=CLUSTER_POLICIES)
    p.add_argument("--namespaces", type=int, default=cb.NAMESPACES)
    p.add_argument("--nodes", type=int, default=cb.NODES)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--repeat", type=int, default=REPEAT)
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--flows-per-class", type=int, default=FLOWS_PER_CLASS)
    p.add_argument("--no-compile-processes", action="store_true",
                   help="skip the fresh-process compile (time and RSS) figures")
    p.add_argument("--compile-child", choices=("np", "tiered"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_child:
        print(json.dumps(compile_child(args.compile_child, args.pods, args.policies, args.cluster_policies,
                                       args.seed, args.namespaces, args.nodes)))
        return 0
    if os.geteuid() != 0:
        print("tiers_bench: must run as root (loads BPF programs)", file=sys.stderr)
        return 1

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through Datapath.close()

    old = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result = run_benchmark(args.pods, args.policies, args.cluster_policies, args.repeat, args.runs,
                               args.flows_per_class, args.seed, args.namespaces, args.nodes,
                               children=not args.no_compile_processes)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print(format_table(result))
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
