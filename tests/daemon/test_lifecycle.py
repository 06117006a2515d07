"""Pods coming and going under the daemon: a pod added to the cluster gets
the programs on its interface and is enforced; a pod removed from the
manifests loses our tc filters (if its interface is still there) and every
map entry that was its (endpoint, ipcache, conntrack); its endpoint id,
handed to the next new pod, carries nothing of the old one over.

Run for both lab wirings (routed: Calico-style; bridge: flannel-style).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from enforcer.datapath.layout import DIR_EGRESS, DIR_INGRESS
from enforcer.datapath.reasons import Reason
from enforcer.lab.netns import ip_json
from enforcer.lab.probe import connect_tcp, exchange, open_socket
from enforcer.lab.topology import BRIDGE, ROUTED
from enforcer.lab.topology import Pod as LabPod
from tests.lab.flows import flows

from .conftest import make_daemon_lab
from .harness import DENIED, OK, DaemonLab, allow_from, policy

pytestmark = pytest.mark.lab

FAMILIES = (4, 6)


@pytest.fixture(scope="module", params=[ROUTED, BRIDGE])
def env(request: pytest.FixtureRequest) -> DaemonLab:
    return make_daemon_lab(request, "l", ["a", "b"], mode=request.param)


def host_prefixes(env: DaemonLab, name: str) -> set:  # type: ignore[type-arg]
    return {ipaddress.ip_network(ip) for ip in env.addresses[name]}


def test_added_pod_is_attached_and_enforced(env: DaemonLab) -> None:
    env.add_pod("d")
    env.write_policy(policy("d-ingress", "d", ingress=[allow_from("a", ("tcp", 80), ("udp", 80))]))
    env.sync()
    d = env.lab.pod("d")
    assert env.attachments().get(d.host_ifindex) == {"ingress", "egress"}
    eps = env.endpoints()
    assert eps[d.ipv4].ifindex == eps[d.ipv6].ifindex == d.host_ifindex
    others = {eps[env.lab.pod(n).ipv4].id for n in ("a", "b")}
    assert eps[d.ipv4].id == eps[d.ipv6].id and eps[d.ipv4].id not in others
    assert host_prefixes(env, "d") <= set(env.ipcache())
    for family in FAMILIES:
        env.check_flows(flows(
            ("a", "d", 80, "tcp", OK),
            ("a", "d", 80, "udp", OK),
            ("b", "d", 80, "tcp", DENIED),
            ("a", "d", 81, "tcp", DENIED),
            ("d", "a", 81, "udp", OK),
            ("node", "d", 81, "tcp", OK),
        ), family)


def add_pod_with_traffic(env: DaemonLab, name: str) -> tuple[LabPod, int, list[socket.socket]]:
    """A new pod that admits a on port 80, and connections to it from a,
    TCP (kept open) and UDP, both families: its endpoint id has a policy,
    conntrack entries and counters. (pod, endpoint id, open connections)."""
    env.add_pod(name)
    env.write_policy(policy(f"{name}-ingress", name, ingress=[allow_from("a", ("tcp", 80), ("udp", 80))]))
    env.sync()
    pod = env.lab.pod(name)
    ep_id = env.endpoint_id(name)
    assert env.attachments().get(pod.host_ifindex) == {"ingress", "egress"}
    conns = []
    try:
        for family in FAMILIES:
            conn, greeting = connect_tcp(env.lab.pod("a").netns, pod.ip(family), 80, timeout=3.0)
            conns.append(conn)
            assert greeting == name and exchange(conn, "hi") == f"{name} hi"
            with open_socket(env.lab.pod("a").netns, family, "udp") as u:
                u.settimeout(3.0)
                u.sendto(b"x\n", (pod.ip(family), 80))
                assert u.recv(100).strip() == name.encode()
    except BaseException:
        forget_pod(env, name, conns)
        raise
    return pod, ep_id, conns


def forget_pod(env: DaemonLab, name: str, conns: Sequence[socket.socket] = (), policy_name: str | None = None) -> None:
    """Whatever is left of a pod a test added (it may have failed half-way):
    connections, lab pod, manifest entry, policy; then a sync."""
    for c in conns:
        c.close()
    if name in env.lab.pods:
        env.lab.remove_pod(name)
    if name in env.manifest_pods:
        env.drop_from_manifests(name)
    if (env.source / "policies" / f"{policy_name or name + '-ingress'}.yaml").exists():
        env.remove_policy(policy_name or f"{name}-ingress")
    env.sync()


@pytest.mark.parametrize("interface", ["kept", "deleted"])
def test_removed_pod_leaves_nothing_behind(env: DaemonLab, interface: str) -> None:
    """kept: the pod leaves the manifests, its namespace and veth stay (a
    pod being torn down); deleted: the veth is gone first."""
    name = "x" if interface == "kept" else "y"
    pod, ep_id, conns = add_pod_with_traffic(env, name)
    try:
        assert env.conntrack_of(name, ep_id), "the pod's connections are not tracked"
        if interface == "deleted":
            env.lab.remove_pod(name)
        env.drop_from_manifests(name)
        revoked_before = env.daemon.status()["since_start"]["revoked"]  # type: ignore[union-attr]
        status = env.sync()
        assert status["since_start"]["revoked"] - revoked_before >= 4  # the pod's side: TCP and UDP, both families

        assert pod.host_ifindex not in env.attachments(), "our filters are still on the pod's interface"
        if interface == "kept":  # the veth is there, without our filters
            assert pod.host_ifname in {link["ifname"] for link in ip_json("link", "show", netns=env.lab.node_netns)}
        eps = env.endpoints()
        assert pod.ipv4 not in eps and pod.ipv6 not in eps
        assert all(e.id != ep_id for e in eps.values())
        assert not host_prefixes(env, name) & set(env.ipcache())
        left = env.conntrack_of(name, ep_id)
        assert not left, f"conntrack entries of the removed pod: {left}"
        assert not any(k.endpoint_id == ep_id for k, _ in env.maps["policy"].items())
        if interface == "kept":  # nothing enforces it now: b -> x 81 passes
            env.check_flows(flows(("b", name, 81, "tcp", OK)), 4)
    finally:
        forget_pod(env, name, conns)


def test_released_endpoint_id_is_reused_safely(env: DaemonLab) -> None:
    """The next new pod gets the lowest free id, the one just released: it
    must start with its own policy only, no conntrack and zero counters.
    The id's previous pod is made here: the test runs alone as well."""
    _, released, conns = add_pod_with_traffic(env, "w")
    try:
        # What the new pod must not inherit is there to inherit.
        assert any(k.endpoint_id == released for k, _ in env.maps["policy"].items())
        assert env.conntrack_of("w", released), "w's connections are not tracked"
        assert env.maps.counters(released).get((DIR_INGRESS, Reason.ALLOW_POLICY), (0, 0))[0] >= 4
        env.lab.remove_pod("w")
        env.drop_from_manifests("w")
        env.sync()
    finally:
        forget_pod(env, "w", conns)

    env.add_pod("z")
    try:
        env.write_policy(policy("z-isolated", "z", ingress=[]))  # ingress: nothing allowed
        env.sync()
        z_id = env.endpoint_id("z")
        assert z_id == released
        # Only z's own entries use the id: it has none (deny all).
        assert not any(k.endpoint_id == z_id for k, _ in env.maps["policy"].items())
        assert not env.conntrack_of("z", z_id)
        counters = env.maps.counters(z_id)
        assert not counters, f"z inherited counters of the id's previous pod: {counters}"
        for family in FAMILIES:
            env.check_flows(flows(
                ("a", "z", 80, "tcp", DENIED),     # the id's previous pod allowed this
                ("a", "z", 80, "udp", DENIED),
                ("z", "a", 80, "tcp", OK),
            ), family)
        counters = env.maps.counters(z_id)
        assert counters.get((DIR_INGRESS, Reason.DROP_POLICY), (0, 0))[0] >= 2
        assert counters.get((DIR_EGRESS, Reason.ALLOW_NOT_ISOLATED), (0, 0))[0] >= 1
    finally:
        forget_pod(env, "z", policy_name="z-isolated")
