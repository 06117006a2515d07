"""A Service's backends, as kube-proxy would pick them: from the
EndpointSlices labelled with the Service's name when any exist, else (a
store without EndpointSlices, such as a manifest directory that lists only
Services and Pods) from the Service's selector over running pods, with
named target ports resolved per pod as the EndpointSlice controller does.

A backend that does not serve a Service port (a named target port its pod
does not declare, a slice without that port or with the port left unset)
has None for that port: kube-proxy sends that port's traffic elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .objects import EndpointSlice, IPAddress, Pod, Service
from .state import ClusterSnapshot


@dataclass(frozen=True, slots=True)
class Backend:
    address: IPAddress
    ports: tuple[int | None, ...]  # per entry of Service.ports, in order: its port here (None: not served)
    pod: str | None = None  # "ns/name" when known
    node_name: str | None = None
    ready: bool = True


def slices_by_service(snapshot: ClusterSnapshot) -> dict[str, list[EndpointSlice]]:
    """EndpointSlices by the key ("ns/name") of the Service they belong to,
    each list in slice-key order; slices naming no Service are left out."""
    out: dict[str, list[EndpointSlice]] = {}
    for key in sorted(snapshot.endpoint_slices):
        s = snapshot.endpoint_slices[key]
        if s.service_key is not None:
            out.setdefault(s.service_key, []).append(s)
    return out


def service_backends(snapshot: ClusterSnapshot, service: Service,
                     slices: Sequence[EndpointSlice] | None = None,
                     pods: Iterable[Pod] | None = None) -> list[Backend]:
    """The Service's backends, ordered by address. `slices`: the Service's
    EndpointSlices when the caller has them at hand (slices_by_service; []
    for none), else they are looked up in the snapshot. `pods`: the pods of
    the Service's namespace when the caller has them at hand (a caller
    going over every Service must not scan every pod for each)."""
    if slices is None:
        slices = [s for k, s in sorted(snapshot.endpoint_slices.items())
                  if s.namespace == service.namespace and s.service_name == service.name]
    if slices:
        backends = _from_slices(service, slices)
    else:
        backends = _from_pods(service, snapshot.pods.values() if pods is None else pods)
    return sorted(backends, key=lambda b: (b.address.version, b.address))


def _from_slices(service: Service, slices: Iterable[EndpointSlice]) -> list[Backend]:
    found: dict[IPAddress, Backend] = {}
    for s in slices:
        ports = tuple(_slice_port(s, sp.name, sp.protocol) for sp in service.ports)
        for ep in s.endpoints:
            for addr in ep.addresses:
                old = found.get(addr)
                # An address in several slices (while the controller moves it):
                # the first stands unless a later one is ready and it is not.
                if old is None or (ep.ready and not old.ready):
                    found[addr] = Backend(addr, ports, ep.target_pod, ep.node_name, ep.ready)
    return list(found.values())


def _slice_port(s: EndpointSlice, name: str | None, protocol: str) -> int | None:
    for p in s.ports:
        if p.name == name and p.protocol == protocol:
            return p.port  # None (every port) is ignored by kube-proxy too
    return None


def _from_pods(service: Service, pods: Iterable[Pod]) -> list[Backend]:
    if not service.selector:
        # Manual endpoints: only EndpointSlices name them. (An empty selector
        # is stored as none: the API server's storage keeps no empty maps.)
        return []
    families = {ip.version for ip in service.cluster_ips}
    out: list[Backend] = []
    for pod in sorted((p for p in pods if p.is_running and service.selects(p)), key=lambda p: p.key):
        ports = tuple(_target_port(pod, sp.target_port, sp.protocol) for sp in service.ports)
        out.extend(Backend(ip, ports, pod.key, pod.node_name, True)
                   for ip in pod.ips if not families or ip.version in families)
    return out


def _target_port(pod: Pod, target: int | str, protocol: str) -> int | None:
    return target if isinstance(target, int) else pod.named_port(target, protocol)


def backends_by_service(snapshot: ClusterSnapshot) -> Mapping[str, list[Backend]]:
    """service_backends of every Service in the snapshot, by Service key."""
    index = slices_by_service(snapshot)
    by_ns: dict[str, list[Pod]] = {}
    for pod in snapshot.pods.values():
        by_ns.setdefault(pod.namespace, []).append(pod)
    return {key: service_backends(snapshot, svc, index.get(key, []), by_ns.get(svc.namespace, []))
            for key, svc in sorted(snapshot.services.items())}
