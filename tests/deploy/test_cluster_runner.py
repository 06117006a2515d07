"""tests/conformance/cluster_runner.py without a cluster: its --dry-run
prints the kubectl commands of one case, which must be the case's policies,
label changes and probes, with nothing executed. It must also run on a bare
python3 (the lab's control plane has no venv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance import cases as C
from tests.conformance import model as M

from .conftest import ROOT

DENY_INGRESS = "netpol/should-support-a-default-deny-ingress-policy"
IPBLOCK_UPDATE = "netpol/should-ensure-an-ip-overlapping-both-ipblock-cidr-and-ipblock-except-is-allowed"
NS_LABEL_CASE = next(c.id for c in C.CASES
                     if any(isinstance(s, C.AddNamespaceLabels) for s in c.steps)
                     and any(isinstance(s, C.RemoveNamespaceLabel) for s in c.cleanup))
POD_LABEL_CASE = next(c.id for c in C.CASES
                      if any(isinstance(s, C.AddPodLabels) for s in c.steps)
                      and any(isinstance(s, C.ResetPodLabels) for s in c.cleanup))


def run(*args: str, python: str = sys.executable, tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The runner as run-conformance.sh runs it, with a kubectl that fails if called."""
    env = {"PATH": "/usr/bin:/bin"}
    if tmp_path is not None:
        trap = tmp_path / "kubectl"
        trap.write_text(f"#!/bin/sh\necho called >> {tmp_path}/kubectl.called\nexit 99\n")
        trap.chmod(0o755)
        env["PATH"] = f"{tmp_path}:/usr/bin:/bin"
    return subprocess.run([python, "-m", "tests.conformance.cluster_runner", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def commands(stdout: str) -> list[tuple[str, str | None]]:
    """(command line, stdin document or None) of every kubectl command printed."""
    out, lines, i = [], stdout.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("kubectl "):
            if line.endswith("<<'EOF'"):
                out.append((line.removesuffix(" <<'EOF'"), lines[i + 1]))
                assert lines[i + 2] == "EOF"
                i += 2
            else:
                out.append((line, None))
        else:
            assert line.startswith("#"), f"neither a command nor a comment: {line!r}"
        i += 1
    return out


@pytest.fixture(scope="module")
def deny_ingress(tmp_path_factory) -> list[tuple[str, str | None]]:
    tmp = tmp_path_factory.mktemp("trap")
    proc = run("--dry-run", "--case", DENY_INGRESS, tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp / "kubectl.called").exists(), "--dry-run ran kubectl"
    return commands(proc.stdout)


def test_dry_run_sets_up_the_model(deny_ingress):
    created = [json.loads(doc) for line, doc in deny_ingress if line == "kubectl create -f -"]
    namespaces = [o for o in created if o["kind"] == "Namespace"]
    pods = [o for o in created if o["kind"] == "Pod"]
    assert [n["metadata"]["name"] for n in namespaces] == list(M.NAMESPACES)
    for n in namespaces:
        assert n["metadata"]["labels"] == M.namespace_labels(n["metadata"]["name"])
    assert [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods] == list(M.ALL_PODS)
    for p in pods:
        assert p["metadata"]["labels"] == {"pod": p["metadata"]["name"]}
        ports = {port["name"] for c in p["spec"]["containers"] for port in c["ports"]}
        assert ports == {c.port_name for c in M.containers()}
        assert {c["image"] for c in p["spec"]["containers"]} == {M.AGNHOST_IMAGE}
    assert [line for line, _ in deny_ingress if line.startswith("kubectl wait")] == [
        f"kubectl wait --for=condition=Ready pod --all -n {ns} --timeout=300s" for ns in M.NAMESPACES]


def test_dry_run_applies_the_cases_policy_and_probes_every_pair(deny_ingress):
    case = C.CASES_BY_ID[DENY_INGRESS]
    policies = [json.loads(doc) for line, doc in deny_ingress
                if line == "kubectl create -f -" and json.loads(doc)["kind"] == "NetworkPolicy"]
    assert policies == list(case.policies)
    probes = [line for line, _ in deny_ingress if line.startswith("kubectl exec")]
    # WaitForServers (TCP/80) and the one Probe: 72 ordered pairs each
    assert len(probes) == 2 * 72
    assert probes[0] == "kubectl exec -n x a -c cont-80-tcp -- /agnhost connect 10.244.1.11:80 --timeout=1s --protocol=tcp"
    assert all("/agnhost connect" in p and "--protocol=tcp" in p for p in probes)
    # the case starts from no policies: they are cleared before the case's own is created
    lines = [line for line, _ in deny_ingress]
    first_policy = next(i for i, (line, doc) in enumerate(deny_ingress)
                        if doc and json.loads(doc)["kind"] == "NetworkPolicy")
    assert lines.index("kubectl delete networkpolicy --all -n x") < first_policy
    # the servers are checked before the policy, the probe after it
    assert lines.index(probes[0]) < first_policy < len(lines) - 1 - lines[::-1].index(probes[-1])
    assert lines[-1] == "kubectl delete namespace x y z --ignore-not-found --wait=false"


def test_dry_run_resolves_ip_blocks_and_replaces_on_update(tmp_path):
    proc = run("--dry-run", "--case", IPBLOCK_UPDATE, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    created = [json.loads(d) for line, d in cmds if line == "kubectl create -f -" and "NetworkPolicy" in d]
    replaced = [json.loads(d) for line, d in cmds if line == "kubectl replace -f -"]
    assert len(created) == 1 and len(replaced) == 1
    assert created[0]["spec"]["egress"][0]["to"][0]["ipBlock"] == {"cidr": "10.244.1.10/4", "except": ["10.244.1.11/32"]}
    assert replaced[0]["spec"]["egress"][0]["to"][0]["ipBlock"] == {"cidr": "10.244.1.11/32"}
    assert "$podIPCIDR" not in proc.stdout


@pytest.mark.parametrize("case_id,expected", [
    (NS_LABEL_CASE, ("kubectl label namespace", "--overwrite")),
    (POD_LABEL_CASE, ("kubectl label pod -n", "kubectl patch pod -n")),
])
def test_dry_run_label_steps(tmp_path, case_id, expected):
    proc = run("--dry-run", "--case", case_id, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in expected:
        assert text in proc.stdout, (case_id, text)


def test_runs_on_bare_python_without_site_packages(tmp_path):
    """-S: no site-packages, so no venv and no third-party module."""
    proc = run("--list", python="/usr/bin/python3", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["/usr/bin/python3", "-S", "-m", "tests.conformance.cluster_runner",
                           "--dry-run", "--case", DENY_INGRESS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_list_and_selection(tmp_path):
    proc = run("--list", tmp_path=tmp_path)
    assert proc.stdout.split() == [c.id for c in C.CASES]
    proc = run("--list", "--no-sctp", tmp_path=tmp_path)
    assert proc.stdout.split() == [c.id for c in C.cases(sctp=False)]
    assert run("--dry-run", tmp_path=tmp_path).returncode == 2          # one case only
    assert run("--dry-run", "--case", "nope", tmp_path=tmp_path).returncode != 0
    sctp_case = next(c.id for c in C.CASES if c.requires_sctp)
    assert run("--dry-run", "--no-sctp", "--case", sctp_case, tmp_path=tmp_path).returncode != 0
