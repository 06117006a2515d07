"""Real TCP and UDP traffic between pods in namespaces, allowed or dropped by
what the tests write into the maps. Every test runs for IPv4 and IPv6.

Pods a, b, c (endpoints 1, 2, 3; identities 256, 257, 258) and the node.
Each table row is a flow and the outcome it must have: ok (the server
answered with its name), denied (dropped, nothing came back), refused
(let through, but nothing listens on the port).
"""

from __future__ import annotations

import time

import pytest

from enforcer.datapath.layout import CT_F_SEEN_REPLY, DIR_EGRESS, addr_from_bytes
from enforcer.datapath.reasons import Reason
from tests.support.session import LabSession

from .flows import DENIED, NODE, OK, REFUSED, check_flows, flows

pytestmark = pytest.mark.lab

FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]
CIDR_IDENTITY = 1000  # what the daemon would allocate for an ipBlock


def delta(after: dict, before: dict, key: tuple[str, Reason]) -> int:
    return after.get(key, 0) - before.get(key, 0)


def counted(env: LabSession, endpoint: str | int, before: dict, at_least: dict[tuple[str, Reason], int],
            timeout: float = 5.0) -> dict:
    """The endpoint's counters once each key has grown by at least as much
    as asked (or after timeout). A probe reports a drop as silence, so a
    packet held back by a loaded machine (a neighbour lookup, say) may be
    counted after the probe has given up on it."""
    deadline = time.monotonic() + timeout
    while True:
        after = env.world.counters(endpoint)
        if all(delta(after, before, k) >= n for k, n in at_least.items()) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


@pytest.mark.parametrize("family", FAMILIES)
def test_ingress_isolation_allows_only_listed_peer_and_port(env: LabSession, family: int) -> None:
    """b is selected for ingress with one rule: from a, TCP 80."""
    w = env.world
    w.isolate("b", ingress=True)
    w.allow("b", "ingress", "a", "tcp", 80)
    before = w.counters("b")

    check_flows(env, flows(
        ("a", "b", 80, "tcp", OK),
        ("a", "b", 81, "tcp", DENIED),      # other port
        ("c", "b", 80, "tcp", DENIED),      # other peer
        ("a", "b", 80, "udp", DENIED),      # other protocol
        ("b", "a", 80, "tcp", OK),          # b's egress is not isolated
        ("a", "c", 81, "udp", OK),          # c is not isolated at all
    ), family)

    after = counted(env, "b", before, {("ingress", Reason.ALLOW_POLICY): 1, ("ingress", Reason.DROP_POLICY): 3,
                                       ("egress", Reason.ALLOW_REPLY): 1})
    assert delta(after, before, ("ingress", Reason.ALLOW_POLICY)) >= 1
    assert delta(after, before, ("ingress", Reason.DROP_POLICY)) >= 3  # one per denied flow at least
    assert delta(after, before, ("egress", Reason.ALLOW_REPLY)) >= 1  # b's answer to a

    # Adding a rule opens exactly that flow.
    w.allow("b", "ingress", "a", "udp", 80)
    check_flows(env, flows(
        ("a", "b", 80, "udp", OK),
        ("a", "b", 81, "udp", DENIED),
        ("c", "b", 80, "udp", DENIED),
    ), family)


@pytest.mark.parametrize("family", FAMILIES)
def test_egress_isolation(env: LabSession, family: int) -> None:
    """a is selected for egress: TCP 80 to b only, UDP 81 to any peer.
    Connections others open to a are not egress and still work: a's
    answers pass as replies."""
    w = env.world
    w.isolate("a", egress=True)
    w.allow("a", "egress", "b", "tcp", 80)
    w.allow("a", "egress", "any", "udp", 81)
    before = w.counters("a")

    check_flows(env, flows(
        ("a", "b", 80, "tcp", OK),
        ("a", "b", 81, "tcp", DENIED),
        ("a", "c", 80, "tcp", DENIED),
        ("a", "b", 80, "udp", DENIED),
        ("a", "b", 81, "udp", OK),          # any peer
        ("a", "c", 81, "udp", OK),
        ("b", "a", 80, "tcp", OK),          # into a: a's answers are replies
        ("c", "a", 81, "udp", OK),
    ), family)

    after = counted(env, "a", before, {("egress", Reason.ALLOW_POLICY): 3, ("egress", Reason.DROP_POLICY): 3,
                                       ("egress", Reason.ALLOW_REPLY): 2})
    assert delta(after, before, ("egress", Reason.ALLOW_POLICY)) >= 3
    assert delta(after, before, ("egress", Reason.DROP_POLICY)) >= 3
    assert delta(after, before, ("egress", Reason.ALLOW_REPLY)) >= 2


@pytest.mark.parametrize("family", FAMILIES)
def test_replies_pass_but_new_connections_the_other_way_do_not(env: LabSession, family: int) -> None:
    """a may open connections to b (TCP and UDP 80) but accepts none: the
    replies of its own connections come in, b's new connections do not."""
    w, lab = env.world, env.lab
    w.isolate("a", ingress=True, egress=True)
    rule = w.allow("a", "egress", "b", "tcp", 80)
    w.allow("a", "egress", "b", "udp", 80)
    before = w.counters("a")

    check_flows(env, flows(
        ("a", "b", 80, "tcp", OK),          # the greeting is b's reply data
        ("a", "b", 80, "udp", OK),          # the answer datagram is a reply
        ("b", "a", 80, "tcp", DENIED),
        ("b", "a", 80, "udp", DENIED),
        ("c", "a", 80, "tcp", DENIED),
    ), family)

    after = counted(env, "a", before, {("ingress", Reason.ALLOW_REPLY): 2, ("ingress", Reason.DROP_POLICY): 3})
    assert delta(after, before, ("ingress", Reason.ALLOW_REPLY)) >= 2
    assert delta(after, before, ("ingress", Reason.DROP_POLICY)) >= 3
    assert delta(after, before, ("ingress", Reason.ALLOW_POLICY)) == 0

    # The TCP connection is tracked from a's side, opened in egress by the
    # rule that allowed it, and saw its reply.
    b_ip = lab.pod("b").ip(family)
    tracked = [(k, v) for k, v in env.maps.conntrack()
               if v.endpoint_id == w.endpoint_id("a") and k.proto == 6
               and str(addr_from_bytes(k.family, k.peer)) == b_ip]
    assert tracked, "no conntrack entry for a -> b tcp"
    assert all(v.origin == DIR_EGRESS and v.rule_id == rule.rule_id for _k, v in tracked)
    assert any(v.flags & CT_F_SEEN_REPLY for _k, v in tracked)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_always_reaches_isolated_pods(env: LabSession, family: int) -> None:
    """b is isolated both ways with nothing allowed: pods cannot reach it,
    the node (kubelet probes) can."""
    w = env.world
    w.isolate("b", ingress=True, egress=True)
    before = w.counters("b")

    check_flows(env, flows(
        (NODE, "b", 80, "tcp", OK),
        (NODE, "b", 81, "udp", OK),
        ("a", "b", 80, "tcp", DENIED),
        ("b", "a", 80, "tcp", DENIED),      # b's egress
        ("b", "c", 81, "udp", DENIED),
    ), family)

    after = counted(env, "b", before, {("ingress", Reason.ALLOW_HOST): 2, ("egress", Reason.ALLOW_HOST): 2})
    assert delta(after, before, ("ingress", Reason.ALLOW_HOST)) >= 2
    assert delta(after, before, ("egress", Reason.ALLOW_HOST)) >= 2  # b's answers to the node


@pytest.mark.parametrize("direction", ["ingress", "egress"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cidr_identity(env: LabSession, family: int, direction: str) -> None:
    """An ipBlock as the datapath sees it: the pod network's CIDR maps to
    one identity, and c's own /32 (/128) entry is gone, so c's addresses
    resolve through the CIDR. a keeps its own entry, which wins the
    longest-prefix match: a is not "in the block" for the datapath."""
    w, maps = env.world, env.maps
    maps.set_identity("10.244.0.0/16", CIDR_IDENTITY)
    maps.set_identity("fd00:244::/64", CIDR_IDENTITY)
    w.forget_pod_identity("c")

    if direction == "ingress":
        w.isolate("b", ingress=True)
        w.allow("b", "ingress", CIDR_IDENTITY, "tcp", 80)
        table = flows(
            ("c", "b", 80, "tcp", OK),      # c is in the block
            ("c", "b", 81, "tcp", DENIED),  # but only port 80
            ("a", "b", 80, "tcp", DENIED),  # a's own identity wins over the CIDR
        )
    else:
        w.isolate("a", egress=True)
        w.allow("a", "egress", CIDR_IDENTITY, "tcp", 80)
        table = flows(
            ("a", "c", 80, "tcp", OK),
            ("a", "c", 80, "udp", DENIED),
            ("a", "b", 80, "tcp", DENIED),
        )
    check_flows(env, table, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_port_ranges_and_protocol_wide_rules(env: LabSession, family: int) -> None:
    """port 80 end_port 81 allows both ports and nothing beyond; a range
    over a closed port lets the RST / port unreachable back (refused,
    not denied); a rule without a port allows every port of the protocol."""
    w = env.world
    w.isolate("b", ingress=True)
    w.allow("b", "ingress", "a", "tcp", 80, end_port=81)
    check_flows(env, flows(
        ("a", "b", 80, "tcp", OK),
        ("a", "b", 81, "tcp", OK),
        ("a", "b", 82, "tcp", DENIED),
        ("a", "b", 80, "udp", DENIED),
        ("c", "b", 80, "tcp", DENIED),
    ), family)

    w.allow("b", "ingress", "a", "tcp", 82, end_port=83)
    w.allow("b", "ingress", "a", "udp")
    check_flows(env, flows(
        ("a", "b", 82, "tcp", REFUSED),     # allowed; nothing listens on 82
        ("a", "b", 84, "tcp", DENIED),
        ("a", "b", 80, "udp", OK),
        ("a", "b", 81, "udp", OK),
        ("a", "b", 82, "udp", REFUSED),     # port unreachable passes as related
        ("c", "b", 80, "udp", DENIED),
    ), family)


SPOOF_SOURCES = {
    # kind: (IPv4, IPv6) the pod sends from
    "unknown-address": ("10.244.200.1", "fd00:244::c8:1"),
    "other-pods-address": (None, None),  # pod c's addresses
}


@pytest.mark.parametrize("kind", list(SPOOF_SOURCES))
@pytest.mark.parametrize("family", FAMILIES)
def test_anti_spoofing(env: LabSession, family: int, kind: str) -> None:
    """a adds an address to its eth0 and sends from it: dropped on the way
    out of a, whatever the policy (nothing is isolated here), and counted
    as DROP_SPOOFED_SOURCE on endpoint 0 (traffic of no endpoint)."""
    w, lab = env.world, env.lab
    v4, v6 = SPOOF_SOURCES[kind]
    spoofed = (v4 if family == 4 else v6) or lab.pod("c").ip(family)
    lab.add_address("a", spoofed)
    try:
        before = w.counters(0)
        check_flows(env, flows(("a", "b", 80, "tcp", DENIED), ("a", "b", 80, "udp", DENIED)),
                    family, src_ip=spoofed)
        after = counted(env, 0, before, {("egress", Reason.DROP_SPOOFED_SOURCE): 2})
        assert delta(after, before, ("egress", Reason.DROP_SPOOFED_SOURCE)) >= 2
    finally:
        lab.del_address("a", spoofed)
    # The pod's own address still works.
    check_flows(env, flows(("a", "b", 80, "tcp", OK), ("a", "b", 80, "udp", OK)), family)
