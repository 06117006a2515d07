"""Crafted packets from pods that policy keeps from a target pod, on the
wire, with the real daemon enforcing: none may reach the target.

Pods: a (the ally: the target admits it on every port and protocol),
b (the target), c (denied by b's ingress policy but for a UDP pinhole),
e (egress-isolated: b admits it, its own egress policy allows only a, and
the same UDP pinhole to b). So c's frames are stopped by to_pod on b's
interface, e's by from_pod on its own; a frame that gets past either, or
past anti-spoofing by wearing a's address, reaches b.

Each case (packets.py) is sent raw from the attacker's eth0 (AF_PACKET in
its namespace), then a control datagram per family from a, raw too; the
target's eth0 is captured raw (AF_PACKET in b's namespace). Sent from one
thread on one CPU, the frames are processed in order, so once both control
frames are captured every crafted frame has arrived or never will
(wire.py). The case passes when no captured frame carries its marker.
Both lab modes: routed (Calico-style, the node routes) and bridge
(flannel-style, cni0 switches pod to pod).

Allowed traffic must not be lost either: the controls of every case, and
fragmented datagrams through the pinhole (test_allowed_fragments_arrive_whole).
Holes found are kept as strict expected failures with their symptom
(KNOWN_HOLES), not left out, until they are fixed.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from scapy.layers.l2 import Ether

from enforcer.lab.topology import BRIDGE, BRIDGE_IFNAME, NODE_IPV4, NODE_IPV6, ROUTED
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc
from tests.daemon.conftest import make_daemon_lab
from tests.daemon.harness import DENIED, OK, DaemonLab, allow_from, allow_to, policy
from tests.lab.flows import flows

from . import packets as P
from .wire import Capture, Sender, link_mac, pinned

pytestmark = pytest.mark.lab

PODS = ["a", "b", "c", "e"]
ALLY, TARGET = "a", "b"
ATTACKERS = {"c": "denied by the target's ingress", "e": "denied by its own egress"}
POLICIES = [
    policy("b-ingress", "b", ingress=[allow_from("a"), allow_from("e"), allow_from("c", ("udp", P.PINHOLE))]),
    policy("e-egress", "e", egress=[allow_to("a", ("tcp", 80), ("udp", 80)), allow_to("b", ("udp", P.PINHOLE))]),
]
SANITY = flows(
    ("a", "b", 80, "tcp", OK), ("a", "b", 81, "udp", OK),
    ("c", "b", 80, "tcp", DENIED), ("c", "b", 80, "udp", DENIED), ("c", "b", P.PINHOLE, "udp", OK),
    ("e", "b", 80, "tcp", DENIED), ("e", "b", 80, "udp", DENIED), ("e", "b", P.PINHOLE, "udp", OK),
    ("e", "a", 80, "udp", OK),
)
LETTERS = {ROUTED: "f", BRIDGE: "g"}


@dataclass(frozen=True)
class Case:
    name: str
    build: P.Builder
    modes: tuple[str, ...] = (ROUTED, BRIDGE)


CASES = [
    # IPv4 fragments
    Case("v4-frag-first-without-l4-header", P.v4_first_fragment_without_l4),
    Case("v4-frag-first-empty", P.v4_first_fragment_empty),
    Case("v4-frag-to-denied-port", P.v4_fragments_to_denied_port),
    Case("v4-frag-later-alone", P.v4_later_fragments_alone),
    Case("v4-frag-overlapping", P.v4_overlapping_fragments),
    Case("v4-frag-second-first-fragment", P.v4_second_first_fragment),
    Case("v4-frag-pinhole-id-other-protocol", P.v4_fragment_of_pinhole_other_protocol),
    # IPv6 fragments and extension headers
    Case("v6-frag-first-without-l4-header", P.v6_first_fragment_without_l4),
    Case("v6-frag-to-denied-port", P.v6_fragments_to_denied_port),
    Case("v6-frag-later-alone", P.v6_later_fragments_alone),
    Case("v6-frag-overlapping", P.v6_overlapping_fragments),
    Case("v6-atomic-fragment", P.v6_atomic_fragment),
    Case("v6-ext-hbh-routing-dstopt-frag", P.v6_ext_chain),
    Case("v6-ext-chain-8", P.v6_ext_chain_8),
    Case("v6-ext-chain-9", P.v6_ext_chain_9),
    Case("v6-auth-header", P.v6_auth_header),
    Case("v6-routing-header-via-node", P.v6_routing_header_via_node),
    # IPv4 options
    Case("v4-option-unknown", P.v4_unknown_option),
    Case("v4-option-record-route", P.v4_record_route),
    Case("v4-option-lsrr-via-node", P.v4_loose_source_route_via_node),
    Case("v4-option-ssrr-via-node", P.v4_strict_source_route_via_node),
    Case("v4-ihl-beyond-packet", P.v4_header_length_beyond_packet),
    Case("v4-total-length-beyond-frame", P.v4_total_length_beyond_frame),
    # TCP headers that lie, flags that pretend to be replies
    *[Case(f"v{f}-tcp-data-offset-beyond-packet", P.tcp_offset_beyond_packet(f)) for f in (4, 6)],
    *[Case(f"v{f}-tcp-data-offset-below-5", P.tcp_offset_below_minimum(f)) for f in (4, 6)],
    *[Case(f"v{f}-tcp-header-cut", P.tcp_header_cut(f)) for f in (4, 6)],
    *[Case(f"v{f}-tcp-{name}", P.tcp_flags(flags, f)) for f in (4, 6)
      for name, flags in [("syn-ack", "SA"), ("rst", "R"), ("rst-ack", "RA"), ("ack", "A"), ("psh-ack", "PA"),
                          ("fin-ack", "FA"), ("no-flags", ""), ("all-flags", "FSRPAUEC")]],
    # UDP, ICMP
    *[Case(f"v{f}-udp-port-allowed-elsewhere", P.udp_port_allowed_elsewhere(f)) for f in (4, 6)],
    *[Case(f"v{f}-udp-length-lies", P.udp_length_lies(f)) for f in (4, 6)],
    *[Case(f"v{f}-icmp-echo", P.icmp_echo(f)) for f in (4, 6)],
    # spoofed sources
    *[Case(f"v{f}-spoofed-{src}-{proto}", P.spoofed(src, f, proto)) for f in (4, 6)
      for src, proto in [("ally", "udp"), ("ally", "tcp"), ("node", "udp"), ("target", "udp"), ("link-local", "udp")]],
    # VLAN tags (0x8100 802.1Q, 0x88a8 802.1ad), VLAN 0 being a priority tag
    Case("vlan-5", P.vlan([(0x8100, 5)])),
    Case("vlan-0", P.vlan([(0x8100, 0)])),
    Case("vlan-0-v6", P.vlan([(0x8100, 0)], 6)),
    Case("qinq-0-0", P.vlan([(0x88A8, 0), (0x8100, 0)])),
    Case("vlan-0-0-0", P.vlan([(0x8100, 0)] * 3)),
    Case("vlan-0-0-0-0", P.vlan([(0x8100, 0)] * 4)),
    Case("vlan-0-0-0-0-v6", P.vlan([(0x8100, 0)] * 4, 6)),
    Case("vlan-5-6-7-8", P.vlan([(0x88A8, 5), (0x8100, 6), (0x8100, 7), (0x8100, 8)])),
    # encapsulation of an allowed packet (a -> b)
    *[Case(f"v{f}-gre", P.gre(f)) for f in (4, 6)],
    Case("v4-gre-ethernet", P.gre(4, ethernet=True)),
    Case("v4-ipip", P.ip_in_ip(4, 4)),
    Case("v4-sit-6in4", P.ip_in_ip(4, 6)),
    Case("v6-4in6", P.ip_in_ip(6, 4)),
    Case("v6-6in6", P.ip_in_ip(6, 6)),
    *[Case(f"v{f}-vxlan", P.vxlan(f)) for f in (4, 6)],
    Case("v4-geneve", P.geneve(4)),
    Case("v4-ipip-via-node", P.ip_in_ip(4, 4, via_node=True)),
    # ICMPv6 dressed as link control. On a bridge the pods share a link:
    # neighbour discovery and MLD between them are link traffic, which
    # passes by design (README, "The datapath", step 2); only the one
    # claiming another pod's address is a case there.
    Case("v6-nd-typed-to-pod", P.nd_typed(), modes=(ROUTED,)),
    Case("v6-nd-typed-spoofed-ally", P.nd_typed(spoof_ally=True)),
    Case("v6-mld-typed", P.mld_typed, modes=(ROUTED,)),
]
assert len({c.name for c in CASES}) == len(CASES)

# (mode, attacker, case) -> the symptom, for holes found: strict expected
# failures, so a fix turns them into errors to be removed from here. None
# is open. Fixed, each with packet-level cases in tests/datapath/test_crafted.py:
# frames behind 4 stacked VLAN tags passed as non-IP (parse.h: a frame still
# tagged after the parser's budget is dropped); ICMPv6 solicitations with
# hop limit 255 passed as link control whatever their destination and
# source (enforce.h, ipv6_link_control); later IPv6 fragments behind a
# destination options header were lost (fragments.h).
KNOWN_HOLES: dict[tuple[str, str, str], str] = {}


def params(mode: str) -> list:  # type: ignore[type-arg]
    out = []
    for case in CASES:
        if mode not in case.modes:
            continue
        for attacker in ATTACKERS:
            hole = KNOWN_HOLES.get((mode, attacker, case.name))
            marks = [pytest.mark.xfail(strict=True, reason=hole)] if hole else []
            out.append(pytest.param(attacker, case, marks=marks, id=f"{attacker}-{case.name}"))
    return out


class FuzzLab:
    """The daemon on pods a, b, c, e with POLICIES; raw senders on every
    pod's eth0; the MACs each sender's frames need."""

    def __init__(self, env: DaemonLab) -> None:
        self.env = env
        self.mode = env.lab.mode
        self.senders: dict[str, Sender] = {}
        self.capture: Capture | None = None
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        lab = self.env.lab
        for name in PODS:
            self.senders[name] = Sender(lab.pod(name).netns)
        self.macs = {name: link_mac(lab.pod(name).netns, "eth0") for name in PODS}
        if self.mode == ROUTED:  # the pod's next hop is its host-side veth, for everything
            self.gw = {name: link_mac(lab.node_netns, lab.pod(name).host_ifname) for name in PODS}
            self.to_node = dict(self.gw)
        else:                    # pods share a subnet: straight to the target; the node is cni0
            bridge = link_mac(lab.node_netns, BRIDGE_IFNAME)
            self.gw = {name: self.macs[TARGET] for name in PODS}
            self.to_node = {name: bridge for name in PODS}
        self._ports = itertools.count(20000)
        # One capture for the lab's life: each case starts from what is
        # queued when it starts (making an AF_PACKET socket costs ms).
        self.capture = Capture(lab.pod(TARGET).netns)

    def addresses(self, name: str) -> tuple[str, str]:
        return self.env.lab.pod(name).ip(4), self.env.lab.pod(name).ip(6)

    def ends(self, sender: str) -> P.Ends:
        port = next(self._ports)
        return P.Ends(src_mac=self.macs[sender], gw_mac=self.gw[sender], node_mac=self.to_node[sender],
                      src=self.addresses(sender), dst=self.addresses(TARGET), ally=self.addresses(ALLY),
                      node=(str(NODE_IPV4), str(NODE_IPV6)), sport=port, ident=port)

    def run(self, sender: str, frames: list[bytes]) -> list[bytes]:
        """Send frames from sender, then a control datagram per family from
        the ally; return every frame the target received meanwhile."""
        controls = {}
        for family in (4, 6):
            ctl = self.ends(ALLY)
            mark = marker()
            controls[mark] = P.udp_port_allowed_elsewhere(family)(ctl, mark)
        cap = self.capture
        assert cap is not None
        cap.reset()
        cap.dropped()
        with pinned():
            self.senders[sender].send(frames)
            for ctl_frames in controls.values():
                self.senders[ALLY].send(ctl_frames)
        seen = cap.until_seen(controls)
        assert cap.dropped() == 0, "the capture dropped frames: it cannot vouch for what arrived"
        return seen

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        for s in self.senders.values():
            s.close()


def marker() -> bytes:
    return os.urandom(8)


def fuzz_lab(request: pytest.FixtureRequest, mode: str) -> FuzzLab:
    env = make_daemon_lab(request, LETTERS[mode], PODS, mode=mode)
    env.write_policies(POLICIES)
    env.sync()
    for family in (4, 6):  # the policy as intended, and every neighbour resolved
        env.check_flows(SANITY, family)
    fuzz = FuzzLab(env)
    request.addfinalizer(fuzz.close)
    return fuzz


@pytest.fixture(scope="module")
def routed(request: pytest.FixtureRequest) -> FuzzLab:
    return fuzz_lab(request, ROUTED)


@pytest.fixture(scope="module")
def bridge(request: pytest.FixtureRequest) -> FuzzLab:
    return fuzz_lab(request, BRIDGE)


def describe(frames: list[bytes]) -> str:
    return "\n".join(f"  {Ether(f).summary()}" for f in frames)


def check_case(lab: FuzzLab, attacker: str, case: Case) -> None:
    m = marker()
    frames = case.build(lab.ends(attacker), m)
    assert frames and any(m in f for f in frames), f"{case.name}: no frame carries the marker"
    arrived = [f for f in lab.run(attacker, frames) if m in f]
    assert not arrived, (f"{len(arrived)} of the {sum(m in f for f in frames)} crafted frames of {case.name} from "
                         f"{attacker} ({ATTACKERS[attacker]}) reached {TARGET} ({lab.mode} lab):\n{describe(arrived)}")


@pytest.mark.parametrize(("attacker", "case"), params(ROUTED))
def test_routed_crafted_frames_never_reach_the_target(routed: FuzzLab, attacker: str, case: Case) -> None:
    check_case(routed, attacker, case)


@pytest.mark.parametrize(("attacker", "case"), params(BRIDGE))
def test_bridged_crafted_frames_never_reach_the_target(bridge: FuzzLab, attacker: str, case: Case) -> None:
    check_case(bridge, attacker, case)


FRAGMENTED = {"v4": P.allowed_fragmented(4), "v6": P.allowed_fragmented(6),
              "v6-dstopt-after-fragment-header": P.allowed_fragmented(6, dstopt=True)}


def fragmented_params() -> list:  # type: ignore[type-arg]
    return [pytest.param(mode, sender, name, id=f"{mode}-{sender}-{name}")
            for mode in (ROUTED, BRIDGE) for sender in ATTACKERS for name in FRAGMENTED]


@pytest.mark.parametrize(("mode", "sender", "name"), fragmented_params())
def test_allowed_fragments_arrive_whole(request: pytest.FixtureRequest, mode: str, sender: str, name: str) -> None:
    """Nothing lost that policy allows: a datagram to the pinhole, which
    c's and e's policies allow, arrives whole when fragmented."""
    lab: FuzzLab = request.getfixturevalue(mode)
    m = marker()
    frames = FRAGMENTED[name](lab.ends(sender), m)
    arrived = [f for f in lab.run(sender, frames) if m in f]
    assert len(arrived) == len(frames), (f"{len(arrived)} of {len(frames)} fragments of an allowed datagram from "
                                         f"{sender} reached {TARGET} ({mode} lab):\n{describe(arrived)}")


@pytest.mark.parametrize("mode", [ROUTED, BRIDGE])
@pytest.mark.parametrize("attacker", list(ATTACKERS))
def test_denied_sender_is_named(request: pytest.FixtureRequest, mode: str, attacker: str) -> None:
    """The daemon's flow log names the pod whose packet was dropped, the
    pod whose policy dropped it and why; its counters count it there."""
    lab: FuzzLab = request.getfixturevalue(mode)
    ends = lab.ends(attacker)
    decider = {"c": TARGET, "e": "e"}[attacker]
    direction = pb.DIRECTION_INGRESS if decider == TARGET else pb.DIRECTION_EGRESS
    before = counter(lab, decider, direction)
    m = marker()
    assert not [f for f in lab.run(attacker, P.udp_port_allowed_elsewhere(4)(ends, m)) if m in f]
    deadline = time.monotonic() + 10
    while True:
        named = [f for f in denied_flows(lab, attacker)
                 if f.source.pod == attacker and f.source.port == ends.sport and f.destination.pod == TARGET]
        if named or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert named, f"no denied flow from {attacker}:{ends.sport} in the daemon's flow log"
    assert (named[0].endpoint, named[0].reason, named[0].direction) == (f"default/{decider}", pb.REASON_DROP_POLICY,
                                                                        direction), named[0]
    assert counter(lab, decider, direction) > before


def _stub(lab: FuzzLab, call: Callable[[pb_grpc.EnforcerStub], object]) -> object:
    assert lab.env.daemon is not None
    with grpc.insecure_channel(f"unix:{lab.env.daemon.socket}") as channel:
        return call(pb_grpc.EnforcerStub(channel))


def denied_flows(lab: FuzzLab, pod: str) -> list:  # type: ignore[type-arg]
    req = pb.StreamFlowsRequest(namespace="default", pod=pod, since_recent=True, follow=False,
                                verdict=pb.StreamFlowsRequest.VERDICT_FILTER_DENIED)
    return _stub(lab, lambda s: list(s.StreamFlows(req, timeout=10)))  # type: ignore[return-value]


def counter(lab: FuzzLab, pod: str, direction: int) -> int:
    resp = _stub(lab, lambda s: s.GetCounters(pb.GetCountersRequest(namespace="default", pod=pod), timeout=10))
    return sum(c.packets for c in resp.counters  # type: ignore[attr-defined]
               if c.direction == direction and c.reason == pb.REASON_DROP_POLICY)
