"""Why a connection is allowed or denied: the compiled state's answer
(enforcer.compiler.evaluate) with the policies and rules responsible, and
the same decision taken again from the live maps, with the lookups the
datapath makes, to show the kernel holds what the daemon believes."""

from __future__ import annotations

import socket

from ..compiler.evaluate import HookVerdict, evaluate
from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_ISOLATED,
    EP_F_INGRESS_ISOLATED,
    IDENTITY_ANY,
    IDENTITY_HOST,
    IDENTITY_WORLD,
    IPCACHE_PREFIX_BASE,
    POLICY_PREFIX_FULL,
    EndpointKey,
    IpcacheHostKey,
    IpcacheKey,
    PolicyKey,
    addr_bytes,
    family_of,
)
from ..datapath.maps import DatapathMaps
from ..model.objects import EGRESS, INGRESS, IPAddress
from ..v1 import enforcer_pb2 as pb
from .flows import peer_pb
from .view import PROTOCOL_NUMBERS, StateView, capped, clip


def maps_identity(maps: DatapathMaps, ip, prefixes_only: bool = False) -> int:
    """The identity the datapath finds for ip: host entry, else LPM
    (`prefixes_only`: LPM alone, ipcache_cidr_identity in ipcache.h)."""
    v = None if prefixes_only else maps["ipcache_hosts"].lookup(IpcacheHostKey.of(ip))
    if v is not None:
        return int(v.identity)
    key = IpcacheKey(prefixlen=IPCACHE_PREFIX_BASE + ip.max_prefixlen, family=family_of(ip), addr=addr_bytes(ip))
    v = maps["ipcache"].lookup(key)  # an LPM trie lookup returns the longest match
    return int(v.identity) if v is not None else IDENTITY_WORLD


def maps_hook(maps: DatapathMaps, pod_ip, peer_ip, direction: int, proto: int, port: int,
              node_sent: bool = True) -> tuple[bool, str]:
    """The datapath's decision re-taken from the live maps (enforce.h):
    a node address passes as a destination, and as a source the node itself
    sent (`node_sent`); masqueraded, it is judged by the prefixes holding it."""
    ep = maps["endpoints"].lookup(EndpointKey.of(pod_ip))
    if ep is None:
        return False, f"no endpoint entry for {pod_ip}"
    ident = maps_identity(maps, peer_ip)
    if ident == IDENTITY_HOST:
        if direction == DIR_EGRESS or node_sent:
            return True, "peer has the host identity"
        ident = maps_identity(maps, peer_ip, prefixes_only=True)
    flag = EP_F_INGRESS_ISOLATED if direction == DIR_INGRESS else EP_F_EGRESS_ISOLATED
    if not ep.flags & flag:
        return True, f"endpoint {ep.id} not isolated (flags {ep.flags:#x})"
    ported = proto in (6, 17, 132)
    for candidate in (ident, IDENTITY_ANY):
        key = PolicyKey(prefixlen=POLICY_PREFIX_FULL, identity=candidate, endpoint_id=ep.id, direction=direction,
                        protocol=proto, dport=socket.htons(port if ported else 0))
        entry = maps["policy"].lookup(key)
        if entry is not None:
            return True, f"policy entry for identity {candidate} (rule {entry.rule_id})"
    return False, f"isolated (flags {ep.flags:#x}); no policy entry for identity {ident} or any peer"


def _one_endpoint(maps: DatapathMaps, a: IPAddress, b: IPAddress) -> bool:
    ends = [maps["endpoints"].lookup(EndpointKey.of(ip)) for ip in (a, b)]
    if ends[0] is None and ends[1] is None:
        return True
    return ends[0] is not None and ends[1] is not None and ends[0].id == ends[1].id


def _rule_pb(ref) -> pb.RuleRef:
    return pb.RuleRef(policy=ref.policy, rule_index=ref.index,
                      direction=pb.DIRECTION_INGRESS if ref.direction == INGRESS else pb.DIRECTION_EGRESS)


def explain(view: StateView, maps: DatapathMaps | None, req: pb.ExplainRequest) -> pb.ExplainResponse:
    src, dst = view.resolve(req.source), view.resolve(req.destination)
    if src.version != dst.version:
        raise LookupError(f"{src} and {dst} are of different address families")
    proto_name = (req.protocol or "TCP").upper()
    if proto_name not in PROTOCOL_NUMBERS:
        raise LookupError(f"unknown protocol {req.protocol!r}")
    proto, port = PROTOCOL_NUMBERS[proto_name], req.port
    src_pod, dst_pod = view.pod_by_ip.get(src), view.pod_by_ip.get(dst)
    if src == dst or (src_pod is not None and src_pod is dst_pod):
        # Delivered inside the pod's own network namespace: it never
        # crosses the host-side interface, so no policy applies. The maps
        # agree when they hold both addresses as one endpoint, or neither
        # (not a local pod: nothing here decides).
        return pb.ExplainResponse(allowed=True, maps_agree=maps is not None and _one_endpoint(maps, src, dst),
                                  source=peer_pb(view, src, 0), destination=peer_pb(view, dst, port),
                                  summary=f"{req.source} -> {req.destination} {proto_name}/{port}: ALLOWED "
                                          "(a pod's traffic to itself never leaves the pod; no policy applies)")
    verdict = evaluate(view.desired, src, dst, proto, port)
    resp = pb.ExplainResponse(allowed=verdict.allowed,
                              source=peer_pb(view, src, 0, verdict.src_identity),
                              destination=peer_pb(view, dst, port, verdict.dst_identity))
    all_agree = True
    for hook in verdict.hooks:
        egress = hook.direction == "egress"
        direction = DIR_EGRESS if egress else DIR_INGRESS
        type_name = EGRESS if egress else INGRESS
        isolating_all = [k for k in view.desired.selected_by.get(hook.pod, [])
                         if (pol := view.snapshot.policies.get(k)) is not None and type_name in pol.policy_types]
        rules, rules_omitted = capped(hook.rules)
        isolating, isolating_omitted = capped(isolating_all)
        h = pb.HookExplanation(endpoint=hook.pod, allowed=hook.allowed, why=hook.reason,
                               direction=pb.DIRECTION_EGRESS if egress else pb.DIRECTION_INGRESS,
                               rules=[_rule_pb(r) for r in rules], rules_omitted=rules_omitted,
                               isolating_policies=isolating, isolating_policies_omitted=isolating_omitted)
        if maps is not None:
            pod_ip, peer_ip = (src, dst) if egress else (dst, src)
            maps_allowed, detail = maps_hook(maps, pod_ip, peer_ip, direction, proto, port)
            h.maps_agree = maps_allowed == hook.allowed
            h.maps_detail = detail
            all_agree &= h.maps_agree
        resp.hooks.append(h)
    resp.maps_agree = all_agree and maps is not None
    resp.summary = clip(summarize(verdict.allowed, verdict.hooks, req, proto_name))
    return resp


def summarize(allowed: bool, hooks: list[HookVerdict], req: pb.ExplainRequest, proto: str) -> str:
    what = f"{req.source} -> {req.destination} {proto}/{req.port}"
    if not hooks:
        return f"{what}: neither end is a local endpoint of this node; nothing here decides it"
    parts = []
    for h in hooks:
        if h.reason == "allowed by policy":
            rules = "; ".join(f"{r.policy} {r.direction.lower()} rule {r.index}" for r in h.rules)
            parts.append(f"{h.pod} {h.direction}: allowed by {rules}")
        elif h.reason == "no rule allows":
            parts.append(f"{h.pod} {h.direction}: isolated and no rule allows it")
        else:
            parts.append(f"{h.pod} {h.direction}: {h.reason}")
    return f"{what}: {'ALLOWED' if allowed else 'DENIED'} ({'; '.join(parts)})"



