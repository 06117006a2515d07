"""The API's unix socket: born 0600; its directory made 0700 only when the
daemon creates it, and an existing directory left exactly as it was (a
daemon never changes the mode of what it did not create: `--socket
/run/x.sock` must not make /run 0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from enforcer.api.server import ApiServer, ServerConfig
from enforcer.v1 import enforcer_pb2_grpc


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def serve(socket: Path) -> ApiServer:
    server = ApiServer(ServerConfig(socket=socket), enforcer_pb2_grpc.EnforcerServicer())
    server.start()
    return server


def health_of(socket: Path) -> int:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


@pytest.mark.parametrize("existing_mode", [0o755, 0o1777, 0o750])
def test_existing_directory_is_left_as_it_is(tmp_path: Path, existing_mode: int):
    run = tmp_path / "run"
    run.mkdir()
    os.chmod(run, existing_mode)
    before = os.stat(run)
    server = serve(run / "x.sock")
    try:
        after = os.stat(run)
        assert mode(run) == existing_mode
        assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
        assert stat.S_ISSOCK(os.stat(run / "x.sock").st_mode) and mode(run / "x.sock") == 0o600
        assert health_of(run / "x.sock") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop()
    assert mode(run) == existing_mode and not (run / "x.sock").exists()


def test_missing_directories_are_created_0700(tmp_path: Path):
    os.chmod(tmp_path, 0o755)
    socket = tmp_path / "made" / "by-daemon" / "enforcer.sock"
    old = os.umask(0o022)  # a common umask: mkdir alone would give 0755
    try:
        server = serve(socket)
    finally:
        os.umask(old)
    try:
        assert mode(tmp_path / "made") == 0o700 and mode(tmp_path / "made" / "by-daemon") == 0o700
        assert mode(tmp_path) == 0o755
        assert mode(socket) == 0o600
        assert health_of(socket) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop()


def test_stale_socket_is_replaced_and_directory_kept(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    stale = run / "x.sock"
    stale.write_text("a dead daemon's socket")
    server = serve(stale)
    try:
        assert stat.S_ISSOCK(os.stat(stale).st_mode) and mode(stale) == 0o600 and mode(run) == 0o755
    finally:
        server.stop()
