"""`enforcer diagnose`, the Status RPC, the status file and the daemon log
report the NodePort SNAT trap, on the real daemon in a lab, for a manifest
directory holding such a Service and policy; each problem is logged once
when it appears and once when it goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enforcer.api import client
from enforcer.v1 import enforcer_pb2 as pb
from tests.daemon.harness import NAMESPACE, PIN_PREFIX, PIN_ROOT, DaemonLab

pytestmark = pytest.mark.lab

TAG = os.getpid()
REMOTE_NODE_IP = "192.0.2.12"
FIX = ("set spec.externalTrafficPolicy: Local on Service default/web "
       "(clients keep their address; only nodes with a ready backend answer)")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> DaemonLab:
    env = DaemonLab(f"end{TAG}g", ["a", "b"], PIN_ROOT / f"{PIN_PREFIX}{os.getpid()}-diagnose")
    request.addfinalizer(env.close)
    return env.start()


def trap(cidr: str, etp: str = "Cluster") -> dict[str, Any]:
    """A NodePort Service over pod a, a policy admitting clients to a by
    ipBlock on the Service's target port, and a pod on another node (the
    lab's own pods report no status.hostIPs; this one tells a node address)."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
               "spec": {"type": "NodePort", "selector": {"pod": "a"}, "externalTrafficPolicy": etp,
                        "clusterIP": "10.96.0.10",
                        "ports": [{"port": 8080, "targetPort": 80, "protocol": "TCP", "nodePort": 30080}]}}
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "allow-ext", "namespace": NAMESPACE},
              "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": 80}]}]}}
    remote = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "remote", "namespace": NAMESPACE, "labels": {"pod": "remote"}},
              "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "lab"}]},
              "status": {"phase": "Running", "podIP": "10.250.0.2", "hostIP": REMOTE_NODE_IP,
                         "hostIPs": [{"ip": REMOTE_NODE_IP}]}}
    return {"apiVersion": "v1", "kind": "List", "items": [service, policy, remote]}


def cli(lab: DaemonLab, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    assert lab.daemon is not None
    return subprocess.run([sys.executable, "-m", "enforcer", *args, "--socket", str(lab.daemon.socket)],
                          capture_output=True, text=True, timeout=60)


def log_lines(lab: DaemonLab, *needles: str) -> list[str]:
    assert lab.daemon is not None
    return [line for line in lab.daemon.log_text().splitlines() if all(n in line for n in needles)]


def test_the_trap_is_reported_everywhere_and_logged_once(lab: DaemonLab) -> None:
    assert lab.daemon is not None
    lab.write_policy(trap("203.0.113.0/24"), "trap")
    status_file = lab.sync()

    # the status file and the gRPC Status
    (in_file,) = status_file["diagnostics"]
    assert (in_file["code"], in_file["service"], in_file["policy"], in_file["effect"], in_file["severity"]) == \
        ("snat-trap", "default/web", "default/allow-ext", "clients-denied", "warning")
    stub = client.connect(lab.daemon.socket)
    st = stub.Status(pb.StatusRequest(), timeout=10)
    (d,) = st.diagnostics
    assert (d.service, d.policy, d.effect, d.fix) == ("default/web", "default/allow-ext", "clients-denied", FIX)
    assert f"holds no node address ({REMOTE_NODE_IP})" in d.message and f"Fix: {FIX}" in d.message
    assert stub.Diagnose(pb.DiagnoseRequest(), timeout=10).diagnostics == st.diagnostics

    # the CLI: problems found -> exit status 3
    out = cli(lab, "diagnose")
    assert out.returncode == client.EXIT_PROBLEMS == 3, out.stderr
    text = " ".join(out.stdout.split())  # the message is wrapped
    for part in ("WARNING snat-trap (clients-denied): Service default/web, NetworkPolicy default/allow-ext",
                 f"Fix: {FIX}", "1 problem found"):
        assert part in text, out.stdout
    doc = json.loads(cli(lab, "diagnose", "--json").stdout)
    assert [(x["service"], x["policy"], x["effect"]) for x in doc["diagnostics"]] == \
        [("default/web", "default/allow-ext", "clients-denied")]
    status_text = cli(lab, "status").stdout
    assert "configuration problems" in status_text and "Service default/web, NetworkPolicy default/allow-ext" in status_text

    # the log: one WARNING naming the Service, the policy and the fix...
    (warned,) = log_lines(lab, "WARNING", "snat-trap")
    assert "Service default/web" in warned and "NetworkPolicy default/allow-ext" in warned and FIX in warned
    # ...not repeated by later passes that find the same problem
    lab.write_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "b-open", "namespace": NAMESPACE},
                      "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]}})
    lab.sync()
    assert len(log_lines(lab, "WARNING", "snat-trap")) == 1

    # the ipBlock grows to hold the node: the other case, logged as new; the old one resolved
    lab.write_policy(trap("0.0.0.0/0"), "trap")
    lab.sync()
    (d,) = stub.Diagnose(pb.DiagnoseRequest(), timeout=10).diagnostics
    assert (d.effect, d.severity) == ("any-client-admitted", "error")
    assert "admits every client that reaches any node" in d.message
    assert len(log_lines(lab, "WARNING", "snat-trap", "any-client-admitted", FIX)) == 1
    assert len(log_lines(lab, "INFO", "resolved snat-trap (clients-denied)", "Service default/web")) == 1

    # the fix: externalTrafficPolicy Local -> nothing to report, exit status 0
    lab.write_policy(trap("0.0.0.0/0", etp="Local"), "trap")
    status_file = lab.sync()
    assert status_file["diagnostics"] == []
    out = cli(lab, "diagnose")
    assert out.returncode == 0 and out.stdout.startswith("no problems found"), out.stdout + out.stderr
    none = cli(lab, "diagnose", "--json")
    assert none.returncode == 0 and json.loads(none.stdout)["diagnostics"] == []
    assert not stub.Status(pb.StatusRequest(), timeout=10).diagnostics
    assert "configuration problems" not in cli(lab, "status").stdout
    assert len(log_lines(lab, "INFO", "resolved snat-trap (any-client-admitted)", "NetworkPolicy default/allow-ext")) == 1
    assert len(log_lines(lab, "WARNING", "snat-trap")) == 2


def test_diagnose_without_a_daemon_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "enforcer", "diagnose", "--socket", str(tmp_path / "none.sock")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no daemon socket" in out.stderr and "Traceback" not in out.stderr
