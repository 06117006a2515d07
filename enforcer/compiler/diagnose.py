"""Diagnostics: configurations the enforcer applies exactly as written but
that cannot do what they seem to mean, found from the model alone (a pure
function of a ClusterSnapshot; nothing here touches the datapath).

The SNAT trap ("snat-trap"). A NodePort or LoadBalancer Service with
externalTrafficPolicy Cluster (the default) has kube-proxy MASQUERADE the
traffic that arrives on a node: its backends see a node's address as the
source, never the external client's. A NetworkPolicy that admits external
clients to those backends by ipBlock therefore matches node addresses, not
clients:
- the ipBlock misses the node addresses ("clients-denied"): the clients it
  allows are denied;
- it holds them ("any-client-admitted"): every client that reaches any
  node is admitted, those the policy means to deny included;
- it holds some nodes' addresses and not others' ("mixed"): both, by node;
- no pod reports its node's addresses ("node-addresses-unknown"): one of
  the above, which one cannot be told.
With externalTrafficPolicy Local the client keeps its address (and only
nodes with a ready backend answer), so the ipBlock means what it says.

Node addresses are the union of every pod's status.hostIPs: a node that
runs no pod is not known.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from ..model.objects import INGRESS, IPAddress, IPBlock, NetworkPolicy, Pod, PolicyRule, Service, ServicePort
from ..model.services import service_backends, slices_by_service
from ..model.state import ClusterSnapshot

SNAT_TRAP = "snat-trap"

# effect of a snat-trap diagnostic
CLIENTS_DENIED = "clients-denied"
ANY_CLIENT_ADMITTED = "any-client-admitted"
MIXED = "mixed"
NODES_UNKNOWN = "node-addresses-unknown"

WARNING = "warning"  # traffic the configuration means to allow is denied (or cannot be told)
ERROR = "error"      # traffic the configuration means to deny is admitted

_SEVERITY = {CLIENTS_DENIED: WARNING, ANY_CLIENT_ADMITTED: ERROR, MIXED: ERROR, NODES_UNKNOWN: WARNING}
_SHOWN = 4  # addresses, backends, ports named in a message before "and N more"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str       # what kind of problem: "snat-trap"
    severity: str   # "warning" or "error"
    service: str    # namespace/name of the Service
    policy: str     # namespace/name of the NetworkPolicy
    effect: str     # which way it goes wrong (see the module doc)
    message: str    # names the Service, the policy and the fix
    fix: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes it the same problem across passes (the message may
        change with, e.g., the backends, without being news)."""
        return (self.code, self.service, self.policy, self.effect)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def diagnose(snap: ClusterSnapshot) -> tuple[Diagnostic, ...]:
    """Every problem found in the snapshot, sorted by (service, policy, code)."""
    services = [s for s in snap.services.values()
                if s.external and s.external_traffic_policy == "Cluster"]
    if not services:
        return ()  # the common case, at the cost of a look at each Service
    namespaces = {s.namespace for s in services}
    candidates = _policies_with_ip_blocks(p for p in snap.policies.values() if p.namespace in namespaces)
    services = [s for s in services if s.namespace in candidates]
    if not services:
        return ()
    wanted = {s.namespace for s in services}
    pods_by_ns: dict[str, list[Pod]] = defaultdict(list)
    node_addresses: set[IPAddress] = set()
    for pod in snap.pods.values():
        node_addresses.update(pod.host_ips)
        if pod.namespace in wanted and pod.is_running and not pod.host_network:
            pods_by_ns[pod.namespace].append(pod)
    nodes = sorted(node_addresses, key=lambda a: (a.version, a))
    out = []
    slices = slices_by_service(snap)
    for svc in services:
        # The backends kube-proxy sends to: its EndpointSlices' pods (a
        # Service without selector included), else the selector's.
        own = service_backends(snap, svc, slices.get(svc.key, []), pods_by_ns.get(svc.namespace, []))
        in_slices = {b.pod for b in own if b.pod}
        backends = sorted((p for p in pods_by_ns.get(svc.namespace, ()) if p.key in in_slices), key=lambda p: p.key)
        if not backends:
            continue
        families: set[int] = {ip.version for ip in svc.cluster_ips} or {4, 6}
        for pol, rules in candidates[svc.namespace]:
            found = _snat_trap(svc, backends, pol, rules, families, nodes)
            if found is not None:
                out.append(found)
    return tuple(sorted(out, key=lambda d: (d.service, d.policy, d.code)))


def diagnostic_changes(before: Iterable[Diagnostic], after: Iterable[Diagnostic]
                       ) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(appeared, gone) between two results, by Diagnostic.key, in order."""
    old = {d.key: d for d in before}
    new = {d.key: d for d in after}
    return [d for k, d in new.items() if k not in old], [d for k, d in old.items() if k not in new]


# -- the SNAT trap ---------------------------------------------------------

# (index in spec.ingress, the rule's ipBlocks, the rule)
_IpBlockRule = tuple[int, tuple[IPBlock, ...], PolicyRule]


def _policies_with_ip_blocks(policies: Iterable[NetworkPolicy]
                             ) -> dict[str, list[tuple[NetworkPolicy, list[_IpBlockRule]]]]:
    """Per namespace, sorted by key: the ingress policies with a rule whose
    peers include an ipBlock, and those rules."""
    out: dict[str, list[tuple[NetworkPolicy, list[_IpBlockRule]]]] = defaultdict(list)
    for pol in sorted(policies, key=lambda p: p.key):
        if pol.fail_closed or INGRESS not in pol.policy_types:
            continue
        rules = [(i, blocks, r) for i, r in enumerate(pol.ingress) if r.valid
                 for blocks in [tuple(p.ip_block for p in r.peers if p.ip_block is not None)] if blocks]
        if rules:
            out[pol.namespace].append((pol, rules))
    return out


def _target_port(sp: ServicePort, pod: Pod) -> int | None:
    if isinstance(sp.target_port, int):
        return sp.target_port
    return pod.named_port(sp.target_port, sp.protocol)


def _covers(rule: PolicyRule, pod: Pod, protocol: str, port: int) -> bool:
    if not rule.ports:
        return True
    for pp in rule.ports:
        if pp.protocol != protocol:
            continue
        if pp.port is None:
            return True
        if isinstance(pp.port, int):
            if pp.port <= port <= (pp.end_port or pp.port):
                return True
        elif pod.named_port(pp.port, protocol) == port:
            return True
    return False


def _snat_trap(svc: Service, backends: Sequence[Pod], pol: NetworkPolicy, rules: list[_IpBlockRule],
               families: set[int], node_addresses: Sequence[IPAddress]) -> Diagnostic | None:
    hit_rules: set[int] = set()
    blocks: dict[IPBlock, None] = {}  # ordered set
    ports: set[tuple[int, str]] = set()  # (backend port, protocol)
    selected: list[str] = []
    for pod in backends:
        if not pol.selects(pod):
            continue
        hit = False
        for sp in svc.ports:
            target = _target_port(sp, pod)
            if target is None:
                continue  # the named port is not on this pod: kube-proxy sends it nothing
            for i, rule_blocks, rule in rules:
                relevant = [b for b in rule_blocks if b.cidr.version in families]
                if relevant and _covers(rule, pod, sp.protocol, target):
                    hit = True
                    hit_rules.add(i)
                    blocks.update(dict.fromkeys(relevant))
                    ports.add((target, sp.protocol))
        if hit:
            selected.append(pod.key)
    if not selected:
        return None

    block_families = {b.cidr.version for b in blocks}
    nodes = [a for a in node_addresses if a.version in block_families]
    held = {a for a in nodes if any(_holds(b, a) for b in blocks)}
    inside = [a for a in nodes if a in held]
    outside = [a for a in nodes if a not in held]
    if not nodes:
        effect = NODES_UNKNOWN
    elif not inside:
        effect = CLIENTS_DENIED
    elif not outside:
        effect = ANY_CLIENT_ADMITTED
    else:
        effect = MIXED

    fix = (f"set spec.externalTrafficPolicy: Local on Service {svc.key} "
           "(clients keep their address; only nodes with a ready backend answer)")
    rule_text = f"ingress rule{'s' if len(hit_rules) > 1 else ''} {', '.join(map(str, sorted(hit_rules)))}"
    port_text = _some([f"{t}/{proto}" for t, proto in sorted(ports)])
    what = (f"NetworkPolicy {pol.key} admits clients by ipBlock {', '.join(_block_text(b) for b in blocks)} "
            f"({rule_text}) on {port_text} of {_some(selected)}, backends of {svc.type} Service {svc.key} "
            "with externalTrafficPolicy Cluster: kube-proxy SNATs external clients to the address of the "
            "node they arrive on, so the policy sees node addresses, never clients. ")
    if effect == CLIENTS_DENIED:
        why = (f"The ipBlock holds no node address ({_some(nodes)}): the external clients it allows "
               "are denied.")
    elif effect == ANY_CLIENT_ADMITTED:
        why = (f"The ipBlock holds the node addresses ({_some(nodes)}): it admits every client that "
               "reaches any node, those the policy means to deny included.")
    elif effect == MIXED:
        why = (f"The ipBlock holds some node addresses ({_some(inside)}) and not others "
               f"({_some(outside)}): through the first it admits every client, through the others "
               "the clients it allows are denied.")
    else:
        why = ("No pod reports its node's addresses (status.hostIPs), so whether the allowed clients "
               "are denied or every client is admitted cannot be told.")
    return Diagnostic(SNAT_TRAP, _SEVERITY[effect], svc.key, pol.key, effect, f"{what}{why} Fix: {fix}.", fix)


def _holds(block: IPBlock, address: IPAddress) -> bool:
    return address in block.cidr and not any(address in e for e in block.excepts)


def _block_text(b: IPBlock) -> str:
    return str(b.cidr) + (f" except {', '.join(map(str, b.excepts))}" if b.excepts else "")


def _some(items: Sequence[object]) -> str:
    shown = ", ".join(map(str, items[:_SHOWN]))
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
