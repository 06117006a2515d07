"""The tiers' walk and its encoding into policy map keys (compiler/tiers.py).

The encoding is checked against the walk itself: for programs built at
random and for hand-written ones, the datapath's lookup (the peer's longest
key, else every peer's, else denied: evaluate.policy_lookup) over the keys
encode() writes must give, for every identity and a sweep of protocols and
ports around every boundary, the verdict walk() gives.
"""

from __future__ import annotations

import random

import pytest

from enforcer.compiler.desired import RuleRef
from enforcer.compiler.evaluate import policy_lookup
from enforcer.compiler.tiers import ACCEPT, ADMIN, BASELINE, DENY, PASS, TierProgram, TierRule
from enforcer.datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    IDENTITY_ANY,
    IDENTITY_HOST,
    IDENTITY_SELF,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
)
from enforcer.datapath.reasons import Reason
from enforcer.model.objects import PolicyPort
from enforcer.records import PolicyMapKey, PolicyValue

R = Reason
EP = 7
POD_IDS = frozenset({300, 301})  # the pod's own identities
OTHER = 999  # an identity no rule names
UNNAMED = frozenset(range(1000, 1010))
ICMP = 1


def rule(tier: str, action: str, peers: set[int] | None, ports: tuple[PolicyPort, ...] = (), rid: int = 0,
         direction: str = "Ingress", audited: bool = False) -> TierRule:
    ref = RuleRef(f"cnp-{rid}", direction, 0, tier, "ClusterNetworkPolicy", 1, action, "")
    return TierRule(tier, action, None if peers is None else frozenset(peers), ports, rid, ref, audited)


def program(admin=(), baseline=(), np_isolated=False, np_keys=None, direction=DIR_INGRESS,
            own_ports=None, peer_ports=None, np_keys_audit=None) -> TierProgram:
    """np_keys_audit: NetworkPolicy's keys with an audited policy isolating
    the pod (its keys added to np_keys')."""
    own = own_ports or {}
    peer = peer_ports or {}
    return TierProgram(EP, direction, tuple(admin), tuple(baseline), np_isolated, dict(np_keys or {}),
                       POD_IDS, lambda n, p: own.get((n, p)),
                       lambda i, n, p: peer.get((i, n, p)),
                       np_isolated_audit=None if np_keys_audit is None else True,
                       np_keys_audit=None if np_keys_audit is None else dict(np_keys_audit))


def np_allow(ident: int, proto: int | None, port: int | None, rid: int, direction=DIR_INGRESS, bits: int = 16
             ) -> tuple[PolicyMapKey, PolicyValue]:
    if proto is None:
        key = PolicyMapKey(ident, EP, direction, 0, 0, POLICY_PREFIX_EXACT)
    elif port is None:
        key = PolicyMapKey(ident, EP, direction, proto, 0, POLICY_PREFIX_PROTO)
    else:
        key = PolicyMapKey(ident, EP, direction, proto, port, POLICY_PREFIX_PROTO + bits)
    return key, PolicyValue(rid, int(R.ALLOW_POLICY))


def probes(prog: TierProgram) -> list[tuple[int | None, int]]:
    """Protocols and ports around every boundary the program names."""
    ports = {0, 1, 22, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535}
    for r in (*prog.admin, *prog.baseline):
        for p in r.ports:
            if isinstance(p.port, int):
                end = p.end_port or p.port
                ports.update({p.port - 1, p.port, p.port + 1, end - 1, end, end + 1})
    for k in (*prog.np_keys, *(prog.np_keys_audit or ())):
        ports.update({k.port - 1, k.port, k.port + 1})
    ports = {p for p in ports if 0 <= p <= 65535}
    return [(None, 0)] + [(proto, port) for proto in (6, 17, 132) for port in sorted(ports)]


def check_encoding(prog: TierProgram, idents: set[int]) -> dict[PolicyMapKey, PolicyValue]:
    named = {i for r in (*prog.admin, *prog.baseline) if r.peers is not None for i in r.peers}
    named |= {k.identity for k in (*prog.np_keys, *(prog.np_keys_audit or ()))}
    # Most identities of a cluster are named by no rule: the largest class.
    universe = frozenset(idents | named | {OTHER} | UNNAMED) - {IDENTITY_ANY}
    keys = prog.encode(universe)
    for ident in sorted(universe | {IDENTITY_SELF} | ({IDENTITY_HOST} if prog.direction == DIR_EGRESS else set())):
        for proto, port in probes(prog):
            want = prog.verdict(ident, proto, port)
            got = policy_lookup(keys, EP, prog.direction, ident, ICMP if proto is None else proto, port)
            got = got if got is not None else PolicyValue(0, int(R.DROP_POLICY))
            assert got == want, (ident, proto, port, got, want)
            # The entry's two verdicts are the two walks': enforced, and
            # the audited drop exactly where the enforced walk allows and
            # the walk with the audited policies drops.
            enforced, audited = prog.walk(ident, proto, port), prog.walk(ident, proto, port, audit=True)
            assert (got.rule_id, got.reason) == (enforced.rule_id, enforced.reason)
            drops = {int(R.DROP_POLICY), int(R.DROP_ADMIN), int(R.DROP_BASELINE)}
            if enforced.reason not in drops and audited.reason in drops:
                assert (got.audit_rule_id, got.audit_reason) == (audited.rule_id, audited.reason), (ident, proto, port)
            else:
                assert (got.audit_rule_id, got.audit_reason) == (0, 0), (ident, proto, port)
    return keys


TCP = "TCP"
P80 = (PolicyPort(TCP, 80),)


@pytest.mark.parametrize("name, prog, cases", [
    ("first matching rule decides, not deny-wins",
     program(admin=[rule(ADMIN, ACCEPT, {400}, P80, 1), rule(ADMIN, DENY, {400}, (), 2)]),
     [(400, 6, 80, R.ALLOW_ADMIN, 1), (400, 6, 81, R.DROP_ADMIN, 2), (401, 6, 80, R.ALLOW_NOT_ISOLATED, 0)]),
    ("Admin Pass goes to NetworkPolicy, which is final when it isolates",
     program(admin=[rule(ADMIN, PASS, {400}, (), 1)], baseline=[rule(BASELINE, ACCEPT, {400}, (), 3)],
             np_isolated=True, np_keys=dict([np_allow(401, 6, 80, 9)])),
     [(400, 6, 80, R.DROP_POLICY, 0), (401, 6, 80, R.ALLOW_POLICY, 9), (401, 6, 81, R.DROP_POLICY, 0)]),
    ("NetworkPolicy not isolating: Baseline decides, Pass there is the default allow",
     program(baseline=[rule(BASELINE, PASS, {400}, P80, 1), rule(BASELINE, DENY, {400, 401}, (), 2)]),
     [(400, 6, 80, R.ALLOW_NOT_ISOLATED, 0), (400, 6, 81, R.DROP_BASELINE, 2), (401, None, 0, R.DROP_BASELINE, 2),
      (OTHER, 6, 80, R.ALLOW_NOT_ISOLATED, 0)]),
    ("Pass leaves the whole tier, not only its policy",
     program(admin=[rule(ADMIN, PASS, {400}, (), 1), rule(ADMIN, DENY, {400}, (), 2)]),
     [(400, 6, 80, R.ALLOW_NOT_ISOLATED, 0)]),
    ("port ranges are inclusive",
     program(admin=[rule(ADMIN, DENY, {400}, (PolicyPort(TCP, 1000, 2000),), 1)]),
     [(400, 6, 999, R.ALLOW_NOT_ISOLATED, 0), (400, 6, 1000, R.DROP_ADMIN, 1), (400, 6, 2000, R.DROP_ADMIN, 1),
      (400, 6, 2001, R.ALLOW_NOT_ISOLATED, 0), (400, 17, 1500, R.ALLOW_NOT_ISOLATED, 0)]),
    ("a rule without protocols matches ICMP; a port rule does not",
     program(admin=[rule(ADMIN, DENY, {400}, P80, 1), rule(ADMIN, DENY, {401}, (), 2)]),
     [(400, None, 0, R.ALLOW_NOT_ISOLATED, 0), (401, None, 0, R.DROP_ADMIN, 2)]),
    ("named port, ingress: the pod's own container port",
     program(admin=[rule(ADMIN, DENY, {400}, (PolicyPort(TCP, "web"),), 1)], own_ports={("web", TCP): 8080}),
     [(400, 6, 8080, R.DROP_ADMIN, 1), (400, 6, 80, R.ALLOW_NOT_ISOLATED, 0)]),
    ("named port, egress: the peer's container port, protocol included",
     program(admin=[rule(ADMIN, DENY, {400, 401}, (PolicyPort("UDP", "dns"),), 1, "Egress")], direction=DIR_EGRESS,
             peer_ports={(400, "dns", "UDP"): 53, (401, "dns", TCP): 53}),
     [(400, 17, 53, R.DROP_ADMIN, 1), (401, 17, 53, R.ALLOW_NOT_ISOLATED, 0), (401, 6, 53, R.ALLOW_NOT_ISOLATED, 0)]),
    ("the node: NetworkPolicy's tier allows it, a node or network rule may not",
     program(admin=[rule(ADMIN, DENY, {IDENTITY_HOST}, P80, 1, "Egress")], np_isolated=True, direction=DIR_EGRESS),
     [(IDENTITY_HOST, 6, 80, R.DROP_ADMIN, 1), (IDENTITY_HOST, 6, 81, R.ALLOW_HOST, 0),
      (OTHER, 6, 81, R.DROP_POLICY, 0)]),
    ("hairpin: the pod as its own peer; NetworkPolicy leaves it alone",
     program(admin=[rule(ADMIN, DENY, {301}, P80, 1)], np_isolated=True),
     [(IDENTITY_SELF, 6, 80, R.DROP_ADMIN, 1), (IDENTITY_SELF, 6, 81, R.ALLOW_SELF, 0),
      (301, 6, 81, R.DROP_POLICY, 0)]),
    ("fail-closed deny-all matches every peer",
     program(baseline=[rule(BASELINE, DENY, None, (), 1)]),
     [(OTHER, 6, 80, R.DROP_BASELINE, 1), (IDENTITY_SELF, None, 0, R.DROP_BASELINE, 1)]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_walk_and_encoding(name, prog, cases):
    keys = check_encoding(prog, {c[0] for c in cases})
    for ident, proto, port, reason, rid in cases:
        assert prog.walk(ident, proto, port) == PolicyValue(rid, int(reason)), name
        got = policy_lookup(keys, EP, prog.direction, ident, ICMP if proto is None else proto, port)
        got = got if got is not None else PolicyValue(0, int(R.DROP_POLICY))  # a miss: the default deny
        assert got == PolicyValue(rid, int(reason)), (name, ident, proto, port)


def test_a_peer_no_rule_singles_out_costs_no_key():
    prog = program(admin=[rule(ADMIN, DENY, {400}, P80, 1)], baseline=[rule(BASELINE, ACCEPT, {401}, (), 2)])
    keys = check_encoding(prog, set())
    assert {k.identity for k in keys} <= {IDENTITY_ANY, 400, 401}
    # every peer: one catch-all; 400: one port key; 401: its own catch-all.
    assert len(keys) == 3, keys


def test_networkpolicy_allows_cost_what_they_did():
    """A NetworkPolicy allow of one peer and port beside a cluster policy
    that does not concern that peer keeps to one key."""
    prog = program(admin=[rule(ADMIN, DENY, {500}, (), 1)], np_isolated=True,
                   np_keys=dict([np_allow(400, 6, 80, 9)]))
    keys = check_encoding(prog, {400})
    assert sorted(k for k in keys if k.identity == 400) == [PolicyMapKey(400, EP, DIR_INGRESS, 6, 80, 80)]


@pytest.mark.parametrize("name, prog, cases", [
    ("an audited default deny beside no policy: every peer would be dropped",
     program(np_keys_audit={}),
     [(400, 6, 80, R.ALLOW_NOT_ISOLATED, 0, R.DROP_POLICY, 0), (OTHER, None, 0, R.ALLOW_NOT_ISOLATED, 0,
                                                                 R.DROP_POLICY, 0)]),
    ("an audited allow-list beside no policy: only what it does not allow is reported",
     program(np_keys_audit=dict([np_allow(400, 6, 80, 9)])),
     [(400, 6, 80, R.ALLOW_NOT_ISOLATED, 0, 0, 0), (400, 6, 81, R.ALLOW_NOT_ISOLATED, 0, R.DROP_POLICY, 0)]),
    ("an audited default deny beside an enforced allow: what the allow lets in is reported",
     program(np_isolated=True, np_keys=dict([np_allow(400, 6, 80, 9)]),
             np_keys_audit=dict([np_allow(400, 6, 80, 9)])),
     [(400, 6, 80, R.ALLOW_POLICY, 9, 0, 0), (400, 6, 81, R.DROP_POLICY, 0, 0, 0)]),
    ("an audited Admin deny over an enforced Baseline accept",
     program(admin=[rule(ADMIN, DENY, {400}, P80, 1, audited=True)], baseline=[rule(BASELINE, ACCEPT, {400}, (), 2)]),
     [(400, 6, 80, R.ALLOW_BASELINE, 2, R.DROP_ADMIN, 1), (400, 6, 81, R.ALLOW_BASELINE, 2, 0, 0)]),
    ("an audited Admin accept changes nothing enforced and reports nothing",
     program(admin=[rule(ADMIN, ACCEPT, {400}, (), 1, audited=True), rule(ADMIN, DENY, {400}, P80, 2)]),
     [(400, 6, 80, R.DROP_ADMIN, 2, 0, 0), (400, 6, 81, R.ALLOW_NOT_ISOLATED, 0, 0, 0)]),
    ("an audited Admin Pass before an enforced deny hands over to an audited NetworkPolicy",
     program(admin=[rule(ADMIN, PASS, {400}, (), 1, audited=True), rule(ADMIN, ACCEPT, {400}, (), 2)],
             np_keys_audit={}),
     [(400, 6, 80, R.ALLOW_ADMIN, 2, R.DROP_POLICY, 0), (401, 6, 80, R.ALLOW_NOT_ISOLATED, 0, R.DROP_POLICY, 0)]),
    ("an audited Baseline deny of the node, judged in egress",
     program(baseline=[rule(BASELINE, DENY, {IDENTITY_HOST}, (), 3, "Egress", audited=True)], direction=DIR_EGRESS),
     [(IDENTITY_HOST, 6, 10250, R.ALLOW_HOST, 0, R.DROP_BASELINE, 3), (400, 6, 80, R.ALLOW_NOT_ISOLATED, 0, 0, 0)]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_audited_policies_are_judged_not_enforced(name, prog, cases):
    keys = check_encoding(prog, {c[0] for c in cases})
    for ident, proto, port, reason, rid, audit_reason, audit_rid in cases:
        want = PolicyValue(rid, int(reason), audit_rid, int(audit_reason))
        assert prog.verdict(ident, proto, port) == want, (name, ident, proto, port)
        got = policy_lookup(keys, EP, prog.direction, ident, ICMP if proto is None else proto, port)
        assert (got if got is not None else PolicyValue(0, int(R.DROP_POLICY))) == want, (name, ident, proto, port)


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_encode_their_walk(seed):
    rnd = random.Random(seed)
    idents = [400, 401, 402, 403, IDENTITY_SELF, 300]
    direction = rnd.choice((DIR_INGRESS, DIR_EGRESS))
    if direction == DIR_EGRESS:
        idents.append(IDENTITY_HOST)

    def ports() -> tuple[PolicyPort, ...]:
        if rnd.random() < 0.3:
            return ()
        out = []
        for _ in range(rnd.randint(1, 3)):
            proto = rnd.choice(("TCP", "UDP", "SCTP"))
            kind = rnd.random()
            if kind < 0.4:
                out.append(PolicyPort(proto, rnd.choice((53, 80, 443, 8080, 1))))
            elif kind < 0.8:
                lo = rnd.randint(1, 60000)
                out.append(PolicyPort(proto, lo, rnd.randint(lo + 1, 65535)))
            else:
                out.append(PolicyPort(proto, rnd.choice(("web", "dns"))))
        return tuple(out)

    def rules(tier: str, n: int) -> list[TierRule]:
        return [rule(tier, rnd.choice((ACCEPT, DENY, PASS)),
                     None if rnd.random() < 0.05 else set(rnd.sample(idents, rnd.randint(1, 3))),
                     ports(), rid=rnd.randint(1, 50), audited=seed % 2 == 1 and rnd.random() < 0.4)
                for _ in range(n)]

    np_keys = {}
    for _ in range(rnd.randint(0, 4)):
        ident = rnd.choice([IDENTITY_ANY, 400, 401, 402])
        proto = rnd.choice((None, 6, 17))
        port = None if proto is None or rnd.random() < 0.3 else rnd.choice((53, 80, 1024))
        bits = rnd.choice((16, 10, 6))
        if port is not None:
            port = port >> (16 - bits) << (16 - bits)
        k, v = np_allow(ident, proto, port, rnd.randint(60, 70), direction, bits)
        np_keys[k] = v
    # Odd seeds: some rules audited, and maybe an audited NetworkPolicy
    # isolating the pod (its allows on top of the enforced ones').
    np_keys_audit = None
    if seed % 2 == 1 and rnd.random() < 0.6:
        np_keys_audit = dict(np_keys)
        for _ in range(rnd.randint(0, 3)):
            k, v = np_allow(rnd.choice([IDENTITY_ANY, 400, 403]), 6, rnd.choice((80, 443, 9000)),
                            rnd.randint(71, 80), direction)
            np_keys_audit.setdefault(k, v)
    prog = program(rules(ADMIN, rnd.randint(0, 4)), rules(BASELINE, rnd.randint(0, 3)),
                   np_isolated=rnd.random() < 0.5, np_keys=np_keys, direction=direction,
                   own_ports={("web", "TCP"): 8080, ("dns", "UDP"): 53},
                   peer_ports={(400, "web", "TCP"): 80, (401, "dns", "UDP"): 5353}, np_keys_audit=np_keys_audit)
    check_encoding(prog, set(idents))
