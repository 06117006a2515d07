"""Map-entry encoding that needs no kernel: port ranges as masked prefixes,
policy keys, configuration checks."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from enforcer.datapath.layout import POLICY_PREFIX_EXACT, POLICY_PREFIX_FULL, POLICY_PREFIX_PROTO
from enforcer.datapath.maps import PolicyRule
from enforcer.datapath.policykeys import port_range_prefixes
from enforcer.datapath.source import DatapathConfig
from enforcer.errors import ConfigError


def covered(prefixes: list[tuple[int, int]]) -> set[int]:
    out: set[int] = set()
    for port, bits in prefixes:
        size = 1 << (16 - bits)
        assert port % size == 0, "block not aligned"
        out.update(range(port, port + size))
    return out


@pytest.mark.parametrize("start,end,count", [
    (80, 80, 1), (1, 65535, 16), (0, 65535, 1), (1000, 2000, 8), (32768, 65535, 1),
    (8080, 8081, 1), (0x7fff, 0x8000, 2), (65535, 65535, 1),
])
def test_port_range_prefixes_table(start, end, count):
    p = port_range_prefixes(start, end)
    assert covered(p) == set(range(start, end + 1))
    assert len(p) == count


def test_port_range_prefixes_random_ranges_are_exact_and_minimal():
    rnd = random.Random(7)
    for _ in range(300):
        a, b = sorted(rnd.sample(range(65536), 2))
        p = port_range_prefixes(a, b)
        assert covered(p) == set(range(a, b + 1))
        assert sum(1 << (16 - bits) for _, bits in p) == b - a + 1  # no overlap
        assert len(p) <= 30  # at most 2 blocks per bit


@pytest.mark.parametrize("bad", [(-1, 5), (5, 4), (0, 65536)])
def test_port_range_rejects_invalid(bad):
    with pytest.raises(ValueError):
        port_range_prefixes(*bad)


def test_policy_rule_keys():
    any_proto = PolicyRule(1, 0, 300, None, None, None, 9).keys()
    assert [k.prefixlen for k in any_proto] == [POLICY_PREFIX_EXACT]
    all_ports = PolicyRule(1, 0, 300, 6, None, None, 9).keys()
    assert [(k.prefixlen, k.protocol) for k in all_ports] == [(POLICY_PREFIX_PROTO, 6)]
    one = PolicyRule(1, 0, 300, 17, 53, None, 9).keys()
    assert [(k.prefixlen, socket.ntohs(k.dport)) for k in one] == [(POLICY_PREFIX_FULL, 53)]
    rng = PolicyRule(1, 1, 0, 6, 1000, 2000, 9).keys()
    assert len(rng) == 8 and all(k.direction == 1 and k.identity == 0 for k in rng)
    with pytest.raises(ValueError):
        PolicyRule(1, 0, 300, None, 80, None, 9).keys()


@pytest.mark.parametrize("change,message", [
    (dict(ct_max=0), "ct_max"),
    (dict(events_ring_pages=3), "power of two"),
    (dict(max_endpoint_id=1025), "at most 1024"),
    (dict(mark_shift=23), "mark_shift"),
    (dict(ct_timeout_service_other=30), "below netfilter"),
    (dict(pin_dir=Path("/tmp/x")), "not under /sys/fs/bpf"),
])
def test_config_validation(change, message):
    with pytest.raises(ConfigError, match=message):
        DatapathConfig(**change).validate()
