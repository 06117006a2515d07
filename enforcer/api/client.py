"""CLI side of the API: `enforcer status|endpoints|policies|counters|flows|explain|diagnose`.
Human tables by default, --json for machines."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from ..compiler.rulerefs import RuleRef
from ..errors import EnforcerError
from ..v1 import enforcer_pb2 as pb
from ..v1 import enforcer_pb2_grpc as pb_grpc
from .server import DEFAULT_SOCKET

TIMEOUT = 10.0


class ApiUnavailable(EnforcerError):
    pass


def connect(socket_path: Path = DEFAULT_SOCKET) -> pb_grpc.EnforcerStub:
    if not socket_path.exists():
        raise ApiUnavailable(f"no daemon socket at {socket_path}: is `enforcer run` running on this node?")
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    return pb_grpc.EnforcerStub(channel)


def call(fn: Callable[..., Any], request: Any, **kw: Any) -> Any:
    try:
        return fn(request, timeout=kw.pop("timeout", TIMEOUT), **kw)
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise ApiUnavailable(f"the daemon is not answering ({e.details()}); "
                                 "is `enforcer run` running, and are you root?") from None
        raise EnforcerError(f"{code.name}: {e.details()}") from None


def reason_name(value: int) -> str:
    return pb.Reason.Name(value).removeprefix("REASON_")


def direction_name(value: int) -> str:
    return pb.Direction.Name(value).removeprefix("DIRECTION_").lower()


def describe_rule(r: pb.RuleRef) -> str:
    """A rule from the API named as the daemon's trace names it
    (RuleRef.describe)."""
    return RuleRef(r.policy, direction_name(r.direction).capitalize(), r.rule_index, r.tier or "NetworkPolicy",
                   r.kind or "NetworkPolicy", r.priority, r.action or "Accept", r.rule_name).describe()


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        widths = [len(h) for h in header]
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*map(str, r)) for r in rows])


def as_json(msg: Any) -> str:
    return json.dumps(MessageToDict(msg, preserving_proto_field_name=True), indent=1)


def show_status(stub: pb_grpc.EnforcerStub, as_machine: bool) -> str:
    st = call(stub.Status, pb.StatusRequest())
    if as_machine:
        return as_json(st)
    age = f"{time.time() - st.last_sync_unix:.1f}s ago" if st.last_sync_unix else "never"
    lines = [f"enforcer {st.version} on node {st.node}: {'ready' if st.ready else 'NOT READY'}",
             f"source     {st.source} @ {st.source_revision}",
             f"last sync  {age} ({st.last_sync_duration_ms:.1f} ms)",
             f"objects    {st.namespaces} namespaces, {st.pods} pods, {st.network_policies} network policies, "
             f"{st.cluster_network_policies} cluster network policies",
             f"endpoints  {st.local_endpoints} local; revoked connections: {st.revoked_connections}",
             *(["mode       --audit-all: every policy in audit mode, nothing enforced"] if st.audit_all else []), "",
             table([[m.name, m.entries, m.capacity, f"{100 * m.entries / m.capacity:.1f}%" if m.capacity else "-"]
                    for m in st.maps], ["map", "entries", "capacity", "used"])]
    def more(n: int, what: str) -> list[str]:
        return [f"  ... and {n} more {what}"] if n else []

    if st.unplaced_pods:
        lines += ["", "local pods without an interface yet: " + ", ".join(st.unplaced_pods)
                  + (f" and {st.unplaced_pods_omitted} more" if st.unplaced_pods_omitted else "")]
    if st.invalid_objects:
        lines += ["", "invalid objects (not enforced as written; never opened):"]
        lines += [f"  {o.kind} {o.namespace + '/' if o.namespace else ''}{o.name}: {o.error}"
                  for o in st.invalid_objects]
        lines += more(st.invalid_objects_omitted, "invalid objects")
    if st.notices:
        lines += ["", "cluster policy notices:"]
        lines += [f"  {n}" for n in st.notices] + more(st.notices_omitted, "notices")
    if st.sync_failures or st.entries_not_written:
        per_map = "; ".join(f"{m.map}: " + ", ".join(f"{n} {w}" for n, w in ((m.full, "no room"), (m.other, "failed"),
                                                                               (m.held, "held back")) if n)
                            for m in st.map_write_failures)
        lines += ["", f"map writes failing: {st.entries_not_written} entries not written ({per_map}), "
                      "retried every pass; what they would change is not in force:"]
        lines += [f"  {f}" for f in st.sync_failures] + more(st.sync_failures_omitted, "objects")
        lines += [f"  e.g. {s}" for s in st.sync_failure_samples[:3]]
    if st.diagnostics:
        lines += ["", "configuration problems (`enforcer diagnose` for details and fixes):"]
        lines += [f"  {d.severity}: {d.code} ({d.effect}): Service {d.service}, NetworkPolicy {d.policy}"
                  for d in st.diagnostics]
        lines += more(st.diagnostics_omitted, "problems")
    return "\n".join(lines)


def show_endpoints(stub: pb_grpc.EnforcerStub, as_machine: bool) -> str:
    resp = call(stub.ListEndpoints, pb.ListEndpointsRequest())
    if as_machine:
        return as_json(resp)
    rows = [[f"{e.namespace}/{e.pod}", ",".join(e.ips), e.endpoint_id, ",".join(map(str, e.identities)),
             "yes" if e.ingress_isolated else "no", "yes" if e.egress_isolated else "no", e.interface,
             (",".join(e.policies) or "-") + (f" (+{e.policies_omitted} more)" if e.policies_omitted else "")]
            for e in resp.endpoints]
    return table(rows, ["pod", "ips", "id", "identity", "ingress-isolated", "egress-isolated", "interface", "policies"])


def show_policies(stub: pb_grpc.EnforcerStub, as_machine: bool) -> str:
    resp = call(stub.ListPolicies, pb.ListPoliciesRequest())
    if as_machine:
        return as_json(resp)
    rows = [[f"{p.namespace}/{p.name}", ",".join(p.policy_types), "audit" if p.audit else "enforce", p.entries,
             (",".join(p.selected_endpoints) or "-")
             + (f" (+{p.selected_endpoints_omitted} more)" if p.selected_endpoints_omitted else ""),
             p.error or ""] for p in resp.policies]
    text = table(rows, ["policy", "types", "mode", "entries", "selects (local)", "error"])
    if resp.cluster_policies:
        crows = [[c.name, c.tier, c.priority, c.kind, "audit" if c.audit else "enforce",
                  f"{c.ingress_rules}/{c.egress_rules}", c.entries,
                  (",".join(c.selected_endpoints) or "-")
                  + (f" (+{c.selected_endpoints_omitted} more)" if c.selected_endpoints_omitted else ""),
                  "; ".join(c.warnings)] for c in resp.cluster_policies]
        text += "\n\n" + table(crows, ["cluster policy", "tier", "priority", "kind", "mode", "rules (in/out)",
                                        "entries", "selects (local)", "warnings"])
    return text


def show_counters(stub: pb_grpc.EnforcerStub, as_machine: bool, namespace: str = "", pod: str = "") -> str:
    resp = call(stub.GetCounters, pb.GetCountersRequest(namespace=namespace, pod=pod))
    if as_machine:
        return as_json(resp)
    rows = [[f"{c.namespace}/{c.pod}" if c.pod else "(no endpoint)", direction_name(c.direction),
             "allowed" if c.allowed else "DENIED", reason_name(c.reason), c.tier or "-", c.packets, c.bytes]
            for c in resp.counters]
    return table(rows, ["endpoint", "direction", "verdict", "reason", "tier", "packets", "bytes"])


def flow_line(f: pb.Flow) -> str:
    def side(p: pb.Peer) -> str:
        who = f"{p.namespace}/{p.pod}" if p.pod else (p.identity_description or p.ip)
        return f"{who} [{p.ip}]:{p.port}" if p.pod or p.identity_description else f"{p.ip}:{p.port}"

    when = time.strftime("%H:%M:%S", time.localtime(f.time_unix))
    why = reason_name(f.reason)
    if f.HasField("rule"):
        why += f" by {describe_rule(f.rule)}"
    elif f.audited_policies:
        why += f" (isolated by {', '.join(f.audited_policies)})"
    elif f.tier:
        why += f" ({f.tier})"
    if f.audit:
        why = f"would be {why}, audit mode"
    verdict = "AUDIT" if f.audit else "ALLOW" if f.allowed else "DROP "
    return (f"{when} {verdict} {f.protocol:<5} {side(f.source)} -> {side(f.destination)} "
            f"({direction_name(f.direction)} of {f.endpoint or '?'}: {why})")


def stream_flows(stub: pb_grpc.EnforcerStub, as_machine: bool, req: pb.StreamFlowsRequest,
                 out: Callable[[str], None] = print) -> None:
    try:
        for f in stub.StreamFlows(req, timeout=None if req.follow else TIMEOUT):
            out(json.dumps(MessageToDict(f, preserving_proto_field_name=True)) if as_machine else flow_line(f))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            raise ApiUnavailable(f"the daemon is not answering ({e.details()})") from None
        raise


def show_explain(stub: pb_grpc.EnforcerStub, as_machine: bool, req: pb.ExplainRequest) -> str:
    resp = call(stub.Explain, req)
    if as_machine:
        return as_json(resp)
    lines = [resp.summary]
    for h in resp.hooks:
        lines.append(f"  {hook_line(h)}")
        if h.cluster_policies:
            lines.append(f"    cluster policies: {', '.join(h.cluster_policies)}"
                         + (f" and {h.cluster_policies_omitted} more" if h.cluster_policies_omitted else ""))
        if h.trace:
            lines.append("    pipeline:")
            lines += [f"      {step}" for step in h.trace]
        for r in h.rules:
            lines.append(f"    rule: {describe_rule(r)}" + (f" ({r.action})" if r.tier != "NetworkPolicy" else ""))
        if h.rules_omitted:
            lines.append(f"    ... and {h.rules_omitted} more rules")
        if h.isolating_policies:
            lines.append(f"    isolated by: {', '.join(h.isolating_policies)}"
                         + (f" and {h.isolating_policies_omitted} more" if h.isolating_policies_omitted else ""))
        lines.append(f"    maps: {'agree' if h.maps_agree else 'DISAGREE'} ({h.maps_detail})" if h.maps_detail
                     else "    maps: not read")
    return "\n".join(lines)


def hook_line(h: pb.HookExplanation) -> str:
    """e.g. `ingress of y/a: denied by Admin deny-x (priority 10) ingress
    rule 0 "block"`; `egress of x/a: allowed (not isolated)`."""
    head = f"{direction_name(h.direction)} of {h.endpoint}: {'allowed' if h.allowed else 'denied'}"
    cluster = [r for r in h.rules if r.tier in ("Admin", "Baseline")]
    if cluster:
        return f"{head} by {describe_rule(cluster[0])}"
    if h.allowed and h.rules:
        more = len(h.rules) - 1 + h.rules_omitted
        return f"{head} by {describe_rule(h.rules[0])}" + (f" (and {more} more rules)" if more else "")
    tier = f" [{h.tier}]" if h.tier and h.tier != "default" and h.tier not in h.why else ""
    return f"{head} ({h.why}){tier}"


# `enforcer diagnose` exit status when it found problems (0: none found;
# 1, as every command: the daemon could not be asked).
EXIT_PROBLEMS = 3


def show_diagnose(stub: pb_grpc.EnforcerStub, as_machine: bool) -> tuple[str, int]:
    """The text to print and the exit status."""
    resp = call(stub.Diagnose, pb.DiagnoseRequest())
    code = EXIT_PROBLEMS if resp.diagnostics else 0
    if as_machine:
        # Every field, so that "no problems" is an explicit empty list.
        doc = {"source_revision": resp.source_revision,
               "diagnostics": [MessageToDict(d, preserving_proto_field_name=True) for d in resp.diagnostics]}
        return json.dumps(doc, indent=1), code
    if not resp.diagnostics:
        return f"no problems found (source revision {resp.source_revision})", code
    lines = []
    for d in resp.diagnostics:  # the message ends with the fix
        lines += [f"{d.severity.upper()} {d.code} ({d.effect}): Service {d.service}, NetworkPolicy {d.policy}",
                  textwrap.fill(d.message, 100, initial_indent="  ", subsequent_indent="  ",
                                break_on_hyphens=False, break_long_words=False), ""]
    lines.append(f"{len(resp.diagnostics)} problem{'s' if len(resp.diagnostics) > 1 else ''} found "
                 f"(source revision {resp.source_revision})")
    return "\n".join(lines), code
