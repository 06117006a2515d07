"""Verdict events from the ring buffer, decoded."""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass

from .layout import DIR_EGRESS, EVENT_ALLOW, IPAddress, VerdictEvent, addr_from_bytes
from .reasons import Reason


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

    @classmethod
    def decode(cls, raw: bytes | VerdictEvent) -> Verdict:
        ev = raw if isinstance(raw, VerdictEvent) else VerdictEvent.from_buffer_copy(raw[: ctypes.sizeof(VerdictEvent)])
        try:
            reason: Reason | int = Reason(ev.reason)
        except ValueError:
            reason = ev.reason
        return cls(
            timestamp_ns=ev.timestamp_ns,
            allowed=ev.type == EVENT_ALLOW,
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
        )


class EventReader:
    """Consumes the ring buffer of the programs this process loaded."""

    def __init__(self, bpf, callback) -> None:
        self._bpf = bpf

        def _cb(_ctx, data, size):
            callback(Verdict.decode(ctypes.string_at(data, size)))
            return 0

        self._cb = _cb
        bpf[b"events"].open_ring_buffer(_cb)

    def poll(self, timeout_ms: int = 100) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        self._bpf.ring_buffer_consume()
