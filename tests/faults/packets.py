"""Crafted frames a pod sends to a pod that policy does not let it reach:
each case tries one way around the enforcer. Every frame that must not
arrive carries the case's marker somewhere that survives forwarding (the
payload, or for frames without room for one an IPv4 option or an IPv6
destination option of the experimental type 0x1e, which routers leave
alone), so a capture at the target recognises it; a frame policy does let
through (a case's legitimate first half) carries no marker.

tests/datapath/frames.py builds frames for BPF_PROG_TEST_RUN with fixed
MACs, ports and ids and no payload; these need the lab's MACs, a marker in
every frame and fresh ports and ids per case, so they are built here with
scapy directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, IPOption_LSRR, IPOption_RR, IPOption_SSRR
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6EchoRequest,
    ICMPv6MLQuery,
    ICMPv6ND_NS,
    ICMPv6ND_RS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

# The target admits the ally on every port and protocol, the attacker on
# UDP PINHOLE only (ingress or, for an egress-isolated attacker, its own
# egress): DENIED_PORT is open to the ally, never to the attacker.
DENIED_PORT = 80
PINHOLE = 81
EXP_OPTION = 0x1E  # RFC 4727 experimental option number, as IPv4 (0x9e: copied) and IPv6 (skip if unknown)


@dataclass(frozen=True)
class Ends:
    """Who is who for one case: the attacker's addresses and MACs, the
    target's, the ally's and the node's, and a fresh port and id."""

    src_mac: str
    gw_mac: str     # next hop towards the target: routed, the attacker's host-side veth; bridged, the target
    node_mac: str   # next hop towards the node's own addresses
    src: tuple[str, str]    # (IPv4, IPv6)
    dst: tuple[str, str]
    ally: tuple[str, str]
    node: tuple[str, str]
    sport: int
    ident: int      # IPv4 identification / IPv6 fragment id

    def eth(self, to_node: bool = False) -> Ether:
        return Ether(src=self.src_mac, dst=self.node_mac if to_node else self.gw_mac)

    def ip4(self, src: str | None = None, dst: str | None = None, **kw: object) -> IP:
        return IP(src=src or self.src[0], dst=dst or self.dst[0], id=self.ident & 0xFFFF, **kw)

    def ip6(self, src: str | None = None, dst: str | None = None, **kw: object) -> IPv6:
        return IPv6(src=src or self.src[1], dst=dst or self.dst[1], **kw)

    def ip(self, family: int, **kw: object) -> Packet:
        return self.ip4(**kw) if family == 4 else self.ip6(**kw)


Builder = Callable[[Ends, bytes], list[bytes]]


def body(m: bytes) -> bytes:
    return m * 4


def opt4(m: bytes) -> IPOption:
    return IPOption(bytes([0x80 | EXP_OPTION, 2 + len(m)]) + m)


def opt6(m: bytes) -> IPv6ExtHdrDestOpt:
    return IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=EXP_OPTION, optdata=m)])


def frags4(e: Ends, proto: int, data: bytes, pieces: list[tuple[int, int, bool]], **kw: object) -> list[bytes]:
    """IPv4 fragments of `data` (the L4 header and on): (start, end, more)
    byte ranges, starts multiples of 8."""
    return [bytes(e.eth() / e.ip4(proto=proto, flags="MF" if more else 0, frag=start // 8, **kw)
                  / Raw(data[start:end])) for start, end, more in pieces]


def frags6(e: Ends, nh: int, data: bytes, pieces: list[tuple[int, int, bool]]) -> list[bytes]:
    """IPv6 fragments of `data` (what follows the fragment header)."""
    return [bytes(e.eth() / e.ip6() / IPv6ExtHdrFragment(nh=nh, offset=start // 8, m=int(more), id=e.ident)
                  / Raw(data[start:end])) for start, end, more in pieces]


# -- IPv4 fragments --------------------------------------------------------------

def v4_first_fragment_without_l4(e: Ends, m: bytes) -> list[bytes]:
    """The first fragment holds only 8 bytes of TCP (no flags, no data
    offset); the rest of the header follows in the second."""
    seg = bytes(TCP(sport=e.sport, dport=DENIED_PORT, flags="S") / Raw(body(m)))
    return [bytes(e.eth() / e.ip4(proto=6, flags="MF", options=[opt4(m)]) / Raw(seg[:8])),
            *frags4(e, 6, seg, [(8, len(seg), False)])]


def v4_first_fragment_empty(e: Ends, m: bytes) -> list[bytes]:
    """A first fragment with no L4 byte at all, then the datagram from
    offset 8 on."""
    dgram = bytes(UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))
    return [bytes(e.eth() / e.ip4(proto=17, flags="MF", options=[opt4(m)])),
            *frags4(e, 17, dgram, [(8, len(dgram), False)])]


def v4_fragments_to_denied_port(e: Ends, m: bytes) -> list[bytes]:
    dgram = bytes(UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))
    return frags4(e, 17, dgram, [(0, 16, True), (16, 32, True), (32, len(dgram), False)])


def v4_later_fragments_alone(e: Ends, m: bytes) -> list[bytes]:
    """Non-first fragments whose first was never sent."""
    dgram = bytes(UDP(sport=e.sport, dport=PINHOLE) / Raw(body(m)))
    return frags4(e, 17, dgram, [(8, 24, True), (24, len(dgram), False)])


def v4_overlapping_fragments(e: Ends, m: bytes) -> list[bytes]:
    """Later fragments that overlap each other and the first."""
    dgram = bytes(UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m) * 2))
    return frags4(e, 17, dgram, [(0, 24, True), (8, 40, True), (16, 48, True), (40, len(dgram), False)])


def v4_second_first_fragment(e: Ends, m: bytes) -> list[bytes]:
    """A first fragment to the pinhole (allowed, unmarked), then another
    first fragment of the same datagram to a denied port, then its rest:
    the rest belongs to the datagram as last described."""
    allowed = bytes(UDP(sport=e.sport, dport=PINHOLE) / Raw(b"." * 56))
    denied = bytes(UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m) * 2))
    return [*frags4(e, 17, allowed, [(0, 16, True)]), *frags4(e, 17, denied, [(0, 16, True), (16, len(denied), False)])]


def v4_fragment_of_pinhole_other_protocol(e: Ends, m: bytes) -> list[bytes]:
    """A first fragment to the pinhole (allowed, unmarked), then a later
    fragment with its id claiming to be TCP."""
    allowed = bytes(UDP(sport=e.sport, dport=PINHOLE) / Raw(b"." * 56))
    return [*frags4(e, 17, allowed, [(0, 16, True)]), *frags4(e, 6, b"." * 16 + body(m), [(16, 48, False)])]


# -- IPv6 fragments and extension headers ------------------------------------------

def v6_first_fragment_without_l4(e: Ends, m: bytes) -> list[bytes]:
    """RFC 7112's forbidden case: the first fragment ends inside the
    header chain (a destination options header), TCP is in the second."""
    data = bytes(opt6(m) / TCP(sport=e.sport, dport=DENIED_PORT, flags="S") / Raw(body(m)))
    return frags6(e, 60, data, [(0, 16, True), (16, len(data), False)])


def v6_fragments_to_denied_port(e: Ends, m: bytes) -> list[bytes]:
    data = bytes(UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))
    return frags6(e, 17, data, [(0, 16, True), (16, 32, True), (32, len(data), False)])


def v6_later_fragments_alone(e: Ends, m: bytes) -> list[bytes]:
    data = bytes(UDP(sport=e.sport, dport=PINHOLE) / Raw(body(m)))
    return frags6(e, 17, data, [(8, 24, True), (24, len(data), False)])


def v6_overlapping_fragments(e: Ends, m: bytes) -> list[bytes]:
    data = bytes(UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m) * 2))
    return frags6(e, 17, data, [(0, 24, True), (8, 40, True), (40, len(data), False)])


def v6_atomic_fragment(e: Ends, m: bytes) -> list[bytes]:
    """A fragment header with offset 0 and no more fragments (RFC 6946)."""
    return [bytes(e.eth() / e.ip6() / IPv6ExtHdrFragment(nh=17, offset=0, m=0, id=e.ident)
                  / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def _ext_chain(e: Ends, m: bytes, headers: list[Packet], dport: int = DENIED_PORT) -> list[bytes]:
    pkt = e.eth() / e.ip6()
    for h in headers:
        pkt = pkt / h
    return [bytes(pkt / UDP(sport=e.sport, dport=dport) / Raw(body(m)))]


def v6_ext_chain(e: Ends, m: bytes) -> list[bytes]:
    """Hop-by-hop, routing (no segments left), destination options, a first
    fragment header, destination options again: then UDP."""
    return [bytes(e.eth() / e.ip6() / IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=EXP_OPTION, optdata=m)])
                  / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[e.ally[1]]) / opt6(m)
                  / IPv6ExtHdrFragment(nh=60, offset=0, m=1, id=e.ident) / opt6(m)
                  / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def v6_ext_chain_8(e: Ends, m: bytes) -> list[bytes]:
    """As many extension headers as the datapath walks."""
    return _ext_chain(e, m, [IPv6ExtHdrHopByHop()] + [opt6(m) for _ in range(7)])


def v6_ext_chain_9(e: Ends, m: bytes) -> list[bytes]:
    """One more than the datapath walks."""
    return _ext_chain(e, m, [IPv6ExtHdrHopByHop()] + [opt6(m) for _ in range(8)])


def v6_auth_header(e: Ends, m: bytes) -> list[bytes]:
    return _ext_chain(e, m, [AH(nh=17, payloadlen=4, spi=0x100, seq=1, icv=m[:8] + b"\0" * 4)])


def v6_routing_header_via_node(e: Ends, m: bytes) -> list[bytes]:
    """Type 0 routing header: to the node, which is asked to pass it on to
    the target (RFC 5095 forbids it; an egress attacker may reach its node)."""
    return [bytes(e.eth(to_node=True) / e.ip6(dst=e.node[1])
                  / IPv6ExtHdrRouting(type=0, segleft=1, addresses=[e.dst[1]])
                  / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


# -- IPv4 options -----------------------------------------------------------------

def v4_unknown_option(e: Ends, m: bytes) -> list[bytes]:
    return [bytes(e.eth() / e.ip4(options=[opt4(m)]) / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def v4_record_route(e: Ends, m: bytes) -> list[bytes]:
    return [bytes(e.eth() / e.ip4(options=[IPOption_RR(routers=["0.0.0.0"] * 3)])
                  / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def v4_loose_source_route_via_node(e: Ends, m: bytes) -> list[bytes]:
    """Addressed to the node (an egress attacker may reach its node), with
    the target as the next stop of a loose source route."""
    return [bytes(e.eth(to_node=True) / e.ip4(dst=e.node[0], options=[IPOption_LSRR(routers=[e.dst[0]])])
                  / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def v4_strict_source_route_via_node(e: Ends, m: bytes) -> list[bytes]:
    return [bytes(e.eth(to_node=True) / e.ip4(dst=e.node[0], options=[IPOption_SSRR(routers=[e.dst[0]])])
                  / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def v4_header_length_beyond_packet(e: Ends, m: bytes) -> list[bytes]:
    frame = bytearray(bytes(e.eth() / e.ip4() / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m))))
    frame[14] = 0x4F  # IHL 15: 60 bytes of header claimed
    return [bytes(frame)]


def v4_total_length_beyond_frame(e: Ends, m: bytes) -> list[bytes]:
    return [bytes(e.eth() / e.ip4(len=20 + 8 + len(body(m)) + 100) / UDP(sport=e.sport, dport=DENIED_PORT)
                  / Raw(body(m)))]


# -- TCP headers that lie, and flags that pretend ------------------------------------

def _tcp(e: Ends, m: bytes, family: int, **kw: object) -> bytes:
    return bytes(e.eth() / e.ip(family) / TCP(**{"sport": e.sport, "dport": DENIED_PORT, **kw}) / Raw(body(m)))


def tcp_offset_beyond_packet(family: int) -> Builder:
    return lambda e, m: [_tcp(e, m, family, flags="S", dataofs=15)]


def tcp_offset_below_minimum(family: int) -> Builder:
    return lambda e, m: [_tcp(e, m, family, flags="S", dataofs=2)]


def tcp_header_cut(family: int) -> Builder:
    """10 bytes of TCP header (no flags byte), the packet's length telling
    the truth; the marker in an option before it."""
    def build(e: Ends, m: bytes) -> list[bytes]:
        seg = bytes(TCP(sport=e.sport, dport=DENIED_PORT, flags="S"))[:10]
        if family == 4:
            return [bytes(e.eth() / e.ip4(proto=6, options=[opt4(m)]) / Raw(seg))]
        return [bytes(e.eth() / e.ip6(nh=60) / IPv6ExtHdrDestOpt(nh=6, options=[HBHOptUnknown(otype=EXP_OPTION,
                                                                                              optdata=m)])
                      / Raw(seg))]
    return build


def tcp_flags(flags: str, family: int) -> Builder:
    """`flags` to the denied port, and from it (a reply to a connection the
    target never opened)."""
    return lambda e, m: [_tcp(e, m, family, flags=flags),
                         _tcp(e, m, family, flags=flags, sport=DENIED_PORT, dport=e.sport)]


# -- UDP, ICMP --------------------------------------------------------------------------

def udp_port_allowed_elsewhere(family: int) -> Builder:
    """The port the target admits the ally on (and, for an egress-isolated
    attacker, the port its own egress allows towards the ally)."""
    return lambda e, m: [bytes(e.eth() / e.ip(family) / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)))]


def udp_length_lies(family: int) -> Builder:
    return lambda e, m: [bytes(e.eth() / e.ip(family) / UDP(sport=e.sport, dport=DENIED_PORT, len=0) / Raw(body(m))),
                         bytes(e.eth() / e.ip(family) / UDP(sport=e.sport, dport=DENIED_PORT, len=4000)
                               / Raw(body(m)))]


def icmp_echo(family: int) -> Builder:
    def build(e: Ends, m: bytes) -> list[bytes]:
        echo = ICMP(type=8, id=e.sport) if family == 4 else ICMPv6EchoRequest(id=e.sport)
        return [bytes(e.eth() / e.ip(family) / echo / Raw(body(m)))]
    return build


# -- spoofed sources ----------------------------------------------------------------------

def spoofed(source: str, family: int, proto: str = "udp") -> Builder:
    """From the ally's address (which the target admits on every port), the
    node's, the target's own, or an IPv6 link-local one."""
    def build(e: Ends, m: bytes) -> list[bytes]:
        src = {"ally": e.ally, "node": e.node, "target": e.dst, "link-local": ("169.254.7.7", "fe80::7")}[source]
        l4 = UDP(sport=e.sport, dport=DENIED_PORT) if proto == "udp" else TCP(sport=e.sport, dport=DENIED_PORT)
        return [bytes(e.eth() / e.ip(family, src=src[family == 6]) / l4 / Raw(body(m)))]
    return build


# -- VLAN tags ------------------------------------------------------------------------------

def vlan(tags: list[tuple[int, int]], family: int = 4) -> Builder:
    """A UDP datagram to the denied port behind 802.1Q/802.1ad tags:
    (TPID, VLAN id), outermost first."""
    def build(e: Ends, m: bytes) -> list[bytes]:
        inner = e.ip(family) / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m))
        head = bytes(e.eth())[:12]
        for tpid, vid in tags:
            head += tpid.to_bytes(2, "big") + vid.to_bytes(2, "big")
        return [head + (0x0800 if family == 4 else 0x86DD).to_bytes(2, "big") + bytes(inner)]
    return build


# -- encapsulation: an allowed packet (ally -> target) inside the attacker's --------------

def _inner(e: Ends, m: bytes, family: int = 4) -> Packet:
    return IP(src=e.ally[0], dst=e.dst[0]) / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m)) if family == 4 \
        else IPv6(src=e.ally[1], dst=e.dst[1]) / UDP(sport=e.sport, dport=DENIED_PORT) / Raw(body(m))


def _inner_eth(e: Ends, m: bytes) -> Packet:
    return Ether(src="02:00:00:00:00:01", dst=e.gw_mac) / _inner(e, m)


def gre(family: int, ethernet: bool = False) -> Builder:
    def build(e: Ends, m: bytes) -> list[bytes]:
        payload = GRE(proto=0x6558) / _inner_eth(e, m) if ethernet else GRE(proto=0x0800) / _inner(e, m)
        return [bytes(e.eth() / e.ip(family) / payload)]
    return build


def ip_in_ip(outer: int, inner: int, via_node: bool = False) -> Builder:
    """IPIP (4 in 4), SIT (6 in 4), 4 in 6, 6 in 6. via_node: the outer
    packet is addressed to the node, the inner one from the attacker itself."""
    def build(e: Ends, m: bytes) -> list[bytes]:
        inside = _inner(e, m, inner)
        if via_node:
            inside[IP if inner == 4 else IPv6].src = e.src[inner == 6]
            return [bytes(e.eth(to_node=True) / e.ip(outer, dst=e.node[outer == 6]) / inside)]
        return [bytes(e.eth() / e.ip(outer) / inside)]
    return build


def vxlan(family: int) -> Builder:
    return lambda e, m: [bytes(e.eth() / e.ip(family) / UDP(sport=e.sport, dport=4789)
                               / VXLAN(vni=42, flags=0x08) / _inner_eth(e, m))]


def geneve(family: int) -> Builder:
    header = bytes([0, 0, 0x65, 0x58, 0, 0, 42, 0])  # version 0, no options, Ethernet, VNI 42
    return lambda e, m: [bytes(e.eth() / e.ip(family) / UDP(sport=e.sport, dport=6081) / Raw(header)
                               / _inner_eth(e, m))]


# -- ICMPv6 that looks like link control --------------------------------------------------

def nd_typed(spoof_ally: bool = False) -> Builder:
    """A router solicitation / neighbour solicitation (hop limit 255, as
    link control must have) sent to the target's global address, carrying
    data in an option; from the attacker, or from the ally's address."""
    def build(e: Ends, m: bytes) -> list[bytes]:
        src = e.ally[1] if spoof_ally else e.src[1]
        opt = bytes([200, 2]) + m + b"\0" * 4  # an unknown ND option, 16 bytes
        return [bytes(e.eth() / e.ip6(src=src, hlim=255) / ICMPv6ND_RS() / Raw(opt)),
                bytes(e.eth() / e.ip6(src=src, hlim=255) / ICMPv6ND_NS(tgt=e.dst[1]) / Raw(opt))]
    return build


def mld_typed(e: Ends, m: bytes) -> list[bytes]:
    """An MLD query (hop limit 1, link-local source) to the target."""
    return [bytes(e.eth() / IPv6(src="fe80::7", dst=e.dst[1], hlim=1) / ICMPv6MLQuery() / Raw(body(m)))]


# -- what policy allows, fragmented -----------------------------------------------------

def allowed_fragmented(family: int, dstopt: bool = False) -> Builder:
    """A UDP datagram to the pinhole (allowed) in two fragments, every one
    of them marked; for IPv6, optionally with a destination options header
    after the fragment header (RFC 8200 puts it there when it is for the
    final destination only)."""
    def build(e: Ends, m: bytes) -> list[bytes]:
        dgram = UDP(sport=e.sport, dport=PINHOLE) / Raw(body(m))
        if family == 4:
            data = bytes(dgram)
            return frags4(e, 17, data, [(0, 16, True), (16, len(data), False)])
        data = bytes(opt6(m) / dgram) if dstopt else bytes(dgram)
        return frags6(e, 60 if dstopt else 17, data, [(0, 24, True), (24, len(data), False)])
    return build
