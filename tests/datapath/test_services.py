"""Egress to a Service is judged after DNAT (bpf/lib/services.h), through
BPF_PROG_TEST_RUN: from_pod defers and marks, to_pod / to_network judge
the marked packet with its translated destination, and the connection is
then tracked under the Service address so more of it and its replies take
the established path.

The world is the harness's (tests/datapath/harness.py): POD_A is the
client, POD_B a local backend, "other_pod" a backend on another node.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import socket

import pytest

from enforcer.datapath.layout import (
    CT_F_SERVICE,
    EP_F_SELF_JUDGED,
    IDENTITY_ANY,
    IDENTITY_SELF,
    CtKey,
    SvcPendingKey,
    addr_bytes,
    family_of,
)
from enforcer.datapath.reasons import Reason

from . import frames
from .harness import DIR_EGRESS, DIR_INGRESS, PEERS, POD_A, POD_B, TC_ACT_SHOT, TC_ACT_UNSPEC

TCP_, UDP_, SCTP_ = 6, 17, 132
FAMILIES = ["v4", "v6"]
PROTOS = {"tcp": TCP_, "udp": UDP_, "sctp": SCTP_}
VIP = {"v4": "10.96.0.10", "v6": "fd96::10"}
VIP2 = {"v4": "10.96.0.20", "v6": "fd96::20"}
NODE_CIDR = {"v4": "10.9.0.0/16", "v6": "fd09::/64"}  # holds the node address "host"
NODE_CIDR_ID = 600
MARK_SHIFT = 20
OTHER_BITS = 0x4000  # kube-proxy's masquerade bit: must survive
_sports = itertools.count(40000)


def mark_of(pod: dict) -> int:
    return pod["id"] << MARK_SHIFT


def frame(proto: int, src: str, dst: str, sp: int, dp: int, flags: str = "S") -> bytes:
    if proto == TCP_:
        return frames.tcp(src, dst, sp, dp, flags)
    return {UDP_: frames.udp, SCTP_: frames.sctp}[proto](src, dst, sp, dp)


def peer(name: str, fam: str) -> str:
    v4, v6, _ = PEERS[name]
    return v4 if fam == "v4" else v6


def counters(out) -> dict:
    return dict(out.reasons)


def service_ct(dp, fam: str, proto: int, client: str, sp: int, vip: str, vport: int):
    ip = ipaddress.ip_address(client)
    key = CtKey(pod=addr_bytes(ip), peer=addr_bytes(ipaddress.ip_address(vip)), ifindex=1,
                pod_port=socket.htons(sp), peer_port=socket.htons(vport), family=family_of(ip), proto=proto)
    return dp.maps["conntrack"].lookup(key)


@pytest.fixture
def svc(dp):
    """A client A whose egress only allows POD_B's identity on 8080 and
    other_pod's on 80; Service frontends VIP:80 and VIP2:80 for every
    protocol."""
    dp.set_pod(POD_A, egress=True)
    for proto in PROTOS.values():
        dp.allow(POD_A, DIR_EGRESS, POD_B["identity"], proto, 8080, rule_id=21)
        dp.allow(POD_A, DIR_EGRESS, PEERS["other_pod"][2], proto, 80, rule_id=22)
        for fam in FAMILIES:
            dp.maps.set_service(VIP[fam], proto, 80)
            dp.maps.set_service(VIP2[fam], proto, 80)
    return dp


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", list(PROTOS.values()), ids=list(PROTOS))
def test_local_backend_allowed_then_tracked_under_the_service_address(svc, fam, proto):
    a, b, vip, sp = POD_A[fam], POD_B[fam], VIP[fam], next(_sports)

    out = svc.egress(frame(proto, a, vip, sp, 80), mark=OTHER_BITS)
    assert out.retval == TC_ACT_UNSPEC
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED): 1}
    assert out.events == []  # the verdict comes after DNAT
    assert out.mark == mark_of(POD_A) | OTHER_BITS

    # kube-proxy DNATs to B:8080; B's to_pod judges A's egress, then B's ingress.
    out = svc.ingress(frame(proto, a, b, sp, 8080), mark=out.mark)
    assert out.retval == TC_ACT_UNSPEC
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_POLICY): 1,
                             (POD_B["id"], DIR_INGRESS, Reason.ALLOW_NOT_ISOLATED): 1}
    egress_ev = [e for e in out.events if e.direction == "egress"]
    assert [(e.endpoint_id, e.rule_id, str(e.dst), e.dport) for e in egress_ev] == [(POD_A["id"], 21, b, 8080)]
    assert out.mark == OTHER_BITS  # ours cleared, others' kept

    entry = service_ct(svc, fam, proto, a, sp, vip, 80)
    assert entry is not None and entry.flags & CT_F_SERVICE and entry.origin == DIR_EGRESS

    # More of it, and the un-DNATed reply, take the established path.
    out = svc.egress(frame(proto, a, vip, sp, 80, flags="A"))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_ESTABLISHED): 1} and out.mark == 0
    out = svc.ingress(frame(proto, vip, a, 80, sp, flags="SA"))
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_REPLY): 1}


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", list(PROTOS.values()), ids=list(PROTOS))
def test_local_backend_denied_by_the_senders_egress(svc, fam, proto):
    a, b, vip, sp = POD_A[fam], POD_B[fam], VIP[fam], next(_sports)
    out = svc.egress(frame(proto, a, vip, sp, 80))
    # DNAT to B:9090, which A's egress does not allow (only 8080).
    out = svc.ingress(frame(proto, a, b, sp, 9090), mark=out.mark)
    assert out.retval == TC_ACT_SHOT
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY): 1}
    (ev,) = out.events
    assert (ev.allowed, ev.direction, ev.endpoint_id, str(ev.dst), ev.dport) == (False, "egress", POD_A["id"], b, 9090)
    assert service_ct(svc, fam, proto, a, sp, vip, 80) is None
    # The next packet is deferred again, not passed as established.
    out = svc.egress(frame(proto, a, vip, sp, 80))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_a_drop_after_dnat_leaves_no_pending_entry_behind(svc, fam):
    """The dropped flow's client port, reused towards another Service, is
    tracked as usual: a pending entry left by the drop would have made the
    new flow ambiguous, untracked, and its replies to an ingress-isolated
    client dropped."""
    a, b, sp = POD_A[fam], POD_B[fam], next(_sports)
    svc.set_pod(POD_A, ingress=True, egress=True)  # the client isolated both ways
    out = svc.egress(frame(TCP_, a, VIP[fam], sp, 80))
    out = svc.ingress(frame(TCP_, a, b, sp, 9090), mark=out.mark)  # denied after DNAT
    assert out.retval == TC_ACT_SHOT
    out = svc.egress(frame(TCP_, a, VIP2[fam], sp, 80))  # the same client port, another Service
    out = svc.ingress(frame(TCP_, a, b, sp, 8080), mark=out.mark)
    assert out.retval == TC_ACT_UNSPEC
    assert service_ct(svc, fam, TCP_, a, sp, VIP2[fam], 80) is not None
    out = svc.ingress(frame(TCP_, VIP2[fam], a, 80, sp, flags="SA"))  # the reply, un-DNATed
    assert out.retval == TC_ACT_UNSPEC
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_REPLY): 1}


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("backend,port,passed", [
    ("other_pod", 80, True),    # allowed by rule 22
    ("other_pod", 81, False),   # wrong port
    ("cidr", 80, False),        # a backend address A may not reach
])
def test_remote_backend_judged_on_the_node_interface(svc, fam, backend, port, passed):
    a, vip, sp = POD_A[fam], VIP[fam], next(_sports)
    out = svc.egress(frame(TCP_, a, vip, sp, 80))
    out = svc.to_network(frame(TCP_, a, peer(backend, fam), sp, port), mark=out.mark)
    assert out.retval == (TC_ACT_UNSPEC if passed else TC_ACT_SHOT)
    reason = Reason.ALLOW_POLICY if passed else Reason.DROP_POLICY
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, reason): 1}
    assert (service_ct(svc, fam, TCP_, a, sp, vip, 80) is not None) == passed


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("where", ["local backend", "remote backend"])
def test_an_audited_drop_after_dnat_passes_and_is_reported(svc, fam, where):
    """The sender's egress judged after DNAT reads the entry's audited
    verdict too: the connection passes, is tracked under the Service
    address, and its event is the drop a policy in audit mode would make."""
    a, vip, sp = POD_A[fam], VIP[fam], next(_sports)
    backend, port, hook = ((POD_B, 8080, svc.ingress) if where == "local backend"
                           else ({"identity": PEERS["other_pod"][2]}, 80, svc.to_network))
    svc.entry(POD_A, DIR_EGRESS, backend["identity"], Reason.ALLOW_POLICY, TCP_, port, rule_id=23,
              audit=(Reason.DROP_ADMIN, 24))
    dst = POD_B[fam] if where == "local backend" else peer("other_pod", fam)
    out = svc.egress(frame(TCP_, a, vip, sp, 80))
    out = hook(frame(TCP_, a, dst, sp, port), mark=out.mark)
    assert out.retval == TC_ACT_UNSPEC
    assert counters(out)[(POD_A["id"], DIR_EGRESS, Reason.ALLOW_AUDIT)] == 1
    (ev,) = [e for e in out.events if e.direction == "egress"]
    assert (ev.allowed, ev.audit, ev.reason, ev.rule_id, str(ev.dst)) == (True, True, Reason.DROP_ADMIN, 24, dst)
    entry = service_ct(svc, fam, TCP_, a, sp, vip, 80)
    assert entry is not None and (entry.reason, entry.rule_id) == (Reason.ALLOW_POLICY, 23)


@pytest.mark.parametrize("fam", FAMILIES)
def test_node_interface_ignores_unmarked_packets(svc, fam):
    """Everything but a deferred packet passes to_network untouched and
    uncounted, denied-looking or not."""
    out = svc.to_network(frame(TCP_, POD_A[fam], peer("cidr", fam), next(_sports), 80), mark=OTHER_BITS)
    assert out.retval == TC_ACT_UNSPEC and counters(out) == {} and out.events == []
    assert out.mark == OTHER_BITS


@pytest.mark.parametrize("fam", FAMILIES)
def test_snat_on_the_way_judges_every_packet(svc, fam):
    """NodePort/hairpin traffic is also SNATed: the client address is gone,
    so the verdict holds but nothing is tracked under the Service address;
    the next packet is judged again."""
    a, vip, sp = POD_A[fam], VIP[fam], next(_sports)
    for _ in range(2):
        out = svc.egress(frame(TCP_, a, vip, sp, 80))
        assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED): 1}
        out = svc.to_network(frame(TCP_, peer("host", fam), peer("other_pod", fam), 61000, 80), mark=out.mark)
        assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_POLICY): 1}
    assert service_ct(svc, fam, TCP_, a, sp, vip, 80) is None


@pytest.mark.parametrize("fam", FAMILIES)
def test_one_client_port_to_two_services_is_never_tracked(svc, fam):
    """Same UDP source port towards two Service addresses: which one a
    translated packet came from is unknown, so neither is tracked and every
    packet is judged after DNAT."""
    a, b, sp = POD_A[fam], POD_B[fam], next(_sports)
    m1 = svc.egress(frame(UDP_, a, VIP[fam], sp, 80)).mark
    m2 = svc.egress(frame(UDP_, a, VIP2[fam], sp, 80)).mark
    for m in (m1, m2):
        out = svc.ingress(frame(UDP_, a, b, sp, 8080), mark=m)
        assert (POD_A["id"], DIR_EGRESS, Reason.ALLOW_POLICY) in counters(out)
    assert service_ct(svc, fam, UDP_, a, sp, VIP[fam], 80) is None
    assert service_ct(svc, fam, UDP_, a, sp, VIP2[fam], 80) is None


@pytest.mark.parametrize("fam", FAMILIES)
def test_sender_gone_is_dropped(svc, fam):
    out = svc.ingress(frame(TCP_, POD_A[fam], POD_B[fam], next(_sports), 8080), mark=77 << MARK_SHIFT)
    assert out.retval == TC_ACT_SHOT
    assert counters(out) == {(0, DIR_EGRESS, Reason.DROP_UNKNOWN_ENDPOINT): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_not_a_frontend_port_is_judged_at_the_pod(svc, fam):
    """VIP:81 is no Service port: judged on the spot like any address."""
    out = svc.egress(frame(TCP_, POD_A[fam], VIP[fam], next(_sports), 81))
    assert out.retval == TC_ACT_SHOT and out.mark == 0
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_not_isolated_sender_is_still_deferred_and_then_allowed(dp, fam):
    dp.maps.set_service(VIP[fam], TCP_, 80)
    a, sp = POD_A[fam], next(_sports)
    out = dp.egress(frame(TCP_, a, VIP[fam], sp, 80))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED): 1}
    out = dp.ingress(frame(TCP_, a, POD_B[fam], sp, 8080), mark=out.mark)
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_NOT_ISOLATED): 1,
                             (POD_B["id"], DIR_INGRESS, Reason.ALLOW_NOT_ISOLATED): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_connectionless_service_entries_expire_before_netfilters(svc, fam):
    """UDP under a Service address lives 25 s (< netfilter's 30 s), a
    direct UDP flow 60 s."""
    a, b, sp = POD_A[fam], POD_B[fam], next(_sports)
    m = svc.egress(frame(UDP_, a, VIP[fam], sp, 80)).mark
    svc.ingress(frame(UDP_, a, b, sp, 8080), mark=m)
    service = service_ct(svc, fam, UDP_, a, sp, VIP[fam], 80)
    svc.egress(frame(UDP_, a, b, sp + 1, 8080))
    direct = service_ct(svc, fam, UDP_, a, sp + 1, b, 8080)
    assert service is not None and direct is not None
    gap_s = (direct.expires_ns - service.expires_ns) / 1e9
    assert 34 <= gap_s <= 36, gap_s


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("ingress_ifindex,isolated,allow_node_cidr,passed,reason", [
    (0, True, False, True, Reason.ALLOW_HOST),      # the node itself: kubelet probes
    (5, False, False, True, Reason.ALLOW_NOT_ISOLATED),
    (5, True, False, False, Reason.DROP_POLICY),   # masqueraded: a plain address
    (5, True, True, True, Reason.ALLOW_POLICY),    # ... matched by ipBlock
])
def test_node_address_as_source(dp, fam, ingress_ifindex, isolated, allow_node_cidr, passed, reason):
    """A node address as source is the node only when the node sent the
    packet; forwarded and masqueraded (NodePort, hairpin) it is an address
    like any other, matched by ipBlock."""
    dp.maps.set_identity(NODE_CIDR[fam], NODE_CIDR_ID)
    dp.set_pod(POD_B, ingress=isolated)
    if allow_node_cidr:
        dp.allow(POD_B, DIR_INGRESS, NODE_CIDR_ID, TCP_, 80, rule_id=31)
    out = dp.ingress(frame(TCP_, peer("host", fam), POD_B[fam], next(_sports), 80), ingress_ifindex=ingress_ifindex)
    assert out.retval == (TC_ACT_UNSPEC if passed else TC_ACT_SHOT)
    assert counters(out) == {(POD_B["id"], DIR_INGRESS, reason): 1}
    if reason in (Reason.ALLOW_POLICY, Reason.DROP_POLICY):
        (ev,) = out.events
        assert ev.peer_identity == NODE_CIDR_ID


def test_pending_entry_is_consumed(svc):
    a, b, sp = POD_A["v4"], POD_B["v4"], next(_sports)
    m = svc.egress(frame(TCP_, a, VIP["v4"], sp, 80)).mark
    pk = SvcPendingKey(client=addr_bytes(ipaddress.ip_address(a)), client_port=socket.htons(sp), family=4, proto=TCP_)
    assert svc.maps["svc_pending"].lookup(pk) is not None
    svc.ingress(frame(TCP_, a, b, sp, 8080), mark=m)
    assert svc.maps["svc_pending"].lookup(pk) is None
    assert ctypes.sizeof(pk) == 20


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("proto", [TCP_, UDP_], ids=["tcp", "udp"])
def test_hairpin_to_itself_through_a_service_passes_and_is_tracked(dp, fam, proto):
    """A isolated both ways, no policy at all: A -> its own Service, DNATed
    back to A and masqueraded to the node's address. A's traffic to itself
    is no policy's business; the rest of it and the replies are
    established."""
    dp.set_pod(POD_A, ingress=True, egress=True)
    dp.maps.set_service(VIP[fam], proto, 80)
    a, node, vip, sp = POD_A[fam], peer("host", fam), VIP[fam], next(_sports)
    m = dp.egress(frame(proto, a, vip, sp, 80)).mark
    assert m == mark_of(POD_A)
    out = dp.ingress(frame(proto, node, a, sp, 8080), mark=m, ingress_ifindex=5)
    assert out.retval == TC_ACT_UNSPEC
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_SELF): 1}
    assert service_ct(dp, fam, proto, a, sp, vip, 80) is not None
    # A answers the masqueraded source (marked: its own answer); the
    # un-NATed answer reaches A from the VIP.
    out = dp.egress(frame(proto, a, node, 8080, sp, flags="SA"))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_REPLY): 1}
    assert out.mark == mark_of(POD_A)
    out = dp.ingress(frame(proto, vip, a, 80, sp, flags="SA"), mark=out.mark)
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_SELF): 1}
    # Masquerade kept the port here: tracked under the VIP as well.
    out = dp.ingress(frame(proto, vip, a, 80, sp, flags="A"))
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_REPLY): 1}
    # More of it: established at from_pod (no mark) and at to_pod.
    out = dp.egress(frame(proto, a, vip, sp, 80, flags="A"))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_ESTABLISHED): 1} and out.mark == 0
    out = dp.ingress(frame(proto, node, a, sp, 8080, flags="A"), ingress_ifindex=5)
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_ESTABLISHED): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_hairpin_with_a_masquerade_that_changed_the_port(dp, fam):
    """kube-proxy masquerades with --random-fully: the client port changes,
    so nothing can be tracked under the Service address; the answer is
    still the pod's own, known by the mark from_pod put on it."""
    dp.set_pod(POD_A, ingress=True, egress=True)
    dp.maps.set_service(VIP[fam], TCP_, 80)
    a, node, vip, sp = POD_A[fam], peer("host", fam), VIP[fam], next(_sports)
    m = dp.egress(frame(TCP_, a, vip, sp, 80)).mark
    out = dp.ingress(frame(TCP_, node, a, 61000, 8080), mark=m, ingress_ifindex=5)
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_SELF): 1}
    assert service_ct(dp, fam, TCP_, a, sp, vip, 80) is None
    out = dp.egress(frame(TCP_, a, node, 8080, 61000, flags="SA"))
    assert out.mark == mark_of(POD_A)
    out = dp.ingress(frame(TCP_, vip, a, 80, sp, flags="SA"), mark=out.mark)
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_SELF): 1}
    # Without the mark, the same packet is a stranger from the VIP.
    out = dp.ingress(frame(TCP_, vip, a, 80, sp + 1, flags="SA"))
    assert out.retval == TC_ACT_SHOT


# A cluster policy selecting the pod (EP_F_SELF_JUDGED) judges its hairpin
# with peer IDENTITY_SELF, egress then ingress: (direction, peer, reason,
# rule id) entries; the verdict; the counter (direction, reason) that moves
# and the drop event's rule id.
R = Reason
SELF_ALLOWED = ((DIR_EGRESS, IDENTITY_SELF, R.ALLOW_SELF, 0), (DIR_INGRESS, IDENTITY_SELF, R.ALLOW_SELF, 0))
HAIRPIN_CASES = [
    pytest.param(EP_F_SELF_JUDGED, SELF_ALLOWED, True, (DIR_INGRESS, R.ALLOW_SELF), 0, id="judged-allowed"),
    pytest.param(EP_F_SELF_JUDGED, ((DIR_EGRESS, IDENTITY_SELF, R.DROP_ADMIN, 61),
                                    (DIR_INGRESS, IDENTITY_SELF, R.ALLOW_SELF, 0)),
                 False, (DIR_EGRESS, R.DROP_ADMIN), 61, id="egress-denied-by-admin"),
    pytest.param(EP_F_SELF_JUDGED, ((DIR_EGRESS, IDENTITY_SELF, R.ALLOW_ADMIN, 62),
                                    (DIR_INGRESS, IDENTITY_SELF, R.DROP_BASELINE, 63)),
                 False, (DIR_INGRESS, R.DROP_BASELINE), 63, id="ingress-denied-by-baseline"),
    pytest.param(EP_F_SELF_JUDGED, ((DIR_EGRESS, IDENTITY_SELF, R.ALLOW_ADMIN, 64),
                                    (DIR_INGRESS, IDENTITY_ANY, R.DROP_ADMIN, 65)),
                 False, (DIR_INGRESS, R.DROP_ADMIN), 65, id="ingress-denied-by-every-peer-entry"),
    # No ingress entry at all: NetworkPolicy's default deny, which no rule
    # decided (rule 0, not the egress entry's).
    pytest.param(EP_F_SELF_JUDGED, ((DIR_EGRESS, IDENTITY_SELF, R.ALLOW_ADMIN, 66),),
                 False, (DIR_INGRESS, R.DROP_POLICY), 0, id="ingress-entry-missing"),
    pytest.param(0, ((DIR_EGRESS, IDENTITY_SELF, R.DROP_ADMIN, 67), (DIR_INGRESS, IDENTITY_SELF, R.DROP_ADMIN, 68)),
                 True, (DIR_INGRESS, R.ALLOW_SELF), 0, id="not-judged-without-the-flag"),
]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("flags,entries,passed,counter,rule_id", HAIRPIN_CASES)
def test_hairpin_judged_as_its_own_peer(dp, fam, flags, entries, passed, counter, rule_id):
    """A isolated both ways, to its own Service, DNATed back to A and
    masqueraded: a denying entry for IDENTITY_SELF drops it silently, in
    the direction whose entry denies, with an event naming the rule; else it
    passes as ALLOW_SELF and the answer is tracked."""
    dp.set_pod(POD_A, ingress=True, egress=True, flags=flags)
    for direction, identity, reason, rid in entries:
        dp.allow(POD_A, direction, identity, rule_id=rid, reason=reason)
    dp.maps.set_service(VIP[fam], TCP_, 80)
    a, node, vip, sp = POD_A[fam], peer("host", fam), VIP[fam], next(_sports)
    out = dp.egress(frame(TCP_, a, vip, sp, 80))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED): 1}
    out = dp.ingress(frame(TCP_, node, a, sp, 8080), mark=out.mark, ingress_ifindex=5)
    assert out.retval == (TC_ACT_UNSPEC if passed else TC_ACT_SHOT)
    assert counters(out) == {(POD_A["id"], *counter): 1}
    (ev,) = out.events
    assert (ev.allowed, ev.reason, ev.rule_id, ev.peer_identity) == (passed, counter[1], rule_id, POD_A["identity"])
    if passed:
        out = dp.egress(frame(TCP_, a, node, 8080, sp, flags="SA"))
        assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_REPLY): 1}
    else:  # silent: nothing tracked, under the Service address or the masqueraded source
        port = socket.htons(sp)
        assert [k for k, _ in dp.maps.conntrack() if port in (k.pod_port, k.peer_port)] == []


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("audited_direction", [DIR_EGRESS, DIR_INGRESS])
def test_hairpin_audited_drop_passes_and_is_reported(dp, fam, audited_direction):
    """An audited drop in either of the hairpin's two lookups: the packet
    passes as ALLOW_SELF would, counted ALLOW_AUDIT, its event that drop."""
    dp.set_pod(POD_A, ingress=True, egress=True, flags=EP_F_SELF_JUDGED)
    for direction in (DIR_EGRESS, DIR_INGRESS):
        audit = (R.DROP_ADMIN, 69) if direction == audited_direction else None
        dp.entry(POD_A, direction, IDENTITY_SELF, R.ALLOW_SELF, rule_id=0, audit=audit)
    dp.maps.set_service(VIP[fam], TCP_, 80)
    a, node, vip, sp = POD_A[fam], peer("host", fam), VIP[fam], next(_sports)
    out = dp.egress(frame(TCP_, a, vip, sp, 80))
    out = dp.ingress(frame(TCP_, node, a, sp, 8080), mark=out.mark, ingress_ifindex=5)
    assert out.retval == TC_ACT_UNSPEC
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_AUDIT): 1}
    (ev,) = out.events
    assert (ev.allowed, ev.audit, ev.reason, ev.rule_id) == (True, True, R.DROP_ADMIN, 69)
    out = dp.egress(frame(TCP_, a, node, 8080, sp, flags="SA"))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_REPLY): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_own_mark_from_a_non_node_source_is_not_hairpin(dp, fam):
    """The hairpin pass needs the masqueraded node address as source: the
    same mark on a packet from elsewhere is judged as the sender's egress
    and then the receiver's ingress."""
    dp.set_pod(POD_A, ingress=True, egress=True)
    out = dp.ingress(frame(TCP_, peer("cidr", fam), POD_A[fam], next(_sports), 80), mark=mark_of(POD_A))
    assert out.retval == TC_ACT_SHOT
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.DROP_POLICY): 1}


@pytest.mark.parametrize("fam", FAMILIES)
def test_policy_change_rechecks_service_connections_instead_of_cutting_them(svc, fam):
    """On a policy change the daemon cannot tell which backend a Service
    connection reached: it flags the entry, replies keep passing, and the
    next packet out is judged again after DNAT (then tracked afresh)."""
    from enforcer.datapath.layout import CT_F_RECHECK
    from enforcer.datapath.sync import revoke_connections

    a, b, vip, sp = POD_A[fam], POD_B[fam], VIP[fam], next(_sports)
    m = svc.egress(frame(TCP_, a, vip, sp, 80)).mark
    svc.ingress(frame(TCP_, a, b, sp, 8080), mark=m)
    svc.egress(frame(TCP_, a, peer("cidr", fam), sp, 80))  # a direct flow: denied, untracked
    assert service_ct(svc, fam, TCP_, a, sp, vip, 80) is not None

    revoke_connections(svc.maps, lambda c: False, set(), recheck_services=True)  # B's ingress entry goes
    entry = service_ct(svc, fam, TCP_, a, sp, vip, 80)
    assert entry is not None and entry.flags & CT_F_RECHECK

    out = svc.ingress(frame(TCP_, vip, a, 80, sp, flags="A"))
    assert counters(out) == {(POD_A["id"], DIR_INGRESS, Reason.ALLOW_REPLY): 1}
    out = svc.egress(frame(TCP_, a, vip, sp, 80, flags="A"))
    assert counters(out) == {(POD_A["id"], DIR_EGRESS, Reason.ALLOW_SERVICE_DEFERRED): 1}
    assert out.mark == mark_of(POD_A)
    out = svc.ingress(frame(TCP_, a, b, sp, 8080, flags="A"), mark=out.mark)
    assert (POD_A["id"], DIR_EGRESS, Reason.ALLOW_POLICY) in counters(out)
    entry = service_ct(svc, fam, TCP_, a, sp, vip, 80)
    assert entry is not None and not entry.flags & CT_F_RECHECK


def test_without_recheck_service_entries_stay_and_others_are_judged(svc):
    from enforcer.datapath.sync import revoke_connections

    a, b, vip, sp = POD_A["v4"], POD_B["v4"], VIP["v4"], next(_sports)
    m = svc.egress(frame(TCP_, a, vip, sp, 80)).mark
    svc.ingress(frame(TCP_, a, b, sp, 8080), mark=m)
    svc.egress(frame(TCP_, a, b, sp + 1, 8080))  # direct, allowed by rule 21: tracked
    revoked = revoke_connections(svc.maps, lambda c: False, set())
    assert revoked >= 1
    assert service_ct(svc, "v4", TCP_, a, sp, vip, 80) is not None
    assert service_ct(svc, "v4", TCP_, a, sp + 1, b, 8080) is None
