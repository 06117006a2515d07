"""Replays the upstream cases (cases.py) against a real cluster, with kubectl.

The netns runner (runner.py) drives the daemon through a directory source in
a one-node lab; this one drives whatever enforces NetworkPolicy in the
cluster kubectl points at (in the Vagrant lab: the enforcer DaemonSet from
deploy/, on flannel), through the API server, as upstream's e2e suite does:

* namespaces ``x``, ``y``, ``z`` with the model's labels (model.py), each with
  pods ``a``, ``b``, ``c`` running the upstream agnhost image, one container
  per (port, protocol) serving a named port (``serve-80-tcp``, ...); pods are
  spread round-robin over the schedulable nodes, so pairs on one node and
  pairs across nodes are both probed;
* every case starts from no policies and the initial labels; its steps map
  to kubectl one to one (``create``/``replace`` of the policy, ``label``,
  ``patch``, ``delete``);
* a probe is ``kubectl exec <from> -- /agnhost connect <to>:<port>
  --timeout=1s --protocol=<p>`` for the 72 ordered pairs of distinct pods,
  compared with the case's truth table; mismatching pairs are probed again,
  1 s apart, up to ``--retries`` times (upstream polls each pair for 10 s),
  since policy reaches the nodes asynchronously.

Like the netns runner, it probes pod IPs (``--target pod``). Upstream probes
each pod's ClusterIP Service (``--target service``): an egress policy then
sees the ClusterIP until something translates it before policy, which the
enforcer does not do yet.

Only the standard library, cases.py and model.py are used, so it runs with
a bare ``python3`` on a cluster node: ``python3 -m tests.conformance.cluster_runner``
from the repository root. ``--dry-run --case ID`` prints the kubectl commands
of one case (pod IPs are placeholders) without running anything.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import cases as C
from . import model as M

#: Marks the namespaces this runner created (an annotation: no selector sees it).
OWNER_ANNOTATION = "enforcer.conformance/owned-by"
OWNER = "cluster_runner"

#: What agnhost connect prints (stderr) when the connection itself failed.
CONNECT_FAILURES = ("TIMEOUT", "REFUSED", "OTHER:", "DNS:")


class RunnerError(Exception):
    """The cluster or kubectl misbehaved (not a policy mismatch)."""


class CaseFailure(AssertionError):
    pass


# --------------------------------------------------------------------------
# kubectl
# --------------------------------------------------------------------------

@dataclass
class Kubectl:
    binary: str = "kubectl"
    kubeconfig: str | None = None
    dry_run: bool = False
    out: Callable[[str], None] = print
    timeout: float = 120.0

    def argv(self, args: Sequence[str]) -> list[str]:
        base = [self.binary] + ([f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else [])
        return base + list(args)

    def show(self, args: Sequence[str], stdin: str | None = None) -> None:
        line = shlex.join(self.argv(args))
        if stdin is None:
            self.out(line)
        else:
            self.out(f"{line} <<'EOF'\n{stdin.rstrip()}\nEOF")

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl (or, dry, print the command and pretend it worked)."""
        if self.dry_run:
            self.show(args, stdin)
            return subprocess.CompletedProcess(self.argv(args), 0, "", "")
        try:
            proc = subprocess.run(self.argv(args), input=stdin, capture_output=True, text=True,
                                  timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired as e:
            raise RunnerError(f"timed out: {shlex.join(self.argv(args))}") from e
        if check and proc.returncode != 0:
            raise RunnerError(f"{shlex.join(self.argv(args))} exited {proc.returncode}:\n{proc.stderr.strip()}")
        return proc

    def apply_object(self, verb: str, obj: dict[str, Any]) -> None:
        """kubectl create|replace -f - with the object as JSON."""
        self.run(verb, "-f", "-", stdin=json.dumps(obj, sort_keys=True, separators=(",", ":")))

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run("get", *args, "-o", "json").stdout or "{}")


# --------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------

def _strip_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def _pair_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def placeholder_ips() -> dict[str, str]:
    """Dry run: stand-ins for pod IPs (x/a -> 10.244.1.10, ..., z/c -> 10.244.3.12)."""
    return {pod: f"10.244.{M.NAMESPACES.index(M.split_pod(pod)[0]) + 1}."
                 f"{10 + M.POD_NAMES.index(M.split_pod(pod)[1])}" for pod in M.ALL_PODS}


@dataclass
class ClusterRunner:
    kubectl: Kubectl
    protocols: tuple[str, ...] = ("TCP", "UDP", "SCTP")
    target: str = "pod"                 # "pod" or "service"
    image: str = M.AGNHOST_IMAGE
    workers: int = 8
    retries: int = 10
    server_rounds: int = 10
    canonical_cidrs: bool = False
    spread: bool = True
    ready_timeout: str = "300s"
    out: Callable[[str], None] = print
    pod_ips: dict[str, str] = field(default_factory=dict)       # "x/a" -> status.podIP
    service_ips: dict[str, str] = field(default_factory=dict)   # "x/a" -> ClusterIP of s-x-a
    pod_nodes: dict[str, str] = field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return self.kubectl.dry_run

    def note(self, text: str) -> None:
        self.out(f"# {text}")

    # -- the model in the cluster --

    def first_container(self) -> str:
        return M.containers(M.PORTS, self.protocols)[0].name

    def namespace_object(self, ns: str) -> dict[str, Any]:
        obj = _strip_status(M.render_namespace(ns))
        obj["metadata"]["annotations"] = {OWNER_ANNOTATION: OWNER}
        return obj

    def pod_object(self, pod: str, node: str | None) -> dict[str, Any]:
        obj = _strip_status(M.render_pod(pod, ports=M.PORTS, protocols=self.protocols, image=self.image))
        if node:
            obj["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        return obj

    def schedulable_nodes(self) -> list[str]:
        if self.dry:
            self.kubectl.run("get", "nodes", "-o", "json")
            return []
        nodes = []
        for n in self.kubectl.get_json("nodes").get("items", []):
            taints = n.get("spec", {}).get("taints", [])
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in n.get("status", {}).get("conditions", []))
            if ready and not n.get("spec", {}).get("unschedulable") and \
                    not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints):
                nodes.append(n["metadata"]["name"])
        return sorted(nodes)

    def setup(self) -> None:
        self.note(f"namespaces {', '.join(M.NAMESPACES)}; pods {', '.join(M.POD_NAMES)} in each; "
                  f"protocols {', '.join(self.protocols)}; probing {self.target} IPs")
        if not self.dry:
            for ns in M.NAMESPACES:
                got = self.kubectl.run("get", "namespace", ns, "-o", "json", check=False)
                if got.returncode == 0:
                    owner = json.loads(got.stdout)["metadata"].get("annotations", {}).get(OWNER_ANNOTATION)
                    if owner != OWNER:
                        raise RunnerError(f"namespace {ns} exists and was not made by this runner; "
                                          "delete it or use another cluster")
        self.kubectl.run("delete", "namespace", *M.NAMESPACES, "--ignore-not-found", "--wait=true",
                         timeout=600)
        for ns in M.NAMESPACES:
            self.kubectl.apply_object("create", self.namespace_object(ns))
        nodes = self.schedulable_nodes() if self.spread else []
        if nodes:
            self.note(f"pods spread over {', '.join(nodes)}")
        for i, pod in enumerate(M.ALL_PODS):
            self.kubectl.apply_object("create", self.pod_object(pod, nodes[i % len(nodes)] if nodes else None))
        if self.target == "service":
            for pod in M.ALL_PODS:
                self.kubectl.apply_object("create", M.render_service(pod, ports=M.PORTS, protocols=self.protocols))
        for ns in M.NAMESPACES:
            self.kubectl.run("wait", "--for=condition=Ready", "pod", "--all", "-n", ns,
                             f"--timeout={self.ready_timeout}", timeout=900)
        self.read_addresses()

    def read_addresses(self) -> None:
        if self.dry:
            for ns in M.NAMESPACES:
                self.kubectl.run("get", "pods", "-n", ns, "-o", "json")
            self.pod_ips = placeholder_ips()
            self.service_ips = {p: ip.replace("10.244.", "10.96.") for p, ip in self.pod_ips.items()}
            self.note("dry run: the pod IPs below are placeholders")
            return
        for ns in M.NAMESPACES:
            for item in self.kubectl.get_json("pods", "-n", ns).get("items", []):
                pod = f"{ns}/{item['metadata']['name']}"
                if pod in M.ALL_PODS:
                    self.pod_ips[pod] = item["status"]["podIP"]
                    self.pod_nodes[pod] = item["spec"].get("nodeName", "?")
            if self.target == "service":
                for item in self.kubectl.get_json("services", "-n", ns).get("items", []):
                    for pod in M.ALL_PODS:
                        if item["metadata"]["name"] == M.service_name(pod):
                            self.service_ips[pod] = item["spec"]["clusterIP"]
        missing = [p for p in M.ALL_PODS if p not in self.pod_ips]
        if missing:
            raise RunnerError(f"pods without an IP: {', '.join(missing)}")
        self.note("pods: " + ", ".join(f"{p}={self.pod_ips[p]}@{self.pod_nodes.get(p, '?')}" for p in M.ALL_PODS))

    def teardown(self) -> None:
        self.kubectl.run("delete", "namespace", *M.NAMESPACES, "--ignore-not-found", "--wait=false", check=False)

    # -- between cases --

    def reset(self) -> None:
        """No policies, the initial labels (upstream: fresh namespaces per test)."""
        for ns in M.NAMESPACES:
            self.kubectl.run("delete", "networkpolicy", "--all", "-n", ns)
        if self.dry:
            return  # the labels are the initial ones right after setup
        for item in self.kubectl.get_json("namespaces").get("items", []):
            ns = item["metadata"]["name"]
            if ns in M.NAMESPACES and item["metadata"].get("labels", {}) != M.namespace_labels(ns):
                self.replace_labels(["namespace", ns], M.namespace_labels(ns))
        for ns in M.NAMESPACES:
            for item in self.kubectl.get_json("pods", "-n", ns).get("items", []):
                pod = f"{ns}/{item['metadata']['name']}"
                if pod in M.ALL_PODS and item["metadata"].get("labels", {}) != M.pod_labels(pod):
                    self.replace_labels(["pod", "-n", ns, M.split_pod(pod)[1]], M.pod_labels(pod))

    def replace_labels(self, target: list[str], labels: dict[str, str]) -> None:
        patch = [{"op": "replace", "path": "/metadata/labels", "value": labels}]
        self.kubectl.run("patch", *target, "--type=json", "-p", json.dumps(patch, sort_keys=True))

    # -- steps --

    def apply(self, step: C.Step) -> None:
        k = self.kubectl
        if isinstance(step, C.ApplyPolicy):
            policy = C.resolve(step.policy, self.pod_ips, canonical=self.canonical_cidrs)
            k.apply_object("create" if step.operation == "create" else "replace", policy)
        elif isinstance(step, C.DeletePolicy):
            k.run("delete", "networkpolicy", step.name, "-n", step.namespace, "--ignore-not-found")
        elif isinstance(step, C.DeleteAllPolicies):
            for ns in step.namespaces:
                k.run("delete", "networkpolicy", "--all", "-n", ns)
        elif isinstance(step, C.AddNamespaceLabels):
            k.run("label", "namespace", step.namespace, "--overwrite",
                  *(f"{key}={value}" for key, value in sorted(step.labels.items())))
        elif isinstance(step, C.RemoveNamespaceLabel):
            k.run("label", "namespace", step.namespace, f"{step.key}-")
        elif isinstance(step, C.AddPodLabels):
            ns, name = M.split_pod(step.pod)
            k.run("label", "pod", "-n", ns, name, "--overwrite",
                  *(f"{key}={value}" for key, value in sorted(step.labels.items())))
        elif isinstance(step, C.ResetPodLabels):
            ns, name = M.split_pod(step.pod)
            self.replace_labels(["pod", "-n", ns, name], step.labels)
        elif isinstance(step, C.Sleep):
            self.note(f"sleep {step.seconds:g}s (upstream's fixed wait)")
            if not self.dry:
                time.sleep(step.seconds)
        elif isinstance(step, C.WaitForServers):
            for proto in step.protocols:
                for port in step.ports:
                    self.wait_for_servers(proto, port)
        elif isinstance(step, C.Probe):
            self.check(step)
        else:
            raise TypeError(f"unknown step {step!r}")

    # -- probes --

    def probe_argv(self, src: str, dst: str, protocol: str, port: int) -> list[str]:
        ns, name = M.split_pod(src)
        ip = (self.service_ips if self.target == "service" else self.pod_ips)[dst]
        return ["exec", "-n", ns, name, "-c", self.first_container(), "--",
                "/agnhost", "connect", _pair_address(ip, port), "--timeout=1s", f"--protocol={protocol.lower()}"]

    def probe_one(self, src: str, dst: str, protocol: str, port: int) -> bool:
        argv = self.probe_argv(src, dst, protocol, port)
        last = ""
        for _ in range(3):
            proc = self.kubectl.run(*argv, check=False, timeout=30)
            if proc.returncode == 0:
                return True
            if any(marker in proc.stderr for marker in CONNECT_FAILURES):
                return False
            last = proc.stderr.strip()
            time.sleep(1)
        raise RunnerError(f"probe {src} -> {dst} {protocol}/{port} failed to run: {last}")

    def observe(self, protocol: str, port: int, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        pairs = list(pairs)
        if self.dry:  # print every command, in order, and observe nothing
            for s, d in pairs:
                self.kubectl.show(self.probe_argv(s, d, protocol, port))
            return {}
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            results = list(pool.map(lambda p: self.probe_one(p[0], p[1], protocol, port), pairs))
        return dict(zip(pairs, results, strict=False))

    def wait_for_servers(self, protocol: str, port: int) -> None:
        """upstream waitForHTTPServers: with no policy, every pair connects."""
        pairs = [(f, t) for f in M.ALL_PODS for t in M.ALL_PODS if f != t]
        self.note(f"wait for servers: {protocol}/{port} must connect everywhere")
        observed = self.observe(protocol, port, pairs)
        if self.dry:
            return
        for _ in range(self.server_rounds):
            down = [p for p in pairs if not observed[p]]
            if not down:
                return
            time.sleep(1)
            observed.update(self.observe(protocol, port, down))
        expected = {p: True for p in pairs}
        raise CaseFailure(f"servers not reachable on {protocol}/{port} with no policy\n"
                          + format_table(expected, observed))

    def check(self, probe: C.Probe) -> None:
        expected = {(f, t): v for f, t, v in probe.checked_pairs()}
        self.note(f"probe {probe.protocol}/{probe.port}, expected:\n" + "\n".join(
            "# " + line for line in format_table(expected, expected).splitlines()))
        observed = self.observe(probe.protocol, probe.port, expected)
        if self.dry:
            return
        for _ in range(self.retries):
            wrong = [p for p in expected if observed[p] != expected[p]]
            if not wrong:
                return
            time.sleep(1)
            observed.update(self.observe(probe.protocol, probe.port, wrong))
        wrong = [p for p in expected if observed[p] != expected[p]]
        if wrong:
            raise CaseFailure(f"{probe.protocol}/{probe.port}: {len(wrong)} of {len(expected)} pairs differ\n"
                              + format_table(expected, observed))

    def run_case(self, case: C.Case) -> None:
        self.reset()
        try:
            for step in case.steps:
                self.apply(step)
        finally:
            for step in case.cleanup:
                self.apply(step)


def format_table(expected: dict[tuple[str, str], bool], observed: dict[tuple[str, str], bool]) -> str:
    """Upstream-style truth table: '.' agrees and allowed, 'X' agrees and
    denied, '!' expected allowed but denied, '?' expected denied but allowed,
    '-' not probed."""
    lines = ["from\\to " + " ".join(f"{p:>4}" for p in M.ALL_PODS)]
    for f in M.ALL_PODS:
        cells = []
        for t in M.ALL_PODS:
            if (f, t) not in expected or (f, t) not in observed:
                cells.append("   -")
                continue
            e, o = expected[(f, t)], observed[(f, t)]
            cells.append("   " + ("." if e and o else "X" if not e and not o else "!" if e else "?"))
        lines.append(f"{f:>7} " + " ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def select_cases(ids: Sequence[str], match: str | None, sctp: bool) -> list[C.Case]:
    pool = list(C.cases(sctp=sctp))
    if ids:
        unknown = [i for i in ids if i not in C.CASES_BY_ID]
        if unknown:
            raise SystemExit(f"unknown case id(s): {', '.join(unknown)} (see --list)")
        chosen = [C.CASES_BY_ID[i] for i in ids]
        if not sctp and any(c.requires_sctp for c in chosen):
            raise SystemExit("a chosen case needs SCTP, which --no-sctp leaves out")
        pool = chosen
    if match:
        pool = [c for c in pool if match.lower() in c.id.lower() or match.lower() in c.name.lower()]
    return pool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m tests.conformance.cluster_runner",
                                description="Upstream NetworkPolicy e2e cases against a live cluster (kubectl).")
    p.add_argument("--case", action="append", default=[], metavar="ID", help="run this case (repeatable)")
    p.add_argument("-k", "--match", help="run the cases whose id or name contains this text")
    p.add_argument("--list", action="store_true", help="print the case ids and exit")
    p.add_argument("--no-sctp", action="store_true", help="leave out SCTP (no SCTP containers, no SCTP cases)")
    p.add_argument("--target", choices=("pod", "service"), default="pod",
                   help="probe pod IPs (default) or each pod's ClusterIP Service, as upstream")
    p.add_argument("--image", default=M.AGNHOST_IMAGE, help="agnhost image for the model pods")
    p.add_argument("--workers", type=int, default=8, help="concurrent probes")
    p.add_argument("--retries", type=int, default=10, help="re-probes of mismatching pairs, 1 s apart")
    p.add_argument("--canonical-cidrs", action="store_true", help="clear host bits in ipBlock CIDRs")
    p.add_argument("--no-spread", action="store_true", help="let the scheduler place the pods")
    p.add_argument("--keep", action="store_true", help="keep namespaces x, y, z afterwards")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--kubeconfig")
    p.add_argument("--dry-run", action="store_true",
                   help="print the kubectl commands of one case (give --case) without running them")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sctp = not args.no_sctp
    if args.list:
        for case in C.cases(sctp=sctp):
            print(case.id)
        return 0
    selected = select_cases(args.case, args.match, sctp)
    if args.dry_run and len(selected) != 1:
        print("--dry-run prints one case: choose it with --case ID (see --list)", file=sys.stderr)
        return 2
    if not selected:
        print("no case selected", file=sys.stderr)
        return 2
    kubectl = Kubectl(args.kubectl, args.kubeconfig, dry_run=args.dry_run)
    runner = ClusterRunner(kubectl, protocols=tuple(p for p in M.PROTOCOLS if sctp or p != "SCTP"),
                           target=args.target, image=args.image, workers=args.workers, retries=args.retries,
                           canonical_cidrs=args.canonical_cidrs, spread=not args.no_spread)
    failed: list[str] = []
    passed = 0
    try:
        runner.setup()
        for n, case in enumerate(selected, 1):
            runner.note(f"[{n}/{len(selected)}] {case.id}: {case.full_text}")
            started = time.monotonic()
            try:
                runner.run_case(case)
            except (CaseFailure, RunnerError) as e:  # a kubectl error in a case fails that case only
                failed.append(case.id)
                print(f"FAIL {case.id} ({time.monotonic() - started:.0f}s)\n{e}", flush=True)
            else:
                passed += 1
                if not args.dry_run:
                    print(f"PASS {case.id} ({time.monotonic() - started:.0f}s)", flush=True)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        if not args.keep:
            runner.teardown()
    if args.dry_run:
        return 0
    for case_id in failed:
        print(f"failed: {case_id}")
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
