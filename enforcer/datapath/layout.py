"""ctypes mirrors of the map keys and values in bpf/lib/*.h.

These classes follow the C structs field by field, with the same field
names. Which map uses which is declared in registry.py, and from there the
loader appends to the C it compiles a `_Static_assert` for every struct's
size and every field's offset and size: a build whose C and Python disagree
does not compile, so the daemon does not start. Change both or neither.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from typing import TypeAlias

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# common.h
FAMILY_V4 = 4
FAMILY_V6 = 6
DIR_INGRESS = 0
DIR_EGRESS = 1
IDENTITY_ANY = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_SERVICE_UNWRITTEN = 3  # a Service address left out of the services map (compiler/services.py)
IDENTITY_SELF = 4  # the policy map's peer for a pod's own traffic back through a Service (common.h)
IDENTITY_FIRST_ALLOCATED = 256
ADDR_LEN = 16

# ipcache.h: IPCACHE_PREFIX_BASE, derived from IpcacheKey below
# endpoints.h
EP_F_INGRESS_ISOLATED = 0x1
EP_F_EGRESS_ISOLATED = 0x2
EP_F_EGRESS_HOST_JUDGED = 0x4  # endpoints.h
EP_F_SELF_JUDGED = 0x8
# policy.h: POLICY_PREFIX_*, derived from PolicyKey below
# conntrack.h
CT_F_SEEN_REPLY = 0x1
CT_F_FIN_ORIGIN = 0x2
CT_F_FIN_REPLY = 0x4
CT_F_CLOSING = 0x8
CT_F_SERVICE = 0x10
CT_F_RECHECK = 0x20
CT_F_MIDSTREAM = 0x40  # opened mid-stream: its other direction faces policy (conntrack.h)
# services.h
MARK_EP_BITS = 10
SVC_PENDING_F_AMBIGUOUS = 0x1
# events.h
EVENT_ALLOW = 1
EVENT_DROP = 2
EVENT_AUDIT = 3  # passed; an audited policy would drop it (events.h)

Addr: TypeAlias = ctypes.c_uint8 * ADDR_LEN  # type: ignore[valid-type]  # a ctypes array type


def family_of(ip: IPAddress | IPNetwork) -> int:
    return FAMILY_V4 if ip.version == 4 else FAMILY_V6


def addr_bytes(ip: IPAddress) -> Addr:
    """16-byte address field: IPv4 in the first four bytes, the rest zero."""
    raw = ip.packed
    return Addr(*raw.ljust(ADDR_LEN, b"\0"))


def addr_from_bytes(family: int, raw: Addr | bytes) -> IPAddress:
    data = bytes(raw)
    if family == FAMILY_V4:
        return ipaddress.IPv4Address(data[:4])
    return ipaddress.IPv6Address(data[:16])


class IpcacheKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("addr", Addr),
    ]

    @classmethod
    def of(cls, net: IPNetwork) -> IpcacheKey:
        return cls(prefixlen=IPCACHE_PREFIX_BASE + net.prefixlen,
                   family=family_of(net), addr=addr_bytes(net.network_address))

    def network(self) -> IPNetwork:
        ip = addr_from_bytes(self.family, self.addr)
        return ipaddress.ip_network(f"{ip}/{self.prefixlen - IPCACHE_PREFIX_BASE}")


class IpcacheHostKey(ctypes.Structure):
    """Exact-match key for host (/32, /128) ipcache entries."""

    _fields_ = [
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("addr", Addr),
    ]

    @classmethod
    def of(cls, ip: IPAddress) -> IpcacheHostKey:
        return cls(family=family_of(ip), addr=addr_bytes(ip))

    def network(self) -> IPNetwork:
        return ipaddress.ip_network(addr_from_bytes(self.family, self.addr))


def is_host(net: IPNetwork) -> bool:
    return net.prefixlen == net.max_prefixlen


class IpcacheValue(ctypes.Structure):
    _fields_ = [("identity", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class EndpointKey(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("addr", Addr),
    ]

    @classmethod
    def of(cls, ip: IPAddress) -> EndpointKey:
        return cls(family=family_of(ip), addr=addr_bytes(ip))

    def ip(self) -> IPAddress:
        return addr_from_bytes(self.family, self.addr)


class EndpointInfo(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class PolicyKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("direction", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("dport", ctypes.c_uint16),  # big-endian on the wire: see maps.py
        ("pad", ctypes.c_uint16),
    ]


class PolicyEntry(ctypes.Structure):
    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("reason", ctypes.c_uint8),
        ("audit_reason", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
        ("audit_rule_id", ctypes.c_uint32),
    ]


class CtKey(ctypes.Structure):
    _fields_ = [
        ("pod", Addr),
        ("peer", Addr),
        ("ifindex", ctypes.c_uint32),
        ("pod_port", ctypes.c_uint16),  # big-endian
        ("peer_port", ctypes.c_uint16),  # big-endian
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class CtEntry(ctypes.Structure):
    _fields_ = [
        ("expires_ns", ctypes.c_uint64),  # datapath clock (jiffies in ns)
        ("rule_id", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("origin", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


class ServiceKey(ctypes.Structure):
    """A Service frontend kube-proxy DNATs on this node (services.h)."""

    _fields_ = [
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("port", ctypes.c_uint16),  # big-endian
        ("addr", Addr),
    ]

    @classmethod
    def of(cls, ip: IPAddress, proto: int, port: int) -> ServiceKey:
        return cls(family=family_of(ip), proto=proto, port=socket.htons(port), addr=addr_bytes(ip))

    def frontend(self) -> tuple[IPAddress, int, int]:
        return addr_from_bytes(self.family, self.addr), self.proto, socket.ntohs(self.port)


class ServiceValue(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32)]


class SvcPendingKey(ctypes.Structure):
    _fields_ = [
        ("client", Addr),
        ("client_port", ctypes.c_uint16),  # big-endian
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
    ]


class SvcPendingValue(ctypes.Structure):
    _fields_ = [
        ("service_addr", Addr),
        ("service_port", ctypes.c_uint16),  # big-endian
        ("flags", ctypes.c_uint16),
    ]


class FragKey(ctypes.Structure):
    _fields_ = [
        ("saddr", Addr),
        ("daddr", Addr),
        ("id", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class FragRecord(ctypes.Structure):
    _fields_ = [
        ("sport", ctypes.c_uint16),  # big-endian
        ("dport", ctypes.c_uint16),  # big-endian
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class EventBucket(ctypes.Structure):
    _fields_ = [
        ("credit_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
        ("lost", ctypes.c_uint64),
    ]


class VerdictEvent(ctypes.Structure):
    _fields_ = [
        ("timestamp_ns", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("peer_identity", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("sport", ctypes.c_uint16),  # big-endian
        ("dport", ctypes.c_uint16),  # big-endian
        ("saddr", Addr),
        ("daddr", Addr),
    ]


def _bits(struct: type[ctypes.Structure], first: str, end: str) -> int:
    """Bits of an LPM key from field `first` up to where field `end` starts."""
    return 8 * (getattr(struct, end).offset - getattr(struct, first).offset)


# LPM prefix lengths, from the key layouts: the C side gets them as -D flags
# (registry.py) and checks them against its own structs with _Static_assert.
IPCACHE_PREFIX_BASE = _bits(IpcacheKey, "family", "addr")  # family + pad: 32
POLICY_PREFIX_EXACT = _bits(PolicyKey, "identity", "protocol")  # identity, endpoint, direction: 56
POLICY_PREFIX_PROTO = _bits(PolicyKey, "identity", "dport")  # + protocol, every port: 64
POLICY_PREFIX_FULL = _bits(PolicyKey, "identity", "pad")  # + destination port: 80
