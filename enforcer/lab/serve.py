"""Lab server run inside a pod's namespace: TCP and UDP on the given ports
and addresses, answering with the pod's name so a probe knows who answered.

  TCP: on connect sends "<name>\\n", then answers each line "x" it receives
       with "<name> x\\n" (a long-lived connection can keep exchanging data).
  UDP: answers each datagram with "<name>\\n" from the address it was sent to.

With --report-peer, the name is followed by a space and the address the
connection or datagram came from, as this socket saw it (after any NAT on
the way): "<name> <peer address>\n". Lines echoed on a TCP connection keep
the form "<name> x\n".

Bound to the pod's own addresses rather than the wildcard, so replies leave
from the address the client asked for even if the pod holds others.
Prints "ready" on stdout once every socket listens.

  python -m enforcer.lab.serve --name b --addr 10.244.0.3 --addr fd00:244::3 --port 80 --port 81
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import threading


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _bind(addr: str, port: int, kind: socket.SocketKind) -> socket.socket:
    s = socket.socket(_family(addr), kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    return s


def _greeting(name: bytes, peer: tuple, report_peer: bool) -> bytes:
    return name + (b" " + str(peer[0]).encode() if report_peer else b"") + b"\n"


def _serve_tcp_conn(conn: socket.socket, name: bytes, greeting: bytes) -> None:
    with conn:
        try:
            conn.sendall(greeting)
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    conn.sendall(name + b" " + line + b"\n")
        except OSError:
            return


def _serve_tcp(listener: socket.socket, name: bytes, report_peer: bool) -> None:
    while True:
        conn, peer = listener.accept()
        threading.Thread(target=_serve_tcp_conn, args=(conn, name, _greeting(name, peer, report_peer)),
                         daemon=True).start()


def _serve_udp(sock: socket.socket, name: bytes, report_peer: bool) -> None:
    while True:
        _data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(_greeting(name, peer, report_peer), peer)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="enforcer.lab.serve")
    p.add_argument("--name", required=True)
    p.add_argument("--addr", action="append", required=True)
    p.add_argument("--port", action="append", type=int, required=True)
    p.add_argument("--report-peer", action="store_true",
                   help="answer '<name> <peer address>' instead of '<name>'")
    args = p.parse_args(argv)
    name = args.name.encode()

    threads = []
    for addr in args.addr:
        for port in args.port:
            tcp = _bind(addr, port, socket.SOCK_STREAM)
            tcp.listen(128)
            udp = _bind(addr, port, socket.SOCK_DGRAM)
            threads.append(threading.Thread(target=_serve_tcp, args=(tcp, name, args.report_peer), daemon=True))
            threads.append(threading.Thread(target=_serve_udp, args=(udp, name, args.report_peer), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
