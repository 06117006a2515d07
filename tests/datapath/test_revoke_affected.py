"""Which tracked connections a change may re-verdict (datapath/revoke.py
Affected): from what a pass touched (sync.Touched) to the connections to
judge. Table-driven; no kernel."""

from __future__ import annotations

import ipaddress

import pytest

from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS
from enforcer.datapath.revoke import Affected
from enforcer.datapath.sync import Touched, TrackedConnection
from enforcer.records import PolicyMapKey

pytestmark = pytest.mark.unit


def conn(ep: int, peer: str, egress: bool = False) -> TrackedConnection:
    return TrackedConnection(ep, ipaddress.ip_address("10.0.0.1" if ":" not in peer else "fd00::1"),
                             ipaddress.ip_address(peer), 6, 80, 40000, egress)


def key(ep: int, direction: int, identity: int = 300) -> PolicyMapKey:
    return PolicyMapKey(identity, ep, direction, 6, 80, 40)


NET = ipaddress.ip_network
A, B = "10.1.0.5", "10.1.0.6"

CASES = [
    # (what the pass touched, endpoint ids released, connection, judged?)
    ("nothing", Touched(), set(), conn(1, A), False),
    ("a policy key of the endpoint and direction", Touched(policy={key(1, DIR_INGRESS)}), set(), conn(1, A), True),
    ("the other direction's keys", Touched(policy={key(1, DIR_EGRESS)}), set(), conn(1, A), False),
    ("egress key, egress connection", Touched(policy={key(1, DIR_EGRESS)}), set(), conn(1, A, egress=True), True),
    ("another endpoint's keys", Touched(policy={key(2, DIR_INGRESS)}), set(), conn(1, A), False),
    ("the endpoint's entry (flags)", Touched(endpoint_ids={1}), set(), conn(1, A, egress=True), True),
    ("another endpoint's entry", Touched(endpoint_ids={2}), set(), conn(1, A), False),
    ("id released", Touched(endpoint_ids={1}), {1}, conn(1, A), True),
    ("the peer's host entry", Touched(ipcache={NET(f"{A}/32")}), set(), conn(7, A), True),
    ("another host's entry", Touched(ipcache={NET(f"{B}/32")}), set(), conn(7, A), False),
    ("a prefix holding the peer", Touched(ipcache={NET("10.1.0.0/16")}), set(), conn(7, A), True),
    ("a prefix elsewhere", Touched(ipcache={NET("10.2.0.0/16")}), set(), conn(7, A), False),
    ("the default route", Touched(ipcache={NET("0.0.0.0/0")}), set(), conn(7, A), True),
    ("an IPv6 prefix, IPv4 peer", Touched(ipcache={NET("::/0")}), set(), conn(7, A), False),
    ("an IPv6 prefix holding the peer", Touched(ipcache={NET("fd01::/64")}), set(), conn(7, "fd01::5"), True),
]


@pytest.mark.parametrize("touched, gone, c, judged", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_affected(touched: Touched, gone: set[int], c: TrackedConnection, judged: bool) -> None:
    a = Affected.of(touched, gone)
    assert a.covers(c) is judged
    assert bool(a) is bool(touched or gone)


def test_everything_covers_all_and_only_gone_drops_policy() -> None:
    assert Affected.everything().covers(conn(9, A))
    a = Affected.of(Touched(policy={key(1, DIR_INGRESS)}, ipcache={NET("0.0.0.0/0")}), {3})
    only = a.only_gone()
    assert not only.covers(conn(1, A)) and only.covers(conn(3, A))


def test_merge_is_the_union() -> None:
    a = Affected.of(Touched(policy={key(1, DIR_INGRESS)}))
    a.merge(Affected.of(Touched(ipcache={NET(f"{B}/32")}), {4}))
    assert a.covers(conn(1, A)) and a.covers(conn(8, B)) and a.covers(conn(4, A)) and not a.covers(conn(8, A))
