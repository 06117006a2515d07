"""Identity and rule ids are the same in every process (a restarted daemon,
another node): they must not depend on Python's per-process hash seed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = """
import ipaddress
from enforcer.compiler.desired import CidrIdentity, PodIdentity, RuleRef
from enforcer.compiler.ids import StableIds
ids = StableIds(256, 2**31 - 1)
labels = frozenset({("app", "web"), ("tier", "front"), ("team", "a"), ("version", "v2"), ("pod", "x")})
ports = frozenset({("http", "TCP", 80), ("dns", "UDP", 53), ("metrics", "TCP", 9090)})
print(ids.get(PodIdentity("x", labels, 4, ipaddress.ip_network("10.0.0.0/8"), ports)),
      ids.get(CidrIdentity(ipaddress.ip_network("fd00::/64"))),
      StableIds(1, 2**32 - 1).get(RuleRef("x/p", "Ingress", 3)))
"""


def ids_with_seed(seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("seed", ["1", "2", "12345"])
def test_ids_do_not_depend_on_the_hash_seed(seed):
    assert ids_with_seed(seed) == ids_with_seed("0")
