"""Replays the upstream cases (cases.py) on two nodes, probing pod IPs or,
as upstream does, each pod's own Service ClusterIP through kube-proxy.

Topology (tests.support.multinode.MultiNodeLab): nodes n1 and n2 on an
underlay, routed pod CIDRs, kube-proxy's iptables rules emulated on both.

  n1: x/a x/b y/a y/b z/a z/b        n2: x/c y/c z/c

so every namespace has pods on both nodes, and every case probes pairs on
one node (x/a -> x/b, y/b -> z/a, ...) and across (x/a -> x/c, z/c -> y/a,
...). Lab pod "xa" is model pod "x/a", as in runner.py.

Every pod has its upstream Service (model.go): ``s-<ns>-<pod>`` in the
pod's namespace, type ClusterIP, selector ``{"pod": <name>}``, ports
``service-port-<proto>-<port>`` 80 and 81 on TCP and UDP, targetPort the
same; dual-stack ClusterIPs 10.96.10.<ns><pod> and fd00:96::a<ns><pod>
(x/a: 10.96.10.11, fd00:96::a11; z/c: 10.96.10.33). kube-proxy's rules on
both nodes follow the selector (backends recomputed when labels change);
the Service manifests are in the directory the daemons read.

One daemon per node (`enforcer run --node n1|n2`), both on the same
manifest directory, pins in /sys/fs/bpf/enforcer-conf-<prefix>-<node>
(pin_dir_prefix); before probing,
the runner waits until both report the directory's content revision.

``target`` picks what a probe connects to: "pod" (the destination pod's
IP, as runner.py) or "service" (its Service's ClusterIP, as upstream's
probe.go). Self-pairs are never probed (upstream ignoreLoopback; through a
ClusterIP they would be hairpin connections, which kube-proxy
masquerades), exactly as in runner.py.

From the command line (as root, from the repository root), to see every
case's truth-table diff without pytest:

    .venv/bin/python -m tests.conformance.multinode_runner [--target pod|service|both] [--family 6] [--case ID ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enforcer.lab.loader import DaemonProcess, remove_pin_dirs
from enforcer.lab.probe import ProbeSpec, probe_many
from enforcer.sources.directory import directory_revision
from tests.support.fast import FAST_POLL, start_all
from tests.support.kubeproxy import Service, ServicePort
from tests.support.multinode import MultiNodeLab

from . import cases as C
from . import model as M
from .runner import ConformanceBase, lab_name, probe_timeout, run_case, tear_down

#: Node -> model pods: a and b of every namespace on n1, c on n2.
PLACEMENT: dict[str, tuple[str, ...]] = {
    "n1": tuple(p for p in M.ALL_PODS if M.split_pod(p)[1] in ("a", "b")),
    "n2": tuple(p for p in M.ALL_PODS if M.split_pod(p)[1] == "c"),
}
TARGETS = ("pod", "service")
#: The Service ports of model.go (SCTP left out: kube-proxy's emulation and
#: this kernel have none, and only the TCP and UDP cases run here).
SERVICE_PROTOCOLS = ("TCP", "UDP")
UNPLACED_GRACE = 5.0  # a pod's interface may take a moment to be found


def service_ips(pod: str) -> tuple[str, str]:
    """The (IPv4, IPv6) ClusterIPs of the pod's Service."""
    ns, name = M.split_pod(pod)
    code = f"{M.NAMESPACES.index(ns) + 1}{M.POD_NAMES.index(name) + 1}"
    return f"10.96.10.{code}", f"fd00:96::a{code}"


def pod_service(pod: str, backends: tuple[str, ...]) -> Service:
    """The pod's upstream Service, for kube-proxy (backends: lab pod names)."""
    ns, _ = M.split_pod(pod)
    v4, v6 = service_ips(pod)
    ports = tuple(ServicePort(port, protocol=proto, name=f"service-port-{proto.lower()}-{port}")
                  for port in M.PORTS for proto in SERVICE_PROTOCOLS)
    return Service(M.service_name(pod), v4, ports, backends, namespace=ns, cluster_ipv6=v6)


@dataclass
class MultiNodeConformanceLab(ConformanceBase):
    """The nine pods on two nodes (PLACEMENT), their Services, a daemon per
    node; probes go to pod IPs or ClusterIPs as `target` says."""

    target: str = "pod"
    #: Pins of node <n> go to <pin_dir_prefix><prefix>-<n>.
    pin_dir_prefix: str = "/sys/fs/bpf/enforcer-conf-"
    lab: MultiNodeLab = field(init=False)
    daemons: dict[str, DaemonProcess] = field(init=False, default_factory=dict)
    pin_dirs: dict[str, Path] = field(init=False, default_factory=dict)
    services: dict[str, Service] = field(init=False, default_factory=dict)  # model pod -> its Service

    # -- lifecycle --

    def start(self) -> MultiNodeConformanceLab:
        self.pin_dirs = {node: Path(f"{self.pin_dir_prefix}{self.prefix}-{node}") for node in PLACEMENT}
        self._remove_pins()  # a crashed run's
        self._make_source()
        self._reset_labels()
        self.services = {p: pod_service(p, self._backends(p)) for p in M.ALL_PODS}
        self.lab = MultiNodeLab(self.prefix, {node: [lab_name(p) for p in pods] for node, pods in PLACEMENT.items()},
                                services=list(self.services.values()))
        self.lab.up()
        self._write_cluster()
        for node in PLACEMENT:
            self.daemons[node] = DaemonProcess(self.lab.node(node).netns, self.pin_dirs[node], self.source, node,
                                               workdir=self.source.parent / f"{self.source.name}-{node}",
                                               extra_args=FAST_POLL)
        start_all(self.daemons.values())
        self.sync()
        return self

    def close(self) -> None:
        steps = [d.close for d in self.daemons.values()]
        if hasattr(self, "lab"):
            steps.append(self.lab.down)
        steps.append(self._remove_pins)
        if hasattr(self, "source"):
            steps.append(lambda: shutil.rmtree(self.source, ignore_errors=True))
        tear_down(steps, "conformance")

    def _remove_pins(self) -> None:
        remove_pin_dirs(self.pin_dirs.values())

    # -- the topology's part --

    def node_of(self, pod: str) -> str:
        return next(node for node, pods in PLACEMENT.items() if pod in pods)

    def address_of(self, pod: str) -> str:
        """What a probe to `pod` connects to, in this lab's family."""
        if self.target == "service":
            v4, v6 = service_ips(pod)
            return v4 if self.family == 4 else v6
        return self.pod_ips()[pod][0]

    def _backends(self, pod: str) -> tuple[str, ...]:
        """The lab pods the pod's Service selects now (its selector is
        {"pod": <name>} in its namespace)."""
        ns, name = M.split_pod(pod)
        return tuple(lab_name(q) for q in M.ALL_PODS
                     if M.split_pod(q)[0] == ns and self.pod_labels[q].get(M.POD_LABEL_KEY) == name)

    def service_manifest(self, pod: str) -> dict[str, Any]:
        svc = self.services[pod]
        obj = svc.manifest(selector={M.POD_LABEL_KEY: M.split_pod(pod)[1]})
        if self.family == 6:  # the cluster's primary family first, as the API server orders them
            spec = obj["spec"]
            spec["clusterIPs"].reverse()
            spec["ipFamilies"].reverse()
            spec["clusterIP"] = spec["clusterIPs"][0]
        return obj

    def _write_cluster(self) -> None:
        super()._write_cluster()
        services = {p: pod_service(p, self._backends(p)) for p in M.ALL_PODS}
        if services != self.services:  # a label change moved a Service's endpoints: kube-proxy follows
            self.services = services
            self.lab.update_services(list(services.values()))
        self._write("services.yaml", [self.service_manifest(p) for p in M.ALL_PODS])

    def sync(self) -> dict[str, dict[str, Any]]:
        revision = directory_revision(self.source)
        out = {}
        for node, d in self.daemons.items():
            status = d.wait_synced(revision)
            deadline = time.monotonic() + UNPLACED_GRACE
            while status.get("unplaced") and time.monotonic() < deadline:
                time.sleep(0.05)
                status = d.status()
            if status.get("unplaced"):
                raise AssertionError(f"{node}: pods without interface: {status['unplaced']}")
            out[node] = status
        return out

    def observe(self, protocol: str, port: int, pairs: list[tuple[str, str]],
                expected: dict[tuple[str, str], bool]) -> dict[tuple[str, str], bool]:
        if protocol not in SERVICE_PROTOCOLS:
            raise ValueError(f"{protocol}: the multi-node runner probes TCP and UDP on the wire only")
        specs = [ProbeSpec(self.lab.pod(lab_name(s)).netns, self.address_of(d), port, protocol.lower(),
                           timeout=probe_timeout(expected, (s, d))) for s, d in pairs]
        return {pair: r.ok for pair, r in zip(pairs, probe_many(specs), strict=False)}

    def diagnostics(self) -> str:
        return "\n".join(f"daemon {node} log:\n{d.log_tail(10)}" for node, d in self.daemons.items())


def wire_cases() -> tuple[C.Case, ...]:
    """Every case that needs no SCTP traffic (TCP and UDP, 45 of 48)."""
    return C.cases(sctp=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=TARGETS + ("both",), default="both")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--case", action="append", default=[], help="case id (repeatable; default: every TCP/UDP case)")
    ap.add_argument("--prefix", default="mnconf", help="lab prefix (network namespaces <prefix>-*)")
    ap.add_argument("--pin-dir-prefix", default="/sys/fs/bpf/enforcer-conf-", help="pins go to <this><prefix>-<node>")
    args = ap.parse_args(argv)
    selected = [C.CASES_BY_ID[c] for c in args.case] if args.case else list(wire_cases())
    targets = TARGETS if args.target == "both" else (args.target,)
    lab = MultiNodeConformanceLab(prefix=args.prefix, family=args.family, pin_dir_prefix=args.pin_dir_prefix)
    failed: list[str] = []
    try:
        lab.start()
        for target in targets:
            lab.target = target
            for case in selected:
                t0 = time.monotonic()
                try:
                    run_case(lab, case, keep_going=True)
                    print(f"PASS {target:7} {case.id} ({time.monotonic() - t0:.1f}s)", flush=True)
                except AssertionError as e:
                    failed.append(f"{target} {case.id}")
                    report = str(e).split("\ndaemon ")[0]
                    print(f"FAIL {target:7} {case.id} ({time.monotonic() - t0:.1f}s)\n{report}\n", flush=True)
    finally:
        lab.close()
    print(f"{len(failed)} of {len(selected) * len(targets)} failed" + "".join(f"\n  {f}" for f in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
