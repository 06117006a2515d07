"""One aggregated flow of the history, and merging several nodes' histories.

A row counts the verdict events of one (local pod and its labels,
direction, peer, protocol, destination port, verdict). The peer is what a
policy could name: a pod's namespace and labels (not its name: replicas of
one workload share rows), or an address outside the pods (with whether an
ipBlock in force held it, and "host" for the node itself). The port is the
destination's: the local pod's for ingress, the peer's for egress, so that
the client's ephemeral port never multiplies rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..model.meta import PROTOCOLS

# Directions are the local pod's, as the datapath reports them.
INGRESS, EGRESS = "ingress", "egress"
DIRECTIONS = (INGRESS, EGRESS)

# Peer kinds. POD: a pod the cluster's objects name (cluster-wide, any node).
# CIDR: an address no pod has, inside an ipBlock prefix some policy in force
# names. WORLD: any other address outside the pods. HOST: this node itself.
POD, CIDR, WORLD, HOST = "pod", "cidr", "world", "host"
PEER_KINDS = (POD, CIDR, WORLD, HOST)

# Verdicts. AUDIT: passed, but a policy in audit mode would have dropped it
# (traffic that happened all the same). DENIED: dropped by policy in force.
ALLOWED, AUDIT, DENIED = "allowed", "audit", "denied"
VERDICTS = (ALLOWED, AUDIT, DENIED)
PASSED = frozenset({ALLOWED, AUDIT})  # traffic that worked

# Labels that change with every rollout, restart or job run: a selector on
# them would stop matching the workload's next pods, and they would split
# one workload's rows by revision.
VOLATILE_LABELS = frozenset({
    "pod-template-hash",                     # Deployment -> ReplicaSet
    "controller-revision-hash",              # StatefulSet, DaemonSet
    "pod-template-generation",               # DaemonSet (older)
    "statefulset.kubernetes.io/pod-name",    # one pod of a StatefulSet
    "apps.kubernetes.io/pod-index",          # StatefulSet ordinal (1.28+)
    "job-name", "controller-uid",            # Job (before batch.kubernetes.io/)
})
VOLATILE_PREFIXES = ("batch.kubernetes.io/",)  # job-name, controller-uid, job-completion-index

# A row's labels (local and peer) are kept whole or not at all: labels cut
# short would make a wider selector. Past this size (JSON) the event is not
# recorded, only counted, so that one namespace's huge labels cannot grow
# every row: a row stays under about 2 * LABELS_MAX_BYTES + 1 KiB.
LABELS_MAX_BYTES = 2048

Labels = tuple[tuple[str, str], ...]  # sorted by key


def stable_labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in labels.items()
                        if k not in VOLATILE_LABELS and not k.startswith(VOLATILE_PREFIXES)))


def labels_json(labels: Labels) -> str:
    """Canonical (sorted keys, no spaces): equal label sets are equal
    strings, which the store's unique key relies on."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def labels_from_json(text: str) -> Labels:
    return tuple(sorted(json.loads(text).items()))


def labels_text(labels: Labels) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"


_PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()} | {1: "ICMP", 58: "ICMPv6"}
PORTED_PROTOCOLS = frozenset(PROTOCOLS)  # those a NetworkPolicy port can name


def protocol_name(number: int) -> str:
    return _PROTOCOL_NAMES.get(number, str(number))


@dataclass(frozen=True, slots=True, order=True)
class FlowKey:
    namespace: str           # of the local pod
    pod: str
    labels: Labels           # the local pod's stable labels
    direction: str           # INGRESS or EGRESS, the local pod's
    peer_kind: str           # POD, CIDR, WORLD, HOST
    peer_namespace: str      # POD only
    peer_labels: Labels      # POD only: stable labels
    peer_address: str        # not POD: the address
    protocol: str            # TCP, UDP, SCTP, ICMP, ICMPv6 or a number
    port: int                # destination port; 0 for protocols without ports
    verdict: str             # ALLOWED, AUDIT, DENIED

    def peer_text(self) -> str:
        if self.peer_kind == POD:
            return f"{self.peer_namespace} {labels_text(self.peer_labels)}"
        return f"{self.peer_address} ({self.peer_kind})"


@dataclass(frozen=True, slots=True)
class FlowRow:
    key: FlowKey
    count: int          # verdict events: connections passed, packets dropped
    first_seen: float   # unix time
    last_seen: float
    node: str = ""      # whose history it came from ("" once merged from several)

    def merged(self, other: FlowRow) -> FlowRow:
        return replace(self, count=self.count + other.count, first_seen=min(self.first_seen, other.first_seen),
                       last_seen=max(self.last_seen, other.last_seen),
                       node=self.node if self.node == other.node else "")


def merge_rows(histories: Iterable[Iterable[FlowRow]]) -> list[FlowRow]:
    """Several histories (nodes, or pages) as one: rows of the same key add
    up their counts and span their first and last times. Sorted by key."""
    merged: dict[FlowKey, FlowRow] = {}
    for rows in histories:
        for row in rows:
            seen = merged.get(row.key)
            merged[row.key] = row if seen is None else seen.merged(row)
    return [merged[k] for k in sorted(merged)]
