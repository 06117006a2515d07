"""A lab cluster: the lab's namespaces and pods described as Kubernetes
objects, plus clients outside the cluster (a load balancer's address).

`enforcer lab up` builds it and writes its Namespace and Pod manifests into
a directory the daemon reads; `probe` prints connectivity; `down` removes
it. State (addresses, namespaces) is kept in a small JSON file so the
commands can run as separate processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .netns import ip_batch, netns_add, sysctl
from .probe import ProbeSpec, format_matrix, probe_many
from .topology import GATEWAY4, GATEWAY6, NODE, Lab

NODE_NAME = "lab-node"
STATE_DIR = Path("/run/enforcer-lab")
LAB_PORTS = (80, 81)


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    labels: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def lab_name(self) -> str:
        return (self.namespace + self.name).replace("-", "")[:10]


@dataclass(frozen=True)
class ExternalSpec:
    """A client outside the cluster (no Pod object), e.g. a load balancer."""

    name: str
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class ClusterSpec:
    namespaces: dict[str, dict[str, str]]
    pods: tuple[PodSpec, ...]
    externals: tuple[ExternalSpec, ...] = ()


# The seeds' scenario: namespace foo serves, bar is another tenant, and an
# external load balancer (outside the pod network) fronts foo's web pods.
DEMO_SPEC = ClusterSpec(
    namespaces={"foo": {"tenant": "foo"}, "bar": {"tenant": "bar"}},
    pods=(
        PodSpec("foo", "web", {"app": "web"}),
        PodSpec("foo", "api", {"app": "api"}),
        PodSpec("bar", "client", {"app": "client"}),
    ),
    externals=(ExternalSpec("lb", "198.51.100.10", "2001:db8:100::10"),),
)


def container_ports() -> list[dict[str, Any]]:
    return [{"name": f"serve-{p}-{proto.lower()}", "containerPort": p, "protocol": proto}
            for p in LAB_PORTS for proto in ("TCP", "UDP")]


def manifests(spec: ClusterSpec, lab: Lab) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
        for ns, labels in spec.namespaces.items()]
    for p in spec.pods:
        lp = lab.pod(p.lab_name)
        objs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "uid": f"lab-{p.namespace}-{p.name}",
                         "labels": p.labels},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "serve", "image": "lab",
                                                            "ports": container_ports()}]},
            "status": {"phase": "Running", "podIP": str(lp.ipv4),
                       "podIPs": [{"ip": str(lp.ipv4)}, {"ip": str(lp.ipv6)}]},
        })
    return objs


def add_external(lab: Lab, ext: ExternalSpec) -> str:
    """A client namespace wired to the node like a pod, with an address from
    outside the pod network. Returns its netns."""
    netns = f"{lab.prefix}-{ext.name}"
    ifname = f"ext{ext.name}"[:15]
    netns_add(netns)
    sysctl(netns, {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0})
    ip_batch(["link set lo up", f"link add {ifname} type veth peer name eth0 netns {netns}"], netns=lab.node_netns)
    sysctl(lab.node_netns, {f"net.ipv4.conf.{ifname}.proxy_arp": 1, f"net.ipv4.neigh.{ifname}.proxy_delay": 0,
                            f"net.ipv6.conf.{ifname}.accept_dad": 0})
    ip_batch([f"link set {ifname} up", f"addr add {GATEWAY6}/64 dev {ifname} nodad",
              f"route add {ext.ipv4}/32 dev {ifname}", f"route add {ext.ipv6}/128 dev {ifname}"],
             netns=lab.node_netns)
    ip_batch([f"addr add {ext.ipv4}/32 dev eth0", f"addr add {ext.ipv6}/128 dev eth0 nodad", "link set eth0 up",
              f"route add {GATEWAY4} dev eth0 scope link", f"route add default via {GATEWAY4} dev eth0",
              f"route add ::/0 via {GATEWAY6} dev eth0"], netns=netns)
    return netns


@dataclass
class LabState:
    prefix: str
    source_dir: str
    node_netns: str
    pods: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> netns, ipv4, ipv6, ifname
    externals: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def path(cls, prefix: str) -> Path:
        return STATE_DIR / f"{prefix}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.path(self.prefix).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, prefix: str) -> LabState:
        try:
            return cls(**json.loads(cls.path(prefix).read_text()))
        except FileNotFoundError:
            raise SystemExit(f"no lab {prefix!r} is up (enforcer lab up --prefix {prefix})") from None


def lab_up(prefix: str, source_dir: Path, spec: ClusterSpec = DEMO_SPEC) -> tuple[Lab, LabState]:
    lab = Lab(prefix, [p.lab_name for p in spec.pods], ports=LAB_PORTS)
    lab.up()
    try:
        state = LabState(prefix, str(source_dir), lab.node_netns)
        for p in spec.pods:
            lp = lab.pod(p.lab_name)
            state.pods[p.key] = {"netns": lp.netns, "ipv4": str(lp.ipv4), "ipv6": str(lp.ipv6),
                                 "ifname": lp.host_ifname}
        for ext in spec.externals:
            state.externals[ext.name] = {"netns": add_external(lab, ext), "ipv4": ext.ipv4, "ipv6": ext.ipv6}
        source_dir.mkdir(parents=True, exist_ok=True)
        (source_dir / "lab-cluster.yaml").write_text(
            yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": manifests(spec, lab)}))
        state.save()
    except BaseException:
        lab_down(prefix)
        raise
    return lab, state


def lab_down(prefix: str) -> None:
    Lab.cleanup_stale(prefix)
    LabState.path(prefix).unlink(missing_ok=True)


def matrix(state: LabState, port: int, proto: str = "tcp", family: int = 4) -> str:
    key = "ipv4" if family == 4 else "ipv6"
    sources = {NODE: state.node_netns} | {k: v["netns"] for k, v in state.pods.items()} \
        | {k: v["netns"] for k, v in state.externals.items()}
    targets = list(state.pods)
    specs = [ProbeSpec(ns, state.pods[t][key], port, proto) for ns in sources.values() for t in targets]
    results = probe_many(specs, timeout=1.0)
    grid = {(s, t): (None if s == t else results[i * len(targets) + j])
            for i, s in enumerate(sources) for j, t in enumerate(targets)}
    title = f"{proto}/{port} IPv{family}"
    return format_matrix(title, list(sources), targets, grid)


