"""Frames for BPF_PROG_TEST_RUN, built with scapy."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6MLQuery,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.packet import Packet, Raw

ETHER = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def ip(src: str, dst: str, **kw: object) -> Packet:
    return Ether(**ETHER) / (IPv6(src=src, dst=dst, **kw) if ":" in src else IP(src=src, dst=dst, **kw))


def tcp(src: str, dst: str, sport: int, dport: int, flags: str = "S") -> bytes:
    return bytes(ip(src, dst) / TCP(sport=sport, dport=dport, flags=flags))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytes:
    return bytes(ip(src, dst) / UDP(sport=sport, dport=dport) / Raw(payload))


def sctp(src: str, dst: str, sport: int, dport: int) -> bytes:
    return bytes(ip(src, dst) / SCTP(sport=sport, dport=dport) / SCTPChunkInit())


def echo(src: str, dst: str, ident: int = 7, reply: bool = False) -> bytes:
    if ":" in src:
        layer = ICMPv6EchoReply(id=ident) if reply else ICMPv6EchoRequest(id=ident)
        return bytes(ip(src, dst) / layer)
    return bytes(ip(src, dst) / ICMP(type=0 if reply else 8, id=ident))


def icmp_unreachable(src: str, dst: str, quoted: bytes) -> bytes:
    """ICMP(v6) destination unreachable from src to dst quoting `quoted`
    (a full frame whose IP packet is quoted)."""
    inner = Ether(quoted).payload
    if ":" in src:
        return bytes(ip(src, dst) / ICMPv6DestUnreach(code=4) / bytes(inner)[:1232])
    return bytes(ip(src, dst) / ICMP(type=3, code=3) / bytes(inner)[:28])


def fragments_of(frame: bytes, size: int = 16) -> list[bytes]:
    """IP fragments of an IPv4 or IPv6 frame, each as a frame."""
    pkt = Ether(frame)
    l3 = pkt.payload
    if isinstance(l3, IPv6):
        from scapy.layers.inet6 import fragment6

        upper = l3.nh
        hdr = IPv6(bytes(l3)[:40])
        hdr.nh = 44
        with_hdr = hdr / IPv6ExtHdrFragment(id=0x1234, nh=upper) / Raw(bytes(l3)[40:])
        frags = fragment6(IPv6(bytes(with_hdr)), 40 + 8 + size)
        return [bytes(Ether(**ETHER) / f) for f in frags]
    return [bytes(Ether(**ETHER) / f) for f in fragment(l3, fragsize=size)]


def ipv6_with_ext(src: str, dst: str, dport: int, chain: int = 3) -> bytes:
    """TCP SYN behind `chain` IPv6 extension headers."""
    exts = [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(addresses=[]),
            IPv6ExtHdrDestOpt(), IPv6ExtHdrDestOpt(), IPv6ExtHdrDestOpt(), IPv6ExtHdrDestOpt(),
            IPv6ExtHdrDestOpt(), IPv6ExtHdrDestOpt(), IPv6ExtHdrDestOpt()]
    pkt = Ether(**ETHER) / IPv6(src=src, dst=dst)
    for e in exts[:chain]:
        pkt = pkt / e
    return bytes(pkt / TCP(sport=40000, dport=dport, flags="S"))


def neighbor_solicitation(src: str, target: str, hlim: int = 255) -> bytes:
    return bytes(Ether(**ETHER) / IPv6(src=src, dst="ff02::1:ff00:1", hlim=hlim) / ICMPv6ND_NS(tgt=target))


def arp(psrc: str = "10.0.0.1", pdst: str = "10.0.0.2", **kw: object) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=ETHER["src"]) / ARP(psrc=psrc, pdst=pdst, **kw))


def vlan_tcp(src: str, dst: str, sport: int, dport: int) -> bytes:
    return bytes(Ether(**ETHER) / Dot1Q(vlan=5) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def tagged(tags: list[int], inner: bytes) -> bytes:
    """A frame (`inner`, built with frames' Ethernet header) behind VLAN
    tags with these TPIDs, outermost first (VLAN id 0, a priority tag).
    BPF_PROG_TEST_RUN leaves every tag in the frame: on a real interface
    the kernel takes the outermost 802.1Q/802.1ad one off before tc."""
    head = inner[:12]
    for tpid in tags:
        head += tpid.to_bytes(2, "big") + b"\x00\x00"
    return head + inner[12:]


def ethertype(etype: int, payload: bytes) -> bytes:
    """A frame of any ethertype (or 802.3 length) with this payload."""
    return bytes(Ether(**ETHER, type=etype) / Raw(payload))


ND_TYPES = {"rs": 133, "ra": 134, "ns": 135, "na": 136, "redirect": 137,
            "mld-query": 130, "mld-report": 131, "mld2-report": 143}


def link_control(kind: str, src: str, dst: str, hlim: int | None = None, target: str | None = None) -> bytes:
    """ICMPv6 neighbour discovery or MLD of `kind` (ND_TYPES); hop limit
    255 for ND and 1 for MLD unless given; target: of an NS, NA or
    Redirect."""
    mld = kind.startswith("mld")
    layer = {
        "rs": lambda: ICMPv6ND_RS(),
        "ra": lambda: ICMPv6ND_RA(),
        "ns": lambda: ICMPv6ND_NS(tgt=target or "fe80::1"),
        "na": lambda: ICMPv6ND_NA(tgt=target or src, R=0, S=1, O=1),
        "redirect": lambda: ICMPv6ND_Redirect(tgt=target or "fe80::1", dst="2001:db8::99"),
        "mld-query": lambda: ICMPv6MLQuery(),
        "mld-report": lambda: ICMPv6MLReport(mladdr=dst),
        "mld2-report": lambda: ICMPv6MLReport2(),
    }[kind]()
    return bytes(ip(src, dst, hlim=hlim if hlim is not None else (1 if mld else 255)) / layer)


def ipv6_fragments(src: str, dst: str, data: bytes, pieces: list[tuple[int, int, bool]], nh: int,
                   ident: int = 0x4242, before: list[Packet] | None = None) -> list[bytes]:
    """IPv6 fragments of `data` (everything after the fragment header, from
    the first header of the fragmentable part on, whose type is nh): one
    frame per (start, end, more) byte range, starts multiples of 8; `before`:
    extension headers ahead of the fragment header, in every fragment."""
    out = []
    for start, end, more in pieces:
        pkt = Ether(**ETHER) / IPv6(src=src, dst=dst)
        for h in before or []:
            pkt = pkt / h.copy()
        pkt = pkt / IPv6ExtHdrFragment(nh=nh, offset=start // 8, m=int(more), id=ident) / Raw(data[start:end])
        out.append(bytes(pkt))
    return out
