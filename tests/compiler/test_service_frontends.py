"""Which addresses and ports are Service frontends on a node: where a
pod's egress verdict waits for kube-proxy's DNAT."""

from __future__ import annotations

import ipaddress

import pytest

from enforcer.compiler.services import service_frontends
from enforcer.errors import InvalidObjectError
from enforcer.model.objects import Service

NODE = (ipaddress.ip_address("100.64.0.1"), ipaddress.ip_address("fd00:64::1"))
TCP, UDP, SCTP = 6, 17, 132


def svc(name: str = "s", type_: str = "ClusterIP", cluster_ips=("10.96.0.10",), ports=None, status=None,
        **spec_extra) -> Service:
    spec = {"type": type_, "clusterIPs": list(cluster_ips), "selector": {"app": name},
            "ports": ports or [{"port": 80, "targetPort": "http"}], **spec_extra}
    raw = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": spec}
    if status is not None:
        raw["status"] = status
    return Service.parse(raw)


def fe(ip: str, proto: int, port: int):  # type: ignore[no-untyped-def]
    return (ipaddress.ip_address(ip), proto, port)


@pytest.mark.parametrize("service,want", [
    pytest.param(svc(), {fe("10.96.0.10", TCP, 80)}, id="clusterip"),
    pytest.param(svc(cluster_ips=("10.96.0.10", "fd00:96::10"),
                     ports=[{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"},
                            {"port": 9, "protocol": "SCTP"}]),
                 {fe("10.96.0.10", UDP, 53), fe("10.96.0.10", TCP, 53), fe("10.96.0.10", SCTP, 9),
                  fe("fd00:96::10", UDP, 53), fe("fd00:96::10", TCP, 53), fe("fd00:96::10", SCTP, 9)},
                 id="dual-stack-protocols"),
    pytest.param(svc(type_="NodePort", ports=[{"port": 80, "nodePort": 30080}]),
                 {fe("10.96.0.10", TCP, 80), fe("100.64.0.1", TCP, 30080), fe("fd00:64::1", TCP, 30080)},
                 id="nodeport-on-every-node-address"),
    pytest.param(svc(type_="ClusterIP", ports=[{"port": 80, "nodePort": 30080}]),
                 {fe("10.96.0.10", TCP, 80)}, id="nodeport-field-on-clusterip-ignored"),
    pytest.param(svc(cluster_ips=("None",)), set(), id="headless"),
    pytest.param(svc(type_="ExternalName", cluster_ips=()), set(), id="externalname"),
    pytest.param(svc(externalIPs=["203.0.113.7"]), {fe("10.96.0.10", TCP, 80), fe("203.0.113.7", TCP, 80)},
                 id="external-ips"),
    pytest.param(svc(type_="LoadBalancer", ports=[{"port": 443, "nodePort": 31443}],
                     status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"},
                                                          {"ip": "203.0.113.10", "ipMode": "Proxy"},
                                                          {"hostname": "lb.example"}]}}),
                 {fe("10.96.0.10", TCP, 443), fe("203.0.113.9", TCP, 443),
                  fe("100.64.0.1", TCP, 31443), fe("fd00:64::1", TCP, 31443)},
                 id="load-balancer-ips-but-proxy-mode"),
])
def test_frontends(service, want):
    assert set(service_frontends({service.key: service}, NODE)) == want


def test_frontend_claimed_twice_names_the_first_service():
    a, b = svc("a"), svc("b")
    got = service_frontends({b.key: b, a.key: a}, NODE)
    assert got == {fe("10.96.0.10", TCP, 80): "ns/a"}


@pytest.mark.parametrize("extra,field", [
    ({"externalIPs": ["not-an-ip"]}, "spec.externalIPs"),
    ({"externalIPs": "203.0.113.7"}, "spec.externalIPs"),
])
def test_invalid_addresses_name_the_service(extra, field):
    with pytest.raises(InvalidObjectError, match=field) as e:
        svc("bad", **extra)
    assert "ns" in str(e.value) and "bad" in str(e.value)


def many_ports(n: int) -> list[dict]:
    return [{"port": 1000 + i, "name": f"p{i}"} for i in range(n)]


@pytest.mark.parametrize("capacity, services, kept, left_out", [
    pytest.param(None, {"a": (("10.96.0.1",), 3), "b": (("10.96.0.2",), 1)}, 4, {}, id="unbounded"),
    pytest.param(4, {"a": (("10.96.0.1",), 3), "b": (("10.96.0.2",), 1)}, 4, {}, id="fits"),
    pytest.param(3, {"a": (("10.96.0.1",), 3), "b": (("10.96.0.2",), 1)}, 1, {"ns/a": ("10.96.0.1",)},
                 id="largest-left-out-whole"),
    # b shares a's address; of its ports, 80 and 81 are a's already.
    pytest.param(2, {"a": (("10.96.0.1",), 2), "b": (("10.96.0.1",), 3)}, 0, {"ns/a": ("10.96.0.1",)},
                 id="an-address-left-out-for-every-service"),
])
def test_fit_frontends(capacity, services, kept, left_out):
    from enforcer.compiler.services import fit_frontends

    objs = {f"ns/{name}": svc(name, cluster_ips=ips, ports=[{"port": 80 + i, "name": f"p{i}"} for i in range(n)])
            for name, (ips, n) in services.items()}
    got, out = fit_frontends(service_frontends(objs, NODE), capacity, NODE)
    assert len(got) == kept
    assert {k: tuple(map(str, v)) for k, v in out.items()} == left_out


def test_node_ports_are_kept_whatever_they_cost():
    from enforcer.compiler.services import fit_frontends

    s = svc("np", type_="NodePort", ports=[{"port": 80 + i, "nodePort": 30000 + i, "name": f"p{i}"}
                                           for i in range(3)])
    got, out = fit_frontends(service_frontends({s.key: s}, NODE), 2, NODE)
    assert set(got) == {fe(str(a), TCP, 30000 + i) for a in NODE for i in range(3)}
    assert {k: tuple(map(str, v)) for k, v in out.items()} == {"ns/np": ("10.96.0.10",)}


def test_a_service_left_out_of_the_map_opens_nothing_through_an_ip_block():
    """Its ClusterIP gets IDENTITY_SERVICE_UNWRITTEN: an ipBlock around it
    does not allow it (its packets would be judged before DNAT, whatever
    the backend); a rule allowing every peer does."""
    from enforcer.compiler.admission import CompileLimits
    from enforcer.compiler.compile import Compiler
    from enforcer.datapath.layout import IDENTITY_SERVICE_UNWRITTEN

    from .cluster import allowed, base_objects, compile_objects, policy

    def service(name: str, ip: str, n: int) -> dict:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "y"},
                "spec": {"type": "ClusterIP", "clusterIPs": [ip], "selector": {"pod": "a"}, "ports": many_ports(n)}}

    block = policy("x", "out", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]})
    anyone = policy("x", "out-b", {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                                   "egress": [{}]})
    objs = base_objects() + [service("big", "10.96.0.1", 30), service("small", "10.96.0.2", 2), block, anyone]
    state = compile_objects(objs, compiler=Compiler(limits=CompileLimits(services_capacity=10)))
    assert {str(fe[0]) for fe in state.services} == {"10.96.0.2"}
    assert state.ipcache[ipaddress.ip_network("10.96.0.1/32")] == IDENTITY_SERVICE_UNWRITTEN
    assert [str(e) for e in state.errors if e.kind == "Service"] and all(
        e.name == "big" for e in state.errors if e.kind == "Service")
    assert not allowed(state, "x/a", "10.96.0.1", port=1000), "an ipBlock does not allow a Service left out"
    assert allowed(state, "x/b", "10.96.0.1", port=1000), "a rule allowing every peer does"
    # Room again: the address is a frontend again and its identity goes.
    state = compile_objects(objs[:-4] + [service("big", "10.96.0.1", 3), service("small", "10.96.0.2", 2),
                                         block, anyone], compiler=Compiler(limits=CompileLimits(services_capacity=10)))
    assert ipaddress.ip_network("10.96.0.1/32") not in state.ipcache
    assert not [e for e in state.errors if e.kind == "Service"]
