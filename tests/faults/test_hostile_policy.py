"""One namespace's huge NetworkPolicy on the real daemon, on the wire.

A namespace owner writes a policy naming tens of thousands of ipBlock
prefixes (N excepts in one ipBlock, or N ipBlocks); at the same moment
another namespace's policy revokes an allowed pair. The revocation is in the
kernel in the first pass that sees it, while the huge policy is still being
staged (admission.py), with its previous version (here: none) in force; the
huge policy then comes into force whole. Past --max-prefixes-per-policy the
policy is enforced fail-closed and named. The log stays a few lines."""

from __future__ import annotations

import ipaddress
import json

import pytest

from enforcer.api.explain import maps_hook
from enforcer.datapath.layout import DIR_INGRESS
from tests.daemon.conftest import make_daemon_lab
from tests.daemon.harness import DENIED, OK, DaemonLab, Flow, allow_from, policy

pytestmark = pytest.mark.lab

HOSTILE_NS = "hostile"
PER_PASS = 400


ELEVEN = ipaddress.ip_network("11.0.0.0/8")


def in_eleven(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return net.version == 4 and net.subnet_of(ELEVEN)


def huge_policy(shape: str, n: int) -> dict:
    start = int(ipaddress.IPv4Address("11.0.0.0"))
    nets = [str(ipaddress.IPv4Network((start + i * 4, 30))) for i in range(n)]
    peers = ([{"ipBlock": {"cidr": "11.0.0.0/8", "except": nets}}] if shape == "excepts"
             else [{"ipBlock": {"cidr": c}} for c in nets])
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "huge", "namespace": HOSTILE_NS},
            "spec": {"podSelector": {"matchLabels": {"pod": "d"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": peers}]}}


def b_ingress(*from_pods: str) -> dict:
    return policy("b-ingress", "b", ingress=[allow_from(p, ("tcp", 80)) for p in from_pods])


def lab(request: pytest.FixtureRequest, *daemon_args: str) -> DaemonLab:
    env = make_daemon_lab(request, "p", ["a", "b", "c", "d"], daemon_args=daemon_args)
    env.pod_namespaces["d"] = HOSTILE_NS  # d is the hostile namespace's pod
    env.write_cluster()
    env.write_policy(b_ingress("a", "c"))
    env.sync()
    env.check_flows([Flow("c", "b", 80, "tcp", OK), Flow("a", "b", 80, "tcp", OK),
                     Flow("d", "a", 80, "tcp", OK)], 4, attempts=2)
    return env


def write_huge(env: DaemonLab, doc: dict) -> None:
    env._write("policies/huge.json", json.dumps(doc))  # as kubectl get -o json prints it


@pytest.mark.parametrize("shape, n", [("excepts", 30000), ("blocks", 20000)])
def test_a_revocation_elsewhere_is_not_delayed_by_a_huge_policy(request, shape, n):
    env = lab(request, "--prefixes-per-pass", str(PER_PASS))
    # At once: the huge policy in one namespace, a revocation in another.
    write_huge(env, huge_policy(shape, n))
    env.write_policy(b_ingress("a"))
    revision = env.revision()
    status = env.wait_status(lambda st: st.get("source_revision") == revision, timeout=60)
    b, c = env.addresses["b"][0], env.addresses["c"][0]
    revoked_in_kernel = not maps_hook(env.maps, b, c, DIR_INGRESS, 6, 80)[0]
    still_staging = env.daemon.status().get("pending")  # type: ignore[union-attr]
    assert status.get("pending") == [f"{HOSTILE_NS}/huge"], status
    assert revoked_in_kernel, "the revocation waited"
    assert still_staging == [f"{HOSTILE_NS}/huge"], \
        "the huge policy was in force before the revocation was checked: nothing shown (raise n)"
    # Meanwhile the huge policy's previous version (none) is in force: d
    # still reaches a.
    env.check_flows([Flow("c", "b", 80, "tcp", DENIED), Flow("a", "b", 80, "tcp", OK)], 4)
    done = env.wait_status(lambda st: st.get("source_revision") == revision and not st.get("pending"), timeout=120)
    assert not done["errors"], done["errors"]
    # Whole, as written: d may only reach 11.0.0.0/8 (minus its excepts).
    env.check_flows([Flow("d", "a", 80, "tcp", DENIED), Flow("c", "b", 80, "tcp", DENIED),
                     Flow("a", "b", 80, "tcp", OK)], 4)
    ipcache = env.ipcache()
    assert sum(1 for net in ipcache if in_eleven(net)) >= n
    # Bounded log: staged once, in force once; not a line per prefix or pass.
    lines = [ln for ln in env.daemon.log_tail(100000).splitlines() if f"{HOSTILE_NS}/huge" in ln]  # type: ignore[union-attr]
    assert 1 <= len(lines) <= 3, lines


def test_a_policy_past_the_prefix_limit_fails_closed_and_is_named(request):
    env = lab(request, "--max-prefixes-per-policy", "1000")
    write_huge(env, huge_policy("excepts", 5000))
    env.write_policy(b_ingress("a"))
    status = env.sync()
    errors = [e for e in status["errors"] if f"NetworkPolicy {HOSTILE_NS}/huge" in e]
    assert len(errors) == 1 and "more than the limit of 1000" in errors[0], status["errors"]
    assert not status.get("pending")
    # Fail-closed: d is isolated for egress and the policy allows nothing;
    # nothing else is affected.
    env.check_flows([Flow("d", "a", 80, "tcp", DENIED), Flow("c", "b", 80, "tcp", DENIED),
                     Flow("a", "b", 80, "tcp", OK)], 4)
    assert not any(in_eleven(net) for net in env.ipcache())
