"""The Enforcer gRPC service over a running Daemon's state."""

from __future__ import annotations


from typing import Iterator

import grpc

from .. import __version__
from ..compiler.diagnose import Diagnostic
from ..datapath.layout import DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED
from ..datapath.reasons import is_drop
from ..v1 import enforcer_pb2 as pb
from ..v1 import enforcer_pb2_grpc as pb_grpc
from .explain import explain
from .flows import FlowHub


class EnforcerService(pb_grpc.EnforcerServicer):
    def __init__(self, daemon, flows: FlowHub, source: str) -> None:  # type: ignore[no-untyped-def]
        self.daemon = daemon
        self.flows = flows
        self.source = source

    def _view(self, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        view = self.daemon.view()
        if view is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon has not completed its first sync")
        return view

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        st = self.daemon.status
        view = self.daemon.view()
        resp = pb.StatusResponse(version=__version__, node=self.daemon.config.node_name, ready=st.ready,
                                 source=self.source, source_revision=st.source_revision,
                                 last_sync_unix=st.last_sync, last_sync_duration_ms=st.last_sync_duration * 1e3,
                                 unplaced_pods=st.unplaced, sync_failures=st.failures,
                                 revoked_connections=st.revoked_connections)
        if view is not None:
            snap = view.snapshot
            resp.namespaces, resp.pods, resp.network_policies = len(snap.namespaces), len(snap.pods), len(snap.policies)
            resp.local_endpoints = len(view.endpoint_by_id)
            for e in view.desired.errors:
                resp.invalid_objects.append(pb.InvalidObject(kind=e.kind, namespace=e.namespace or "",
                                                             name=e.name, error=e.reason))
            resp.diagnostics.extend(diagnostic_messages(view.diagnostics))
        for name, (entries, capacity) in self.daemon.map_occupancy().items():
            resp.maps.append(pb.MapOccupancy(name=name, entries=entries, capacity=capacity))
        return resp

    def ListEndpoints(self, request: pb.ListEndpointsRequest, context: grpc.ServicerContext) -> pb.ListEndpointsResponse:
        view = self._view(context)
        names = self.daemon.interface_names()
        resp = pb.ListEndpointsResponse()
        for pod, entries in sorted(view.endpoints_by_pod.items()):
            ns, name = pod.split("/", 1)
            first = entries[0][1]
            resp.endpoints.append(pb.Endpoint(
                namespace=ns, pod=name, ips=[str(ip) for ip, _ in entries], endpoint_id=first.endpoint_id,
                identities=[e.identity for _, e in entries],
                ingress_isolated=bool(first.flags & EP_F_INGRESS_ISOLATED),
                egress_isolated=bool(first.flags & EP_F_EGRESS_ISOLATED),
                interface=names.get(first.ifindex, ""), ifindex=first.ifindex,
                policies=view.desired.selected_by.get(pod, [])))
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
            resp.policies.append(pb.Policy(
                namespace=pol.namespace, name=pol.name, selected_endpoints=sorted(selected.get(key, [])),
                entries=view.desired.entries_by_policy.get(key, 0), policy_types=sorted(pol.policy_types),
                error=err.reason if err else ""))
        return resp

    def GetCounters(self, request: pb.GetCountersRequest, context: grpc.ServicerContext) -> pb.GetCountersResponse:
        view = self._view(context)
        resp = pb.GetCountersResponse()
        targets = [(0, "", "")] + [(ep_id, *spec.pod.split("/", 1)) for ep_id, spec in sorted(view.endpoint_by_id.items())]
        for ep_id, ns, pod in targets:
            if (request.namespace and ns != request.namespace) or (request.pod and pod != request.pod):
                continue
            for (direction, reason), (pkts, nbytes) in sorted(self.daemon.counters(ep_id).items()):
                resp.counters.append(pb.Counter(
                    namespace=ns, pod=pod, reason=int(reason), allowed=not is_drop(reason), packets=pkts,
                    bytes=nbytes, direction=pb.DIRECTION_INGRESS if direction == DIR_INGRESS else pb.DIRECTION_EGRESS))

        return resp

    def StreamFlows(self, request: pb.StreamFlowsRequest, context: grpc.ServicerContext) -> Iterator[pb.Flow]:
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


def diagnostic_messages(diagnostics: tuple[Diagnostic, ...]) -> list[pb.Diagnostic]:
    return [pb.Diagnostic(**d.as_dict()) for d in diagnostics]
