"""The upstream ClusterNetworkPolicy conformance tests as data, plus the
cases upstream leaves out (EXTRA_CASES). No kernel needed here.

Upstream: kubernetes-sigs/network-policy-api, tag v0.2.0 (commit
a17adecd0316b8ff1c3f83939ec0441d68cd6cce), conformance/tests/*.go. Each
`suite.ConformanceTest` is an UpstreamTest; each `t.Run` a Subtest whose
steps run in order; patches persist into later subtests (as upstream:
GetClusterNetworkPolicy reads the patched object). The manifests are the
upstream YAML files, vendored unchanged under upstream/ and rendered with
upstream's one template parameter (HostNetworkPorts).

A `Poke` is one `kubernetes.PokeServer` call: client pod, protocol, server
pod (its status.podIP is the target), port, shouldConnect. An expected
deny must be a TIMEOUT (a REFUSED fails), as in doPokeServer.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

UPSTREAM_REPO = "kubernetes-sigs/network-policy-api"
UPSTREAM_TAG = "v0.2.0"
UPSTREAM_COMMIT = "a17adecd0316b8ff1c3f83939ec0441d68cd6cce"
UPSTREAM_DIR = Path(__file__).resolve().parent / "upstream"
#: suite.go Setup: HostNetworkPortRangeStart 34345, 8 ports.
HOST_NETWORK_PORTS = tuple(range(34345, 34345 + 8))
NS_PREFIX = "network-policy-conformance-"
FEATURE_CNP = "ClusterNetworkPolicy"
FEATURE_NAMED_PORTS = "ClusterNetworkPolicyNamedPorts"
FEATURE_NODE_PEERS = "ClusterNetworkPolicyEgressNodePeers"
CNP_API_VERSION = "policy.networking.k8s.io/v1alpha2"


# -- steps ---------------------------------------------------------------

@dataclass(frozen=True)
class Poke:
    """PokeServer(client, protocol, server.Status.PodIP, port, connect).
    Pods are "<house>/<pod>" (namespace network-policy-conformance-<house>)."""

    client: str
    protocol: str  # TCP | UDP | SCTP | ICMP (ICMP: extra cases only; port 0)
    server: str
    port: int
    connect: bool
    #: "pod": the server's status.podIP (upstream). "service": the
    #: ClusterIP of the server's Service (extra hairpin case only).
    via: str = "pod"


@dataclass(frozen=True)
class Swap:
    """x := Spec.D[i]; Spec.D[i] = Spec.D[j]; Spec.D[j] = x"""

    direction: str
    i: int
    j: int


@dataclass(frozen=True)
class SetAction:
    direction: str
    index: int
    action: str


@dataclass(frozen=True)
class SetPriority:
    priority: int


@dataclass(frozen=True)
class SetProtocols:
    direction: str
    index: int
    protocols: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class PrependRule:
    """Spec.D = append([]Rule{rule}, Spec.D...); the rule may hold
    {"$podIPHost": "<house>/<pod>"} references (resolve())."""

    direction: str
    rule: dict[str, Any]


@dataclass(frozen=True)
class ReplaceSpec:
    """An edit replacing spec fields wholesale (extra cases)."""

    spec: dict[str, Any]


PatchOp = Swap | SetAction | SetPriority | SetProtocols | PrependRule | ReplaceSpec


@dataclass(frozen=True)
class Patch:
    """GetClusterNetworkPolicy + DeepCopy + mutations + PatchClusterNetworkPolicy."""

    policy: str
    ops: tuple[PatchOp, ...]


@dataclass(frozen=True)
class Apply:
    """Create (or replace) an object: a dict, as kubectl apply would."""

    obj: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str
    namespace: str | None
    name: str


@dataclass(frozen=True)
class SetNamespaceLabels:
    """namespace.SetLabels(labels) + PatchNamespace: the labels become
    exactly these (the API server keeps kubernetes.io/metadata.name)."""

    house: str
    labels: dict[str, str]


@dataclass(frozen=True)
class EstablishedConnection:
    """Open a TCP connection now and keep it (extra cases): a later
    CheckEstablished asks whether it still carries data."""

    key: str
    client: str
    server: str
    port: int


@dataclass(frozen=True)
class CheckEstablished:
    key: str
    alive: bool


Step = Poke | Patch | Apply | Delete | SetNamespaceLabels | EstablishedConnection | CheckEstablished


@dataclass(frozen=True)
class Subtest:
    title: str
    steps: tuple[Step, ...]

    @property
    def pokes(self) -> tuple[Poke, ...]:
        return tuple(s for s in self.steps if isinstance(s, Poke))


@dataclass(frozen=True)
class UpstreamTest:
    short_name: str
    description: str
    features: tuple[str, ...]
    manifests: tuple[str, ...]
    source: str
    subtests: tuple[Subtest, ...]
    #: Inline objects applied with the manifests (extra cases).
    objects: tuple[dict[str, Any], ...] = ()
    #: Why this case exists (extra cases: the reference section it covers).
    covers: str = ""
    families: tuple[int, ...] = (4, 6)

    @property
    def id(self) -> str:
        return self.short_name

    @property
    def pokes(self) -> tuple[Poke, ...]:
        return tuple(p for st in self.subtests for p in st.pokes)

    @property
    def needs_sctp(self) -> bool:
        return any(p.protocol == "SCTP" for p in self.pokes)


# -- the upstream rule inserted by the InlineCIDRPeers tests -------------

ALLOW_TO_SPECIFIC_POD_IPS: dict[str, Any] = {
    "name": "allow-egress-to-specific-podIPs",
    "action": "Accept",
    "to": [{"networks": [{"$podIPHost": "ravenclaw/luna-lovegood-0"},
                         {"$podIPHost": "hufflepuff/cedric-diggory-0"}]}],
}

# -- after v0.2.0: the namespace relabel the InlineCIDRPeers tests gained at
# 0eec1b0 (not in the bundle; UPSTREAM_HEAD_STEPS, off by default) --------

UPSTREAM_HEAD_COMMIT = "0eec1b07"
RELABEL_SLYTHERIN = (
    SetNamespaceLabels("slytherin", {"conformance-house": "denied-namespace-label"}),
    Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 80, False),
    Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 53, False),
    Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9003, False),
    SetNamespaceLabels("slytherin", {"conformance-house": "slytherin"}),
    Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 80, True),
    Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 53, True),
    Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9003, True),
)


UPSTREAM_TESTS: tuple[UpstreamTest, ...] = (
    UpstreamTest(
        short_name="CNPAdminTierEgressNamedPort",
        description="Tests support for egress traffic on a named port using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy', 'ClusterNetworkPolicyNamedPorts',),
        manifests=('base/admin_tier/standard-egress-tcp-rules.yaml',),
        source="conformance/tests/admin-network-policy-experimental-egress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for named port", (
                Patch("egress-tcp", (SetProtocols("egress", 5, ({"destinationNamedPort": "web"},)),)),
                Poke("gryffindor/harry-potter-0", "TCP", "hufflepuff/cedric-diggory-1", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 8080, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierEgressNodePeers",
        description="Tests support for egress traffic to node peers using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy', 'ClusterNetworkPolicyEgressNodePeers',),
        manifests=('base/admin_tier/experimental-egress-selector-rules.yaml',),
        source="conformance/tests/admin-network-policy-experimental-egress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' rule policy for egress-node-peer", (
                Poke("gryffindor/harry-potter-1", "TCP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[0], True),
            )),
            Subtest("Should support a 'pass-egress' rule policy for egress-node-peer", (
                Poke("gryffindor/harry-potter-1", "UDP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[2], True),
            )),
            Subtest("Should support a 'deny-egress' rule policy for egress-node-peer", (
                Poke("gryffindor/harry-potter-1", "TCP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[1], False),
                Poke("gryffindor/harry-potter-1", "UDP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[4], False),
                Poke("gryffindor/harry-potter-1", "SCTP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[6], False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierIngressNamedPort",
        description="Tests support for ingress traffic on a named port using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy', 'ClusterNetworkPolicyNamedPorts',),
        manifests=('base/admin_tier/standard-ingress-udp-rules.yaml',),
        source="conformance/tests/admin-network-policy-experimental-ingress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for named port", (
                Patch("ingress-udp", (SetProtocols("ingress", 5, ({"destinationNamedPort": "dns"},)),)),
                Poke("gryffindor/harry-potter-0", "UDP", "hufflepuff/cedric-diggory-1", 53, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 5353, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierEgressInlineCIDRPeers",
        description="Tests support for egress traffic to CIDR peers using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-egress-inline-cidr-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-egress-inline-cidr-rules.go",
        subtests=(
            Subtest("Should support a 'deny-egress' rule policy for egress-cidr-peer", (
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-0", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-0", 9003, False),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-0", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-0", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-0", 9003, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 53, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9003, True),
            )),
            Subtest("Should support an 'allow-egress' rule policy for egress-cidr-peer", (
                Patch("inline-cidr-as-peers-example", (PrependRule("egress", ALLOW_TO_SPECIFIC_POD_IPS),)),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-0", 53, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-1", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-1", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-1", 9003, False),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-1", 9003, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierEgressSCTP",
        description="Tests support for egress traffic (SCTP protocol) using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-egress-sctp-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-egress-sctp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for SCTP protocol; ensure rule ordering is respected", (
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "gryffindor/harry-potter-0", 9003, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-0", 9005, True),
            )),
            Subtest("Should support an 'allow-egress' policy for SCTP protocol at the specified port", (
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "hufflepuff/cedric-diggory-1", 9003, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "hufflepuff/cedric-diggory-1", 9005, False),
            )),
            Subtest("Should support an 'deny-egress' policy for SCTP protocol; ensure rule ordering is respected", (
                Patch("egress-sctp", (Swap("egress", 0, 1),)),
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "gryffindor/harry-potter-1", 9003, False),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-1", 9005, False),
            )),
            Subtest("Should support a 'deny-egress' policy for SCTP protocol at the specified port", (
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "slytherin/draco-malfoy-0", 9003, False),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "slytherin/draco-malfoy-0", 9005, True),
            )),
            Subtest("Should support an 'pass-egress' policy for SCTP protocol; ensure rule ordering is respected", (
                Patch("egress-sctp", (Swap("egress", 0, 2),)),
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "gryffindor/harry-potter-1", 9003, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-1", 9005, True),
            )),
            Subtest("Should support a 'pass-egress' policy for SCTP protocol at the specified port", (
                Patch("egress-sctp", (Swap("egress", 3, 4),)),
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "slytherin/draco-malfoy-0", 9003, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "slytherin/draco-malfoy-0", 9005, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierEgressTCP",
        description="Tests support for egress traffic (TCP protocol) using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-egress-tcp-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-egress-tcp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected", (
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 8080, True),
            )),
            Subtest("Should support an 'allow-egress' policy for TCP protocol at the specified port", (
                Poke("gryffindor/harry-potter-0", "TCP", "hufflepuff/cedric-diggory-1", 8080, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 80, False),
            )),
            Subtest("Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected", (
                Patch("egress-tcp", (Swap("egress", 0, 1),)),
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-1", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-1", 8080, False),
            )),
            Subtest("Should support a 'deny-egress' policy for TCP protocol at the specified port", (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
            )),
            Subtest("Should support an 'pass-egress' policy for TCP protocol; ensure rule ordering is respected", (
                Patch("egress-tcp", (Swap("egress", 0, 2),)),
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 8080, True),
            )),
            Subtest("Should support a 'pass-egress' policy for TCP protocol at the specified port", (
                Patch("egress-tcp", (Swap("egress", 3, 4),)),
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierEgressUDP",
        description="Tests support for egress traffic (UDP protocol) using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-egress-udp-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-egress-udp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for UDP protocol; ensure rule ordering is respected", (
                Poke("hufflepuff/cedric-diggory-0", "UDP", "ravenclaw/luna-lovegood-0", 53, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "ravenclaw/luna-lovegood-0", 5353, True),
            )),
            Subtest("Should support an 'allow-egress' policy for UDP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "UDP", "gryffindor/harry-potter-1", 53, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "gryffindor/harry-potter-1", 5353, False),
            )),
            Subtest("Should support an 'deny-egress' policy for UDP protocol; ensure rule ordering is respected", (
                Patch("egress-udp", (Swap("egress", 0, 1),)),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "ravenclaw/luna-lovegood-1", 53, False),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "ravenclaw/luna-lovegood-1", 5353, False),
            )),
            Subtest("Should support a 'deny-egress' policy for UDP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "UDP", "slytherin/draco-malfoy-0", 5353, False),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "slytherin/draco-malfoy-0", 53, True),
            )),
            Subtest("Should support an 'pass-egress' policy for UDP protocol; ensure rule ordering is respected", (
                Patch("egress-udp", (Swap("egress", 0, 2),)),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "ravenclaw/luna-lovegood-1", 5353, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "ravenclaw/luna-lovegood-1", 53, True),
            )),
            Subtest("Should support a 'pass-egress' policy for UDP protocol at the specified port", (
                Patch("egress-udp", (Swap("egress", 3, 4),)),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "slytherin/draco-malfoy-0", 5353, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "slytherin/draco-malfoy-0", 53, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierGress",
        description="Tests support for combined ingress and egress traffic rules in the cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-gress-rules-combined.yaml',),
        source="conformance/tests/admin-network-policy-standard-gress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-gress' policy across different protocols", (
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-0", 53, True),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "gryffindor/harry-potter-0", 53, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-0", 9003, True),
            )),
            Subtest("Should support an 'allow-gress' policy across different protocols at the specified ports", (
                Poke("gryffindor/harry-potter-0", "TCP", "hufflepuff/cedric-diggory-1", 8080, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 80, False),
                Poke("gryffindor/harry-potter-0", "UDP", "hufflepuff/cedric-diggory-1", 5353, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 53, False),
                Poke("gryffindor/harry-potter-0", "SCTP", "hufflepuff/cedric-diggory-1", 9003, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-1", 9005, False),
                Poke("hufflepuff/cedric-diggory-0", "TCP", "gryffindor/harry-potter-1", 80, True),
                Poke("hufflepuff/cedric-diggory-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "gryffindor/harry-potter-1", 5353, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "gryffindor/harry-potter-1", 53, False),
                Poke("hufflepuff/cedric-diggory-0", "SCTP", "gryffindor/harry-potter-1", 9003, True),
                Poke("hufflepuff/cedric-diggory-1", "SCTP", "gryffindor/harry-potter-1", 9005, False),
            )),
            Subtest("Should support an 'deny-gress' policy across different protocols", (
                Patch("gress-rules", (Swap("egress", 0, 1), Swap("ingress", 0, 1),)),
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-1", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-1", 53, False),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, False),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-1", 80, False),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "gryffindor/harry-potter-1", 53, False),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-1", 9003, False),
            )),
            Subtest("Should support a 'deny-gress' policy across different protocols at the specified ports", (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
                Poke("gryffindor/harry-potter-0", "UDP", "slytherin/draco-malfoy-0", 53, False),
                Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 5353, True),
                Poke("gryffindor/harry-potter-0", "SCTP", "slytherin/draco-malfoy-0", 9003, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9005, True),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
                Poke("slytherin/draco-malfoy-0", "UDP", "gryffindor/harry-potter-0", 53, False),
                Poke("slytherin/draco-malfoy-1", "UDP", "gryffindor/harry-potter-0", 5353, True),
                Poke("slytherin/draco-malfoy-0", "SCTP", "gryffindor/harry-potter-0", 9003, False),
                Poke("slytherin/draco-malfoy-1", "SCTP", "gryffindor/harry-potter-0", 9005, True),
            )),
            Subtest("Should support an 'pass-gress' policy across different protocols", (
                Patch("gress-rules", (Swap("egress", 0, 2), Swap("ingress", 0, 2),)),
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-0", "UDP", "ravenclaw/luna-lovegood-0", 5353, True),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "gryffindor/harry-potter-0", 53, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-0", 9003, True),
            )),
            Subtest("Should support a 'pass-gress' policy across different protocols at the specified ports", (
                Patch("gress-rules", (Swap("egress", 3, 4), Swap("ingress", 3, 4),)),
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
                Poke("gryffindor/harry-potter-0", "UDP", "slytherin/draco-malfoy-0", 53, True),
                Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 5353, True),
                Poke("gryffindor/harry-potter-0", "SCTP", "slytherin/draco-malfoy-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9005, True),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
                Poke("slytherin/draco-malfoy-0", "UDP", "gryffindor/harry-potter-0", 53, True),
                Poke("slytherin/draco-malfoy-1", "UDP", "gryffindor/harry-potter-0", 5353, True),
                Poke("slytherin/draco-malfoy-0", "SCTP", "gryffindor/harry-potter-0", 9003, True),
                Poke("slytherin/draco-malfoy-1", "SCTP", "gryffindor/harry-potter-0", 9005, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierIngressSCTP",
        description="Tests support for ingress traffic (SCTP protocol) using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-ingress-sctp-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-ingress-sctp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for SCTP protocol; ensure rule ordering is respected", (
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-0", 9005, True),
            )),
            Subtest("Should support an 'allow-ingress' policy for SCTP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, True),
                Poke("hufflepuff/cedric-diggory-1", "SCTP", "ravenclaw/luna-lovegood-1", 9005, False),
            )),
            Subtest("Should support an 'deny-ingress' policy for SCTP protocol; ensure rule ordering is respected", (
                Patch("ingress-sctp", (Swap("ingress", 0, 1),)),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-1", 9005, False),
            )),
            Subtest("Should support a 'deny-ingress' policy for SCTP protocol at the specified port", (
                Poke("slytherin/draco-malfoy-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, False),
                Poke("slytherin/draco-malfoy-1", "SCTP", "ravenclaw/luna-lovegood-0", 9005, True),
            )),
            Subtest("Should support an 'pass-ingress' policy for SCTP protocol; ensure rule ordering is respected", (
                Patch("ingress-sctp", (Swap("ingress", 0, 2),)),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-1", 9005, True),
            )),
            Subtest("Should support a 'pass-ingress' policy for SCTP protocol at the specified port", (
                Patch("ingress-sctp", (Swap("ingress", 3, 4),)),
                Poke("slytherin/draco-malfoy-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("slytherin/draco-malfoy-1", "SCTP", "ravenclaw/luna-lovegood-0", 9005, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierIngressTCP",
        description="Tests support for ingress traffic (TCP protocol) using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-ingress-tcp-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-ingress-tcp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for TCP protocol; ensure rule ordering is respected", (
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("ravenclaw/luna-lovegood-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
            Subtest("Should support an 'allow-ingress' policy for TCP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "TCP", "gryffindor/harry-potter-1", 80, True),
                Poke("hufflepuff/cedric-diggory-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
            )),
            Subtest("Should support an 'deny-ingress' policy for TCP protocol; ensure rule ordering is respected", (
                Patch("ingress-tcp", (Swap("ingress", 0, 1),)),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-1", 80, False),
                Poke("ravenclaw/luna-lovegood-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
            )),
            Subtest("Should support a 'deny-ingress' policy for TCP protocol at the specified port", (
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
            Subtest("Should support an 'pass-ingress' policy for TCP protocol; ensure rule ordering is respected", (
                Patch("ingress-tcp", (Swap("ingress", 0, 2),)),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("ravenclaw/luna-lovegood-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
            Subtest("Should support a 'pass-ingress' policy for TCP protocol at the specified port", (
                Patch("ingress-tcp", (Swap("ingress", 3, 4),)),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierIngressUDP",
        description="Tests support for ingress traffic (UDP protocol) using cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-ingress-udp-rules.yaml',),
        source="conformance/tests/admin-network-policy-standard-ingress-udp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected", (
                Poke("ravenclaw/luna-lovegood-0", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "hufflepuff/cedric-diggory-0", 5353, True),
            )),
            Subtest("Should support an 'allow-ingress' policy for UDP protocol at the specified port", (
                Poke("gryffindor/harry-potter-0", "UDP", "hufflepuff/cedric-diggory-1", 53, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 5353, False),
            )),
            Subtest("Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected", (
                Patch("ingress-udp", (Swap("ingress", 0, 1),)),
                Poke("ravenclaw/luna-lovegood-0", "UDP", "hufflepuff/cedric-diggory-1", 53, False),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "hufflepuff/cedric-diggory-1", 5353, False),
            )),
            Subtest("Should support a 'deny-ingress' policy for UDP protocol at the specified port", (
                Poke("slytherin/draco-malfoy-0", "UDP", "hufflepuff/cedric-diggory-0", 5353, False),
                Poke("slytherin/draco-malfoy-1", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
            )),
            Subtest("Should support an 'pass-ingress' policy for UDP protocol; ensure rule ordering is respected", (
                Patch("ingress-udp", (Swap("ingress", 0, 2),)),
                Poke("ravenclaw/luna-lovegood-0", "UDP", "hufflepuff/cedric-diggory-1", 5353, True),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "hufflepuff/cedric-diggory-1", 53, True),
            )),
            Subtest("Should support a 'pass-ingress' policy for UDP protocol at the specified port", (
                Patch("ingress-udp", (Swap("ingress", 3, 4),)),
                Poke("slytherin/draco-malfoy-0", "UDP", "hufflepuff/cedric-diggory-0", 5353, True),
                Poke("slytherin/draco-malfoy-1", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierIntegration",
        description="Tests integration support for gress traffic between admin CNP, NP and baseline CNP using PASS action based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/api_integration/standard-anp-np-banp.yaml',),
        source="conformance/tests/admin-network-policy-standard-integration.go",
        subtests=(
            Subtest('Should Deny traffic from slytherin to gryffindor respecting admin CNP', (
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, False),
            )),
            Subtest('Should Deny traffic to slytherin from gryffindor respecting admin CNP', (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, False),
            )),
            Subtest("Should support a 'pass-ingress' policy for admin CNP and respect the match for network policy", (
                Patch("pass-example", (SetAction("ingress", 0, "Pass"),)),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
            Subtest("Should support a 'pass-egress' policy for admin CNP and respect the match for network policy", (
                Patch("pass-example", (SetAction("egress", 0, "Pass"),)),
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
            )),
            Subtest("Should support a 'pass-ingress' policy for admin CNP and respect the match for baseline cluster network policy", (
                Delete("NetworkPolicy", "network-policy-conformance-gryffindor", "allow-gress-from-to-slytherin-to-gryffindor"),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, False),
            )),
            Subtest("Should support a 'pass-egress' policy for admin CNP and respect the match for baseline cluster network policy", (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPAdminTierPriorityField",
        description="Tests support for cluster network policy API's .spec.priority field based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/admin_tier/standard-priority-field.yaml',),
        source="conformance/tests/admin-network-policy-standard-priority.go",
        subtests=(
            Subtest('Should Deny traffic from slytherin to gryffindor respecting admin CNP', (
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, False),
            )),
            Subtest('Should Deny traffic to slytherin from gryffindor respecting admin CNP', (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, False),
            )),
            Subtest('Should respect admin CNP priority field; thus passing both ingress and egress traffic over to baseline CNP', (
                Patch("old-priority-60-new-priority-40-example", (SetPriority(40),)),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierEgressNamedPort",
        description="Tests support for egress traffic on a named port using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy', 'ClusterNetworkPolicyNamedPorts',),
        manifests=('base/baseline_tier/standard-egress-udp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-experimental-egress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for named port", (
                Patch("default", (SetProtocols("egress", 3, ({"destinationNamedPort": "dns"},)),)),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "gryffindor/harry-potter-1", 53, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "gryffindor/harry-potter-1", 5353, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierEgressNodePeers",
        description="Tests support for egress traffic to node peers using  baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy', 'ClusterNetworkPolicyEgressNodePeers',),
        manifests=('base/baseline_tier/experimental-egress-selector-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-experimental-egress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' rule policy for egress-node-peer", (
                Poke("gryffindor/harry-potter-0", "TCP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[0], True),
                Poke("gryffindor/harry-potter-1", "TCP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[1], True),
            )),
            Subtest("Should support a 'deny-egress' rule policy for egress-node-peer", (
                Poke("gryffindor/harry-potter-1", "UDP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[4], False),
                Poke("gryffindor/harry-potter-1", "SCTP", "forbidden-forrest/centaur-1", HOST_NETWORK_PORTS[6], False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierIngressNamedPort",
        description="Tests support for ingress traffic on a named port using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy', 'ClusterNetworkPolicyNamedPorts',),
        manifests=('base/baseline_tier/standard-ingress-tcp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-experimental-ingress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for named port", (
                Patch("default", (SetProtocols("ingress", 3, ({"destinationNamedPort": "web"},)),)),
                Poke("hufflepuff/cedric-diggory-0", "TCP", "gryffindor/harry-potter-1", 80, True),
                Poke("hufflepuff/cedric-diggory-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierEgressInlineCIDRPeers",
        description="Tests support for egress traffic to CIDR peers using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-egress-inline-cidr-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-egress-inline-cidr-rules.go",
        subtests=(
            Subtest("Should support a 'deny-egress' rule policy for egress-cidr-peer", (
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-0", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-0", 9003, False),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-0", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-0", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-0", 9003, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 53, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9003, True),
            )),
            Subtest("Should support an 'allow-egress' rule policy for egress-cidr-peer", (
                Patch("default", (PrependRule("egress", ALLOW_TO_SPECIFIC_POD_IPS),)),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-0", 53, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-1", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-1", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-1", 9003, False),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 53, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-1", 9003, False),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierEgressSCTP",
        description="Tests support for egress traffic (SCTP protocol) using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-egress-sctp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-egress-sctp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for SCTP protocol; ensure rule ordering is respected", (
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "gryffindor/harry-potter-0", 9003, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-0", 9005, True),
            )),
            Subtest("Should support an 'allow-egress' policy for SCTP protocol at the specified port", (
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "hufflepuff/cedric-diggory-1", 9003, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "hufflepuff/cedric-diggory-1", 9005, False),
            )),
            Subtest("Should support an 'deny-egress' policy for SCTP protocol; ensure rule ordering is respected", (
                Patch("default", (Swap("egress", 0, 1),)),
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "gryffindor/harry-potter-1", 9003, False),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-1", 9005, False),
            )),
            Subtest("Should support a 'deny-egress' policy for SCTP protocol at the specified port", (
                Poke("ravenclaw/luna-lovegood-0", "SCTP", "slytherin/draco-malfoy-0", 9003, False),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "slytherin/draco-malfoy-0", 9005, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierEgressTCP",
        description="Tests support for egress traffic (TCP protocol) using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-egress-tcp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-egress-tcp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected", (
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-0", 8080, True),
            )),
            Subtest("Should support an 'allow-egress' policy for TCP protocol at the specified port", (
                Poke("gryffindor/harry-potter-0", "TCP", "hufflepuff/cedric-diggory-1", 8080, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 80, False),
            )),
            Subtest("Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected", (
                Patch("default", (Swap("egress", 0, 1),)),
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-1", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "ravenclaw/luna-lovegood-1", 8080, False),
            )),
            Subtest("Should support a 'deny-egress' policy for TCP protocol at the specified port", (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierEgressUDP",
        description="Tests support for egress traffic (UDP protocol) using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-egress-udp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-egress-udp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-egress' policy for UDP protocol; ensure rule ordering is respected", (
                Poke("hufflepuff/cedric-diggory-0", "UDP", "ravenclaw/luna-lovegood-0", 53, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "ravenclaw/luna-lovegood-0", 5353, True),
            )),
            Subtest("Should support an 'allow-egress' policy for UDP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "UDP", "gryffindor/harry-potter-1", 53, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "gryffindor/harry-potter-1", 5353, False),
            )),
            Subtest("Should support an 'deny-egress' policy for UDP protocol; ensure rule ordering is respected", (
                Patch("default", (Swap("egress", 0, 1),)),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "ravenclaw/luna-lovegood-1", 53, False),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "ravenclaw/luna-lovegood-1", 5353, False),
            )),
            Subtest("Should support a 'deny-egress' policy for UDP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "UDP", "slytherin/draco-malfoy-0", 5353, False),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "slytherin/draco-malfoy-0", 53, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierGress",
        description="Tests support for combined ingress and egress traffic rules in the baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-gress-rules-combined.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-gress-rules.go",
        subtests=(
            Subtest("Should support an 'allow-gress' policy across different protocols", (
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-0", 80, True),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-0", 53, True),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "gryffindor/harry-potter-0", 53, True),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-0", 9003, True),
            )),
            Subtest("Should support an 'allow-gress' policy across different protocols at the specified ports", (
                Poke("gryffindor/harry-potter-0", "TCP", "hufflepuff/cedric-diggory-1", 8080, True),
                Poke("gryffindor/harry-potter-1", "TCP", "hufflepuff/cedric-diggory-1", 80, False),
                Poke("gryffindor/harry-potter-0", "UDP", "hufflepuff/cedric-diggory-1", 5353, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 53, False),
                Poke("gryffindor/harry-potter-0", "SCTP", "hufflepuff/cedric-diggory-1", 9003, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "hufflepuff/cedric-diggory-1", 9005, False),
                Poke("hufflepuff/cedric-diggory-0", "TCP", "gryffindor/harry-potter-1", 80, True),
                Poke("hufflepuff/cedric-diggory-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
                Poke("hufflepuff/cedric-diggory-0", "UDP", "gryffindor/harry-potter-1", 5353, True),
                Poke("hufflepuff/cedric-diggory-1", "UDP", "gryffindor/harry-potter-1", 53, False),
                Poke("hufflepuff/cedric-diggory-0", "SCTP", "gryffindor/harry-potter-1", 9003, True),
                Poke("hufflepuff/cedric-diggory-1", "SCTP", "gryffindor/harry-potter-1", 9005, False),
            )),
            Subtest("Should support an 'deny-gress' policy across different protocols", (
                Patch("default", (Swap("egress", 0, 1), Swap("ingress", 0, 1),)),
                Poke("gryffindor/harry-potter-0", "TCP", "ravenclaw/luna-lovegood-1", 80, False),
                Poke("gryffindor/harry-potter-1", "UDP", "ravenclaw/luna-lovegood-1", 53, False),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, False),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-1", 80, False),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "gryffindor/harry-potter-1", 53, False),
                Poke("ravenclaw/luna-lovegood-1", "SCTP", "gryffindor/harry-potter-1", 9003, False),
            )),
            Subtest("Should support a 'deny-gress' policy across different protocols at the specified ports", (
                Poke("gryffindor/harry-potter-0", "TCP", "slytherin/draco-malfoy-0", 80, False),
                Poke("gryffindor/harry-potter-1", "TCP", "slytherin/draco-malfoy-0", 8080, True),
                Poke("gryffindor/harry-potter-0", "UDP", "slytherin/draco-malfoy-0", 53, False),
                Poke("gryffindor/harry-potter-1", "UDP", "slytherin/draco-malfoy-0", 5353, True),
                Poke("gryffindor/harry-potter-0", "SCTP", "slytherin/draco-malfoy-0", 9003, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "slytherin/draco-malfoy-0", 9005, True),
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
                Poke("slytherin/draco-malfoy-0", "UDP", "gryffindor/harry-potter-0", 53, False),
                Poke("slytherin/draco-malfoy-1", "UDP", "gryffindor/harry-potter-0", 5353, True),
                Poke("slytherin/draco-malfoy-0", "SCTP", "gryffindor/harry-potter-0", 9003, False),
                Poke("slytherin/draco-malfoy-1", "SCTP", "gryffindor/harry-potter-0", 9005, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierIngressSCTP",
        description="Tests support for ingress traffic (SCTP protocol) using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-ingress-sctp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-ingress-sctp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for SCTP protocol; ensure rule ordering is respected", (
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, True),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-0", 9005, True),
            )),
            Subtest("Should support an 'allow-ingress' policy for SCTP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, True),
                Poke("hufflepuff/cedric-diggory-1", "SCTP", "ravenclaw/luna-lovegood-1", 9005, False),
            )),
            Subtest("Should support an 'deny-ingress' policy for SCTP protocol; ensure rule ordering is respected", (
                Patch("default", (Swap("ingress", 0, 1),)),
                Poke("gryffindor/harry-potter-0", "SCTP", "ravenclaw/luna-lovegood-1", 9003, False),
                Poke("gryffindor/harry-potter-1", "SCTP", "ravenclaw/luna-lovegood-1", 9005, False),
            )),
            Subtest("Should support a 'deny-ingress' policy for SCTP protocol at the specified port", (
                Poke("slytherin/draco-malfoy-0", "SCTP", "ravenclaw/luna-lovegood-0", 9003, False),
                Poke("slytherin/draco-malfoy-1", "SCTP", "ravenclaw/luna-lovegood-0", 9005, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierIngressTCP",
        description="Tests support for ingress traffic (TCP protocol) using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-ingress-tcp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-ingress-tcp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for TCP protocol; ensure rule ordering is respected", (
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-0", 80, True),
                Poke("ravenclaw/luna-lovegood-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
            Subtest("Should support an 'allow-ingress' policy for TCP protocol at the specified port", (
                Poke("hufflepuff/cedric-diggory-0", "TCP", "gryffindor/harry-potter-1", 80, True),
                Poke("hufflepuff/cedric-diggory-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
            )),
            Subtest("Should support an 'deny-ingress' policy for TCP protocol; ensure rule ordering is respected", (
                Patch("default", (Swap("ingress", 0, 1),)),
                Poke("ravenclaw/luna-lovegood-0", "TCP", "gryffindor/harry-potter-1", 80, False),
                Poke("ravenclaw/luna-lovegood-1", "TCP", "gryffindor/harry-potter-1", 8080, False),
            )),
            Subtest("Should support a 'deny-ingress' policy for TCP protocol at the specified port", (
                Poke("slytherin/draco-malfoy-0", "TCP", "gryffindor/harry-potter-0", 80, False),
                Poke("slytherin/draco-malfoy-1", "TCP", "gryffindor/harry-potter-0", 8080, True),
            )),
        ),
    ),
    UpstreamTest(
        short_name="CNPBaselineTierIngressUDP",
        description="Tests support for ingress traffic (UDP protocol) using baseline cluster network policy API based on a server and client model",
        features=('ClusterNetworkPolicy',),
        manifests=('base/baseline_tier/standard-ingress-udp-rules.yaml',),
        source="conformance/tests/baseline-admin-network-policy-standard-ingress-udp-rules.go",
        subtests=(
            Subtest("Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected", (
                Poke("ravenclaw/luna-lovegood-0", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "hufflepuff/cedric-diggory-0", 5353, True),
            )),
            Subtest("Should support an 'allow-ingress' policy for UDP protocol at the specified port", (
                Poke("gryffindor/harry-potter-0", "UDP", "hufflepuff/cedric-diggory-1", 53, True),
                Poke("gryffindor/harry-potter-1", "UDP", "hufflepuff/cedric-diggory-1", 5353, False),
            )),
            Subtest("Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected", (
                Patch("default", (Swap("ingress", 0, 1),)),
                Poke("ravenclaw/luna-lovegood-0", "UDP", "hufflepuff/cedric-diggory-1", 53, False),
                Poke("ravenclaw/luna-lovegood-1", "UDP", "hufflepuff/cedric-diggory-1", 5353, False),
            )),
            Subtest("Should support a 'deny-ingress' policy for UDP protocol at the specified port", (
                Poke("slytherin/draco-malfoy-0", "UDP", "hufflepuff/cedric-diggory-0", 5353, False),
                Poke("slytherin/draco-malfoy-1", "UDP", "hufflepuff/cedric-diggory-0", 53, True),
            )),
        ),
    ),
)

UPSTREAM_BY_NAME = {t.short_name: t for t in UPSTREAM_TESTS}


def with_head_steps(test: UpstreamTest) -> UpstreamTest:
    """The test as upstream's main branch (0eec1b0) has it: the two
    InlineCIDRPeers tests relabel slytherin at the end of their first
    subtest. Other tests are unchanged."""
    if not test.short_name.endswith("EgressInlineCIDRPeers"):
        return test
    first, *rest = test.subtests
    return UpstreamTest(test.short_name, test.description, test.features, test.manifests, test.source,
                        (Subtest(first.title, first.steps + RELABEL_SLYTHERIN), *rest),
                        test.objects, test.covers, test.families)


# -- manifests -------------------------------------------------------------

_TEMPLATE = re.compile(r"\{\{\s*index\s+\.HostNetworkPorts\s+(\d+)\s*\}\}")


def render_template(text: str, host_ports: tuple[int, ...] = HOST_NETWORK_PORTS) -> str:
    """apply.go applyTemplate: the manifests' only template expression is
    `{{ index .HostNetworkPorts N }}`; anything else left is an error."""
    out = _TEMPLATE.sub(lambda m: str(host_ports[int(m.group(1))]), text)
    if "{{" in out:
        raise ValueError(f"unrendered template expression in: {out[out.index('{{'):][:60]!r}")
    return out


def manifest_text(rel: str) -> str:
    """An upstream manifest (e.g. "base/admin_tier/standard-egress-tcp-rules.yaml"),
    rendered."""
    return render_template((UPSTREAM_DIR / rel).read_text())


def manifest_objects(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest_text(rel)) if d]


def test_objects(test: UpstreamTest) -> list[dict[str, Any]]:
    """Every object the test creates before its subtests run."""
    objs = [o for rel in test.manifests for o in manifest_objects(rel)]
    return objs + [copy.deepcopy(o) for o in test.objects]


def object_key(obj: dict[str, Any]) -> tuple[str, str | None, str]:
    md = obj.get("metadata", {})
    return obj["kind"], md.get("namespace"), md["name"]


# -- patches -----------------------------------------------------------------

def _host_prefix(ip: str) -> str:
    """net.IsIPv4String(ip) ? "/32" : "/128" (inline-cidr tests)."""
    return f"{ip}/{32 if ipaddress.ip_address(ip).version == 4 else 128}"


def resolve(obj: Any, pod_ip: dict[str, str]) -> Any:
    """A copy with every {"$podIPHost": pod} replaced by "<pod IP>/32|128";
    pod_ip maps "<house>/<pod>" to its status.podIP."""
    if isinstance(obj, dict):
        if set(obj) == {"$podIPHost"}:
            return _host_prefix(pod_ip[obj["$podIPHost"]])
        return {k: resolve(v, pod_ip) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolve(v, pod_ip) for v in obj]
    return obj


def apply_ops(policy: dict[str, Any], ops: tuple[PatchOp, ...], pod_ip: dict[str, str]) -> dict[str, Any]:
    """The policy after the mutations (a new dict; the input is kept)."""
    out = copy.deepcopy(policy)
    spec = out["spec"]
    for op in ops:
        if isinstance(op, Swap):
            rules = spec[op.direction]
            rules[op.i], rules[op.j] = rules[op.j], rules[op.i]
        elif isinstance(op, SetAction):
            spec[op.direction][op.index]["action"] = op.action
        elif isinstance(op, SetPriority):
            spec["priority"] = op.priority
        elif isinstance(op, SetProtocols):
            spec[op.direction][op.index]["protocols"] = [dict(p) for p in op.protocols]
        elif isinstance(op, PrependRule):
            spec[op.direction] = [resolve(op.rule, pod_ip), *spec.get(op.direction, [])]
        elif isinstance(op, ReplaceSpec):
            spec.update(copy.deepcopy(op.spec))
        else:
            raise TypeError(f"unknown patch op {op!r}")
    return out


# -- cases upstream leaves out (reference B.3 and C.7) ----------------------------

def _ns(house: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"conformance-house": house}}}


def cnp(name: str, tier: str, priority: int, subject_house: str, *, ingress: list[dict[str, Any]] | None = None,
        egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": _ns(subject_house)}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": CNP_API_VERSION, "kind": "ClusterNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def rule(name: str, action: str, peers: list[dict[str, Any]], direction: str = "ingress",
         protocols: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "action": action, ("from" if direction == "ingress" else "to"): peers}
    if protocols is not None:
        r["protocols"] = protocols
    return r


def np_ingress_from(name: str, house: str, from_houses: list[str]) -> dict[str, Any]:
    """A NetworkPolicy isolating every pod of house for ingress, allowing it
    from the given houses' namespaces ([] = deny all ingress)."""
    spec: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Ingress"]}
    if from_houses:
        spec["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {"conformance-house": h}}}
                                     for h in from_houses]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS_PREFIX + house}, "spec": spec}


def _tcp(port: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"number": port}}}


def service(name: str, house: str, selector: dict[str, str], cluster_ips: tuple[str, str],
            ports: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    """A dual-stack ClusterIP Service (extra cases): ports as (protocol,
    port), targetPort the same; the lab emulates kube-proxy for it."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS_PREFIX + house},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ips[0], "clusterIPs": list(cluster_ips),
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                     "selector": dict(selector),
                     "ports": [{"name": f"{proto.lower()}-{port}", "protocol": proto, "port": port,
                                "targetPort": port} for proto, port in ports]}}


G0, G1 = "gryffindor/harry-potter-0", "gryffindor/harry-potter-1"
S0, S1 = "slytherin/draco-malfoy-0", "slytherin/draco-malfoy-1"
H0, H1 = "hufflepuff/cedric-diggory-0", "hufflepuff/cedric-diggory-1"
R0, R1 = "ravenclaw/luna-lovegood-0", "ravenclaw/luna-lovegood-1"


def _extra(name: str, covers: str, objects: list[dict[str, Any]], *subtests: Subtest,
           families: tuple[int, ...] = (4, 6)) -> UpstreamTest:
    return UpstreamTest(short_name=name, description=covers, features=(FEATURE_CNP,), manifests=(),
                        source="(extra)", subtests=tuple(subtests), objects=tuple(objects), covers=covers,
                        families=families)


EXTRA_CASES: tuple[UpstreamTest, ...] = (
    _extra(
        "CNPExtraNPIsolationIsFinal",
        "B.3/A.2.3: NP isolation is final; Baseline never rescues what NP denies nor denies what NP allows",
        [np_ingress_from("allow-from-hufflepuff", "gryffindor", ["hufflepuff"]),
         cnp("baseline-accept-slytherin", "Baseline", 10, "gryffindor",
             ingress=[rule("accept-from-slytherin", "Accept", [_ns("slytherin")])]),
         cnp("baseline-deny-hufflepuff", "Baseline", 20, "gryffindor",
             ingress=[rule("deny-from-hufflepuff", "Deny", [_ns("hufflepuff")])])],
        Subtest("an NP-isolated pod's traffic NP denies is not accepted by Baseline", (
            Poke(S0, "TCP", G0, 80, False), Poke(S1, "UDP", G1, 53, False),
            Poke(R0, "TCP", G0, 8080, False))),
        Subtest("what NP allows is not denied by Baseline", (
            Poke(H0, "TCP", G0, 80, True), Poke(H1, "UDP", G1, 5353, True))),
        Subtest("without the NP, Baseline decides both", (
            Delete("NetworkPolicy", NS_PREFIX + "gryffindor", "allow-from-hufflepuff"),
            Poke(S0, "TCP", G0, 80, True), Poke(H0, "TCP", G0, 80, False), Poke(R0, "TCP", G0, 80, True))),
    ),
    _extra(
        "CNPExtraBaselinePass",
        "B.3/A.2.2: Pass in the Baseline tier skips the rest of the tier: default allow",
        [cnp("baseline-pass-slytherin", "Baseline", 10, "gryffindor",
             ingress=[rule("pass-from-slytherin", "Pass", [_ns("slytherin")])]),
         cnp("baseline-deny-all", "Baseline", 20, "gryffindor",
             ingress=[rule("deny-everyone", "Deny", [{"namespaces": {}}])])],
        Subtest("Pass in Baseline means the default (allow), not the next Baseline policy", (
            Poke(S0, "TCP", G0, 80, True), Poke(S1, "UDP", G1, 53, True),
            Poke(H0, "TCP", G0, 80, False), Poke(R1, "UDP", G1, 53, False))),
        families=(4,),  # orders policies only: the control plane, whatever the family
    ),
    _extra(
        "CNPExtraSeveralBaselines",
        "B.3: several Baseline policies, in priority order (not name order), first match",
        [cnp("a-deny-slytherin", "Baseline", 20, "gryffindor",
             ingress=[rule("deny-from-slytherin", "Deny", [_ns("slytherin")])]),
         cnp("b-accept-slytherin-80", "Baseline", 10, "gryffindor",
             ingress=[rule("accept-from-slytherin-80", "Accept", [_ns("slytherin")], protocols=[_tcp(80)])])],
        Subtest("priority 10 accepts TCP 80 before priority 20 denies", (
            Poke(S0, "TCP", G0, 80, True), Poke(S1, "TCP", G1, 8080, False), Poke(S0, "UDP", G0, 53, False))),
        Subtest("the deny moved to priority 5 now comes first", (
            Patch("a-deny-slytherin", (SetPriority(5),)),
            Poke(S0, "TCP", G0, 80, False), Poke(S1, "TCP", G1, 8080, False), Poke(H0, "TCP", G0, 80, True))),
        families=(4,),  # orders policies only: the control plane, whatever the family
    ),
    _extra(
        "CNPExtraEgressAcceptIngressDeny",
        "B.3/A.2.1: an egress Accept at the sender never skips the receiver's ingress policy",
        [cnp("accept-egress-to-slytherin", "Admin", 1, "gryffindor",
             egress=[rule("accept-to-slytherin", "Accept", [_ns("slytherin")], "egress")]),
         cnp("deny-ingress-from-gryffindor", "Admin", 2, "slytherin",
             ingress=[rule("deny-from-gryffindor", "Deny", [_ns("gryffindor")])]),
         np_ingress_from("deny-all-ingress", "hufflepuff", []),
         cnp("accept-egress-to-hufflepuff", "Admin", 3, "gryffindor",
             egress=[rule("accept-to-hufflepuff", "Accept", [_ns("hufflepuff")], "egress")])],
        Subtest("Admin egress Accept, Admin ingress Deny at the receiver: denied", (
            Poke(G0, "TCP", S0, 80, False), Poke(G1, "UDP", S1, 53, False), Poke(R0, "TCP", S0, 80, True))),
        Subtest("Admin egress Accept, NP isolating the receiver: denied", (
            Poke(G0, "TCP", H0, 80, False), Poke(G1, "UDP", H1, 53, False))),
    ),
    _extra(
        "CNPExtraICMP",
        "A.2.7/A.2.9: a rule without protocols matches ICMP echo; networks match ICMP; a port rule does not",
        [cnp("deny-slytherin-everything", "Admin", 1, "gryffindor",
             ingress=[rule("deny-from-slytherin", "Deny", [_ns("slytherin")])]),
         cnp("deny-tcp-from-hufflepuff", "Admin", 2, "gryffindor",
             ingress=[rule("deny-tcp-80-from-hufflepuff", "Deny", [_ns("hufflepuff")], protocols=[_tcp(80)])]),
         cnp("deny-egress-to-one-ip", "Admin", 3, "ravenclaw",
             egress=[rule("deny-to-draco-0", "Deny", [{"networks": [{"$podIPHost": S0}]}], "egress")])],
        Subtest("ICMP echo", (
            Poke(S0, "ICMP", G0, 0, False), Poke(S1, "ICMP", G1, 0, False),
            Poke(H0, "ICMP", G0, 0, True), Poke(H0, "TCP", G0, 80, False),
            Poke(R0, "ICMP", S0, 0, False), Poke(R1, "ICMP", S0, 0, False), Poke(R0, "ICMP", S1, 0, True))),
    ),
    _extra(
        "CNPExtraAdminDenyCutsEstablished",
        "A.2.13/C.3.7: an Admin Deny added over an established TCP connection cuts it (--keep-established too)",
        [],
        Subtest("the connection carries data, then an Admin Deny cuts it", (
            EstablishedConnection("hp0-dm0", G0, S0, 80),
            EstablishedConnection("hp1-cd0", G1, H0, 80),
            CheckEstablished("hp0-dm0", True),
            Apply(cnp("deny-ingress-from-gryffindor", "Admin", 1, "slytherin",
                      ingress=[rule("deny-from-gryffindor", "Deny", [_ns("gryffindor")])])),
            CheckEstablished("hp0-dm0", False),
            CheckEstablished("hp1-cd0", True),
            Poke(G0, "TCP", S0, 80, False))),
    ),
    _extra(
        "CNPExtraFailClosed",
        "A.2.12/C.5: a peer with no known field: Accept matches nothing, Deny denies all",
        [cnp("accept-unknown-peer", "Admin", 1, "gryffindor",
             ingress=[rule("accept-from-the-future", "Accept", [{"futurePeer": {"matchLabels": {"x": "y"}}}])]),
         cnp("baseline-deny-slytherin", "Baseline", 1, "gryffindor",
             ingress=[rule("deny-from-slytherin", "Deny", [_ns("slytherin")])]),
         cnp("deny-unknown-peer", "Admin", 2, "ravenclaw",
             ingress=[rule("deny-from-the-future", "Deny", [{"futurePeer": {"matchLabels": {"x": "y"}}}])])],
        Subtest("an Accept with an unknown peer matches nothing", (
            Poke(S0, "TCP", G0, 80, False), Poke(H0, "TCP", G0, 80, True))),
        Subtest("a Deny with an unknown peer denies everything", (
            Poke(G0, "TCP", R0, 80, False), Poke(H1, "UDP", R1, 53, False), Poke(S0, "TCP", R1, 8080, False))),
    ),
    _extra(
        "CNPExtraInvalidEditKeepsPrevious",
        "C.5: an edit that does not validate keeps the previous valid version in force",
        [cnp("deny-from-slytherin", "Admin", 1, "gryffindor",
             ingress=[rule("deny-from-slytherin", "Deny", [_ns("slytherin")])])],
        Subtest("valid", (Poke(S0, "TCP", G0, 80, False), Poke(H0, "TCP", G0, 80, True))),
        Subtest("priority out of range: the previous version stays", (
            Patch("deny-from-slytherin", (SetPriority(5000),)),
            Poke(S0, "TCP", G0, 80, False), Poke(H0, "TCP", G0, 80, True))),
        Subtest("unknown tier: the previous version stays", (
            Patch("deny-from-slytherin", (SetPriority(1), ReplaceSpec({"tier": "Emergency"}))),
            Poke(S0, "TCP", G0, 80, False), Poke(H0, "TCP", G0, 80, True))),
        Subtest("a valid edit applies", (
            Patch("deny-from-slytherin", (ReplaceSpec({"tier": "Admin", "subject": _ns("hufflepuff")}),)),
            Poke(S0, "TCP", G0, 80, True), Poke(S0, "TCP", H0, 80, False))),
        families=(4,),  # orders policies only: the control plane, whatever the family
    ),
    _extra(
        "CNPExtraHairpinViaService",
        "A.2.4/C.2: a pod reaching itself through its Service (kube-proxy DNATs it back and masquerades it: "
        "a hairpin) is judged by cluster policies, the pod being its own peer; to its own pod IP it never "
        "leaves the pod",
        [service("harry-potter-0", "gryffindor", {"statefulset.kubernetes.io/pod-name": "harry-potter-0"},
                 ("10.96.0.10", "fd00:96::10"), (("TCP", 80), ("UDP", 53)))],
        Subtest("without a cluster policy the hairpin passes", (
            Poke(G0, "TCP", G0, 80, True, via="service"), Poke(G0, "UDP", G0, 53, True, via="service"),
            Poke(H0, "TCP", G0, 80, True, via="service"))),
        Subtest("an Admin Deny of its own namespace's pods on TCP 80 drops the hairpin, not the pod's own IP", (
            Apply(cnp("deny-gryffindor-tcp-80", "Admin", 1, "gryffindor",
                      ingress=[rule("deny-from-gryffindor", "Deny", [_ns("gryffindor")], protocols=[_tcp(80)])])),
            Poke(G0, "TCP", G0, 80, False, via="service"), Poke(G0, "TCP", G0, 80, True),
            Poke(G0, "UDP", G0, 53, True, via="service"), Poke(G1, "TCP", G0, 80, False),
            Poke(H0, "TCP", G0, 80, True, via="service"))),
        Subtest("the same Deny as egress: the hairpin's egress is judged too", (
            Patch("deny-gryffindor-tcp-80", (ReplaceSpec({"ingress": [], "egress": [
                rule("deny-to-gryffindor", "Deny", [_ns("gryffindor")], "egress", [_tcp(80)])]}),)),
            Poke(G0, "TCP", G0, 80, False, via="service"), Poke(G0, "TCP", G0, 80, True),
            Poke(G0, "TCP", G1, 80, False), Poke(H0, "TCP", G0, 80, True, via="service"))),
        Subtest("without the Deny the hairpin passes again", (
            Delete("ClusterNetworkPolicy", None, "deny-gryffindor-tcp-80"),
            Poke(G0, "TCP", G0, 80, True, via="service"))),
    ),
)

# -- equal priorities on two nodes (test_cnp_multinode.py) -----------------------

#: The two-node lab's pods (MultiNodeLab, namespace "default"): a, b on n1;
#: c, d on n2. Probed pairs (client, server), TCP 80: each server's node
#: judges its ingress, so both nodes decide, for a pair across nodes and a
#: pair on one node each.
EQUAL_PRIORITY_NODES = {"n1": ("a", "b"), "n2": ("c", "d")}
EQUAL_PRIORITY_PAIRS = (("b", "a"), ("c", "a"), ("a", "c"), ("d", "c"))
EQUAL_PRIORITY = 7


def equal_priority_policy(name: str, action: str) -> dict[str, Any]:
    """An Admin policy at EQUAL_PRIORITY over every pod of "default": its
    ingress from every namespace gets `action`. Two of them with opposite
    actions conflict on every pair; the one first by name decides."""
    default = {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}
    return {"apiVersion": CNP_API_VERSION, "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": EQUAL_PRIORITY, "subject": default,
                     "ingress": [rule(f"{action.lower()}-everyone", action, [{"namespaces": {}}])]}}


#: (policy names of the Accept and the Deny, the winner: the first by name).
#: Each step renames one of the two, so the order flips every time.
EQUAL_PRIORITY_STEPS = (("a-accept", "b-deny", "Accept"),
                        ("c-accept", "b-deny", "Deny"),
                        ("c-accept", "d-deny", "Accept"))


#: Upstream tests also run in the IPv6 lab (upstream's CI has an IPv6 lane):
#: those whose peers or targets are addresses of the family (networks with
#: /128 prefixes in both tiers, the node's IPv6 InternalIP, a named port
#: on an IPv6 pod) and Gress (every protocol, both directions, patches).
#: What is decided on names and priorities alone (the Baseline mirror of
#: Gress and NodePeers, PriorityField, Integration) runs in IPv4 only.
IPV6_UPSTREAM = ("CNPAdminTierGress", "CNPAdminTierEgressInlineCIDRPeers",
                 "CNPBaselineTierEgressInlineCIDRPeers", "CNPAdminTierEgressNodePeers",
                 "CNPAdminTierIngressNamedPort")
ALL_CASES = UPSTREAM_TESTS + EXTRA_CASES


def cases_for(family: int) -> tuple[UpstreamTest, ...]:
    if family == 4:
        return ALL_CASES
    return tuple(t for t in UPSTREAM_TESTS if t.short_name in IPV6_UPSTREAM) + \
        tuple(t for t in EXTRA_CASES if 6 in t.families)
