"""Serving the API: a unix socket only root can use, optionally TCP with
TLS (mutual TLS when a client CA is given), the standard health service
(NOT_SERVING until the first sync) and server reflection."""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import ConfigError
from ..files import make_private_dir
from ..v1 import enforcer_pb2, enforcer_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/enforcer/enforcer.sock")
SERVICE_NAME = enforcer_pb2.DESCRIPTOR.services_by_name["Enforcer"].full_name


@dataclass(frozen=True)
class ServerConfig:
    socket: Path | None = DEFAULT_SOCKET
    listen: str | None = None        # host:port, TLS required
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # given: clients must present a cert it signed

    def validate(self) -> None:
        if self.listen and not (self.tls_cert and self.tls_key):
            raise ConfigError("--listen serves TCP only with TLS: give --tls-cert and --tls-key")
        if self.tls_client_ca and not self.listen:
            raise ConfigError("--tls-client-ca needs --listen")


class ApiServer:
    def __init__(self, config: ServerConfig, servicer: enforcer_pb2_grpc.EnforcerServicer) -> None:
        config.validate()
        self.config = config
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="api"))
        enforcer_pb2_grpc.add_EnforcerServicer_to_server(servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.set_serving(False)
        self.tcp_port: int | None = None

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> None:
        cfg = self.config
        if cfg.socket is not None:
            make_private_dir(cfg.socket.parent)
            cfg.socket.unlink(missing_ok=True)  # a stale socket of a dead daemon
            old = os.umask(0o177)  # the socket is born 0600: no window for others
            try:
                self.server.add_insecure_port(f"unix:{cfg.socket}")
            finally:
                os.umask(old)
        if cfg.listen:
            assert cfg.tls_cert and cfg.tls_key
            client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
            creds = grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
                                                root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            self.tcp_port = self.server.add_secure_port(cfg.listen, creds)
        self.server.start()
        if cfg.socket is not None:
            os.chmod(cfg.socket, 0o600)
        log.info("API on %s%s", cfg.socket, f" and {cfg.listen} (TLS)" if cfg.listen else "")

    def stop(self) -> None:
        self.server.stop(grace=1).wait()
        if self.config.socket is not None:
            self.config.socket.unlink(missing_ok=True)
