"""Verdict events from the `events` ring buffer, decoded.

Read with ringbuf.py (mmap and epoll of the map fd), not bcc: the daemon
opens the ring buffer's pin (the loader child pins it) and never loads bcc.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import Any

from .layout import DIR_EGRESS, EVENT_ALLOW, EVENT_AUDIT, IPAddress, VerdictEvent, addr_from_bytes
from .reasons import Reason
from .ringbuf import RingBuffer


@dataclass(frozen=True)
class Verdict:
    timestamp_ns: int
    allowed: bool
    reason: Reason | int
    direction: str  # "ingress" / "egress" of the endpoint
    endpoint_id: int
    ifindex: int
    peer_identity: int
    rule_id: int
    proto: int
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    tcp_flags: int
    # Passed, but a policy in audit mode would drop it: reason and rule_id
    # are that drop's (allowed is True).
    audit: bool = False

    @classmethod
    def decode(cls, raw: bytes | VerdictEvent) -> Verdict:
        ev = raw if isinstance(raw, VerdictEvent) else VerdictEvent.from_buffer_copy(raw[: ctypes.sizeof(VerdictEvent)])
        try:
            reason: Reason | int = Reason(ev.reason)
        except ValueError:
            reason = ev.reason
        return cls(
            timestamp_ns=ev.timestamp_ns,
            allowed=ev.type in (EVENT_ALLOW, EVENT_AUDIT),
            reason=reason,
            direction="egress" if ev.direction == DIR_EGRESS else "ingress",
            endpoint_id=ev.endpoint_id,
            ifindex=ev.ifindex,
            peer_identity=ev.peer_identity,
            rule_id=ev.rule_id,
            proto=ev.proto,
            src=addr_from_bytes(ev.family, ev.saddr),
            dst=addr_from_bytes(ev.family, ev.daddr),
            sport=socket.ntohs(ev.sport),
            dport=socket.ntohs(ev.dport),
            tcp_flags=ev.tcp_flags,
            audit=ev.type == EVENT_AUDIT,
        )


class EventReader:
    """Consumes the `events` ring buffer: `source` is its map fd (the
    caller's), or a bcc BPF object that holds it (programs loaded in this
    process, as the datapath tests do)."""

    def __init__(self, source: int | Any, callback) -> None:
        fd = source if isinstance(source, int) else source[b"events"].map_fd

        def _cb(data: bytes) -> None:
            callback(Verdict.decode(data))

        self._ring = RingBuffer(fd, _cb)

    def poll(self, timeout_ms: int = 100) -> None:
        self._ring.poll(timeout_ms)

    def drain(self) -> None:
        self._ring.consume()

    def close(self) -> None:
        self._ring.close()
