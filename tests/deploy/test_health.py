"""deploy/health.py (the DaemonSet's exec probes) against the daemon's own
API server class on a unix socket: NOT_SERVING until the first sync, then
SERVING, as enforcer.api.server serves it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from enforcer.api.server import ApiServer, ServerConfig
from enforcer.v1 import enforcer_pb2_grpc

from .conftest import DEPLOY

HEALTH = DEPLOY / "health.py"


def probe_timeout() -> int:
    ds = next(d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d)
    (main,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "enforcer"]
    return min(main[p]["timeoutSeconds"] for p in ("startupProbe", "livenessProbe", "readinessProbe"))


def check(socket: Path, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(HEALTH), "--socket", str(socket), *args],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


@pytest.fixture
def server(tmp_path):
    socket = tmp_path / "run" / "enforcer.sock"
    api = ApiServer(ServerConfig(socket=socket), enforcer_pb2_grpc.EnforcerServicer())
    api.start()
    try:
        yield api, socket
    finally:
        api.stop()


def test_not_serving_before_the_first_sync(server):
    _, socket = server
    rc, out, _ = check(socket)
    assert rc == 1 and "NOT_SERVING" in out          # readiness fails
    rc, out, _ = check(socket, "--any-answer")
    assert rc == 0 and "NOT_SERVING" in out          # liveness and startup pass


def test_serving_after_sync_within_the_probe_timeout(server):
    api, socket = server
    api.set_serving(True)
    for args in ((), ("--any-answer",), ("--service", "enforcer.v1.Enforcer")):
        rc, out, elapsed = check(socket, *args)
        assert rc == 0 and "SERVING" in out, (args, out)
        assert elapsed < probe_timeout(), f"health check took {elapsed:.1f}s"


def test_unknown_service_fails(server):
    api, socket = server
    api.set_serving(True)
    rc, out, _ = check(socket, "--service", "no.such.Service", "--any-answer")
    assert rc == 1 and "NOT_FOUND" in out


def test_no_daemon_fails_every_probe(tmp_path):
    for args in ((), ("--any-answer",)):
        rc, out, elapsed = check(tmp_path / "absent.sock", "--timeout", "1", *args)
        assert rc == 1 and "no answer" in out
        assert elapsed < probe_timeout()
