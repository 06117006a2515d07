"""A multi-node lab with one `enforcer run` per node on a shared manifest
directory, for NodePort tests: pods carry status.hostIPs (their node's
addresses, which diagnose needs) and may live in namespaces of their own;
Services are written with a selector on the pod label."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from enforcer.lab.kubeproxy import Service
from enforcer.lab.loader import DaemonProcess, remove_pin_dirs
from enforcer.lab.multinode import MultiNodeLab
from enforcer.lab.probe import Outcome, ProbeSpec, probe_many
from enforcer.sources.directory import directory_revision

OK, DENIED = Outcome.OK, Outcome.TIMEOUT


class NodePortCluster:
    def __init__(self, prefix: str, nodes: Mapping[str, Sequence[str]], services: Sequence[Service],
                 backends: Mapping[str, str], namespaces: Mapping[str, str] | None = None) -> None:
        """backends: Service name -> the pod label value its selector picks;
        namespaces: pod -> namespace (default "default")."""
        self.lab = MultiNodeLab(prefix, nodes, services=services)
        self.services, self.backends = list(services), dict(backends)
        self.namespaces = dict(namespaces or {})
        self.workdir = Path(tempfile.mkdtemp(prefix=f"enforcer-np-{prefix}-"))
        self.source = self.workdir / "manifests"
        self.pin_dirs = {n: Path(f"/sys/fs/bpf/enforcer-np-{prefix}-{n}") for n in self.lab.nodes}
        self.daemons: dict[str, DaemonProcess] = {}

    def start(self) -> "NodePortCluster":
        self._remove_pins()
        self.lab.up()
        self.source.mkdir(parents=True)
        manifest = self.lab.cluster_manifest()
        extra_ns = sorted(set(self.namespaces.values()) - {"default"})
        for item in manifest["items"]:
            if item["kind"] == "Pod":
                node = self.lab.node(item["spec"]["nodeName"])
                item["status"]["hostIP"] = node.ip(4)
                item["status"]["hostIPs"] = [{"ip": node.ip(4)}, {"ip": node.ip(6)}]
                item["metadata"]["namespace"] = self.namespaces.get(item["metadata"]["name"], "default")
        manifest["items"] += [{"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}
                              for ns in extra_ns]
        manifest["items"] += [svc.manifest(selector={"pod": self.backends[svc.name]}) for svc in self.services]
        self.write("cluster.yaml", manifest)
        for node in self.lab.nodes.values():
            self.daemons[node.name] = DaemonProcess(node.netns, self.pin_dirs[node.name], self.source, node.name,
                                                    workdir=self.workdir / node.name)
            self.daemons[node.name].start()
        return self

    def write(self, name: str, obj: dict[str, Any]) -> None:
        tmp = self.source / f".{name}"
        tmp.write_text(yaml.safe_dump(obj))
        tmp.replace(self.source / name)

    def apply_policy(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Write one NetworkPolicy (file policy.yaml: the previous one goes)
        and wait until every daemon has applied it."""
        self.write("policy.yaml", {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": name, "namespace": namespace}, "spec": spec})
        revision = directory_revision(self.source)
        for d in self.daemons.values():
            d.wait_synced(revision)

    def cli(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "enforcer", *args, "--socket", str(self.daemons[node].socket)],
                              capture_output=True, text=True, timeout=60)

    def diagnose(self, node: str) -> tuple[int, list[dict[str, str]]]:
        out = self.cli(node, "diagnose", "--json")
        assert out.returncode in (0, 3), out.stderr
        return out.returncode, json.loads(out.stdout)["diagnostics"]

    def check(self, table: Sequence[tuple[str, str, int, Outcome]], backend: str) -> None:
        """(src, via node, port, outcome): src connects to the node's
        address; an answer must come from `backend`."""
        lab = self.lab
        specs = [ProbeSpec(lab.netns_of(src), lab.node(via).ip(4), port, "tcp",
                           timeout=1.0 if want is DENIED else 3.0) for src, via, port, want in table]
        results = probe_many(specs)
        wrong = [f"{row}: got {r.outcome.value} {r.answered_by or ''} {r.detail}" for row, r in zip(table, results)
                 if r.outcome is not row[3] or (r.ok and r.answered_by != backend)]
        assert not wrong, "\n".join(wrong) + "\n" + "\n".join(d.log_tail(10) for d in self.daemons.values())

    def close(self) -> None:
        for d in self.daemons.values():
            d.close()
        self.lab.down()
        self._remove_pins()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _remove_pins(self) -> None:
        remove_pin_dirs(self.pin_dirs.values())
