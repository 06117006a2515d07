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

import signal
import socket
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from enforcer.lab.netns import run
from enforcer.lab.probe import Outcome, ProbeResult, connect_tcp, exchange, probe
from enforcer.lab.topology import ROUTED

from .conftest import make_daemon_lab
from .harness import DENIED, OK, DaemonLab, Flow, allow_from, allow_to, policy

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
# An allowed probe fails when it is not answered at all, or when TCP had to
# retransmit to get its answer (a SYN, SYN-ACK or segment was lost): drops,
# not slowness, so this timeout is only a guard against a hang. A UDP probe
# that is dropped is never answered.
ALLOWED_TIMEOUT = 10.0
DENIED_TIMEOUT = 0.4    # silence this long: the probe was dropped (a pass answers in ms)
INTERVAL = 0.05
# struct tcp_info (linux/tcp.h): 8 bytes of u8 fields, then u32s; tcpi_total_retrans is the 24th.
_TCPI_TOTAL_RETRANS = struct.Struct("=8x92xI")  # offset 8 + 23 * 4


def total_retrans(s: socket.socket) -> int:
    """Segments (SYNs included) the kernel retransmitted on this socket."""
    return int(_TCPI_TOTAL_RETRANS.unpack_from(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))[0])


def probe_counting_retransmits(netns: str | None, dst_ip: str, port: int, proto: str,
                               timeout: float) -> tuple[ProbeResult, int]:
    """probe(), and for TCP how many segments the connection retransmitted."""
    if proto != "tcp":
        return probe(netns, dst_ip, port, proto, timeout), 0
    try:
        s, greeting = connect_tcp(netns, dst_ip, port, timeout)
    except (TimeoutError, socket.timeout):
        return ProbeResult(Outcome.TIMEOUT), 0
    except ConnectionRefusedError:
        return ProbeResult(Outcome.REFUSED), 0
    except OSError as e:
        return ProbeResult(Outcome.ERROR, detail=str(e)), 0
    with s:
        return ProbeResult(Outcome.OK, greeting.partition(" ")[0]), total_retrans(s)


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


@dataclass
class Prober:
    """Every INTERVAL, one probe of each watched flow (probes overlap: a
    denied one waits DENIED_TIMEOUT) and one exchange on an established
    connection, until stop()."""

    env: DaemonLab
    watched: Sequence[tuple[Flow, int]]
    results: list[tuple[Flow, int, float, tuple[ProbeResult, int]]] = field(default_factory=list)
    exchanges: list[tuple[float, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64)
        self._pending: list[tuple[Flow, int, float, Future]] = []  # type: ignore[type-arg]
        lab = self.env.lab
        self._conn, greeting = connect_tcp(lab.pod("a").netns, lab.pod("b").ip(4), 80, timeout=ALLOWED_TIMEOUT)
        assert greeting == "b"
        self._conn_retrans = total_retrans(self._conn)
        self._threads = [threading.Thread(target=self._probe_loop, daemon=True),
                         threading.Thread(target=self._exchange_loop, daemon=True)]

    def start(self) -> "Prober":
        for t in self._threads:
            t.start()
        return self

    def _probe_loop(self) -> None:
        lab = self.env.lab
        while not self._stop.is_set():
            tick = time.monotonic()
            for flow, family in self.watched:
                timeout = DENIED_TIMEOUT if flow.expect is DENIED else ALLOWED_TIMEOUT
                fut = self._pool.submit(probe_counting_retransmits, lab.netns_of(flow.src),
                                        lab.pod(flow.dst).ip(family), flow.port, flow.proto, timeout)
                self._pending.append((flow, family, time.time(), fut))
            self._stop.wait(max(0.0, INTERVAL - (time.monotonic() - tick)))

    def _exchange_loop(self) -> None:
        n = 0
        self._conn.settimeout(ALLOWED_TIMEOUT)
        while not self._stop.is_set():
            tick = time.monotonic()
            n += 1
            try:
                answer: str | None = exchange(self._conn, f"n{n}")
            except OSError as e:
                answer = f"error: {e!r}"
            self.exchanges.append((time.time(), None if answer == f"b n{n}" else answer))
            self._stop.wait(max(0.0, INTERVAL - (time.monotonic() - tick)))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=ALLOWED_TIMEOUT + 5)
        for flow, family, at, fut in self._pending:
            self.results.append((flow, family, at, fut.result()))
        self._pool.shutdown()
        self._conn_retrans = total_retrans(self._conn) - self._conn_retrans
        self._conn.close()

    def check(self, min_probes: int) -> None:
        wrong = [f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at * 1000) % 1000:03d} "
                 f"{flow.text(family)}: expected {'ok' if flow.expect is OK else 'denied'}, got {res.outcome.value}"
                 + (f" only after {retrans} TCP retransmission(s): a packet was lost" if retrans else "")
                 for flow, family, at, (res, retrans) in self.results
                 if (flow.expect is OK) != res.ok or (res.ok and res.answered_by != flow.dst)
                 or (flow.expect is OK and retrans)]
        assert not wrong, f"{len(wrong)} of {len(self.results)} probes went wrong:\n  " + "\n  ".join(wrong[:30])
        for flow, family in self.watched:
            n = sum(1 for f, fam, _, _ in self.results if (f, fam) == (flow, family))
            assert n >= min_probes, f"{flow.text(family)} probed only {n} times"
        failed = [(at, what) for at, what in self.exchanges if what is not None]
        assert not failed, f"the established connection failed: {failed[:5]}"
        assert self._conn_retrans == 0, f"the established connection retransmitted {self._conn_retrans} segment(s)"
        assert len(self.exchanges) >= min_probes


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
