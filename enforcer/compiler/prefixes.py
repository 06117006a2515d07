"""The ipBlock prefixes in force and the innermost one holding an address.

Membership of an address in every ipBlock (cidr minus excepts) is decided by
the longest prefix, among all cidrs and excepts in force, that contains it:
any prefix of the set contains the address exactly when it contains that
innermost one. So one prefix per address ("its class") is all an identity
needs to carry for ipBlocks to apply to pod IPs as they do to other IPs.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrefixIndex:
    def __init__(self, prefixes: set[IPNetwork]) -> None:
        self.prefixes = frozenset(prefixes)
        # family -> prefix lengths, longest first -> networks (as int)
        self._by_len: dict[int, dict[int, set[int]]] = {4: defaultdict(set), 6: defaultdict(set)}
        for p in prefixes:
            self._by_len[p.version][p.prefixlen].add(int(p.network_address))
        self._lens = {v: sorted(d, reverse=True) for v, d in self._by_len.items()}

    def class_of(self, ip: IPAddress) -> IPNetwork | None:
        bits = 32 if ip.version == 4 else 128
        value = int(ip)
        table = self._by_len[ip.version]
        for length in self._lens[ip.version]:
            net = value >> (bits - length) << (bits - length) if length else 0
            if net in table[length]:
                return ipaddress.ip_network((net, length)) if ip.version == 4 else ipaddress.IPv6Network((net, length))
        return None
