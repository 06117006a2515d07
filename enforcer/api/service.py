"""The Enforcer gRPC service over a running Daemon's state."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc

from .. import __version__
from ..compiler.diagnose import Diagnostic
from ..datapath.layout import DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED
from ..datapath.reasons import is_drop
from ..history.recorder import HistoryRecorder
from ..v1 import enforcer_pb2 as pb
from ..v1 import enforcer_pb2_grpc as pb_grpc
from .explain import explain
from .flows import TIERS, FlowHub, reason_pb, tier_of_reason
from .history import flow_history
from .view import LIST_MAX, capped, clip


class EnforcerService(pb_grpc.EnforcerServicer):
    def __init__(self, daemon, flows: FlowHub, source: str, history: HistoryRecorder | None = None) -> None:
        self.daemon = daemon
        self.flows = flows
        self.source = source
        self.history = history

    def _view(self, context: grpc.ServicerContext):
        view = self.daemon.view()
        if view is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon has not completed its first sync")
        return view

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        """Bounded whatever the state holds (view.LIST_MAX, view.STRING_MAX)."""
        st = self.daemon.status
        view = self.daemon.view()
        unplaced, unplaced_omitted = capped(st.unplaced)
        failures = st.write_failures
        resp = pb.StatusResponse(version=__version__, node=self.daemon.config.node_name, ready=st.ready,
                                 source=clip(self.source), source_revision=clip(st.source_revision),
                                 last_sync_unix=st.last_sync, last_sync_duration_ms=st.last_sync_duration * 1e3,
                                 unplaced_pods=[clip(p) for p in unplaced], unplaced_pods_omitted=unplaced_omitted,
                                 sync_failures=[clip(f) for f in st.failures[:LIST_MAX]],
                                 sync_failures_omitted=max(failures.objects_total, len(st.failures))
                                 - len(st.failures[:LIST_MAX]),
                                 sync_failure_samples=[clip(s) for s in failures.samples[:LIST_MAX]],
                                 entries_not_written=failures.entries,
                                 revoked_connections=st.revoked_connections)
        for name, by_reason in failures.by_map.items():
            resp.map_write_failures.append(pb.MapWriteFailures(
                map=name, full=by_reason.get("full", 0), other=by_reason.get("other", 0),
                held=by_reason.get("held", 0)))
        if view is not None:
            snap = view.snapshot
            resp.namespaces, resp.pods, resp.network_policies = len(snap.namespaces), len(snap.pods), len(snap.policies)
            resp.local_endpoints = len(view.endpoint_by_id)
            errors, resp.invalid_objects_omitted = capped(view.desired.errors)
            for e in errors:
                resp.invalid_objects.append(pb.InvalidObject(kind=clip(e.kind), namespace=clip(e.namespace or ""),
                                                             name=clip(e.name), error=clip(e.reason)))
            diagnostics, resp.diagnostics_omitted = capped(view.diagnostics)
            resp.diagnostics.extend(diagnostic_messages(diagnostics))
            resp.cluster_network_policies = len(snap.cluster_policies)
            resp.audit_all = view.desired.audit_all
            notices, resp.notices_omitted = capped(getattr(view.desired, "notices", None) or [])
            resp.notices.extend(clip(n) for n in notices)
        for name, (entries, capacity) in self.daemon.map_occupancy().items():
            resp.maps.append(pb.MapOccupancy(name=name, entries=entries, capacity=capacity))
        return resp

    def ListEndpoints(self, request: pb.ListEndpointsRequest,
                      context: grpc.ServicerContext) -> pb.ListEndpointsResponse:
        view = self._view(context)
        names = self.daemon.interface_names()
        resp = pb.ListEndpointsResponse()
        for pod, entries in sorted(view.endpoints_by_pod.items()):
            ns, name = pod.split("/", 1)
            first = entries[0][1]
            policies, omitted = capped(view.desired.selected_by.get(pod, []))
            resp.endpoints.append(pb.Endpoint(
                namespace=ns, pod=name, ips=[str(ip) for ip, _ in entries], endpoint_id=first.endpoint_id,
                identities=[e.identity for _, e in entries],
                ingress_isolated=bool(first.flags & EP_F_INGRESS_ISOLATED),
                egress_isolated=bool(first.flags & EP_F_EGRESS_ISOLATED),
                interface=names.get(first.ifindex, ""), ifindex=first.ifindex,
                policies=[clip(p) for p in policies], policies_omitted=omitted))
        return resp

    def ListPolicies(self, request: pb.ListPoliciesRequest, context: grpc.ServicerContext) -> pb.ListPoliciesResponse:
        view = self._view(context)
        selected: dict[str, list[str]] = {}
        for pod, pols in view.desired.selected_by.items():
            for p in pols:
                selected.setdefault(p, []).append(pod)
        resp = pb.ListPoliciesResponse()
        for key, pol in sorted(view.snapshot.policies.items()):
            err = pol.error()
            pods, omitted = capped(sorted(selected.get(key, [])))
            resp.policies.append(pb.Policy(
                namespace=pol.namespace, name=pol.name, selected_endpoints=pods, selected_endpoints_omitted=omitted,
                entries=view.desired.entries_by_policy.get(key, 0), policy_types=sorted(pol.policy_types),
                error=clip(err.reason) if err else "", audit=pol.audit or view.desired.audit_all))
        resp.cluster_policies.extend(cluster_policy_messages(view))
        return resp

    def GetCounters(self, request: pb.GetCountersRequest, context: grpc.ServicerContext) -> pb.GetCountersResponse:
        view = self._view(context)
        resp = pb.GetCountersResponse()
        targets = [(0, "", "")] + [(ep_id, *spec.pod.split("/", 1))
                                   for ep_id, spec in sorted(view.endpoint_by_id.items())]
        for ep_id, ns, pod in targets:
            if (request.namespace and ns != request.namespace) or (request.pod and pod != request.pod):
                continue
            for (direction, reason), (pkts, nbytes) in sorted(self.daemon.counters(ep_id).items()):
                resp.counters.append(pb.Counter(
                    namespace=ns, pod=pod, reason=reason_pb(reason), allowed=not is_drop(reason),
                    packets=pkts, tier=tier_of_reason(reason),
                    bytes=nbytes, direction=pb.DIRECTION_INGRESS if direction == DIR_INGRESS else pb.DIRECTION_EGRESS))

        return resp

    def StreamFlows(self, request: pb.StreamFlowsRequest, context: grpc.ServicerContext) -> Iterator[pb.Flow]:
        if request.tier and request.tier.lower() not in {t.lower() for t in TIERS}:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown tier {request.tier!r}: one of {', '.join(TIERS)}")
        yield from self.flows.subscribe(request, context.is_active)

    def Diagnose(self, request: pb.DiagnoseRequest, context: grpc.ServicerContext) -> pb.DiagnoseResponse:
        view = self._view(context)
        return pb.DiagnoseResponse(diagnostics=diagnostic_messages(view.diagnostics),
                                   source_revision=view.snapshot.source_revision)

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        view = self._view(context)
        try:
            return explain(view, self.daemon.maps, request)
        except LookupError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises

    def FlowHistory(self, request: pb.FlowHistoryRequest, context: grpc.ServicerContext) -> pb.FlowHistoryResponse:
        return flow_history(self.history, self.daemon, request, context)


def diagnostic_messages(diagnostics: Sequence[Diagnostic]) -> list[pb.Diagnostic]:
    return [pb.Diagnostic(**{k: clip(v) if isinstance(v, str) else v for k, v in d.as_dict().items()})
            for d in diagnostics]


def cluster_policy_messages(view) -> list[pb.ClusterPolicy]:
    """The cluster policies in force, in evaluation order (Admin then
    Baseline, by priority, then name), with the local pods each selects
    (its subjects on this node) and the policy map entries its rules
    decided."""
    cnps = getattr(view.snapshot, "cluster_policies", None) or {}
    if not cnps:
        return []
    selected: dict[str, list[str]] = {}
    for pod, keys in view.desired.cluster_selected_by.items():
        for k in keys:
            selected.setdefault(k, []).append(pod)
    cluster_rules = {rule_id: ref.policy for rule_id, ref in view.desired.rules.items()
                     if ref.tier != "NetworkPolicy"}
    entries: dict[str, int] = {}
    if cluster_rules:
        for value in view.desired.policy.values():
            # An audited cluster policy's rule decides an entry's audit verdict.
            for rule_id in (value.rule_id, value.audit_rule_id):
                key = cluster_rules.get(rule_id)
                if key is not None:
                    entries[key] = entries.get(key, 0) + 1
    out = []
    order = {"Admin": 0, "Baseline": 1}
    for key, cnp in sorted(cnps.items(), key=lambda kv: (order.get(kv[1].tier, 2), kv[1].priority, kv[0])):
        pods, omitted = capped(sorted(selected.get(key, [])))
        warnings, _ = capped(list(cnp.warnings))
        out.append(pb.ClusterPolicy(name=clip(key), kind=cnp.source_kind, tier=cnp.tier, priority=cnp.priority,
                                    selected_endpoints=[clip(p) for p in pods], selected_endpoints_omitted=omitted,
                                    entries=entries.get(key, 0), ingress_rules=len(cnp.ingress),
                                    egress_rules=len(cnp.egress), warnings=[clip(w) for w in warnings],
                                    audit=cnp.audit or view.desired.audit_all))
    return out
