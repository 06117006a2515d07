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
