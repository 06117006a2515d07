"""The compiler writes the keys the datapath tests and benchmarks build:
both come from enforcer/datapath/policykeys.py."""

from __future__ import annotations

import pytest

from enforcer.datapath.layout import DIR_INGRESS, IDENTITY_ANY
from enforcer.datapath.policykeys import policy_map_keys

from .cluster import base_objects, compile_objects, ip_of, policy


@pytest.mark.parametrize("ports, expanded", [
    ([], [(None, None, None)]),
    ([{"protocol": "UDP"}], [(17, None, None)]),
    ([{"port": 80}], [(6, 80, None)]),
    ([{"port": 1000, "endPort": 2000}, {"protocol": "SCTP", "port": 9}], [(6, 1000, 2000), (132, 9, None)]),
    ([{"port": 1, "endPort": 65535}], [(6, 1, 65535)]),
])
def test_compiled_keys_are_the_expanders(ports, expanded):
    rule: dict = {"ports": ports} if ports else {}
    state = compile_objects(base_objects() + [policy("x", "p", {"podSelector": {"matchLabels": {"pod": "a"}},
                                                                  "policyTypes": ["Ingress"], "ingress": [rule]})])
    ep = state.endpoints[ip_of("x/a")].endpoint_id
    got = {k for k in state.policy if k.endpoint_id == ep}
    want = {k for proto, port, end in expanded
            for k in policy_map_keys(IDENTITY_ANY, ep, DIR_INGRESS, proto, port, end)}
    assert got == want
