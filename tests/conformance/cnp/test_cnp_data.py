"""Checks of the ported ClusterNetworkPolicy conformance data only: no
kernel, no lab, no daemon.

Besides shape (counts, manifests, patches, what each poke targets), every
poke's expectation is recomputed by a small, independent evaluator of the
tiers written here from the API's documented semantics (reference A.2):
a transcription slip in a manifest, a patch or a poke would show up as a
disagreement.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from . import cases as C
from . import cluster as K

FAKE_V4 = {p: f"10.244.0.{2 + i}" for i, p in enumerate(K.POD_NETWORK_PODS)} | {p: "10.245.0.1"
                                                                                 for p in K.HOST_NETWORK_PODS}
FAKE_V6 = {p: f"fd00:244::{2 + i:x}" for i, p in enumerate(K.POD_NETWORK_PODS)} | {p: "fd00:245::1"
                                                                                  for p in K.HOST_NETWORK_PODS}
PEER_KINDS = {"ingress": {"namespaces", "pods"}, "egress": {"namespaces", "pods", "nodes", "networks"}}


def test_counts(capsys: pytest.CaptureFixture[str]) -> None:
    ups = C.UPSTREAM_TESTS
    pokes = sum(len(t.pokes) for t in ups)
    head = sum(len(C.with_head_steps(t).pokes) for t in ups)
    with capsys.disabled():
        print(f"\n[cnp conformance] {len(ups)} upstream tests, {sum(len(t.subtests) for t in ups)} subtests, "
              f"{pokes} pokes ({head} with main's relabel steps); {len(C.EXTRA_CASES)} extra cases, "
              f"{sum(len(t.pokes) for t in C.EXTRA_CASES)} pokes; IPv6: {len(C.cases_for(6))} cases")
    assert (len(ups), sum(len(t.subtests) for t in ups), pokes, head) == (24, 92, 289, 301)
    assert len({t.id for t in C.ALL_CASES}) == len(C.ALL_CASES)
    by_feature = {f: sum(f in t.features for t in ups) for f in (C.FEATURE_NAMED_PORTS, C.FEATURE_NODE_PEERS)}
    assert by_feature == {C.FEATURE_NAMED_PORTS: 4, C.FEATURE_NODE_PEERS: 2}
    assert all(C.FEATURE_CNP in t.features for t in C.ALL_CASES)
    assert set(C.IPV6_UPSTREAM) <= set(C.UPSTREAM_BY_NAME)


def test_base_objects() -> None:
    assert K.HOUSES == ("gryffindor", "slytherin", "hufflepuff", "ravenclaw", "forbidden-forrest")
    assert len(K.ALL_PODS) == 10 and K.HOST_NETWORK_PODS == ("forbidden-forrest/centaur-0",
                                                             "forbidden-forrest/centaur-1")
    assert len({K.lab_name(p) for p in K.ALL_PODS}) == 10
    pod = K.render_pod("gryffindor/harry-potter-1", "n", ["10.244.0.3"], ["10.245.0.1"])
    assert pod["metadata"]["labels"] == {"conformance-house": "gryffindor",
                                         "statefulset.kubernetes.io/pod-name": "harry-potter-1",
                                         "apps.kubernetes.io/pod-index": "1"}
    named = {p["name"]: (p["protocol"], p["containerPort"]) for c in pod["spec"]["containers"]
             for p in c.get("ports", [])}
    assert named == {"web": ("TCP", 80), "dns": ("UDP", 53)}
    centaur = K.render_pod("forbidden-forrest/centaur-0", "n", ["10.245.0.1"], ["10.245.0.1"])
    assert centaur["spec"]["hostNetwork"] is True
    assert "{{" not in str(centaur) and "34345" in str(centaur)
    node = K.render_node("n", ["10.245.0.1", "fd00:245::1"])
    assert node["metadata"]["labels"]["kubernetes.io/os"] == "linux"


def test_parsers_accept_the_objects() -> None:
    """The enforcer's own parser reads the base objects (the CNP kinds
    only once the model knows them)."""
    from enforcer.model import parse_object

    for h in K.HOUSES:
        parse_object(K.render_namespace(h, K.namespace_labels(h)))
    for p in K.ALL_PODS:
        parse_object(K.render_pod(p, "n", [FAKE_V4[p], FAKE_V6[p]], ["10.245.0.1"]))


# -- structural validation of what each case writes ---------------------------

def _valid(policy: dict[str, Any], *, unknown_peers_ok: bool = False) -> bool:
    """The CRD's OpenAPI + CEL rules that a patch could break (A.3)."""
    s = policy["spec"]
    if s.get("tier") not in ("Admin", "Baseline") or not 0 <= s.get("priority", -1) <= 1000:
        return False
    if len(s.get("subject", {})) != 1:
        return False
    for d in ("ingress", "egress"):
        rules = s.get(d, [])
        if len(rules) > 25:
            return False
        for r in rules:
            peers = r["from" if d == "ingress" else "to"]
            if r["action"] not in ("Accept", "Deny", "Pass") or not 1 <= len(peers) <= 25:
                return False
            for peer in peers:
                if len(peer) != 1 or not (set(peer) <= PEER_KINDS[d] or unknown_peers_ok):
                    return False
                for cidr in peer.get("networks", []):
                    ipaddress.ip_network(cidr, strict=False)
            for proto in r.get("protocols", []):
                if len(proto) != 1 or not set(proto) <= {"tcp", "udp", "sctp", "destinationNamedPort"}:
                    return False
    return True


@pytest.mark.parametrize("case", C.ALL_CASES, ids=lambda t: t.id)
def test_case_shape(case: C.UpstreamTest) -> None:
    objs = C.test_objects(case)
    assert case.subtests and case.pokes
    assert len({C.object_key(o) for o in objs}) == len(objs)
    fail_closed = case.id == "CNPExtraFailClosed"
    for o in objs:
        if o["kind"] == "ClusterNetworkPolicy":
            assert o["apiVersion"] == C.CNP_API_VERSION and "namespace" not in o["metadata"]
            assert _valid(C.resolve(o, FAKE_V4), unknown_peers_ok=fail_closed), o["metadata"]["name"]
        elif o["kind"] == "Service":  # the hairpin case's
            assert o["apiVersion"] == "v1" and len(o["spec"]["clusterIPs"]) == 2
        else:
            assert (o["apiVersion"], o["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    services = [o for o in objs if o["kind"] == "Service"]
    for p in case.pokes:
        assert p.client in K.POD_NETWORK_PODS  # upstream never probes from centaur
        assert p.via in ("pod", "service"), p
        if p.via == "service":  # a Service of the case selects the server
            assert any(o["metadata"]["namespace"] == K.namespace(K.split(p.server)[0])
                       and _sel({"matchLabels": o["spec"]["selector"]}, K.pod_labels(p.server))
                       and {"protocol": p.protocol, "port": p.port} in
                       [{"protocol": sp["protocol"], "port": sp["port"]} for sp in o["spec"]["ports"]]
                       for o in services), p
        assert p.server in K.ALL_PODS
        if p.protocol == "ICMP":
            assert p.port == 0
            continue
        served = K.HOST_PORTS if K.is_host_network(p.server) else K.POD_PORTS
        assert p.port in served[p.protocol], p


def test_manifests_verbatim_and_rendered() -> None:
    for t in C.UPSTREAM_TESTS:
        for rel in t.manifests:
            assert (C.UPSTREAM_DIR / rel).is_file(), rel
            assert "{{" not in C.manifest_text(rel)
    assert "{{ index .HostNetworkPorts 0 }}" in (C.UPSTREAM_DIR / "base/manifests.yaml").read_text()
    with pytest.raises(ValueError):
        C.render_template("{{ .Other }}")


def test_patches() -> None:
    egress_tcp = C.manifest_objects("base/admin_tier/standard-egress-tcp-rules.yaml")[0]
    swapped = C.apply_ops(egress_tcp, (C.Swap("egress", 0, 1),), FAKE_V4)
    assert [r["action"] for r in swapped["spec"]["egress"][:2]] == ["Deny", "Accept"]
    assert egress_tcp["spec"]["egress"][0]["action"] == "Accept"  # the input is kept
    cidr = C.manifest_objects("base/admin_tier/standard-egress-inline-cidr-rules.yaml")[0]
    out = C.apply_ops(cidr, (C.PrependRule("egress", C.ALLOW_TO_SPECIFIC_POD_IPS),), FAKE_V6)
    assert out["spec"]["egress"][0]["to"][0]["networks"] == [f"{FAKE_V6['ravenclaw/luna-lovegood-0']}/128",
                                                             f"{FAKE_V6['hufflepuff/cedric-diggory-0']}/128"]


# -- an independent evaluator -------------------------------------------------------

def _sel(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, val = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and val in e.get("values", []), "NotIn": not has or val not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


class World:
    def __init__(self, objects: list[dict[str, Any]], ns_labels: dict[str, dict[str, str]], ips: dict[str, str]):
        self.objects = objects
        self.ns_labels = {h: {**labels, K.NAMESPACE_NAME_LABEL: K.namespace(h)} for h, labels in ns_labels.items()}
        self.ips = ips

    def pod_in(self, sel: dict[str, Any], pod: str) -> bool:
        if K.is_host_network(pod):  # A.2.6
            return False
        house, _ = K.split(pod)
        if "namespaces" in sel:
            return _sel(sel["namespaces"], self.ns_labels[house])
        return (_sel(sel["pods"].get("namespaceSelector", {}), self.ns_labels[house])
                and _sel(sel["pods"]["podSelector"], K.pod_labels(pod)))

    def peer_matches(self, peer: dict[str, Any], other: str) -> bool | None:
        """None: no field this evaluator knows (fail closed, A.2.12)."""
        if "namespaces" in peer or "pods" in peer:
            return self.pod_in(peer, other)
        if "nodes" in peer:
            return K.is_host_network(other) and _sel(peer["nodes"], {"kubernetes.io/os": "linux"})
        if "networks" in peer:
            ip = ipaddress.ip_address(self.ips[other])
            return any(ip in ipaddress.ip_network(n, strict=False) for n in peer["networks"]
                       if ipaddress.ip_network(n, strict=False).version == ip.version)
        return None

    def proto_matches(self, protocols: list[dict[str, Any]] | None, proto: str, port: int, dst: str) -> bool:
        if protocols is None:
            return True
        for p in protocols:
            if "destinationNamedPort" in p:
                pod = K.render_pod(dst, "n", [self.ips[dst]], [self.ips[dst]])
                if any(cp.get("name") == p["destinationNamedPort"] and cp["protocol"] == proto
                       and cp["containerPort"] == port for c in pod["spec"]["containers"] for cp in c.get("ports", [])):
                    return True
            elif proto.lower() in p:
                dp = p[proto.lower()]["destinationPort"]
                if dp.get("number") == port or ("range" in dp and dp["range"]["start"] <= port <= dp["range"]["end"]):
                    return True
        return False

    def tier(self, tier: str, direction: str, subject: str, other: str, proto: str, port: int, dst: str) -> str:
        policies = sorted((o for o in self.objects if o["kind"] == "ClusterNetworkPolicy"
                           and o["spec"]["tier"] == tier and self.pod_in(o["spec"]["subject"], subject)),
                          key=lambda o: (o["spec"]["priority"], o["metadata"]["name"]))
        for o in policies:
            for r in o["spec"].get(direction, []):
                peers = [self.peer_matches(p, other) for p in r["from" if direction == "ingress" else "to"]]
                if not self.proto_matches(r.get("protocols"), proto, port, dst):
                    continue
                if any(peers) or (None in peers and r["action"] != "Accept"):
                    return {"Accept": "allow", "Deny": "deny", "Pass": "pass"}[r["action"]] \
                        if any(peers) else "deny"
        return "none"

    def np(self, direction: str, subject: str, other: str) -> str:
        house, _ = K.split(subject)
        nps = [o for o in self.objects if o["kind"] == "NetworkPolicy"
               and o["metadata"]["namespace"] == K.namespace(house)
               and direction.capitalize() in o["spec"]["policyTypes"]]
        if not nps or K.is_host_network(subject):
            return "none"
        if other == subject:  # its own hairpin: NetworkPolicy leaves a pod's traffic to itself alone
            return "allow"
        for o in nps:
            for r in o["spec"].get(direction, []):
                for peer in r.get("from" if direction == "ingress" else "to", []):
                    if not K.is_host_network(other) and _sel(peer["namespaceSelector"],
                                                             self.ns_labels[K.split(other)[0]]):
                        return "allow"
        return "deny"

    def direction(self, direction: str, subject: str, other: str, proto: str, port: int, dst: str) -> bool:
        if K.is_host_network(subject):
            return True
        a = self.tier("Admin", direction, subject, other, proto, port, dst)
        if a in ("allow", "deny"):
            return a == "allow"
        n = self.np(direction, subject, other)
        if n != "none":
            return n == "allow"
        b = self.tier("Baseline", direction, subject, other, proto, port, dst)
        return b != "deny"

    def allowed(self, src: str, dst: str, proto: str, port: int, via: str = "pod") -> bool:
        if src == dst and via == "pod":
            return True  # to its own IP: loopback in the pod, no policy sees it
        # (through a Service, src == dst is the hairpin: each tier judges the
        # pod as its own peer)
        return (self.direction("egress", src, dst, proto, port, dst)
                and self.direction("ingress", dst, src, proto, port, dst))


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", [C.with_head_steps(t) for t in C.UPSTREAM_TESTS] + list(C.EXTRA_CASES),
                         ids=lambda t: t.id)
def test_expectations_agree_with_an_independent_evaluator(case: C.UpstreamTest, family: int) -> None:
    ips = FAKE_V4 if family == 4 else FAKE_V6
    objects = {C.object_key(o): C.resolve(o, ips) for o in C.test_objects(case)}
    ns_labels = {h: K.namespace_labels(h) for h in K.HOUSES}
    wrong = []
    for st in case.subtests:
        for step in st.steps:
            if isinstance(step, C.Patch):
                key = ("ClusterNetworkPolicy", None, step.policy)
                new = C.apply_ops(objects[key], step.ops, ips)
                if _valid(new):  # C.5: an invalid edit keeps the previous version
                    objects[key] = new
            elif isinstance(step, C.Apply):
                objects[C.object_key(step.obj)] = C.resolve(copy.deepcopy(step.obj), ips)
            elif isinstance(step, C.Delete):
                del objects[(step.kind, step.namespace, step.name)]
            elif isinstance(step, C.SetNamespaceLabels):
                ns_labels[step.house] = dict(step.labels)
            elif isinstance(step, C.Poke):
                world = World(list(objects.values()), ns_labels, ips)
                if world.allowed(step.client, step.server, step.protocol, step.port, step.via) != step.connect:
                    wrong.append(f"{st.title}: {step}")
    assert not wrong, "\n".join(wrong)


def test_equal_priority_steps_flip_the_name_order() -> None:
    """Each step of the two-node case renames one policy, the winner is the
    first by name, and it changes at every step."""
    winners = []
    previous: set[str] = set()
    for accept, deny, winner in C.EQUAL_PRIORITY_STEPS:
        assert winner == ("Accept" if min(accept, deny) == accept else "Deny")
        assert not previous or len(previous - {accept, deny}) == 1  # one rename
        policies = [C.equal_priority_policy(accept, "Accept"), C.equal_priority_policy(deny, "Deny")]
        assert {p["spec"]["priority"] for p in policies} == {C.EQUAL_PRIORITY}
        assert all(_valid(p) for p in policies)
        previous = {accept, deny}
        winners.append(winner)
    assert all(a != b for a, b in zip(winners, winners[1:], strict=False))
    nodes = {p: n for n, pods in C.EQUAL_PRIORITY_NODES.items() for p in pods}
    kinds = {nodes[c] == nodes[s] for c, s in C.EQUAL_PRIORITY_PAIRS}
    assert kinds == {True, False}  # pairs on one node and across
    assert {nodes[s] for _, s in C.EQUAL_PRIORITY_PAIRS} == set(C.EQUAL_PRIORITY_NODES)  # both nodes judge
