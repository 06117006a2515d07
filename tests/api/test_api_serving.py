"""Serving: health is NOT_SERVING until the first sync, metrics, and a TCP
listener only with TLS (mutual TLS when a client CA is given)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from enforcer.lab.cluster import DEMO_SPEC, lab_down, lab_up
from enforcer.lab.loader import DaemonProcess
from enforcer.lab.netns import netns_path

pytestmark = pytest.mark.lab

METRICS_PORT = 9464
TLS_PORT = 50443


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=enforcer-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def served():
    prefix = f"ens{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="enforcer-serving-"))
    pki = work / "pki"
    pki.mkdir()
    make_pki(pki)
    source = work / "manifests"
    pin = Path(f"/sys/fs/bpf/enforcer-serving-{prefix}")
    _, state = lab_up(prefix, source, DEMO_SPEC)
    # A file rewritten every 30 ms holds the directory source's first sync
    # back (it only reads files that hold still for a poll: 0.3 s here, ten
    # rewrites, so a writer slowed by a loaded machine still holds it), so
    # the API is up before the daemon is ready.
    churn = source / "churn.yaml"
    stop_churn = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop_churn.is_set():
            churn.write_text(f"# {n}\n")
            n += 1
            time.sleep(0.03)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    daemon = DaemonProcess(state.node_netns, pin, source, "lab-node", workdir=work / "daemon", extra_args=[
        "--poll-interval", "0.3", "--metrics-port", str(METRICS_PORT), "--metrics-addr", "127.0.0.1", "--listen", f"127.0.0.1:{TLS_PORT}",
        "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
        "--tls-client-ca", str(pki / "ca.crt")])
    started = threading.Thread(target=daemon.start, daemon=True)
    started.start()
    try:
        yield {"daemon": daemon, "state": state, "pki": pki, "stop_churn": stop_churn, "started": started}
    finally:
        stop_churn.set()
        daemon.stop()
        subprocess.run(["nsenter", f"--net={netns_path(state.node_netns)}", sys.executable, "-m", "enforcer",
                        "cleanup", "--pin-dir", str(pin)], capture_output=True)
        daemon.close()
        lab_down(prefix)
        shutil.rmtree(pin, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def health(sock: Path) -> int:
    channel = grpc.insecure_channel(f"unix:{sock}")
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_health_flips_to_serving_after_the_first_sync(served):
    daemon = served["daemon"]
    deadline = time.monotonic() + 90
    while not daemon.socket.exists():
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.1)
    time.sleep(0.5)
    assert health(daemon.socket) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not daemon.ready_file.exists()
    served["stop_churn"].set()
    served["started"].join(timeout=60)
    assert daemon.ready_file.exists(), daemon.log_tail()
    assert health(daemon.socket) == health_pb2.HealthCheckResponse.SERVING


IN_NODE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""

TLS_CLIENT = """
import sys, grpc
from enforcer.v1 import enforcer_pb2 as pb, enforcer_pb2_grpc as g
pki = sys.argv[1]
read = lambda n: open(f"{pki}/{n}", "rb").read()
cert = (read("client.key"), read("client.crt")) if sys.argv[2] == "with-cert" else (None, None)
creds = grpc.ssl_channel_credentials(root_certificates=read("ca.crt"), private_key=cert[0], certificate_chain=cert[1])
try:
    st = g.EnforcerStub(grpc.secure_channel(sys.argv[3], creds)).Status(pb.StatusRequest(), timeout=5)
    print("OK", st.node)
except grpc.RpcError as e:
    print("FAILED", e.code().name)
"""


def in_node(served, code: str, *args: str) -> str:
    out = subprocess.run(["nsenter", f"--net={netns_path(served['state'].node_netns)}", sys.executable, "-c", code,
                          *args], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_metrics(served):
    served["stop_churn"].set()
    served["started"].join(timeout=60)
    # Some traffic, so verdict counters exist.
    from enforcer.lab.probe import ProbeSpec, probe_many

    pods = served["state"].pods
    probe_many([ProbeSpec(pods["bar/client"]["netns"], pods["foo/web"]["ipv4"], 80)])
    text = in_node(served, IN_NODE, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    assert 'enforcer_verdicts_total{direction="egress",namespace="bar",pod="client",reason="ALLOW_NOT_ISOLATED",tier="",verdict="allowed"}' in text
    assert 'enforcer_map_entries{map="endpoints"} 6.0' in text
    assert "enforcer_sync_duration_seconds_bucket" in text and "enforcer_sync_duration_seconds_count" in text
    assert "enforcer_invalid_objects 0.0" in text and "enforcer_ready 1.0" in text
    assert 'enforcer_map_write_failures{map="policy",reason="full"} 0.0' in text
    assert "enforcer_objects_not_written 0.0" in text


def test_tls_listener_requires_a_client_certificate(served):
    served["stop_churn"].set()
    served["started"].join(timeout=60)
    pki, addr = str(served["pki"]), f"127.0.0.1:{TLS_PORT}"
    assert in_node(served, TLS_CLIENT, pki, "with-cert", addr).strip() == "OK lab-node"
    assert in_node(served, TLS_CLIENT, pki, "without-cert", addr).startswith("FAILED")


def test_tcp_without_tls_is_refused_as_configuration(tmp_path):
    out = subprocess.run([sys.executable, "-m", "enforcer", "run", "--source", str(tmp_path), "--node", "n",
                          "--listen", "127.0.0.1:1", "--socket", str(tmp_path / "s.sock")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "only with TLS" in out.stderr
