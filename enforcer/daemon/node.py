"""What the daemon learns from the node's own network namespace: its
addresses (the `host` identity) and each local pod's host-side interface."""

from __future__ import annotations

import errno
import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..model.objects import IPAddress, Pod

log = logging.getLogger(__name__)

NTF_USE = 0x01
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
    bridge (flannel's cni0), the bridge port that has learnt the pod's MAC."""

    def resolve(self, pods: list[Pod]) -> dict[str, int]:
        out: dict[str, int] = {}
        with IPRoute() as ipr:
            bridges = {link["index"] for link in ipr.get_links()
                       if (link.get_attr("IFLA_LINKINFO") or {}) and
                       link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "bridge"}
            for pod in pods:
                for ip in pod.ips:
                    ifindex = self._resolve_ip(ipr, ip, bridges)
                    if ifindex is not None:
                        out[pod.key] = ifindex
                        break
        return out

    def _resolve_ip(self, ipr: IPRoute, ip: IPAddress, bridges: set[int]) -> int | None:
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
        return self._bridge_port(ipr, ip, oif)

    def _bridge_port(self, ipr: IPRoute, ip: IPAddress, bridge: int) -> int | None:
        mac = None
        for n in ipr.get_neighbours(ifindex=bridge, family=4 if ip.version == 4 else 10):
            if ipaddress.ip_address(n.get_attr("NDA_DST")) == ip and n["state"] & NUD_VALID:
                mac = n.get_attr("NDA_LLADDR")
        if mac is None:
            # Ask the kernel to resolve the neighbour; the next pass finds it.
            try:
                ipr.neigh("replace", dst=str(ip), ifindex=bridge, flags=NTF_USE, family=4 if ip.version == 4 else 10)
            except NetlinkError as e:
                log.debug("neighbour resolution of %s: %s", ip, e)
            return None
        for entry in ipr.fdb("dump", master=bridge):
            if entry.get_attr("NDA_LLADDR") == mac and entry["ifindex"] != bridge:
                return int(entry["ifindex"])
        return None
