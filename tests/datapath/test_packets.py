"""Verdicts of the tc programs on crafted frames, through BPF_PROG_TEST_RUN.

Each case fixes map contents, runs frames through from_pod (the pod's egress
policy) or to_pod (its ingress policy) and asserts the verdict, the one
counter that moved (endpoint, direction, reason) and the event emitted.
"""

from __future__ import annotations

import itertools
import os
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from enforcer.datapath.layout import CT_F_CLOSING, CtEntry, CtKey, IpcacheKey
from enforcer.datapath.reasons import Reason

from . import frames
from .harness import DIR_EGRESS, DIR_INGRESS, PEERS, POD_A, POD_B, TC_ACT_SHOT, TC_ACT_UNSPEC, new_harness

TCP_, UDP_, SCTP_, ICMP4, ICMP6 = 6, 17, 132, 1, 58
FAMILIES = ["v4", "v6"]
_sports = itertools.count(20000)


def sport() -> int:
    """A fresh source port, so no case meets another's conntrack entry."""
    return next(_sports)


def peer(name: str, fam: str) -> str:
    v4, v6, _ident = PEERS[name]
    return v4 if fam == "v4" else v6


def ident(name: str) -> int:
    return PEERS[name][2]


def l4_frame(proto: int, src: str, dst: str, sp: int, dp_: int) -> bytes:
    return {TCP_: frames.tcp, UDP_: frames.udp, SCTP_: frames.sctp}[proto](src, dst, sp, dp_)


def assert_outcome(out, passed: bool, ep: int, direction: int, reason: Reason) -> None:
    assert out.retval == (TC_ACT_UNSPEC if passed else TC_ACT_SHOT), out
    assert out.reasons == {(ep, direction, reason): 1}, out.reasons


# --- the protocol matrix: IPv4/IPv6 x TCP/UDP/SCTP, both policy directions ---

@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", [TCP_, UDP_, SCTP_], ids=["tcp", "udp", "sctp"])
def test_ingress_port_rule(dp, fam, proto):
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), proto, 80, rule_id=11)
    a, other, cidr = POD_A[fam], peer("other_pod", fam), peer("cidr", fam)
    other_proto = UDP_ if proto != UDP_ else TCP_
    cases = [
        (other, proto, 80, True, Reason.ALLOW_POLICY),
        (other, proto, 81, False, Reason.DROP_POLICY),
        (cidr, proto, 80, False, Reason.DROP_POLICY),
        (other, other_proto, 80, False, Reason.DROP_POLICY),
    ]
    for src, p, port, passed, reason in cases:
        out = dp.ingress(l4_frame(p, src, a, sport(), port))
        assert_outcome(out, passed, POD_A["id"], DIR_INGRESS, reason)
        (ev,) = out.events
        assert (ev.allowed, ev.reason, ev.direction, ev.proto, ev.dport) == (passed, reason, "ingress", p, port)
        assert ev.endpoint_id == POD_A["id"] and str(ev.dst) == a and str(ev.src) == src
        assert ev.rule_id == (11 if passed else 0)
        assert ev.peer_identity == (ident("other_pod") if src == other else ident("cidr"))


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", [TCP_, UDP_, SCTP_], ids=["tcp", "udp", "sctp"])
def test_egress_port_rule(dp, fam, proto):
    dp.set_pod(POD_A, egress=True)
    dp.allow(POD_A, DIR_EGRESS, ident("other_pod"), proto, 5432)
    a, other = POD_A[fam], peer("other_pod", fam)
    ok = dp.egress(l4_frame(proto, a, other, sport(), 5432))
    assert_outcome(ok, True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_POLICY)
    denied = dp.egress(l4_frame(proto, a, other, sport(), 5433))
    assert_outcome(denied, False, POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY)
    world = dp.egress(l4_frame(proto, a, peer("world", fam), sport(), 5432))
    assert_outcome(world, False, POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY)
    assert world.events[0].peer_identity == 2  # IDENTITY_WORLD: not in the ipcache


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("hook,direction", [("ingress", DIR_INGRESS), ("egress", DIR_EGRESS)])
def test_not_isolated_allows_everything(dp, fam, hook, direction):
    a, other = POD_A[fam], peer("world", fam)
    frame = frames.tcp(other, a, sport(), 9) if hook == "ingress" else frames.tcp(a, other, sport(), 9)
    out = getattr(dp, hook)(frame)
    assert_outcome(out, True, POD_A["id"], direction, Reason.ALLOW_NOT_ISOLATED)
    assert out.events[0].allowed and out.events[0].rule_id == 0


@pytest.mark.parametrize("fam", FAMILIES)
def test_icmp_echo_needs_a_protocol_wide_rule(dp, fam):
    dp.set_pod(POD_A, ingress=True)
    a, other = POD_A[fam], peer("other_pod", fam)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), TCP_, 80)
    assert_outcome(dp.ingress(frames.echo(other, a, ident=1)), False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"))  # every protocol, every port
    assert_outcome(dp.ingress(frames.echo(other, a, ident=2)), True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_POLICY)
    reply = dp.egress(frames.echo(a, other, ident=2, reply=True))
    assert_outcome(reply, True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_REPLY)


# --- malformed and truncated frames ---

def _cut(frame: bytes, keep: int) -> bytes:
    return frame[:keep]


def _ipv4_options_past_end() -> bytes:
    """A 20-byte IPv4 header whose IHL claims 60 bytes of header."""
    frame = bytearray(_cut(frames.tcp("10.1.0.5", "10.0.0.1", 1, 80), 14 + 20 + 20))
    frame[14] = 0x4F
    return bytes(frame)


# BPF_PROG_TEST_RUN itself refuses frames shorter than the IP header their
# EtherType announces (test_kernel_refuses_short_ip_frames), so truncation is
# tested from the first byte the kernel lets through.
TRUNCATED = {
    "ipv4 options past end": _ipv4_options_past_end(),
    "ipv4 ihl < 5": bytes(Ether(**frames.ETHER) / IP(src="10.1.0.5", dst="10.0.0.1", ihl=4) / TCP()),
    "tcp header cut": _cut(frames.tcp("10.1.0.5", "10.0.0.1", 1, 80), 14 + 20 + 10),
    "udp ports cut": _cut(frames.udp("10.1.0.5", "10.0.0.1", 1, 80), 14 + 20 + 2),
    "sctp ports cut": _cut(frames.sctp("10.1.0.5", "10.0.0.1", 1, 80), 14 + 20 + 3),
    "icmp header cut": _cut(frames.echo("10.1.0.5", "10.0.0.1"), 14 + 20 + 2),
    "tcp header cut v6": _cut(frames.tcp("fd01::5", "fd00::1", 1, 80), 14 + 40 + 10),
    "ipv6 ext header cut": _cut(frames.ipv6_with_ext("fd01::5", "fd00::1", 80, chain=2), 14 + 40 + 4),
    "tcp behind ipv6 ext cut": _cut(frames.ipv6_with_ext("fd01::5", "fd00::1", 80, chain=2), 14 + 40 + 16 + 6),
    "ip version mismatch": bytes(Ether(**frames.ETHER, type=0x86DD) / IP(src="10.1.0.5", dst="10.0.0.1") / TCP()),
}


@pytest.mark.parametrize("name", list(TRUNCATED))
@pytest.mark.parametrize("hook,direction", [("ingress", DIR_INGRESS), ("egress", DIR_EGRESS)])
def test_truncated_frames_are_dropped(dp, name, hook, direction):
    out = getattr(dp, hook)(TRUNCATED[name])
    assert_outcome(out, False, 0, direction, Reason.DROP_MALFORMED)
    assert out.events[0].reason == Reason.DROP_MALFORMED


@pytest.mark.parametrize("frame", [_cut(frames.tcp("10.1.0.5", "10.0.0.1", 1, 80), 14 + 19),
                                   _cut(frames.tcp("fd01::5", "fd00::1", 1, 80), 14 + 39)])
def test_kernel_refuses_short_ip_frames(dp, frame):
    with pytest.raises(OSError) as err:
        dp.ingress(frame)
    assert err.value.errno == 22


def test_non_ip_passes(dp):
    dp.set_pod(POD_A, ingress=True, egress=True)
    assert_outcome(dp.ingress(frames.arp()), True, 0, DIR_INGRESS, Reason.ALLOW_NON_IP)


def test_vlan_tagged_frame_is_parsed(dp):
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), TCP_, 80)
    ok = dp.ingress(frames.vlan_tcp("10.1.0.5", "10.0.0.1", sport(), 80))
    assert_outcome(ok, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_POLICY)
    no = dp.ingress(frames.vlan_tcp("10.1.0.5", "10.0.0.1", sport(), 81))
    assert_outcome(no, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)


# --- fragments: later fragments must not bypass port rules ---

@pytest.mark.parametrize("fam", FAMILIES)
def test_fragments_follow_their_first_fragment(dp, fam):
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), UDP_, 53)
    a, other = POD_A[fam], peer("other_pod", fam)
    for port, passed in ((53, True), (54, False)):
        frags = frames.fragments_of(frames.udp(other, a, sport(), port, payload=b"p" * 64))
        assert len(frags) >= 3
        first, *later = [dp.ingress(f) for f in frags]
        if passed:
            assert_outcome(first, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_POLICY)
            for out in later:
                assert_outcome(out, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_ESTABLISHED)
        else:
            for out in [first, *later]:
                assert_outcome(out, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)
                assert out.events[0].dport == 54  # ports recovered for the later ones too


@pytest.mark.parametrize("fam", FAMILIES)
def test_later_fragment_without_first_is_dropped(dp, fam):
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), UDP_, 53)
    a, other = POD_A[fam], peer("other_pod", fam)
    frags = frames.fragments_of(frames.udp(other, a, 999, 53, payload=b"q" * 64))
    out = dp.ingress(frags[1])
    assert_outcome(out, False, POD_A["id"], DIR_INGRESS, Reason.DROP_FRAGMENT_UNKNOWN)


# --- IPv6 extension headers ---

@pytest.mark.parametrize("chain", [1, 3, 8])
def test_ipv6_extension_headers_are_skipped(dp, chain):
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), TCP_, 80)
    ok = dp.ingress(frames.ipv6_with_ext("fd01::5", "fd00::1", 80, chain=chain))
    assert_outcome(ok, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_POLICY)
    no = dp.ingress(frames.ipv6_with_ext("fd01::5", "fd00::1", 81, chain=chain))
    assert_outcome(no, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)


def test_too_many_ipv6_extension_headers(dp):
    out = dp.ingress(frames.ipv6_with_ext("fd01::5", "fd00::1", 80, chain=9))
    assert_outcome(out, False, 0, DIR_INGRESS, Reason.DROP_EXT_HEADERS)


def test_neighbor_discovery_passes_only_as_link_control(dp):
    dp.set_pod(POD_A, ingress=True, egress=True)
    ns = dp.egress(frames.neighbor_solicitation("fe80::a", "fe80::1"))
    assert_outcome(ns, True, 0, DIR_EGRESS, Reason.ALLOW_NEIGHBOR_DISCOVERY)
    # ND from the pod's own address (address resolution) also passes.
    ns = dp.egress(frames.neighbor_solicitation("fd00::1", "fd00::2"))
    assert_outcome(ns, True, 0, DIR_EGRESS, Reason.ALLOW_NEIGHBOR_DISCOVERY)
    # ND with a hop limit other than 255 is invalid (RFC 4861): dropped as
    # malformed. More cases: test_crafted.py.
    routed = dp.egress(frames.neighbor_solicitation("fe80::a", "fe80::1", hlim=64))
    assert_outcome(routed, False, 0, DIR_EGRESS, Reason.DROP_MALFORMED)


# --- anti-spoofing and endpoint checks ---

@pytest.mark.parametrize("fam", FAMILIES)
def test_spoofed_sources_are_dropped(dp, fam):
    dp.set_pod(POD_B, ifindex=999)  # B lives behind another interface
    unknown = "10.0.0.99" if fam == "v4" else "fd00::99"
    for src in (unknown, POD_B[fam]):
        out = dp.egress(frames.tcp(src, peer("other_pod", fam), sport(), 80))
        assert_outcome(out, False, 0, DIR_EGRESS, Reason.DROP_SPOOFED_SOURCE)
        assert out.events[0].reason == Reason.DROP_SPOOFED_SOURCE
    # Delivering B's traffic through A's interface is refused too.
    out = dp.ingress(frames.tcp(peer("other_pod", fam), POD_B[fam], sport(), 80))
    assert_outcome(out, False, 0, DIR_INGRESS, Reason.DROP_UNKNOWN_ENDPOINT)


# --- port ranges (endPort) as masked prefixes ---

RANGES = [
    ((1000, 2000), [(999, False), (1000, True), (1001, True), (1500, True), (2000, True), (2001, False)]),
    ((1, 65535), [(1, True), (80, True), (65535, True)]),
    ((32768, 65535), [(32767, False), (32768, True), (65535, True)]),
    ((80, None), [(79, False), (80, True), (81, False)]),
    ((8080, 8081), [(8079, False), (8080, True), (8081, True), (8082, False)]),
    ((0x7fff, 0x8000), [(0x7ffe, False), (0x7fff, True), (0x8000, True), (0x8001, False)]),
]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", [TCP_, SCTP_], ids=["tcp", "sctp"])
@pytest.mark.parametrize("rng,probes", RANGES, ids=[f"{r[0]}-{r[1]}" for r, _ in RANGES])
def test_port_range_edges(dp, fam, proto, rng, probes):
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), proto, rng[0], rng[1])
    for port, passed in probes:
        out = dp.ingress(l4_frame(proto, peer("other_pod", fam), POD_A[fam], sport(), port))
        reason = Reason.ALLOW_POLICY if passed else Reason.DROP_POLICY
        assert_outcome(out, passed, POD_A["id"], DIR_INGRESS, reason)


# --- identities: host, ipBlock with except, pod IPs inside a block ---

@pytest.mark.parametrize("fam", FAMILIES)
def test_own_node_is_always_allowed(dp, fam):
    dp.set_pod(POD_A, ingress=True, egress=True)  # default deny both ways
    host = peer("host", fam)
    assert_outcome(dp.ingress(frames.tcp(host, POD_A[fam], sport(), 8080)), True,
                   POD_A["id"], DIR_INGRESS, Reason.ALLOW_HOST)
    assert_outcome(dp.egress(frames.udp(POD_A[fam], host, sport(), 53)), True,
                   POD_A["id"], DIR_EGRESS, Reason.ALLOW_HOST)


@pytest.mark.parametrize("fam", FAMILIES)
def test_ipblock_with_except_and_pod_ips(dp, fam):
    """ipBlock 10.2.0.0/16 except 10.2.3.0/24 on TCP 80, as the compiler
    writes it: the block's identity, plus every pod identity whose IP lies in
    the block outside the except (10.2.4.4 here); never the except's."""
    dp.set_pod(POD_A, ingress=True)
    for identity in (ident("cidr"), ident("pod_in_cidr")):
        dp.allow(POD_A, DIR_INGRESS, identity, TCP_, 80)
    expect = {"cidr": True, "pod_in_cidr": True, "except": False, "world": False, "other_pod": False}
    for name, passed in expect.items():
        out = dp.ingress(frames.tcp(peer(name, fam), POD_A[fam], sport(), 80))
        assert_outcome(out, passed, POD_A["id"], DIR_INGRESS,
                       Reason.ALLOW_POLICY if passed else Reason.DROP_POLICY)


def test_ipcache_families_do_not_mix(dp):
    """::/0 must not match IPv4 addresses (and 0.0.0.0/0 not IPv6)."""
    dp.maps.set_identity("::/0", 600)
    dp.set_pod(POD_A, ingress=True)
    dp.allow(POD_A, DIR_INGRESS, 600, TCP_, 80)
    out_v4 = dp.ingress(frames.tcp("192.0.2.7", POD_A["v4"], sport(), 80))
    assert_outcome(out_v4, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)
    out_v6 = dp.ingress(frames.tcp("2001:db8::7", POD_A["v6"], sport(), 80))
    assert_outcome(out_v6, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_POLICY)
    assert dp.maps["ipcache"].lookup(IpcacheKey.of(__import__("ipaddress").ip_network("::/0"))).identity == 600


# --- conntrack: replies, related ICMP, TCP closing, expiry ---

@pytest.mark.parametrize("fam", FAMILIES)
def test_a_connection_picked_up_mid_stream_proves_its_other_direction(dp, fam):
    """Revocation cut a connection (or its entry was lost); the pod's next
    packet (a delayed ACK, which its egress allows) tracks it again mid-
    stream. Who opened it is unknown: the peer's packets are no proven
    replies and face the pod's ingress policy, which denies them; once policy
    allows that direction, the first one to pass makes the entry ordinary."""
    dp.set_pod(POD_A, ingress=True)  # ingress isolated with nothing allowed; egress open
    a, other, sp = POD_A[fam], peer("other_pod", fam), sport()
    ack = dp.egress(frames.tcp(a, other, 80, sp, flags="A"))
    assert_outcome(ack, True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_NOT_ISOLATED)
    for _ in range(2):  # every one, not only the first
        back = dp.ingress(frames.tcp(other, a, sp, 80, flags="PA"))
        assert_outcome(back, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)
    assert_outcome(dp.egress(frames.tcp(a, other, 80, sp, flags="A")), True, POD_A["id"], DIR_EGRESS,
                   Reason.ALLOW_ESTABLISHED)  # its own direction stays tracked
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), TCP_, 80)
    first = dp.ingress(frames.tcp(other, a, sp, 80, flags="PA"))
    assert_outcome(first, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_POLICY)
    assert_outcome(dp.ingress(frames.tcp(other, a, sp, 80, flags="PA")), True, POD_A["id"], DIR_INGRESS,
                   Reason.ALLOW_REPLY)


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", [TCP_, UDP_, SCTP_], ids=["tcp", "udp", "sctp"])
def test_replies_pass_new_connections_the_other_way_do_not(dp, fam, proto):
    dp.set_pod(POD_A, ingress=True, egress=True)
    dp.allow(POD_A, DIR_EGRESS, ident("other_pod"), proto, 80)
    a, other, sp = POD_A[fam], peer("other_pod", fam), sport()
    assert_outcome(dp.egress(l4_frame(proto, a, other, sp, 80)), True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_POLICY)
    reply = frames.tcp(other, a, 80, sp, flags="SA") if proto == TCP_ else l4_frame(proto, other, a, 80, sp)
    out = dp.ingress(reply)
    assert_outcome(out, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_REPLY)
    assert out.events == []  # tracked packets are not events
    more = frames.tcp(a, other, sp, 80, flags="A") if proto == TCP_ else l4_frame(proto, a, other, sp, 80)
    assert_outcome(dp.egress(more), True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_ESTABLISHED)
    new_in = dp.ingress(l4_frame(proto, other, a, sport(), 80))
    assert_outcome(new_in, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)


def test_pod_to_pod_on_one_node_faces_both_policies(dp):
    """A's egress entry must not let the packet skip B's ingress policy."""
    dp.set_pod(POD_B, ingress=True)
    sp = sport()
    frame = frames.tcp(POD_A["v4"], POD_B["v4"], sp, 80)
    assert_outcome(dp.egress(frame), True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_NOT_ISOLATED)
    assert_outcome(dp.ingress(frame), False, POD_B["id"], DIR_INGRESS, Reason.DROP_POLICY)
    dp.allow(POD_B, DIR_INGRESS, POD_A["identity"], TCP_, 80)
    assert_outcome(dp.ingress(frame), True, POD_B["id"], DIR_INGRESS, Reason.ALLOW_POLICY)


@pytest.mark.parametrize("fam", FAMILIES)
def test_icmp_errors_about_tracked_flows_are_related(dp, fam):
    dp.set_pod(POD_A, ingress=True, egress=True)
    dp.allow(POD_A, DIR_EGRESS, ident("other_pod"), UDP_, 53)
    a, other, router = POD_A[fam], peer("other_pod", fam), peer("world", fam)
    sent = frames.udp(a, other, 5353, 53)
    assert dp.egress(sent).passed
    related = dp.ingress(frames.icmp_unreachable(router, a, sent))
    assert_outcome(related, True, POD_A["id"], DIR_INGRESS, Reason.ALLOW_RELATED)
    never_sent = frames.udp(a, other, 5354, 53)
    unrelated = dp.ingress(frames.icmp_unreachable(router, a, never_sent))
    assert_outcome(unrelated, False, POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)
    # A quote about somebody else's packet is not related to A's flow.
    forged = frames.udp(POD_B[fam], other, 5353, 53)
    assert_outcome(dp.ingress(frames.icmp_unreachable(router, a, forged)), False,
                   POD_A["id"], DIR_INGRESS, Reason.DROP_POLICY)


@pytest.mark.parametrize("fam", FAMILIES)
def test_icmp_error_sent_by_pod_about_tracked_flow(dp, fam):
    """Port unreachable from the pod for an allowed inbound UDP flow."""
    dp.set_pod(POD_A, ingress=True, egress=True)
    dp.allow(POD_A, DIR_INGRESS, ident("other_pod"), UDP_, 53)
    a, other = POD_A[fam], peer("other_pod", fam)
    received = frames.udp(other, a, 6000, 53)
    assert dp.ingress(received).passed
    err = dp.egress(frames.icmp_unreachable(a, other, received))
    assert_outcome(err, True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_RELATED)


def _ct_entry(dp, fam: str, peer_ip: str, pod_port: int, peer_port: int, proto: int = TCP_) -> CtEntry:
    import ipaddress

    from enforcer.datapath.layout import addr_bytes

    key = CtKey(pod=addr_bytes(ipaddress.ip_address(POD_A[fam])), peer=addr_bytes(ipaddress.ip_address(peer_ip)),
                ifindex=1, family=4 if fam == "v4" else 6, proto=proto,
                pod_port=socket.htons(pod_port), peer_port=socket.htons(peer_port))
    entry = dp.maps["conntrack"].lookup(key)
    assert entry is not None, "no conntrack entry"
    assert entry.endpoint_id == POD_A["id"]
    return key, entry


def _datapath_now_ns(dp) -> int:
    """The datapath's clock (jiffies in ns, not CLOCK_MONOTONIC): read off a
    fresh UDP entry, whose lifetime is 60 s."""
    sp = sport()
    dp.egress(frames.udp(POD_A["v4"], "10.1.0.99", sp, 9))
    _, entry = _ct_entry(dp, "v4", "10.1.0.99", sp, 9, proto=UDP_)
    return entry.expires_ns - 60 * 10**9


@pytest.mark.parametrize("fam", FAMILIES)
def test_tcp_rst_and_fin_shorten_the_entry(dp, fam):
    a, other = POD_A[fam], peer("other_pod", fam)
    for closing in (["R"], ["F", "FA"]):
        sp = sport()
        dp.egress(frames.tcp(a, other, sp, 80, flags="S"))
        dp.ingress(frames.tcp(other, a, 80, sp, flags="SA"))
        _, entry = _ct_entry(dp, fam, other, sp, 80)
        assert entry.expires_ns - _datapath_now_ns(dp) > 3600 * 10**9  # established: hours
        for i, flags in enumerate(closing):
            frame = frames.tcp(a, other, sp, 80, flags=flags) if i % 2 == 0 else frames.tcp(other, a, 80, sp, flags=flags)
            (dp.egress if i % 2 == 0 else dp.ingress)(frame)
        _, entry = _ct_entry(dp, fam, other, sp, 80)
        assert entry.flags & CT_F_CLOSING
        assert entry.expires_ns - _datapath_now_ns(dp) <= 10 * 10**9 + 10**8


@pytest.mark.parametrize("fam", FAMILIES)
def test_syn_on_a_closing_entry_faces_policy_again(dp, fam):
    dp.set_pod(POD_A, egress=True)
    dp.allow(POD_A, DIR_EGRESS, ident("other_pod"), TCP_, 80)
    a, other, sp = POD_A[fam], peer("other_pod", fam), sport()
    assert dp.egress(frames.tcp(a, other, sp, 80)).passed
    dp.egress(frames.tcp(a, other, sp, 80, flags="R"))
    dp.maps["policy"].clear()  # policy revoked meanwhile
    assert_outcome(dp.egress(frames.tcp(a, other, sp, 80)), False, POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY)


@pytest.mark.parametrize("fam", FAMILIES)
def test_expired_entries_are_not_honoured(dp, fam):
    dp.set_pod(POD_A, egress=True)
    dp.allow(POD_A, DIR_EGRESS, ident("other_pod"), UDP_, 53)
    a, other, sp = POD_A[fam], peer("other_pod", fam), sport()
    assert dp.egress(frames.udp(a, other, sp, 53)).passed
    key, entry = _ct_entry(dp, fam, other, sp, 53, proto=UDP_)
    dp.maps["policy"].clear()
    assert_outcome(dp.egress(frames.udp(a, other, sp, 53)), True, POD_A["id"], DIR_EGRESS, Reason.ALLOW_ESTABLISHED)
    entry.expires_ns = 1
    dp.maps["conntrack"].update(key, entry)
    assert_outcome(dp.egress(frames.udp(a, other, sp, 53)), False, POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY)


def test_conntrack_entry_records_the_rule(dp):
    dp.set_pod(POD_A, egress=True)
    dp.allow(POD_A, DIR_EGRESS, ident("other_pod"), TCP_, 443, rule_id=4242)
    sp = sport()
    dp.egress(frames.tcp(POD_A["v4"], "10.1.0.5", sp, 443))
    _, entry = _ct_entry(dp, "v4", "10.1.0.5", sp, 443)
    assert (entry.rule_id, entry.origin, entry.reason) == (4242, DIR_EGRESS, Reason.ALLOW_POLICY)


# --- events are rate limited per CPU ---

def test_events_are_rate_limited():
    """The bucket is per CPU and BPF_PROG_TEST_RUN runs on the caller's CPU:
    the test stays on one, or a migration between runs (two xdist workers
    on two cores) finds the other CPU's full bucket and sees more events."""
    h = new_harness("ratelimit", events_per_sec=1, events_burst=3)
    cpus = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cpus)})
        h.reset()
        h.set_pod(POD_A, ingress=True)
        emitted = []
        for _ in range(10):
            out = h.ingress(frames.tcp("10.1.0.5", POD_A["v4"], sport(), 80))
            assert out.retval == TC_ACT_SHOT
            emitted += out.events
        assert len(emitted) == 3
        assert h.maps.event_stats()["suppressed"] == 7
        assert sum(p for (ep, d, r), p in h._all_counters().items() if r == Reason.DROP_POLICY) == 10
    finally:
        os.sched_setaffinity(0, cpus)
        h.close()
