"""Frames on the wire of a lab pod: sent raw (AF_PACKET) on its eth0, and
captured raw on another pod's eth0, each socket made inside the pod's
network namespace (enforcer.lab.netns.entered).

What a sender writes is exactly what leaves the pod: no stack of the pod
builds, checks or fixes it. What a capture reads is every frame delivered
to the pod's interface, before its IP stack looks at it (or throws it away).

Ordering: a frame sent on a veth is queued on the sending CPU's backlog
and everything after it (the node's hooks, routing or bridging, the
delivery to the other veth) runs in that CPU's softirq in order. So when
the frames of a case and then a control frame are all sent from one
thread pinned to one CPU, the control frame reaching the capture means
every frame sent before it has met its fate: a case needs no waiting
beyond that (pinned()).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

from enforcer.lab.netns import entered, ip_json

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4       # sll_pkttype of a frame the interface sent
PACKET_STATISTICS = 6     # getsockopt(SOL_PACKET): struct tpacket_stats
SOL_PACKET = 263


def link_mac(netns: str, ifname: str) -> str:
    return str(ip_json("link", "show", "dev", ifname, netns=netns)[0]["address"])


@contextmanager
def pinned() -> Iterator[None]:
    """Run the body with the calling thread on one CPU (see the module's
    note on ordering)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Sender:
    """A raw socket on a pod's interface: send() puts the frame on the wire
    as given."""

    def __init__(self, netns: str, ifname: str = "eth0") -> None:
        with entered(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
        try:
            self.sock.bind((ifname, 0))
        except OSError:
            self.sock.close()
            raise

    def send(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            sent = self.sock.send(frame)
            assert sent == len(frame), f"sent {sent} of {len(frame)} bytes"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Capture:
    """Every frame delivered to a pod's interface from the moment it is
    made (frames the interface sends are left out)."""

    def __init__(self, netns: str, ifname: str = "eth0") -> None:
        with entered(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind((ifname, ETH_P_ALL))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.frames: list[bytes] = []

    def _read(self, timeout: float) -> bool:
        """Read what is queued, waiting up to timeout for the first frame.
        False if nothing came."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return True
            if addr[2] != PACKET_OUTGOING:
                self.frames.append(data)

    def reset(self) -> None:
        """Forget what was captured so far (and read what is queued)."""
        self._read(0)
        self.frames.clear()

    def until_seen(self, markers: Iterable[bytes], timeout: float = 10.0) -> list[bytes]:
        """Read until a frame carrying each marker has arrived (AssertionError
        after timeout, a guard against a hang); returns every frame read."""
        wanted = set(markers)
        deadline = time.monotonic() + timeout
        while wanted:
            wanted = {m for m in wanted if not any(m in f for f in self.frames)}
            if not wanted:
                break
            if not self._read(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise AssertionError(f"control frame(s) never captured: {sorted(m.hex() for m in wanted)}")
        self._read(0)
        return list(self.frames)

    def dropped(self) -> int:
        """Frames the kernel could not queue to this socket (the capture
        would then be incomplete). Reading the statistics resets them."""
        _packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return int(drops)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
