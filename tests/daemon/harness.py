"""The real node daemon (`enforcer run`, a child process in the lab's node
namespace) on a lab, driven through manifest files as a cluster would be.

A DaemonLab owns everything it makes, and close() removes all of it, step by
step even when a step fails: the daemon process, the namespaces (with the
servers in them, the veths and any tc filter on them), the pins, the
manifest and work directories.

Every change to the manifests is followed by sync(): wait until the daemon's
status file says it has applied exactly the directory's content revision, so
no probe races a sync.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from enforcer.datapath.attach import TcAttacher
from enforcer.datapath.layout import CtEntry, CtKey, EndpointInfo, addr_from_bytes
from enforcer.datapath.loader import FROM_POD, TO_NETWORK, TO_POD, remove_pins
from enforcer.datapath.maps import DatapathMaps
from enforcer.datapath.source import DatapathConfig
from enforcer.lab.loader import DaemonProcess
from enforcer.lab.netns import entered, netns_path
from enforcer.lab.probe import Outcome, ProbeSpec, probe_many
from enforcer.lab.topology import ROUTED, Lab
from enforcer.sources.directory import directory_revision

from tests.lab.flows import Flow, flows  # one flow table for lab and daemon tests

log = logging.getLogger(__name__)

NODE_NAME = "lab-node"
NAMESPACE = "default"
PIN_ROOT = Path("/sys/fs/bpf")
PIN_PREFIX = "enforcer-daemontest-"

OK = Outcome.OK
DENIED = Outcome.TIMEOUT   # dropped: nothing comes back
DENY_TIMEOUT = 1.0
PASS_TIMEOUT = 3.0
LABELS = {OK: "ok", DENIED: "denied (no answer)", Outcome.REFUSED: "refused", Outcome.ERROR: "error"}


# -- manifests ---------------------------------------------------------------

def pod_peer(name: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"pod": name}}}


def ports(*specs: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"protocol": proto.upper(), "port": port} for proto, port in specs]


def policy(name: str, selects: str | None, *, ingress: list | None = None, egress: list | None = None,
           types: Sequence[str] | None = None) -> dict[str, Any]:
    """A NetworkPolicy in the lab's namespace selecting pod `selects` (None:
    every pod). ingress/egress: lists of rules (None: no rules)."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"pod": selects}} if selects else {}}
    if types is None:
        types = (["Ingress"] if ingress is not None or egress is None else []) + (["Egress"] if egress is not None else [])
    spec["policyTypes"] = list(types)
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def allow_from(pod: str, *port_specs: tuple[str, int]) -> dict[str, Any]:
    """One ingress rule: from `pod` on these ports."""
    rule: dict[str, Any] = {"from": [pod_peer(pod)]}
    if port_specs:
        rule["ports"] = ports(*port_specs)
    return rule


def allow_to(pod: str, *port_specs: tuple[str, int]) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": [pod_peer(pod)]}
    if port_specs:
        rule["ports"] = ports(*port_specs)
    return rule


# -- flows -------------------------------------------------------------------

# -- the lab with its daemon -------------------------------------------------

POD_PROGRAMS = (f"enforcer_{FROM_POD}", f"enforcer_{TO_POD}")
NODE_PROGRAMS = (f"enforcer_{TO_NETWORK}",)


class DaemonLab:
    def __init__(self, prefix: str, pods: Sequence[str], pin_dir: Path, mode: str = ROUTED,
                 labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if not str(pin_dir).startswith(str(PIN_ROOT / PIN_PREFIX)):
            raise ValueError(f"pin dir {pin_dir} is not a daemon test's")
        self.lab = Lab(prefix, pods, mode=mode)
        self.pin_dir = Path(pin_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{PIN_PREFIX}{os.getpid()}-{prefix}-"))
        self.source = self.workdir / "manifests"
        self.daemon: DaemonProcess | None = None
        self._maps: DatapathMaps | None = None
        self.labels: dict[str, dict[str, str]] = {}
        self.uids: dict[str, str] = {}
        self.addresses: dict[str, tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]] = {}
        self.manifest_pods: list[str] = []  # lab pods the manifests list
        for name in pods:
            self._name_pod(name, labels.get(name) if labels else None)

    def _name_pod(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        pod = self.lab.pod(name)  # kept: the pod may leave the lab before the manifests
        self.addresses[name] = (pod.ipv4, pod.ipv6)
        self.labels[name] = dict(labels) if labels else {"pod": name}
        self.uids[name] = str(uuid.uuid4())  # a new pod object: a new uid
        self.manifest_pods.append(name)

    # -- lifecycle --

    def start(self, daemon_args: Sequence[str] = ()) -> "DaemonLab":
        try:
            Lab.cleanup_stale(self.lab.prefix)
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            (self.source / "policies").mkdir(parents=True)
            self.lab.up()
            self.write_cluster()
            self.start_daemon(daemon_args)
        except BaseException:
            self.close()
            raise
        return self

    def start_daemon(self, args: Sequence[str] = (), sync: bool = True) -> DaemonProcess:
        if self.daemon is None:
            self.daemon = DaemonProcess(self.lab.node_netns, self.pin_dir, self.source, NODE_NAME,
                                        workdir=self.workdir / "daemon")
        self.daemon.extra_args = list(args)
        self.daemon.status_file.unlink(missing_ok=True)  # the status we wait for is the new process's
        self.daemon.start()
        if sync:
            self.sync()
        return self.daemon

    def close(self) -> None:
        errors: list[BaseException] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep going: every later step still runs
                log.error("daemon lab cleanup: %s failed: %s", what, e)
                errors.append(e)

        if self._maps is not None:
            step("closing maps", self._maps.close)
            self._maps = None
        if self.daemon is not None:
            step("stopping daemon", self.daemon.close)
        step("deleting namespaces", self.lab.down)
        step("removing pins", self._remove_pins)
        step("removing files", lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        if errors:
            raise errors[0]

    def _remove_pins(self) -> None:
        if self.pin_dir.exists():
            remove_pins(DatapathConfig(pin_dir=self.pin_dir))
            shutil.rmtree(self.pin_dir, ignore_errors=True)

    # -- manifests --

    def _write(self, rel: str, content: str) -> None:
        path = self.source / rel
        tmp = path.with_name("." + path.name)
        tmp.write_text(content)
        tmp.replace(path)  # atomic, as a careful writer does

    def _pod_manifest(self, name: str) -> dict[str, Any]:
        v4, v6 = self.addresses[name]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": self.uids[name], "labels": self.labels[name]},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "server", "image": "lab"}]},
            "status": {"phase": "Running", "podIP": str(v4), "podIPs": [{"ip": str(v4)}, {"ip": str(v6)}]},
        }

    def write_cluster(self) -> None:
        ns = {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": NAMESPACE, "labels": {"kubernetes.io/metadata.name": NAMESPACE}}}
        pods = [self._pod_manifest(n) for n in self.manifest_pods]
        self._write("cluster.yaml", yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [ns, *pods]}))

    def write_policy(self, obj: Mapping[str, Any] | str, name: str | None = None) -> None:
        """A policy file (a dict is dumped as YAML; a str is written as is)."""
        if isinstance(obj, str):
            assert name is not None
            self._write(f"policies/{name}.yaml", obj)
        else:
            self._write(f"policies/{name or obj['metadata']['name']}.yaml", yaml.safe_dump(dict(obj)))

    def write_policies(self, objs: Iterable[Mapping[str, Any]]) -> None:
        for obj in objs:
            self.write_policy(obj)

    def remove_policy(self, name: str) -> None:
        (self.source / "policies" / f"{name}.yaml").unlink()

    def clear_policies(self) -> None:
        for f in (self.source / "policies").iterdir():
            f.unlink()

    def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        self.labels[name] = dict(labels)
        self.write_cluster()

    def add_pod(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """A new pod: in the lab (namespace, veth, server), then in the manifests."""
        self.lab.add_pod(name)
        self._name_pod(name, labels)
        self.write_cluster()

    def drop_from_manifests(self, name: str) -> None:
        self.manifest_pods.remove(name)
        self.write_cluster()

    def revision(self) -> str:
        return directory_revision(self.source)

    def sync(self, allow_unplaced: bool = False, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the daemon has applied the directory as it is now and
        (unless allow_unplaced) found every local pod's interface: a pass
        can end with a pod unplaced while its neighbour entry is resolved
        (bridge mode); the retry a moment later places it."""
        assert self.daemon is not None
        revision = self.revision()
        status = self.daemon.wait_synced(revision, timeout=timeout)
        if allow_unplaced:
            return status
        deadline = time.monotonic() + 5.0
        while status.get("unplaced") or status.get("source_revision") != revision:
            if time.monotonic() > deadline:
                raise AssertionError(f"pods without interface: {status.get('unplaced')}\n{self.daemon.log_tail(20)}")
            time.sleep(0.05)
            status = self.daemon.status()
        return status

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        while True:
            st = self.daemon.status()
            if st and pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"status never got there: {st}\n{self.daemon.log_tail(20)}")
            time.sleep(0.05)

    # -- what the kernel holds --

    @property
    def maps(self) -> DatapathMaps:
        if self._maps is None:
            self._maps = DatapathMaps(self.pin_dir)
        return self._maps

    def attachments(self, programs: tuple[str, ...] = POD_PROGRAMS) -> dict[int, set[str]]:
        """ifindex -> hooks carrying our `programs` (by default a pod
        interface's two), in the node namespace."""
        out: dict[int, set[str]] = {}
        with entered(self.lab.node_netns):  # no pyroute2 fork (see LabSession)
            for a in TcAttacher().attachments():
                if a.program in programs:
                    out.setdefault(a.ifindex, set()).add(a.hook)
        return out

    def node_attachments(self) -> dict[int, set[str]]:
        """ifindex -> hooks carrying to_network (the node's interfaces)."""
        return self.attachments(NODE_PROGRAMS)

    def all_attachments(self) -> dict[int, set[str]]:
        return self.attachments(POD_PROGRAMS + NODE_PROGRAMS)

    def attached_programs(self) -> dict[tuple[int, str], int]:
        with entered(self.lab.node_netns):
            return {(a.ifindex, a.hook): a.prog_id for a in TcAttacher().attachments()}

    def endpoints(self) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, EndpointInfo]:
        return self.maps.endpoints()

    def ipcache(self) -> dict:  # type: ignore[type-arg]
        return self.maps.identities()

    def conntrack_of(self, name: str, endpoint_id: int | None = None) -> list[tuple[CtKey, CtEntry]]:
        """Conntrack entries whose pod side is this pod's address (or whose
        endpoint id is endpoint_id)."""
        addrs = set(self.addresses[name])
        return [(k, v) for k, v in self.maps.conntrack()
                if addr_from_bytes(k.family, k.pod) in addrs or v.endpoint_id == endpoint_id]

    def endpoint_id(self, name: str) -> int:
        eps = self.endpoints()
        ids = {eps[ip].id for ip in self.addresses[name] if ip in eps}
        assert len(ids) == 1, f"pod {name}: endpoint entries {ids}"
        return ids.pop()

    def node_cli(self, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """`enforcer ARGS` in the node namespace (nsenter keeps /sys/fs/bpf)."""
        return subprocess.run(["nsenter", f"--net={netns_path(self.lab.node_netns)}", sys.executable,
                               "-m", "enforcer", *args], capture_output=True, text=True, timeout=60)

    # -- traffic --

    def check_flows(self, table: Sequence[Flow], family: int, attempts: int = 1) -> None:
        """Probe every flow concurrently; assert each has its outcome. A
        mismatch is re-probed up to attempts-1 more times before it counts."""
        pending = list(table)
        wrong: list[str] = []
        for _ in range(attempts):
            specs = [ProbeSpec(self.lab.netns_of(f.src), self.lab.pod(f.dst).ip(family), f.port, f.proto, None,
                               DENY_TIMEOUT if f.expect is DENIED else PASS_TIMEOUT) for f in pending]
            wrong, again = [], []
            for flow, res in zip(pending, probe_many(specs)):
                if res.outcome is not flow.expect:
                    wrong.append(f"{flow.text(family)}: expected {LABELS[flow.expect]}, "
                                 f"got {LABELS[res.outcome]} {res.detail}".rstrip())
                    again.append(flow)
                elif res.ok and res.answered_by != flow.dst:
                    wrong.append(f"{flow.text(family)}: answered by {res.answered_by!r}")
                    again.append(flow)
            if not again:
                return
            pending = again
        log_tail = self.daemon.log_tail(15) if self.daemon else ""
        raise AssertionError("connectivity differs from the table:\n  " + "\n  ".join(wrong)
                             + "\ndaemon log:\n" + log_tail)
