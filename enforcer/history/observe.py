"""A verdict event -> the history row it counts towards, with names resolved
from the compiled state current when the event is read (as the flow stream
resolves them: a pod's address may be another pod's tomorrow)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..compiler.desired import CidrIdentity, DesiredState, EndpointSpec
from ..datapath.events import Verdict
from ..datapath.layout import IDENTITY_HOST
from ..datapath.reasons import Reason
from ..model.objects import IPAddress, Pod
from ..model.state import ClusterSnapshot
from .rows import (
    ALLOWED,
    AUDIT,
    CIDR,
    DENIED,
    EGRESS,
    HOST,
    LABELS_MAX_BYTES,
    POD,
    PORTED_PROTOCOLS,
    WORLD,
    FlowKey,
    labels_json,
    protocol_name,
    stable_labels,
)

# Drops that policy decided: the flows a suggestion must keep closed. Other
# drops (malformed, spoofed, unknown endpoint, ...) are not flows between
# two parties a policy could name; the counters have them.
POLICY_DROPS = frozenset(int(Reason[name]) for name in ("DROP_POLICY", "DROP_ADMIN", "DROP_BASELINE"))
ALLOW_SELF = int(Reason["ALLOW_SELF"])  # a pod's own packet back to it through a Service


class ResolvingView(Protocol):
    """What observing needs of the API's StateView (which has it all): the
    snapshot, the compiled state and its indexes."""

    @property
    def snapshot(self) -> ClusterSnapshot: ...

    @property
    def desired(self) -> DesiredState: ...

    @property
    def pod_by_ip(self) -> Mapping[IPAddress, Pod]: ...

    @property
    def endpoint_by_id(self) -> Mapping[int, EndpointSpec]: ...


def verdict_of(v: Verdict) -> str | None:
    """ALLOWED, AUDIT or DENIED; None for events that are not a flow a
    policy could name (a pod's hairpin to itself, non-policy drops)."""
    if v.audit:
        return AUDIT
    if v.allowed:
        return None if int(v.reason) == ALLOW_SELF else ALLOWED
    return DENIED if int(v.reason) in POLICY_DROPS else None


def flow_key(v: Verdict, view: ResolvingView) -> FlowKey | None:
    """The row v counts towards; None when it is no such flow (verdict_of),
    its endpoint is not (or no longer) a local pod of view, or a side's
    labels are too large to keep (rows.LABELS_MAX_BYTES)."""
    verdict = verdict_of(v)
    if verdict is None:
        return None
    endpoint = view.endpoint_by_id.get(v.endpoint_id)
    pod = view.snapshot.pods.get(endpoint.pod) if endpoint is not None else None
    if pod is None:
        return None
    labels = stable_labels(pod.labels)
    egress = v.direction == EGRESS
    peer_ip = v.dst if egress else v.src
    peer = view.pod_by_ip.get(peer_ip)
    peer_namespace, peer_labels, peer_address = "", stable_labels({}), ""
    if peer is not None:
        kind, peer_namespace, peer_labels = POD, peer.namespace, stable_labels(peer.labels)
    else:
        peer_address = str(peer_ip)
        if v.peer_identity == IDENTITY_HOST:
            kind = HOST
        elif isinstance(view.desired.identities.get(v.peer_identity), CidrIdentity):
            kind = CIDR
        else:
            kind = WORLD
    if max(len(labels_json(labels)), len(labels_json(peer_labels))) > LABELS_MAX_BYTES:
        return None
    protocol = protocol_name(v.proto)
    return FlowKey(namespace=pod.namespace, pod=pod.name, labels=labels, direction=v.direction, peer_kind=kind,
                   peer_namespace=peer_namespace, peer_labels=peer_labels, peer_address=peer_address,
                   protocol=protocol, port=v.dport if protocol in PORTED_PROTOCOLS else 0, verdict=verdict)
