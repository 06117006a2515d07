"""Control-plane benchmark: how fast the enforcer turns cluster objects into
map contents, and what it costs in memory.

A synthetic cluster (10,000 pods by default: ~100 namespaces, deployments of
1-50 replicas sharing labels, app/tier/team/version labels, named container
ports, IPv4 pod addresses in 10.0.0.0/8 over ~100 nodes, some namespaces
dual-stack, a few finished job pods) and a realistic mix of NetworkPolicies
(default deny per namespace, allow from the same app, namespaceSelector +
podSelector, matchExpressions, ipBlock with except, named ports, endPort
ranges, egress to DNS and to the outside, ...), at each policy count
(1,000 and 10,000 by default). The benchmarked node is node-000 (~100 pods).

Measured, for each policy count:

  cold       parse every object into a ClusterStore, compile for the node,
             write every entry (MapSync.apply into real pinned maps made by
             load_datapath_programs; pins under /sys/fs/bpf/enforcer-cbench-<pid>-<n>,
             removed at the end, also on failure); and the compile alone.
  change     one object changed -> maps written: store.upsert (or delete),
             snapshot, compile, MapSync.apply -- what Daemon.reconcile_once
             does, minus interface resolution (a dict stands in for it) and
             conntrack revocation (conntrack is empty here). Several hundred
             changes of varied kinds; p50/p99/max and entries written+deleted
             per change.

Once, on the largest cluster, in a fresh process that reads the cluster
from manifest files with DirectorySource, as the daemon does:

  pickup     a changed policy file written (atomically, by rename) into the
             watched directory, until the store's revision changes
             (DirectorySource at its default interval); p50/p99 over ~20
             changes, with where the time went (file read and parse, the
             store, GC pauses; the rest is the poll).
  rss        VmRSS/VmHWM of that process: baseline with the package and bcc
             imported, then with the manifests read and the store filled,
             then compiled and synced (MapSync into stand-in maps: what
             MapSync holds is counted, bcc's compiler is not).

Prints a table, then as its last line one JSON object with every figure.
Goals are reported, never asserted: the exit status is 0 unless the
benchmark itself fails.

Run as root: `make bench` or `.venv/bin/python bench/compiler_bench.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enforcer.compiler.compile import Compiler, DesiredState, NodeContext  # noqa: E402
from enforcer.datapath.sync import MapSync  # noqa: E402
from enforcer.model.state import ClusterStore  # noqa: E402

PIN_PREFIX = "/sys/fs/bpf/enforcer-cbench"

# Defaults of a full run.
PODS = 10_000
POLICY_COUNTS = (1_000, 10_000)
NAMESPACES = 100
NODES = 100
CHANGES = 300
PICKUP_CHANGES = 20
SEED = 7

NODE = "node-000"
NODE_ADDRESSES = ("192.168.0.10", "fd00:ffff::10")
FIRST_IFINDEX = 1000
# Map sizes of the benchmark build: large enough that a full map never
# shapes the figures (the maps are LPM tries and hashes: memory is only
# used by what is written).
POLICY_MAX = 1 << 20

# Goals, reported only.
GOAL_CHANGE_P99_MS = 100.0   # at 1k policies
GOAL_COLD_S = 5.0            # at 10k policies
GOAL_RSS_MB = 200.0
GOAL_PICKUP_MS = 500.0
# The scale row: the real daemon with this many pods and policies cluster-wide.
SCALE_PODS = 50_000
SCALE_POLICIES = 20_000

CHANGE_KINDS = ("policy_edit", "policy_new", "policy_delete", "pod_label", "pod_new", "pod_delete",
                "namespace_label")
LOCAL_POD_CHANGE_SHARE = 0.25  # pod changes that hit the benchmarked node


def log(msg: str) -> None:
    print(f"[cbench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cluster

# (app, tier): apps are reused across namespaces, as real ones are.
APPS = [
    ("web", "frontend"), ("frontend", "frontend"), ("ui", "frontend"), ("gateway", "frontend"),
    ("api", "backend"), ("auth", "backend"), ("orders", "backend"), ("payments", "backend"),
    ("cart", "backend"), ("search", "backend"), ("catalog", "backend"), ("notifications", "backend"),
    ("worker", "backend"), ("scheduler", "backend"), ("reports", "backend"),
    ("postgres", "data"), ("redis", "data"), ("kafka", "data"), ("elasticsearch", "data"), ("mongodb", "data"),
]
DATA_PORTS = {
    "postgres": [("db", 5432, "TCP"), ("metrics", 9187, "TCP")],
    "redis": [("redis", 6379, "TCP"), ("metrics", 9121, "TCP")],
    "kafka": [("kafka", 9092, "TCP"), ("metrics", 9308, "TCP")],
    "elasticsearch": [("http", 9200, "TCP"), ("transport", 9300, "TCP"), ("metrics", 9114, "TCP")],
    "mongodb": [("db", 27017, "TCP"), ("metrics", 9216, "TCP")],
}
TIER_PORTS = {
    "frontend": [("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
    "backend": [("http", 8080, "TCP"), ("grpc", 50051, "TCP"), ("metrics", 9090, "TCP")],
}
REPLICAS = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 5, 5, 5, 8, 10, 12, 15, 20, 30, 50]
TEAMS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
         "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
         "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "amber", "cobalt", "indigo", "jade",
         "onyx", "ruby"]
ENVS = ["prod", "staging", "dev"]


@dataclass
class Deployment:
    namespace: str
    name: str
    app: str
    tier: str
    ports: list[tuple[str, int, str]]
    labels: dict[str, str]
    pods: list[str] = field(default_factory=list)  # pod keys


@dataclass
class Cluster:
    """API dicts by key, and how they were made (for changes)."""

    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, list[Deployment]] = field(default_factory=dict)  # by namespace
    dual_stack: set[str] = field(default_factory=set)  # namespaces
    node_hosts: dict[int, int] = field(default_factory=dict)  # node -> addresses handed out
    n_nodes: int = NODES
    serial: int = 0

    def objects(self) -> list[dict[str, Any]]:
        return [*self.namespaces.values(), *self.pods.values(), *self.policies.values()]

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial


def namespace_obj(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels), "resourceVersion": "1"}}


def _pod_ips(c: Cluster, node: int, namespace: str) -> list[str]:
    host = c.node_hosts.get(node, 0) + 2
    c.node_hosts[node] = host - 1
    v4 = ipaddress.IPv4Address((10 << 24) | ((node + 1) << 16) | host)
    ips = [str(v4)]
    if namespace in c.dual_stack:
        ips.append(str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00:10::")) | ((node + 1) << 64) | host)))
    return ips


def pod_obj(c: Cluster, dep: Deployment, node: int, rng: random.Random, phase: str = "Running") -> dict[str, Any]:
    suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    name = f"{dep.name}-{dep.labels.get('pod-template-hash', 'x')}-{suffix}"
    ips = _pod_ips(c, node, dep.namespace)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": dep.namespace, "uid": f"uid-{c.next_serial()}",
                     "labels": dict(dep.labels), "resourceVersion": "1"},
        "spec": {"nodeName": f"node-{node:03d}", "containers": [
            {"name": dep.app, "image": f"registry.example/{dep.app}:1",
             "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in dep.ports]}]},
        "status": {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }


def _add_deployment(c: Cluster, rng: random.Random, ns: str, team: str, app: str, tier: str,
                    replicas: int, labels: dict[str, str] | None = None,
                    ports: list[tuple[str, int, str]] | None = None, nodes: list[int] | None = None) -> None:
    existing = {d.name for d in c.deployments.setdefault(ns, [])}
    name = app
    k = 2
    while name in existing:
        name = f"{app}-{k}"
        k += 1
    if labels is None:
        labels = {"app": name, "tier": tier, "team": team, "version": rng.choice(["v1", "v1", "v1", "v2", "v3"])}
        labels["pod-template-hash"] = f"{rng.getrandbits(32):08x}"[:9]
    if ports is None:
        ports = DATA_PORTS.get(app) or TIER_PORTS[tier]
    dep = Deployment(ns, name, app, tier, ports, labels)
    c.deployments[ns].append(dep)
    canary = replicas >= 4 and rng.random() < 0.15  # a rollout in progress: two versions
    for i in range(replicas):
        node = nodes[i] if nodes is not None else rng.randrange(c.n_nodes)
        raw = pod_obj(c, dep, node, rng)
        if canary and i % 4 == 0:
            raw["metadata"]["labels"]["version"] = "v-next"
            raw["metadata"]["labels"]["pod-template-hash"] = labels["pod-template-hash"][::-1]
        key = f"{ns}/{raw['metadata']['name']}"
        c.pods[key] = raw
        dep.pods.append(key)


def make_cluster(n_pods: int = PODS, n_namespaces: int = NAMESPACES, n_nodes: int = NODES,
                 seed: int = SEED) -> Cluster:
    """Namespaces and pods (no policies: add_policies)."""
    rng = random.Random(seed)
    c = Cluster(n_nodes=n_nodes)
    system = {"kube-system": "platform", "monitoring": "platform", "ingress-nginx": "platform",
              "logging": "platform"}
    for ns, team in system.items():
        c.namespaces[ns] = namespace_obj(ns, {"team": team, "env": "prod", "purpose": "system"})
    n_regular = max(1, n_namespaces - len(system))
    regular = []
    for i in range(n_regular):
        team, env = TEAMS[i % len(TEAMS)], ENVS[(i // len(TEAMS)) % len(ENVS)]
        name = f"{team}-{env}" if i < len(TEAMS) * len(ENVS) else f"{team}-{env}-{i}"
        labels = {"team": team, "env": env}
        if i % 4 == 0:
            labels["istio-injection"] = "enabled"
        if i % 10 == 3:
            c.dual_stack.add(name)
        c.namespaces[name] = namespace_obj(name, labels)
        regular.append((name, team))
    # Platform workloads: DNS, monitoring, the ingress controller, and a
    # log shipper on every node.
    dns_labels = {"k8s-app": "kube-dns", "pod-template-hash": "5d78c9869d"}
    _add_deployment(c, rng, "kube-system", "platform", "coredns", "backend", 2, labels=dns_labels,
                    ports=[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")])
    _add_deployment(c, rng, "monitoring", "platform", "prometheus", "backend", 2,
                    labels={"app.kubernetes.io/name": "prometheus", "app": "prometheus"},
                    ports=[("web", 9090, "TCP")])
    _add_deployment(c, rng, "ingress-nginx", "platform", "ingress-nginx", "frontend", 3,
                    labels={"app.kubernetes.io/name": "ingress-nginx", "app": "ingress-nginx"},
                    ports=[("http", 80, "TCP"), ("https", 443, "TCP"), ("metrics", 10254, "TCP")])
    ds_nodes = list(range(n_nodes)) if n_pods >= 4 * n_nodes else list(range(min(n_nodes, n_pods // 10)))
    _add_deployment(c, rng, "logging", "platform", "fluent-bit", "backend", len(ds_nodes),
                    labels={"app.kubernetes.io/name": "fluent-bit", "app": "fluent-bit"},
                    ports=[("http", 2020, "TCP")], nodes=ds_nodes)
    # Application namespaces share the rest, unevenly.
    weights = [rng.uniform(0.3, 2.0) for _ in regular]
    remaining = n_pods - len(c.pods)
    quotas = [max(1, int(remaining * w / sum(weights))) for w in weights]
    quotas[-1] += max(0, remaining - len(regular[::7]) - sum(quotas))  # the job pods below complete it
    for (ns, team), quota in zip(regular, quotas, strict=False):
        apps = APPS[:]
        rng.shuffle(apps)
        placed = 0
        k = 0
        while placed < quota:
            app, tier = apps[k % len(apps)]
            k += 1
            replicas = min(rng.choice(REPLICAS), quota - placed)
            _add_deployment(c, rng, ns, team, app, tier, replicas)
            placed += replicas
    # A few finished job pods (they keep their address in status).
    for ns, team in regular[::7]:
        dep = Deployment(ns, "nightly-job", "nightly-job", "backend", [],
                         {"job-name": "nightly-job", "team": team})
        raw = pod_obj(c, dep, rng.randrange(n_nodes), rng, phase="Succeeded")
        c.pods[f"{ns}/{raw['metadata']['name']}"] = raw
    return c


def _np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}, "spec": spec}


def _ns_name(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


DNS_EGRESS = {"to": [{"namespaceSelector": _ns_name("kube-system"),
                      "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
              "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def policy_spec(kind: str, c: Cluster, ns: str, rng: random.Random) -> dict[str, Any]:
    """One policy of a kind for namespace ns, aimed at its workloads."""
    deps = c.deployments.get(ns) or [Deployment(ns, "none", "none", "backend", [], {"app": "none"})]
    d = rng.choice(deps)
    target = {"matchLabels": {"app": d.labels.get("app", d.name)}}
    other = rng.choice(deps)
    ns_labels = c.namespaces[ns]["metadata"]["labels"]
    if kind == "deny-ingress":
        return {"podSelector": {}, "policyTypes": ["Ingress"]}
    if kind == "deny-all":
        return {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    if kind == "allow-dns":
        return {"podSelector": {}, "policyTypes": ["Egress"], "egress": [DNS_EGRESS]}
    if kind == "same-app":
        return {"podSelector": target, "ingress": [{"from": [{"podSelector": target}]}]}
    if kind == "frontend-to-backend":
        port: dict[str, Any] = {"port": "http"} if rng.random() < 0.5 else {"protocol": "TCP", "port": 8080}
        return {"podSelector": target, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "frontend"}}}], "ports": [port]}]}
    if kind == "from-ingress-controller":
        return {"podSelector": target, "ingress": [{"from": [{
            "namespaceSelector": _ns_name("ingress-nginx"),
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}],
            "ports": [{"port": "http"}, {"port": 8443}]}]}
    if kind == "from-monitoring":
        return {"podSelector": {} if rng.random() < 0.3 else target, "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"purpose": "system", "kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
            "ports": [{"port": "metrics"}]}]}
    if kind == "expressions":
        apps = sorted({x.labels.get("app", x.name) for x in rng.sample(deps, min(3, len(deps)))})
        return {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend", "data"]},
                                                     {"key": "version", "operator": "NotIn", "values": ["v-next"]}]},
                "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": apps},
                    {"key": "canary", "operator": "DoesNotExist"}]}},
                    {"namespaceSelector": {"matchExpressions": [
                        {"key": "env", "operator": "In", "values": [ns_labels.get("env", "prod")]},
                        {"key": "team", "operator": "In", "values": [ns_labels.get("team", "x")]}]},
                     "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}],
                    "ports": [{"port": "grpc"}, {"protocol": "TCP", "port": 8080}]}]}
    if kind == "cross-team":
        team = rng.choice(TEAMS)
        return {"podSelector": target, "policyTypes": ["Ingress"], "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"team": team, "env": ns_labels.get("env", "prod")}},
            "podSelector": {"matchLabels": {"app": other.labels.get("app", other.name)}}}],
            "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 50051}]}]}
    if kind == "from-env":
        return {"podSelector": target, "policyTypes": ["Ingress"], "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"env": ns_labels.get("env", "prod")}},
            "podSelector": {"matchLabels": {"tier": "frontend"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}]}]}
    if kind == "ipblock-ingress":
        r = rng.randrange(256)
        return {"podSelector": target, "ingress": [{"from": [
            {"ipBlock": {"cidr": "172.16.0.0/12", "except": [f"172.16.{r}.0/24", f"172.17.{r}.128/25"]}},
            {"ipBlock": {"cidr": "192.168.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}]}]}
    if kind == "egress-external":
        return {"podSelector": target, "policyTypes": ["Egress"], "egress": [
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                 "except": ["10.0.0.0/8", "169.254.169.254/32", "172.16.0.0/12"]}}],
             "ports": [{"protocol": "TCP", "port": 443}]},
            DNS_EGRESS]}
    if kind == "egress-to-data":
        return {"podSelector": {"matchLabels": {"tier": "backend"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": {"matchLabels": {"tier": "data"}}}],
             "ports": [{"port": "db"}, {"port": "redis"}, {"port": "kafka"}]},
            DNS_EGRESS]}
    if kind == "port-range":
        return {"podSelector": target, "ingress": [{"from": [{
            "namespaceSelector": {"matchLabels": {"env": ns_labels.get("env", "prod"),
                                                  "team": ns_labels.get("team", "")}},
            "podSelector": {"matchLabels": {"tier": "backend"}}}],
            "ports": [{"protocol": "TCP", "port": 30000, "endPort": 32767},
                      {"protocol": "UDP", "port": 5000, "endPort": 5100}]}]}
    if kind == "ipv6-block":
        r = rng.randrange(1, 4096)
        return {"podSelector": target, "ingress": [{"from": [
            {"ipBlock": {"cidr": f"2001:db8:{r:x}::/48", "except": [f"2001:db8:{r:x}:ff::/64"]}}],
            "ports": [{"protocol": "TCP", "port": 443}]}]}
    if kind == "whole-namespace":
        return {"podSelector": target, "ingress": [{"from": [{"podSelector": {}}]}]}
    if kind == "udp-sctp":
        return {"podSelector": target, "ingress": [{"ports": [{"protocol": "UDP", "port": 8125},
                                                             {"protocol": "SCTP", "port": 3868}]}]}
    if kind == "node-subnet":
        node = rng.randrange(c.n_nodes)
        return {"podSelector": target, "ingress": [{"from": [{"ipBlock": {"cidr": f"10.{node + 1}.0.0/16"}}],
                                                    "ports": [{"protocol": "TCP", "port": 9100}]}]}
    raise ValueError(kind)


# Kinds of the policies beyond each namespace's baseline, with weights.
POLICY_MIX = [
    ("same-app", 14), ("frontend-to-backend", 14), ("from-ingress-controller", 8), ("from-monitoring", 8),
    ("expressions", 8), ("cross-team", 10), ("from-env", 3), ("ipblock-ingress", 5), ("egress-external", 5),
    ("egress-to-data", 4), ("port-range", 5), ("ipv6-block", 3), ("whole-namespace", 8), ("udp-sctp", 3),
    ("node-subnet", 1),
]


def new_policy(c: Cluster, rng: random.Random, ns: str | None = None, kind: str | None = None) -> dict[str, Any]:
    if ns is None:
        ns = rng.choice([n for n in c.namespaces if c.deployments.get(n)])
    if kind is None:
        kind = rng.choices([k for k, _ in POLICY_MIX], [w for _, w in POLICY_MIX])[0]
    return _np(ns, f"{kind}-{c.next_serial()}", policy_spec(kind, c, ns, rng))


def add_policies(c: Cluster, n: int, seed: int = SEED) -> None:
    """n policies: per application namespace a default deny (a third of them
    both directions, with DNS allowed), the rest from POLICY_MIX."""
    rng = random.Random(seed * 1000 + n)
    app_ns = [ns for ns in c.namespaces if ns not in ("kube-system", "monitoring", "ingress-nginx", "logging")]
    baseline: list[tuple[str, str]] = []
    for i, ns in enumerate(app_ns):
        if i % 3 == 0:
            baseline += [(ns, "deny-all"), (ns, "allow-dns")]
        else:
            baseline.append((ns, "deny-ingress"))
    for ns, kind in baseline[:n]:
        raw = _np(ns, kind, policy_spec(kind, c, ns, rng))
        c.policies[f"{ns}/{kind}"] = raw
    while len(c.policies) < n:
        raw = new_policy(c, rng)
        c.policies[f"{raw['metadata']['namespace']}/{raw['metadata']['name']}"] = raw


def build_cluster(n_pods: int, n_policies: int, seed: int = SEED, n_namespaces: int = NAMESPACES,
                  n_nodes: int = NODES) -> Cluster:
    c = make_cluster(n_pods, n_namespaces, n_nodes, seed)
    add_policies(c, n_policies, seed)
    return c


# ---------------------------------------------------------------- changes

@dataclass
class Change:
    kind: str
    key: str
    raw: dict[str, Any] | None  # None: a delete
    delete: tuple[str, str | None, str] | None = None  # (kind, namespace, name)

    def apply(self, store: ClusterStore) -> None:
        if self.raw is not None:
            store.upsert(self.raw)
        else:
            assert self.delete is not None
            store.delete(*self.delete)


def _bump(raw: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    meta = out["metadata"]
    meta["resourceVersion"] = str(int(meta.get("resourceVersion") or "1") + 1)
    return out


def _pick_pod(c: Cluster, rng: random.Random, local: bool) -> str:
    keys = list(c.pods)
    for _ in range(200):
        key = rng.choice(keys)
        if (c.pods[key]["spec"]["nodeName"] == NODE) == local:
            return key
    return rng.choice(keys)


def make_change(c: Cluster, kind: str, rng: random.Random) -> Change:
    """A change of `kind` to the cluster's current content; updates `c`."""
    if kind == "policy_edit":
        key = rng.choice(list(c.policies))
        raw = _bump(c.policies[key])
        spec = raw["spec"]
        rules = spec.get("ingress") or spec.get("egress")
        if rules and rules[0].get("ports"):
            p = rules[0]["ports"][0]
            if isinstance(p.get("port"), int) and "endPort" not in p:
                p["port"] = 1 + (p["port"] % 65000) if rng.random() < 0.5 else p["port"] + 1
            else:
                rules[0]["ports"].append({"protocol": "TCP", "port": rng.choice([8443, 9443, 7000])})
        elif rules:
            rules[0]["ports"] = [{"protocol": "TCP", "port": rng.choice([80, 443, 8080])}]
        else:
            spec["podSelector"] = {"matchLabels": {"app": rng.choice(APPS)[0]}}
        c.policies[key] = raw
        return Change(kind, key, raw)
    if kind == "policy_new":
        raw = new_policy(c, rng)
        key = f"{raw['metadata']['namespace']}/{raw['metadata']['name']}"
        c.policies[key] = raw
        return Change(kind, key, raw)
    if kind == "policy_delete":
        key = rng.choice(list(c.policies))
        raw = c.policies.pop(key)
        return Change(kind, key, None, ("NetworkPolicy", raw["metadata"]["namespace"], raw["metadata"]["name"]))
    local = rng.random() < LOCAL_POD_CHANGE_SHARE
    if kind == "pod_label":
        key = _pick_pod(c, rng, local)
        raw = _bump(c.pods[key])
        labels = raw["metadata"]["labels"]
        if "version" in labels and rng.random() < 0.7:
            labels["version"] = "v-next" if labels["version"] != "v-next" else "v1"  # a rollout step
        elif "canary" in labels:
            del labels["canary"]
        else:
            labels["canary"] = "true"
        c.pods[key] = raw
        return Change(kind, key, raw)
    if kind == "pod_new":
        nss = [ns for ns, deps in c.deployments.items() if deps]
        dep = rng.choice(c.deployments[rng.choice(nss)])
        node = 0 if local else rng.randrange(1, c.n_nodes)
        raw = pod_obj(c, dep, node, rng)
        key = f"{dep.namespace}/{raw['metadata']['name']}"
        c.pods[key] = raw
        return Change(kind, key, raw)
    if kind == "pod_delete":
        key = _pick_pod(c, rng, local)
        raw = c.pods.pop(key)
        return Change(kind, key, None, ("Pod", raw["metadata"]["namespace"], raw["metadata"]["name"]))
    if kind == "namespace_label":
        name = rng.choice(list(c.namespaces))
        raw = _bump(c.namespaces[name])
        labels = raw["metadata"]["labels"]
        if rng.random() < 0.5:
            labels["env"] = {"prod": "staging", "staging": "dev", "dev": "prod"}.get(labels.get("env", ""), "prod")
        elif "istio-injection" in labels:
            del labels["istio-injection"]
        else:
            labels["istio-injection"] = "enabled"
        c.namespaces[name] = raw
        return Change(kind, name, raw)
    raise ValueError(kind)


# ---------------------------------------------------------------- running the compiler

class Node:
    """This node as the daemon sees it: which local pods have interfaces (a
    dict stands in for InterfaceResolver: every local pod has one)."""

    def __init__(self) -> None:
        self.addresses = tuple(ipaddress.ip_address(a) for a in NODE_ADDRESSES)
        self.ifindex: dict[str, int] = {}

    def context(self, snap) -> NodeContext:  # type: ignore[no-untyped-def]
        # What reconcile_once does before compiling: the local pods, their interfaces.
        local = [p for p in snap.pods.values() if p.node_name == NODE and p.is_running and not p.host_network]
        interfaces = {}
        for p in local:
            idx = self.ifindex.get(p.key)
            if idx is None:
                idx = self.ifindex[p.key] = FIRST_IFINDEX + len(self.ifindex)
            interfaces[p.key] = idx
        return NodeContext(NODE, self.addresses, interfaces)


class Pass:
    """One reconcile pass: snapshot, compile, sync."""

    def __init__(self, store: ClusterStore, compiler: Compiler, sync: MapSync, node: Node) -> None:
        self.store, self.compiler, self.sync, self.node = store, compiler, sync, node
        self.desired: DesiredState | None = None

    def run(self) -> tuple[int, int, int]:
        snap = self.store.snapshot()
        desired = self.compiler.compile(snap, self.node.context(snap))
        report = self.sync.apply(desired.map_contents(), desired.describe)
        self.desired = desired
        return report.written, report.deleted, report.failed


@contextlib.contextmanager
def pinned_datapath(pin_dir: Path, **config_fields: Any) -> Iterator[tuple[Any, Any]]:
    """(DatapathConfig, DatapathMaps) of the datapath loaded with its maps
    pinned in pin_dir, which must not exist yet; the programs are unloaded
    and the pins removed on exit. config_fields: DatapathConfig's."""
    from enforcer.datapath.loader import load_datapath_programs, remove_pins
    from enforcer.datapath.maps import DatapathMaps
    from enforcer.datapath.source import DatapathConfig

    if pin_dir.exists():
        raise RuntimeError(f"{pin_dir} exists already")
    config = DatapathConfig(pin_dir=pin_dir, **config_fields)
    programs = maps = None
    try:
        programs = load_datapath_programs(config)
        maps = DatapathMaps(pin_dir)
        yield config, maps
    finally:
        if maps is not None:
            maps.close()
        if programs is not None:
            programs.cleanup()
        try:
            remove_pins(config)
        except OSError as e:
            log(f"could not remove {pin_dir}: {e}")
        if pin_dir.exists():
            shutil.rmtree(pin_dir, ignore_errors=True)


@contextlib.contextmanager
def pinned_maps(tag: str = "") -> Iterator[Any]:
    """Real pinned maps from load_datapath_programs, under a pin directory of
    this process; the programs are unloaded and the pins removed on exit."""
    with pinned_datapath(Path(f"{PIN_PREFIX}-{os.getpid()}{tag}"), policy_max=POLICY_MAX) as (_config, maps):
        yield maps


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def cold(cluster: Cluster, maps: Any) -> tuple[dict[str, Any], Pass]:
    """Parse everything, compile, write every entry into empty maps."""
    objects = cluster.objects()
    sync = MapSync(maps)
    assert not (sync.applied.policy or sync.applied.ipcache or sync.applied.endpoints), "maps not empty"
    node = Node()
    gc.collect()
    t0 = time.perf_counter()
    store = ClusterStore()
    store.replace_all(objects, [])
    t1 = time.perf_counter()
    compiler = Compiler()
    snap = store.snapshot()
    ctx = node.context(snap)
    desired = compiler.compile(snap, ctx)
    t2 = time.perf_counter()
    report = sync.apply(desired.map_contents(), desired.describe)
    t3 = time.perf_counter()
    p = Pass(store, compiler, sync, node)
    p.desired = desired
    # The compile alone, again, from a fresh compiler (no state carried over).
    gc.collect()
    t4 = time.perf_counter()
    Compiler().compile(store.snapshot(), node.context(store.snapshot()))
    t5 = time.perf_counter()
    identities = len(desired.identities)
    out = {
        "parse_s": round(t1 - t0, 3),
        "compile_s": round(t2 - t1, 3),
        "write_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3),
        "compile_again_s": round(t5 - t4, 3),
        "written": report.written,
        "failures": report.failed,
        "local_pods": len(ctx.interfaces),
        "endpoints": len(desired.endpoints),
        "endpoint_ids": len(desired.endpoint_by_id()),
        "service_frontends": len(desired.services),
        "ipcache_entries": len(desired.ipcache),
        "policy_entries": len(desired.policy),
        "identities": identities,
        "rules": len(desired.rules),
        "object_errors": len(desired.errors),
    }
    if report.failures:
        log(f"cold: {report.failed} failed writes, e.g. {report.failures[0]}")
    return out, p


def changes(cluster: Cluster, p: Pass, n: int, seed: int = SEED,
            kinds: tuple[str, ...] = CHANGE_KINDS) -> dict[str, Any]:
    """n single-object changes, each compiled and synced on its own."""
    rng = random.Random(seed * 7 + len(cluster.policies))
    lat: list[float] = []
    by_kind: dict[str, list[float]] = {k: [] for k in kinds}
    touched: list[int] = []
    failures = 0
    gc_log: list[tuple[int, float]] = []  # (generation, seconds) of the collections during the changes
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_log.append((info["generation"], time.perf_counter() - started[0]))

    gc.collect()
    gc.callbacks.append(on_gc)
    try:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            ch = make_change(cluster, kind, rng)
            t0 = time.perf_counter()
            ch.apply(p.store)
            written, deleted, failed = p.run()
            dt = time.perf_counter() - t0
            failures += failed
            lat.append(dt)
            by_kind[kind].append(dt)
            touched.append(written + deleted)
    finally:
        gc.callbacks.remove(on_gc)
    full = [t for g, t in gc_log if g == 2]
    return {
        "count": n,
        "p50_ms": _ms(percentile(lat, 50)),
        "p99_ms": _ms(percentile(lat, 99)),
        "max_ms": _ms(max(lat)),
        "mean_ms": _ms(statistics.fmean(lat)),
        "entries_per_change_mean": round(statistics.fmean(touched), 1),
        "entries_per_change_max": max(touched),
        "failures": failures,
        "by_kind_p50_ms": {k: _ms(percentile(v, 50)) for k, v in by_kind.items() if v},
        "by_kind_max_ms": {k: _ms(max(v)) for k, v in by_kind.items() if v},
        "local_pod_change_share": LOCAL_POD_CHANGE_SHARE,
        # Python's cyclic GC, over the whole run (changes being made included):
        # a full (generation 2) collection walks every object of the process.
        "gc_full_collections": len(full),
        "gc_full_max_ms": _ms(max(full)) if full else 0.0,
    }


def full_compile_equals(cluster_store: ClusterStore, p: Pass, maps: Any) -> dict[str, bool]:
    """The maps as written by the passes so far equal what a fresh compiler
    makes of the final state (endpoint ids seeded as a restarted daemon
    seeds them), and equal what the maps hold."""
    snap = cluster_store.snapshot()
    fresh = Compiler()
    for uid, ep_id in p.compiler.endpoint_ids.items().items():
        fresh.endpoint_ids.seed(uid, ep_id)
    want = fresh.compile(snap, p.node.context(snap))
    last = p.desired
    assert last is not None
    in_maps = MapSync(maps).read()
    fresh_mc = want.map_contents()
    return {
        "applied_equals_fresh": p.sync.applied == fresh_mc,
        "maps_equal_fresh": in_maps == fresh_mc,
        "desired_equals_fresh": (last.map_contents() == fresh_mc and last.rules == want.rules
                                 and last.identities == want.identities and last.selected_by == want.selected_by
                                 and last.entries_by_policy == want.entries_by_policy
                                 and [str(e) for e in last.errors] == [str(e) for e in want.errors]
                                 and last.unplaced == want.unplaced),
    }


# ---------------------------------------------------------------- directory pickup

def write_directory(c: Cluster, directory: Path) -> dict[str, Path]:
    """namespaces.json, pods/<ns>.json and policies/<ns>.json (Lists).
    Returns the policy file of each namespace."""
    (directory / "pods").mkdir(parents=True)
    (directory / "policies").mkdir()
    (directory / "namespaces.json").write_text(json.dumps({"kind": "List", "items": list(c.namespaces.values())}))
    by_ns: dict[str, list] = {}
    for raw in c.pods.values():
        by_ns.setdefault(raw["metadata"]["namespace"], []).append(raw)
    for ns, items in by_ns.items():
        (directory / "pods" / f"{ns}.json").write_text(json.dumps({"kind": "List", "items": items}))
    files = {}
    for ns, items in policies_by_namespace(c).items():
        files[ns] = directory / "policies" / f"{ns}.json"
        files[ns].write_text(json.dumps({"kind": "List", "items": items}))
    return files


def policies_by_namespace(c: Cluster) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list] = {}
    for raw in c.policies.values():
        out.setdefault(raw["metadata"]["namespace"], []).append(raw)
    return out


def _vm(field_name: str) -> int:
    """kB of a /proc/self/status field (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


class _NullMap:
    def update(self, *_a: Any, **_k: Any) -> None:
        pass

    def delete(self, *_a: Any) -> bool:
        return True

    def items(self) -> Iterator[Any]:
        return iter(())

    def keys(self) -> Iterator[Any]:
        return iter(())


class NullMaps:
    """Stands in for DatapathMaps where writing is not what is measured."""

    def __init__(self) -> None:
        self._m = _NullMap()

    def __getitem__(self, _name: str) -> _NullMap:
        return self._m

    def set_identity(self, *_a: Any) -> None:
        pass

    def delete_identity(self, *_a: Any) -> bool:
        return True

    def identities(self) -> dict:  # type: ignore[type-arg]
        return {}

    def set_endpoint_id(self, *_a: Any) -> None:
        pass

    def delete_endpoint_id(self, *_a: Any) -> bool:
        return True

    def set_service(self, *_a: Any) -> None:
        pass

    def delete_service(self, *_a: Any) -> bool:
        return True

    def services(self) -> set:  # type: ignore[type-arg]
        return set()


def daemon_child(directory: Path, n_changes: int, seed: int, interval: float | None) -> dict[str, Any]:
    """In a fresh process, as the daemon would: import everything (baseline
    RSS), read the cluster from `directory` with DirectorySource, compile
    and sync it (map writes stood in for: bcc's compiler is not in the
    figure), then time policy-file changes until the store picks them up."""
    import bcc  # noqa: F401  (Debian's python3-bpfcc, as the daemon imports it)

    import enforcer.daemon.runtime  # noqa: F401
    from enforcer.sources.directory import DirectorySource

    gc.collect()
    out: dict[str, Any] = {"baseline_rss_mb": _mb(_vm("VmRSS"))}
    store = ClusterStore()
    published = threading.Event()
    at: list[float] = []

    def on_change() -> None:
        at.append(time.perf_counter())
        published.set()

    store.on_change = on_change
    src = (DirectorySource(directory, store) if interval is None
           else DirectorySource(directory, store, interval=interval))
    # Where a pickup's time goes: reading and parsing the file, the store's
    # replace_all, and the interpreter's cyclic GC (instrumentation only).
    spent = {"read": 0.0, "store": 0.0, "gc": 0.0}
    gc_started = [0.0]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    def on_gc(phase: str, _info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            spent["gc"] += time.perf_counter() - gc_started[0]

    src._read = timed("read", src._read)  # type: ignore[method-assign]
    store.replace_all = timed("store", store.replace_all)  # type: ignore[method-assign]
    t0 = time.perf_counter()
    src.start()
    try:
        if not published.wait(timeout=900):
            raise RuntimeError("directory source never published")
        out["first_read_s"] = round(at[-1] - t0, 2)
        snap = store.snapshot()
        out["objects"] = len(snap.namespaces) + len(snap.pods) + len(snap.policies)
        gc.collect()
        out["source_rss_mb"] = _mb(_vm("VmRSS"))  # + manifests as read, and the store
        p = Pass(store, Compiler(), MapSync(NullMaps()), Node())  # type: ignore[arg-type]
        p.run()
        p.run()  # as after a change: the last result and the new one both alive for a moment
        gc.collect()
        out["loaded_rss_mb"] = _mb(_vm("VmRSS"))
        out["peak_rss_mb"] = _mb(_vm("VmHWM"))
        out["policy_entries"] = len(p.desired.policy) if p.desired else 0

        rng = random.Random(seed * 13)
        files = sorted((directory / "policies").glob("*.json"))
        lat, sizes = [], []
        parts: dict[str, list[float]] = {k: [] for k in spent}
        gc.callbacks.append(on_gc)
        for _ in range(n_changes):
            path = rng.choice(files)
            doc = json.loads(path.read_text())
            items = doc["items"]
            i = rng.randrange(len(items))
            items[i] = _bump(items[i])
            items[i]["spec"].setdefault("ingress", []).append(
                {"ports": [{"protocol": "TCP", "port": rng.randrange(1, 65536)}]})
            hidden = path.with_name(f".{path.name}.tmp")
            hidden.write_text(json.dumps(doc))
            time.sleep(rng.uniform(0.05, 0.25))  # any phase of the poll cycle
            published.clear()
            rev = store.revision
            for k in spent:
                spent[k] = 0.0
            t = time.perf_counter()
            os.replace(hidden, path)  # appears whole, as a rename does
            if not published.wait(timeout=60):
                raise RuntimeError(f"change to {path.name} not picked up within 60 s")
            while store.revision == rev:
                time.sleep(0.0005)
            lat.append(at[-1] - t)
            for k, v in spent.items():
                parts[k].append(v)
            sizes.append(len(items))
            name = items[i]["metadata"]["name"]
            got = store.policies[f"{items[i]['metadata']['namespace']}/{name}"]
            assert got.resource_version == items[i]["metadata"]["resourceVersion"]
        out.update({
            "count": n_changes,
            "interval_s": src.interval,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(max(lat)) if lat else float("nan"),
            "policies_per_file_mean": round(statistics.fmean(sizes), 1) if sizes else 0,
            # Per change: file read and parse, replace_all, GC pauses (in the
            # process, during the pickup); the rest is waiting for the poll.
            "read_p50_ms": _ms(percentile(parts["read"], 50)),
            "store_p50_ms": _ms(percentile(parts["store"], 50)),
            "gc_p50_ms": _ms(percentile(parts["gc"], 50)),
            "gc_max_ms": _ms(max(parts["gc"])) if parts["gc"] else 0.0,
        })
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        src.stop()
    return out


def measure_daemon(c: Cluster, n_changes: int, seed: int = SEED, interval: float | None = None) -> dict[str, Any]:
    """Write the cluster as manifests, run daemon_child on them."""
    tmp = Path(tempfile.mkdtemp(prefix="enforcer-cbench-dir-"))
    try:
        write_directory(c, tmp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--daemon-child", str(tmp),
               "--pickup-changes", str(n_changes), "--seed", str(seed)]
        if interval is not None:
            cmd += ["--pickup-interval", str(interval)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"daemon child failed: {proc.stderr.strip()[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["pods"], out["policies"] = len(c.pods), len(c.policies)
    return out


def _proc_vm(pid: int) -> dict[str, int]:
    """kB of VmRSS and VmHWM of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def measure_real_daemon(c: Cluster, timeout: float = 900.0, cache_dir: Path | None = None) -> dict[str, Any]:
    """The real `enforcer run` (sys.executable -m enforcer) on the cluster
    written as manifests, in a network namespace of its own where this
    node's pods are veths with /32 routes (so they are placed
    and their programs attached, as on a node): VmRSS and VmHWM of the
    daemon process from /proc/<pid>/status, as daemon_child reads its own,
    once its first pass has synced (its ready file), and 2 s later; and
    the time from start to that first sync. cache_dir: the BPF bytecode
    cache it uses (empty: the datapath is compiled, as on a node's first
    start; filled by an earlier run: loaded from it, as on every later
    start); None: the default one."""
    from enforcer.lab.loader import DaemonProcess, remove_pin_dirs

    tag = f"cbench{os.getpid()}"
    netns, pin_dir = f"enforcer-{tag}", Path(f"{PIN_PREFIX}-real-{os.getpid()}")
    tmp = Path(tempfile.mkdtemp(prefix="enforcer-cbench-real-"))
    daemon: DaemonProcess | None = None
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        write_directory(c, tmp / "manifests")
        local = [raw for raw in c.pods.values() if raw["spec"]["nodeName"] == NODE]
        batch = ["link set lo up"]
        for i, raw in enumerate(local):
            batch += [f"link add p{i} type veth peer name q{i}", f"link set q{i} up", f"link set p{i} up"]
            addrs = [ip["ip"] for ip in raw["status"]["podIPs"]]
            batch += [f"route add {a}/{128 if ':' in a else 32} dev p{i}" for a in addrs]
        subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
        cache = ["--bpf-cache-dir", str(cache_dir)] if cache_dir is not None else []
        daemon = DaemonProcess(netns, pin_dir, tmp / "manifests", NODE, workdir=tmp / "work",
                               extra_args=["--map-size", f"policy={POLICY_MAX}", *cache])
        t0 = time.monotonic()
        daemon.start(timeout=timeout)
        first_sync = time.monotonic() - t0
        assert daemon.pid is not None
        at_sync = _proc_vm(daemon.pid)
        time.sleep(2)
        later = _proc_vm(daemon.pid)
        mapped = Path(f"/proc/{daemon.pid}/maps").read_text().lower()
        status = daemon.status()
        log_text = daemon.log_text()
    finally:
        if daemon is not None:
            daemon.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        remove_pin_dirs([pin_dir])
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "first_sync_s": round(first_sync, 2),
        "rss_at_sync_mb": _mb(at_sync["VmRSS"]), "peak_at_sync_mb": _mb(at_sync["VmHWM"]),
        "rss_mb": _mb(later["VmRSS"]), "peak_rss_mb": _mb(later["VmHWM"]),
        "bcc_mapped": any(lib in mapped for lib in ("libbcc", "libllvm", "libclang")),
        "pods": len(c.pods), "policies": len(c.policies),
        "local_pods": len(local), "endpoints": status.get("endpoints"),
        "policy_entries": status.get("policy_entries"), "errors_total": status.get("errors_total"),
        "loaded_by_child": "loaded by a child process" in log_text,
        "loaded_from_cache": "loaded from cached bytecode" in log_text,
        "loader_child_peak_rss_mb": float(m.group(1)) if (m := re.search(r"its peak RSS (\d+) MB", log_text)) else None,
    }


# ---------------------------------------------------------------- the benchmark

def _count(n: int) -> str:
    """10000 -> "10k" (goal names)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def run_benchmark(n_pods: int = PODS, policy_counts: tuple[int, ...] = POLICY_COUNTS,
                  n_changes: int = CHANGES, pickup_changes: int = PICKUP_CHANGES, seed: int = SEED,
                  n_namespaces: int = NAMESPACES, n_nodes: int = NODES, check: bool = True,
                  daemon: bool = True, progress: Callable[[str], None] = log,
                  pickup_interval: float | None = None, scale_pods: int = SCALE_PODS,
                  scale_policies: int = SCALE_POLICIES) -> dict[str, Any]:
    """Every figure; returns the result object (the JSON main prints last)."""
    t_start = time.monotonic()
    sizes: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    for n_pol in policy_counts:
        t = time.monotonic()
        cluster = build_cluster(n_pods, n_pol, seed, n_namespaces, n_nodes)
        progress(f"cluster: {len(cluster.namespaces)} namespaces, {len(cluster.pods)} pods, "
                 f"{len(cluster.policies)} policies (made in {time.monotonic() - t:.1f}s)")
        with pinned_maps(f"-{n_pol}") as maps:
            cold_fig, p = cold(cluster, maps)
            progress(f"  cold: {cold_fig}")
            ch = changes(cluster, p, n_changes, seed)
            progress(f"  changes: p50 {ch['p50_ms']} ms, p99 {ch['p99_ms']} ms, max {ch['max_ms']} ms")
            if check:
                checks[str(n_pol)] = full_compile_equals(p.store, p, maps)
                progress(f"  check: {checks[str(n_pol)]}")
        sizes[str(n_pol)] = {"cold": cold_fig, "change": ch}
        del cluster, p
    biggest = max(policy_counts)
    dmn: dict[str, Any] | None = None
    if daemon:
        progress(f"daemon process: {n_pods} pods, {biggest} policies read from a directory "
                 "(pure-Python YAML: the first read takes a while)")
        dmn = measure_daemon(build_cluster(n_pods, biggest, seed, n_namespaces, n_nodes), pickup_changes, seed,
                             interval=pickup_interval)
        progress(f"  {dmn}")
        progress("real daemon process (`enforcer run` in a network namespace, this node's pods as veths): "
                 "first start (no bytecode cache: compiled), then a restart (cached)")
        real_cluster = build_cluster(n_pods, biggest, seed, n_namespaces, n_nodes)
        with tempfile.TemporaryDirectory(prefix="enforcer-cbench-cache-") as cache:
            dmn["real_first_start"] = measure_real_daemon(real_cluster, cache_dir=Path(cache))
            progress(f"  first start: {dmn['real_first_start']}")
            dmn["real"] = measure_real_daemon(real_cluster, cache_dir=Path(cache))
            progress(f"  restart: {dmn['real']}")
            del real_cluster
            if scale_pods and scale_policies:
                progress(f"scale: the real daemon with {scale_pods:,} pods and {scale_policies:,} policies")
                dmn["real_scale"] = measure_real_daemon(
                    build_cluster(scale_pods, scale_policies, seed, n_namespaces, n_nodes), cache_dir=Path(cache))
                progress(f"  scale: {dmn['real_scale']}")
    lo, hi = str(min(policy_counts)), str(biggest)
    goals = {
        f"change_p99_le_{GOAL_CHANGE_P99_MS:g}ms_at_{lo}_policies": sizes[lo]["change"]["p99_ms"] <= GOAL_CHANGE_P99_MS,
        f"cold_le_{GOAL_COLD_S:g}s_at_{hi}_policies": sizes[hi]["cold"]["total_s"] <= GOAL_COLD_S,
        # The real daemon as users run it: peak RSS (after a restart: no
        # loader child) and time to its first complete sync on its first
        # start on a node (no bytecode cache: the datapath is compiled).
        f"rss_peak_le_{GOAL_RSS_MB:g}mb": dmn is not None and dmn["real"]["peak_rss_mb"] <= GOAL_RSS_MB,
        f"cold_start_le_{GOAL_COLD_S:g}s_at_{_count(int(hi))}": (
            dmn is not None and dmn["real_first_start"]["first_sync_s"] <= GOAL_COLD_S),
        f"pickup_p99_le_{GOAL_PICKUP_MS:g}ms": dmn is not None and dmn["p99_ms"] <= GOAL_PICKUP_MS,
    }
    return {
        "benchmark": "compiler",
        "pods": n_pods,
        "namespaces": n_namespaces,
        "nodes": n_nodes,
        "node": NODE,
        "policy_counts": list(policy_counts),
        "cold_total_s": {k: v["cold"]["total_s"] for k, v in sizes.items()},
        "cold_compile_s": {k: v["cold"]["compile_s"] for k, v in sizes.items()},
        "change_p50_ms": {k: v["change"]["p50_ms"] for k, v in sizes.items()},
        "change_p99_ms": {k: v["change"]["p99_ms"] for k, v in sizes.items()},
        "change_max_ms": {k: v["change"]["max_ms"] for k, v in sizes.items()},
        "change_entries_mean": {k: v["change"]["entries_per_change_mean"] for k, v in sizes.items()},
        "change_entries_max": {k: v["change"]["entries_per_change_max"] for k, v in sizes.items()},
        "pickup_p50_ms": dmn["p50_ms"] if dmn else None,
        "pickup_p99_ms": dmn["p99_ms"] if dmn else None,
        "rss_peak_mb": dmn["peak_rss_mb"] if dmn else None,
        "rss_baseline_mb": dmn["baseline_rss_mb"] if dmn else None,
        # The real `enforcer run` process after its first sync (measure_real_daemon).
        "daemon_rss_mb": dmn["real"]["rss_mb"] if dmn else None,
        "daemon_peak_rss_mb": dmn["real"]["peak_rss_mb"] if dmn else None,
        "daemon_first_sync_s": dmn["real"]["first_sync_s"] if dmn else None,
        "daemon_first_start_sync_s": dmn["real_first_start"]["first_sync_s"] if dmn else None,
        "daemon_first_start_peak_rss_mb": dmn["real_first_start"]["peak_rss_mb"] if dmn else None,
        "loader_child_peak_rss_mb": dmn["real_first_start"]["loader_child_peak_rss_mb"] if dmn else None,
        # The growth curve: the same daemon at scale_pods / scale_policies.
        "scale": ({k: dmn["real_scale"][k] for k in ("pods", "policies", "local_pods", "first_sync_s", "rss_mb",
                                                     "peak_rss_mb", "policy_entries", "errors_total")}
                  if dmn and "real_scale" in dmn else None),
        "goals": goals,
        "sizes": sizes,
        "daemon": dmn,
        "checks": checks,
        "seed": seed,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "seconds": round(time.monotonic() - t_start, 1),
    }


def format_table(r: dict[str, Any]) -> str:
    counts = [str(n) for n in r["policy_counts"]]
    s = r["sizes"]
    lines = [
        f"Compiler benchmark: {r['pods']:,} pods, {r['namespaces']} namespaces, {r['nodes']} nodes; "
        f"node {r['node']} with {s[counts[0]]['cold']['local_pods']} local pods. "
        f"Python {r['python']}, kernel {r['kernel']}, {r['cpus']} CPUs.",
        "",
    ]
    head = f"{'':34}" + "".join(f"{n + ' policies':>18}" for n in counts)
    lines += [head, "-" * len(head)]

    def row(label: str, fn: Callable[[dict], Any]) -> None:
        lines.append(f"{label:34}" + "".join(f"{fn(s[n]):>18}" for n in counts))

    row("cold: parse into store (s)", lambda x: f"{x['cold']['parse_s']:.3f}")
    row("cold: compile (s)", lambda x: f"{x['cold']['compile_s']:.3f}")
    row("cold: write maps (s)", lambda x: f"{x['cold']['write_s']:.3f}")
    row("cold: total (s)", lambda x: f"{x['cold']['total_s']:.3f}")
    row("compile again, fresh compiler (s)", lambda x: f"{x['cold']['compile_again_s']:.3f}")
    row("entries: policy", lambda x: f"{x['cold']['policy_entries']:,}")
    row("entries: ipcache", lambda x: f"{x['cold']['ipcache_entries']:,}")
    row("entries: endpoints", lambda x: f"{x['cold']['endpoints']:,}")
    row("identities / rules", lambda x: f"{x['cold']['identities']:,} / {x['cold']['rules']:,}")
    row("change: count", lambda x: f"{x['change']['count']}")
    row("change: p50 (ms)", lambda x: f"{x['change']['p50_ms']:.1f}")
    row("change: p99 (ms)", lambda x: f"{x['change']['p99_ms']:.1f}")
    row("change: max (ms)", lambda x: f"{x['change']['max_ms']:.1f}")
    row("  entries written+deleted mean/max", lambda x: f"{x['change']['entries_per_change_mean']:.1f} / "
                                                     f"{x['change']['entries_per_change_max']}")
    row("change: full GC runs / longest ms", lambda x: f"{x['change']['gc_full_collections']} / "
                                                        f"{x['change']['gc_full_max_ms']:.0f}")
    for kind in CHANGE_KINDS:
        row(f"  {kind} p50 / max (ms)",
            lambda x, k=kind: (f"{x['change']['by_kind_p50_ms'].get(k, 0):.1f} / "
                               f"{x['change']['by_kind_max_ms'].get(k, 0):.1f}"))
    d = r["daemon"]
    if d:
        lines += [
            "",
            f"daemon process ({d['pods']:,} pods, {d['policies']:,} policies = {d['objects']:,} objects, read by "
            f"DirectorySource from {d['policies_per_file_mean']:.0f}-policy files; first read {d['first_read_s']} s):",
            f"  pickup of a changed policy file (poll interval {d['interval_s']} s): p50 {d['p50_ms']:.0f} ms, "
            f"p99 {d['p99_ms']:.0f} ms, max {d['max_ms']:.0f} ms over {d['count']} changes; per change (p50): "
            f"file read+parse {d['read_p50_ms']:.0f} ms, store {d['store_p50_ms']:.0f} ms, GC {d['gc_p50_ms']:.0f} ms "
            f"(GC max {d['gc_max_ms']:.0f} ms), the rest waiting for the poll",
            f"  RSS: baseline (package and bcc imported) {d['baseline_rss_mb']} MB; with the manifests read "
            f"and the store filled {d['source_rss_mb']} MB; compiled and synced {d['loaded_rss_mb']} MB; "
            f"peak {d['peak_rss_mb']} MB",
        ]
        lines += ["", "the real daemon (`enforcer run`, this node's pods as veths in a network namespace):",
                  f"  {'':28}{'pods':>8}{'policies':>10}{'local':>7}{'first sync s':>14}{'RSS MB':>8}"
                  f"{'peak MB':>9}{'entries':>10}"]
        for label, key in (("first start (compiles)", "real_first_start"), ("restart (bytecode cache)", "real"),
                           ("scale, restart", "real_scale")):
            x = d.get(key)
            if x:
                lines.append(f"  {label:28}{x['pods']:>8,}{x['policies']:>10,}{x['local_pods']:>7}"
                             f"{x['first_sync_s']:>14}{x['rss_mb']:>8}{x['peak_rss_mb']:>9}"
                             f"{x['policy_entries'] or 0:>10,}")
        if d.get("real_first_start", {}).get("loader_child_peak_rss_mb"):
            lines.append(f"  first start: the loader child (bcc, LLVM) peaked at "
                         f"{d['real_first_start']['loader_child_peak_rss_mb']} MB and exited")
    if r["checks"]:
        lines.append("incremental == fresh full compile: " + ", ".join(
            f"{k} policies: {'yes' if all(v.values()) else 'NO ' + str(v)}" for k, v in r["checks"].items()))
    lines += ["", "change = store.upsert/delete + snapshot + compile + MapSync.apply of one object; "
              f"{int(LOCAL_POD_CHANGE_SHARE * 100)}% of pod changes are on the benchmarked node.",
              "goals: " + ", ".join(f"{k}={'met' if ok else 'MISSED'}" for k, ok in r["goals"].items()),
              f"({r['seconds']} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=PODS)
    p.add_argument("--policies", default=",".join(map(str, POLICY_COUNTS)))
    p.add_argument("--changes", type=int, default=CHANGES)
    p.add_argument("--pickup-changes", type=int, default=PICKUP_CHANGES)
    p.add_argument("--namespaces", type=int, default=NAMESPACES)
    p.add_argument("--nodes", type=int, default=NODES)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the maps, after the changes, with a fresh full compile")
    p.add_argument("--no-daemon", action="store_true", help="skip the pickup and RSS process")
    p.add_argument("--pickup-interval", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--daemon-child", help=argparse.SUPPRESS)
    p.add_argument("--scale-pods", type=int, default=SCALE_PODS, help="the scale row's pods (0: no scale row)")
    p.add_argument("--scale-policies", type=int, default=SCALE_POLICIES)
    p.add_argument("--real-daemon-only", action="store_true",
                   help="only measure the real `enforcer run` process (RSS, first sync) at the largest policy count")
    args = p.parse_args(argv)
    if args.real_daemon_only:
        n_pol = max(int(x) for x in args.policies.split(","))
        real = measure_real_daemon(build_cluster(args.pods, n_pol, args.seed, args.namespaces, args.nodes))
        real.update(pods=args.pods, policies=n_pol)
        print(json.dumps(real))
        return 0
    if args.daemon_child:
        print(json.dumps(daemon_child(Path(args.daemon_child), args.pickup_changes, args.seed, args.pickup_interval)))
        return 0
    if os.geteuid() != 0:
        print("compiler_bench: must run as root (loads BPF programs for real maps)", file=sys.stderr)
        return 1

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through pinned_maps()

    old = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result = run_benchmark(args.pods, tuple(int(x) for x in args.policies.split(",")), args.changes,
                               args.pickup_changes, args.seed, args.namespaces, args.nodes,
                               check=not args.no_check, daemon=not args.no_daemon,
                               pickup_interval=args.pickup_interval, scale_pods=args.scale_pods,
                               scale_policies=args.scale_policies)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print(format_table(result))
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
