"""What the daemon learns from the node's own network namespace: its
addresses (the `host` identity) and each local pod's host-side interface."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..model.objects import IPAddress, IPNetwork, Pod

log = logging.getLogger(__name__)


class _LazyRoute:
    """An IPRoute socket opened on first use: a pass that finds everything
    it needs kept opens none."""

    def __init__(self) -> None:
        self._ipr: IPRoute | None = None

    def get(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def __enter__(self) -> _LazyRoute:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._ipr is not None:
            self._ipr.close()

IFF_LOOPBACK = 0x8
NTF_USE = 0x01
NUD_NONE = 0x00
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT


def node_addresses(ipr: IPRoute) -> tuple[IPAddress, ...]:
    """Addresses of this namespace's interfaces that can source traffic to a
    pod: everything but loopback and IPv6 link-local."""
    out: list[IPAddress] = []
    for msg in ipr.get_addr():
        addr = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
        if addr.is_loopback or (addr.version == 6 and addr.is_link_local):
            continue
        if addr not in out:
            out.append(addr)
    return tuple(out)


# rtnetlink multicast groups (linux/rtnetlink.h, RTNLGRP_*) and messages.
RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = 1, 5, 7, 8
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 9, 11, 19
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 20, 21, 24, 25
NETLINK_ADD_MEMBERSHIP = 1
SOL_NETLINK = 270
RTA_DST = 1
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


@dataclass
class NetChanges:
    """What changed in the namespace's links, addresses, routes and rules
    since the last look (NetWatch.changes): everything (`full`: a message
    this does not narrow down, a lost message, the first look), or the
    links and route destinations named, and whether an address changed."""

    full: bool = False
    links: set[int] = field(default_factory=set)
    routes: list[IPNetwork] = field(default_factory=list)
    addresses: bool = False

    def __bool__(self) -> bool:
        return self.full or bool(self.links or self.routes or self.addresses)


class NetWatch:
    """A netlink socket subscribed to the namespace's link, address, route
    and rule changes, read without blocking: the resolver keeps what it
    found until a change can have moved it, instead of asking the kernel
    again for every pod on every pass (a route lookup per pod address,
    ~1 ms each through pyroute2: 100 ms a pass with 100 local pods).

    Opened on the first look, in the namespace the caller is in then.
    Anything it cannot narrow down (a rule change, an overrun of its
    buffer, a message it does not parse) counts as everything."""

    GROUPS = (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE,
              RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE)

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def changes(self) -> NetChanges:
        """What changed since the last call (the first call: everything).
        Read before the caller looks at the kernel's tables, so a change
        made while it looks is seen by the next call."""
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 socket.NETLINK_ROUTE)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, 0))
                for group in self.GROUPS:
                    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            except OSError:
                sock.close()
                raise
            self._sock = sock
            return NetChanges(full=True)
        out = NetChanges()
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                out.full = True  # messages were lost: anything may have changed
                continue
            if not out.full:
                _read_messages(data, out)


def _read_messages(data: bytes, out: NetChanges) -> None:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            out.full = True
            return
        body = data[offset + _NLMSGHDR.size: offset + length]
        offset += (length + 3) & ~3
        if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= _IFINFOMSG.size:
            out.links.add(_IFINFOMSG.unpack_from(body)[2])
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE) and len(body) >= _RTMSG.size:
            net = _route_destination(body)
            if net is None:
                out.full = True
                return
            out.routes.append(net)
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            # The node's addresses; route lookups only through the local
            # routes an address brings, which come as route messages.
            out.addresses = True
        else:
            out.full = True  # a rule (or what else): every lookup may differ
            return


def _route_destination(body: bytes) -> IPNetwork | None:
    family, dst_len = body[0], body[1]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    size = 4 if family == socket.AF_INET else 16
    raw = bytes(size)  # no RTA_DST: the default route
    offset = _RTMSG.size
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            return None
        if kind == RTA_DST:
            raw = body[offset + _RTATTR.size: offset + length]
            break
        offset += (length + 3) & ~3
    if len(raw) != size:
        return None
    try:
        return ipaddress.ip_network((raw, dst_len), strict=False)
    except ValueError:
        return None


class InterfaceResolver:
    """Pod IP -> host-side interface: the route to the IP (Calico-style /32
    routes point straight at the pod's veth); when the route points at a
    bridge (flannel's cni0), the bridge port that has learnt the pod's MAC.

    A bridge forgets a MAC that has sent nothing for its ageing time (300 s
    by default) while the neighbour entry stays: a quiet pod's port is then
    the one it was last found behind, as long as that interface is still a
    port of the bridge (a pod that lost its veth has lost that port too).

    What a route lookup found (not through a bridge, whose ports learn and
    forget without telling) is kept until NetWatch reports a change that
    can move it: its interface changed or went, a route holding the address
    changed (an address's local routes among them), or a rule changed
    (then everything is looked up again). A pass with no such change asks the kernel only about new pods."""

    def __init__(self) -> None:
        # (pod uid, address) -> (bridge, port) last found through the FDB.
        self._ports: dict[tuple[str, IPAddress], tuple[int, int]] = {}
        # The namespace's interfaces but loopback, by ifindex -> name, as
        # the last resolve() read them (the daemon picks node interfaces
        # from the same read).
        self.links: dict[int, str] = {}
        self._bridges: set[int] = set()
        self._masters: dict[int, int | None] = {}
        # (pod uid, addresses) -> ifindex or None, found by route lookups alone.
        self._routed: dict[tuple[str, tuple[IPAddress, ...]], int | None] = {}
        self.watch = NetWatch()
        self.lookups = 0  # route lookups made (tests: a quiet pass makes none)
        # node_addresses() as the last resolve() read them (again only
        # after a link or address change).
        self.addresses: tuple[IPAddress, ...] = ()

    def resolve(self, pods: list[Pod]) -> dict[str, int]:
        changes = self.watch.changes()
        self._forget(changes)
        out: dict[str, int] = {}
        live: set[tuple[str, IPAddress]] = set()
        with _LazyRoute() as ipr:
            if changes.full or changes.links or not self.links:
                self._read_links(ipr.get())
            if changes.full or changes.links or changes.addresses:
                self.addresses = node_addresses(ipr.get())
            per_pass: dict[tuple[str, int, int], Any] = {}  # neighbour and FDB dumps, once a pass
            for pod in pods:
                key = (pod.uid, pod.ips)
                for ip in pod.ips:
                    live.add((pod.uid, ip))
                if key in self._routed:
                    found = self._routed[key]
                    if found is not None:
                        out[pod.key] = found
                    continue
                bridged = False
                for ip in pod.ips:
                    ifindex, via_bridge = self._resolve_ip(ipr.get(), (pod.uid, ip), per_pass)
                    bridged = bridged or via_bridge
                    if ifindex is not None:
                        out[pod.key] = ifindex
                        break
                if not bridged:
                    self._routed[key] = out.get(pod.key)
        self._ports = {k: v for k, v in self._ports.items() if k in live}
        uids = {pod.uid for pod in pods}
        self._routed = {k: v for k, v in self._routed.items() if k[0] in uids}
        return out

    def _forget(self, changes: NetChanges) -> None:
        if changes.full:
            self._routed.clear()
            return
        if changes.links:
            # A link that came, went or changed: what was found on it, and
            # what was not found anywhere (its route may lead there now).
            self._routed = {k: v for k, v in self._routed.items() if v is not None and v not in changes.links}
        if changes.routes:
            self._routed = {k: v for k, v in self._routed.items()
                            if not any(ip in net for net in changes.routes for ip in k[1])}

    def _read_links(self, ipr: IPRoute) -> None:
        links = ipr.get_links()
        self.links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links
                      if not link["flags"] & IFF_LOOPBACK}
        self._bridges = {link["index"] for link in links
                         if (link.get_attr("IFLA_LINKINFO") or {}) and
                         link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "bridge"}
        self._masters = {link["index"]: link.get_attr("IFLA_MASTER") for link in links}

    def _resolve_ip(self, ipr: IPRoute, key: tuple[str, IPAddress],
                    per_pass: dict[tuple[str, int, int], Any]) -> tuple[int | None, bool]:
        """(ifindex or None, whether a bridge was involved)."""
        ip = key[1]
        self.lookups += 1
        try:
            routes = ipr.route("get", dst=str(ip))
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None, False
            raise
        if not routes:
            return None, False
        oif = routes[0].get_attr("RTA_OIF")
        if oif is None or routes[0]["type"] != 1:  # unicast only: local/blackhole are not pods
            return None, False
        if oif not in self._bridges:
            return int(oif), False
        port = self._bridge_port(ipr, ip, oif, per_pass)
        if port is not None:
            self._ports[key] = (oif, port)
            return port, True
        known = self._ports.get(key)
        if known is not None and known[0] == oif and self._masters.get(known[1]) == oif:
            return known[1], True
        return None, True

    def _bridge_port(self, ipr: IPRoute, ip: IPAddress, bridge: int,
                     per_pass: dict[tuple[str, int, int], Any]) -> int | None:
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        neighbours = per_pass.get(("neigh", bridge, family))
        if neighbours is None:
            neighbours = per_pass[("neigh", bridge, family)] = {
                ipaddress.ip_address(n.get_attr("NDA_DST")): n.get_attr("NDA_LLADDR")
                for n in ipr.get_neighbours(ifindex=bridge, family=family)
                if n.get_attr("NDA_DST") and n["state"] & NUD_VALID}
        mac = neighbours.get(ip)
        if mac is not None:
            fdb = per_pass.get(("fdb", bridge, 0))
            if fdb is None:
                fdb = per_pass[("fdb", bridge, 0)] = {}
                for entry in ipr.fdb("dump", master=bridge):
                    if entry["ifindex"] != bridge:
                        fdb.setdefault(entry.get_attr("NDA_LLADDR"), int(entry["ifindex"]))
            if mac in fdb:
                return fdb[mac]
        # Unknown neighbour, or a MAC the bridge has forgotten: ask the kernel
        # to resolve (a stale entry: re-confirm) the neighbour. The pod's
        # answer crosses its port, where the bridge learns its MAC; the next
        # pass finds it. State NONE, not pyroute2's default PERMANENT, which
        # would make the entry exempt from garbage collection.
        try:
            ipr.neigh("replace", dst=str(ip), ifindex=bridge, flags=NTF_USE, state=NUD_NONE, family=family)
        except NetlinkError as e:
            log.debug("neighbour resolution of %s: %s", ip, e)
        return None
