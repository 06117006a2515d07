#!/opt/enforcer/venv/bin/python
"""Kubelet exec probe for the enforcer DaemonSet: one call to the daemon's
standard gRPC health service (grpc.health.v1.Health/Check) over its unix
socket.

Why exec and not kubelet's native `grpc:` probe: the native probe dials
TCP at the pod IP, which under hostNetwork is the node's address, and it
speaks plaintext only; the daemon serves its API on a root-only unix
socket, and on TCP only with TLS (`--listen`). See deploy/README.md.

Exit 0 when the answer is acceptable, 1 otherwise (one line on stdout
either way, which kubelet records in the pod's events on failure):

  readiness (default)   SERVING: the daemon has completed a sync since start
  --any-answer          SERVING or NOT_SERVING: the API thread answers
                        (liveness, startup); a daemon that cannot reach the
                        API server is not made better by a restart
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_SOCKET = "/run/enforcer/enforcer.sock"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="enforcer-health", description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    p.add_argument("--service", default="", help="health service name ('' is the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    p.add_argument("--any-answer", action="store_true", help="NOT_SERVING passes too (liveness)")
    args = p.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"unix:{args.socket}"
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        print(f"{target}: no answer: {code.name if code else e}: {e.details() if hasattr(e, 'details') else ''}")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    ok = reply.status == health_pb2.HealthCheckResponse.SERVING or (
        args.any_answer and reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)
    print(f"{target} service {args.service!r}: {status}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
