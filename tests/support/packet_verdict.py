"""Verdicts of the programs attached in this network namespace on crafted
frames, through BPF_PROG_TEST_RUN: for protocols the lab cannot put on the
wire (SCTP: the kernel here has no SCTP sockets).

A flow src -> dst is judged as the wire would: the sender's from_pod program
on its host-side interface, then, if that passed, the receiver's to_pod
program on its own. Run inside the node namespace (the skb's ifindex must
name an interface there):

    nsenter --net=/run/netns/<node> python tests/support/packet_verdict.py < flows.json
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import sys
from typing import Any

from enforcer.datapath import bpfsys
from enforcer.datapath.attach import TcAttacher

TC_ACT_SHOT = 2
ETH = bytes.fromhex("020000000002" "020000000001")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def sctp_init_frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    """Ethernet + IP + SCTP common header + INIT chunk."""
    init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x12345678, 65535, 1, 1, 1)
    sctp = struct.pack("!HHII", sport, dport, 0, 0) + init
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(sctp), 1, 0, 64, 132, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        return ETH + b"\x08\x00" + hdr + sctp
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(sctp), 132, 64, s.packed, d.packed)
    return ETH + b"\x86\xdd" + hdr + sctp


def judge(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    attacher = TcAttacher()
    progs: dict[tuple[int, str], int] = {}
    for a in attacher.attachments():
        progs[(a.ifindex, a.hook)] = a.prog_id
    fds: dict[int, int] = {}

    def fd(prog_id: int) -> int:
        if prog_id not in fds:
            fds[prog_id] = bpfsys.prog_fd_by_id(prog_id)
        return fds[prog_id]

    out = []
    try:
        for f in flows:
            frame = sctp_init_frame(f["src"], f["dst"], f["sport"], f["dport"])
            result: dict[str, Any] = {"egress": None, "ingress": None}
            src_if, dst_if = attacher.ifindex(f["src_if"]), attacher.ifindex(f["dst_if"])
            if (src_if, "ingress") in progs:
                result["egress"] = bpfsys.prog_test_run(fd(progs[(src_if, "ingress")]), frame,
                                                        ifindex=src_if).retval != TC_ACT_SHOT
            if result["egress"] is not False and (dst_if, "egress") in progs:
                result["ingress"] = bpfsys.prog_test_run(fd(progs[(dst_if, "egress")]), frame,
                                                         ifindex=dst_if).retval != TC_ACT_SHOT
            result["allowed"] = result["egress"] is not False and result["ingress"] is not False
            out.append(result)
    finally:
        for n in fds.values():
            os.close(n)
    return out


def main() -> int:
    json.dump(judge(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
