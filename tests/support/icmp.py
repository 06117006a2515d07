"""ICMP echo from inside a network namespace (no ping binary needed): a raw
socket made in the namespace (enforcer.lab.netns.entered), one echo
request, and whether the matching echo reply came back in time."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import count

from enforcer.lab.netns import entered

_ICMP_ECHO, _ICMP_ECHOREPLY = 8, 0
_ICMP6_ECHO, _ICMP6_ECHOREPLY = 128, 129
_ident = os.getpid() & 0xFFFF
_seq = count(1)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo(netns: str | None, dst: str, timeout: float = 1.0) -> bool:
    """Whether dst answers one echo request sent from netns."""
    seq = next(_seq) & 0xFFFF
    v6 = ipaddress.ip_address(dst).version == 6
    with entered(netns):
        s = (socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6
             else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    with s:
        payload = b"cnp-conformance"
        if v6:  # the kernel fills in the ICMPv6 checksum
            packet = struct.pack("!BBHHH", _ICMP6_ECHO, 0, 0, _ident, seq) + payload
        else:
            header = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, _ident, seq)
            packet = struct.pack("!BBHHH", _ICMP_ECHO, 0, _csum(header + payload), _ident, seq) + payload
        s.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                return False
            data, addr = s.recvfrom(4096)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            kind, _, _, ident, rseq = struct.unpack("!BBHHH", icmp[:8])
            if (kind == (_ICMP6_ECHOREPLY if v6 else _ICMP_ECHOREPLY) and ident == _ident and rseq == seq
                    and ipaddress.ip_address(addr[0].split("%")[0]) == ipaddress.ip_address(dst)):
                return True
        return False


def echo_many(probes: Sequence[tuple[str | None, str, float]]) -> list[bool]:
    """(netns, dst, timeout) each, concurrently."""
    if not probes:
        return []
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        return list(pool.map(lambda p: echo(*p), probes))
