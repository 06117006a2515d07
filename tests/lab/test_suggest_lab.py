"""`enforcer suggest` against the real daemon, proved on the wire: traffic
between the lab's pods (and a client outside the cluster) lands in the
daemon's flow history; the policies `enforcer suggest` prints for every
namespace, applied in audit mode (as printed), drop nothing and report as
audit exactly the flows never seen; applied enforced (--enforce), they
keep each observed (source, destination, protocol, port) working and deny
every other pair and port.

Lab (prefix hsl<pid>, pins /sys/fs/bpf/enforcer-conf-hsl<pid>): the nine
upstream pods x, y, z / a, b, c (labels pod=<name>), each serving TCP and
UDP on 80 and 81, on one node with the daemon, which keeps its history in
its work directory; and "ext" (198.51.100.10), a namespace wired to the node
like a pod but outside the pod network, serving the same.

While the traffic is observed, z/a is isolated for ingress with no rule:
x/a -> z/a is denied there (recorded so), though x/a's egress passed it.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from enforcer.api import client
from enforcer.api import history_client as hc
from enforcer.history.store import DB_NAME, Filter, open_store
from enforcer.lab.cluster import ExternalSpec, add_external
from enforcer.lab.netns import netns_delete
from enforcer.lab.probe import ProbeSpec, probe_many
from enforcer.lab.topology import Pod, start_server, stop_process, wait_servers
from enforcer.model.meta import AUDIT_ANNOTATION
from enforcer.v1 import enforcer_pb2 as pb
from tests.conformance import model as M
from tests.conformance.runner import ALLOWED_TIMEOUT, DENIED_TIMEOUT, ConformanceLab, lab_name

pytestmark = pytest.mark.lab

EXT = ExternalSpec("ext", "198.51.100.10", "2001:db8:100::10")
# (source, destination, protocol, port): the traffic observed.
OBSERVED = [
    ("x/a", "x/b", "TCP", 80),
    ("x/c", "x/b", "TCP", 80),   # a second client of the same port: one rule for both
    ("y/a", "x/b", "TCP", 81),   # from another namespace
    ("x/b", "z/c", "UDP", 80),   # egress to another namespace, UDP
    ("y/b", "y/c", "UDP", 81),
    ("z/b", "x/c", "TCP", 80),
    ("ext", "x/a", "TCP", 81),   # from outside the cluster: an ipBlock
    ("x/a", "ext", "TCP", 80),   # to outside the cluster
]
DENIED_WHILE_OBSERVED = ("x/a", "z/a", "TCP", 80)  # z/a isolated for ingress then
# Flows never seen, each refused by every local hook on its way: probed with
# the suggestions in audit mode (a few: the datapath reports at most 200
# events a CPU at once).
AUDIT_SAMPLE = [
    ("x/a", "x/b", "TCP", 81),  # a port not seen
    ("x/b", "x/a", "TCP", 80),  # the way back
    ("z/a", "x/b", "TCP", 80),  # from a pod whose one flow was denied: its namespace's default deny
    ("ext", "x/a", "TCP", 80),  # an address seen, another port
    ("x/a", "ext", "UDP", 80),  # an address seen, another protocol
]
ISOLATE_ZA = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "isolate-a", "namespace": "z"},
              "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}}
PORTS = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81)]
PARTIES = [*M.ALL_PODS, "ext"]


@pytest.fixture(scope="module")
def lab() -> Iterator[ConformanceLab]:
    """The nine pods, the daemon (history in its work directory) and ext,
    serving 80 and 81 like the pods."""
    lab = ConformanceLab(prefix=f"hsl{os.getpid()}")
    ext: Pod | None = None
    try:
        lab.start()
        ext = Pod("ext", add_external(lab.lab, EXT), ipaddress.IPv4Address(EXT.ipv4),
                  ipaddress.IPv6Address(EXT.ipv6), host_ifname="extext")
        start_server(ext, lab.lab.ports)
        wait_servers([ext], timeout=15)
        yield lab
    finally:
        if ext is not None:
            stop_process(ext.server)
        netns_delete(f"{lab.prefix}-{EXT.name}")
        lab.close()


def netns(lab: ConformanceLab, who: str) -> str:
    return f"{lab.prefix}-{EXT.name}" if who == "ext" else lab.lab.pod(lab_name(who)).netns


def ip(lab: ConformanceLab, who: str) -> str:
    return EXT.ipv4 if who == "ext" else lab.pod_ips()[who][0]


def probe(lab: ConformanceLab, flows: list[tuple[str, str, str, int]],
          expected: Callable[[tuple[str, str, str, int]], bool]) -> dict[tuple[str, str, str, int], bool]:
    """Whether each flow connects; a flow that differs from expected is tried
    twice more (as the conformance runner does) before it counts."""
    seen: dict[tuple[str, str, str, int], bool] = {}
    todo = list(flows)
    for _ in range(3):
        results = probe_many([ProbeSpec(netns(lab, s), ip(lab, d), port, proto.lower(),
                                        timeout=ALLOWED_TIMEOUT if expected((s, d, proto, port)) else DENIED_TIMEOUT)
                              for s, d, proto, port in todo])
        seen.update({f: r.ok for f, r in zip(todo, results, strict=True)})
        todo = [f for f in todo if seen[f] != expected(f)]
        if not todo:
            break
    return seen


def row_of_flow(lab: ConformanceLab, local: str, direction: str, peer: str, proto: str, port: int,
                verdict: str = "allowed", ext_kind: str = "world") -> tuple[str, ...]:
    """A history row as (pod, direction, peer, protocol/port, verdict). ext
    is "world" while no ipBlock holds it, "cidr" once one does."""
    peer_text = f"{EXT.ipv4} ({ext_kind})" if peer == "ext" else f"{peer.split('/')[0]} {{pod={peer.split('/')[1]}}}"
    return (local, direction, peer_text, f"{proto}/{port}", verdict)


def expected_rows(lab: ConformanceLab) -> set[tuple[str, ...]]:
    rows = set()
    for src, dst, proto, port in OBSERVED + [DENIED_WHILE_OBSERVED]:
        if src != "ext":
            rows.add(row_of_flow(lab, src, "egress", dst, proto, port))
        if dst != "ext":
            denied = (src, dst, proto, port) == DENIED_WHILE_OBSERVED
            rows.add(row_of_flow(lab, dst, "ingress", src, proto, port, "denied" if denied else "allowed"))
    return rows


def history_rows(lab: ConformanceLab) -> set[tuple[str, ...]]:
    history = hc.read_history(hc.Source("lab", client.connect(lab.daemon.socket)))
    return {(f"{r.key.namespace}/{r.key.pod}", r.key.direction, r.key.peer_text(), f"{r.key.protocol}/{r.key.port}",
             r.key.verdict) for r in history.rows}


def suggest(lab: ConformanceLab, *args: str) -> list[dict[str, Any]]:
    """What `enforcer suggest` prints for every namespace, from the daemon's history."""
    out = subprocess.run([sys.executable, "-m", "enforcer", "suggest", "--socket", str(lab.daemon.socket), *args,
                          *[a for ns in M.NAMESPACES for a in ("--namespace", ns)]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return list(yaml.safe_load_all(out.stdout))


def apply(lab: ConformanceLab, policies: list[dict[str, Any]]) -> None:
    """policies, and nothing else, in force."""
    lab._write("policies/suggested.yaml", policies)
    lab.sync()
    st = client.connect(lab.daemon.socket).Status(pb.StatusRequest(), timeout=10)
    assert st.network_policies == len(policies) and not st.invalid_objects


def wait_recorded(lab: ConformanceLab, rows: set[tuple[str, ...]], timeout: float = 10.0) -> set[tuple[str, ...]]:
    """The history once it holds rows (the events reach it within a
    ring-buffer poll, 0.2 s, and the API writes what the recorder holds)."""
    deadline = time.monotonic() + timeout
    while not rows <= (history := history_rows(lab)):
        if time.monotonic() > deadline:
            raise AssertionError(f"not recorded after {timeout:.0f} s: {sorted(rows - history)}; "
                                 f"the history: {sorted(history)}")
        time.sleep(0.05)
    return history


def test_suggested_policies_keep_observed_flows_and_deny_the_rest(lab):
    lab.reset()
    lab._write("policies/z-isolate-a.yaml", [ISOLATE_ZA])
    lab.sync()
    # Observe: the traffic works (but the flow into isolated z/a), and is recorded.
    traffic = OBSERVED + [DENIED_WHILE_OBSERVED]
    got = probe(lab, traffic, lambda f: f != DENIED_WHILE_OBSERVED)
    assert [f for f in traffic if got[f] != (f != DENIED_WHILE_OBSERVED)] == []
    expected = expected_rows(lab)
    assert wait_recorded(lab, expected) == expected  # and nothing else

    # Suggest for every namespace: as printed (audit mode), and --enforce.
    (lab.source / "policies" / "z-isolate-a.yaml").unlink()
    audited, enforced = suggest(lab), suggest(lab, "--enforce")
    assert {p["metadata"]["namespace"] for p in enforced} == set(M.NAMESPACES)
    as_printed = copy.deepcopy(audited)
    assert all(p["metadata"].pop("annotations") == {AUDIT_ANNOTATION: "true"} for p in audited)
    assert audited == enforced  # but for the annotation

    # Audit mode first: nothing is dropped; what the policies would drop is
    # recorded as audit, at each hook that would drop it, and nothing else.
    apply(lab, as_printed)
    got = probe(lab, OBSERVED + AUDIT_SAMPLE, lambda f: True)
    assert all(got.values()), got
    audit = {row_of_flow(lab, local, direction, peer, proto, port, "audit", ext_kind="cidr")
             for src, dst, proto, port in AUDIT_SAMPLE
             for local, direction, peer in ((src, "egress", dst), (dst, "ingress", src)) if local != "ext"}
    assert {r for r in wait_recorded(lab, audit) if r[-1] == "audit"} == audit

    # Enforced.
    apply(lab, enforced)
    # Every pair of parties, every port: open exactly where traffic was seen.
    flows = [(s, d, proto, port) for s in PARTIES for d in PARTIES if s != d for proto, port in PORTS]
    observed = set(OBSERVED)
    got = probe(lab, flows, lambda f: f in observed)
    wrong = [f"{s} -> {d} {proto}/{port}: {'open' if got[(s, d, proto, port)] else 'closed'}"
             for s, d, proto, port in flows if got[(s, d, proto, port)] != ((s, d, proto, port) in observed)]
    assert not wrong, "\n".join(wrong) + "\n\n" + yaml.safe_dump_all(enforced) + "\n" + lab.diagnostics()
    assert sum(got.values()) == len(OBSERVED)


def test_history_is_on_disk_after_a_stop_and_a_corrupt_file_costs_only_the_history(lab):
    """Stopped (SIGTERM), the daemon leaves its history in its file (what a
    restart opens: tests/history/test_store.py); restarted on a corrupt
    file, it moves the file aside (saying so), enforces the directory's
    policies as before and records into a new history."""
    lab.reset()
    lab._write("policies/z-isolate-a.yaml", [ISOLATE_ZA])
    lab.sync()
    new_flow = ("x/c", "y/a", "UDP", 81)  # not seen before
    assert probe(lab, [new_flow], lambda f: True) == {new_flow: True}
    wait_recorded(lab, {row_of_flow(lab, "y/a", "ingress", "x/c", "UDP", 81)})
    lab.daemon.stop()
    db = lab.daemon.state_dir / DB_NAME
    store = open_store(db, 100_000)
    assert {(r.key.pod, r.key.direction, r.key.port) for _, r in store.read(Filter("y"))} >= {("a", "ingress", 81)}
    store.close()
    db.write_bytes(b"not a history" * 1000)

    lab.daemon.start()
    assert "moved to" in lab.daemon.log_text() and list(db.parent.glob(f"{DB_NAME}.corrupt-*"))
    denied = ("x/a", "z/a", "TCP", 80)
    assert probe(lab, [denied], lambda f: False) == {denied: False}
    (lab.source / "policies" / "z-isolate-a.yaml").unlink()
    lab.sync()  # the restarted daemon applies changes
    assert probe(lab, [denied], lambda f: True) == {denied: True}
    anew = {row_of_flow(lab, "x/a", "egress", "z/a", "TCP", 80), row_of_flow(lab, "z/a", "ingress", "x/a", "TCP", 80),
            row_of_flow(lab, "z/a", "ingress", "x/a", "TCP", 80, "denied")}
    assert wait_recorded(lab, anew) == anew
