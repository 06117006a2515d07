"""Revocation judges a tracked connection from a node address as the
datapath does (enforce.h): kept when the node itself opened it (ALLOW_HOST,
kubelet probes), judged by the ipBlock prefixes holding the address when it
only carries the address because netfilter masqueraded it (NodePort with
externalTrafficPolicy Cluster)."""

from __future__ import annotations

import ipaddress

import pytest

from enforcer.compiler.compile import Compiler
from enforcer.compiler.evaluate import connection_still_allowed
from enforcer.datapath.reasons import Reason
from enforcer.datapath.sync import TrackedConnection

from .cluster import base_objects, compile_objects, ip_of, policy

NODE_IP = ipaddress.ip_address("10.9.0.1")  # compile_objects' node address


def ingress_from(cidr: str) -> dict:
    return policy("x", "lb", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                              "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}], "ports": [{"port": 80}]}]})


@pytest.mark.parametrize("cidr, reason, kept", [
    # The node's own connection (a probe) passes whatever the policy.
    ("10.9.0.0/24", Reason.ALLOW_HOST, True),
    ("192.168.0.0/16", Reason.ALLOW_HOST, True),
    # Masqueraded to the node's address: the ipBlock decides.
    ("10.9.0.0/24", Reason.ALLOW_POLICY, True),
    ("10.9.0.0/16", Reason.ALLOW_POLICY, True),
    ("10.9.1.0/24", Reason.ALLOW_POLICY, False),
    ("192.168.0.0/16", Reason.ALLOW_POLICY, False),
])
def test_a_connection_from_the_node_address_is_judged_as_the_datapath_does(cidr, reason, kept):
    compiler = Compiler()
    # Opened while the policy admitted the node's subnet, then the policy
    # changes to `cidr`.
    compile_objects(base_objects() + [ingress_from("10.9.0.0/24")], compiler=compiler)
    state = compile_objects(base_objects() + [ingress_from(cidr)], compiler=compiler)
    ep = state.endpoints[ip_of("x/a")]
    conn = TrackedConnection(ep.endpoint_id, ip_of("x/a"), NODE_IP, 6, 80, 40000, origin_egress=False,
                             reason=int(reason))
    assert connection_still_allowed(state, state.endpoint_by_id(), conn) is kept


def test_egress_to_the_node_address_is_always_kept():
    state = compile_objects(base_objects() + [policy("x", "deny", {"podSelector": {}, "policyTypes": ["Egress"]})])
    ep = state.endpoints[ip_of("x/a")]
    conn = TrackedConnection(ep.endpoint_id, ip_of("x/a"), NODE_IP, 6, 40000, 10250, origin_egress=True,
                             reason=int(Reason.ALLOW_HOST))
    assert connection_still_allowed(state, state.endpoint_by_id(), conn)
