"""Packet-level cases for the holes the fault suite found on the wire
(tests/faults/test_packet_fuzz.py), so that a regression fails here,
without a lab: frames behind more VLAN tags than the parser walks and
other non-IP frames (parse.h).

Each table row is one frame through one hook, with the verdict, the
counter that must move (endpoint, direction, reason) and, for drops, the
event's reason.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from enforcer.datapath.reasons import Reason

from . import frames
from .harness import DIR_EGRESS, DIR_INGRESS, PEERS, POD_A, POD_B, TC_ACT_SHOT, TC_ACT_UNSPEC

OTHER = PEERS["other_pod"]  # (v4, v6, identity)
B_IFINDEX = 5    # pod B sits behind another interface of this node
C_IFINDEX = 7    # and a third pod, c, behind yet another
_ports = itertools.count(30000)

R = Reason
PASS, DROP = True, False


@dataclass(frozen=True)
class Row:
    name: str
    hook: str          # "egress": from_pod on A's interface; "ingress": to_pod on A's interface
    frame: bytes
    passed: bool
    reason: Reason
    ep: int = 0        # the endpoint the counter moves for
    ingress_ifindex: int = 0


def run(dp, row: Row):
    if row.hook == "egress":
        return dp.egress(row.frame), DIR_EGRESS
    return dp.ingress(row.frame, ingress_ifindex=row.ingress_ifindex), DIR_INGRESS


def check(dp, row: Row) -> None:
    out, direction = run(dp, row)
    assert out.retval == (TC_ACT_UNSPEC if row.passed else TC_ACT_SHOT), (row.name, out)
    assert out.reasons == {(row.ep, direction, row.reason): 1}, (row.name, out.reasons)
    if not row.passed:
        assert [e.reason for e in out.events] == [row.reason], (row.name, out.events)


def world(dp) -> None:
    """A isolated both ways with nothing allowed, behind the interface the
    test run uses (1); B another local pod behind interface 5."""
    dp.set_pod(POD_A, ingress=True, egress=True)
    dp.set_pod(POD_B, ifindex=B_IFINDEX)


# --- 1. VLAN tags and other non-IP frames (parse.h) ----------------------------

A4, B4, O4 = POD_A["v4"], POD_B["v4"], OTHER[0]
Q, AD, OLDQ = 0x8100, 0x88A8, 0x9100


def _udp_out(fam: int = 4) -> bytes:
    src, dst = (A4, O4) if fam == 4 else (POD_A["v6"], OTHER[1])
    return frames.udp(src, dst, next(_ports), 80)


def _udp_in(fam: int = 4) -> bytes:
    src, dst = (O4, A4) if fam == 4 else (OTHER[1], POD_A["v6"])
    return frames.udp(src, dst, next(_ports), 80)


def _mpls_ipv4() -> bytes:
    """One MPLS label (bottom of stack) over the IPv4 packet of a UDP frame."""
    return bytes.fromhex("00010140") + _udp_out()[14:]


def _pppoe_session_ipv4() -> bytes:
    """PPPoE session header, PPP protocol 0x0021 (IPv4), the IPv4 packet."""
    ip4 = _udp_out()[14:]
    return bytes([0x11, 0x00, 0x00, 0x01]) + (len(ip4) + 2).to_bytes(2, "big") + b"\x00\x21" + ip4


def _arp_ptype(frame: bytes, ptype: int) -> bytes:
    return frame[:16] + ptype.to_bytes(2, "big") + frame[18:]


L2_ROWS = [
    # tags: walked up to two in the frame (a real interface's kernel holds one more)
    *[Row(f"{hook} {name}", hook, frames.tagged(tags, (_udp_out if hook == "egress" else _udp_in)(fam)),
          DROP, R.DROP_POLICY, POD_A["id"])
      for hook in ("egress", "ingress")
      for name, tags, fam in [("802.1Q, judged", [Q], 4), ("802.1ad+802.1Q, judged", [AD, Q], 4),
                              ("802.1Q v6, judged", [Q], 6), ("0x9100+802.1Q, judged", [OLDQ, Q], 4),
                              ("0x9100, judged", [OLDQ], 6)]],
    *[Row(f"{hook} {name}", hook, frames.tagged(tags, (_udp_out if hook == "egress" else _udp_in)(fam)),
          DROP, R.DROP_MALFORMED)
      for hook in ("egress", "ingress")
      for name, tags, fam in [("3 tags (4 on the wire)", [Q, Q, Q], 4), ("3 tags v6", [Q, Q, Q], 6),
                              ("802.1ad+802.1Q+802.1Q", [AD, Q, Q], 4), ("3 tags, last 0x9100", [Q, Q, OLDQ], 4),
                              ("4 tags", [AD, Q, Q, Q], 6)]],
    # ARP passes, bare or tagged; what the pod sends names its own address
    Row("egress ARP from the pod's address", "egress", frames.arp(A4, B4), PASS, R.ALLOW_NON_IP),
    Row("egress ARP probe (0.0.0.0)", "egress", frames.arp("0.0.0.0", A4), PASS, R.ALLOW_NON_IP),
    Row("egress ARP reply from the pod", "egress", frames.arp(A4, B4, op=2), PASS, R.ALLOW_NON_IP),
    Row("egress ARP behind two tags", "egress", frames.tagged([AD, Q], frames.arp(A4, B4)), PASS, R.ALLOW_NON_IP),
    Row("egress ARP claiming B's address", "egress", frames.arp(B4, A4, op=2), DROP, R.DROP_SPOOFED_SOURCE),
    Row("egress ARP claiming another address", "egress", frames.arp("10.0.0.99", B4), DROP, R.DROP_SPOOFED_SOURCE),
    Row("egress ARP behind three tags", "egress", frames.tagged([Q, Q, Q], frames.arp(A4, B4)), DROP,
        R.DROP_MALFORMED),
    Row("egress ARP, not IPv4", "egress", _arp_ptype(frames.arp(A4, B4), 0x86DD), DROP, R.DROP_MALFORMED),
    Row("ingress ARP from B", "ingress", frames.arp(B4, A4), PASS, R.ALLOW_NON_IP),
    Row("ingress ARP from the node", "ingress", frames.arp("169.254.1.1", A4, op=2), PASS, R.ALLOW_NON_IP),
    # every other ethertype is dropped both ways
    *[Row(f"{hook} {name}", hook, frames.ethertype(etype, payload), DROP, R.DROP_NON_IP)
      for hook in ("egress", "ingress")
      for name, etype, payload in [
          ("MPLS unicast over IPv4", 0x8847, _mpls_ipv4()), ("MPLS multicast", 0x8848, _mpls_ipv4()),
          ("PPPoE session over IPv4", 0x8864, _pppoe_session_ipv4()),
          ("PPPoE discovery", 0x8863, bytes.fromhex("1109000000000101000000") + bytes(35)),
          ("802.3 + LLC/SNAP over IPv4", 60, bytes.fromhex("aaaa03000000" "0800") + _udp_out()[14:60]),
          ("802.3 STP BPDU", 39, bytes.fromhex("424203") + bytes(43)), ("LLDP", 0x88CC, bytes(46)),
          ("local experimental 0x88b5", 0x88B5, b"exfiltrated" * 4), ("RARP", 0x8035, bytes(46))]],
]


@pytest.mark.parametrize("row", L2_ROWS, ids=[r.name for r in L2_ROWS])
def test_non_ip_and_vlan_frames(dp, row):
    world(dp)
    check(dp, row)
