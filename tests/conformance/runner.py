"""Replays the upstream cases (cases.py) against the real daemon in the lab.

The nine upstream pods live in a one-node lab (pod "x/a" is lab pod "xa");
their Namespace and Pod manifests, and the case's policies, are files in the
daemon's source directory. Every step rewrites those files; before probing,
the runner waits until the daemon reports it has applied exactly the
directory's content revision, so no probe races a sync.

TCP and UDP are probed on the wire between the pod namespaces. SCTP (no
SCTP sockets on this kernel) is judged at packet level: crafted INIT frames
through the programs the daemon attached, via BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enforcer.lab.loader import DaemonProcess
from enforcer.lab.netns import netns_path
from enforcer.lab.probe import ProbeSpec, probe_many
from enforcer.lab.topology import Lab
from enforcer.sources.directory import directory_revision
from tests.support.fast import FAST_POLL

from . import cases as C
from . import model as M

NODE_NAME = "lab-node"
# How long a probe waits for an answer. A drop is seen only as silence, so a
# pair expected denied costs DENIED_TIMEOUT (a pass answers in ms: a wrongly
# open pair still shows); one expected allowed gets longer, which costs
# nothing unless it fails, so a loaded machine does not turn a slow answer
# into a false "denied". Upstream's agnhost probes wait 1 s, and retry a
# mismatch as check() does.
DENIED_TIMEOUT = 0.4
ALLOWED_TIMEOUT = 3.0
# Run as a script (tests/ is not an installed package): it imports only enforcer.
PACKET_VERDICT = Path(__file__).resolve().parents[1] / "support" / "packet_verdict.py"


def lab_name(pod: str) -> str:
    ns, name = M.split_pod(pod)
    return f"{ns}{name}"


def tear_down(steps: Sequence[Callable[[], object]], what: str) -> None:
    """Run every teardown step, a failing one reported and the rest run all
    the same (a lab half torn down would leak namespaces and pins)."""
    for step in steps:
        try:
            step()
        except Exception as e:  # keep tearing down
            print(f"{what} teardown: {e}", file=sys.stderr)


@dataclass
class Mismatch:
    src: str
    dst: str
    expected: bool
    observed: bool


@dataclass
class ConformanceBase:
    """What every topology shares: the model's labels, the manifest
    directory the daemons read, the steps and the truth-table check.
    A topology supplies pod_ips, node_of, sync, observe (and diagnostics,
    shown with a mismatch)."""

    prefix: str
    family: int = 4
    source: Path = field(init=False)
    ns_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    #: None: a probe that mismatches raises at once (as upstream's
    #: ValidateOrFail). A list: its report is appended and the case goes
    #: on, so one run shows every probe's table (run_case raises at the end).
    mismatch_reports: list[str] | None = field(default=None, init=False)

    # -- the topology's part --

    def pod_ips(self) -> dict[str, list[str]]:
        """ "x/a" -> its addresses, this lab's family first. Every
        topology's lab names the model's pods lab_name(pod)."""
        out = {}
        for pod in M.ALL_PODS:
            lp = self.lab.pod(lab_name(pod))  # type: ignore[attr-defined]
            v4, v6 = str(lp.ipv4), str(lp.ipv6)
            out[pod] = [v4, v6] if self.family == 4 else [v6, v4]
        return out

    def node_of(self, pod: str) -> str:
        raise NotImplementedError

    def sync(self) -> Any:
        """Wait until every daemon has applied the directory's content."""
        raise NotImplementedError

    def observe(self, protocol: str, port: int, pairs: list[tuple[str, str]],
                expected: dict[tuple[str, str], bool]) -> dict[tuple[str, str], bool]:
        """Whether each pair connects; expected: what the case says (for
        the probe timeouts, see DENIED_TIMEOUT)."""
        raise NotImplementedError

    def diagnostics(self) -> str:
        return ""

    # -- cluster state as files --

    def _make_source(self) -> None:
        self.source = Path(tempfile.mkdtemp(prefix=f"enforcer-conf-{self.prefix}-"))
        (self.source / "policies").mkdir()

    def _reset_labels(self) -> None:
        self.ns_labels = {ns: M.namespace_labels(ns) for ns in M.NAMESPACES}
        self.pod_labels = {pod: M.pod_labels(pod) for pod in M.ALL_PODS}

    def _write(self, rel: str, objects: list[dict[str, Any]]) -> None:
        write_manifest_list(self.source / rel, objects)

    def _write_cluster(self) -> None:
        ips = self.pod_ips()
        self._write("namespaces.yaml", [M.render_namespace(ns, labels=self.ns_labels[ns]) for ns in M.NAMESPACES])
        self._write("pods.yaml", [M.render_pod(p, node_name=self.node_of(p), pod_ips=ips, labels=self.pod_labels[p])
                                  for p in M.ALL_PODS])

    def reset(self) -> None:
        for f in (self.source / "policies").iterdir():
            f.unlink()
        self._reset_labels()
        self._write_cluster()
        self.sync()

    # -- steps --

    def apply(self, step: C.Step) -> None:
        if isinstance(step, C.ApplyPolicy):
            policy = C.resolve(step.policy, {p: ips[0] for p, ips in self.pod_ips().items()})
            self._write(f"policies/{step.namespace}-{step.name}.yaml", [policy])
        elif isinstance(step, C.DeletePolicy):
            (self.source / "policies" / f"{step.namespace}-{step.name}.yaml").unlink(missing_ok=True)
        elif isinstance(step, C.DeleteAllPolicies):
            for f in (self.source / "policies").iterdir():
                if f.name.split("-", 1)[0] in step.namespaces:
                    f.unlink()
        elif isinstance(step, C.AddNamespaceLabels):
            self.ns_labels[step.namespace].update(step.labels)
            self._write_cluster()
        elif isinstance(step, C.RemoveNamespaceLabel):
            self.ns_labels[step.namespace].pop(step.key, None)
            self._write_cluster()
        elif isinstance(step, C.AddPodLabels):
            self.pod_labels[step.pod].update(step.labels)
            self._write_cluster()
        elif isinstance(step, C.ResetPodLabels):
            self.pod_labels[step.pod] = step.labels
            self._write_cluster()
        elif isinstance(step, C.Sleep):
            pass  # upstream waits blindly; we wait for the daemon's sync instead
        elif isinstance(step, C.WaitForServers):
            for proto in step.protocols:
                for port in step.ports:
                    everything = {f: {t: True for t in M.ALL_PODS} for f in M.ALL_PODS}
                    self.check(C.Probe(proto, port, everything))
        elif isinstance(step, C.Probe):
            self.check(step)
        else:
            raise TypeError(f"unknown step {step!r}")

    # -- probes --

    def check(self, probe: C.Probe) -> None:
        self.sync()
        pairs = [(f, t) for f, t, _ in probe.checked_pairs()]
        expected = {(f, t): v for f, t, v in probe.checked_pairs()}
        observed = self.observe(probe.protocol, probe.port, pairs, expected)
        # A probe is retried before it counts as a mismatch, as upstream does.
        for _ in range(2):
            wrong = [p for p in pairs if observed[p] != expected[p]]
            if not wrong:
                return
            observed.update(self.observe(probe.protocol, probe.port, wrong, expected))
        mismatches = [Mismatch(f, t, expected[(f, t)], observed[(f, t)]) for f, t in pairs
                      if observed[(f, t)] != expected[(f, t)]]
        if not mismatches:
            return
        report = (f"{probe.protocol}/{probe.port}: {len(mismatches)} of {len(pairs)} pairs differ\n"
                  + format_table(expected, observed))
        if self.mismatch_reports is not None:
            self.mismatch_reports.append(report)
            return
        raise AssertionError(report + "\n" + self.diagnostics())


@dataclass
class ConformanceLab(ConformanceBase):
    """The nine pods in a one-node lab (lab.topology.Lab), one daemon."""

    pin_dir: Path = field(init=False)
    lab: Lab = field(init=False)
    daemon: DaemonProcess = field(init=False)
    _sport: int = 30000

    def start(self) -> ConformanceLab:
        Lab.cleanup_stale(self.prefix)
        self.pin_dir = Path(f"/sys/fs/bpf/enforcer-conf-{self.prefix}")
        shutil.rmtree(self.pin_dir, ignore_errors=True)
        self._make_source()
        self.lab = Lab(self.prefix, [lab_name(p) for p in M.ALL_PODS])
        self.lab.up()
        self._reset_labels()
        self._write_cluster()
        self.daemon = DaemonProcess(self.lab.node_netns, self.pin_dir, self.source, NODE_NAME, extra_args=FAST_POLL)
        self.daemon.start()
        self.sync()
        return self

    def close(self) -> None:
        tear_down([lambda: self.daemon.close(), lambda: self.lab.down(), lambda: _cleanup_pins(self.pin_dir),
                   lambda: shutil.rmtree(self.source, ignore_errors=True)], "conformance")

    def node_of(self, pod: str) -> str:
        return NODE_NAME

    def sync(self) -> dict[str, Any]:
        status = self.daemon.wait_synced(directory_revision(self.source))
        if status.get("unplaced"):
            raise AssertionError(f"pods without interface: {status['unplaced']}")
        return status

    def diagnostics(self) -> str:
        return "daemon log:\n" + self.daemon.log_tail(15)

    def observe(self, protocol: str, port: int, pairs: list[tuple[str, str]],
                expected: dict[tuple[str, str], bool]) -> dict[tuple[str, str], bool]:
        ips = self.pod_ips()
        if protocol == "SCTP":
            return self._observe_sctp(port, pairs)
        specs = [ProbeSpec(self.lab.pod(lab_name(s)).netns, ips[d][0], port, protocol.lower(),
                           timeout=probe_timeout(expected, (s, d))) for s, d in pairs]
        return {pair: r.ok for pair, r in zip(pairs, probe_many(specs), strict=False)}

    def _observe_sctp(self, port: int, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        ips = self.pod_ips()
        flows = []
        for s, d in pairs:
            self._sport += 1
            flows.append({"src": ips[s][0], "dst": ips[d][0], "sport": self._sport, "dport": port,
                          "src_if": self.lab.pod(lab_name(s)).host_ifname,
                          "dst_if": self.lab.pod(lab_name(d)).host_ifname})
        return {pair: r["allowed"] for pair, r in zip(pairs, sctp_verdicts(self.lab.node_netns, flows), strict=False)}


def write_manifest_list(path: Path, objects: list[dict[str, Any]]) -> None:
    """objects as one `List` manifest at path, replaced atomically (as
    kubectl-style writers should: the daemon never reads half a file)."""
    tmp = path.with_name("." + path.name)
    tmp.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    tmp.replace(path)


def sctp_verdicts(node_netns: str, flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """packet_verdict.py's judgement of SCTP INIT flows ({src, dst, sport,
    dport, src_if, dst_if}) through the programs attached in node_netns."""
    proc = subprocess.run(
        ["nsenter", f"--net={netns_path(node_netns)}", sys.executable, str(PACKET_VERDICT)],
        input=json.dumps(flows), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"packet_verdict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    verdicts: list[dict[str, Any]] = json.loads(proc.stdout)
    return verdicts


def probe_timeout(expected: dict[tuple[str, str], bool], pair: tuple[str, str]) -> float:
    return ALLOWED_TIMEOUT if expected.get(pair, True) else DENIED_TIMEOUT


def format_table(expected: dict[tuple[str, str], bool], observed: dict[tuple[str, str], bool]) -> str:
    """Upstream-style truth table: '.' agrees and allowed, 'X' agrees and
    denied, '!' expected allowed but denied, '?' expected denied but allowed."""
    lines = ["from\\to " + " ".join(f"{p:>4}" for p in M.ALL_PODS)]
    for f in M.ALL_PODS:
        cells = []
        for t in M.ALL_PODS:
            if (f, t) not in expected:
                cells.append("   -")
                continue
            e, o = expected[(f, t)], observed[(f, t)]
            cells.append("   " + ("." if e and o else "X" if not e and not o else "!" if e else "?"))
        lines.append(f"{f:>7} " + " ".join(cells))
    return "\n".join(lines)


def _cleanup_pins(pin_dir: Path) -> None:
    subprocess.run([sys.executable, "-m", "enforcer", "cleanup", "--pin-dir", str(pin_dir)],
                   check=False, capture_output=True)
    shutil.rmtree(pin_dir, ignore_errors=True)


def run_case(lab: ConformanceBase, case: C.Case, *, keep_going: bool = False) -> None:
    """Run a case from a clean state. keep_going: a probe that mismatches
    does not stop the case; every mismatching probe's table is in the
    AssertionError raised at the end."""
    lab.reset()
    lab.mismatch_reports = [] if keep_going else None
    try:
        for step in case.steps:
            lab.apply(step)
    finally:
        reports, lab.mismatch_reports = lab.mismatch_reports, None
        for step in case.cleanup:
            lab.apply(step)
    if reports:
        raise AssertionError("\n\n".join(reports) + "\n" + lab.diagnostics())


__all__ = ["ConformanceBase", "ConformanceLab", "Mismatch", "format_table", "run_case", "lab_name", "os",
           "sctp_verdicts", "write_manifest_list"]
