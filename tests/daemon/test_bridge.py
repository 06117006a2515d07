"""Flannel-style pods on a bridge: each pod's host-side veth is a port of
cni0, which carries the pods' gateway; the route to a pod points at cni0,
not at its veth. The daemon finds each pod's port through the neighbour
table (asking the kernel to resolve an unknown neighbour, NTF_USE) and the
bridge's FDB, attaches to the veth (never to cni0), and enforces policy on
pod-to-pod traffic the bridge switches from one veth to the other, with
bridge netfilter off.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest

from enforcer.daemon.node import InterfaceResolver
from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS
from enforcer.datapath.reasons import Reason
from enforcer.lab.netns import entered, ip_json, run
from enforcer.lab.topology import BRIDGE, BRIDGE_IFNAME, Lab
from enforcer.model.objects import Pod as ModelPod
from tests.lab.flows import flows

from .conftest import make_daemon_lab, prefix
from .harness import DENIED, NAMESPACE, OK, DaemonLab, allow_from, allow_to, policy

pytestmark = pytest.mark.lab

FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]


def neighbours(lab: Lab) -> dict[str, tuple[str, list[str]]]:
    """address -> (lladdr, states) of cni0's neighbour entries."""
    out = {}
    for n in ip_json("neigh", "show", "dev", BRIDGE_IFNAME, netns=lab.node_netns):
        out[n["dst"]] = (n.get("lladdr", ""), n.get("state", []))
    return out


def pod_mac(lab: Lab, name: str) -> str:
    return ip_json("link", "show", "eth0", netns=lab.pod(name).netns)[0]["address"]


def learnt_port(lab: Lab, mac: str) -> str | None:
    """The bridge port that has learnt mac (non-permanent FDB entry)."""
    for e in json.loads(run(["bridge", "-n", lab.node_netns, "-j", "fdb", "show", "br", BRIDGE_IFNAME]) or "[]"):
        if e.get("mac") == mac and e.get("state", "") != "permanent" and e.get("master") == BRIDGE_IFNAME:
            return e["ifname"]
    return None


def forget_mac(lab: Lab, name: str) -> None:
    """What the bridge does to a pod quiet for its ageing time (300 s).
    Learning goes off on the pod's port first: a pod is never quite quiet
    (IPv6 sends ND and MLD on its own), and a frame in between would teach
    the bridge the MAC again before the check."""
    pod = lab.pod(name)
    run(["bridge", "-n", lab.node_netns, "link", "set", "dev", pod.host_ifname, "learning", "off"])
    run(["bridge", "-n", lab.node_netns, "fdb", "del", pod_mac(lab, name), "dev", pod.host_ifname, "master"])
    assert learnt_port(lab, pod_mac(lab, name)) is None


# -- the resolver alone, on a bridge lab without the daemon --------------------

@pytest.fixture
def bridge_lab(request: pytest.FixtureRequest) -> Lab:
    lab = Lab(prefix("b") + "n", ["a", "b"], mode=BRIDGE)
    request.addfinalizer(lab.down)
    return lab.up()


@pytest.mark.parametrize("family", FAMILIES)
def test_resolver_finds_bridge_ports_through_neighbour_and_fdb(bridge_lab: Lab, family: int) -> None:
    """Pods listed with one family's address only, neighbours unknown: the
    first pass asks the kernel to resolve them (NTF_USE), a later pass finds
    each pod's MAC in the neighbour table and its port in the FDB."""
    lab = bridge_lab
    pods = [ModelPod(NAMESPACE, p.name, f"uid-{p.name}", {}, "n", False,
                     (ipaddress.ip_address(p.ip(family)),), (), "Running") for p in lab.pods.values()]
    want = {f"{NAMESPACE}/{p.name}": p.host_ifindex for p in lab.pods.values()}
    assert not any(p.ip(family) in neighbours(lab) for p in lab.pods.values()), "neighbours already known"

    resolver = InterfaceResolver()
    found: dict[str, int] = {}
    deadline = time.monotonic() + 3.0
    with entered(lab.node_netns):
        while found != want and time.monotonic() < deadline:
            found = resolver.resolve(pods)
            time.sleep(0.05)
    assert found == want, f"resolved {found}, ports {want}"
    known = neighbours(lab)
    for p in lab.pods.values():
        lladdr, states = known[p.ip(family)]
        assert lladdr == pod_mac(lab, p.name) and set(states) & {"REACHABLE", "STALE", "DELAY", "PROBE"}

    # The bridge forgets a quiet pod's MAC while the neighbour entry stays
    # valid: the pod is still behind the port it was found behind.
    forget_mac(lab, "a")
    with entered(lab.node_netns):
        assert resolver.resolve(pods) == want

    # A pod whose veth is gone has no port any more, whatever was known.
    gone = lab.remove_pod("a")
    with entered(lab.node_netns):
        assert resolver.resolve(pods) == {k: v for k, v in want.items() if v != gone.host_ifindex}


# -- the daemon on a bridge lab ------------------------------------------------

@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> DaemonLab:
    return make_daemon_lab(request, "b", ["a", "b", "c"], mode=BRIDGE, daemon_args=["--log-flows"])


POLICIES = [
    policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80), ("udp", 80))]),
    policy("c-egress", "c", egress=[allow_to("a", ("tcp", 80))]),
]

BRIDGED = flows(
    ("a", "b", 80, "tcp", OK),
    ("a", "b", 80, "udp", OK),
    ("a", "b", 81, "tcp", DENIED),      # other port
    ("c", "b", 80, "tcp", DENIED),      # other peer
    ("c", "a", 80, "tcp", OK),          # c's egress allows it
    ("c", "a", 80, "udp", DENIED),      # ... not this
    ("c", "a", 81, "tcp", DENIED),
    ("b", "a", 81, "udp", OK),          # a is not isolated
    ("b", "c", 80, "tcp", OK),          # c's ingress is not isolated; its answers are replies
    ("node", "b", 81, "tcp", OK),       # the node always reaches its pods
)


def test_daemon_attaches_to_each_pods_veth_not_the_bridge(env: DaemonLab) -> None:
    lab = env.lab
    links = {link["ifname"]: link for link in ip_json("link", "show", netns=lab.node_netns)}
    veths = {p.host_ifindex for p in lab.pods.values()}
    for p in lab.pods.values():
        assert links[p.host_ifname].get("master") == BRIDGE_IFNAME
        # The route to the pod is the bridge's, not the veth's.
        route = ip_json("route", "get", p.ip(4), netns=lab.node_netns)[0]
        assert route["dev"] == BRIDGE_IFNAME
    assert set(env.attachments()) == veths
    assert all(hooks == {"ingress", "egress"} for hooks in env.attachments().values())
    assert links[BRIDGE_IFNAME]["ifindex"] not in env.attachments()
    # The bridge is a node interface: to_network on its egress, for a pod's
    # packet to a Service that DNAT sends to a pod behind the bridge.
    assert env.node_attachments().get(links[BRIDGE_IFNAME]["ifindex"]) == {"egress"}
    assert not set(env.node_attachments()) & veths
    eps = env.endpoints()
    for p in lab.pods.values():
        assert eps[p.ipv4].ifindex == eps[p.ipv6].ifindex == p.host_ifindex
    # Resolution went through the neighbour table: the daemon made entries
    # for addresses nobody had talked to (the lab itself sends nothing).
    known = neighbours(lab)
    for p in lab.pods.values():
        assert p.ip(4) in known and known[p.ip(4)][0] == pod_mac(lab, p.name)
        assert learnt_port(lab, pod_mac(lab, p.name)) == p.host_ifname


@pytest.mark.parametrize("family", FAMILIES)
def test_policy_on_bridged_traffic(env: DaemonLab, family: int) -> None:
    lab = env.lab
    for t in ("iptables", "ip6tables"):
        path = Path(f"/proc/sys/net/bridge/bridge-nf-call-{t}")
        if path.exists():  # per namespace: read it in the node's
            value = run(["ip", "netns", "exec", lab.node_netns, "sysctl", "-n", f"net.bridge.bridge-nf-call-{t}"])
            assert value.strip() == "0"
    # Pod to pod is switched: same subnet, no gateway.
    route = ip_json("route", "get", lab.pod("b").ip(family), netns=lab.pod("a").netns)[0]
    assert "gateway" not in route and route["dev"] == "eth0"

    env.write_policies(POLICIES)
    env.sync()
    # The drops happen at the veths: b's ingress (to_pod on vethb), c's
    # egress (from_pod on vethc; c -> b never reaches b).
    drops = [(env.endpoint_id("b"), DIR_INGRESS, 1), (env.endpoint_id("c"), DIR_EGRESS, 3)]
    before = [env.maps.counters(ep).get((d, Reason.DROP_POLICY), (0, 0))[0] for ep, d, _ in drops]
    env.check_flows(BRIDGED, family)
    after = [env.maps.counters(ep).get((d, Reason.DROP_POLICY), (0, 0))[0] for ep, d, _ in drops]
    assert all(a - b >= n for a, b, (_, _, n) in zip(after, before, drops, strict=False)), (before, after)
    # --log-flows: the verdicts are in the log too (the ring buffer is read every 200 ms).
    deadline = time.monotonic() + 5
    while not [ln for ln in env.daemon.log_text().splitlines() if "enforcer.flows" in ln and "DROP_POLICY" in ln]:
        assert time.monotonic() < deadline, "no flow in the log with --log-flows"
        time.sleep(0.05)


def test_quiet_pod_keeps_its_port_when_the_bridge_forgets_its_mac(env: DaemonLab) -> None:
    """The FDB entry of a pod that sent nothing for the ageing time goes;
    its neighbour entry stays valid. A pass then must not take the pod for
    gone (un-enforcing it and detaching its programs)."""
    lab = env.lab
    env.write_policies(POLICIES)
    env.sync()
    before = env.attachments()
    forget_mac(lab, "b")
    env.write_policy(policy("unrelated", "nobody", ingress=[]))  # any change: a pass
    status = env.sync(allow_unplaced=True)
    assert status["unplaced"] == [], "b was taken for gone"
    eps = env.endpoints()
    assert eps[lab.pod("b").ipv4].ifindex == lab.pod("b").host_ifindex
    assert env.attachments() == before
    env.check_flows(flows(("c", "b", 80, "tcp", DENIED), ("a", "b", 80, "tcp", OK)), 4)
    env.remove_policy("unrelated")
    env.sync()
