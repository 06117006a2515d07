"""tc clsact attach/detach through pyroute2, in a namespace of the test's own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from enforcer.datapath.attach import TcAttacher
from enforcer.datapath.loader import FROM_POD, TO_POD, load_noop_program

NETNS = f"enfp-att{os.getpid()}"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    sh("ip", "netns", "add", NETNS)
    try:
        sh("ip", "-n", NETNS, "link", "add", "hostside", "type", "veth", "peer", "name", "podside")
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


@pytest.fixture(scope="module")
def programs():
    a, b = load_noop_program(), load_noop_program()
    try:
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()


def tc_filters(hook: str) -> list[str]:
    out = sh("ip", "netns", "exec", NETNS, "tc", "filter", "show", "dev", "hostside", hook)
    return [line for line in out.splitlines() if "bpf" in line and "handle" in line]


def prog_ids(hook: str) -> list[str]:
    return [line.split(" id ")[1].split()[0] for line in tc_filters(hook)]


def test_attach_is_idempotent_and_replaces_atomically(netns, programs):
    first, second = programs
    att = TcAttacher(netns)
    idx = att.ifindex("hostside")
    fds = {FROM_POD: first.fd("noop"), TO_POD: first.fd("noop")}
    att.attach(idx, fds)
    att.attach(idx, fds)  # again: no duplicate filters, no error
    assert len(tc_filters("ingress")) == 1 and len(tc_filters("egress")) == 1
    before = prog_ids("ingress")
    att.attach(idx, {FROM_POD: second.fd("noop"), TO_POD: second.fd("noop")})
    assert len(tc_filters("ingress")) == 1
    assert prog_ids("ingress") != before  # replaced in place
    assert {(a.ifindex, a.hook) for a in att.attachments()} == {(idx, "ingress"), (idx, "egress")}
    assert {a.prog_id for a in att.attachments() if a.hook == "ingress"} == {int(prog_ids("ingress")[0])}


def test_detach_leaves_other_filters_alone(netns, programs):
    first, _ = programs
    att = TcAttacher(netns)
    idx = att.ifindex("hostside")
    att.attach(idx, {FROM_POD: first.fd("noop"), TO_POD: first.fd("noop")})
    # Somebody else's bpf filter on the same hook (a CNI's), another priority.
    from pyroute2 import IPRoute

    with IPRoute(netns=NETNS) as ipr:
        ipr.tc("add-filter", "bpf", idx, 1, fd=first.fd("noop"), name="cni_prog",
               parent="ffff:fff2", classid=1, direct_action=True, prio=7)
    assert att.detach(idx) is True
    assert att.detach(idx) is False  # nothing left of ours: still fine
    out = sh("ip", "netns", "exec", NETNS, "tc", "filter", "show", "dev", "hostside", "ingress")
    assert "cni_prog" in out and "enforcer_" not in out
    assert att.attachments() == []


def test_unknown_interface_is_a_clear_error(netns):
    from enforcer.errors import AttachError

    with pytest.raises(AttachError, match="no interface nosuch"):
        TcAttacher(netns).ifindex("nosuch")
