"""Probes: one TCP connection or UDP exchange from inside a namespace, and
connectivity matrices made of many of them (run concurrently).

A probe tells three outcomes apart, which is what makes a denied flow
visible: OK (the server answered with its name), REFUSED (a RST or an ICMP
port unreachable came back: the path is open but nothing listens), TIMEOUT
(nothing came back: with the enforcer, a drop).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .netns import entered

PROTOCOLS = ("tcp", "udp")


class Outcome(enum.Enum):
    OK = "ok"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    answered_by: str | None = None  # the server's name when OK
    detail: str = ""
    peer: str | None = None  # the client address the server saw (serve.py --report-peer)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def open_socket(netns: str | None, family: int, proto: str = "tcp",
                src_ip: str | None = None) -> socket.socket:
    """A socket of netns (family 4 or 6), optionally bound to src_ip."""
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r}: one of {PROTOCOLS}")
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with entered(netns):
        s = socket.socket(af, kind)
    if src_ip is not None:
        try:
            s.bind((src_ip, 0))
        except OSError:
            s.close()
            raise
    return s


def connect_tcp(netns: str | None, dst_ip: str, port: int, timeout: float = 1.0,
                src_ip: str | None = None) -> tuple[socket.socket, str]:
    """An established TCP connection from netns and the greeting (server
    name) it received; raises OSError/TimeoutError as socket does."""
    family = ipaddress.ip_address(dst_ip).version
    s = open_socket(netns, family, "tcp", src_ip)
    try:
        s.settimeout(timeout)
        s.connect((dst_ip, port))
        return s, _read_line(s)
    except BaseException:
        s.close()
        raise


def _read_line(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        data = s.recv(4096)
        if not data:
            raise ConnectionResetError("closed before a full line")
        buf += data
    return buf.decode().strip()


def exchange(s: socket.socket, text: str) -> str:
    """Send one line on a connect_tcp socket and return the answer line."""
    s.sendall(text.encode() + b"\n")
    return _read_line(s)


def _answered(line: str) -> ProbeResult:
    """OK, from a server's answer: "<name>" or "<name> <peer address>"."""
    name, _, peer = line.partition(" ")
    return ProbeResult(Outcome.OK, name, peer=peer or None)


def probe(netns: str | None, dst_ip: str, port: int, proto: str = "tcp",
          timeout: float = 1.0, src_ip: str | None = None) -> ProbeResult:
    """Connect (TCP) or exchange one datagram (UDP) from netns to dst_ip."""
    family = ipaddress.ip_address(dst_ip).version
    try:
        if proto == "tcp":
            s, name = connect_tcp(netns, dst_ip, port, timeout, src_ip)
            s.close()
            return _answered(name)
        with open_socket(netns, family, "udp", src_ip) as s:
            s.settimeout(timeout)
            s.connect((dst_ip, port))
            s.send(b"probe\n")
            return _answered(s.recv(4096).decode().strip())
    except TimeoutError:
        return ProbeResult(Outcome.TIMEOUT)
    except ConnectionRefusedError:
        return ProbeResult(Outcome.REFUSED)
    except OSError as e:
        return ProbeResult(Outcome.ERROR, detail=str(e))


@dataclass(frozen=True)
class ProbeSpec:
    """One probe to run: from a namespace to an address."""

    netns: str | None
    dst_ip: str
    port: int
    proto: str = "tcp"
    src_ip: str | None = None
    timeout: float | None = None  # None: probe_many's


# Threads per probe_many call: every probe of a matrix in one wave (9 pods
# both ways is 81), so a matrix with denied flows costs one timeout, not one
# per batch of workers. The threads only wait on sockets.
MAX_CONCURRENT_PROBES = 512


def probe_many(specs: Sequence[ProbeSpec], timeout: float = 1.0) -> list[ProbeResult]:
    """Run the probes concurrently, all at once up to MAX_CONCURRENT_PROBES;
    results in the order of specs. A run of denied flows costs one timeout,
    not one per flow."""
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT_PROBES, len(specs))) as pool:
        futures = [pool.submit(probe, s.netns, s.dst_ip, s.port, s.proto,
                               timeout if s.timeout is None else s.timeout, s.src_ip)
                   for s in specs]
        return [f.result() for f in futures]


SYMBOLS = {Outcome.OK: "ok", Outcome.REFUSED: "rst", Outcome.TIMEOUT: "--", Outcome.ERROR: "err"}


def format_matrix(title: str, sources: Sequence[str], targets: Sequence[str],
                  results: dict[tuple[str, str], ProbeResult | None]) -> str:
    """Rows are sources, columns targets; None (a pod to itself) shows '.'."""
    width = max([len(t) for t in targets] + [4])
    first = max([len(s) for s in sources] + [len(title)])
    lines = [f"{title:<{first}}  " + "  ".join(f"{t:>{width}}" for t in targets)]
    for src in sources:
        cells = []
        for dst in targets:
            r = results.get((src, dst))
            cells.append(f"{'.' if r is None else SYMBOLS[r.outcome]:>{width}}")
        lines.append(f"{src:<{first}}  " + "  ".join(cells))
    return "\n".join(lines)
