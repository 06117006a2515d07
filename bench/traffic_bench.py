"""End-to-end benchmark on real traffic in a netns lab: the enforcer beside
no enforcement, an iptables+ipset rendering written as kube-router writes
it, and an nftables rendering with sets and maps.

One lab (a node namespace, a client and a server pod wired Calico-style,
and a host-side veth for each of the node's other pods) per variant, all
alike, built once; the variants then take turns (A B C A B C ...) for
--reps repetitions:

  none        no enforcement (no programs, no rules, no conntrack)
  enf-N       `enforcer run --source DIR` on the cluster of compiler_bench
              (build_cluster: --pods pods over --namespaces namespaces and
              --nodes nodes, N-1 of its policies) plus the lab's pods and one
              policy admitting the client to the server, for each N of
              --policies; this node is node-000 (its ~pods/nodes pods all get
              an interface, so the daemon attaches to each)
  iptables    the largest cluster rendered as kube-router does: every
              policy's KUBE-NWPLCY chain and KUBE-SRC/KUBE-DST ipsets (pod
              selectors, ipBlocks with nomatch excepts, named ports), a
              KUBE-POD-FW chain per local pod (ESTABLISHED,RELATED accepted
              first, INVALID dropped, the node allowed, then the pod's policy
              chains, then REJECT unless marked), jumped to from
              KUBE-ROUTER-FORWARD/INPUT/OUTPUT; applied with `ipset restore`
              and `iptables-restore` (the system's iptables) in the node
              namespace
  nftables    the same policy set in one nftables table: an IPv4 set per
              peer selector, pods' chains reached through verdict maps keyed
              by address, ct state established,related accepted first; only
              the policies selecting a local pod (what this node needs);
              applied with one `nft -f` (atomic)

Per variant and repetition, client pinned to --client-cpu and server to
--server-cpu (taskset):
  tput        iperf3, one TCP stream, --tput-seconds (a Python sender if
              iperf3 is missing)
  crr         connect / 64-byte request / answer / close in a loop (a C
              helper compiled here with gcc), connections per second
  rr          64-byte ping-pong on one connection: p50 and p99 round trip
Reported: median, min and max over the repetitions, and the ratio of the
medians to the no-enforcement lab's of the same run.

Once per run:
  converge    each daemon from start to its first sync of the whole
              directory: wall seconds, CPU seconds (utime+stime) and RSS
              (VmRSS, VmHWM) then; for iptables and nftables the full sync
              (wall and CPU of ipset/iptables-restore, nft)
  update      change -> enforced on the wire: the lab's policy loses (revoke)
              or regains (grant) the probe port; a prober in the client pod
              opens a new connection every millisecond (the resolution) and
              reports when the first of three in a row saw the new verdict.
              Files: written by rename
              into the daemon's directory (default poll interval unless
              --poll-interval); kube-router: a full sync (ipset + iptables
              restore, as it does on every change); nftables: one `nft -f`
              replacing the table; watch: `enforcer run --source kubernetes`
              on the largest cluster, served by tests/kubeapi's fake API
              server inside the node namespace, the change an update of the
              policy object.

Prints a table, then as its last line one JSON object with every figure
and the goals (reported, never asserted). Namespaces are named tfb<pid>*,
pins /sys/fs/bpf/enforcer-tfb-<pid>-*; all are removed at the end, also on
failure. Nothing outside the lab's namespaces is touched.

Run as root: `.venv/bin/python bench/traffic_bench.py` (or `make bench`).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import compiler_bench as cb  # noqa: E402

from enforcer.lab.loader import DaemonProcess, remove_pin_dirs  # noqa: E402
from enforcer.lab.netns import entered, ip_batch, netns_delete, netns_list, netns_path, sysctl  # noqa: E402
from enforcer.lab.topology import (  # noqa: E402
    GATEWAY4,
    NODE_IPV4,
    NODE_IPV6,
    Pod,
    make_node_netns,
    make_pod_netns,
    stop_process,
    wire_routed_pod,
)
from enforcer.sources.directory import directory_revision  # noqa: E402

PIN_PREFIX = "/sys/fs/bpf/enforcer-tfb"
NODE = cb.NODE  # node-000: the lab node is this node of the generated cluster
NS = "tfb"       # the lab pods' namespace
CLIENT_IP, SERVER_IP = "10.1.200.2", "10.1.200.3"   # in node-000's pod range, above the generated ones
CLIENT_IP6, SERVER_IP6 = "fd00:10:0:1::c802", "fd00:10:0:1::c803"
PORT_TPUT, PORT_CRR, PORT_RR, PORT_PROBE = 5201, 7000, 7001, 7002

# Defaults of a full run.
PODS, NAMESPACES, NODES = 10_000, 100, 100
POLICIES = (1, 1_000, 10_000)
REPS = 5
TPUT_S, CRR_S, RR_S = 2.0, 1.0, 1.0
UPDATES = 10          # per direction (revoke, grant), per daemon
RULES_UPDATES = 1     # per direction for iptables (a full sync each) and nftables
# Prober: a connection attempt that has not connected after this long counts as refused.
REVOKE_TIMEOUT_MS, GRANT_TIMEOUT_MS = 25, 5

GOAL_THROUGHPUT_RATIO = 0.97
GOAL_CONN_RATE_RATIO = 0.95
GOAL_UPDATE_WATCH_MS = 100.0
GOAL_UPDATE_FILE_MS = 150.0


def log(msg: str) -> None:
    print(f"[tfbench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the C helper

C_SOURCE = r'''
/* Traffic helper of bench/traffic_bench.py, compiled by it with gcc (-O2).
 *
 *   traffic_load serve PORT_CRR PORT_RR PORT_PROBE
 *       one thread, poll(): on PORT_CRR accept, read the request, answer,
 *       close; on PORT_RR echo every message of a connection until EOF;
 *       on PORT_PROBE accept and close. Prints "ready".
 *   traffic_load crr IP PORT SECONDS
 *       connect / write 64 bytes / read the answer / close, in a loop:
 *       prints "<connections> <seconds>".
 *   traffic_load rr IP PORT SECONDS
 *       one connection, 64-byte ping-pong (TCP_NODELAY): prints
 *       "<round trips> <seconds> <p50 us> <p99 us>".
 *   traffic_load probe IP PORT WANT TIMEOUT_MS MAX_SECONDS
 *       a new connection every PROBE_GAP_US until CONFIRM in a row come out as WANT
 *       (1: connected, 0: not connected within TIMEOUT_MS or refused);
 *       prints "ready" once it has seen the opposite outcome, then
 *       "<CLOCK_MONOTONIC ns at the start of the first of them> <attempts>",
 *       or "timeout".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64
#define CONFIRM 3
#define MAXFDS 64

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int listener(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) { perror("listen"); exit(1); }
    return fd;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", ip); exit(2); }
    return a;
}

static int serve(int pcrr, int prr, int pprobe) {
    struct pollfd fds[MAXFDS];
    int kind[MAXFDS], n = 3;  /* kind: 0 crr listener, 1 rr listener, 2 probe listener, 3 rr connection */
    char buf[4096];
    fds[0].fd = listener(pcrr); kind[0] = 0;
    fds[1].fd = listener(prr); kind[1] = 1;
    fds[2].fd = listener(pprobe); kind[2] = 2;
    for (int i = 0; i < 3; i++) fds[i].events = POLLIN;
    printf("ready\n"); fflush(stdout);
    for (;;) {
        if (poll(fds, n, -1) < 0) { if (errno == EINTR) continue; perror("poll"); return 1; }
        for (int i = 0; i < n; i++) {
            if (!fds[i].revents) continue;
            fds[i].revents = 0;
            if (kind[i] == 0) {
                int c = accept(fds[i].fd, NULL, NULL);
                if (c < 0) continue;
                ssize_t r = read(c, buf, MSG);
                if (r > 0 && write(c, buf, r) < 0) { /* peer gone */ }
                close(c);
            } else if (kind[i] == 2) {
                int c = accept(fds[i].fd, NULL, NULL);
                if (c >= 0) close(c);
            } else if (kind[i] == 1) {
                int c = accept(fds[i].fd, NULL, NULL), one = 1;
                if (c < 0) continue;
                if (n == MAXFDS) { close(c); continue; }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fds[n].fd = c; fds[n].events = POLLIN; fds[n].revents = 0; kind[n] = 3; n++;
            } else {
                ssize_t r = read(fds[i].fd, buf, sizeof buf);
                if (r <= 0 || write(fds[i].fd, buf, r) != r) {
                    close(fds[i].fd);
                    fds[i] = fds[n - 1]; kind[i] = kind[n - 1]; n--; i--;
                }
            }
        }
    }
}

static int read_full(int fd, char *buf, int len) {
    int got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r <= 0) return -1;
        got += r;
    }
    return 0;
}

static int crr(const char *ip, int port, double seconds) {
    struct sockaddr_in a = addr_of(ip, port);
    char buf[MSG];
    memset(buf, 'x', sizeof buf);
    long long start = now_ns(), end = start + (long long)(seconds * 1e9), count = 0, errors = 0;
    while (now_ns() < end) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, buf, MSG) == MSG
            && read_full(fd, buf, MSG) == 0)
            count++;
        else
            errors++;
        close(fd);
    }
    printf("%lld %.6f %lld\n", count, (now_ns() - start) / 1e9, errors);
    return 0;
}

static int cmp_ll(const void *x, const void *y) {
    long long a = *(const long long *)x, b = *(const long long *)y;
    return (a > b) - (a < b);
}

static int rr(const char *ip, int port, double seconds) {
    struct sockaddr_in a = addr_of(ip, port);
    char buf[MSG];
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    memset(buf, 'y', sizeof buf);
    size_t cap = 1 << 20, n = 0;
    long long *lat = malloc(cap * sizeof *lat);
    long long start = now_ns(), end = start + (long long)(seconds * 1e9), t = start;
    while (t < end) {
        if (write(fd, buf, MSG) != MSG || read_full(fd, buf, MSG)) { perror("rr"); return 1; }
        long long t2 = now_ns();
        if (n == cap) { cap *= 2; lat = realloc(lat, cap * sizeof *lat); }
        lat[n++] = t2 - t;
        t = t2;
    }
    close(fd);
    qsort(lat, n, sizeof *lat, cmp_ll);
    printf("%zu %.6f %.3f %.3f\n", n, (t - start) / 1e9, lat[n / 2] / 1e3, lat[(size_t)(n * 0.99)] / 1e3);
    return 0;
}

/* 1: connected within timeout_ms; 0: not (timeout, refused, unreachable). */
static int attempt(struct sockaddr_in *a, int timeout_ms) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), ok = 0;
    struct linger lg = {1, 0};  /* close with RST: no TIME_WAIT pile-up */
    if (connect(fd, (struct sockaddr *)a, sizeof *a) == 0) ok = 1;
    else if (errno == EINPROGRESS) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, timeout_ms) == 1) {
            int err = 0; socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            ok = err == 0;
        }
    }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return ok;
}

#define PROBE_GAP_US 1000
static int probe(const char *ip, int port, int want, int timeout_ms, double max_seconds) {
    struct sockaddr_in a = addr_of(ip, port);
    long long end = now_ns() + (long long)(max_seconds * 1e9), first = 0, attempts = 0;
    int run = 0, ready = 0, other = 0;
    while (now_ns() < end) {
        long long t = now_ns();
        int ok = attempt(&a, timeout_ms);
        attempts++;
        if (!ready) {  /* the starting state must be the other one, twice in a row */
            other = ok != want ? other + 1 : 0;
            if (other >= 2) { ready = 1; attempts = 0; printf("ready\n"); fflush(stdout); }
            continue;
        }
        if (ok == want) {
            if (run++ == 0) first = t;
            if (run >= CONFIRM) { printf("%lld %lld\n", first, attempts); return 0; }
        } else
            run = 0;
        /* Attempts start PROBE_GAP_US apart (the resolution): back to back,
         * thousands of connections a second would load the node's two CPUs
         * and slow the daemon being measured. */
        long long next = t + PROBE_GAP_US * 1000LL, wait = next - now_ns();
        if (wait > 0) usleep((useconds_t)(wait / 1000));
    }
    printf("timeout\n");
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && !strcmp(argv[1], "serve")) return serve(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "crr")) return crr(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "rr")) return rr(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 7 && !strcmp(argv[1], "probe"))
        return probe(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]));
    fprintf(stderr, "usage: see the top of traffic_load.c\n");
    return 2;
}
'''


def build_helper(workdir: Path) -> Path:
    src = workdir / "traffic_load.c"
    src.write_text(C_SOURCE)
    out = workdir / "traffic_load"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True, capture_output=True, text=True)
    return out


# ---------------------------------------------------------------- the cluster

def lab_objects(ports: Iterable[int]) -> list[dict[str, Any]]:
    """The lab's namespace, its two pods on node-000, and the one policy
    that isolates the server and admits the client on `ports`."""
    def pod(name: str, v4: str, v6: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "uid": f"tfb-{name}", "labels": {"app": f"tfb-{name}"},
                             "resourceVersion": "1"},
                "spec": {"nodeName": NODE, "containers": [{"name": name, "image": "tfb", "ports": [
                    {"name": f"p{p}", "containerPort": p, "protocol": "TCP"}
                    for p in (PORT_TPUT, PORT_CRR, PORT_RR, PORT_PROBE)]}]},
                "status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]}}
    return [cb.namespace_obj(NS, {"team": "tfb", "env": "bench"}),
            pod("client", CLIENT_IP, CLIENT_IP6), pod("server", SERVER_IP, SERVER_IP6),
            lab_policy(ports)]


def lab_policy(ports: Iterable[int], version: int = 1) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "server-from-client", "namespace": NS, "resourceVersion": str(version)},
            "spec": {"podSelector": {"matchLabels": {"app": "tfb-server"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "tfb-client"}}}],
                                  "ports": [{"protocol": "TCP", "port": p} for p in ports]}]}}


ALL_PORTS = (PORT_TPUT, PORT_CRR, PORT_RR, PORT_PROBE)
REVOKED_PORTS = (PORT_TPUT, PORT_CRR, PORT_RR)


def cluster_objects(c: cb.Cluster, ports: Iterable[int] = ALL_PORTS) -> list[dict[str, Any]]:
    return [*c.objects(), *lab_objects(ports)]


def local_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This node's running pods with an IPv4 address, sorted by key."""
    pods = [o for o in objects if o["kind"] == "Pod" and o["spec"].get("nodeName") == NODE
            and o.get("status", {}).get("phase") == "Running" and o["status"].get("podIP")
            and not o["spec"].get("hostNetwork")]
    return sorted(pods, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))


def write_source(c: cb.Cluster, directory: Path) -> Path:
    """The cluster's manifests as compiler_bench writes them, plus the lab's
    namespace, pods (tfb/lab.json) and policy (tfb/policy.json, returned)."""
    cb.write_directory(c, directory)
    (directory / NS).mkdir()
    objs = lab_objects(ALL_PORTS)
    (directory / NS / "lab.json").write_text(json.dumps({"kind": "List", "items": objs[:3]}))
    path = directory / NS / "policy.json"
    path.write_text(json.dumps(objs[3]))
    return path


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- selectors and the rule model

def selector_matches(sel: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if sel is None:
        return True
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass
class PodInfo:
    key: str
    namespace: str
    ip: str
    labels: dict[str, str]
    ports: dict[str, tuple[str, int]]  # container port name -> (protocol, number)


@dataclass
class PortMatch:
    protocol: str
    port: str | None = None                 # "80" or "30000:32767"; None: every port
    named_ips: list[str] | None = None      # a named port: the pods it resolves on at this number


@dataclass
class Rule:
    pod_ips: list[str] | None    # peer pods (None: the rule has no pod peers)
    blocks: list[tuple[str, list[str]]]  # ipBlocks (IPv4): cidr, excepts
    any_peer: bool               # no from/to: every peer
    ports: list[PortMatch]       # empty: every port


@dataclass
class Policy:
    key: str
    namespace: str
    name: str
    targets: list[str]
    ingress: list[Rule] | None   # None: not an ingress policy
    egress: list[Rule] | None


class Index:
    """Pods, namespaces and policies of a cluster, each policy resolved into
    IPv4 address lists (what both renderings need)."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.ns_labels: dict[str, dict[str, str]] = {}
        self.pods: list[PodInfo] = []
        raws = []
        for o in objects:
            meta = o["metadata"]
            if o["kind"] == "Namespace":
                self.ns_labels[meta["name"]] = {**(meta.get("labels") or {}),
                                                "kubernetes.io/metadata.name": meta["name"]}
            elif o["kind"] == "Pod":
                st = o.get("status") or {}
                if st.get("phase") != "Running" or not st.get("podIP") or o["spec"].get("hostNetwork"):
                    continue
                if ipaddress.ip_address(st["podIP"]).version != 4:
                    continue
                ports = {p["name"]: (p.get("protocol", "TCP"), p["containerPort"])
                         for ctr in o["spec"].get("containers") or [] for p in ctr.get("ports") or [] if p.get("name")}
                self.pods.append(PodInfo(f"{meta['namespace']}/{meta['name']}", meta["namespace"], st["podIP"],
                                         meta.get("labels") or {}, ports))
            elif o["kind"] == "NetworkPolicy":
                raws.append(o)
        self.by_ns: dict[str, list[PodInfo]] = {}
        for p in self.pods:
            self.by_ns.setdefault(p.namespace, []).append(p)
        self.policies = [self._policy(o) for o in sorted(raws, key=lambda o: (o["metadata"]["namespace"],
                                                                              o["metadata"]["name"]))]

    def _peers(self, ns: str, peers: list[dict[str, Any]]) -> tuple[list[PodInfo], list[tuple[str, list[str]]]]:
        pods: dict[str, PodInfo] = {}
        blocks = []
        for peer in peers:
            if "ipBlock" in peer:
                b = peer["ipBlock"]
                if ipaddress.ip_network(b["cidr"], strict=False).version == 4:
                    blocks.append((b["cidr"], list(b.get("except") or [])))
                continue
            if "namespaceSelector" in peer:
                nss = [n for n, labels in self.ns_labels.items() if selector_matches(peer["namespaceSelector"], labels)]
            else:
                nss = [ns]
            for n in nss:
                for p in self.by_ns.get(n, ()):
                    if selector_matches(peer.get("podSelector"), p.labels):
                        pods[p.key] = p
        return list(pods.values()), blocks

    @staticmethod
    def _ports(ports: list[dict[str, Any]], resolve_on: list[PodInfo]) -> list[PortMatch]:
        out = []
        for p in ports:
            proto = p.get("protocol", "TCP")
            port = p.get("port")
            if port is None:
                out.append(PortMatch(proto))
            elif isinstance(port, int):
                out.append(PortMatch(proto, f"{port}:{p['endPort']}" if p.get("endPort") else str(port)))
            else:  # named: one match per number it resolves to, on the pods that have it
                groups: dict[int, list[str]] = {}
                for pod in resolve_on:
                    hit = pod.ports.get(port)
                    if hit and hit[0] == proto:
                        groups.setdefault(hit[1], []).append(pod.ip)
                out += [PortMatch(proto, str(n), ips) for n, ips in sorted(groups.items())]
        return out

    def _rules(self, ns: str, rules: list[dict[str, Any]], key: str, targets: list[PodInfo]) -> list[Rule]:
        out = []
        for r in rules:
            peers = r.get(key)
            pods, blocks = self._peers(ns, peers or [])
            has_pod_peers = any("ipBlock" not in p for p in peers or [])
            # Ingress named ports resolve on the policy's pods, egress ones on the peers.
            resolve_on = targets if key == "from" else pods
            ports = self._ports(r.get("ports") or [], resolve_on)
            if r.get("ports") and not ports:
                continue  # named ports that resolve nowhere: the rule admits nothing
            out.append(Rule([p.ip for p in pods] if has_pod_peers else None, blocks, not peers, ports))
        return out

    def _policy(self, o: dict[str, Any]) -> Policy:
        meta, spec = o["metadata"], o["spec"]
        ns = meta["namespace"]
        targets = [p for p in self.by_ns.get(ns, ()) if selector_matches(spec.get("podSelector") or {}, p.labels)]
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        return Policy(f"{ns}/{meta['name']}", ns, meta["name"], [p.ip for p in targets],
                      self._rules(ns, spec.get("ingress") or [], "from", targets) if "Ingress" in types else None,
                      self._rules(ns, spec.get("egress") or [], "to", targets) if "Egress" in types else None)


def _hash(*parts: object) -> str:
    """kube-router's names: base32 of a sha256, 16 characters."""
    digest = hashlib.sha256("".join(str(p) for p in parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def _nets(cidr: str) -> list[str]:
    """hash:net takes no /0: kube-router splits it in two halves."""
    net = ipaddress.ip_network(cidr, strict=False)
    return ["0.0.0.0/1", "128.0.0.0/1"] if net.prefixlen == 0 else [str(net)]


# ---------------------------------------------------------------- kube-router's rendering

@dataclass
class Rendering:
    ipsets: str
    rules: str
    sets: int = 0
    set_entries: int = 0
    rule_lines: int = 0
    chains: int = 0


def render_kube_router(index: Index, local: list[dict[str, Any]]) -> Rendering:
    """iptables-restore and ipset restore input as kube-router's network
    policy controller writes them (pkg/controllers/netpol): every policy
    gets its chain and sets; each local pod selected by one gets its
    firewall chain."""
    sets: list[str] = []
    n_sets = n_entries = 0
    rules: list[str] = []
    chains: list[str] = ["KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"]

    def ipset(name: str, kind: str, members: Iterable[str], nomatch: Iterable[str] = ()) -> str:
        nonlocal n_sets, n_entries
        # Built under a temporary name and swapped in, as kube-router's ipset restore does.
        tmp = "TMP-" + _hash(name)
        sets.append(f"create {tmp} {kind} family inet hashsize 1024 maxelem 65536 -exist")
        sets.append(f"flush {tmp}")
        for m in members:
            sets.append(f"add {tmp} {m} -exist")
            n_entries += 1
        for m in nomatch:
            sets.append(f"add {tmp} {m} nomatch -exist")
            n_entries += 1
        sets.append(f"create {name} {kind} family inet hashsize 1024 maxelem 65536 -exist")
        sets.append(f"swap {tmp} {name}")
        sets.append(f"destroy {tmp}")
        n_sets += 1
        return name

    def mark_rule(chain: str, comment: str, src: str | None, dst: str | None, pm: PortMatch | None) -> None:
        args = [f"-A {chain}", f'-m comment --comment "{comment}"']
        if src:
            args.append(f"-m set --match-set {src} src")
        if dst:
            args.append(f"-m set --match-set {dst} dst")
        if pm is not None:
            proto = pm.protocol.lower()
            args.append(f"-p {proto}")
            if pm.port is not None:
                args.append(f"-m {proto} --dport {pm.port}")
        base = " ".join(args)
        rules.append(base + " -j MARK --set-xmark 0x10000/0x10000")
        rules.append(base + " -m mark --mark 0x10000/0x10000 -j RETURN")

    for pol in index.policies:
        chain = "KUBE-NWPLCY-" + _hash(pol.namespace, pol.name)
        chains.append(chain)
        comment = f"rule to ACCEPT traffic from source pods to dest pods selected by policy name {pol.name} namespace {pol.namespace}"  # noqa: E501
        if pol.ingress is not None:
            dst = ipset("KUBE-DST-" + _hash(pol.namespace, pol.name), "hash:ip", pol.targets)
            for i, r in enumerate(pol.ingress):
                named = [(j, pm) for j, pm in enumerate(r.ports) if pm.named_ips is not None]
                plain = [pm for pm in r.ports if pm.named_ips is None]
                named_sets = [(ipset("KUBE-DST-" + _hash(pol.namespace, pol.name, "ingress", i, j), "hash:ip",
                                     pm.named_ips or []), pm) for j, pm in named]
                sources: list[str | None] = []
                if r.pod_ips is not None:
                    sources.append(ipset("KUBE-SRC-" + _hash(pol.namespace, pol.name, "ingress", i), "hash:ip",
                                         r.pod_ips))
                if r.any_peer:
                    sources.append(None)
                if r.blocks:
                    sources.append(ipset("KUBE-SRC-" + _hash(pol.namespace, pol.name, "ingress", i, "ipblock"),
                                         "hash:net", [n for c, _ in r.blocks for n in _nets(c)],
                                         [x for _, ex in r.blocks for x in ex]))
                for src in sources:
                    for pm in plain:
                        mark_rule(chain, comment, src, dst, pm)
                    for nset, pm in named_sets:
                        mark_rule(chain, comment, src, nset, pm)
                    if not r.ports:
                        mark_rule(chain, comment, src, dst, None)
        if pol.egress is not None:
            src_set = ipset("KUBE-SRC-" + _hash(pol.namespace, pol.name), "hash:ip", pol.targets)
            for i, r in enumerate(pol.egress):
                dests: list[tuple[str | None, list[PortMatch]]] = []
                plain = [pm for pm in r.ports if pm.named_ips is None]
                if r.pod_ips is not None:
                    dests.append((ipset("KUBE-DST-" + _hash(pol.namespace, pol.name, "egress", i), "hash:ip",
                                        r.pod_ips), plain))
                    for j, pm in enumerate(r.ports):
                        if pm.named_ips is not None:
                            dests.append((ipset("KUBE-DST-" + _hash(pol.namespace, pol.name, "egress", i, j),
                                                "hash:ip", pm.named_ips), [pm]))
                if r.any_peer:
                    dests.append((None, plain))
                if r.blocks:
                    dests.append((ipset("KUBE-DST-" + _hash(pol.namespace, pol.name, "egress", i, "ipblock"),
                                        "hash:net", [n for c, _ in r.blocks for n in _nets(c)],
                                        [x for _, ex in r.blocks for x in ex]), plain))
                for dest, pms in dests:
                    for pm in pms:
                        mark_rule(chain, comment, src_set, dest, pm)
                    if not r.ports:
                        mark_rule(chain, comment, src_set, dest, None)

    # Pod firewall chains: local pods that a policy selects.
    ingress_of: dict[str, list[str]] = {}
    egress_of: dict[str, list[str]] = {}
    for pol in index.policies:
        chain = "KUBE-NWPLCY-" + _hash(pol.namespace, pol.name)
        for ip in pol.targets:
            if pol.ingress is not None:
                ingress_of.setdefault(ip, []).append(chain)
            if pol.egress is not None:
                egress_of.setdefault(ip, []).append(chain)
    top: list[str] = []
    for o in local:
        ip, name, ns = o["status"]["podIP"], o["metadata"]["name"], o["metadata"]["namespace"]
        if ip not in ingress_of and ip not in egress_of:
            continue
        fw = "KUBE-POD-FW-" + _hash(ns, name)
        chains.append(fw)
        pod = f"{ns}/{name}"
        rules += [
            f'-A {fw} -m comment --comment "rule for stateful firewall for pod" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',  # noqa: E501
            f'-A {fw} -d {ip}/32 -m comment --comment "rule to permit the traffic traffic to pods when source is the pod\'s local node" -m addrtype --src-type LOCAL -j ACCEPT',  # noqa: E501
            f'-A {fw} -m comment --comment "rule to drop invalid state for pod" -m conntrack --ctstate INVALID -j DROP',
        ]
        for chain in ingress_of.get(ip, ()):
            rules.append(f'-A {fw} -d {ip}/32 -m comment --comment "run through nw policy {chain}" -j {chain}')
        for chain in egress_of.get(ip, ()):
            rules.append(f'-A {fw} -s {ip}/32 -m comment --comment "run through nw policy {chain}" -j {chain}')
        rules += [
            f'-A {fw} -m comment --comment "rule to log dropped traffic POD name:{pod}" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/min --limit-burst 10 -j NFLOG --nflog-group 100',  # noqa: E501
            f'-A {fw} -m comment --comment "default rule to REJECT traffic destined for POD name:{pod}" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable',  # noqa: E501
            f"-A {fw} -j MARK --set-xmark 0x0/0x10000",
            f'-A {fw} -m comment --comment "set mark to ACCEPT traffic that comply to network policies" -j MARK --set-xmark 0x20000/0x20000',  # noqa: E501
        ]
        if ip in ingress_of:
            top.append(f'-A KUBE-ROUTER-FORWARD -d {ip}/32 -m comment --comment "rule to jump traffic destined to POD name:{pod}" -j {fw}')  # noqa: E501
            top.append(f'-A KUBE-ROUTER-OUTPUT -d {ip}/32 -m comment --comment "rule to jump traffic destined to POD name:{pod}" -j {fw}')  # noqa: E501
        if ip in egress_of:
            top.append(f'-A KUBE-ROUTER-FORWARD -s {ip}/32 -m comment --comment "rule to jump traffic from POD name:{pod}" -j {fw}')  # noqa: E501
            top.append(f'-A KUBE-ROUTER-INPUT -s {ip}/32 -m comment --comment "rule to jump traffic from POD name:{pod}" -j {fw}')  # noqa: E501
    accept = '-m comment --comment "rule to explicitly ACCEPT traffic that comply to network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT'  # noqa: E501
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             *(f":{c} - [0:0]" for c in chains),
             '-A INPUT -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT',
             '-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD',
             '-A OUTPUT -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT',
             *top, *(f"-A KUBE-ROUTER-{c} {accept}" for c in ("INPUT", "FORWARD", "OUTPUT")),
             *rules, "COMMIT", ""]
    return Rendering("\n".join(sets) + "\n", "\n".join(lines), n_sets, n_entries, len(top) + len(rules) + 6,
                     len(chains))


# ---------------------------------------------------------------- the nftables rendering

NFT_TABLE = "tfbpol"


def render_nftables(index: Index, local: list[dict[str, Any]]) -> Rendering:
    """One table: a set per peer selector, a chain per policy (a match
    marks and returns), a chain per local pod and direction (its policies'
    chains, then reject unless marked), reached through verdict maps keyed
    by the pod's address. Only policies that select a local pod."""
    local_ips = {o["status"]["podIP"] for o in local}
    out: list[str] = []
    n_sets = n_entries = n_rules = 0
    in_of: dict[str, list[str]] = {}
    out_of: dict[str, list[str]] = {}
    body: list[str] = []

    def nset(name: str, members: list[str]) -> str:
        nonlocal n_sets, n_entries
        n_sets += 1
        n_entries += len(members)
        elements = f" elements = {{ {', '.join(members)} }};" if members else ""
        out.append(f"  set {name} {{ type ipv4_addr;{elements} }}")
        return "@" + name

    def port_expr(pm: PortMatch) -> str:
        proto = pm.protocol.lower()
        if pm.port is None:
            return f"meta l4proto {proto}"
        return f"{proto} dport {pm.port.replace(':', '-')}"

    def chain_rules(k: int, d: str, rules: list[Rule], peer_field: str, own_field: str) -> list[str]:
        lines = []
        for i, r in enumerate(rules):
            peers: list[str] = []
            if r.pod_ips is not None:
                peers.append(f"ip {peer_field} {nset(f'p{k}_{d}{i}', r.pod_ips)}" if r.pod_ips else "")
                if not r.pod_ips:
                    peers.pop()
            for cidr, excepts in r.blocks:
                ex = f" ip {peer_field} != {{ {', '.join(excepts)} }}" if excepts else ""
                peers.append(f"ip {peer_field} {cidr}{ex}")
            if r.any_peer:
                peers.append("")
            for peer in peers:
                matches = []
                for j, pm in enumerate(r.ports):
                    if pm.named_ips is not None:
                        field_ = own_field if d == "i" else peer_field
                        matches.append(f"ip {field_} {nset(f'p{k}_{d}{i}_n{j}', pm.named_ips)} {port_expr(pm)}")
                    else:
                        matches.append(port_expr(pm))
                for m in matches or [""]:
                    lines.append(f"    {' '.join(x for x in (peer, m) if x)} meta mark set 0x10000 return")
        return lines

    for k, pol in enumerate(index.policies):
        if not local_ips.intersection(pol.targets):
            continue
        for d, rules, peer_field, own_field, book in (("i", pol.ingress, "saddr", "daddr", in_of),
                                                     ("e", pol.egress, "daddr", "saddr", out_of)):
            if rules is None:
                continue
            chain = f"pol{k}_{d}"
            lines = chain_rules(k, d, rules, peer_field, own_field)
            n_rules += len(lines)
            body += [f"  chain {chain} {{", f"    # {pol.key}", *lines, "  }"]
            for ip in pol.targets:
                if ip in local_ips:
                    book.setdefault(ip, []).append(chain)
    maps = {}
    for d, book in (("in", in_of), ("out", out_of)):
        elements = []
        for n, (ip, chains) in enumerate(sorted(book.items())):
            pc = f"pod{d}{n}"
            elements.append(f"{ip} : jump {pc}")
            body += [f"  chain {pc} {{", *(f"    jump {c}" for c in chains),
                     "    meta mark & 0x10000 == 0x10000 meta mark set 0 return", "    reject", "  }"]
            n_rules += len(chains) + 2
        maps[d] = elements
    out += [f"  map pods_{d} {{ type ipv4_addr : verdict;" + (f" elements = {{ {', '.join(e)} }};" if e else "") + " }"
            for d, e in maps.items()]
    out += ["  chain forward {", "    type filter hook forward priority filter; policy accept;",
            "    ct state established,related accept", "    ct state invalid drop",
            "    ip saddr vmap @pods_out", "    ip daddr vmap @pods_in", "  }"]
    n_rules += 4
    text = "\n".join([f"table ip {NFT_TABLE}", f"delete table ip {NFT_TABLE}", f"table ip {NFT_TABLE} {{",
                      *out, *body, "}", ""])
    return Rendering("", text, n_sets, n_entries, n_rules, len(in_of) + len(out_of) + body.count("  }"))


# ---------------------------------------------------------------- the labs

def _ns_exec(netns: str, cpu: int | None, *cmd: str) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return ["ip", "netns", "exec", netns, *pin, *cmd]


@dataclass
class TrafficLab:
    """A node namespace, a client and a server pod (routed, as
    topology.wire_routed_pod wires them), and a host-side veth with a /32
    route for every other local pod (their other ends in one stub
    namespace)."""

    prefix: str
    stub_ips: list[tuple[str, str | None]]  # (IPv4, IPv6) of the node's other pods
    node_netns: str = ""
    client: Pod | None = None
    server: Pod | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    def up(self, helper: Path, server_cpu: int, iperf: str | None) -> TrafficLab:
        self.node_netns = f"{self.prefix}-node"
        make_node_netns(self.node_netns)
        ip_batch(["link set lo up", f"addr add {NODE_IPV4}/32 dev dummy0", f"addr add {NODE_IPV6}/128 dev dummy0 nodad",
                  "link set dummy0 up", f"route add {GATEWAY4}/32 dev dummy0"], netns=self.node_netns)
        self.client = Pod("client", f"{self.prefix}-client", ipaddress.IPv4Address(CLIENT_IP),
                          ipaddress.IPv6Address(CLIENT_IP6), "lxcclient")
        self.server = Pod("server", f"{self.prefix}-server", ipaddress.IPv4Address(SERVER_IP),
                          ipaddress.IPv6Address(SERVER_IP6), "lxcserver")
        for pod in (self.client, self.server):
            make_pod_netns(self.node_netns, pod)
            wire_routed_pod(self.node_netns, pod)
        sysctl(self.client.netns, {"net.ipv4.ip_local_port_range": "1024 65000", "net.ipv4.tcp_tw_reuse": 1})
        stub = f"{self.prefix}-stub"
        netns_delete(stub)
        subprocess.run(["ip", "netns", "add", stub], check=True)
        node_cmds, stub_cmds = [], ["link set lo up"]
        for i, (v4, v6) in enumerate(self.stub_ips):
            node_cmds += [f"link add lxs{i} type veth peer name s{i} netns {stub}", f"link set lxs{i} up",
                          f"route add {v4}/32 dev lxs{i}"]
            if v6:
                node_cmds.append(f"route add {v6}/128 dev lxs{i}")
            stub_cmds.append(f"link set s{i} up")
        ip_batch(node_cmds, netns=self.node_netns)
        ip_batch(stub_cmds, netns=stub)
        # The servers, pinned: the C helper (crr, rr, probe ports) and iperf3.
        srv = subprocess.Popen(_ns_exec(self.server.netns, server_cpu, str(helper), "serve", str(PORT_CRR),
                                        str(PORT_RR), str(PORT_PROBE)),
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        self.procs.append(srv)
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{self.prefix}: traffic server did not start")
        cmd = ([iperf, "-s", "-p", str(PORT_TPUT)] if iperf else
               [sys.executable, str(Path(__file__).resolve()), "--stream-server", str(PORT_TPUT)])
        self.procs.append(subprocess.Popen(_ns_exec(self.server.netns, server_cpu, *cmd), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 10
        while not self.listening(PORT_TPUT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.prefix}: stream server did not start")
            time.sleep(0.05)
        return self

    def listening(self, port: int) -> bool:
        """Without connecting (iperf3 -s takes any connection for a test's)."""
        assert self.server is not None
        out = subprocess.run(["ip", "netns", "exec", self.server.netns, "ss", "-Htln", f"sport = :{port}"],
                             capture_output=True, text=True)
        return bool(out.stdout.strip())

    def reachable(self, port: int, timeout: float = 0.5) -> bool:
        assert self.client is not None
        with entered(self.client.netns):
            s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((SERVER_IP, port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def down(self) -> None:
        for p in self.procs:
            stop_process(p)
        self.procs.clear()
        for name in ("client", "server", "stub", "node"):
            netns_delete(f"{self.prefix}-{name}")


def cleanup_stale() -> list[str]:
    """Namespaces and pins of earlier runs whose process is gone."""
    removed = []
    for name in netns_list():
        digits = name[3:].split("-")[0].rstrip("abcdefghijklmnopqrstuvwxyz")
        if name.startswith("tfb") and digits.isdigit() and not Path(f"/proc/{digits}").exists():
            netns_delete(name)
            removed.append(name)
    for pin in Path("/sys/fs/bpf").glob("enforcer-tfb-*"):
        pid = pin.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_pin_dirs([pin])
            removed.append(str(pin))
    return removed


# ---------------------------------------------------------------- traffic

def stream_server(port: int) -> int:
    """The fallback of iperf3 -s: accept, read everything, repeat."""
    srv = socket.create_server(("0.0.0.0", port), backlog=16)
    while True:
        c, _ = srv.accept()
        with c:
            while c.recv(1 << 20):
                pass


STREAM_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buf = b"x" * (128 * 1024)
end = time.monotonic() + float(sys.argv[3]); sent = 0; t0 = time.monotonic()
while time.monotonic() < end:
    sent += s.send(buf)
s.close(); print(sent * 8 / (time.monotonic() - t0))
"""


def measure_tput(lab: TrafficLab, cpu: int, seconds: float, iperf: str | None) -> float:
    assert lab.client is not None
    if iperf:
        out = subprocess.run(_ns_exec(lab.client.netns, cpu, iperf, "-c", SERVER_IP, "-p", str(PORT_TPUT),
                                      "-t", str(max(1, round(seconds))), "-J"), capture_output=True, text=True,
                             timeout=seconds + 30)
        r = json.loads(out.stdout)
        if "error" in r:
            raise RuntimeError(f"iperf3: {r['error']}")
        return float(r["end"]["sum_received"]["bits_per_second"]) / 1e9
    out = subprocess.run(_ns_exec(lab.client.netns, cpu, sys.executable, "-c", STREAM_CLIENT, SERVER_IP,
                                  str(PORT_TPUT), str(seconds)), capture_output=True, text=True, timeout=seconds + 30)
    return float(out.stdout.strip()) / 1e9


def measure_crr(lab: TrafficLab, helper: Path, cpu: int, seconds: float) -> tuple[float, int]:
    assert lab.client is not None
    out = subprocess.run(_ns_exec(lab.client.netns, cpu, str(helper), "crr", SERVER_IP, str(PORT_CRR), str(seconds)),
                         capture_output=True, text=True, timeout=seconds + 30, check=True)
    count, secs, errors = out.stdout.split()
    return int(count) / float(secs), int(errors)


def measure_rr(lab: TrafficLab, helper: Path, cpu: int, seconds: float) -> tuple[float, float, float]:
    assert lab.client is not None
    out = subprocess.run(_ns_exec(lab.client.netns, cpu, str(helper), "rr", SERVER_IP, str(PORT_RR), str(seconds)),
                         capture_output=True, text=True, timeout=seconds + 30, check=True)
    n, secs, p50, p99 = out.stdout.split()
    return float(p50), float(p99), int(n) / float(secs)


def flush_conntrack(lab: TrafficLab) -> None:
    """Only the lab node's own entries (a netfilter variant's)."""
    subprocess.run(["ip", "netns", "exec", lab.node_netns, "conntrack", "-F"], capture_output=True)


# ---------------------------------------------------------------- update latency

def time_update(lab: TrafficLab, helper: Path, cpu: int, want_open: bool, change: Callable[[], Any],
                max_seconds: float = 120.0) -> tuple[float, Any]:
    """Milliseconds from the change to the first of three new connections in
    a row that saw the new verdict; and what change() returned."""
    assert lab.client is not None
    timeout_ms = GRANT_TIMEOUT_MS if want_open else REVOKE_TIMEOUT_MS
    proc = subprocess.Popen(_ns_exec(lab.client.netns, cpu, str(helper), "probe", SERVER_IP, str(PORT_PROBE),
                                     "1" if want_open else "0", str(timeout_ms), str(max_seconds)),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"prober: {line!r} (the port was not {'closed' if want_open else 'open'} to start with)")
        t0 = time.monotonic_ns()
        result = change()
        line = proc.stdout.readline().strip()
        proc.wait(timeout=10)
    finally:
        stop_process(proc)
    if not line or line == "timeout":
        raise RuntimeError(f"the change was not seen on the wire within {max_seconds:.0f} s")
    return (int(line.split()[0]) - t0) / 1e6, result


# ---------------------------------------------------------------- processes

def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) and RSS of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
              if ":" in ln}
    kb = lambda k: int(status.get(k, "0 kB").split()[0])  # noqa: E731
    return {"cpu_s": round(cpu, 2), "rss_mb": round(kb("VmRSS") / 1024, 1), "hwm_mb": round(kb("VmHWM") / 1024, 1)}


def run_measured(cmd: list[str], stdin_text: str) -> dict[str, float]:
    """Run a command to its end: wall and CPU seconds, peak RSS (wait4)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {err.strip()[:2000]}")
    return {"wall_s": time.monotonic() - t0, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}


class Daemon:
    """`enforcer run` in a lab's node namespace; converged when it has
    applied `revision`."""

    def __init__(self, lab: TrafficLab, pin: Path, source: str, workdir: Path, extra: list[str]) -> None:
        self.lab, self.pin = lab, pin
        self.proc = DaemonProcess(lab.node_netns, pin, source, NODE, workdir=workdir, extra_args=extra)

    def start(self, revision: Callable[[], str], timeout: float = 600.0) -> dict[str, Any]:
        t0 = time.monotonic()
        self.proc.start(timeout=timeout)
        ready = time.monotonic() - t0
        status = self.proc.wait_synced(revision(), timeout=timeout)
        wall = time.monotonic() - t0
        assert self.proc.pid is not None
        stats = proc_stats(self.proc.pid)
        return {"wall_s": round(wall, 2), "ready_s": round(ready, 2), **stats, "local_endpoints": status.get("local_endpoints"),  # noqa: E501
                "last_sync_ms": status.get("last_sync_duration_ms")}

    def stop(self) -> None:
        self.proc.kill()
        subprocess.run(["nsenter", f"--net={netns_path(self.lab.node_netns)}", sys.executable, "-m", "enforcer",
                        "cleanup", "--pin-dir", str(self.pin)], capture_output=True)
        self.proc.close()
        remove_pin_dirs([self.pin])


# ---------------------------------------------------------------- statistics

def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)} if values else {}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def latency_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50_ms": round(percentile(values, 50), 1), "p99_ms": round(percentile(values, 99), 1),
            "max_ms": round(max(values), 1), "min_ms": round(min(values), 1), "n": len(values)}


# ---------------------------------------------------------------- the run

METRICS = ("tput_gbps", "crr_per_s", "rr_p50_us", "rr_p99_us")
HIGHER_IS_BETTER = {"tput_gbps": True, "crr_per_s": True, "rr_p50_us": False, "rr_p99_us": False}


@dataclass
class Variant:
    name: str
    lab: TrafficLab
    kind: str                  # none, enforcer, iptables, nftables
    policies: int = 0
    samples: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    crr_errors: int = 0
    converge: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, list[float]] = field(default_factory=lambda: {"revoke": [], "grant": []})
    sync: list[dict[str, float]] = field(default_factory=list)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    pid = os.getpid()
    work = Path(tempfile.mkdtemp(prefix=f"enforcer-tfb-{pid}-"))
    iperf = shutil.which("iperf3")
    if not iperf:
        log("iperf3 not found: throughput from a Python sender (apt-get install iperf3)")
    helper = build_helper(work)
    policy_counts = sorted(set(args.policies))
    rules_n = args.rules_policies or max(policy_counts)
    started = time.monotonic()
    load_before = os.getloadavg()

    log(f"building clusters: {args.pods} pods, policies {policy_counts} (+ rules at {rules_n})")
    clusters = {n: cb.build_cluster(args.pods, max(0, n - 1), n_namespaces=args.namespaces, n_nodes=args.nodes)
                for n in sorted(set(policy_counts) | {rules_n})}
    local = local_pods(cluster_objects(clusters[rules_n]))
    stub_ips = []
    for o in local:
        if o["metadata"]["namespace"] == NS:
            continue
        ips = [i["ip"] for i in o["status"].get("podIPs") or [{"ip": o["status"]["podIP"]}]]
        stub_ips.append((ips[0], next((i for i in ips[1:] if ":" in i), None)))

    variants: list[Variant] = []
    daemons: list[Daemon] = []
    fake = None
    try:
        def lab(tag: str) -> TrafficLab:
            t = TrafficLab(f"tfb{pid}{tag}", stub_ips)
            labs.append(t)
            return t.up(helper, args.server_cpu, iperf)
        labs: list[TrafficLab] = []
        variants.append(Variant("none", lab("a"), "none"))
        for i, n in enumerate(policy_counts):
            variants.append(Variant(f"enforcer {n}", lab(f"e{i}"), "enforcer", n))
        if not args.no_rules:
            variants.append(Variant("iptables", lab("i"), "iptables", rules_n))
            variants.append(Variant("nftables", lab("n"), "nftables", rules_n))
        log(f"{len(variants)} labs up ({len(stub_ips)} other local pods each), {time.monotonic() - started:.1f} s")

        # Enforcement in place, one variant at a time (each converges alone).
        poll = ["--poll-interval", str(args.poll_interval)] if args.poll_interval else []
        sources: dict[str, Path] = {}
        index_rules = Index(cluster_objects(clusters[rules_n]))
        for v in variants:
            if v.kind == "enforcer":
                src = work / f"src-{v.policies}"
                sources[v.name] = write_source(clusters[v.policies], src)
                d = Daemon(v.lab, Path(f"{PIN_PREFIX}-{pid}-{v.policies}"), str(src), work / f"d-{v.policies}", poll)
                daemons.append(d)
                v.converge = d.start(lambda s=src: directory_revision(s))  # type: ignore[misc]
                log(f"{v.name}: converged {v.converge}")
            elif v.kind in ("iptables", "nftables"):
                r, render_s, applied = sync_rules(v.kind, v.lab, index_rules, local)
                v.sync.append(applied)
                v.converge = {"render_s": round(render_s, 2), **applied, "sets": r.sets, "set_entries": r.set_entries,
                              "rules": r.rule_lines, **({"chains": r.chains} if v.kind == "iptables" else {})}
                log(f"{v.name}: full sync {v.converge}")
        for v in variants:
            if not v.lab.reachable(PORT_CRR, timeout=2.0):
                raise RuntimeError(f"{v.name}: the client cannot reach the server")

        # Traffic: A B C ... A B C ...
        t_traffic = time.monotonic()
        for rep in range(args.reps):
            for v in variants:
                v.samples["tput_gbps"].append(measure_tput(v.lab, args.client_cpu, args.tput_seconds, iperf))
                rate, errors = measure_crr(v.lab, helper, args.client_cpu, args.crr_seconds)
                v.samples["crr_per_s"].append(rate)
                v.crr_errors += errors
                p50, p99, _ = measure_rr(v.lab, helper, args.client_cpu, args.rr_seconds)
                v.samples["rr_p50_us"].append(p50)
                v.samples["rr_p99_us"].append(p99)
                if v.kind in ("iptables", "nftables"):
                    flush_conntrack(v.lab)
            log(f"repetition {rep + 1}/{args.reps} done ({time.monotonic() - t_traffic:.0f} s)")

        # Update latency.
        for v in variants:
            if v.kind == "enforcer":
                path = sources[v.name]
                for k in range(args.updates):
                    for direction, ports in (("revoke", REVOKED_PORTS), ("grant", ALL_PORTS)):
                        text = json.dumps(lab_policy(ports, version=2 + 2 * k + (direction == "grant")))
                        ms, _ = time_update(v.lab, helper, args.client_cpu, direction == "grant",
                                            lambda p=path, t=text: replace_file(p, t))  # type: ignore[misc]
                        v.updates[direction].append(ms)
            elif v.kind in ("iptables", "nftables"):
                for _k in range(args.rules_updates):
                    for direction, ports in (("revoke", REVOKED_PORTS), ("grant", ALL_PORTS)):
                        objs = cluster_objects(clusters[rules_n], ports)
                        def change(objs=objs, v=v):
                            # What the controller does on a change: resolve, render, apply everything.
                            t0 = time.monotonic()
                            _, _, applied = sync_rules(v.kind, v.lab, Index(objs), local)
                            return {**applied, "total_s": time.monotonic() - t0}
                        # A full re-render takes as long as the first full sync
                        # (iptables at 10k: 1.5-2 min here): the prober waits for it.
                        wait_s = max(120.0, 4 * float(v.converge.get("wall_s", 0)))
                        ms, sync = time_update(v.lab, helper, args.client_cpu, direction == "grant", change,
                                               max_seconds=wait_s)
                        v.updates[direction].append(ms)
                        v.sync.append(sync)
            if v.updates["revoke"]:
                log(f"{v.name}: update {latency_summary(v.updates['revoke'] + v.updates['grant'])}")

        # The watch: the largest cluster from the fake API server.
        watch: dict[str, Any] = {}
        if not args.no_watch:
            v = next(x for x in reversed(variants) if x.kind == "enforcer")
            d = next(x for x in daemons if x.proc.netns == v.lab.node_netns)
            d.stop()
            daemons.remove(d)
            fake, kubeconfig = start_fake_apiserver(v.lab, cluster_objects(clusters[v.policies]), work)
            d = Daemon(v.lab, Path(f"{PIN_PREFIX}-{pid}-watch"), "kubernetes", work / "d-watch",
                       ["--kubeconfig", str(kubeconfig)])
            daemons.append(d)
            watch["policies"] = v.policies
            watch["converge"] = d.start(lambda: f"rv:{fake.resource_version}")
            log(f"watch {v.policies}: converged {watch['converge']}")
            samples: dict[str, list[float]] = {"revoke": [], "grant": []}
            for _k in range(args.updates):
                for direction, ports in (("revoke", REVOKED_PORTS), ("grant", ALL_PORTS)):
                    obj = lab_policy(ports)
                    ms, _ = time_update(v.lab, helper, args.client_cpu, direction == "grant",
                                        lambda o=obj: fake.update(o))  # type: ignore[misc]
                    samples[direction].append(ms)
            watch["update"] = {k: latency_summary(s) for k, s in samples.items()}
            watch["update_all"] = latency_summary(samples["revoke"] + samples["grant"])
            log(f"watch: update {watch['update_all']}")
        traffic_s = time.monotonic() - started
    finally:
        for d in daemons:
            d.stop()
        if fake is not None:
            fake.stop()
        for t in locals().get("labs", []):
            t.down()
        shutil.rmtree(work, ignore_errors=True)

    return report(args, variants, watch, iperf is not None, load_before, traffic_s, len(stub_ips) + 2)


def start_fake_apiserver(lab: TrafficLab, objects: list[dict[str, Any]], work: Path):
    import yaml

    from tests.kubeapi.fake_apiserver import FakeApiServer

    def node_socket(port: int) -> socket.socket:
        with entered(lab.node_netns):
            return socket.create_server(("127.0.0.1", port))

    fake = FakeApiServer(make_socket=node_socket)
    fake.bookmark_interval = 0.5
    for o in objects:
        fake.create(copy.deepcopy(o))
    fake.start()
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": fake.url}}], "users": [{"name": "lab", "user": {}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}))
    return fake, kubeconfig


def apply_kube_router(lab: TrafficLab, r: Rendering) -> dict[str, float]:
    a = run_measured(["ip", "netns", "exec", lab.node_netns, "ipset", "restore"], r.ipsets)
    b = run_measured(["ip", "netns", "exec", lab.node_netns, "iptables-restore"], r.rules)
    return {"wall_s": round(a["wall_s"] + b["wall_s"], 3), "cpu_s": round(a["cpu_s"] + b["cpu_s"], 3),
            "ipset_s": round(a["wall_s"], 3), "iptables_s": round(b["wall_s"], 3),
            "rss_mb": round(max(a["rss_mb"], b["rss_mb"]), 1)}


def apply_nft(lab: TrafficLab, r: Rendering) -> dict[str, float]:
    a = run_measured(["ip", "netns", "exec", lab.node_netns, "nft", "-f", "-"], r.rules)
    return {"wall_s": round(a["wall_s"], 3), "cpu_s": round(a["cpu_s"], 3), "rss_mb": round(a["rss_mb"], 1)}


def sync_rules(kind: str, lab: TrafficLab, index: Index,
               local: list[dict[str, Any]]) -> tuple[Rendering, float, dict[str, float]]:
    """What the iptables (kube-router's rules) or nftables variant does on
    every change: render the whole policy set and apply it. Returns the
    rendering, the seconds rendering took and what applying it cost."""
    t0 = time.monotonic()
    r = render_kube_router(index, local) if kind == "iptables" else render_nftables(index, local)
    render_s = time.monotonic() - t0
    return r, render_s, apply_kube_router(lab, r) if kind == "iptables" else apply_nft(lab, r)


def report(args: argparse.Namespace, variants: list[Variant], watch: dict[str, Any], iperf: bool,
           load_before: tuple[float, float, float], seconds: float, local_pods_n: int) -> dict[str, Any]:
    base = variants[0]
    out_variants: dict[str, Any] = {}
    for v in variants:
        entry: dict[str, Any] = {"kind": v.kind, "policies": v.policies}
        for m in METRICS:
            s = summary(v.samples[m])
            b = statistics.median(base.samples[m]) if base.samples[m] else 0
            if s and b:
                s["ratio"] = round(s["median"] / b, 3)
            entry[m] = s
        entry["crr_errors"] = v.crr_errors
        if v.converge:
            entry["converge"] = v.converge
        if v.updates["revoke"]:
            entry["update"] = {k: latency_summary(s) for k, s in v.updates.items()}
            entry["update_all"] = latency_summary(v.updates["revoke"] + v.updates["grant"])
        if len(v.sync) > 1:
            entry["resync"] = summary([s["wall_s"] for s in v.sync[1:]])
        out_variants[v.name] = entry
    enforcers = [v for v in variants if v.kind == "enforcer"]
    top = out_variants[enforcers[-1].name] if enforcers else {}
    spread = {m: round((max(base.samples[m]) - min(base.samples[m])) / statistics.median(base.samples[m]), 3)
              for m in METRICS if base.samples[m]}
    file_p99 = (top.get("update_all") or {}).get("p99_ms")
    watch_p99 = (watch.get("update_all") or {}).get("p99_ms")
    goals = {
        "throughput_ratio_ge_0_97": bool(top) and top["tput_gbps"].get("ratio", 0) >= GOAL_THROUGHPUT_RATIO,
        "conn_rate_ratio_ge_0_95": bool(top) and top["crr_per_s"].get("ratio", 0) >= GOAL_CONN_RATE_RATIO,
        "update_p99_le_100ms_watch": watch_p99 is not None and watch_p99 <= GOAL_UPDATE_WATCH_MS,
        "update_p99_le_150ms_file": file_p99 is not None and file_p99 <= GOAL_UPDATE_FILE_MS,
    }
    return {
        "variants": out_variants, "order": [v.name for v in variants], "watch": watch, "goals": goals,
        "goal_policies": enforcers[-1].policies if enforcers else None,
        "baseline_spread": spread,
        "config": {"pods": args.pods, "namespaces": args.namespaces, "nodes": args.nodes, "reps": args.reps,
                   "tput_seconds": args.tput_seconds, "crr_seconds": args.crr_seconds, "rr_seconds": args.rr_seconds,
                   "updates": args.updates, "rules_updates": args.rules_updates, "client_cpu": args.client_cpu,
                   "server_cpu": args.server_cpu, "iperf3": iperf, "local_pods": local_pods_n,
                   "poll_interval": args.poll_interval},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "load_before": [round(x, 2) for x in load_before],  # noqa: E501
                    "load_after": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(seconds, 1),
    }


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _ratio(s: dict[str, float]) -> str:
    return f"x{s['ratio']:.3f}" if s and "ratio" in s else ""


def format_table(r: dict[str, Any]) -> str:
    rows = []
    head = (f"{'variant':<16} {'throughput Gbit/s':<26} {'conn/s':<27} {'rr p50 us':<24} {'rr p99 us':<24} "
            f"{'update p50/p99 ms':<19} {'converge':<0}")
    rows.append(head)
    for name, v in r["variants"].items():
        upd = v.get("update_all")
        upd_s = f"{upd['p50_ms']:.0f}/{upd['p99_ms']:.0f}" if upd else "-"
        c = v.get("converge") or {}
        if v["kind"] == "enforcer":
            conv = f"{c['wall_s']:.1f} s, {c['cpu_s']:.1f} CPU s, RSS {c['rss_mb']:.0f} MB (peak {c['hwm_mb']:.0f})"
        elif c:
            conv = f"full sync {c['wall_s']:.2f} s, {c['cpu_s']:.2f} CPU s ({c['sets']} sets, {c['rules']} rules)"
        else:
            conv = ""
        rows.append(f"{name:<16} {_fmt(v['tput_gbps']) + ' ' + _ratio(v['tput_gbps']):<26} "
                    f"{_fmt(v['crr_per_s'], 0) + ' ' + _ratio(v['crr_per_s']):<27} "
                    f"{_fmt(v['rr_p50_us'], 1) + ' ' + _ratio(v['rr_p50_us']):<24} "
                    f"{_fmt(v['rr_p99_us'], 1) + ' ' + _ratio(v['rr_p99_us']):<24} {upd_s:<19} {conv}")
    w = r.get("watch") or {}
    if w:
        c, u = w["converge"], w["update_all"]
        rows.append(f"{'watch ' + str(w['policies']):<16} {'':<26} {'':<27} {'':<24} {'':<24} "
                    f"{u['p50_ms']:.0f}/{u['p99_ms']:.0f}{'':<13} {c['wall_s']:.1f} s, {c['cpu_s']:.1f} CPU s, "
                    f"RSS {c['rss_mb']:.0f} MB (peak {c['hwm_mb']:.0f})")
    cfg, m = r["config"], r["machine"]
    rows.append(f"median [min-max] of {cfg['reps']} interleaved repetitions; xR: median over the no-enforcement "
                f"median (same run); client CPU {cfg['client_cpu']}, server CPU {cfg['server_cpu']}; "
                f"{'iperf3' if cfg['iperf3'] else 'Python sender'}; {cfg['local_pods']} local pods")
    rows.append("baseline spread (max-min)/median: " + ", ".join(f"{k} {v:.0%}" for k, v in r["baseline_spread"].items())  # noqa: E501
                + f"; load average before {m['load_before'][0]}, after {m['load_after'][0]} ({m['cpus']} CPUs)")
    rows.append("update: change -> first of 3 new connections in a row with the new verdict, revoke and grant; "
                "iptables/nftables: a full re-render and restore")
    rows.append("goals: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in r["goals"].items()))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pods", type=int, default=PODS)
    ap.add_argument("--namespaces", type=int, default=NAMESPACES)
    ap.add_argument("--nodes", type=int, default=NODES)
    ap.add_argument("--policies", type=lambda s: [int(x) for x in s.split(",")], default=list(POLICIES),
                    help="policy counts of the enforcer variants, comma-separated (default 1,1000,10000)")
    ap.add_argument("--rules-policies", type=int, default=0,
                    help="policies the iptables and nftables variants render (default: the largest count)")
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--tput-seconds", type=float, default=TPUT_S)
    ap.add_argument("--crr-seconds", type=float, default=CRR_S)
    ap.add_argument("--rr-seconds", type=float, default=RR_S)
    ap.add_argument("--updates", type=int, default=UPDATES, help="revoke+grant pairs per daemon")
    ap.add_argument("--rules-updates", type=int, default=RULES_UPDATES, help="revoke+grant pairs for iptables/nftables")
    ap.add_argument("--poll-interval", type=float, default=0.0, help="the file daemons' (default: theirs)")
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--server-cpu", type=int, default=min(1, (os.cpu_count() or 1) - 1))
    ap.add_argument("--no-rules", action="store_true", help="leave out iptables and nftables")
    ap.add_argument("--no-watch", action="store_true", help="leave out the Kubernetes-watch daemon")
    ap.add_argument("--stream-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stream_server:
        return stream_server(args.stream_server)
    if os.geteuid() != 0:
        print("traffic_bench: run as root (network namespaces, BPF)", file=sys.stderr)
        return 2
    removed = cleanup_stale()
    if removed:
        log(f"removed what earlier runs left: {', '.join(removed)}")
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        r = run_benchmark(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(r), flush=True)
    print(json.dumps(r, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
