"""The interface resolver keeps what route lookups found until the
namespace says something changed (NetWatch): a pass with no link, route,
address or rule change asks the kernel only about new pods, and each kind
of change makes it look again at exactly the pods it can have moved."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from enforcer.daemon.node import InterfaceResolver
from enforcer.lab.netns import entered
from enforcer.model.objects import Pod

pytestmark = pytest.mark.lab

NETNS = f"rsv{os.getpid()}"


def ip(*args: str) -> None:
    subprocess.run(["ip", "-n", NETNS, *args], check=True, capture_output=True)


def ifindex(name: str) -> int:
    out = subprocess.run(["ip", "-n", NETNS, "-o", "link", "show", name], check=True, capture_output=True, text=True)
    return int(out.stdout.split(":", 1)[0])


def pod(name: str, *addrs: str) -> Pod:
    return Pod(namespace="ns", name=name, uid=f"uid-{name}", labels={}, node_name="n", phase="Running", host_network=False, ports=(),
               ips=tuple(ipaddress.ip_address(a) for a in addrs))


@pytest.fixture
def node() -> Iterator[None]:
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        ip("link", "set", "lo", "up")
        for i in range(4):
            ip("link", "add", f"h{i}", "type", "veth", "peer", "name", f"p{i}")
            ip("link", "set", f"h{i}", "up")
            ip("link", "set", f"p{i}", "up")
            ip("route", "add", f"10.9.0.{i}/32", "dev", f"h{i}")
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def resolved(resolver: InterfaceResolver, pods: list[Pod]) -> tuple[dict[str, int], int]:
    """What resolve() says, and how many route lookups it made for it."""
    before = resolver.lookups
    with entered(NETNS):
        out = resolver.resolve(pods)
    return out, resolver.lookups - before


PODS = [pod(f"p{i}", f"10.9.0.{i}") for i in range(4)]


def _move_route(i: int, to: str) -> Callable[[], None]:
    return lambda: ip("route", "replace", f"10.9.0.{i}/32", "dev", to)


# (what changes, the lookups the next resolve makes at most, pod -> new interface)
CHANGES = [
    ("nothing", lambda: None, 0, {}),
    ("a route moves", _move_route(1, "h3"), 1, {"ns/p1": "h3"}),
    ("a route goes", lambda: ip("route", "del", "10.9.0.2/32"), 1, {"ns/p2": None}),
    ("a wider route changes", lambda: ip("route", "add", "10.9.0.0/31", "dev", "h3"), 2, {}),  # .0 and .1 relooked
    ("a link goes", lambda: ip("link", "del", "h1"), 1, {"ns/p1": None}),
    ("a link changes", lambda: ip("link", "set", "h2", "mtu", "1400"), 1, {}),
    ("an address comes", lambda: ip("addr", "add", "10.8.0.1/32", "dev", "lo"), 0, {}),  # its routes hold no pod
    ("a pod's address becomes local", lambda: ip("addr", "add", "10.9.0.3/32", "dev", "lo"), 1, {"ns/p3": None}),
    ("a rule comes", lambda: ip("rule", "add", "from", "10.7.0.0/16", "lookup", "100"), 4, {}),
]


@pytest.mark.parametrize("what,change,lookups,moved", CHANGES, ids=[c[0] for c in CHANGES])
def test_only_what_a_change_can_move_is_looked_up_again(node: None, what: str, change: Callable[[], None],
                                                        lookups: int, moved: dict[str, str | None]) -> None:
    resolver = InterfaceResolver()
    first, n = resolved(resolver, PODS)
    assert first == {f"ns/p{i}": ifindex(f"h{i}") for i in range(4)} and n == 4
    change()
    want = dict(first)
    for key, name in moved.items():
        if name is None:
            want.pop(key)
        else:
            want[key] = ifindex(name)
    after, n = resolved(resolver, PODS)
    assert after == want
    assert n <= lookups, f"{what}: {n} lookups"
    # And whatever the change, a resolver starting afresh agrees.
    assert resolved(InterfaceResolver(), PODS)[0] == want
    # Nothing more changed: nothing more is looked up.
    assert resolved(resolver, PODS) == (want, 0)


def test_new_pods_are_looked_up_and_unplaced_ones_again_once_their_route_comes(node: None) -> None:
    resolver = InterfaceResolver()
    late = pod("late", "10.9.0.9")
    out, n = resolved(resolver, [*PODS, late])
    assert "ns/late" not in out and n == 5
    assert resolved(resolver, [*PODS, late])[1] == 0  # no route yet, nothing changed: not asked again
    ip("route", "add", "10.9.0.9/32", "dev", "h3")  # the CNI gets to it
    out, n = resolved(resolver, [*PODS, late])
    assert out["ns/late"] == ifindex("h3") and n == 1
    assert resolved(resolver, [*PODS, pod("new", "10.9.0.0")])[1] == 1  # a new pod: looked up


def test_the_node_addresses_follow_address_changes(node: None) -> None:
    resolver = InterfaceResolver()
    resolved(resolver, PODS)
    assert ipaddress.ip_address("10.8.0.1") not in resolver.addresses
    ip("addr", "add", "10.8.0.1/24", "dev", "h0")
    resolved(resolver, PODS)
    assert ipaddress.ip_address("10.8.0.1") in resolver.addresses
