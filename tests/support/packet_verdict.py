"""Verdicts of the programs attached in this network namespace on crafted
frames, through BPF_PROG_TEST_RUN: for protocols the lab cannot put on the
wire (SCTP: the kernel here has no SCTP sockets).

A flow src -> dst is judged as the wire would: the sender's from_pod program
on its host-side interface, then, if that passed, the receiver's to_pod
program on its own. Run inside the node namespace (the skb's ifindex must
name an interface there):

    nsenter --net=/run/netns/<node> python tests/support/packet_verdict.py < flows.json

With --serve it stays up and judges one JSON list of flows per input line,
answering one JSON line each (VerdictProcess: a lab's SCTP verdicts without
a Python start per question). Every question reads the attached programs
afresh: the daemon may have replaced them since the last one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import struct
import subprocess
import sys
from pathlib import Path
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


def serve() -> int:
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(judge(json.loads(line))) + "\n")
            sys.stdout.flush()
    return 0


def main() -> int:
    if sys.argv[1:] == ["--serve"]:
        return serve()
    json.dump(judge(json.load(sys.stdin)), sys.stdout)
    return 0


class VerdictProcess:
    """packet_verdict.py --serve in a node namespace, started at the first
    question and kept until close(): judge() costs a few milliseconds, not
    a Python start and imports."""

    def __init__(self, node_netns_path: str, timeout: float = 30.0) -> None:
        self.netns_path = node_netns_path
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None

    def judge(self, flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.netns_path}", sys.executable, str(Path(__file__).resolve()), "--serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(flows) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            code = self.proc.poll()
            self.close()
            raise RuntimeError(f"packet_verdict --serve gave no answer (exit code {code})")
        verdicts: list[dict[str, Any]] = json.loads(line)
        return verdicts

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    raise SystemExit(main())
