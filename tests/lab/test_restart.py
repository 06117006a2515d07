"""A loader crash (kill -9) and restart under live traffic.

Enforcement lives in the kernel: tc keeps the programs attached and the
maps pinned when the loader dies, so nothing changes for traffic. A new
loader reuses the pins (conntrack included) and swaps its programs in.

Runs on a lab of its own so killing the loader cannot disturb other tests.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import closing

import pytest

from enforcer.datapath.attach import TcAttacher
from enforcer.datapath.layout import DIR_INGRESS, CtEntry, CtKey, addr_bytes, family_of
from enforcer.datapath.reasons import Reason
from enforcer.datapath.registry import BY_NAME
from enforcer.lab.probe import connect_tcp, exchange
from tests.support.session import LabSession

from .conftest import new_session
from .flows import DENIED, OK, check_flows, flows

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def restart_env() -> Iterator[LabSession]:
    session = new_session(prefix_suffix="r", pin_suffix="-restart")
    with session:
        yield session


def attached_programs(env: LabSession) -> dict[tuple[str, str], int]:
    """(host ifname, hook) -> id of our program there, read with tc."""
    out = {}
    for pod in env.lab.pods.values():
        for hook in ("ingress", "egress"):
            res = subprocess.run(["tc", "-n", env.lab.node_netns, "-j", "filter", "show",
                                  "dev", pod.host_ifname, hook],
                                 capture_output=True, text=True, check=True)
            for f in json.loads(res.stdout or "[]"):
                opts = f.get("options", {})
                if opts.get("bpf_name", "").startswith("enforcer_"):
                    out[(pod.host_ifname, hook)] = opts["prog"]["id"]
    return out


def ct_entry(env: LabSession, pod: str, peer: str, pod_port: int, peer_port: int,
             family: int) -> CtEntry | None:
    peer_ip = env.lab.pod(peer).ipv4 if family == 4 else env.lab.pod(peer).ipv6
    pod_ip = env.lab.pod(pod).ipv4 if family == 4 else env.lab.pod(pod).ipv6
    key = CtKey(pod=addr_bytes(pod_ip), peer=addr_bytes(peer_ip), ifindex=env.lab.pod(pod).host_ifindex,
                family=family_of(peer_ip), proto=socket.IPPROTO_TCP,
                pod_port=socket.htons(pod_port), peer_port=socket.htons(peer_port))
    entry = env.maps["conntrack"].lookup(key)
    assert entry is None or entry.endpoint_id == env.world.endpoint_id(pod)
    return entry


ENFORCED = flows(
    ("a", "b", 80, "tcp", OK),       # a new allowed connection
    ("a", "b", 81, "tcp", DENIED),
    ("c", "b", 80, "tcp", DENIED),
)


@pytest.mark.parametrize("family", [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")])
def test_loader_kill_and_restart_keep_enforcing(restart_env: LabSession, family: int) -> None:
    env = restart_env
    w, lab, loader = env.world, env.lab, env.loader
    assert w is not None and loader is not None
    if not loader.running:  # the other family's run left it stopped on failure
        loader.start()
    w.reset()
    w.isolate("b", ingress=True)
    w.allow("b", "ingress", "a", "tcp", 80)

    conn, greeting = connect_tcp(lab.pod("a").netns, lab.pod("b").ip(family), 80, timeout=2.0)
    with closing(conn):
        assert greeting == "b"
        assert exchange(conn, "before") == "b before"
        client_port = conn.getsockname()[1]
        at_b = ct_entry(env, "b", "a", 80, client_port, family)
        at_a = ct_entry(env, "a", "b", client_port, 80, family)
        assert at_b is not None and at_a is not None, "established connection not tracked"
        assert at_b.origin == DIR_INGRESS and at_b.reason == Reason.ALLOW_POLICY
        programs = attached_programs(env)
        assert len(programs) == 2 * len(lab.pods), programs
        established_before = w.counters("b").get(("ingress", Reason.ALLOW_ESTABLISHED), 0)

        # kill -9: nothing detaches, nothing changes for traffic.
        assert loader.kill() == -9
        hooks = {(a.ifindex, a.hook) for a in TcAttacher(netns=lab.node_netns).attachments()}
        assert hooks == {(p.host_ifindex, h) for p in lab.pods.values() for h in ("ingress", "egress")}
        assert attached_programs(env) == programs
        assert exchange(conn, "after kill") == "b after kill"
        check_flows(env, ENFORCED, family)

        # A new loader reuses every pin and replaces the programs in place.
        log_offset = len(loader.log_text())
        loader.start()
        new_log = loader.log_text()[log_offset:]
        loaded_lines = [line for line in new_log.splitlines() if "datapath loaded" in line]
        assert loaded_lines and "reused" in loaded_lines[0], new_log
        for name in BY_NAME:
            assert name in loaded_lines[0], f"{name} not reused: {loaded_lines[0]}"
        new_programs = attached_programs(env)
        assert new_programs.keys() == programs.keys()
        assert all(new_programs[k] != programs[k] for k in programs), "programs were not replaced"

        assert exchange(conn, "after restart") == "b after restart"
        check_flows(env, ENFORCED, family)
        still = ct_entry(env, "b", "a", 80, client_port, family)
        assert still is not None, "conntrack entry of the established connection is gone"
        assert (still.origin, still.rule_id, still.reason) == (at_b.origin, at_b.rule_id, at_b.reason)
        assert ct_entry(env, "a", "b", client_port, 80, family) is not None
        # Counters are pinned too: they kept counting across both loaders.
        established_after = w.counters("b").get(("ingress", Reason.ALLOW_ESTABLISHED), 0)
        assert established_after >= established_before + 2  # a data segment per exchange at least
