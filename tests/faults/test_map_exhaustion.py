"""The policy map exhausted on the real daemon, on the wire.

With `--map-size policy=48`, a policy that would compile to hundreds of
entries (every pod, both families, forty ports) cannot be held: it is
refused, fail-closed (it isolates what it selects and allows nothing) and
named, rather than half-written in whatever order writes land. The rest
keeps working; a revocation and a new allow elsewhere apply in one pass;
when the flood shrinks to what fits it is taken in. The log stays a few
lines whatever the retries."""

from __future__ import annotations

import pytest

from tests.daemon.conftest import make_daemon_lab
from tests.daemon.harness import DENIED, OK, Flow, allow_from, policy, ports

pytestmark = pytest.mark.lab


def flood(n_ports: int) -> dict:
    return policy("flood", "d", ingress=[{"from": [{"podSelector": {}}],
                                          "ports": ports(*[("tcp", 80 + i) for i in range(n_ports)])}])


def test_a_flood_that_cannot_fit_the_policy_map_fails_closed_and_costs_nothing_else(request):
    env = make_daemon_lab(request, "x", ["a", "b", "c", "d"], daemon_args=["--map-size", "policy=48"])
    env.write_policy(policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80))]))
    env.write_policy(flood(40))
    status = env.sync()
    named = [e for e in status["errors"] if e.startswith("NetworkPolicy default/flood: ") and "policy map" in e]
    assert named, status["errors"]
    assert status["policy_entries"] <= 48
    env.check_flows([Flow("a", "b", 80, "tcp", OK), Flow("c", "b", 80, "tcp", DENIED),
                     Flow("a", "d", 80, "tcp", DENIED),  # fail-closed
                     Flow("b", "c", 80, "tcp", OK), Flow("d", "a", 80, "tcp", OK)], 4)
    # A revocation and a new allow elsewhere, in one change, with the map
    # as full as the flood left it.
    env.write_policy(policy("b-ingress", "b", ingress=[allow_from("c", ("tcp", 80))]))
    env.sync()
    env.check_flows([Flow("a", "b", 80, "tcp", DENIED), Flow("c", "b", 80, "tcp", OK),
                     Flow("a", "d", 80, "tcp", DENIED)], 4)
    # The flood shrinks to what fits: taken in as written.
    env.write_policy(flood(2))
    status = env.sync()
    assert not [e for e in status["errors"] if "flood" in e], status["errors"]
    env.check_flows([Flow("a", "d", 80, "tcp", OK), Flow("a", "d", 81, "tcp", OK),
                     Flow("c", "b", 80, "tcp", OK), Flow("a", "b", 80, "tcp", DENIED)], 4)
    lines = [ln for ln in env.daemon.log_tail(100000).splitlines()  # type: ignore[union-attr]
             if "flood" in ln and "enforcer.flows" not in ln]
    assert len(lines) <= 5, lines


def test_a_pod_without_an_endpoint_id_is_cut_off_not_left_open(request):
    """Endpoint ids exhausted (--map-size endpoint_ids=4: three local pods):
    the fourth pod is named and its interface still gets the programs,
    which find no endpoint and drop (fail-closed), even with no policy at
    all; the others are untouched."""
    env = make_daemon_lab(request, "x", ["a", "b", "c", "d"], daemon_args=["--map-size", "endpoint_ids=4"])
    status = env.daemon.status()  # type: ignore[union-attr]
    blocked = [e for e in status["errors"] if "no endpoint id left" in e]
    assert len(blocked) == 1 and "dropped (fail-closed)" in blocked[0], status["errors"]
    cut = blocked[0].split("Pod default/")[1].split(":")[0]
    others = [p for p in "abcd" if p != cut]
    assert len(env.attachments()) == 4, "every pod interface has the programs"
    env.check_flows([Flow(others[0], cut, 80, "tcp", DENIED), Flow(cut, others[0], 80, "tcp", DENIED),
                     Flow(others[0], others[1], 80, "tcp", OK), Flow(others[2], others[0], 80, "tcp", OK)], 4)
