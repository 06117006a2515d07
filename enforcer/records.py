"""Plain records that cross layers: what the compiler produces, sync
writes and the maps hold, in plain values. The kernel's layouts of the same
things (ctypes, mirrored in bpf/lib) are in enforcer/datapath/layout.py; the
conversions between the two are in enforcer/datapath/sync.py.

NamedTuples: they hash and compare as the tuples they are (a dict keyed by
them is as fast as one keyed by tuples), and say what each field is."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyMapKey(NamedTuple):
    """One policy map key (layout.PolicyKey) in plain values: protocol 0
    and port 0 where the prefix stops first (policykeys.py)."""

    identity: int
    endpoint_id: int
    direction: int
    protocol: int
    port: int  # host byte order
    prefixlen: int


class PolicyValue(NamedTuple):
    """What a policy map entry holds (layout.PolicyEntry): the verdict reason
    (ALLOW_POLICY, DROP_ADMIN, ...) and the id of the rule that decided, 0
    for none. Ordered by rule id first: where rules compete for a key, the
    lowest id owns it, the same on every node.

    Where the enforced verdict allows but the policies in audit mode would
    drop, audit_reason is that drop's reason (DROP_POLICY, DROP_ADMIN,
    DROP_BASELINE) and audit_rule_id its rule; 0 and 0 elsewhere."""

    rule_id: int
    reason: int
    audit_rule_id: int = 0
    audit_reason: int = 0


class EndpointRecord(NamedTuple):
    """What the endpoints map holds for one local pod address."""

    endpoint_id: int
    ifindex: int
    identity: int
    flags: int


class EndpointIdRecord(NamedTuple):
    """What the endpoint_ids map holds for one endpoint id."""

    ifindex: int
    identity: int
    flags: int


class Frontend(NamedTuple):
    """A Service frontend kube-proxy DNATs on this node (services.h)."""

    address: IPAddress
    protocol: int  # IP protocol number
    port: int
