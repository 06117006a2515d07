"""Packet-level cases for the holes the fault suite found on the wire
(tests/faults/test_packet_fuzz.py), so that a regression fails here,
without a lab: frames behind more VLAN tags than the parser walks and
other non-IP frames (parse.h), ICMPv6 dressed as link control
(enforce.h, ipv6_link_control), and IPv6 later fragments behind an
extension header (fragments.h).

Each table row is one frame through one hook, with the verdict, the
counter that must move (endpoint, direction, reason) and, for drops, the
event's reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from enforcer.datapath.reasons import Reason

from . import frames
from .harness import DIR_EGRESS, DIR_INGRESS, PEERS, POD_A, POD_B, TC_ACT_SHOT, TC_ACT_UNSPEC

UDP_, ICMP6 = 17, 58
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


# --- 2. ICMPv6 link control (enforce.h, ipv6_link_control) ------------------------

A6, B6, O6 = POD_A["v6"], POD_B["v6"], OTHER[1]
NODE6 = PEERS["host"][1]
LL_A, LL_NODE, LL_C = "fe80::a", "fe80::1", "fe80::c"
SOLICITED_A, SOLICITED_B = "ff02::1:ff00:1", "ff02::1:ff00:2"
ND = frames.link_control
OK = R.ALLOW_NEIGHBOR_DISCOVERY
A_ID = POD_A["id"]

EGRESS_ND = [
    # link-scoped, from the pod's own addresses
    ("NS link-local to solicited-node", ND("ns", LL_A, SOLICITED_B, target=B6), PASS, OK, 0),
    ("NS own address to solicited-node", ND("ns", A6, "ff02::1:ff00:1", target=LL_NODE), PASS, OK, 0),
    ("NS own address to the gateway's link-local (NUD)", ND("ns", A6, LL_NODE, target=LL_NODE), PASS, OK, 0),
    ("DAD NS from ::", ND("ns", "::", SOLICITED_A, target=A6), PASS, OK, 0),
    ("RS link-local to all-routers", ND("rs", LL_A, "ff02::2"), PASS, OK, 0),
    ("RS from :: to all-routers", ND("rs", "::", "ff02::2"), PASS, OK, 0),
    ("NA own address to the node's link-local", ND("na", A6, LL_NODE, target=A6), PASS, OK, 0),
    ("NA link-local to all-nodes", ND("na", LL_A, "ff02::1", target=LL_A), PASS, OK, 0),
    # pod to pod on a bridge: unicast to another local pod's address
    ("NA own address to local pod B", ND("na", A6, B6, target=A6), PASS, OK, 0),
    ("NS own address to local pod B (NUD)", ND("ns", A6, B6, target=B6), PASS, OK, 0),
    ("NS link-local to local pod B (Linux's NUD probe)", ND("ns", LL_A, B6, target=B6), PASS, OK, 0),
    ("NA link-local to local pod B", ND("na", LL_A, B6, target=LL_A), PASS, OK, 0),
    ("MLDv2 report to ff02::16", ND("mld2-report", LL_A, "ff02::16"), PASS, OK, 0),
    ("MLDv1 report to a site-scoped group", ND("mld-report", LL_A, "ff05::1:3"), PASS, OK, 0),
    # not link-scoped: judged as any packet from A (A allows nothing)
    ("NS to a remote pod", ND("ns", A6, O6, target=O6), DROP, R.DROP_POLICY, A_ID),
    ("RS to a remote pod", ND("rs", A6, O6), DROP, R.DROP_POLICY, A_ID),
    ("RS to local pod B", ND("rs", A6, B6), DROP, R.DROP_POLICY, A_ID),
    ("MLDv2 report from the pod's global address", ND("mld2-report", A6, "ff02::16"), DROP, R.DROP_POLICY, A_ID),
    # spoofed: another pod's address, a link-local or :: source off the link
    ("NS claiming B's address", ND("ns", B6, SOLICITED_A, target=A6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("NS claiming B's address to a pod", ND("ns", B6, O6, target=O6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("NA claiming B's address", ND("na", B6, "ff02::1", target=B6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("NS link-local to a remote address", ND("ns", LL_A, O6, target=O6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("RS link-local to local pod B", ND("rs", LL_A, B6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("NS from :: to a global address", ND("ns", "::", B6, target=B6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("NA from ::", ND("na", "::", "ff02::1", target=A6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("NA advertising B's address", ND("na", A6, "ff02::1", target=B6), DROP, R.DROP_SPOOFED_SOURCE, A_ID),
    ("NA advertising B's address from link-local", ND("na", LL_A, "ff02::1", target=B6), DROP,
     R.DROP_SPOOFED_SOURCE, 0),
    ("MLD query to a pod's address", ND("mld-query", "fe80::7", B6), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("MLDv2 report with hop limit 2", ND("mld2-report", LL_A, "ff02::16", hlim=2), DROP, R.DROP_SPOOFED_SOURCE, 0),
    # a pod is a host: its router advertisements and redirects are no link control
    ("RA to all-nodes", ND("ra", LL_A, "ff02::1"), DROP, R.DROP_SPOOFED_SOURCE, 0),
    ("Redirect to the node", ND("redirect", LL_A, LL_NODE), DROP, R.DROP_SPOOFED_SOURCE, 0),
    # ND that a router could have forwarded is no ND
    ("NS with hop limit 64", ND("ns", LL_A, SOLICITED_B, hlim=64), DROP, R.DROP_MALFORMED, 0),
    ("NS with hop limit 254 to B", ND("ns", A6, B6, hlim=254, target=B6), DROP, R.DROP_MALFORMED, A_ID),
]

INGRESS_ND = [
    # from the node (skb->ingress_ifindex 0)
    ("node's NS to A's solicited-node", ND("ns", LL_NODE, SOLICITED_A, target=A6), PASS, OK, 0, 0),
    ("node's NUD probe to A's address", ND("ns", LL_NODE, A6, target=A6), PASS, OK, 0, 0),
    ("gateway's NA to A's address", ND("na", LL_NODE, A6, target=LL_NODE), PASS, OK, 0, 0),
    ("bridge gateway's NA from a global address", ND("na", NODE6, A6, target=NODE6), PASS, OK, 0, 0),
    ("node's RA", ND("ra", LL_NODE, "ff02::1"), PASS, OK, 0, 0),
    ("neighbour's DAD NS", ND("ns", "::", SOLICITED_A, target=A6), PASS, OK, 0, 0),
    ("MLD general query", ND("mld-query", LL_NODE, "ff02::1"), PASS, OK, 0, 0),
    # from pod B over a bridge: it comes in through B's interface
    ("B's NS to A's solicited-node", ND("ns", B6, SOLICITED_A, target=A6), PASS, OK, 0, B_IFINDEX),
    ("B's NA to A", ND("na", B6, A6, target=B6), PASS, OK, 0, B_IFINDEX),
    # c claiming B's address: not from B's interface
    ("c's NS claiming B's address", ND("ns", B6, SOLICITED_A, target=A6), DROP, R.DROP_SPOOFED_SOURCE, 0,
     C_IFINDEX),
    ("c's NS claiming B's address, unicast", ND("ns", B6, A6, target=A6), DROP, R.DROP_SPOOFED_SOURCE, A_ID,
     C_IFINDEX),
    ("c's NA advertising B's address", ND("na", LL_C, "ff02::1", target=B6), DROP, R.DROP_SPOOFED_SOURCE, 0,
     C_IFINDEX),
    # routed on by the node: hop limit 254
    ("NS routed to A", ND("ns", O6, A6, hlim=254, target=A6), DROP, R.DROP_MALFORMED, A_ID, 9),
    ("RS routed to A", ND("rs", O6, A6, hlim=254), DROP, R.DROP_MALFORMED, A_ID, 9),
    # not for this pod, or from :: off the link: judged as any packet
    ("NS to B's address through A's interface", ND("ns", LL_NODE, B6, target=B6), DROP,
     R.DROP_UNKNOWN_ENDPOINT, 0, 0),
    ("NS from :: to A's address", ND("ns", "::", A6, target=A6), DROP, R.DROP_POLICY, A_ID, 0),
]

ND_ROWS = ([Row(f"egress {n}", "egress", f, p, r, ep) for n, f, p, r, ep in EGRESS_ND]
           + [Row(f"ingress {n}", "ingress", f, p, r, ep, iif) for n, f, p, r, ep, iif in INGRESS_ND])


@pytest.mark.parametrize("row", ND_ROWS, ids=[r.name for r in ND_ROWS])
def test_ipv6_link_control(dp, row):
    world(dp)
    check(dp, row)


def test_fragmented_nd_is_no_link_control(dp):
    """RFC 6980: ND is never fragmented; a fragment is judged as any packet
    (here from a link-local source: spoofed)."""
    world(dp)
    ns = frames.link_control("ns", LL_A, SOLICITED_B, target=B6)
    first = frames.ipv6_fragments(LL_A, SOLICITED_B, ns[14 + 40:], [(0, 16, True)], nh=ICMP6)[0]
    raw = bytearray(first)
    raw[14 + 7] = 255  # hop limit
    check(dp, Row("fragmented NS", "egress", bytes(raw), DROP, R.DROP_SPOOFED_SOURCE))


# --- 3. IPv6 later fragments behind extension headers (fragments.h) ------------------

def _udp_with_dstopt(sport: int, dport: int) -> bytes:
    """What follows the fragment header: a destination options header (RFC
    8200 puts one meant for the final destination only there), then UDP."""
    return bytes(IPv6ExtHdrDestOpt(nh=UDP_) / UDP(sport=sport, dport=dport) / Raw(b"p" * 48))


def _frags(dport: int, ident: int, src: str = O6, dst: str = A6, before: list | None = None) -> list[bytes]:
    data = _udp_with_dstopt(next(_ports), dport)
    return frames.ipv6_fragments(src, dst, data, [(0, 24, True), (24, 48, True), (48, len(data), False)],
                                 nh=60, ident=ident, before=before)


def _allow_udp_53(dp) -> None:
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, OTHER[2], UDP_, 53)


@pytest.mark.parametrize("before", [[], [IPv6ExtHdrHopByHop()]], ids=["dstopt", "hbh-frag-dstopt"])
def test_later_fragments_behind_an_extension_header_follow_the_first(dp, before):
    """The later fragments take the first's protocol (UDP, not 60) and ports:
    an allowed datagram arrives whole, a denied one not at all."""
    _allow_udp_53(dp)
    for dport, ident, passed in ((53, 0x1001, True), (54, 0x1002, False)):
        first, *later = [dp.ingress(f) for f in _frags(dport, ident, before=before)]
        reason = R.ALLOW_POLICY if passed else R.DROP_POLICY
        assert first.reasons == {(A_ID, DIR_INGRESS, reason): 1}, first.reasons
        for out in later:
            reason = R.ALLOW_ESTABLISHED if passed else R.DROP_POLICY
            assert out.passed == passed and out.reasons == {(A_ID, DIR_INGRESS, reason): 1}, out.reasons
            if not passed:
                (ev,) = out.events
                assert (ev.proto, ev.dport) == (UDP_, 54)


def test_later_fragment_does_not_borrow_another_datagrams_record(dp):
    """A record is the datagram's (source, destination, id): a later
    fragment of another id, or of the same id from another source, finds
    none; of the same datagram, whatever its fragment header's next header
    says, it gets the first's (Linux reassembles them together)."""
    _allow_udp_53(dp)
    allowed = _frags(53, 0x2001)
    denied = _frags(54, 0x2002)
    assert dp.ingress(allowed[0]).passed
    assert not dp.ingress(denied[0]).passed
    out = dp.ingress(denied[1])
    assert out.reasons == {(A_ID, DIR_INGRESS, R.DROP_POLICY): 1} and out.events[0].dport == 54
    # the allowed datagram's id from another source: no record
    stranger = _frags(53, 0x2001, src=PEERS["cidr"][1])[1]
    assert dp.ingress(stranger).reasons == {(A_ID, DIR_INGRESS, R.DROP_FRAGMENT_UNKNOWN): 1}
    # the allowed datagram's own later fragment, claiming TCP in its fragment header
    claims_tcp = bytearray(allowed[1])
    claims_tcp[14 + 40] = 6
    out = dp.ingress(bytes(claims_tcp))
    assert out.reasons == {(A_ID, DIR_INGRESS, R.ALLOW_ESTABLISHED): 1}


@pytest.mark.parametrize("nh", [ICMP6, 60, UDP_], ids=["icmpv6", "dstopt", "udp"])
def test_ipv6_later_fragment_without_its_first_is_dropped(dp, nh):
    """Its upper-layer protocol is unknown without the first fragment,
    whatever the fragment header's next header claims."""
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, OTHER[2])  # every protocol, every port
    later = frames.ipv6_fragments(O6, A6, b"q" * 64, [(16, 64, False)], nh=nh, ident=0x3001)[0]
    assert dp.ingress(later).reasons == {(A_ID, DIR_INGRESS, R.DROP_FRAGMENT_UNKNOWN): 1}


def test_fragmented_echo_behind_a_destination_options_header(dp):
    """ICMPv6 echo: the later fragments get the echo id and protocol 58."""
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, OTHER[2])
    data = bytes(IPv6ExtHdrDestOpt(nh=ICMP6) / ICMPv6EchoRequest(id=77, cksum=0) / Raw(b"e" * 48))
    first, later = frames.ipv6_fragments(O6, A6, data, [(0, 24, True), (24, len(data), False)], nh=60, ident=0x4001)
    assert dp.ingress(first).reasons == {(A_ID, DIR_INGRESS, R.ALLOW_POLICY): 1}
    out = dp.ingress(later)
    assert out.reasons == {(A_ID, DIR_INGRESS, R.ALLOW_ESTABLISHED): 1}
