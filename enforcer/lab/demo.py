"""`make demo`: the node daemon on the embedded default (examples/) in a lab.

Builds a lab (namespaces foo and bar, an external load balancer), starts
`enforcer run` in the lab's node on a manifest directory holding the lab's
Namespace and Pod objects, prints connectivity, adds examples/ (foo's
default deny and allow list), prints it again with what the daemon reports,
then adds examples/cluster/ (an Admin deny and a Baseline default deny:
ClusterNetworkPolicy tiers) and shows the matrix and `explain` naming the
tier, and tears everything down, also on Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..api import client
from ..sources.directory import directory_revision
from ..v1 import enforcer_pb2 as pb
from .cluster import DEMO_SPEC, NODE_NAME, lab_down, lab_up, matrix
from .loader import DaemonProcess
from .netns import netns_path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
CLUSTER_EXAMPLES = EXAMPLES / "cluster"
PREFIX = "enfdemo"
PIN_DIR = Path("/sys/fs/bpf/enforcer-demo")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _matrices(state) -> None:
    for port in (80, 81):
        _say(matrix(state, port, "tcp", 4))
        _say()
    _say(matrix(state, 80, "tcp", 6))
    _say()


def run_demo() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="enforcer-demo-"))
    source = workdir / "manifests"
    daemon: DaemonProcess | None = None

    def _interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _say("[1] lab: node netns, pods foo/web foo/api bar/client, external load balancer 198.51.100.10")
        _, state = lab_up(PREFIX, source, DEMO_SPEC)
        daemon = DaemonProcess(state.node_netns, PIN_DIR, source, NODE_NAME, workdir=workdir / "daemon")
        _say(f"    daemon: nsenter --net={netns_path(state.node_netns)} enforcer run --source {source} "
             f"--node {NODE_NAME}")
        daemon.start()
        daemon.wait_synced(directory_revision(source))
        _say("\n[2] no policy: every pod is reachable (ok = answered, -- = dropped, . = itself)\n")
        _matrices(state)

        _say(f"[3] adding {', '.join(p.name for p in sorted(EXAMPLES.glob('*.yaml')))}")
        for f in sorted(EXAMPLES.glob("*.yaml")):
            shutil.copy(f, source / f.name)
        t0 = time.monotonic()
        status = daemon.wait_synced(directory_revision(source))
        _say(f"    applied in {1e3 * (time.monotonic() - t0):.0f} ms (file written -> maps written): "
             f"{status['endpoints']} endpoints, {status['policy_entries']} policy entries, "
             f"errors: {status['errors'] or 'none'}\n")
        _matrices(state)
        _say("    foo is default-deny: web answers foo and the load balancer on 80, api answers web on 81;")
        _say("    bar/client reaches nothing in foo; the node reaches everything (kubelet probes).\n")
        _say("[4] verdict flows, from the daemon's API (`enforcer flows --verdict denied`):")
        stub = client.connect(daemon.socket)
        denied: list[str] = []
        only_denied = pb.StreamFlowsRequest(since_recent=True, verdict=pb.StreamFlowsRequest.VERDICT_FILTER_DENIED)
        client.stream_flows(stub, False, only_denied, out=denied.append)
        for line in denied[:4]:
            _say("    " + line)
        _say("\n[5] why? (`enforcer explain bar/client foo/web --port 80`, and foo/web -> foo/api on 81)")
        for src, dst, port in (("bar/client", "foo/web", 80), ("foo/web", "foo/api", 81)):
            text = client.show_explain(stub, False, pb.ExplainRequest(source=src, destination=dst, port=port))
            _say("\n".join("    " + line for line in text.splitlines()))

        _say(f"\n[6] cluster policy tiers: adding {', '.join(p.name for p in sorted(CLUSTER_EXAMPLES.glob('*.yaml')))}")
        _say("    Admin: bar may open no connection to any pod (no NetworkPolicy can override it);")
        _say("    Baseline: every namespace but foo is default-deny for ingress (its NetworkPolicies may open it)")
        for f in sorted(CLUSTER_EXAMPLES.glob("*.yaml")):
            shutil.copy(f, source / f"cluster-{f.name}")
        status = daemon.wait_synced(directory_revision(source))
        _say(f"    applied: {status['policy_entries']} policy entries, errors: {status['errors'] or 'none'}\n")
        _matrices(state)
        _say("    bar/client's row is empty (Admin Deny); foo/web -> bar/client is dropped by the Baseline;")
        _say("    foo keeps its own NetworkPolicies (Baseline never applies where one isolates).\n")
        _say("[7] which tier decided? (`enforcer explain foo/web bar/client --port 80`, bar/client -> foo/web)")
        for src, dst, port in (("foo/web", "bar/client", 80), ("bar/client", "foo/web", 80)):
            text = client.show_explain(stub, False, pb.ExplainRequest(source=src, destination=dst, port=port))
            _say("\n".join("    " + line for line in text.splitlines()))
        return 0
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        _say("\ntearing down: daemon, programs and pins, namespaces ...")
        if daemon is not None:
            daemon.stop()
            subprocess.run(["nsenter", f"--net={netns_path(PREFIX + '-node')}", sys.executable, "-m", "enforcer",
                            "cleanup", "--pin-dir", str(PIN_DIR)], capture_output=True, check=False)
            daemon.close()
        lab_down(PREFIX)
        shutil.rmtree(PIN_DIR, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
        _say("done.")
