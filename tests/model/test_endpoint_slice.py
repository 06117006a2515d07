"""discovery.k8s.io/v1 EndpointSlice parsing: fields, the API's meaning of
absent conditions and ports, and invalid input named by object."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from enforcer.errors import InvalidObjectError
from enforcer.model.objects import EndpointSlice, SliceEndpoint, SlicePort, parse_object


def eps(**body: Any) -> dict[str, Any]:
    labels = body.pop("labels", {"kubernetes.io/service-name": "web"})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "foo", "labels": labels},
            "addressType": "IPv4", **body}


IP = ipaddress.ip_address


@pytest.mark.parametrize("raw,endpoints", [
    # Absent conditions: ready and serving true, terminating false (as kube-proxy reads them).
    (eps(endpoints=[{"addresses": ["10.0.0.1"]}]), (SliceEndpoint((IP("10.0.0.1"),)),)),
    (eps(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": False, "serving": True, "terminating": True},
                     "nodeName": "n1", "targetRef": {"kind": "Pod", "namespace": "foo", "name": "web-0"}}]),
     (SliceEndpoint((IP("10.0.0.1"),), False, True, True, "n1", "foo/web-0"),)),
    # targetRef: namespace defaults to the slice's; only Pods are pods.
    (eps(endpoints=[{"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p"}},
                    {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Node", "name": "n1"}}]),
     (SliceEndpoint((IP("10.0.0.1"),), target_pod="foo/p"), SliceEndpoint((IP("10.0.0.2"),)))),
    # Repeats are kept once; null conditions are absent ones.
    (eps(endpoints=[{"addresses": ["10.0.0.1", "10.0.0.1"], "conditions": {"ready": None}}]),
     (SliceEndpoint((IP("10.0.0.1"),)),)),
    (eps(addressType="IPv6", endpoints=[{"addresses": ["fd00::1"]}]), (SliceEndpoint((IP("fd00::1"),)),)),
    # FQDN slices keep no addresses (they are names, not IPs).
    (eps(addressType="FQDN", endpoints=[{"addresses": ["db.example.com"]}]), (SliceEndpoint(()),)),
    # The API sends null for a slice without endpoints.
    (eps(endpoints=None), ()),
    (eps(), ()),
])
def test_endpoints(raw, endpoints):
    s = parse_object(raw)
    assert isinstance(s, EndpointSlice) and s.endpoints == endpoints
    assert (s.key, s.service_name, s.service_key) == ("foo/web-abc", "web", "foo/web")


@pytest.mark.parametrize("ports,parsed", [
    ([{"name": "http", "port": 8080, "protocol": "TCP"}], (SlicePort("http", 8080, "TCP"),)),
    ([{"port": 53, "protocol": "UDP"}, {"name": "", "port": 9, "protocol": "SCTP"}],
     (SlicePort(None, 53, "UDP"), SlicePort(None, 9, "SCTP"))),
    ([{"name": "all"}], (SlicePort("all", None, "TCP"),)),  # no port: every port; protocol defaults to TCP
    (None, ()),
])
def test_ports(ports, parsed):
    assert parse_object(eps(ports=ports)).ports == parsed


def test_without_service_label_it_belongs_to_no_service():
    s = parse_object(eps(labels={"app": "x"}))
    assert s.service_name is None and s.service_key is None


@pytest.mark.parametrize("raw,reason", [
    (eps(endpoints=[{"addresses": ["10.0.0.300"]}]), "invalid address"),
    (eps(endpoints=[{"addresses": ["fd00::1"]}]), "not an IPv4 address"),
    (eps(addressType="IPv6", endpoints=[{"addresses": ["10.0.0.1"]}]), "not an IPv6 address"),
    (eps(endpoints=[{"addresses": "10.0.0.1"}]), "addresses: must be a list"),
    (eps(endpoints=[{}]), "addresses: must be a list"),
    (eps(endpoints=["10.0.0.1"]), "must be an object"),
    (eps(endpoints={"addresses": []}), "must be lists"),
    (eps(endpoints={}), "must be lists"),
    (eps(ports=""), "must be lists"),
    (eps(endpoints=[{"addresses": [], "conditions": {"ready": "yes"}}]), "conditions.ready"),
    (eps(endpoints=[{"addresses": [], "conditions": []}]), "conditions: must be an object"),
    (eps(endpoints=[{"addresses": [], "targetRef": "pod"}]), "targetRef"),
    (eps(endpoints=[{"addresses": [], "nodeName": 7}]), "nodeName"),
    (eps(ports=[{"port": "http"}]), "ports[0].port"),
    (eps(ports=[{"port": 0}]), "ports[0].port"),
    (eps(ports=[{"port": 65536}]), "ports[0].port"),
    (eps(ports=[{"port": True}]), "ports[0].port"),
    (eps(ports=[{"port": 80, "protocol": "ICMP"}]), "ports[0].protocol"),
    (eps(ports=[{"port": 80, "name": 5}]), "ports[0].name"),
    (eps(addressType=None), "addressType"),
    (eps(addressType="IPv5"), "addressType"),
    (eps(labels={"kubernetes.io/service-name": "not a valid value!"}), "metadata.labels"),
    (dict(eps(), apiVersion="discovery.k8s.io/v1beta1"), "unsupported apiVersion"),
])
def test_invalid_slices_are_named(raw, reason):
    with pytest.raises(InvalidObjectError, match="EndpointSlice foo/web-abc") as e:
        parse_object(raw)
    assert reason in str(e.value) and e.value.kind == "EndpointSlice"


def test_unnamed_slice_is_reported():
    with pytest.raises(InvalidObjectError, match="metadata.name"):
        parse_object({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {}})
