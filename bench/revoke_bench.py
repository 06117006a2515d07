"""One change pass with a full conntrack map, as the daemon runs it.

A synthetic node: --servers local pods, each isolated for ingress by its
own NetworkPolicy allowing TCP 80 from three client apps, --clients client
pods spread over --nodes nodes (a few local), real pinned maps
(load_datapath_programs, under a pin directory of this process) and the
conntrack map filled through its pin with --conntrack tracked connections
spread over the local pods like a real node's: each server's inbound
connections from pods of the apps its policy allows, and outbound ones of
every local pod to addresses outside the cluster.

The daemon is the real one (Daemon.reconcile_once and its revocation),
without start(): no programs attached anywhere (interfaces are given to it,
never looked up or touched).

A change revokes one pair: one server's policy stops allowing one client
app. Measured per change:

  pass      store.upsert -> Daemon.reconcile_once returns: compile, write
            the maps, status with the revision (what `last_sync_duration`
            reports); the revocation is queued, not run
  revoked   store.upsert -> the revocation that follows is done (the
            connections of the revoked pair are gone from the map)

each followed, unmeasured, by the pair's allow coming back and its
connections being tracked again, so every change meets a full map. The
baseline, in the same run: the same change as the daemon did it before
revocation moved off the pass: the pass, then the per-entry walk over the
whole map (datapath/sync.revoke_connections: two syscalls per entry, every
entry judged), inside the pass.

Goal (issue 14): change_pass_p99_le_50ms_with_100k_ct. The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import random
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import compiler_bench as cb  # noqa: E402

from enforcer.compiler.evaluate import connection_still_allowed  # noqa: E402
from enforcer.daemon.runtime import Daemon, DaemonConfig  # noqa: E402
from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS, FAMILY_V4, CtEntry, CtKey, addr_bytes  # noqa: E402
from enforcer.datapath.maps import DatapathMaps  # noqa: E402
from enforcer.datapath.source import DatapathConfig  # noqa: E402
from enforcer.datapath.sync import MapSync, revoke_connections  # noqa: E402
from enforcer.model.state import ClusterStore  # noqa: E402

PIN_PREFIX = "/sys/fs/bpf/enforcer-rbench"
NODE = "node-000"
FIRST_IFINDEX = 1000
APPS_PER_POLICY = 3
GOAL_PASS_P99_MS = 50.0
SEED = 11


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ip(node: int, host: int) -> str:
    return str(ipaddress.IPv4Address((10 << 24) | ((node + 1) << 16) | host))


def pod(name: str, ns: str, app: str, node: int, ip: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": app}, "resourceVersion": "1"},
            "spec": {"nodeName": f"node-{node:03d}", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def server_policy(i: int, apps: list[str], version: int) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"srv-{i}", "namespace": f"srv-{i}", "resourceVersion": str(version)},
            "spec": {"podSelector": {"matchLabels": {"app": f"srv-{i}"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": a}}}
                                           for a in apps],
                                  "ports": [{"protocol": "TCP", "port": 80}]}]}}


class Cluster:
    def __init__(self, servers: int, clients: int, apps: int, nodes: int, rng: random.Random) -> None:
        self.servers, self.apps = servers, apps
        # A namespace per server (its pod and policy), ten of clients.
        names = [f"srv-{i}" for i in range(servers)] + [f"cli-{n}" for n in range(10)]
        self.objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}}} for n in names]
        self.server_ip = {}
        for i in range(servers):
            self.server_ip[i] = _ip(0, 2 + i)
            self.objects.append(pod(f"srv-{i}", f"srv-{i}", f"srv-{i}", 0, self.server_ip[i], f"uid-s{i}"))
        self.client_ips: dict[str, list[str]] = {f"cli-{a}": [] for a in range(apps)}
        hosts: dict[int, int] = {0: 2 + servers}
        for j in range(clients):
            node = j % nodes
            host = hosts.get(node, 2)
            hosts[node] = host + 1
            app = f"cli-{j % apps}"
            ip = _ip(node, host)
            self.client_ips[app].append(ip)
            self.objects.append(pod(f"cli-{j}", f"cli-{j % 10}", app, node, ip, f"uid-c{j}"))
        self.allowed = {i: [f"cli-{(i * APPS_PER_POLICY + k) % apps}" for k in range(APPS_PER_POLICY)]
                        for i in range(servers)}
        self.objects += [server_policy(i, self.allowed[i], 1) for i in range(servers)]


@contextlib.contextmanager
def datapath(tag: str) -> Iterator[tuple[DatapathConfig, DatapathMaps]]:
    with cb.pinned_datapath(Path(f"{PIN_PREFIX}-{os.getpid()}{tag}")) as (config, maps):
        yield config, maps


def make_daemon(config: DatapathConfig, maps: DatapathMaps, store: ClusterStore, c: Cluster) -> Daemon:
    """The real daemon, wired to the maps without start(): nothing is
    attached, interfaces are given."""
    d = Daemon(DaemonConfig(node_name=NODE, datapath=config, node_devices=()), store)
    d.loaded = SimpleNamespace(fds={})  # type: ignore[assignment]
    d.maps = maps
    d.sync = MapSync(maps)
    d._previous_attachments = set()
    ifindex = {f"srv-{i}/srv-{i}": FIRST_IFINDEX + i for i in range(c.servers)}
    d.resolver.resolve = lambda pods: {p.key: ifindex[p.key] for p in pods if p.key in ifindex}  # type: ignore
    d._attach = lambda desired: None  # type: ignore[method-assign]
    return d


def ct_entry(ep_id: int, ifindex: int, pod_ip: str, peer_ip: str, pod_port: int, peer_port: int,
             origin: int) -> tuple[bytes, bytes]:
    k = CtKey(pod=addr_bytes(ipaddress.ip_address(pod_ip)), peer=addr_bytes(ipaddress.ip_address(peer_ip)),
              ifindex=ifindex, pod_port=socket.htons(pod_port), peer_port=socket.htons(peer_port),
              family=FAMILY_V4, proto=6)
    v = CtEntry(expires_ns=1 << 62, endpoint_id=ep_id, origin=origin, reason=0)
    return bytes(k), bytes(v)


def fill_conntrack(d: Daemon, c: Cluster, n: int, rng: random.Random) -> dict[tuple[int, str], tuple[bytes, bytes]]:
    """n tracked connections: 90% inbound to servers from the client apps
    their policy allows, 10% outbound from servers to the world. Returns,
    per (server, app), the packed entries (to track them again)."""
    assert d.desired is not None and d.maps is not None
    eps = {spec.pod: spec for spec in d.desired.endpoints.values()}
    by_pair: dict[tuple[int, str], tuple[bytearray, bytearray]] = {}
    keys, values = bytearray(), bytearray()
    inbound = n * 9 // 10
    for m in range(n):  # (server, peer, port) unique: no two entries share a key
        i = m % c.servers
        ep = eps[f"srv-{i}/srv-{i}"]
        if m < inbound:
            app = c.allowed[i][m // c.servers % APPS_PER_POLICY]
            peer = rng.choice(c.client_ips[app])
            k, v = ct_entry(ep.endpoint_id, ep.ifindex, c.server_ip[i], peer, 80, 1024 + m // c.servers,
                            DIR_INGRESS)
            pk, pv = by_pair.setdefault((i, app), (bytearray(), bytearray()))
            pk += k
            pv += v
        else:
            peer = str(ipaddress.IPv4Address((198 << 24) | (51 << 16) | rng.randrange(1 << 16)))
            k, v = ct_entry(ep.endpoint_id, ep.ifindex, c.server_ip[i], peer, 1024 + m // c.servers, 443,
                            DIR_EGRESS)
        keys += k
        values += v
    ct = d.maps["conntrack"]
    written = ct.update_batch(keys, values, n)
    assert written == n, (written, n)
    return {p: (bytes(k), bytes(v)) for p, (k, v) in by_pair.items()}


def _ms(s: float) -> float:
    return round(s * 1e3, 2)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else 0.0


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": _ms(percentile(values, 50)), "p99_ms": _ms(percentile(values, 99)),
            "max_ms": _ms(max(values)) if values else 0.0}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(SEED)
    c = Cluster(args.servers, args.clients, args.apps, args.nodes, rng)
    store = ClusterStore()
    store.replace_all(c.objects, [])
    with datapath("-wtr" if args.tag is None else args.tag) as (config, maps):
        ct_max = maps["conntrack"].max_entries
        if args.conntrack > ct_max:
            raise SystemExit(f"--conntrack {args.conntrack} exceeds the conntrack map's {ct_max} entries")
        d = make_daemon(config, maps, store, c)
        t = time.monotonic()
        d.reconcile_once()
        d.finish_revocation()
        log(f"first pass {_ms(time.monotonic() - t)} ms; {len(d.desired.policy)} policy entries")  # type: ignore
        pairs = fill_conntrack(d, c, args.conntrack, rng)
        ct = maps["conntrack"]
        log(f"conntrack: {ct.count()} entries")
        version = [1]

        def set_policy(i: int, apps: list[str]) -> None:
            version[0] += 1
            store.upsert(server_policy(i, apps, version[0]))

        def change(i: int) -> tuple[str, int]:
            """Revoke the pair (server i, its first app)."""
            app = c.allowed[i][0]
            set_policy(i, c.allowed[i][1:])
            return app, len(pairs[(i, app)][0]) // ctypes.sizeof(CtKey)

        def restore(i: int, app: str, n: int) -> None:
            set_policy(i, c.allowed[i])
            d.reconcile_once()
            d.finish_revocation()
            k, v = pairs[(i, app)]
            assert ct.update_batch(k, v, n) == n

        # Baseline: the pass, then the whole map walked entry by entry.
        baseline: list[float] = []
        for m in range(args.baseline_changes):
            i = rng.randrange(c.servers)
            t = time.perf_counter()
            app, n = change(i)
            d.reconcile_once()
            desired = d.desired
            assert desired is not None
            by_id = desired.endpoint_by_id()
            revoked = revoke_connections(
                maps, lambda conn, s=desired, b=by_id: connection_still_allowed(s, b, conn),  # type: ignore[misc]
                set(), recheck_services=True)
            baseline.append(time.perf_counter() - t)
            d.finish_revocation()
            assert revoked == n, (revoked, n)
            restore(i, app, n)
            log(f"baseline change {m + 1}: {_ms(baseline[-1])} ms, {revoked} revoked")

        passes: list[float] = []
        revoked_at: list[float] = []
        judged: list[int] = []
        for _ in range(args.changes):
            i = rng.randrange(c.servers)
            before = d.status.since_start["revoked"]
            t = time.perf_counter()
            app, n = change(i)
            d.reconcile_once()
            passes.append(time.perf_counter() - t)
            job = d._revocation
            d.finish_revocation()
            revoked_at.append(time.perf_counter() - t)
            judged.append(job.result.judged if job is not None else 0)
            got = d.status.since_start["revoked"] - before
            assert got == n, (got, n)
            restore(i, app, n)
        entries = ct.count()
    p99 = percentile(passes, 99)
    result = {
        "conntrack_entries": entries, "servers": args.servers, "clients": args.clients,
        "policy_entries": len(d.desired.policy) if d.desired else 0,
        "revoked_per_change": round(sum(len(pairs[p][0]) for p in pairs) / len(pairs) / ctypes.sizeof(CtKey), 1),
        "pass": stats(passes), "pass_and_revocation": stats(revoked_at),
        "judged_per_change_p50": percentile([float(j) for j in judged], 50),
        "baseline_pass_with_full_walk": stats(baseline),
        "goals": {"change_pass_p99_le_50ms_with_100k_ct":
                  bool(passes) and p99 * 1e3 <= GOAL_PASS_P99_MS and args.conntrack >= 100_000},
    }
    return result


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{r['conntrack_entries']} tracked connections, {r['servers']} local pods, "
             f"{r['policy_entries']} policy entries; ~{r['revoked_per_change']} connections revoked per change",
             f"{'':34} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
    for label, key in (("pass (maps written, reported)", "pass"),
                       ("pass + revocation done", "pass_and_revocation"),
                       ("before: pass with full walk", "baseline_pass_with_full_walk")):
        s = r[key]
        lines.append(f"{label:34} {s['n']:>4} {s['p50_ms']:>9} {s['p99_ms']:>9} {s['max_ms']:>9}")
    lines.append(f"goals: {r['goals']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conntrack", type=int, default=100_000)
    ap.add_argument("--servers", type=int, default=200)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--apps", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--baseline-changes", type=int, default=5)
    ap.add_argument("--tag", default=None, help="pin directory suffix")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("revoke_bench: needs root (BPF maps)", file=sys.stderr)
        return 2
    r = run(args)
    print(format_table(r))
    print(json.dumps(r, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
