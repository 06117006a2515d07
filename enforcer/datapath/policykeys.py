"""The one expander from an allow to policy map keys. The policy map is an
LPM trie keyed `identity endpoint direction | protocol | dport` (policy.h):
a key stopping before the protocol matches everything, one stopping before
the port matches every port of the protocol, and a port range becomes a few
aligned power-of-two blocks. The compiler writes these keys and the
datapath tests and benchmarks build theirs with the same functions."""

from __future__ import annotations

import socket

from ..records import PolicyMapKey
from .layout import POLICY_PREFIX_EXACT, POLICY_PREFIX_PROTO, PolicyKey

# (protocol, port, prefixlen): where a key stops, for any identity.
PortMatch = tuple[int, int, int]


def port_range_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """Cover [start, end] with aligned power-of-two blocks: (port, prefix
    bits of the 16-bit port that must match). 80-80 -> [(80, 16)];
    1-65535 -> 16 blocks."""
    if not (0 <= start <= end <= 65535):
        raise ValueError(f"invalid port range {start}-{end}")
    out: list[tuple[int, int]] = []
    while start <= end:
        size = start & -start if start else 1 << 16
        while size > end - start + 1:
            size >>= 1
        out.append((start, 16 - size.bit_length() + 1))
        start += size
    return out


def port_matches(protocol: int | None, port: int | None = None, end_port: int | None = None) -> list[PortMatch]:
    """protocol None: every protocol (and so every port); port None: every
    port of the protocol; end_port extends port into a range."""
    if protocol is None:
        if port is not None:
            raise ValueError("a port needs a protocol")
        return [(0, 0, POLICY_PREFIX_EXACT)]
    if port is None:
        return [(protocol, 0, POLICY_PREFIX_PROTO)]
    end = end_port if end_port is not None else port
    return [(protocol, start, POLICY_PREFIX_PROTO + bits) for start, bits in port_range_prefixes(port, end)]


def policy_map_keys(identity: int, endpoint_id: int, direction: int, protocol: int | None,
                    port: int | None = None, end_port: int | None = None) -> list[PolicyMapKey]:
    return [PolicyMapKey(identity, endpoint_id, direction, *m) for m in port_matches(protocol, port, end_port)]


def to_policy_key(k: PolicyMapKey) -> PolicyKey:
    """The kernel's layout of a key (the port in network byte order)."""
    identity, endpoint_id, direction, protocol, port, prefixlen = k  # a plain tuple of the same values too
    return PolicyKey(prefixlen=prefixlen, identity=identity, endpoint_id=endpoint_id,
                     direction=direction, protocol=protocol, dport=socket.htons(port))


def from_policy_key(k: PolicyKey) -> PolicyMapKey:
    return PolicyMapKey(k.identity, k.endpoint_id, k.direction, k.protocol, socket.ntohs(k.dport), k.prefixlen)
