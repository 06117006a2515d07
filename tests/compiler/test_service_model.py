"""v1 Service parsing (groundwork for Service-aware egress and the NodePort SNAT diagnosis)."""

import pytest

from enforcer.errors import InvalidObjectError
from enforcer.model.objects import Pod, parse_object
from enforcer.model.state import ClusterStore


def svc(**spec):  # type: ignore[no-untyped-def]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "foo"}, "spec": spec}


def test_service_fields_and_defaults():
    s = parse_object(svc(type="NodePort", selector={"app": "web"}, clusterIP="10.96.0.10",
                         ports=[{"port": 80, "targetPort": "http", "nodePort": 30080}]))
    assert (s.key, s.type, s.external, s.external_traffic_policy) == ("foo/web", "NodePort", True, "Cluster")
    assert s.ports[0].target_port == "http" and s.ports[0].protocol == "TCP" and s.ports[0].node_port == 30080
    assert [str(ip) for ip in s.cluster_ips] == ["10.96.0.10"]
    pod = Pod.parse({"kind": "Pod", "metadata": {"name": "p", "namespace": "foo", "labels": {"app": "web"}},
                     "status": {"podIP": "10.0.0.1"}})
    assert s.selects(pod)
    local = parse_object(svc(ports=[{"port": 53, "protocol": "UDP"}], externalTrafficPolicy="Local"))
    assert local.type == "ClusterIP" and not local.external and local.ports[0].target_port == 53


@pytest.mark.parametrize("spec", [dict(ports=[{"port": "x"}]), dict(ports=[{"port": 1, "protocol": "ICMP"}]),
                                  dict(clusterIP="nope"), dict(selector=["a"])])
def test_invalid_services_are_named(spec):
    with pytest.raises(InvalidObjectError, match="Service foo/web"):
        parse_object(svc(**spec))


def test_store_keeps_services():
    store = ClusterStore()
    store.replace_all([svc(selector={"app": "web"}, ports=[{"port": 80}])], [])
    assert set(store.snapshot().services) == {"foo/web"}
    store.delete("Service", "foo", "web")
    assert not store.snapshot().services
