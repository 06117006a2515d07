"""Replays the ClusterNetworkPolicy conformance data (cases.py) against the
real daemon in a one-node netns lab, reusing the NetworkPolicy runner's
machinery (tests/conformance/runner.py): enforcer.lab's Lab, pods and
probes, DaemonProcess on a manifest directory, waiting until the daemon
reports the directory's content revision before every probe, SCTP through
BPF_PROG_TEST_RUN (packet_verdict.py, one process kept per lab).

Lab: the 8 pod-network pods of base/manifests.yaml ("hp0" is
gryffindor/harry-potter-0, ...) serve TCP and UDP on 80, 8080, 53 and 5353
(serve.py answers both protocols on every port: a superset of upstream's
agnhost containers). centaur-0 and centaur-1 are hostNetwork: one server in
the node's netns answers on the node's addresses on HostNetworkPorts 0-5
(both replicas have the node's address, as two hostNetwork pods on one
node would). The Node object of the lab node (kubernetes.io/os: linux,
InternalIPs 10.245.0.1 and fd00:245::1) is a manifest too.

Files in the daemon's directory: namespaces.yaml, pods.yaml, nodes.yaml,
and objects/<kind>-<namespace>-<name>.yaml, one per test object, written
as the upstream YAML renders (a patch rewrites the object's file).

A poke passes when an expected connect is answered (OK) and an expected
deny is a TIMEOUT; a REFUSED (RST, ICMP reject) or an error fails either
way, as upstream's doPokeServer. Pokes with no other step between them
run at once, across subtests (they only read: run_test); a mismatch is
probed twice more before it counts.

Services (the hairpin case): a Service object is written for the daemon
and kube-proxy's iptables rules for it (tests/support/kubeproxy.py: ClusterIP
DNAT, masquerade of a pod reaching itself) go into the node's namespace;
a poke `via="service"` targets its ClusterIP.
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enforcer.lab.loader import DaemonProcess, remove_pin_dirs
from enforcer.lab.netns import netns_path
from enforcer.lab.probe import Outcome, ProbeSpec, connect_tcp, exchange, probe_many
from enforcer.lab.topology import NODE_IPV4, NODE_IPV6, POD_NET4, POD_NET6, Lab, stop_process
from enforcer.sources.directory import directory_revision
from tests.support import kubeproxy
from tests.support.fast import FAST_POLL
from tests.support.icmp import echo_many
from tests.support.packet_verdict import VerdictProcess

from ..runner import ALLOWED_TIMEOUT, DENIED_TIMEOUT, tear_down, write_manifest_list
from . import cases as C
from . import cluster as K

NODE_NAME = "cnp-lab-node"
POD_PORTS = (80, 8080, 53, 5353)
CENTAUR_PORTS = C.HOST_NETWORK_PORTS[:6]
PIN_ROOT = Path("/sys/fs/bpf")
PIN_PREFIX = "enforcer-cnp-"
RETRIES = 2
_OK, _DENIED = "ok", "timeout"


def observed_label(outcome: Outcome) -> str:
    return {Outcome.OK: _OK, Outcome.TIMEOUT: _DENIED, Outcome.REFUSED: "refused"}.get(outcome, "error")


@dataclass
class Result:
    """One poke's last observation."""

    poke: C.Poke
    observed: str  # ok | timeout | refused | error

    @property
    def passed(self) -> bool:
        return self.observed == (_OK if self.poke.connect else _DENIED)

    def line(self) -> str:
        p = self.poke
        port = f"/{p.port}" if p.protocol != "ICMP" else ""
        via = " (via Service)" if p.via != "pod" else ""
        return (f"{p.client} -> {p.server}{via} {p.protocol}{port}: expected "
                f"{'connect' if p.connect else 'timeout'}, observed {self.observed}")


@dataclass
class CNPLab:
    prefix: str
    family: int = 4
    daemon_args: tuple[str, ...] = ()
    source: Path = field(init=False)
    pin_dir: Path = field(init=False)
    lab: Lab = field(init=False)
    daemon: DaemonProcess = field(init=False)
    ns_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    objects: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    connections: dict[str, socket.socket] = field(default_factory=dict)
    centaur: subprocess.Popen | None = None
    verdicts: VerdictProcess | None = None
    kube_proxy: bool = False  # its chains installed in the node (at the first Service)
    _sport: int = 31000

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> CNPLab:
        Lab.cleanup_stale(self.prefix)
        self.pin_dir = PIN_ROOT / f"{PIN_PREFIX}{self.prefix}"
        remove_pin_dirs([self.pin_dir])
        self.source = Path(tempfile.mkdtemp(prefix=f"{PIN_PREFIX}{self.prefix}-"))
        (self.source / "objects").mkdir()
        self.lab = Lab(self.prefix, [K.lab_name(p) for p in K.POD_NETWORK_PODS], ports=POD_PORTS)
        self.lab.up()
        self._start_centaur()
        self.verdicts = VerdictProcess(netns_path(self.lab.node_netns))
        self._reset_labels()
        self._write_cluster()
        self.daemon = DaemonProcess(self.lab.node_netns, self.pin_dir, self.source, NODE_NAME,
                                    workdir=self.source.parent / f"{self.source.name}-daemon",
                                    extra_args=(*FAST_POLL, *self.daemon_args))
        self.daemon.start()
        self.sync()
        return self

    def close(self) -> None:
        steps = [self._close_connections, lambda: stop_process(self.centaur)]
        if self.verdicts is not None:
            steps.append(self.verdicts.close)
        if hasattr(self, "daemon"):
            steps.append(self.daemon.close)
        if hasattr(self, "lab"):
            steps.append(self.lab.down)
        if hasattr(self, "pin_dir"):
            steps.append(lambda: remove_pin_dirs([self.pin_dir]))
        if hasattr(self, "source"):
            steps.append(lambda: shutil.rmtree(self.source, ignore_errors=True))
        tear_down(steps, "cnp conformance")

    def _start_centaur(self) -> None:
        """centaur's servers, hostNetwork: in the node's netns, on its addresses."""
        cmd = ["ip", "netns", "exec", self.lab.node_netns, sys.executable, "-m", "enforcer.lab.serve",
               "--name", "centaur", "--addr", str(NODE_IPV4), "--addr", str(NODE_IPV6)]
        for port in CENTAUR_PORTS:
            cmd += ["--port", str(port)]
        self.centaur = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        assert self.centaur.stdout is not None
        ready, _, _ = select.select([self.centaur.stdout], [], [], 15.0)
        if not ready or self.centaur.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"centaur server did not start (exit code {self.centaur.poll()})")

    def _close_connections(self) -> None:
        for s in self.connections.values():
            s.close()
        self.connections.clear()

    # -- cluster state as files ---------------------------------------------

    def node_ips(self) -> list[str]:
        v4, v6 = str(NODE_IPV4), str(NODE_IPV6)
        return [v4, v6] if self.family == 4 else [v6, v4]

    def pod_ips(self, pod: str) -> list[str]:
        if K.is_host_network(pod):
            return self.node_ips()
        lp = self.lab.pod(K.lab_name(pod))
        v4, v6 = str(lp.ipv4), str(lp.ipv6)
        return [v4, v6] if self.family == 4 else [v6, v4]

    def pod_ip(self, pod: str) -> str:
        """status.podIP: the lab's family."""
        return self.pod_ips(pod)[0]

    def pod_ip_map(self) -> dict[str, str]:
        return {p: self.pod_ip(p) for p in K.ALL_PODS}

    def _reset_labels(self) -> None:
        self.ns_labels = {h: K.namespace_labels(h) for h in K.HOUSES}

    def _write_cluster(self) -> None:
        write_manifest_list(self.source / "namespaces.yaml",
                            [K.render_namespace(h, self.ns_labels[h]) for h in K.HOUSES])
        write_manifest_list(self.source / "pods.yaml",
                            [K.render_pod(p, NODE_NAME, self.pod_ips(p), self.node_ips()) for p in K.ALL_PODS])
        write_manifest_list(self.source / "nodes.yaml", [K.render_node(NODE_NAME, self.node_ips())])

    def _object_path(self, key: tuple[str, str | None, str]) -> Path:
        kind, ns, name = key
        return self.source / "objects" / f"{kind.lower()}-{ns or 'cluster'}-{name}.yaml"

    def put(self, obj: dict[str, Any]) -> None:
        key = C.object_key(obj)
        self.objects[key] = obj
        write_manifest_list(self._object_path(key), [obj])
        if key[0] == "Service":
            self._sync_kube_proxy()

    def remove(self, key: tuple[str, str | None, str]) -> None:
        had = self.objects.pop(key, None)
        self._object_path(key).unlink(missing_ok=True)
        if had is not None and key[0] == "Service":
            self._sync_kube_proxy()

    # -- Services: kube-proxy's iptables mode, emulated (tests/support/kubeproxy.py)

    def service_backends(self, obj: dict[str, Any]) -> list[str]:
        """The pods the Service's selector picks in its namespace."""
        selector = obj["spec"].get("selector") or {}
        return [p for p in K.POD_NETWORK_PODS if K.namespace(K.split(p)[0]) == obj["metadata"]["namespace"]
                and selector and all(K.pod_labels(p).get(k) == v for k, v in selector.items())]

    def _kube_proxy_services(self) -> list[tuple[kubeproxy.Service, list[kubeproxy.Endpoint]]]:
        out = []
        for (kind, ns, name), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0])):
            if kind != "Service":
                continue
            spec, backends = obj["spec"], self.service_backends(obj)
            ips = spec["clusterIPs"]
            svc = kubeproxy.Service(
                name, next(ip for ip in ips if ":" not in ip),
                tuple(kubeproxy.ServicePort(p["port"], p["targetPort"], p["protocol"], name=p["name"])
                      for p in spec["ports"]),
                tuple(K.lab_name(b) for b in backends), namespace=str(ns),
                cluster_ipv6=next((ip for ip in ips if ":" in ip), None))
            out.append((svc, [kubeproxy.Endpoint(self.pod_ip(b), NODE_NAME) for b in backends]))
        return out

    def _sync_kube_proxy(self) -> None:
        """kube-proxy's rules for the Services there are now (ClusterIP
        DNAT, masquerade of a hairpin) in the lab's family."""
        if not self.kube_proxy:
            kubeproxy.install_jumps(self.lab.node_netns, self.family)
            self.kube_proxy = True
        cidr = str(POD_NET4 if self.family == 4 else POD_NET6)
        kubeproxy.sync(self.lab.node_netns,
                       kubeproxy.render(NODE_NAME, self.family, cidr, self._kube_proxy_services()), self.family)

    def cluster_ip(self, server: str, protocol: str, port: int) -> str:
        """The lab family's ClusterIP of a Service selecting `server` with that port."""
        for (kind, _, _), obj in self.objects.items():
            if kind == "Service" and server in self.service_backends(obj) and any(
                    p["protocol"] == protocol and p["port"] == port for p in obj["spec"]["ports"]):
                return next(ip for ip in obj["spec"]["clusterIPs"] if (":" in ip) == (self.family == 6))
        raise ValueError(f"no Service selects {server} on {protocol}/{port}")

    def sync(self) -> dict[str, Any]:
        status = self.daemon.wait_synced(directory_revision(self.source))
        unplaced = [p for p in status.get("unplaced") or () if "centaur" not in str(p)]
        if unplaced:
            raise AssertionError(f"pods without interface: {unplaced}")
        return status

    def reset(self) -> None:
        """Between tests (upstream's t.Cleanup): no test objects, base labels,
        no kept connections."""
        self._close_connections()
        for key in list(self.objects):
            self.remove(key)
        for f in (self.source / "objects").iterdir():
            f.unlink()
        self._reset_labels()
        self._write_cluster()
        self.sync()

    # -- steps -------------------------------------------------------------

    def apply(self, step: C.Step) -> list[Result]:
        if isinstance(step, C.Patch):
            key = ("ClusterNetworkPolicy", None, step.policy)
            self.put(C.apply_ops(self.objects[key], step.ops, self.pod_ip_map()))
        elif isinstance(step, C.Apply):
            self.put(C.resolve(step.obj, self.pod_ip_map()))
        elif isinstance(step, C.Delete):
            self.remove((step.kind, step.namespace, step.name))
        elif isinstance(step, C.SetNamespaceLabels):
            self.ns_labels[step.house] = dict(step.labels)
            self._write_cluster()
        elif isinstance(step, C.EstablishedConnection):
            self.sync()
            s, _ = connect_tcp(self.lab.pod(K.lab_name(step.client)).netns, self.pod_ip(step.server), step.port,
                               timeout=ALLOWED_TIMEOUT)
            self.connections[step.key] = s
        elif isinstance(step, C.CheckEstablished):
            self.sync()
            return [self._check_established(step)]
        else:
            raise TypeError(f"not a single step: {step!r}")
        return []

    def _check_established(self, step: C.CheckEstablished) -> Result:
        s = self.connections[step.key]
        poke = C.Poke("(established)", "TCP", step.key, 0, step.alive)
        deadline = time.monotonic() + (ALLOWED_TIMEOUT if step.alive else 2.0)
        observed = "error"
        while time.monotonic() < deadline:  # a cut may take the daemon a pass: poll, never sleep blindly
            s.settimeout(DENIED_TIMEOUT if not step.alive else ALLOWED_TIMEOUT)
            try:
                exchange(s, "ping")
                observed = _OK
            except TimeoutError:
                observed = _DENIED
            except OSError:
                observed = "refused"
            if observed == (_OK if step.alive else _DENIED) or observed == "refused":
                break
        return Result(poke, observed)

    def poke_all(self, pokes: list[C.Poke]) -> list[Result]:
        self.sync()
        observed = self._observe(pokes)
        for _ in range(RETRIES):
            wrong = [i for i, r in enumerate(observed) if not r.passed]
            if not wrong:
                break
            again = self._observe([pokes[i] for i in wrong])
            for i, r in zip(wrong, again, strict=True):
                observed[i] = r
        return observed

    def target(self, poke: C.Poke) -> str:
        if poke.via == "service":
            return self.cluster_ip(poke.server, poke.protocol, poke.port)
        if poke.via != "pod":
            raise ValueError(f"{poke}: a pod IP or a Service's ClusterIP")
        return self.pod_ip(poke.server)

    def _observe(self, pokes: list[C.Poke]) -> list[Result]:
        """Every poke at once: SCTP first (BPF_PROG_TEST_RUN answers in
        milliseconds), then TCP/UDP and ICMP side by side (a run of denies
        costs one DENIED_TIMEOUT)."""
        out: dict[int, Result] = {}
        sctp = [(i, p) for i, p in enumerate(pokes) if p.protocol == "SCTP"]
        if sctp:
            flows = []
            for _, p in sctp:
                self._sport += 1
                dst_if = "dummy0" if K.is_host_network(p.server) else self.lab.pod(K.lab_name(p.server)).host_ifname
                flows.append({"src": self.pod_ip(p.client), "dst": self.target(p), "sport": self._sport,
                              "dport": p.port, "src_if": self.lab.pod(K.lab_name(p.client)).host_ifname,
                              "dst_if": dst_if})
            assert self.verdicts is not None
            # A drop is silent (TC_ACT_SHOT): at packet level it can only be a timeout.
            for (i, p), v in zip(sctp, self.verdicts.judge(flows), strict=True):
                out[i] = Result(p, _OK if v["allowed"] else _DENIED)
        wire = [(i, p) for i, p in enumerate(pokes) if p.protocol in ("TCP", "UDP")]
        specs = [ProbeSpec(self.lab.pod(K.lab_name(p.client)).netns, self.target(p), p.port, p.protocol.lower(),
                           timeout=ALLOWED_TIMEOUT if p.connect else DENIED_TIMEOUT) for _, p in wire]
        icmp = [(i, p) for i, p in enumerate(pokes) if p.protocol == "ICMP"]
        echoes = [(self.lab.pod(K.lab_name(p.client)).netns, self.target(p),
                   ALLOWED_TIMEOUT if p.connect else DENIED_TIMEOUT) for _, p in icmp]
        with ThreadPoolExecutor(max_workers=1) as pool:
            answers = pool.submit(echo_many, echoes) if echoes else None
            for (i, p), r in zip(wire, probe_many(specs), strict=True):
                out[i] = Result(p, observed_label(r.outcome))
            for (i, p), ok in zip(icmp, answers.result() if answers else [], strict=True):
                out[i] = Result(p, _OK if ok else _DENIED)
        unknown = [p for i, p in enumerate(pokes) if i not in out]
        if unknown:
            raise ValueError(f"cannot probe {unknown}")
        return [out[i] for i in range(len(pokes))]

    def diagnostics(self) -> str:
        return "daemon log:\n" + self.daemon.log_tail(15)


def run_test(lab: CNPLab, test: C.UpstreamTest) -> list[tuple[str, list[Result]]]:
    """Run one test from a clean state (its objects created, then its
    subtests in order, patches persisting; the next test's reset cleans up): (subtest title, results) per
    subtest. Nothing raises on a mismatch; see failures().

    Pokes only read, so every run of pokes with no other step between them
    is probed as one batch, across subtest boundaries (upstream runs the
    subtests one after the other; with nothing changed in between, at once
    is the same question): one daemon sync and at most one DENIED_TIMEOUT
    per batch. Each result goes back to its subtest, in step order."""
    lab.reset()
    for obj in C.test_objects(test):
        lab.put(C.resolve(obj, lab.pod_ip_map()))
    found: list[list[tuple[int, Result]]] = [[] for _ in test.subtests]
    batch: list[tuple[int, int, C.Poke]] = []  # (subtest, step, poke)

    def flush() -> None:
        if batch:
            for (st, pos, _), r in zip(batch, lab.poke_all([p for _, _, p in batch]), strict=True):
                found[st].append((pos, r))
            batch.clear()

    for st_index, st in enumerate(test.subtests):
        for pos, step in enumerate(st.steps):
            if isinstance(step, C.Poke):
                batch.append((st_index, pos, step))
                continue
            flush()
            found[st_index] += [(pos, r) for r in lab.apply(step)]
    flush()
    return [(st.title, [r for _, r in sorted(rs, key=lambda x: x[0])])
            for st, rs in zip(test.subtests, found, strict=True)]


def failures(outcome: list[tuple[str, list[Result]]]) -> str:
    """A report of every poke that did not pass, by subtest ("" if none)."""
    lines = []
    for title, results in outcome:
        bad = [r for r in results if not r.passed]
        if bad:
            lines.append(f"  {title}: {len(bad)} of {len(results)} pokes differ")
            lines += [f"    {r.line()}" for r in bad]
    return "\n".join(lines)


__all__ = ["CNPLab", "Result", "failures", "netns_path", "run_test"]
