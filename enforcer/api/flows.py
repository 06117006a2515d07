"""Verdict events turned into flows with names, kept briefly and fanned out
to subscribers. A slow subscriber loses flows (counted), never slows the
daemon or other subscribers."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import cast

from ..compiler.desired import RuleRef
from ..datapath.events import Verdict
from ..datapath.reasons import Reason
from ..model.objects import EGRESS, INGRESS
from ..v1 import enforcer_pb2 as pb
from .view import LIST_MAX, PROTOCOL_NAMES, StateView

RECENT = 4096
SUBSCRIBER_QUEUE = 1024


def direction_pb(direction: str) -> pb.Direction:
    return pb.DIRECTION_INGRESS if direction == "ingress" else pb.DIRECTION_EGRESS


def reason_pb(reason: int) -> pb.Reason:
    """The API's Reason for the datapath's (the same value: test_proto_mirror)."""
    return cast(pb.Reason, int(reason))


# The tier a verdict reason names ("" for the reasons no policy decides:
# not isolated, host, established, malformed, ...).
_TIER_OF_REASON = {int(Reason[name]): tier for name, tier in (
    ("ALLOW_ADMIN", "Admin"), ("DROP_ADMIN", "Admin"), ("ALLOW_BASELINE", "Baseline"),
    ("DROP_BASELINE", "Baseline"), ("ALLOW_POLICY", "NetworkPolicy"), ("DROP_POLICY", "NetworkPolicy"))}
TIERS = ("Admin", "NetworkPolicy", "Baseline")


def tier_of_reason(reason: int) -> str:
    """Admin, Baseline or NetworkPolicy for the reasons a policy map entry
    holds, "" for the others."""
    return _TIER_OF_REASON.get(int(reason), "")


def rule_pb(ref: RuleRef) -> pb.RuleRef:
    """A compiled rule reference with every field: a NetworkPolicy rule
    (tier NetworkPolicy, action Accept) or a cluster policy's."""
    return pb.RuleRef(policy=ref.policy, rule_index=ref.index, direction=direction_pb(ref.direction.lower()),
                      tier=ref.tier, kind=ref.kind, priority=ref.priority, action=ref.action, rule_name=ref.name)


def peer_pb(view: StateView | None, ip, port: int, identity: int | None = None) -> pb.Peer:
    peer = pb.Peer(ip=str(ip), port=port)
    if view is None:
        return peer
    pod = view.pod_by_ip.get(ip)
    if pod is not None:
        peer.namespace, peer.pod = pod.namespace, pod.name
    if identity is not None:
        peer.identity = identity
        peer.identity_description = view.describe_identity(identity)
    return peer


def flow_from_verdict(v: Verdict, view: StateView | None, boot_offset: float) -> pb.Flow:
    """Names come from the view current when the flow is seen."""
    ep = view.endpoint_by_id.get(v.endpoint_id) if view is not None else None
    egress = v.direction == "egress"
    pod_ident = None
    if ep is not None and view is not None:
        pod_ip = v.src if egress else v.dst
        spec = view.desired.endpoints.get(pod_ip)
        pod_ident = spec.identity if spec is not None else None
    peer_ident = v.peer_identity or None  # 0: dropped before the peer was looked up
    src_ident, dst_ident = (pod_ident, peer_ident) if egress else (peer_ident, pod_ident)
    flow = pb.Flow(
        time_unix=v.timestamp_ns / 1e9 + boot_offset,
        allowed=v.allowed,
        reason=reason_pb(v.reason),
        direction=direction_pb(v.direction),
        source=peer_pb(view, v.src, v.sport, src_ident),
        destination=peer_pb(view, v.dst, v.dport, dst_ident),
        protocol=PROTOCOL_NAMES.get(v.proto, str(v.proto)),
        tcp_flags=v.tcp_flags,
        endpoint=ep.pod if ep is not None else "",
        tier=tier_of_reason(v.reason),
    )
    # Drops carry the deciding rule too (an Admin or Baseline Deny).
    if v.rule_id and view is not None and (ref := view.desired.rules.get(v.rule_id)) is not None:
        flow.rule.CopyFrom(rule_pb(ref))
    if v.audit:
        flow.audit = True
        if not v.rule_id and ep is not None and view is not None:
            # NetworkPolicy's default deny: no rule decides it; the audited
            # policies isolating the pod would.
            flow.audited_policies.extend(audited_isolating(view, ep.pod, v.direction)[:LIST_MAX])
    return flow


def isolating_policies(view: StateView, pod: str, direction: str) -> list[str]:
    """The NetworkPolicies that isolate pod in direction ("ingress" or
    "egress"), enforced or audited."""
    type_name = INGRESS if direction == "ingress" else EGRESS
    return [k for k in view.desired.selected_by.get(pod, [])
            if (pol := view.snapshot.policies.get(k)) is not None and type_name in pol.policy_types]


def audited_isolating(view: StateView, pod: str, direction: str) -> list[str]:
    """The NetworkPolicies in audit mode among those isolating pod."""
    audited = view.desired.audited
    return [k for k in isolating_policies(view, pod, direction) if k in audited]


def matches(flow: pb.Flow, req: pb.StreamFlowsRequest) -> bool:
    if req.verdict == pb.StreamFlowsRequest.VERDICT_FILTER_ALLOWED and not flow.allowed:
        return False
    if req.verdict == pb.StreamFlowsRequest.VERDICT_FILTER_DENIED and flow.allowed:
        return False
    if req.verdict == pb.StreamFlowsRequest.VERDICT_FILTER_AUDIT and not flow.audit:
        return False
    if req.tier and flow.tier.lower() != req.tier.lower():
        return False
    sides = (flow.source, flow.destination)
    if req.namespace and not any(s.namespace == req.namespace for s in sides):
        return False
    if req.pod and not any(s.pod == req.pod and (not req.namespace or s.namespace == req.namespace) for s in sides):
        return False
    return True


class FlowHub:
    def __init__(self, view: Callable[[], StateView | None]) -> None:
        self._view = view
        self._recent: deque[pb.Flow] = deque(maxlen=RECENT)
        self._subscribers: list[queue.Queue[pb.Flow]] = []
        self._lock = threading.Lock()
        self.dropped_for_slow_subscribers = 0
        # bpf_ktime_get_ns is CLOCK_MONOTONIC: offset to wall time.
        self._offset = time.time() - time.monotonic()

    def publish(self, v: Verdict) -> pb.Flow:
        flow = flow_from_verdict(v, self._view(), self._offset)
        with self._lock:
            self._recent.append(flow)
            subs = list(self._subscribers)
        for q in subs:
            try:
                q.put_nowait(flow)
            except queue.Full:
                self.dropped_for_slow_subscribers += 1
        return flow

    def subscribe(self, req: pb.StreamFlowsRequest, alive: Callable[[], bool]) -> Iterator[pb.Flow]:
        q: queue.Queue[pb.Flow] = queue.Queue(maxsize=SUBSCRIBER_QUEUE)
        with self._lock:
            self._subscribers.append(q)
            backlog = list(self._recent) if req.since_recent else []
        try:
            for flow in backlog:
                if matches(flow, req):
                    yield flow
            while req.follow and alive():
                try:
                    flow = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if matches(flow, req):
                    yield flow
        finally:
            with self._lock:
                self._subscribers.remove(q)
