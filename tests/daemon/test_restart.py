"""The daemon killed (-9) and restarted, stopped (SIGTERM), and `enforcer
cleanup`, with policies in force.

Enforcement lives in the kernel: the tc filters hold the programs, the maps
are pinned. A dead daemon changes nothing for traffic; a new one on the same
pin dir reads the maps back, finds them right (nothing to write) and swaps
its programs in atomically. A continuous prober watches the whole window:
not one allowed probe may fail, not one denied probe may pass, and an
established connection keeps exchanging data.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from enforcer.datapath import bpfsys
from enforcer.datapath.loader import EVENTS_PIN, PROGRAMS, program_pin
from enforcer.lab.netns import run
from enforcer.lab.topology import ROUTED

from .conftest import make_daemon_lab
from .harness import DENIED, OK, DaemonLab, Flow, Prober, allow_from, allow_to, policy

pytestmark = pytest.mark.lab

POLICIES = [
    policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80), ("udp", 80))]),
    policy("c-egress", "c", egress=[allow_to("a", ("tcp", 80), ("udp", 81))]),
]
# (flow, family): several allowed and several denied, TCP and UDP, both families.
WATCHED: list[tuple[Flow, int]] = [
    (Flow("a", "b", 80, "tcp", OK), 4),
    (Flow("a", "b", 80, "udp", OK), 6),
    (Flow("c", "a", 80, "tcp", OK), 6),
    (Flow("c", "a", 81, "udp", OK), 4),
    (Flow("c", "b", 80, "tcp", DENIED), 4),    # b's ingress: a only (and c's egress: a only)
    (Flow("a", "b", 81, "tcp", DENIED), 6),    # b's ingress: port 80 only
    (Flow("c", "a", 80, "udp", DENIED), 4),    # c's egress: udp 81 only
    (Flow("a", "b", 81, "udp", DENIED), 6),
]
@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> DaemonLab:
    env = make_daemon_lab(request, "r", ["a", "b", "c"], mode=ROUTED)
    env.write_policies(POLICIES)
    env.sync()
    return env


def endpoint_table(env: DaemonLab) -> dict:  # type: ignore[type-arg]
    return {ip: (e.id, e.ifindex, e.identity, e.flags) for ip, e in env.endpoints().items()}


def ensure_running(env: DaemonLab) -> None:
    """Each test starts with the daemon up and the policies applied (an
    earlier test may have failed half-way)."""
    assert env.daemon is not None
    if not env.daemon.running:
        env.start_daemon()
    env.write_policies(POLICIES)
    env.sync()


def test_kill_9_and_restart_under_traffic(env: DaemonLab) -> None:
    ensure_running(env)
    daemon = env.daemon
    assert daemon is not None
    programs = env.attached_programs()
    veths = {p.host_ifindex for p in env.lab.pods.values()}
    node_ifs = set(env.node_attachments())  # to_network: the node's own interfaces
    assert node_ifs and not node_ifs & veths
    assert {ifindex for ifindex, _ in programs} == veths | node_ifs
    endpoints_before, ipcache_before = endpoint_table(env), env.ipcache()
    log_offset = len(daemon.log_text())

    prober = Prober(env, WATCHED).start()
    try:
        time.sleep(0.5)
        assert daemon.kill() == -signal.SIGKILL
        time.sleep(0.5)  # nobody home: the kernel enforces alone
        assert env.attached_programs() == programs
        env.start_daemon(sync=False)   # same pin dir; returns once it has synced
        status = env.sync()
        time.sleep(0.5)
    finally:
        prober.stop()
    prober.check(min_probes=20)

    # The new daemon found the maps right: its passes wrote nothing.
    assert status["since_start"]["written"] == 0 and status["since_start"]["deleted"] == 0, status
    assert status["since_start"]["revoked"] == 0, status
    new_log = daemon.log_text()[log_offset:]
    assert not [line for line in new_log.splitlines() if "synced revision" in line], new_log
    loaded = [line for line in new_log.splitlines() if "datapath loaded" in line]
    assert loaded and "reused" in loaded[0], new_log
    assert endpoint_table(env) == endpoints_before and env.ipcache() == ipcache_before
    # ... and replaced every program in place with its own.
    new_programs = env.attached_programs()
    assert new_programs.keys() == programs.keys()
    assert all(new_programs[k] != programs[k] for k in programs), "programs were not replaced"


def test_sigterm_exits_0_and_leaves_enforcement(env: DaemonLab) -> None:
    ensure_running(env)
    daemon = env.daemon
    assert daemon is not None
    programs = env.attached_programs()
    assert daemon.stop() == 0, daemon.log_tail()
    assert "enforcement stays in place" in daemon.log_tail(5)
    assert env.attached_programs() == programs
    for family in (4, 6):
        env.check_flows([f for f, fam in WATCHED], family)


def test_restart_with_many_labels_writes_nothing(env: DaemonLab) -> None:
    """Pods as Kubernetes makes them carry several labels. Identity ids are
    hashed from the identity's content, so a new daemon must arrive at the
    same ids whatever order a set of labels iterates in. (Traffic is not
    disturbed either way: the ordered sync writes new allows first.)"""
    ensure_running(env)
    for name in env.lab.pods:
        env.set_labels(name, {"pod": name, "app": "web", "pod-template-hash": f"h{name}", "tier": "t"})
    env.sync()
    daemon = env.daemon
    assert daemon is not None
    written = []
    for _ in range(2):  # two processes, two hash seeds
        assert daemon.kill() == -signal.SIGKILL
        env.start_daemon(sync=False)
        written.append(env.sync()["since_start"]["written"])
    for family in (4, 6):
        env.check_flows([f for f, fam in WATCHED], family)
    assert written == [0, 0], f"restarted daemons rewrote map entries: {written}"


COMPILER_LIBRARIES = ("libbcc", "libllvm", "libclang")


def test_the_daemon_runs_without_bcc_or_llvm(env: DaemonLab) -> None:
    """The programs are compiled by a short-lived child (loadchild.py): the
    long-lived daemon maps none of bcc, LLVM or clang, and enforces with the
    programs and the events ring buffer it opened from their pins."""
    ensure_running(env)
    assert env.daemon is not None and env.daemon.pid is not None
    maps = Path(f"/proc/{env.daemon.pid}/maps").read_text()
    assert "python" in maps  # the daemon itself, not nsenter
    mapped = {line.split()[-1] for line in maps.splitlines() if len(line.split()) >= 6}
    assert not [m for m in mapped if any(lib in Path(m).name.lower() for lib in COMPILER_LIBRARIES)], mapped
    pins = {p.name for p in env.pin_dir.iterdir()}
    assert {program_pin(p) for p in PROGRAMS} | {EVENTS_PIN} <= pins
    attached = set(env.attached_programs().values())
    pinned = set()
    for p in PROGRAMS:
        fd = bpfsys.obj_get(str(env.pin_dir / program_pin(p)))
        try:
            pinned.add(bpfsys.prog_id(fd))
        finally:
            os.close(fd)
    assert attached <= pinned, "what is attached is what the child pinned"


def test_cleanup_removes_filters_and_pins(env: DaemonLab) -> None:
    ensure_running(env)
    daemon = env.daemon
    assert daemon is not None
    lab = env.lab
    # Someone else's filter on a pod's interface (a CNI's): cleanup leaves it.
    a = lab.pod("a").host_ifname
    run(["tc", "-n", lab.node_netns, "filter", "add", "dev", a, "ingress", "prio", "100", "protocol", "all",
         "u32", "match", "u32", "0", "0", "flowid", "1:1"])
    assert daemon.stop() == 0
    if env._maps is not None:  # our own fds would keep the maps alive
        env._maps.close()
        env._maps = None
    assert env.pin_dir.exists()

    res = env.node_cli("cleanup", "--pin-dir", str(env.pin_dir))
    assert res.returncode == 0, res.stderr
    assert env.all_attachments() == {}, "our filters are still attached"
    assert not env.pin_dir.exists(), list(env.pin_dir.iterdir())
    foreign = run(["tc", "-n", lab.node_netns, "filter", "show", "dev", a, "ingress"])
    assert "u32" in foreign and "flowid 1:1" in foreign
    for family in (4, 6):  # everything passes again
        env.check_flows([Flow(f.src, f.dst, f.port, f.proto, OK) for f, fam in WATCHED], family)
