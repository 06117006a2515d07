"""`enforcer run` in every node of a MultiNodeLab, on one manifest
directory, with what the multi-node lab tests do with them: write
manifests and policies, wait until every daemon has applied them, read a
pod's verdict counters, ask a daemon through its CLI, probe NodePorts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from enforcer.datapath.maps import DatapathMaps
from enforcer.datapath.reasons import Reason
from enforcer.lab.loader import DaemonProcess, remove_pin_dirs
from enforcer.lab.probe import Outcome, ProbeSpec, probe_many
from enforcer.sources.directory import directory_revision
from tests.support.fast import FAST_POLL, start_all
from tests.support.multinode import MultiNodeLab

OK, DENIED = Outcome.OK, Outcome.TIMEOUT


class MultiNodeDaemons:
    def __init__(self, lab: MultiNodeLab, tag: str = "mn") -> None:
        self.lab = lab
        self.workdir = Path(tempfile.mkdtemp(prefix=f"enforcer-{tag}-{lab.prefix}-"))
        self.source = self.workdir / "manifests"
        self.pin_dirs = {n: Path(f"/sys/fs/bpf/enforcer-{tag}-{lab.prefix}-{n}") for n in lab.nodes}
        self.daemons: dict[str, DaemonProcess] = {}
        self._maps: dict[str, DatapathMaps] = {}

    def start(self, manifest: dict[str, Any]) -> MultiNodeDaemons:
        """Write the cluster's manifest, start a daemon per node (the lab is
        up) and wait until each has applied it."""
        remove_pin_dirs(self.pin_dirs.values())  # a crashed run's
        (self.source / "policies").mkdir(parents=True)
        self.write("cluster.yaml", manifest)
        for node in self.lab.nodes.values():
            self.daemons[node.name] = DaemonProcess(node.netns, self.pin_dirs[node.name], self.source, node.name,
                                                    workdir=self.workdir / node.name, extra_args=FAST_POLL)
        start_all(self.daemons.values())
        self.sync()
        return self

    def write(self, name: str, obj: dict[str, Any]) -> None:
        """Write a manifest file at once (what the directory source reads)."""
        path = self.source / name
        tmp = path.with_name(f".{path.name}")
        tmp.write_text(yaml.safe_dump(obj))
        tmp.replace(path)

    def write_policy(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """One NetworkPolicy per file: writing the same name replaces it."""
        self.write(f"policies/{namespace}-{name}.yaml", {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def apply_policy(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.write_policy(namespace, name, spec)
        self.sync()

    def sync(self) -> None:
        """Wait until every daemon has applied the directory as it is now
        and found every local pod's interface."""
        revision = directory_revision(self.source)
        for d in self.daemons.values():
            status = d.wait_synced(revision)
            deadline = time.monotonic() + 5
            while status.get("unplaced") and time.monotonic() < deadline:
                time.sleep(0.05)
                status = d.status()
            assert not status.get("unplaced"), f"{d.node_name}: unplaced {status.get('unplaced')}"

    def counters(self, pod: str) -> dict[tuple[int, Reason], int]:
        """(direction, reason) -> packets of the pod, on its own node."""
        node = self.lab.node_of(pod)
        if node not in self._maps:
            self._maps[node] = DatapathMaps(self.pin_dirs[node])
        maps = self._maps[node]
        ep = maps.endpoints()[self.lab.pod(pod).ipv4].id
        return {k: pkts for k, (pkts, _b) in maps.counters(ep).items()}

    def cli(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "enforcer", *args, "--socket", str(self.daemons[node].socket)],
                              capture_output=True, text=True, timeout=60)

    def diagnose(self, node: str) -> tuple[int, list[dict[str, str]]]:
        out = self.cli(node, "diagnose", "--json")
        assert out.returncode in (0, 3), out.stderr
        return out.returncode, json.loads(out.stdout)["diagnostics"]

    def log_tails(self, lines: int = 10) -> str:
        return "\n".join(f"--- {n}\n{d.log_tail(lines)}" for n, d in self.daemons.items())

    def check_node_ports(self, table: Sequence[tuple[str, str, int, Outcome]], backend: str) -> None:
        """(src, via node, port, outcome): src connects to the node's
        address; an answer must come from `backend`."""
        lab = self.lab
        specs = [ProbeSpec(lab.netns_of(src), lab.node(via).ip(4), port, "tcp",
                           timeout=1.0 if want is DENIED else 3.0) for src, via, port, want in table]
        results = probe_many(specs)
        wrong = [f"{row}: got {r.outcome.value} {r.answered_by or ''} {r.detail}" for row, r in zip(table, results, strict=False)
                 if r.outcome is not row[3] or (r.ok and r.answered_by != backend)]
        assert not wrong, "\n".join(wrong) + "\n" + self.log_tails()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        for d in self.daemons.values():
            d.close()
        self.lab.down()
        remove_pin_dirs(self.pin_dirs.values())
        shutil.rmtree(self.workdir, ignore_errors=True)


def node_port_manifest(lab: MultiNodeLab, backends: Mapping[str, str],
                       namespaces: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The lab's cluster as NodePort tests want it: pods with
    status.hostIPs (their node's addresses, which diagnose needs), in the
    namespaces given (pod -> namespace, default "default"), and the lab's
    Services with a selector: backends maps a Service name to the pod label
    value it selects."""
    namespaces = dict(namespaces or {})
    manifest = lab.cluster_manifest()
    for item in manifest["items"]:
        if item["kind"] == "Pod":
            node = lab.node(item["spec"]["nodeName"])
            item["status"]["hostIP"] = node.ip(4)
            item["status"]["hostIPs"] = [{"ip": node.ip(4)}, {"ip": node.ip(6)}]
            item["metadata"]["namespace"] = namespaces.get(item["metadata"]["name"], "default")
    manifest["items"] += [{"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}
                          for ns in sorted(set(namespaces.values()) - {"default"})]
    manifest["items"] += [svc.manifest(selector={"pod": backends[svc.name]}) for svc in lab.services]
    return manifest
