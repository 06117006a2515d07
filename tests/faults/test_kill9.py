"""kill -9 of the daemon, three times, under load; the second time, policy
changes while it is dead (an allow revoked, a new one granted).

Clients keep long-lived TCP streams and a loop of new connections on
allowed pairs, and keep trying denied pairs, from before the first kill to
after the last restart (tests/daemon/harness.py's Prober). Each dead window
is held open until every flow and stream has been exercised inside it.
Held against policy at the moment each probe started:

- not one allowed stream line lost, not one allowed new connection failed
  or needing a retransmission, dead windows and restarts included;
- not one denied connection through, dead windows included;
- the revoked pair passes until the policy file changes (nothing changes
  while nobody is home), and from the moment the restarted daemon reports
  the new revision it never passes again: no new connection, and no line
  sent on its established stream is answered (the connection is cut);
- the new allow is denied until the file changes and passes from the
  moment the revision is reported;
- every restarted daemon becomes ready (status file, the API's Status and
  the standard gRPC health check), re-attaches its programs on every
  interface, and only the restart that met new policy wrote to the maps.
"""

from __future__ import annotations

import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc
from tests.daemon.conftest import make_daemon_lab
from tests.daemon.harness import DENIED, OK, DaemonLab, Flow, Prober, Stream, allow_from, allow_to, policy

pytestmark = pytest.mark.lab

PODS = ["a", "b", "c", "d"]
KILLS = 3
CHANGE_AT = 1   # the kill (0-based) during which policy changes

BEFORE = [
    policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80), ("udp", 80)), allow_from("c", ("tcp", 80))]),
    policy("c-egress", "c", egress=[allow_to("a", ("tcp", 80), ("udp", 81)), allow_to("b", ("tcp", 80))]),
    policy("d-ingress", "d", ingress=[allow_from("b", ("tcp", 80))]),
]
# Written while the daemon is dead: c loses b (b's ingress), a gains d.
AFTER = [
    policy("b-ingress", "b", ingress=[allow_from("a", ("tcp", 80), ("udp", 80))]),
    policy("c-egress", "c", egress=[allow_to("a", ("tcp", 80), ("udp", 81)), allow_to("b", ("tcp", 80))]),
    policy("d-ingress", "d", ingress=[allow_from("b", ("tcp", 80)), allow_from("a", ("tcp", 80))]),
]

STEADY: list[tuple[Flow, int]] = [
    (Flow("a", "b", 80, "tcp", OK), 4),
    (Flow("a", "b", 80, "udp", OK), 6),
    (Flow("c", "a", 80, "tcp", OK), 6),
    (Flow("c", "a", 81, "udp", OK), 4),
    (Flow("b", "d", 80, "tcp", OK), 4),
    (Flow("d", "a", 81, "tcp", OK), 6),       # a and d's egress: selected by nothing
    (Flow("c", "b", 81, "tcp", DENIED), 4),   # b's ingress: c on 80 only, and c's egress
    (Flow("a", "b", 81, "tcp", DENIED), 6),
    (Flow("c", "a", 80, "udp", DENIED), 4),   # c's egress: udp 81 only
    (Flow("c", "d", 80, "tcp", DENIED), 6),   # c's egress: a and b only
    (Flow("a", "d", 81, "tcp", DENIED), 4),
    (Flow("b", "d", 80, "udp", DENIED), 6),
]
REVOKED = [(Flow("c", "b", 80, "tcp", OK), 4), (Flow("c", "b", 80, "tcp", OK), 6)]
GRANTED = [(Flow("a", "d", 80, "tcp", DENIED), 4), (Flow("a", "d", 80, "tcp", DENIED), 6)]
STREAMS = [Stream("a", "b", 80, 4), Stream("a", "b", 80, 6), Stream("c", "a", 80, 4), Stream("b", "d", 80, 6)]
REVOKED_STREAM = Stream("c", "b", 80, 4)
INTERVAL = 0.1


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> DaemonLab:
    env = make_daemon_lab(request, "k", PODS)
    env.write_policies(BEFORE)
    env.sync()
    for family in (4, 6):  # neighbours resolved, every server answering, before the clock starts
        env.check_flows([f for f, fam in STEADY + REVOKED + GRANTED], family)
    return env


def api_ready(env: DaemonLab) -> tuple[bool, str, str]:
    """(Status.ready, Status.source_revision, health status) from the API."""
    assert env.daemon is not None
    with grpc.insecure_channel(f"unix:{env.daemon.socket}") as channel:
        st = pb_grpc.EnforcerStub(channel).Status(pb.StatusRequest(), timeout=10)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return st.ready, st.source_revision, health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)


def test_kill_9_three_times_under_load_with_policy_change_while_dead(env: DaemonLab) -> None:
    daemon = env.daemon
    assert daemon is not None and daemon.running
    programs = env.attached_programs()
    assert {ifindex for ifindex, _ in programs} >= {p.host_ifindex for p in env.lab.pods.values()}

    prober = Prober(env, STEADY + REVOKED + GRANTED, [*STREAMS, REVOKED_STREAM], interval=INTERVAL).start()
    restarts: list[dict] = []  # type: ignore[type-arg]
    change = None
    try:
        prober.wait_covered(prober.t0)
        for kill in range(KILLS):
            assert daemon.kill() == -signal.SIGKILL, daemon.log_tail()
            dead = prober.note(f"kill -9 #{kill + 1}: daemon dead")
            if kill == CHANGE_AT:
                change = prober.change({**{k: DENIED for k in REVOKED}, **{k: OK for k in GRANTED}},
                                       {REVOKED_STREAM: False})
                env.write_policies(AFTER)
            # Nobody home: the kernel enforces alone. Hold the window open
            # until every flow and stream has been exercised inside it.
            prober.wait_covered(dead)
            assert env.attached_programs() == programs, "a dead daemon's programs left the hooks"
            prober.note(f"restart #{kill + 1}")
            env.start_daemon(sync=False)    # returns once the ready file is written (first sync done)
            status = env.sync()             # ... of exactly the directory as it is now
            synced = prober.note(f"restart #{kill + 1}: revision {status['source_revision'][:12]} reported")
            if kill == CHANGE_AT:
                assert change is not None
                change.mark_applied()
            restarts.append(status)
            assert status["ready"], status
            assert api_ready(env) == (True, env.revision(), "SERVING")
            new_programs = env.attached_programs()
            assert new_programs.keys() == programs.keys(), "programs missing after the restart"
            assert all(new_programs[k] != programs[k] for k in programs), "programs were not replaced"
            programs = new_programs
            prober.wait_covered(synced)
    finally:
        prober.stop()
    prober.check(min_probes=10)

    # The revoked stream was exercised after the new revision was reported,
    # and none of it came back (check() holds each line to that).
    assert change is not None and change.applied is not None
    after = [ex for ex in prober.exchanges[REVOKED_STREAM].values() if ex.sent >= change.applied]
    assert after, "the revoked stream was not exercised once the new policy was applied"
    # Only the restart that met new policy wrote; it cut the revoked
    # connection (b's side of it, and of any probe tracked meanwhile).
    written = [(st["since_start"]["written"], st["since_start"]["deleted"]) for st in restarts]
    assert [w != (0, 0) for w in written] == [k == CHANGE_AT for k in range(KILLS)], written
    assert restarts[CHANGE_AT]["since_start"]["revoked"] >= 1, restarts[CHANGE_AT]
    assert not restarts[CHANGE_AT]["errors"], restarts[CHANGE_AT]
