"""The ipBlock prefixes in force, the innermost one holding an address, and
the prefixes lying inside each ipBlock.

Membership of an address in every ipBlock (cidr minus excepts) is decided by
the longest prefix, among all cidrs and excepts in force, that contains it:
any prefix of the set contains the address exactly when it contains that
innermost one. So one prefix per address ("its class") is all an identity
needs to carry for ipBlocks to apply to pod IPs as they do to other IPs.

Every operation here costs in proportion to what changed or what it
returns, never to the product of two sets (an ipBlock with 50k excepts, or
50k ipBlocks, is one namespace owner's choice and must not cost quadratic
time on every node):

  - class_of: one hash probe per prefix length in use;
  - PrefixSet.within(cidr): a range of a list sorted by (start, length);
  - ExceptIndex.covers(prefix): a bisection over the block's excepts,
    reduced to disjoint intervals;
  - BlockIndex.apply(added, removed): for each prefix that came or went,
    one hash probe per cidr length in use finds the blocks holding it.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator

from ..model.objects import IPBlock

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BITS = {4: 32, 6: 128}


def span(net: IPNetwork) -> tuple[int, int]:
    """First and last address of a prefix, as integers."""
    start = int(net.network_address)
    return start, start | ((1 << (_BITS[net.version] - net.prefixlen)) - 1)


def _sort_key(net: IPNetwork) -> int:
    # (start, length) in one integer: a prefix sorts before the longer
    # prefixes it holds, which start at or after it.
    return int(net.network_address) << 8 | net.prefixlen


class PrefixSet:
    """Prefixes in force, counted by how many holders (policies) want each.

    add() and remove() return the prefixes that came into force or left it,
    which is all the rest of the compiler needs to update."""

    def __init__(self) -> None:
        self._refs: dict[IPNetwork, int] = {}
        # family -> prefix length -> network addresses (as int)
        self._by_len: dict[int, dict[int, set[int]]] = {4: defaultdict(set), 6: defaultdict(set)}
        self._lens: dict[int, list[int]] = {4: [], 6: []}
        # family -> sorted _sort_key of every prefix; rebuilt lazily
        self._sorted: dict[int, list[int]] = {4: [], 6: []}
        self._net_of: dict[int, dict[int, IPNetwork]] = {4: {}, 6: {}}
        self._pending: dict[int, tuple[set[int], set[int]]] = {4: (set(), set()), 6: (set(), set())}

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, net: object) -> bool:
        return net in self._refs

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self._refs)

    def count_full_length(self) -> int:
        """Prefixes of one address (/32, /128)."""
        return sum(len(self._by_len[fam].get(bits, ())) for fam, bits in _BITS.items())

    def add(self, nets: Iterable[IPNetwork]) -> list[IPNetwork]:
        came = []
        refs = self._refs
        for net in nets:
            n = refs.get(net, 0)
            refs[net] = n + 1
            if n == 0:
                came.append(net)
                self._index(net, True)
        return came

    def remove(self, nets: Iterable[IPNetwork]) -> list[IPNetwork]:
        went = []
        refs = self._refs
        for net in nets:
            n = refs[net] - 1
            if n:
                refs[net] = n
            else:
                del refs[net]
                went.append(net)
                self._index(net, False)
        return went

    def _index(self, net: IPNetwork, present: bool) -> None:
        fam, length = net.version, net.prefixlen
        addrs = self._by_len[fam][length]
        key = _sort_key(net)
        adds, dels = self._pending[fam]
        if present:
            if not addrs:
                bisect.insort(self._lens[fam], length)
            addrs.add(int(net.network_address))
            self._net_of[fam][key] = net
            if key in dels:
                dels.discard(key)
            else:
                adds.add(key)
        else:
            addrs.discard(int(net.network_address))
            if not addrs:
                del self._by_len[fam][length]
                self._lens[fam].remove(length)
            del self._net_of[fam][key]
            if key in adds:
                adds.discard(key)
            else:
                dels.add(key)

    def _sorted_keys(self, fam: int) -> list[int]:
        adds, dels = self._pending[fam]
        keys = self._sorted[fam]
        if adds or dels:
            if (len(adds) + len(dels)) * 32 < len(keys):
                for k in dels:
                    del keys[bisect.bisect_left(keys, k)]
                for k in adds:
                    bisect.insort(keys, k)
            else:
                keys = self._sorted[fam] = sorted(self._net_of[fam])
            adds.clear()
            dels.clear()
        return keys

    def class_of(self, ip: IPAddress) -> IPNetwork | None:
        """The innermost prefix in force holding `ip`."""
        fam = ip.version
        bits = _BITS[fam]
        value = int(ip)
        table = self._by_len[fam]
        lens = self._lens[fam]
        for i in range(len(lens) - 1, -1, -1):
            length = lens[i]
            net = value >> (bits - length) << (bits - length) if length else 0
            if net in table[length]:
                return self._net_of[fam][net << 8 | length]
        return None

    def within(self, cidr: IPNetwork) -> list[IPNetwork]:
        """The prefixes in force lying wholly inside `cidr` (itself included)."""
        fam = cidr.version
        keys = self._sorted_keys(fam)
        start, end = span(cidr)
        lo = bisect.bisect_left(keys, start << 8)
        hi = bisect.bisect_right(keys, end << 8 | 0xFF)
        net_of = self._net_of[fam]
        min_len = cidr.prefixlen
        # Aligned prefixes starting inside the cidr are inside it unless
        # shorter (only a prefix holding the cidr starts with it).
        return [net_of[k] for k in keys[lo:hi] if k & 0xFF >= min_len]


class ExceptIndex:
    """An ipBlock's excepts as sorted disjoint intervals (an except inside
    another adds nothing), to test a prefix against all of them at once."""

    __slots__ = ("starts", "ends")

    def __init__(self, excepts: Iterable[IPNetwork]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for s, e in sorted(span(n) for n in excepts):
            if ends and s <= ends[-1]:
                continue  # inside the previous one (aligned prefixes nest or are apart)
            starts.append(s)
            ends.append(e)
        self.starts = starts
        self.ends = ends

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and end <= self.ends[i]


class BlockIndex:
    """For each ipBlock in use, the prefixes in force lying wholly inside it
    (inside the cidr and inside none of the excepts), kept up to date as
    prefixes come and go."""

    def __init__(self, prefixes: PrefixSet) -> None:
        self.prefixes = prefixes
        self.inside: dict[IPBlock, frozenset[IPNetwork]] = {}
        self._excepts: dict[IPBlock, ExceptIndex | None] = {}  # None: no excepts
        # family -> cidr length -> cidr start -> blocks with that cidr
        self._by_cidr: dict[int, dict[int, dict[int, list[IPBlock]]]] = {4: {}, 6: {}}

    def get(self, block: IPBlock) -> frozenset[IPNetwork]:
        found = self.inside.get(block)
        if found is None:
            ex = self._excepts[block] = ExceptIndex(block.excepts) if block.excepts else None
            candidates = self.prefixes.within(block.cidr)
            found = frozenset(candidates if ex is None else [p for p in candidates if not ex.covers(*span(p))])
            self.inside[block] = found
            cidr = block.cidr
            self._by_cidr[cidr.version].setdefault(cidr.prefixlen, {}).setdefault(
                int(cidr.network_address), []).append(block)
        return found

    def apply(self, came: Iterable[IPNetwork], went: Iterable[IPNetwork]
              ) -> dict[IPBlock, tuple[list[IPNetwork], list[IPNetwork]]]:
        """Prefixes came into force or left it: update the blocks holding
        them; per block whose content changed, (prefixes in, prefixes out)."""
        changes: dict[IPBlock, tuple[list[IPNetwork], list[IPNetwork]]] = {}
        for net, now in [(n, True) for n in came] + [(n, False) for n in went]:
            fam = net.version
            bits = _BITS[fam]
            value = int(net.network_address)
            start, end = span(net)
            for length, by_start in self._by_cidr[fam].items():
                if length > net.prefixlen:
                    continue
                blocks = by_start.get(value >> (bits - length) << (bits - length) if length else 0)
                for block in blocks or ():
                    ex = self._excepts[block]
                    if ex is not None and ex.covers(start, end):
                        continue
                    changes.setdefault(block, ([], []))[0 if now else 1].append(net)
        for block, (ins, outs) in changes.items():
            self.inside[block] = self.inside[block].difference(outs).union(ins)
        return changes

    def retain(self, blocks: set[IPBlock]) -> None:
        """Forget the blocks no longer used."""
        if len(blocks) == len(self.inside):
            return
        for block in [b for b in self.inside if b not in blocks]:
            del self.inside[block]
            del self._excepts[block]
            cidr = block.cidr
            by_len = self._by_cidr[cidr.version]
            by_start = by_len[cidr.prefixlen]
            start = int(cidr.network_address)
            listed = by_start[start]
            listed.remove(block)
            if not listed:
                del by_start[start]
                if not by_start:
                    del by_len[cidr.prefixlen]
