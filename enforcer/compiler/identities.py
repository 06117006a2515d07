"""Identities: content-derived ids of pod addresses and of ipBlock
prefixes, kept up to date as pods and prefixes come and go.

A pod address's identity is (namespace, labels, family, the innermost
ipBlock prefix in force holding it: its class, named ports), so pods of one
workload share one per family and everything a selector, an ipBlock or a
named port can tell apart is apart. A prefix in force has an identity of
its own (CidrIdentity): the addresses in it that are no pod's resolve to it
in the ipcache.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Mapping

from ..errors import InvalidObjectError
from ..model.objects import IPAddress, IPBlock, IPNetwork, Pod
from .desired import CidrIdentity, IdentityKey, PodIdentity
from .ids import StableIds
from .prefixes import BlockIndex, PrefixSet

# (identity, its key, whether it is in use now): an identity that came into
# use or went out of it during a pass.
Flip = tuple[int, PodIdentity, bool]


def host_network(ip: IPAddress) -> IPNetwork:
    """ipaddress.ip_network(ip), made from the integer (no text round trip)."""
    if ip.version == 4:
        return ipaddress.IPv4Network((int(ip), 32))
    if ip.scope_id:
        return ipaddress.ip_network(ip)
    return ipaddress.IPv6Network((int(ip), 128))


class PodIdentities:
    """Identities of running pods' addresses, counted by the addresses using
    them, indexed by namespace (with their labels, for selectors) and by
    ipBlock class; and the pod part of the ipcache (an address several
    running pods claim goes to the first by key, the rest are reported)."""

    def __init__(self, ids: StableIds[IdentityKey], prefixes: PrefixSet) -> None:
        self.ids = ids
        self.prefixes = prefixes  # for the class of an address
        self.refs: dict[int, int] = {}
        self.keys: dict[int, PodIdentity] = {}
        self.by_ns: dict[str, dict[int, dict[str, str]]] = {}
        self.by_class: dict[IPNetwork | None, set[int]] = {}
        self.touched: dict[int, tuple[bool, PodIdentity]] = {}  # this pass: existed before?
        self._all: frozenset[int] | None = None
        # Running pods with addresses of their own: (address, identity) each.
        self.live: dict[str, tuple[tuple[IPAddress, int], ...]] = {}
        # Claimants of an address (one key, or a sorted list when several
        # running pods claim it: the first keeps it).
        self.claims: dict[IPAddress, str | list[str]] = {}
        # Claimed addresses by family, as sorted integers (to find those
        # inside a prefix).
        self.sorted_ips: dict[int, list[int]] = {4: [], 6: []}
        self.conflicts: set[IPAddress] = set()
        self.host: dict[IPAddress, IPNetwork] = {}
        self.pod_ipcache: dict[IPNetwork, int] = {}
        self.ipcache_dirty: set[IPNetwork] = set()  # the pass's, set by begin_pass

    def begin_pass(self, ipcache_dirty: set[IPNetwork]) -> None:
        self.touched = {}
        self.ipcache_dirty = ipcache_dirty

    def flips(self) -> list[Flip]:
        """Identities that came into use or went out of it this pass."""
        found = [(i, key, not existed) for i, (existed, key) in self.touched.items() if existed != (i in self.refs)]
        if found:
            self._all = None
        return found

    def all_identities(self) -> frozenset[int]:
        if self._all is None:
            self._all = frozenset(self.keys)
        return self._all

    def acquire(self, key: PodIdentity) -> int:
        ident = self.ids.get(key)
        n = self.refs.get(ident, 0)
        self.refs[ident] = n + 1
        if n == 0:
            self.keys[ident] = key
            self.by_ns.setdefault(key.namespace, {})[ident] = dict(key.labels)
            self.by_class.setdefault(key.block_class, set()).add(ident)
            if ident not in self.touched:
                self.touched[ident] = (False, key)
        return ident

    def release(self, ident: int) -> None:
        n = self.refs[ident] - 1
        if n:
            self.refs[ident] = n
            return
        del self.refs[ident]
        key = self.keys.pop(ident)
        in_ns = self.by_ns[key.namespace]
        del in_ns[ident]
        if not in_ns:
            del self.by_ns[key.namespace]
        in_class = self.by_class[key.block_class]
        in_class.discard(ident)
        if not in_class:
            del self.by_class[key.block_class]
        if ident not in self.touched:
            self.touched[ident] = (True, key)

    def add_pod(self, key: str, pod: Pod) -> None:
        labels = frozenset(pod.labels.items())
        named = frozenset((p.name, p.protocol, p.port) for p in pod.ports if p.name)
        ips = tuple((ip, self.acquire(PodIdentity(pod.namespace, labels, ip.version, self.prefixes.class_of(ip),
                                                  named)))
                    for ip in pod.ips)
        self.live[key] = ips
        for ip, ident in ips:
            self.claim(ip, key, ident)

    def drop_pod(self, key: str) -> None:
        ips = self.live.pop(key, None)
        if ips is None:
            return
        for ip, ident in ips:
            self.unclaim(ip, key)
            self.release(ident)

    def identity_of(self, key: str, ip: IPAddress) -> int:
        for addr, ident in self.live[key]:
            if addr == ip:
                return ident
        raise KeyError((key, ip))

    def set_pod_ipcache(self, net: IPNetwork, ident: int) -> None:
        if self.pod_ipcache.get(net) != ident:
            self.pod_ipcache[net] = ident
            self.ipcache_dirty.add(net)

    def claim(self, ip: IPAddress, key: str, ident: int) -> None:
        have = self.claims.get(ip)
        if have is None:
            self.claims[ip] = key
            self.host[ip] = net = host_network(ip)
            self.set_pod_ipcache(net, ident)
            bisect.insort(self.sorted_ips[ip.version], int(ip))
            return
        if isinstance(have, str):
            have = [have]
            self.claims[ip] = have
            self.conflicts.add(ip)
        bisect.insort(have, key)
        if have[0] == key:
            self.set_pod_ipcache(self.host[ip], ident)

    def unclaim(self, ip: IPAddress, key: str) -> None:
        have = self.claims[ip]
        if isinstance(have, str):
            del self.claims[ip]
            net = self.host.pop(ip)
            del self.pod_ipcache[net]
            self.ipcache_dirty.add(net)
            ints = self.sorted_ips[ip.version]
            del ints[bisect.bisect_left(ints, int(ip))]
            return
        have.remove(key)
        winner = have[0]
        if len(have) == 1:
            self.claims[ip] = winner
            self.conflicts.discard(ip)
        self.set_pod_ipcache(self.host[ip], self.identity_of(winner, ip))

    def winner(self, ip: IPAddress) -> str:
        have = self.claims[ip]
        return have if isinstance(have, str) else have[0]

    def reclassify(self, delta: list[IPNetwork]) -> None:
        """Addresses inside a prefix that came or went may have another
        class now: their identities follow."""
        inside: set[IPAddress] = set()
        for p in delta:
            ints = self.sorted_ips[p.version]
            lo = bisect.bisect_left(ints, int(p.network_address))
            hi = bisect.bisect_right(ints, int(p.broadcast_address))
            make = ipaddress.IPv4Address if p.version == 4 else ipaddress.IPv6Address
            inside.update(make(v) for v in ints[lo:hi])
        pods: set[str] = set()
        for ip in inside:
            have = self.claims[ip]
            pods.update((have,) if isinstance(have, str) else have)
        for key in sorted(pods):
            ips = self.live[key]
            new = None
            for i, (ip, ident) in enumerate(ips):
                if ip not in inside:
                    continue
                cls = self.prefixes.class_of(ip)
                old = self.keys[ident]
                if cls == old.block_class:
                    continue
                nid = self.acquire(PodIdentity(old.namespace, old.labels, old.family, cls, old.named_ports))
                self.release(ident)
                if new is None:
                    new = list(ips)
                new[i] = (ip, nid)
                if self.winner(ip) == key:
                    self.set_pod_ipcache(self.host[ip], nid)
            if new is not None:
                self.live[key] = tuple(new)

    def conflict_errors(self, pods: Mapping[str, Pod]) -> list[InvalidObjectError]:
        found = []
        for ip in self.conflicts:
            claimants = self.claims[ip]
            assert isinstance(claimants, list)  # several claim a conflicting address
            owner, *others = claimants
            for other in others:
                pod = pods[other]
                found.append(((other, pod.ips.index(ip)), InvalidObjectError(
                    "Pod", pod.namespace, pod.name,
                    f"address {ip} is also claimed by running pod {owner}; keeping {owner}")))
        found.sort(key=lambda f: f[0])
        return [e for _, e in found]


class CidrIdentities:
    """The ipBlock prefixes in force (PrefixSet), the prefixes inside each
    block in use (BlockIndex), and an identity per prefix."""

    def __init__(self, ids: StableIds[IdentityKey]) -> None:
        self.ids = ids
        self.prefixes = PrefixSet()
        self.blocks = BlockIndex(self.prefixes)
        self.by_prefix: dict[IPNetwork, int] = {}
        self.keys: dict[int, CidrIdentity] = {}
        self.gone: dict[IPNetwork, int] = {}  # the last change's prefixes that left, with their ids

    def change(self, came: list[IPNetwork], went: list[IPNetwork], ipcache_dirty: set[IPNetwork]
               ) -> dict[IPBlock, tuple[list[IPNetwork], list[IPNetwork]]]:
        """Identities for the prefixes that came into force, none for those
        that left; the blocks holding them follow. Returns, per block whose
        content changed, (prefixes in, prefixes out)."""
        self.gone = {}
        for p in went:
            ident = self.by_prefix.pop(p)
            del self.keys[ident]
            self.gone[p] = ident
        for p in came:
            key = CidrIdentity(p)
            ident = self.by_prefix[p] = self.ids.get(key)
            self.keys[ident] = key
        ipcache_dirty.update(came)
        ipcache_dirty.update(went)
        return self.blocks.apply(came, went)

    def identity_of(self, prefix: IPNetwork) -> int:
        """Of a prefix in force, or that left in the last change."""
        found = self.by_prefix.get(prefix)
        return found if found is not None else self.gone[prefix]
