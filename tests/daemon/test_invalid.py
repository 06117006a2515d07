"""Invalid objects next to valid ones, live: the valid policies are
enforced, each invalid one is named in the status file's errors, and
nothing opens because of it: a file that does not parse contributes nothing
(or keeps its last readable content), a rule with an invalid CIDR allows
nothing, and a pod selected by an invalid policy is isolated, not opened.
"""

from __future__ import annotations

import pytest
import yaml

from enforcer.lab.topology import ROUTED
from tests.lab.flows import flows

from .conftest import make_daemon_lab
from .harness import DENIED, OK, DaemonLab, allow_from, policy

pytestmark = pytest.mark.lab

FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]

VALID = policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80))])
# Were its CIDR read as 10.244.0.0/24 it would open b to every pod on 81.
BAD_CIDR_B = policy("bad-cidr-b", "b", ingress=[{"from": [{"ipBlock": {"cidr": "10.244.0.300/24"}}],
                                                 "ports": [{"protocol": "TCP", "port": 81}]}])
# The only policy selecting c: whatever it meant, c is isolated with nothing allowed.
BAD_CIDR_C = policy("bad-cidr-c", "c", ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                                                       "except": ["not-a-cidr"]}}]}])
# Does not parse (unclosed flow mapping). Read, it would open every pod to everyone.
BROKEN = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open-everything, namespace: default
spec:
  podSelector: {}
  ingress: [{}]
"""

ENFORCED = flows(
    ("a", "b", 80, "tcp", OK),          # the valid policy
    ("c", "b", 80, "tcp", DENIED),
    ("a", "b", 81, "tcp", DENIED),      # bad-cidr-b opens nothing
    ("c", "b", 81, "tcp", DENIED),
    ("a", "c", 80, "tcp", DENIED),      # c: selected by an invalid policy only
    ("b", "c", 81, "udp", DENIED),
    ("c", "a", 80, "tcp", OK),          # a: selected by nothing
    ("node", "c", 80, "tcp", OK),
)


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> DaemonLab:
    env = make_daemon_lab(request, "i", ["a", "b", "c"], mode=ROUTED)
    env.write_policies([VALID, BAD_CIDR_B, BAD_CIDR_C])
    env.sync()
    env.write_policy(BROKEN, name="broken")
    # A file that does not parse is reported once it has stayed so for a while.
    env.wait_status(lambda st: any("broken.yaml" in e for e in st["errors"]))
    return env


def test_errors_name_each_invalid_object(env: DaemonLab) -> None:
    assert env.daemon is not None
    errors = env.daemon.status()["errors"]
    by_object = {
        "NetworkPolicy default/bad-cidr-b": "invalid CIDR '10.244.0.300/24'",
        "NetworkPolicy default/bad-cidr-c": "invalid CIDR 'not-a-cidr'",
        "broken.yaml": "not valid YAML",
    }
    for obj, reason in by_object.items():
        mine = [e for e in errors if obj in e]
        assert len(mine) == 1 and reason in mine[0], f"{obj}: {errors}"
    assert not [e for e in errors if "b-ingress" in e], errors
    assert len(errors) == len(by_object), errors


@pytest.mark.parametrize("family", FAMILIES)
def test_valid_policies_enforced_and_nothing_opens(env: DaemonLab, family: int) -> None:
    env.check_flows(ENFORCED, family)


def test_valid_file_turned_broken_keeps_its_last_content(env: DaemonLab) -> None:
    """A policy file rewritten into something that does not parse (here:
    one that would also allow c) keeps its last readable content in force."""
    assert env.daemon is not None
    opened = policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80)), allow_from("c", ("tcp", 80))])
    text = yaml.safe_dump(opened).replace("podSelector:", "podSelector: [", 1)
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    env.write_policy(text, name="b-ingress")
    try:
        st = env.wait_status(lambda st: any("b-ingress.yaml" in e for e in st["errors"]))
        assert [e for e in st["errors"] if "b-ingress.yaml" in e][0].endswith("(its last readable content stays in force)")
        env.check_flows(ENFORCED, 4)
    finally:
        env.write_policy(VALID)
        env.wait_status(lambda st: not any("b-ingress.yaml" in e for e in st["errors"]))
