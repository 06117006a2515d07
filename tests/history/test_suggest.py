"""Suggested policies from flow history: table-driven cases of how peers,
ports, DNS, verdicts and workloads become rules, and a round trip through
the real compiler: the suggestions for a cluster's observed traffic,
compiled, allow every observed flow (per workload) and deny the rest."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml

from enforcer.compiler.evaluate import evaluate
from enforcer.history.duration import parse_duration
from enforcer.history.observe import flow_key
from enforcer.history.rows import FlowKey, FlowRow, merge_rows, stable_labels
from enforcer.history.suggest import DEFAULT_DENY_NAME, render, suggest
from enforcer.model.meta import AUDIT_ANNOTATION, PROTOCOLS
from enforcer.model.policy import NetworkPolicy

from . import cluster as C

DNS_RULE = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def labels(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(tuple(kv.split("=")) for kv in text.split(",") if kv))  # type: ignore[misc]


def R(local: str, direction: str, peer: str, port: str, verdict: str = "allowed", count: int = 1) -> FlowRow:
    """A row of namespace x. local: "pod{k=v,...}"; peer: "ns{k=v,...}" (a
    pod), "host:ADDR" or an address; port: "TCP/80"."""
    pod, _, local_labels = local.partition("{")
    protocol, _, number = port.partition("/")
    if "{" in peer:
        ns, _, peer_labels = peer.partition("{")
        kind, peer_key = "pod", (ns, labels(peer_labels.rstrip("}")), "")
    elif peer.startswith("host:"):
        kind, peer_key = "host", ("", (), peer.removeprefix("host:"))
    else:
        kind, peer_key = "world", ("", (), peer)
    key = FlowKey("x", pod, labels(local_labels.rstrip("}")), direction, kind, *peer_key, protocol,
                  int(number or 0), verdict)
    return FlowRow(key, count, 1.0, 2.0)


def pod_peer(labels: dict[str, str], ns: str | None = None) -> dict[str, Any]:
    pods = {"podSelector": {"matchLabels": labels} if labels else {}}
    return pods if ns is None else {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} | pods


def ports(*specs: str) -> list[dict[str, Any]]:
    return [{"protocol": s.split("/")[0], "port": int(s.split("/")[1])} for s in specs]


WEB = "web-1{app=web}"
CASES = [
    ("a pod of the same namespace: podSelector alone", [R(WEB, "ingress", "x{app=client}", "TCP/80")],
     {"suggested-app-web": {"ingress": [{"from": [pod_peer({"app": "client"})], "ports": ports("TCP/80")}]}}),
    ("a pod of another namespace: with its namespace", [R(WEB, "ingress", "y{app=client,tier=fe}", "TCP/80")],
     {"suggested-app-web": {"ingress": [{"from": [pod_peer({"app": "client", "tier": "fe"}, "y")],
                                         "ports": ports("TCP/80")}]}}),
    ("addresses outside the pods: one address each", [R(WEB, "ingress", "198.51.100.10", "TCP/443"),
                                                      R(WEB, "egress", "2001:db8::1", "UDP/123")],
     {"suggested-app-web": {"ingress": [{"from": [{"ipBlock": {"cidr": "198.51.100.10/32"}}], "ports": ports("TCP/443")}],
                            "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::1/128"}}], "ports": ports("UDP/123")},
                                       DNS_RULE]}}),
    ("peers seen on the same ports share a rule; others get their own",
     [R(WEB, "ingress", "x{app=a}", "TCP/80"), R(WEB, "ingress", "x{app=a}", "TCP/81"),
      R(WEB, "ingress", "y{app=b}", "TCP/81"), R(WEB, "ingress", "y{app=b}", "TCP/80"),
      R(WEB, "ingress", "x{app=c}", "UDP/80")],
     {"suggested-app-web": {"ingress": [{"from": [pod_peer({"app": "a"}), pod_peer({"app": "b"}, "y")],
                                         "ports": ports("TCP/80", "TCP/81")},
                                        {"from": [pod_peer({"app": "c"})], "ports": ports("UDP/80")}]}}),
    ("DNS always, and the DNS seen is not repeated",
     [R(WEB, "egress", "kube-system{k8s-app=kube-dns}", "UDP/53"),
      R(WEB, "egress", "kube-system{k8s-app=kube-dns}", "TCP/53"),
      R(WEB, "egress", "kube-system{k8s-app=kube-dns}", "TCP/9153"),
      R("api{app=api}", "ingress", "x{app=web}", "TCP/80")],
     {"suggested-app-web": {"egress": [{"to": [pod_peer({"k8s-app": "kube-dns"}, "kube-system")],
                                        "ports": ports("TCP/9153")}, DNS_RULE]},
      "suggested-app-api": {"ingress": [{"from": [pod_peer({"app": "web"})], "ports": ports("TCP/80")}],
                            "egress": [DNS_RULE]}}),
    ("denied flows stay denied; audited ones happened and are allowed; the node needs no rule",
     [R(WEB, "ingress", "x{app=client}", "TCP/80", "denied"), R(WEB, "ingress", "x{app=client}", "TCP/81", "audit"),
      R(WEB, "ingress", "host:10.9.0.1", "TCP/8080"), R("other{app=other}", "ingress", "x{app=a}", "TCP/1", "denied")],
     {"suggested-app-web": {"ingress": [{"from": [pod_peer({"app": "client"})], "ports": ports("TCP/81")}]},
      "suggested-app-other": None}),
    ("workloads whose labels hold another's: the smaller selector leaves their pods out",
     [R(WEB, "ingress", "x{app=a}", "TCP/80"), R("web-c{app=web,track=canary}", "ingress", "x{app=a}", "TCP/81"),
      R("web-d{app=web,debug=on}", "ingress", "x{app=a}", "TCP/82", "denied")],
     {"suggested-app-web": {"podSelector": {"matchLabels": {"app": "web"},
                                            "matchExpressions": [{"key": "debug", "operator": "DoesNotExist"},
                                                                 {"key": "track", "operator": "DoesNotExist"}]}},
      "suggested-app-web-track-canary": {"podSelector": {"matchLabels": {"app": "web", "track": "canary"}}}}),
    ("a peer without stable labels: every pod of its namespace (noted)", [R(WEB, "ingress", "y{}", "TCP/80")],
     {"suggested-app-web": {"ingress": [{"from": [pod_peer({}, "y")], "ports": ports("TCP/80")}]}}),
    ("ICMP cannot be allowed alone: left out (noted)", [R(WEB, "egress", "192.0.2.1", "ICMP")],
     {"suggested-app-web": {"egress": [DNS_RULE]}}),
]


@pytest.mark.parametrize("rows,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules_from_rows(rows, expected):
    s = suggest(rows, "x")
    by_name = {p["metadata"]["name"]: p for p in s.policies}
    assert by_name[DEFAULT_DENY_NAME]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name, spec in expected.items():
        if spec is None:
            assert name not in by_name
            continue
        got = by_name[name]["spec"]
        assert got["policyTypes"] == ["Ingress", "Egress"]
        for field, value in spec.items():
            assert got.get(field) == value, (name, field)
        if "ingress" not in spec and "podSelector" not in spec:
            assert "ingress" not in got
    for p in s.policies:  # every one valid as the API server and the model read it
        assert not NetworkPolicy.parse(p).errors, p


def test_notes_say_what_is_left_out_or_widened():
    notes = suggest([R(WEB, "egress", "192.0.2.1", "ICMP"), R(WEB, "ingress", "y{}", "TCP/80"),
                     R("lonely", "ingress", "x{app=a}", "TCP/80")], "x").notes
    assert any("ICMP to 192.0.2.1" in n and "left out" in n for n in notes)
    assert any("peer pods of y without stable labels" in n for n in notes)
    assert any("without stable labels (lonely)" in n for n in notes)


def test_audit_annotation_by_default_and_not_when_enforced():
    rows = [R(WEB, "ingress", "x{app=client}", "TCP/80")]
    assert all(p["metadata"]["annotations"] == {AUDIT_ANNOTATION: "true"} for p in suggest(rows, "x").policies)
    assert all("annotations" not in p["metadata"] for p in suggest(rows, "x", audit=False).policies)


def test_names_are_unique_and_stable():
    rows = [R("a{app=Web_1}", "ingress", "x{app=a}", "TCP/80"), R("b{app=web-1}", "ingress", "x{app=a}", "TCP/80"),
            R("c{default=deny}", "ingress", "x{app=a}", "TCP/80"),
            R("d{app.kubernetes.io/name=" + "n" * 60 + "}", "ingress", "x{app=a}", "TCP/80")]
    names = [p["metadata"]["name"] for p in suggest(rows, "x").policies]
    assert len(set(names)) == len(names) == 5 and all(len(n) <= 63 for n in names)
    assert names[0] == DEFAULT_DENY_NAME and "suggested-default-deny-" in " ".join(names[1:])
    assert names == [p["metadata"]["name"] for p in suggest(list(reversed(rows)), "x").policies]


def test_output_is_deterministic_yaml_and_other_namespaces_are_ignored():
    rows = [R(WEB, "ingress", "x{app=b}", "TCP/80"), R(WEB, "ingress", "x{app=a}", "TCP/80"),
            R(WEB, "egress", "192.0.2.1", "ICMP")]
    other = FlowRow(FlowKey("y", "p", labels("app=y"), "ingress", "world", "", (), "192.0.2.9", "TCP", 1, "allowed"),
                    1, 1.0, 1.0)
    text = render([suggest(rows + [other], "x")], ["header"])
    assert text == render([suggest([other] + list(reversed(rows)), "x")], ["header"])
    assert text.startswith("# header\n# note (x): x/web-1 egress ICMP to 192.0.2.1")
    docs = list(yaml.safe_load_all(text))
    assert [d["metadata"]["name"] for d in docs] == [DEFAULT_DENY_NAME, "suggested-app-web"]
    assert "192.0.2.9" not in text
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(render([suggest([], "empty")]))] == [DEFAULT_DENY_NAME]


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800),
                                          ("1h30m", 5400), ("", None), ("0s", None), ("1.5h", None), ("1h ", None),
                                          ("h", None), ("-1h", None), ("10", None)])
def test_durations(text, seconds):
    if seconds is None:
        with pytest.raises(ValueError):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds


# -- the round trip: observe, suggest, compile, evaluate --

# What x/api admits while the traffic is observed: web pods and y's clients.
# y/other -> x/api is denied then; its sender's egress passed (recorded allowed there).
OBSERVING = C.view([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "api", "namespace": "x"},
                     "spec": {"podSelector": {"matchLabels": {"app": "api"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                                    {"namespaceSelector": {"matchLabels": {"team": "b"}},
                                                     "podSelector": {"matchLabels": {"app": "client"}}}]}]}}])
OBSERVED = [("x/web-1", "x/api", "TCP", 80), ("x/web-2", "x/api", "TCP", 80), ("y/client", "x/api", "TCP", 81),
            ("y/client", "x/web-2", "UDP", 5353), ("x/api", "z/db", "TCP", 5432),
            ("x/api-canary", "z/db", "TCP", 5433), (C.EXTERNAL, "x/web-1", "TCP", 443),
            ("x/web-1", C.EXTERNAL, "TCP", 443), ("x/web-1", "kube-system/coredns-1", "UDP", 53)]
DENIED_WHILE_OBSERVED = [("y/other", "x/api", "TCP", 80)]
CHECKED_PORTS = sorted({(proto, port) for *_, proto, port in OBSERVED + DENIED_WHILE_OBSERVED} | {("TCP", 53)})


def workload(who: str) -> tuple[str, ...]:
    if who not in C.PODS:
        return (who,)
    return (who.split("/")[0], *map("=".join, stable_labels(C.PODS[who][0])))


def observed_rows(flows) -> list[FlowRow]:
    keys = [flow_key(v, OBSERVING) for f in flows for v in C.verdicts(OBSERVING, *f)]
    return [FlowRow(k, 1, 1.0, 1.0) for k in keys if k is not None]


def test_round_trip_every_observed_flow_works_and_nothing_else(tmp_path):
    rows = merge_rows([observed_rows(OBSERVED + DENIED_WHILE_OBSERVED)])
    suggested = [p for ns in ("x", "y", "z") for p in suggest(rows, ns, audit=False).policies]
    enforced = C.view(suggested)
    assert not enforced.desired.errors
    allowed_workloads = {(workload(s), workload(d), proto, port) for s, d, proto, port in OBSERVED}
    dns = {(proto, 53) for proto in ("UDP", "TCP")}
    wrong = []
    for src, dst in itertools.permutations([*C.PODS, C.EXTERNAL], 2):
        if C.PODS.get(src, (0, 0, 0, ""))[3] != C.NODE and C.PODS.get(dst, (0, 0, 0, ""))[3] != C.NODE:
            continue  # neither end on this node: no hook here judges it
        for proto, port in CHECKED_PORTS:
            expected = ((workload(src), workload(dst), proto, port) in allowed_workloads
                        or (dst == "kube-system/coredns-1" and (proto, port) in dns))
            got = evaluate(enforced.desired, C.address(src), C.address(dst), PROTOCOLS[proto], port).allowed
            if got != expected:
                wrong.append(f"{src} -> {dst} {proto}/{port}: {'allowed' if got else 'denied'}")
    assert not wrong, wrong
