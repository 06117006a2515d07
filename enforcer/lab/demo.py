"""`enforcer demo`: a one-node cluster in network namespaces, the datapath
loaded on it, connectivity before and after a small policy set.

Map contents are written directly, as the daemon will write them from
NetworkPolicy objects; the output names the policies they stand for.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..datapath.reasons import Reason
from .session import LabSession
from .topology import NODE, NODE_IPV4, NODE_IPV6

PREFIX = "enfdemo"
PIN_DIR = Path("/sys/fs/bpf/enforcer-demo")
# pod -> Kubernetes namespace it stands for
PODS = {"frontend": "web", "backend": "api", "db": "data"}
PORTS = (80, 81)

POLICIES = """\
  api/backend-allow-frontend    podSelector: app=backend, policyTypes: [Ingress]
                                ingress: from frontend (ns web) on TCP 80
  data/db-allow-backend         podSelector: app=db, policyTypes: [Ingress]
                                ingress: from backend (ns api) on TCP 81
  (frontend is selected by no policy: not isolated)"""


def _side_by_side(*blocks: str, gap: int = 6) -> str:
    split = [b.splitlines() for b in blocks]
    widths = [max(len(line) for line in lines) for lines in split]
    rows = max(len(lines) for lines in split)
    out = []
    for i in range(rows):
        cells = [(lines[i] if i < len(lines) else "").ljust(w) for lines, w in zip(split, widths)]
        out.append((" " * gap).join(cells).rstrip())
    return "\n".join("  " + line for line in out)


def _matrices(session: LabSession, family: int, protos: tuple[str, ...] = ("tcp", "udp")) -> str:
    """One row of side-by-side matrices (ports 80 and 81) per protocol."""
    lab = session.lab
    rows = [_side_by_side(*(lab.format_matrix(port, proto, family) for port in PORTS))
            for proto in protos]
    return "\n\n".join(rows)


COUNTED = (Reason.ALLOW_POLICY, Reason.DROP_POLICY, Reason.ALLOW_NOT_ISOLATED,
           Reason.ALLOW_HOST, Reason.ALLOW_REPLY, Reason.ALLOW_ESTABLISHED)


def _counter_deltas(session: LabSession, before: dict[str, dict]) -> str:
    """Packets per (pod, policy direction) and reason since `before`."""
    assert session.world is not None
    names = [r.name.split("_", 1)[1].lower() for r in COUNTED]  # "policy", "not_isolated", ...
    kinds = ["allow" if r.name.startswith("ALLOW") else "drop" for r in COUNTED]
    head1 = "  " + " " * 19 + "".join(f"{k:>14}" for k in kinds)
    head2 = f"  {'pod':<9} {'direction':<9}" + "".join(f"{n:>14}" for n in names)
    lines = [head1, head2]
    for pod in PODS:
        now = session.world.counters(pod)
        for direction in ("ingress", "egress"):
            cells = [now.get((direction, r), 0) - before[pod].get((direction, r), 0) for r in COUNTED]
            lines.append(f"  {pod:<9} {direction:<9}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM tears the demo down like Ctrl-C. Only in this process: a
    child forked by a library (pyroute2 forks for namespaces) inherits the
    handler and must just exit, not unwind through our teardown."""
    owner = os.getpid()

    def handler(_signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signal.SIGTERM)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo() -> int:
    if os.geteuid() != 0:
        print("enforcer demo: must run as root (it builds namespaces and loads BPF programs)",
              file=sys.stderr)
        return 1
    session = LabSession(PREFIX, list(PODS), PIN_DIR)
    try:
        with _sigterm_as_interrupt():
            return _run(session)
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return 130
    finally:
        # Ctrl-C during teardown must not leave namespaces or pins behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _say("\ntearing down: loader, namespaces, pins ...")
            session.close()
            _say("done.")
        finally:
            signal.signal(signal.SIGINT, old)


def _run(session: LabSession) -> int:
    _say(f"enforcer demo: a one-node cluster in network namespaces ({PREFIX}-*)\n")
    _say("building the lab and loading the datapath ...")
    session.start()
    lab, world = session.lab, session.world
    assert world is not None

    _say(f"\n  node      {NODE_IPV4}, {NODE_IPV6} (netns {lab.node_netns}, identity host)")
    _say(f"  {'pod':<9} {'namespace':<10} {'IPv4':<12} {'IPv6':<13} {'host veth':<12} identity")
    for name, ns in PODS.items():
        pod = lab.pod(name)
        _say(f"  {name:<9} {ns:<10} {str(pod.ipv4):<12} {str(pod.ipv6):<13} "
             f"{pod.host_ifname:<12} {world.identity(name)}")
    _say(f"\n  every pod serves TCP and UDP on ports {', '.join(map(str, PORTS))} and answers with its name;")
    _say(f"  tc programs on every host veth, maps pinned in {session.pin_dir}")
    _say("  matrices: rows = client, columns = server; "
         "ok = answered, -- = dropped, rst = refused, . = itself")

    _say("\n[1] no NetworkPolicy: nothing is isolated, everything connects (IPv4)\n")
    _say(_matrices(session, 4))

    before = {pod: world.counters(pod) for pod in PODS}
    world.isolate("backend", ingress=True)
    world.allow("backend", "ingress", "frontend", "tcp", 80)
    world.isolate("db", ingress=True)
    world.allow("db", "ingress", "backend", "tcp", 81)
    _say("\n[2] policies written to the maps:\n")
    _say(POLICIES)
    _say("\n  IPv4:\n")
    _say(_matrices(session, 4))
    _say("\n  IPv6 (TCP):\n")
    _say(_matrices(session, 6, ("tcp",)))
    _say(f"\n  the {NODE} row: the node reaches isolated pods too (kubelet probes are never blocked)")

    _say("\n[3] verdict counters during step 2, in packets (DatapathMaps.counters):\n")
    _say(_counter_deltas(session, before))
    assert session.loader is not None
    drops = [line.split("enforcer: ", 1)[-1] for line in session.loader.log_text().splitlines()
             if "DROP_POLICY" in line]
    if drops:
        _say("\n  a few drop events from the loader's log:")
        for line in drops[:4]:
            _say(f"    {line}")
    return 0
