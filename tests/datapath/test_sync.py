"""Ordered map sync against real pinned maps: order, minimal writes,
restart read-back, and full maps: what denies still applies, an allow that
fits once the pass's removals made room applies in the same pass, what does
not fit is reported per object (never per entry) and logged in one line,
and no address ever resolves to an identity neither state gives it."""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
from dataclasses import dataclass, field

import pytest

from enforcer.api.explain import maps_identity
from enforcer.daemon.failures import OBJECTS_KEPT, FailureLog, WriteFailures
from enforcer.datapath.layout import (
    DIR_INGRESS,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_WORLD,
    POLICY_PREFIX_EXACT,
    POLICY_PREFIX_PROTO,
)
from enforcer.datapath.maps import BpfMap
from enforcer.datapath.policykeys import from_policy_key, policy_map_keys
from enforcer.datapath.reasons import Reason
from enforcer.datapath.sync import (
    SAMPLE_MAX,
    MapContents,
    MapSync,
    SyncReport,
    _denies_first,
    _lowest_priority_first,
)
from enforcer.errors import MapError
from enforcer.records import PolicyMapKey, PolicyValue

from . import frames
from .harness import new_harness

POLICY_MAX, IPCACHE_MAX, HOSTS_MAX = 8, 4, 4
ALLOW_7 = PolicyValue(7, int(Reason.ALLOW_POLICY))  # rule 7 allows


@pytest.fixture
def small():
    h = new_harness("sync", policy_max=POLICY_MAX, ipcache_max=IPCACHE_MAX, ipcache_hosts_max=HOSTS_MAX)
    try:
        for name in ("endpoints", "policy"):
            h.maps[name].clear()
        h.maps.clear_identities()
        yield h
    finally:
        h.close()


def contents(n_rules: int, flags: int = 1, ident: int = 300) -> MapContents:
    return MapContents(
        ipcache={ipaddress.ip_network("10.0.0.1/32"): ident, ipaddress.ip_network("10.2.0.0/16"): 500},
        endpoints={ipaddress.ip_address("10.0.0.1"): (1, 1, ident, flags)},
        policy={PolicyMapKey(400 + i, 1, 0, 6, 80, 80): ALLOW_7 for i in range(n_rules)},
    )


def test_order_and_minimal_writes(small, monkeypatch):
    log: list[tuple[str, str]] = []
    orig_update, orig_delete = BpfMap.update, BpfMap.delete
    monkeypatch.setattr(BpfMap, "update", lambda self, k, v, flags=0: (log.append(("write", self.name)), orig_update(self, k, v, flags))[1])
    monkeypatch.setattr(BpfMap, "delete", lambda self, k: (log.append(("delete", self.name)), orig_delete(self, k))[1])
    sync = MapSync(small.maps)
    report = sync.apply(contents(3))
    assert report.written == 6 and not report.failures
    assert [n for _, n in log] == ["policy_v3"] * 3 + ["ipcache_hosts_v1", "ipcache_v1", "endpoints_v1"]
    log.clear()
    assert not sync.apply(contents(3)).changed and log == []  # nothing to do: nothing written
    # Identity change + one rule fewer: new allows, then ipcache, endpoint; deletions last.
    want = contents(2, ident=301)
    want.policy[PolicyMapKey(301, 1, 0, 6, 81, 80)] = PolicyValue(8, int(Reason.ALLOW_POLICY))
    want.endpoints = {}
    sync.apply(want)
    assert log == [("write", "policy_v3"), ("write", "ipcache_hosts_v1"), ("delete", "endpoints_v1"),
                   ("delete", "policy_v3")]


def test_restart_reads_back_and_writes_nothing(small):
    MapSync(small.maps).apply(contents(3))
    again = MapSync(small.maps)
    assert again.applied.policy == contents(3).policy
    assert again.applied.endpoints == contents(3).endpoints
    assert not again.apply(contents(3)).changed




# -- full maps ---------------------------------------------------------------

EP_IPS = {1: ipaddress.ip_address("10.0.0.1"), 2: ipaddress.ip_address("10.0.0.2")}
OWNERS: dict[tuple, str] = {}  # type: ignore[type-arg]  # policy entry -> the NetworkPolicy it is for


def policies(objects: dict[str, tuple[int, int, int]], isolated: set[int]) -> MapContents:
    """objects: name -> (endpoint id, entries, first peer identity); every
    endpoint isolated (ingress) when in `isolated`."""
    policy = {}
    for name, (ep, n, first) in objects.items():
        for ident in range(first, first + n):
            key = PolicyMapKey(ident, ep, 0, 6, 80, 80)
            OWNERS[key] = name
            policy[key] = ALLOW_7
    return MapContents(
        ipcache={ipaddress.ip_network(f"{ip}/32"): 300 + ep for ep, ip in EP_IPS.items()},
        endpoints={ip: (ep, ep, 300 + ep, EP_F_INGRESS_ISOLATED if ep in isolated else 0) for ep, ip in EP_IPS.items()},
        policy=policy)


def describe(kind: str, key: object) -> str:
    if kind == "policy":
        return f"NetworkPolicy x/{OWNERS[key]} (peer identity {key[0]})"  # type: ignore[index]
    return f"{kind} {key}"


@dataclass
class FullPolicyCase:
    then: dict[str, tuple[int, int, int]]
    isolated: set[int]
    not_written: dict[str, int]  # object -> entries
    retried: int


# Each starts from a full policy map: "big" needs 12 entries, 8 fit.
START = {"big": (1, 12, 400)}
FULL_POLICY_CASES = [
    pytest.param(FullPolicyCase(then={"big": (1, 6, 400), "two": (2, 2, 600)}, isolated={1, 2},
                                not_written={}, retried=2), id="shrinking-makes-room-for-a-new-allow"),
    pytest.param(FullPolicyCase(then={"three": (1, 3, 700)}, isolated={1}, not_written={}, retried=3),
                 id="revoking-a-policy-makes-room-for-another"),
    pytest.param(FullPolicyCase(then={"big": (1, 12, 400), "two": (2, 2, 600)}, isolated={1, 2},
                                not_written={"big": 4, "two": 2}, retried=0),
                 id="isolation-applies-though-its-allow-does-not-fit"),
    pytest.param(FullPolicyCase(then={"big": (1, 6, 400), "two": (2, 4, 600)}, isolated={1, 2},
                                not_written={"two": 2}, retried=4),
                 id="what-still-does-not-fit-after-removals-is-reported"),
]


def test_full_policy_map_never_blocks_what_denies(small, caplog, request):
    """Cases run one after the other on the same maps, each from a fresh
    full start (parametrizing over the harness would reload BPF each time)."""
    for param in FULL_POLICY_CASES:
        case, name = param.values[0], param.id
        for m in ("endpoints", "policy"):
            small.maps[m].clear()
        small.maps.clear_identities()
        caplog.clear()
        logger = logging.getLogger("test.sync.full")
        caplog.set_level(logging.INFO, logger=logger.name)
        flog = FailureLog(logger, clock=lambda: 0.0)
        sync = MapSync(small.maps)

        start = policies(START, isolated={1})
        first = sync.apply(start, describe)
        assert small.maps["policy"].count() == POLICY_MAX, name
        assert first.objects == {"NetworkPolicy x/big": 4} and first.not_written == {"policy": {"full": 4}}, name
        assert all("NetworkPolicy x/big (peer identity 4" in s and "8 entries at most" in s for s in first.samples)
        flog.note(first)
        assert len(caplog.records) == 1, name

        caplog.clear()
        want = policies(case.then, case.isolated)
        report = sync.apply(want, describe)
        flog.note(report)
        in_map = sync.read()
        assert in_map.policy == sync.applied.policy, name
        # What denies applied: isolation is on, revoked entries are gone.
        for ep in case.isolated:
            assert in_map.endpoints[EP_IPS[ep]][3] & EP_F_INGRESS_ISOLATED, name
        assert not (set(start.policy) - set(want.policy)) & set(in_map.policy), name
        assert report.retried == case.retried, name
        # Reported per object, once, with its count; logged in one line.
        assert report.objects == {f"NetworkPolicy x/{o}": n for o, n in case.not_written.items()}, name
        assert report.failed == sum(case.not_written.values()) and len(report.samples) <= SAMPLE_MAX, name
        assert len(caplog.records) == 1, (name, caplog.records)
        line = caplog.records[0].getMessage()
        if case.not_written:
            assert caplog.records[0].levelno == logging.ERROR
            for o, n in case.not_written.items():
                assert line.count(f"NetworkPolicy x/{o}: {n} entries") == 1, line
            assert set(in_map.policy) < set(want.policy) and len(in_map.policy) == POLICY_MAX, name
        else:
            # The new allow went in in this same pass.
            assert "recovered" in line and report.complete, name
            assert in_map.policy == want.policy and in_map.endpoints == want.endpoints, name


def test_many_failures_are_counted_not_listed(small, caplog):
    """2000 entries of 40 policies for a map of 8: counts, a few samples, the
    first objects, and one line (again only once the minute is up)."""
    want = policies({f"p{i:02}": (1, 50, 1000 + 50 * i) for i in range(40)}, isolated={1})
    report = MapSync(small.maps).apply(want, describe)
    assert report.not_written == {"policy": {"full": 2000 - POLICY_MAX}} and report.failed == 2000 - POLICY_MAX
    assert len(report.objects) == 40 and report.objects["NetworkPolicy x/p00"] == 50 - POLICY_MAX
    assert len(report.samples) == SAMPLE_MAX
    failures = WriteFailures.of(report)
    assert len(failures.objects) == OBJECTS_KEPT and failures.objects_total == 40
    now = [0.0]
    logger = logging.getLogger("test.sync.many")
    caplog.set_level(logging.INFO, logger=logger.name)
    flog = FailureLog(logger, every=60.0, clock=lambda: now[0])
    for t in (0.0, 1.0, 59.0, 61.0):  # the same failures on every pass
        now[0] = t
        flog.note(report)
    assert len(caplog.records) == 2
    line = caplog.records[0].getMessage()
    assert len(line) < 1000 and "1992 entries of 40 objects" in line and "and 35 more" in line


def resolve(table: dict, ip) -> int:  # type: ignore[type-arg,no-untyped-def]
    """The identity an ipcache content gives ip: the longest prefix holding it."""
    best = max((net for net in table if ip in net), key=lambda net: net.prefixlen, default=None)
    return table[best] if best is not None else IDENTITY_WORLD


@dataclass
class IpcacheCase:
    old: dict[str, int]
    new: dict[str, int]
    probes: tuple[str, ...]
    not_written: dict[str, dict[str, int]] = field(default_factory=dict)
    held_removals: int = 0
    retried: int = 0
    fail_delete: tuple[str, ...] = ()  # prefixes whose removal fails (EPERM)


FULL_LPM = {"10.2.0.0/16": 500, "10.9.0.0/16": 900, "10.8.0.0/16": 800, "10.7.0.0/16": 700}
HOSTS = {f"10.5.0.{i}/32": 50 + i for i in range(1, HOSTS_MAX + 1)}
WITH_8 = {"10.0.0.0/8": 400, "10.2.0.0/16": 500, "10.8.0.0/16": 800, "10.7.0.0/16": 700}
IPCACHE_CASES = [
    pytest.param(IpcacheCase(old={}, new={"10.2.0.0/16": 500, "10.2.3.0/24": 501},
                             probes=("10.2.3.3", "10.2.4.4")), id="except-written-before-its-block"),
    pytest.param(IpcacheCase(old={"10.2.0.0/16": 500, "10.2.3.0/24": 501}, new={},
                             probes=("10.2.3.3", "10.2.4.4")), id="block-removed-before-its-except"),
    pytest.param(IpcacheCase(old=FULL_LPM, new={**FULL_LPM, "10.2.3.0/24": 501} | {"10.9.0.0/16": 0},
                             probes=("10.2.3.3", "10.9.1.1"), retried=1),
                 id="except-into-a-full-map-after-a-removal-made-room"),
    pytest.param(IpcacheCase(old=WITH_8, new={**WITH_8, "10.2.3.0/24": 501} | {"10.2.0.0/16": 0},
                             probes=("10.2.3.3", "10.2.4.4"), not_written={"ipcache": {"full": 1}},
                             held_removals=1),
                 id="block-stays-while-the-except-replacing-it-does-not-fit"),
    pytest.param(IpcacheCase(old=WITH_8, new={**WITH_8, "10.2.3.0/24": 501} | {"10.2.0.0/16": 0, "10.7.0.0/16": 0},
                             probes=("10.2.3.3", "10.2.4.4", "10.7.0.1"), retried=1),
                 id="block-goes-once-room-was-made-for-the-except"),
    pytest.param(IpcacheCase(old=HOSTS, new={**HOSTS, "10.2.3.3/32": 333, "10.2.0.0/16": 500},
                             probes=("10.2.3.3", "10.2.4.4"),
                             not_written={"ipcache_hosts": {"full": 1}, "ipcache": {"held": 1}}),
                 id="block-waits-for-a-pod-address-inside-it"),
    pytest.param(IpcacheCase(old=HOSTS, new={**HOSTS, "10.2.3.3/32": 333, "10.2.0.0/16": 500, "10.5.0.4/32": 0},
                             probes=("10.2.3.3", "10.2.4.4", "10.5.0.4"), retried=2),
                 id="pod-address-and-block-once-a-pod-left"),
    pytest.param(IpcacheCase(old={"10.0.0.0/8": 400, "10.2.0.0/16": 500}, new={}, probes=("10.2.3.3", "10.3.0.1"),
                             fail_delete=("10.0.0.0/8",), not_written={"ipcache": {"other": 1}}, held_removals=1),
                 id="prefix-inside-one-whose-removal-failed-stays"),
]


def _table(spec: dict[str, int]) -> dict:  # type: ignore[type-arg]
    """Prefix -> identity; identity 0 means: not in this content."""
    return {ipaddress.ip_network(k): v for k, v in spec.items() if v}


def test_full_ipcache_never_moves_an_address_to_a_third_identity(small, monkeypatch):
    """After every single ipcache write or removal, each probed address
    resolves (with the datapath's own lookups) to the identity the old
    content gives it or the one the new content gives it: never to an
    enclosing block neither gives it (an `except` lost, say)."""
    orig_update, orig_delete = BpfMap.update, BpfMap.delete
    for param in IPCACHE_CASES:
        case, name = param.values[0], param.id
        small.maps.clear_identities()
        sync = MapSync(small.maps)
        old, new = _table(case.old), _table(case.new)
        assert sync.apply(MapContents(ipcache=old)).complete, name
        probes = [ipaddress.ip_address(p) for p in case.probes]
        allowed = {ip: {resolve(old, ip), resolve(new, ip)} for ip in probes}
        seen: list[str] = []

        def check(what: str, mapname: str) -> None:
            if mapname.startswith("ipcache"):
                got = {ip: maps_identity(small.maps, ip) for ip in probes}
                bad = {str(ip): (got[ip], allowed[ip]) for ip in probes if got[ip] not in allowed[ip]}
                assert not bad, f"{name}: after {what} {seen}: {bad}"

        def update(self, k, v, flags=0):  # type: ignore[no-untyped-def]
            orig_update(self, k, v, flags)
            seen.append(f"write {self.name}")
            check("write", self.name)

        def delete(self, k):  # type: ignore[no-untyped-def]
            if self.name.startswith("ipcache_v") and str(k.network()) in case.fail_delete:
                raise MapError(self.name, "delete", errno.EPERM)
            out = orig_delete(self, k)
            seen.append(f"delete {self.name}")
            check("delete", self.name)
            return out

        monkeypatch.setattr(BpfMap, "update", update)
        monkeypatch.setattr(BpfMap, "delete", delete)
        try:
            report = sync.apply(MapContents(ipcache=new))
        finally:
            monkeypatch.setattr(BpfMap, "update", orig_update)
            monkeypatch.setattr(BpfMap, "delete", orig_delete)
        assert report.not_written == case.not_written, (name, report)
        assert report.held_removals == case.held_removals and report.retried == case.retried, (name, report)
        in_map = sync.read().ipcache
        assert in_map == sync.applied.ipcache, name
        if report.complete:
            assert in_map == new, name
        for ip in probes:  # where it ended up
            assert maps_identity(small.maps, ip) in allowed[ip], (name, ip)


@pytest.mark.parametrize("passes, expected", [
    pytest.param([(0, {"a"}), (10, {"a"}), (59, {"a"}), (61, {"a"})], ["ERROR", None, None, "ERROR"],
                 id="unchanged-set-once-a-minute"),
    pytest.param([(0, {"a"}), (1, {"a", "b"}), (2, {"b"})], ["ERROR", "ERROR", "ERROR"], id="set-changes"),
    pytest.param([(0, {"a"}), (1, set()), (2, set()), (3, {"a"})], ["ERROR", "INFO", None, "ERROR"],
                 id="recovery-once-then-new-failures"),
    pytest.param([(0, set()), (100, set())], [None, None], id="nothing-to-say"),
])
def test_failure_log_says_one_line_per_pass_at_most(caplog, passes, expected):
    now = [0.0]
    logger = logging.getLogger("test.sync.flog")
    caplog.set_level(logging.INFO, logger=logger.name)
    flog = FailureLog(logger, every=60.0, clock=lambda: now[0])
    said = []
    for t, objects in passes:
        now[0] = t
        caplog.clear()
        report = SyncReport(objects={o: 3 for o in sorted(objects)},
                            not_written={"policy": {"full": 3 * len(objects)}} if objects else {})
        flog.note(report)
        assert len(caplog.records) <= 1
        said.append(caplog.records[0].levelname if caplog.records else None)
    assert said == expected


# -- policy entries that hold verdicts: write and removal order ---------------

def _pk(identity: int, proto: int | None = None, port: int | None = None) -> PolicyMapKey:
    (key,) = policy_map_keys(identity, 1, DIR_INGRESS, proto, port)
    return key


def _v(rule_id: int, reason: Reason) -> PolicyValue:
    return PolicyValue(rule_id, int(reason))


# Endpoint 1 (10.0.0.1, ingress isolated). Old: allow everything, more
# precisely for 400. New: the catch-all becomes a Baseline Deny with a port
# allowed, Admin Denies for 400 (TCP 80) and 600 (TCP); 4 old + 4 new keys
# fill the map of 8 at the peak.
TIER_OLD = {
    _pk(IDENTITY_ANY): _v(1, Reason.ALLOW_POLICY),
    _pk(IDENTITY_ANY, 6): _v(2, Reason.ALLOW_POLICY),
    _pk(400): _v(4, Reason.ALLOW_POLICY),
    _pk(400, 6): _v(5, Reason.ALLOW_POLICY),
}
TIER_NEW = {
    _pk(IDENTITY_ANY): _v(10, Reason.DROP_BASELINE),
    _pk(IDENTITY_ANY, 6, 80): _v(11, Reason.ALLOW_BASELINE),
    _pk(400, 6, 80): _v(12, Reason.DROP_ADMIN),
    _pk(400, 17): _v(13, Reason.ALLOW_ADMIN),
    _pk(600, 6): _v(14, Reason.DROP_ADMIN),
}
TIER_PEERS = {400: "10.1.0.5", 500: "10.2.1.1", 600: "10.3.0.6"}
TIER_PROBES = [(ident, proto, port) for ident in TIER_PEERS for proto, port in ((6, 80), (6, 81), (17, 53))]


def tier_contents(policy: dict[PolicyMapKey, PolicyValue]) -> MapContents:
    return MapContents(
        ipcache={ipaddress.ip_network("10.0.0.1/32"): 300, ipaddress.ip_network("10.1.0.5/32"): 400,
                 ipaddress.ip_network("10.2.0.0/16"): 500, ipaddress.ip_network("10.3.0.6/32"): 600},
        endpoints={ipaddress.ip_address("10.0.0.1"): (1, 1, 300, EP_F_INGRESS_ISOLATED)},
        policy=dict(policy))


def first_hit(policy: dict[PolicyMapKey, PolicyValue], ident: int, proto: int, port: int) -> tuple[int, int]:
    """policy.h's lookup of a content: (reason, rule id); the peer's own
    keys, longest first, then every peer's; a miss is the default deny."""
    for who in (ident, IDENTITY_ANY):
        hits = [k for k in policy if k.identity == who and
                (k.prefixlen == POLICY_PREFIX_EXACT or
                 (k.protocol == proto and (k.prefixlen == POLICY_PREFIX_PROTO or k.port == port)))]
        if hits:
            v = policy[max(hits, key=lambda k: k.prefixlen)]
            return v.reason, v.rule_id
    return int(Reason.DROP_POLICY), 0


def probe(h, ident: int, proto: int, port: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """The datapath's verdict on a new flow from that peer to 10.0.0.1."""
    src, sp = TIER_PEERS[ident], next(_tier_ports)
    frame = frames.tcp(src, "10.0.0.1", sp, port) if proto == 6 else frames.udp(src, "10.0.0.1", sp, port)
    out = h.ingress(frame)
    (ev,) = out.events
    assert int(ev.reason) == int(out.reason)
    return int(out.reason), ev.rule_id


_tier_ports = itertools.count(41000)


def _record_policy_ops(small, monkeypatch, expected):  # type: ignore[no-untyped-def]
    """After every policy write or removal, each probe's verdict (reason and
    rule) in the datapath; the ops; the probes whose verdict was neither the
    old state's nor the new one's."""
    ops: list[tuple[str, PolicyMapKey, int | None]] = []
    bad: list[tuple] = []  # type: ignore[type-arg]
    orig_update, orig_delete = BpfMap.update, BpfMap.delete

    def check() -> None:
        for p in TIER_PROBES:
            got = probe(small, *p)
            if got not in expected[p]:
                bad.append((list(ops), p, got))

    def update(self, k, v, flags=0):  # type: ignore[no-untyped-def]
        orig_update(self, k, v, flags)
        if self.name.startswith("policy"):
            ops.append(("write", from_policy_key(k), v.reason))
            check()

    def delete(self, k):  # type: ignore[no-untyped-def]
        out = orig_delete(self, k)
        if self.name.startswith("policy"):
            ops.append(("delete", from_policy_key(k), None))
            check()
        return out

    monkeypatch.setattr(BpfMap, "update", update)
    monkeypatch.setattr(BpfMap, "delete", delete)
    return ops, bad


def _tier_start(small):  # type: ignore[no-untyped-def]
    sync = MapSync(small.maps)
    assert sync.apply(tier_contents(TIER_OLD)).complete
    expected = {p: {first_hit(TIER_OLD, *p), first_hit(TIER_NEW, *p)} for p in TIER_PROBES}
    for p in TIER_PROBES:  # the datapath agrees with the reading of policy.h above
        assert probe(small, *p) == first_hit(TIER_OLD, *p), p
    return sync, expected


def test_policy_verdicts_change_without_a_third_verdict(small, monkeypatch):
    """An allow catch-all becomes a deny with a port allowed: denies are
    written first, removals go every-peer keys first and shortest prefix
    first, and after every single write or removal each probed flow gets
    the old state's verdict or the new one's, with its rule (the datapath
    itself judging a packet)."""
    sync, expected = _tier_start(small)
    ops, bad = _record_policy_ops(small, monkeypatch, expected)
    report = sync.apply(tier_contents(TIER_NEW))
    monkeypatch.undo()
    assert report.complete and not bad, bad
    writes = [(k, r) for op, k, r in ops if op == "write"]
    deletes = [k for op, k, _ in ops if op == "delete"]
    assert {k for k, _ in writes} == {k for k in TIER_NEW if TIER_OLD.get(k) != TIER_NEW[k]}
    drops = [r in (Reason.DROP_ADMIN, Reason.DROP_BASELINE, Reason.DROP_POLICY) for _, r in writes]
    assert drops == sorted(drops, reverse=True) and drops.count(True) == 3, writes  # denies, then allows
    assert deletes == [_pk(IDENTITY_ANY, 6), _pk(400), _pk(400, 6)]  # every peer, then 400 shortest first
    assert sync.read().policy == TIER_NEW
    for p in TIER_PROBES:
        assert probe(small, *p) == first_hit(TIER_NEW, *p), p


@pytest.mark.parametrize("which", ["allows-first", "highest-priority-removed-first"])
def test_the_other_order_shows_a_third_verdict(small, monkeypatch, which):
    """The same change in the reverse orders: some flow meets a verdict
    neither state gives it (so the test above can tell)."""
    from enforcer.datapath import sync as sync_module

    if which == "allows-first":
        monkeypatch.setattr(sync_module, "_denies_first", lambda w: _denies_first(w)[::-1])
    else:
        monkeypatch.setattr(sync_module, "_lowest_priority_first", lambda ks: _lowest_priority_first(ks)[::-1])
    sync, expected = _tier_start(small)
    ops, bad = _record_policy_ops(small, monkeypatch, expected)
    sync.apply(tier_contents(TIER_NEW))
    monkeypatch.undo()
    assert bad, ops


def test_policy_write_and_removal_orders():
    deny_a, deny_b = (_pk(500), _v(1, Reason.DROP_ADMIN)), (_pk(600), _v(2, Reason.DROP_BASELINE))
    allow_a, allow_b = (_pk(500, 6), _v(3, Reason.ALLOW_ADMIN)), (_pk(700), _v(4, Reason.ALLOW_POLICY))
    explicit = (_pk(800), _v(5, Reason.DROP_POLICY))
    assert _denies_first([allow_a, deny_a, allow_b, explicit, deny_b]) == [deny_a, explicit, deny_b, allow_a, allow_b]
    assert _denies_first([allow_b, allow_a]) == [allow_b, allow_a]  # order kept
    assert _denies_first([]) == []
    keys = [_pk(400, 6, 80), _pk(IDENTITY_ANY, 6, 80), _pk(400), _pk(IDENTITY_ANY), _pk(500, 6),
            _pk(IDENTITY_ANY, 17), _pk(400, 6)]
    assert _lowest_priority_first(keys) == [
        _pk(IDENTITY_ANY), _pk(IDENTITY_ANY, 17), _pk(IDENTITY_ANY, 6, 80),  # every peer, shortest first
        _pk(400), _pk(500, 6), _pk(400, 6), _pk(400, 6, 80),                 # then own keys, shortest first
    ]
