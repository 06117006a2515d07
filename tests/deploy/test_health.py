"""deploy/health.py (the DaemonSet's exec probes) against the daemon's own
API server class on a unix socket: NOT_SERVING until the first sync, then
SERVING, as enforcer.api.server serves it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from enforcer.api.server import ApiServer, ServerConfig
from enforcer.v1 import enforcer_pb2_grpc

from .conftest import DEPLOY

HEALTH = DEPLOY / "health.py"


def probes() -> dict[str, dict[str, Any]]:
    """The DaemonSet's probes of the enforcer container, by field name."""
    ds = next(d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d)
    (main,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "enforcer"]
    return {p: main[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")}


def check(socket: Path, *args: str) -> tuple[int, str]:
    """The script run as kubelet runs it (timeout=: only a guard against a hang)."""
    proc = subprocess.run([sys.executable, str(HEALTH), "--socket", str(socket), *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def rpc_deadlines(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[int, list[float | None]]:
    """health.py's main(argv) in this process, its Health/Check calls made
    through the real stub and recorded: (exit status, the deadline of each)."""
    from grpc_health.v1 import health_pb2_grpc

    spec = importlib.util.spec_from_file_location("enforcer_health", HEALTH)
    assert spec and spec.loader
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    real, deadlines = health_pb2_grpc.HealthStub, []

    class RecordingStub:
        def __init__(self, channel: Any) -> None:
            self._stub = real(channel)

        def Check(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:  # noqa: N802
            deadlines.append(timeout)
            return self._stub.Check(request, timeout=timeout, **kwargs)

    monkeypatch.setattr(health_pb2_grpc, "HealthStub", RecordingStub)
    return health.main(argv), deadlines


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
    rc, out = check(socket)
    assert rc == 1 and "NOT_SERVING" in out          # readiness fails
    rc, out = check(socket, "--any-answer")
    assert rc == 0 and "NOT_SERVING" in out          # liveness and startup pass


def test_serving_after_sync(server):
    api, socket = server
    api.set_serving(True)
    for args in ((), ("--any-answer",), ("--service", "enforcer.v1.Enforcer")):
        rc, out = check(socket, *args)
        assert rc == 0 and "SERVING" in out, (args, out)


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_each_probe_gives_up_before_kubelet_does(server, monkeypatch, probe):
    """The command of each probe makes one call whose deadline is shorter
    than the probe's timeoutSeconds, so a hung daemon gets the script's
    "no answer" rather than kubelet's kill. Checked on the deadline the
    call is given, not on a clock."""
    api, socket = server
    api.set_serving(True)
    spec = probes()[probe]
    command = spec["exec"]["command"]
    rc, deadlines = rpc_deadlines(monkeypatch, [*command[1:], "--socket", str(socket)])
    assert rc == 0
    assert len(deadlines) == 1 and deadlines[0] is not None, deadlines
    assert deadlines[0] < spec["timeoutSeconds"], (probe, deadlines, spec["timeoutSeconds"])


def test_unknown_service_fails(server):
    api, socket = server
    api.set_serving(True)
    rc, out = check(socket, "--service", "no.such.Service", "--any-answer")
    assert rc == 1 and "NOT_FOUND" in out


def test_no_daemon_fails_every_probe(tmp_path, monkeypatch):
    for args in ((), ("--any-answer",)):
        rc, out = check(tmp_path / "absent.sock", "--timeout", "1", *args)
        assert rc == 1 and "no answer" in out
        # --timeout is the call's deadline.
        assert rpc_deadlines(monkeypatch, ["--socket", str(tmp_path / "absent.sock"), "--timeout", "1", *args]) \
            == (1, [1.0])
