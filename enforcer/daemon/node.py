"""What the daemon learns from the node's own network namespace: its
addresses (the `host` identity) and each local pod's host-side interface."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..model.objects import IPAddress, Pod

log = logging.getLogger(__name__)

IFF_LOOPBACK = 0x8
NTF_USE = 0x01
NUD_NONE = 0x00
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT


def node_addresses() -> tuple[IPAddress, ...]:
    """Addresses of this namespace's interfaces that can source traffic to a
    pod: everything but loopback and IPv6 link-local."""
    out: list[IPAddress] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
            if addr.is_loopback or (addr.version == 6 and addr.is_link_local):
                continue
            if addr not in out:
                out.append(addr)
    return tuple(out)


class InterfaceResolver:
    """Pod IP -> host-side interface: the route to the IP (Calico-style /32
    routes point straight at the pod's veth); when the route points at a
    bridge (flannel's cni0), the bridge port that has learnt the pod's MAC.

    A bridge forgets a MAC that has sent nothing for its ageing time (300 s
    by default) while the neighbour entry stays: a quiet pod's port is then
    the one it was last found behind, as long as that interface is still a
    port of the bridge (a pod that lost its veth has lost that port too)."""

    def __init__(self) -> None:
        # (pod uid, address) -> (bridge, port) last found through the FDB.
        self._ports: dict[tuple[str, IPAddress], tuple[int, int]] = {}
        # The namespace's interfaces but loopback, by ifindex -> name, as
        # the last resolve() read them (the daemon picks node interfaces
        # from the same read).
        self.links: dict[int, str] = {}

    def resolve(self, pods: list[Pod]) -> dict[str, int]:
        out: dict[str, int] = {}
        with IPRoute() as ipr:
            links = ipr.get_links()
            self.links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links
                          if not link["flags"] & IFF_LOOPBACK}
            bridges = {link["index"] for link in links
                       if (link.get_attr("IFLA_LINKINFO") or {}) and
                       link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "bridge"}
            masters = {link["index"]: link.get_attr("IFLA_MASTER") for link in links}
            live: set[tuple[str, IPAddress]] = set()
            for pod in pods:
                for ip in pod.ips:
                    live.add((pod.uid, ip))
                    ifindex = self._resolve_ip(ipr, (pod.uid, ip), bridges, masters)
                    if ifindex is not None:
                        out[pod.key] = ifindex
                        break
            self._ports = {k: v for k, v in self._ports.items() if k in live}
        return out

    def _resolve_ip(self, ipr: IPRoute, key: tuple[str, IPAddress], bridges: set[int],
                    masters: dict[int, int | None]) -> int | None:
        ip = key[1]
        try:
            routes = ipr.route("get", dst=str(ip))
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        if not routes:
            return None
        oif = routes[0].get_attr("RTA_OIF")
        if oif is None or routes[0]["type"] != 1:  # unicast only: local/blackhole are not pods
            return None
        if oif not in bridges:
            return int(oif)
        port = self._bridge_port(ipr, ip, oif)
        if port is not None:
            self._ports[key] = (oif, port)
            return port
        known = self._ports.get(key)
        if known is not None and known[0] == oif and masters.get(known[1]) == oif:
            return known[1]
        return None

    def _bridge_port(self, ipr: IPRoute, ip: IPAddress, bridge: int) -> int | None:
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        mac = None
        for n in ipr.get_neighbours(ifindex=bridge, family=family):
            if ipaddress.ip_address(n.get_attr("NDA_DST")) == ip and n["state"] & NUD_VALID:
                mac = n.get_attr("NDA_LLADDR")
        if mac is not None:
            for entry in ipr.fdb("dump", master=bridge):
                if entry.get_attr("NDA_LLADDR") == mac and entry["ifindex"] != bridge:
                    return int(entry["ifindex"])
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
