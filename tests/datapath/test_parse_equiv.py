"""The direct-access fast parser fills struct flow exactly as the full
parser does (bpf/tests/parse_equiv.c), and takes the common frames."""

from __future__ import annotations

import pytest

from enforcer.datapath import bpfsys
from enforcer.datapath.loader import load_parse_check_program

from . import frames
from .test_packets import TRUNCATED

AGREE, DISAGREE, DECLINED, WRONGLY_TAKEN = 0, 1, 2, 3

FAST = {
    "tcp syn v4": frames.tcp("10.1.0.5", "10.0.0.1", 1234, 80),
    "tcp ack v6": frames.tcp("fd01::5", "fd00::1", 1234, 80, flags="A"),
    "udp v4": frames.udp("10.1.0.5", "10.0.0.1", 53, 5353),
    "udp v6": frames.udp("fd01::5", "fd00::1", 53, 5353),
    "sctp v4": frames.sctp("10.1.0.5", "10.0.0.1", 5000, 5001),
    "sctp v6": frames.sctp("fd01::5", "fd00::1", 5000, 5001),
    "udp v4 no payload": frames.udp("10.1.0.5", "10.0.0.1", 1, 2, payload=b""),
}
SLOW = {
    "icmp echo": frames.echo("10.1.0.5", "10.0.0.1"),
    "icmpv6 echo": frames.echo("fd01::5", "fd00::1"),
    "vlan": frames.vlan_tcp("10.1.0.5", "10.0.0.1", 1, 80),
    "ipv6 ext headers": frames.ipv6_with_ext("fd01::5", "fd00::1", 80, chain=2),
    "first fragment": frames.fragments_of(frames.udp("10.1.0.5", "10.0.0.1", 1, 53, payload=b"x" * 64))[0],
    "later fragment": frames.fragments_of(frames.udp("10.1.0.5", "10.0.0.1", 1, 53, payload=b"x" * 64))[1],
    "arp": frames.arp(),
    **{f"truncated: {k}": v for k, v in TRUNCATED.items()},
}


@pytest.fixture(scope="module")
def prog():
    lp = load_parse_check_program()
    try:
        yield lp.fd("parse_equiv")
    finally:
        lp.cleanup()


@pytest.mark.parametrize("name", list(FAST))
def test_fast_path_takes_common_frames_and_agrees(prog, name):
    assert bpfsys.prog_test_run(prog, FAST[name]).retval == AGREE


@pytest.mark.parametrize("name", list(SLOW))
def test_fast_path_declines_the_rest(prog, name):
    assert bpfsys.prog_test_run(prog, SLOW[name]).retval == DECLINED
