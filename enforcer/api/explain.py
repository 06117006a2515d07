"""Why a connection is allowed or denied: the compiled state's answer
(enforcer.compiler.evaluate) with the policies and rules responsible, and
the same decision taken again from the live maps, with the lookups the
datapath makes, to show the kernel holds what the daemon believes."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..compiler.desired import DesiredState, RuleRef
from ..compiler.evaluate import HookVerdict, evaluate, identity_of
from ..datapath.layout import (
    DIR_EGRESS,
    DIR_INGRESS,
    EP_F_EGRESS_HOST_JUDGED,
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
from ..datapath.reasons import Reason, is_drop
from ..model.objects import IPAddress
from ..v1 import enforcer_pb2 as pb
from .flows import isolating_policies, peer_pb, rule_pb
from .view import PROTOCOL_NUMBERS, StateView, capped, clip

PORTED = (6, 17, 132)


def maps_identity(maps: DatapathMaps, ip, prefixes_only: bool = False) -> int:
    """The identity the datapath finds for ip: host entry, else LPM
    (`prefixes_only`: LPM alone, ipcache_cidr_identity in ipcache.h)."""
    v = None if prefixes_only else maps["ipcache_hosts"].lookup(IpcacheHostKey.of(ip))
    if v is not None:
        return int(v.identity)
    key = IpcacheKey(prefixlen=IPCACHE_PREFIX_BASE + ip.max_prefixlen, family=family_of(ip), addr=addr_bytes(ip))
    v = maps["ipcache"].lookup(key)  # an LPM trie lookup returns the longest match
    return int(v.identity) if v is not None else IDENTITY_WORLD


@dataclass(frozen=True)
class MapsVerdict:
    """A hook's decision as the live maps give it: the verdict reason and
    the rule id the datapath would record (0: none), and how it was found."""

    allowed: bool
    reason: int
    rule_id: int
    detail: str
    audit_reason: int = 0  # the entry's audited drop (policy.h), 0: none
    audit_rule_id: int = 0


def maps_verdict(maps: DatapathMaps, pod_ip, peer_ip, direction: int, proto: int, port: int,
                 node_sent: bool = True) -> MapsVerdict:
    """The datapath's decision re-taken from the live maps (enforce.h):
    a node address passes as a destination unless a cluster policy governs
    the pod's egress (EP_F_EGRESS_HOST_JUDGED: then the policy map judges
    it as IDENTITY_HOST), and as a source the node itself sent
    (`node_sent`); masqueraded, it is judged by the prefixes holding it.
    The policy entry is found as policy.h's policy_lookup finds it: the
    longest key of the peer's identity, else the longest of every peer;
    none is NetworkPolicy's default deny."""
    ep = maps["endpoints"].lookup(EndpointKey.of(pod_ip))
    if ep is None:
        return MapsVerdict(False, int(Reason["DROP_UNKNOWN_ENDPOINT"]), 0, f"no endpoint entry for {pod_ip}")
    ident = maps_identity(maps, peer_ip)
    if ident == IDENTITY_HOST:
        if direction == DIR_EGRESS:
            if not ep.flags & EP_F_EGRESS_HOST_JUDGED:
                return MapsVerdict(True, int(Reason["ALLOW_HOST"]), 0, "peer has the host identity")
        elif node_sent:
            return MapsVerdict(True, int(Reason["ALLOW_HOST"]), 0, "peer has the host identity")
        else:
            ident = maps_identity(maps, peer_ip, prefixes_only=True)
    flag = EP_F_INGRESS_ISOLATED if direction == DIR_INGRESS else EP_F_EGRESS_ISOLATED
    if not ep.flags & flag:
        return MapsVerdict(True, int(Reason["ALLOW_NOT_ISOLATED"]), 0,
                           f"endpoint {ep.id} not isolated (flags {ep.flags:#x})")
    ported = proto in PORTED
    for candidate in (ident, IDENTITY_ANY):
        key = PolicyKey(prefixlen=POLICY_PREFIX_FULL, identity=candidate, endpoint_id=ep.id, direction=direction,
                        protocol=proto, dport=socket.htons(port if ported else 0))
        entry = maps["policy"].lookup(key)  # an LPM trie lookup returns the longest match
        if entry is not None:
            reason = int(entry.reason)
            try:
                name = Reason(reason).name
            except ValueError:
                name = str(reason)
            audit = (f"; audit: {Reason(entry.audit_reason).name} (rule {entry.audit_rule_id})"
                     if entry.audit_reason else "")
            return MapsVerdict(not is_drop(reason), reason, int(entry.rule_id),
                               f"policy entry for identity {candidate}: {name} (rule {entry.rule_id}){audit}",
                               int(entry.audit_reason), int(entry.audit_rule_id))
    return MapsVerdict(False, int(Reason["DROP_POLICY"]), 0,
                       f"isolated (flags {ep.flags:#x}); no policy entry for identity {ident} or any peer")


def maps_hook(maps: DatapathMaps, pod_ip, peer_ip, direction: int, proto: int, port: int,
              node_sent: bool = True) -> tuple[bool, str]:
    """maps_verdict as (allowed, detail)."""
    v = maps_verdict(maps, pod_ip, peer_ip, direction, proto, port, node_sent)
    return v.allowed, v.detail


def _one_endpoint(maps: DatapathMaps, a: IPAddress, b: IPAddress) -> bool:
    ends = [maps["endpoints"].lookup(EndpointKey.of(ip)) for ip in (a, b)]
    if ends[0] is None and ends[1] is None:
        return True
    return ends[0] is not None and ends[1] is not None and ends[0].id == ends[1].id


def _rule_id(desired: DesiredState, ref: RuleRef | None) -> int:
    """The id the compiled state gives a rule (0: none): what a policy
    entry holds when that rule decided."""
    if ref is None:
        return 0
    return next((i for i, r in desired.rules.items() if r == ref), 0)


def _why(hook: HookVerdict) -> str:
    """evaluate's reason, naming the rule where a cluster policy decided."""
    ref = hook.decider
    if ref is not None and ref.tier != "NetworkPolicy":
        return f"{'accepted' if hook.allowed else 'denied'} by {ref.describe()}"
    return hook.reason


def _audit_why(hook: HookVerdict, audited_policies: list[str]) -> str:
    """What the policies in audit mode would do: the audited rule's deny,
    or NetworkPolicy's default deny by the audited policies isolating it."""
    if not hook.audit_code:
        return ""
    ref = hook.audit_decider
    if ref is not None:
        return f"audit mode: would be denied by {ref.describe()}"
    if audited_policies:
        return f"audit mode: would be denied: isolated by {', '.join(audited_policies)} and no rule allows it"
    return "audit mode: would be denied: no rule allows it"


def _trace(view: StateView, hook: HookVerdict, ep_id: int, direction: int, peer: IPAddress, proto: int,
           port: int, audit: bool = False) -> list[str]:
    """The tiers walked step by step (tiers.TierProgram.walk), for an
    endpoint a cluster policy or a policy in audit mode governs in this
    direction; [] otherwise. audit: the walk with the audited policies."""
    program = view.desired.tier_programs.get((ep_id, direction))
    if program is None:
        return []
    if not audit and hook.reason == "host":
        return ["host: the node's own address passes before the tiers (no cluster policy judges it here)"]
    if not audit and hook.reason == "not isolated":
        return ["not isolated: no tier judges this direction"]
    ident = identity_of(view.desired, peer)
    if ident == IDENTITY_HOST and direction == DIR_INGRESS:
        ident = identity_of(view.desired, peer, prefixes_only=True)
    trace: list[str] = []
    program.walk(ident, proto if proto in PORTED else None, port if proto in PORTED else 0, trace, audit=audit)
    return trace


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
        isolating_all = isolating_policies(view, hook.pod, hook.direction)
        rules, rules_omitted = capped(hook.rules)
        isolating, isolating_omitted = capped(isolating_all)
        cluster, cluster_omitted = capped(view.desired.cluster_selected_by.get(hook.pod, []))
        pod_ip, peer_ip = (src, dst) if egress else (dst, src)
        spec = view.desired.endpoints.get(pod_ip)
        trace = _trace(view, hook, spec.endpoint_id, direction, peer_ip, proto, port) if spec is not None else []
        audited_all = [k for k in isolating_all if k in view.desired.audited]
        audited, _ = capped(audited_all)
        h = pb.HookExplanation(endpoint=hook.pod, allowed=hook.allowed, why=clip(_why(hook)),
                               direction=pb.DIRECTION_EGRESS if egress else pb.DIRECTION_INGRESS,
                               rules=[rule_pb(r) for r in rules], rules_omitted=rules_omitted,
                               isolating_policies=isolating, isolating_policies_omitted=isolating_omitted,
                               trace=[clip(t) for t in trace], tier=hook.tier,
                               cluster_policies=[clip(c) for c in cluster], cluster_policies_omitted=cluster_omitted,
                               audited_policies=audited)
        if hook.audit_code:
            h.audit = True
            resp.audit = True
            h.audit_why = clip(_audit_why(hook, list(audited_all)))
            if spec is not None:
                h.audit_trace.extend(clip(t) for t in _trace(view, hook, spec.endpoint_id, direction, peer_ip,
                                                             proto, port, audit=True))
        if maps is not None:
            live = maps_verdict(maps, pod_ip, peer_ip, direction, proto, port)
            want_rule = _rule_id(view.desired, hook.decider)
            h.maps_agree = (live.allowed == hook.allowed and (not hook.code or live.reason == hook.code)
                            and live.rule_id == want_rule and live.audit_reason == hook.audit_code
                            and live.audit_rule_id == _rule_id(view.desired, hook.audit_decider))
            detail = live.detail
            if not h.maps_agree:
                want = Reason(hook.code).name if hook.code else ("allowed" if hook.allowed else "denied")
                detail += f"; compiled: {want} (rule {want_rule})"
            h.maps_detail = clip(detail)
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
        if h.decider is not None and h.decider.tier != "NetworkPolicy":
            parts.append(f"{h.pod} {h.direction}: {_why(h)}")
        elif h.reason == "allowed by policy":
            rules = "; ".join(f"{r.policy} {r.direction.lower()} rule {r.index}" for r in h.rules)
            parts.append(f"{h.pod} {h.direction}: allowed by {rules}")
        elif h.reason == "no rule allows":
            parts.append(f"{h.pod} {h.direction}: isolated and no rule allows it")
        else:
            parts.append(f"{h.pod} {h.direction}: {h.reason}")
        if h.audit_code:
            parts[-1] += " (" + (f"audit mode: would be denied by {h.audit_decider.describe()}"
                                 if h.audit_decider is not None else "audit mode: would be denied") + ")"
    return f"{what}: {'ALLOWED' if allowed else 'DENIED'} ({'; '.join(parts)})"



