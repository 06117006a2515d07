"""Verdicts of policy entries that hold a reason (cluster policy tiers),
through BPF_PROG_TEST_RUN.

A policy entry holds the final verdict the compiler worked out (policy.h):
an Admin or Baseline Deny drops silently, counted under its own reason and
with an event naming the rule; every allowing reason passes and is tracked,
so the reply passes as ALLOW_REPLY. The peer's own identity is looked up
first, longest match, then every peer. The node's own addresses as a pod's
destination pass unless the endpoint says a cluster policy governs its
egress (EP_F_EGRESS_HOST_JUDGED); the node as a source always passes.

Each table row fixes the entries of pod A (isolated both ways), runs one
frame through one hook and asserts the verdict, the one counter that moved,
the event (reason, rule id, peer identity), then what conntrack makes of it.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass

import pytest

from enforcer.datapath.layout import (
    EP_F_EGRESS_HOST_JUDGED,
    EP_F_SELF_JUDGED,
    IDENTITY_ANY,
    IDENTITY_HOST,
)
from enforcer.datapath.reasons import Reason

from . import frames
from .harness import DIR_EGRESS, DIR_INGRESS, PEERS, POD_A, TC_ACT_SHOT, TC_ACT_UNSPEC

TCP_, UDP_ = 6, 17
FAMILIES = ["v4", "v6"]
R = Reason
PASS, DROP = True, False
OTHER = PEERS["other_pod"][2]  # 400
CIDR = PEERS["cidr"][2]        # 500
_ports = itertools.count(50000)

# An entry: (direction, peer identity, reason, protocol, port, end_port, rule id)
Entry = tuple[int, int, Reason, int | None, int | None, int | None, int]


@dataclass(frozen=True)
class Row:
    name: str
    direction: int           # the hook: DIR_EGRESS from_pod, DIR_INGRESS to_pod
    peer: str                # PEERS name
    proto: int
    port: int
    passed: bool
    reason: Reason           # the counter (A, direction, reason) and the event's
    rule_id: int = 0         # the event's (and, for a pass, conntrack's)
    entries: tuple[Entry, ...] = ()
    flags: int = 0           # endpoint flags beyond isolation
    ingress_ifindex: int = 0
    evented: bool = True     # ALLOW_HOST passes without an event
    tracked: bool = True     # a pass creates conntrack (ALLOW_HOST: no)
    peer_identity: int | None = None  # the event's, when not the ipcache's own for the peer


def e(direction: int, identity: int, reason: Reason, proto: int | None = None, port: int | None = None,
      end_port: int | None = None, rule_id: int = 77) -> Entry:
    return (direction, identity, reason, proto, port, end_port, rule_id)


EG, IN = DIR_EGRESS, DIR_INGRESS

# 1. Every reason an entry may hold, in both directions: the peer's own entry.
REASON_ROWS = [
    Row(f"{d_name}-{reason.name}", d, "other_pod", TCP_, 80, passed, reason, rule_id=40 + i,
        entries=(e(d, OTHER, reason, TCP_, 80, rule_id=40 + i),))
    for d_name, d in (("egress", EG), ("ingress", IN))
    for i, (reason, passed) in enumerate([
        (R.DROP_ADMIN, DROP), (R.DROP_BASELINE, DROP), (R.DROP_POLICY, DROP),
        (R.ALLOW_ADMIN, PASS), (R.ALLOW_BASELINE, PASS), (R.ALLOW_NOT_ISOLATED, PASS), (R.ALLOW_POLICY, PASS),
    ])
]

# 2. Precedence: the longest of the peer's own entries, then every peer's.
DENY_IN_ALLOW = (e(IN, OTHER, R.ALLOW_POLICY, TCP_, rule_id=1),           # TCP, every port
                 e(IN, OTHER, R.DROP_ADMIN, TCP_, 80, rule_id=2),          # ... but 80
                 e(IN, OTHER, R.ALLOW_ADMIN, rule_id=5),                   # every protocol
                 e(IN, OTHER, R.DROP_BASELINE, UDP_, 8000, 8003, rule_id=6))  # ... but UDP 8000-8003
ALLOW_OVER_ANY_DENY = (e(EG, IDENTITY_ANY, R.DROP_BASELINE, rule_id=3),   # every peer: deny all
                       e(EG, OTHER, R.ALLOW_ADMIN, TCP_, 80, rule_id=4))   # other_pod: TCP 80
OWN_DENY_OVER_LONGER_ANY_ALLOW = (e(EG, IDENTITY_ANY, R.ALLOW_BASELINE, TCP_, 80, rule_id=7),
                                  e(EG, OTHER, R.DROP_ADMIN, rule_id=8))
PRECEDENCE_ROWS = [
    Row("deny-port-inside-allow", IN, "other_pod", TCP_, 80, DROP, R.DROP_ADMIN, 2, DENY_IN_ALLOW),
    Row("allow-beside-the-denied-port", IN, "other_pod", TCP_, 81, PASS, R.ALLOW_POLICY, 1, DENY_IN_ALLOW),
    Row("deny-range-inside-protocol-wide-allow", IN, "other_pod", UDP_, 8002, DROP, R.DROP_BASELINE, 6,
        DENY_IN_ALLOW),
    Row("allow-past-the-denied-range", IN, "other_pod", UDP_, 8004, PASS, R.ALLOW_ADMIN, 5, DENY_IN_ALLOW),
    Row("another-identity-misses", IN, "cidr", TCP_, 81, DROP, R.DROP_POLICY, 0, DENY_IN_ALLOW),
    Row("own-allow-over-every-peer-deny", EG, "other_pod", TCP_, 80, PASS, R.ALLOW_ADMIN, 4, ALLOW_OVER_ANY_DENY),
    Row("own-entries-miss-then-every-peer-denies", EG, "other_pod", TCP_, 81, DROP, R.DROP_BASELINE, 3,
        ALLOW_OVER_ANY_DENY),
    Row("another-identity-meets-every-peer-deny", EG, "cidr", TCP_, 80, DROP, R.DROP_BASELINE, 3,
        ALLOW_OVER_ANY_DENY),
    Row("own-wide-deny-before-every-peer-longer-allow", EG, "other_pod", TCP_, 80, DROP, R.DROP_ADMIN, 8,
        OWN_DENY_OVER_LONGER_ANY_ALLOW),
    Row("every-peer-allow-for-another-identity", EG, "cidr", TCP_, 80, PASS, R.ALLOW_BASELINE, 7,
        OWN_DENY_OVER_LONGER_ANY_ALLOW),
]

# 3. The node's own addresses (IDENTITY_HOST in the ipcache).
HOST_DENY = (e(EG, IDENTITY_HOST, R.DROP_ADMIN, TCP_, 10250, rule_id=9),
             e(IN, IDENTITY_HOST, R.DROP_ADMIN, rule_id=10),
             e(IN, IDENTITY_ANY, R.DROP_ADMIN, rule_id=11))
HOST_ALLOW = (e(EG, IDENTITY_HOST, R.ALLOW_HOST, TCP_, 10250, rule_id=12),
              e(EG, IDENTITY_ANY, R.DROP_ADMIN, rule_id=13))
JUDGED = EP_F_EGRESS_HOST_JUDGED
HOST_ROWS = [
    Row("egress-to-node-passes-unjudged", EG, "host", TCP_, 10250, PASS, R.ALLOW_HOST, entries=HOST_DENY,
        evented=False, tracked=False),
    Row("egress-to-node-judged-denied", EG, "host", TCP_, 10250, DROP, R.DROP_ADMIN, 9, HOST_DENY, JUDGED),
    Row("egress-to-node-judged-allowed", EG, "host", TCP_, 10250, PASS, R.ALLOW_HOST, 12, HOST_ALLOW, JUDGED),
    Row("egress-to-node-judged-other-port-every-peer-denies", EG, "host", TCP_, 22, DROP, R.DROP_ADMIN, 13,
        HOST_ALLOW, JUDGED),
    Row("egress-to-node-judged-no-entry", EG, "host", TCP_, 10250, DROP, R.DROP_POLICY, 0, (), JUDGED),
    Row("ingress-from-the-node-itself-passes-judged", IN, "host", TCP_, 8080, PASS, R.ALLOW_HOST,
        entries=HOST_DENY, flags=JUDGED | EP_F_SELF_JUDGED, evented=False, tracked=False),
    Row("ingress-from-the-node-itself-passes-unjudged", IN, "host", TCP_, 8080, PASS, R.ALLOW_HOST,
        entries=HOST_DENY, evented=False, tracked=False),
    # Forwarded with a node address (masqueraded): not the node; no host
    # entry applies (the ipBlock identity does, here none: every peer).
    Row("ingress-masqueraded-node-address-is-judged-as-an-address", IN, "host", TCP_, 8080, DROP, R.DROP_ADMIN,
        11, HOST_DENY, JUDGED, ingress_ifindex=5, peer_identity=2),
]

ROWS = REASON_ROWS + PRECEDENCE_ROWS + HOST_ROWS


# 4. Audit mode (policy.h): an entry whose enforced verdict allows may say
# what the policies in audit mode would do instead. The packet passes and is
# tracked under the enforced verdict (what revocation judges), counted as
# ALLOW_AUDIT, and its one event is the drop it would be (EVENT_AUDIT).
@dataclass(frozen=True)
class AuditRow:
    name: str
    direction: int
    enforced: Reason
    enforced_rule: int
    audit: tuple[Reason, int] | None  # (would-drop reason, its rule): None, an ordinary allow
    peer: str = "other_pod"
    identity: int = OTHER


AUDIT_ROWS = [
    AuditRow("audited-default-deny-beside-no-policy", EG, R.ALLOW_NOT_ISOLATED, 0, (R.DROP_POLICY, 0)),
    AuditRow("audited-admin-deny-beside-an-allow", IN, R.ALLOW_POLICY, 31, (R.DROP_ADMIN, 32)),
    AuditRow("audited-baseline-deny-every-peer", IN, R.ALLOW_NOT_ISOLATED, 0, (R.DROP_BASELINE, 33),
             peer="cidr", identity=IDENTITY_ANY),
    AuditRow("audited-to-the-judged-node", EG, R.ALLOW_HOST, 0, (R.DROP_ADMIN, 34), peer="host",
             identity=IDENTITY_HOST),
    AuditRow("no-audit-an-ordinary-allow", EG, R.ALLOW_ADMIN, 35, None),
]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("row", AUDIT_ROWS, ids=lambda r: r.name)
def test_audited_entries_pass_and_report_the_drop(dp, fam, row):
    dp.set_pod(POD_A, ingress=True, egress=True, flags=JUDGED)
    dp.entry(POD_A, row.direction, row.identity, row.enforced, TCP_, 80, rule_id=row.enforced_rule,
             audit=row.audit)
    sp = next(_ports)
    probe = Row(row.name, row.direction, row.peer, TCP_, 80, PASS, row.enforced)

    out = run(dp, probe, fam, sp)
    assert out.retval == TC_ACT_UNSPEC, (row.name, out)
    counted = R.ALLOW_AUDIT if row.audit else row.enforced
    assert out.reasons == {(POD_A["id"], row.direction, counted): 1}, (row.name, out.reasons)
    (ev,) = out.events
    if row.audit:
        assert (ev.allowed, ev.audit, ev.reason, ev.rule_id) == (True, True, *row.audit), row.name
    else:
        assert (ev.allowed, ev.audit, ev.reason, ev.rule_id) == (True, False, row.enforced, row.enforced_rule)
    (ct,) = ct_entries(dp, sp)
    assert (ct.reason, ct.rule_id) == (row.enforced, row.enforced_rule), row.name
    # More of the connection, and its reply, are conntrack's: no second
    # audit event for one connection.
    back = run(dp, probe, fam, sp, reply=True)
    assert back.retval == TC_ACT_UNSPEC and back.events == [], (row.name, back)


def peer(name: str, fam: str) -> str:
    v4, v6, _ = PEERS[name]
    return v4 if fam == "v4" else v6


def frame(proto: int, src: str, dst: str, sp: int, dport: int, flags: str = "S") -> bytes:
    return frames.tcp(src, dst, sp, dport, flags) if proto == TCP_ else frames.udp(src, dst, sp, dport)


def ct_entries(dp, sp: int) -> list:  # type: ignore[no-untyped-def,type-arg]
    """Conntrack entries of the flow with A's (or the peer's) port sp."""
    port = socket.htons(sp)
    return [v for k, v in dp.maps.conntrack() if port in (k.pod_port, k.peer_port)]


def run(dp, row: Row, fam: str, sp: int, reply: bool = False):  # type: ignore[no-untyped-def]
    a, p = POD_A[fam], peer(row.peer, fam)
    outgoing = (row.direction == DIR_EGRESS) != reply
    if outgoing:
        src, dst, s, d = a, p, sp, row.port
        if reply:
            s, d = d, s
        return dp.egress(frame(row.proto, src, dst, s, d, "SA" if reply else "S"))
    src, dst, s, d = p, a, sp, row.port
    if reply:
        src, dst, s, d = p, a, row.port, sp
    return dp.ingress(frame(row.proto, src, dst, s, d, "SA" if reply else "S"), ingress_ifindex=row.ingress_ifindex)


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_entry_reasons(dp, fam, row):
    dp.set_pod(POD_A, ingress=True, egress=True, flags=row.flags)
    for direction, identity, reason, proto, port, end_port, rule_id in row.entries:
        dp.entry(POD_A, direction, identity, reason, proto, port, end_port, rule_id)
    sp = next(_ports)

    out = run(dp, row, fam, sp)
    assert out.retval == (TC_ACT_UNSPEC if row.passed else TC_ACT_SHOT), (row.name, out)
    assert out.reasons == {(POD_A["id"], row.direction, row.reason): 1}, (row.name, out.reasons)
    if row.evented:
        (ev,) = out.events
        want_peer = row.peer_identity if row.peer_identity is not None else PEERS[row.peer][2]
        assert (ev.allowed, ev.reason, ev.rule_id, ev.peer_identity) == (row.passed, row.reason, row.rule_id,
                                                                          want_peer), row.name
        assert ev.direction == ("egress" if row.direction == DIR_EGRESS else "ingress")
        assert ev.endpoint_id == POD_A["id"] and ev.dport == row.port
    else:
        assert out.events == [], row.name

    if not row.passed:
        # Silent: only the verdict, nothing tracked; the retransmission is
        # judged, and dropped, again.
        assert ct_entries(dp, sp) == [], row.name
        again = run(dp, row, fam, sp)
        assert again.retval == TC_ACT_SHOT and again.reasons == {(POD_A["id"], row.direction, row.reason): 1}
        return
    if not row.tracked:
        assert ct_entries(dp, sp) == [], row.name
        return
    (ct,) = ct_entries(dp, sp)
    assert (ct.reason, ct.rule_id, ct.origin) == (row.reason, row.rule_id, row.direction), row.name
    # A is isolated the other way with no entry there: only conntrack lets
    # the reply through.
    back = run(dp, row, fam, sp, reply=True)
    other_way = DIR_INGRESS if row.direction == DIR_EGRESS else DIR_EGRESS
    assert back.retval == TC_ACT_UNSPEC, (row.name, back)
    assert back.reasons == {(POD_A["id"], other_way, R.ALLOW_REPLY): 1}, (row.name, back.reasons)


def test_every_reason_an_entry_may_hold_is_covered():
    """The rows cover each verdict the compiler writes into entries."""
    covered = {r.reason for r in REASON_ROWS}
    assert covered >= {R.DROP_ADMIN, R.DROP_BASELINE, R.DROP_POLICY, R.ALLOW_ADMIN, R.ALLOW_BASELINE,
                       R.ALLOW_NOT_ISOLATED, R.ALLOW_POLICY}
    assert {r.direction for r in REASON_ROWS} == {DIR_EGRESS, DIR_INGRESS}
