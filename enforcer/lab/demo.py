"""`make demo`: the node daemon on the embedded default (examples/) in a lab.

Builds a lab (namespaces foo and bar, an external load balancer), starts
`enforcer run` in the lab's node on a manifest directory holding the lab's
Namespace and Pod objects, and prints connectivity. Then rolls foo out to
least privilege safely: foo's default deny (examples/) in audit mode (the
matrix does not change; the daemon reports what it would drop), the app's
own traffic, `enforcer suggest` writing the allow list from what was seen,
audit clean for that traffic, then everything enforced. Then adds
examples/cluster/ (an Admin deny and a Baseline default deny:
ClusterNetworkPolicy tiers) and shows the matrix and `explain` naming the
tier, and tears everything down, also on Ctrl-C.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ..api import client
from ..model.meta import AUDIT_ANNOTATION
from ..sources.directory import directory_revision
from ..v1 import enforcer_pb2 as pb
from ..v1 import enforcer_pb2_grpc as pb_grpc
from .cluster import DEMO_SPEC, NODE_NAME, LabState, lab_down, lab_up, matrix
from .loader import DaemonProcess
from .netns import netns_path
from .probe import ProbeSpec, probe_many

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


def _app_traffic(state: LabState, rounds: int = 3) -> list[tuple[str, str, int]]:
    """What foo's application does: the load balancer calls web on 80 (both
    families), web calls api on 81. Returns (source, destination, port)."""
    calls = [("lb", "foo/web", 80), ("foo/web", "foo/api", 81)]
    specs = []
    for _ in range(rounds):
        for src, dst, port in calls:
            netns = state.externals[src]["netns"] if src in state.externals else state.pods[src]["netns"]
            for key in ("ipv4", "ipv6"):
                specs.append(ProbeSpec(netns, state.pods[dst][key], port, "tcp"))
    failed = [s for s, r in zip(specs, probe_many(specs, timeout=2.0), strict=True) if not r.ok]
    if failed:
        raise RuntimeError(f"the app's own traffic failed: {failed[:3]}")
    return calls


def _flows_since(stub: pb_grpc.EnforcerStub, since: float,
                 verdict: pb.StreamFlowsRequest.VerdictFilter) -> list[pb.Flow]:
    flows = stub.StreamFlows(pb.StreamFlowsRequest(since_recent=True, verdict=verdict), timeout=10)
    return [f for f in flows if f.time_unix >= since]


def _wait_flows(stub: pb_grpc.EnforcerStub, since: float, want: int) -> list[pb.Flow]:
    """The flows since `since` once there are `want` (the daemon reads the
    event ring every 200 ms), or what there is after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        got = _flows_since(stub, since, pb.StreamFlowsRequest.VERDICT_FILTER_ALL)
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _audited(objects: list[dict]) -> list[dict]:
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("annotations", {})[AUDIT_ANNOTATION] = "true"
    return objects


def _enforced(objects: list[dict]) -> list[dict]:
    for obj in objects:
        annotations = obj.get("metadata", {}).get("annotations") or {}
        annotations.pop(AUDIT_ANNOTATION, None)
        if not annotations:
            obj.get("metadata", {}).pop("annotations", None)
    return objects


def _write_objects(path: Path, objects: list[dict]) -> None:
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))


def _show_flows(flows: list[pb.Flow], limit: int) -> None:
    for f in flows[:limit]:
        _say("    " + client.flow_line(f))
    if len(flows) > limit:
        _say(f"    ... and {len(flows) - limit} more")


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

        stub = client.connect(daemon.socket)
        deny = EXAMPLES / "foo-default-deny.yaml"
        _say(f"[3] rolling foo out safely: {deny.name} in audit mode ({AUDIT_ANNOTATION}: \"true\")")
        _write_objects(source / deny.name, _audited(list(yaml.safe_load_all(deny.read_text()))))
        daemon.wait_synced(directory_revision(source))
        since = time.time()
        _matrices(state)
        _say("    nothing changed on the wire; what foo's default deny would drop is reported instead")
        _say("    (`enforcer flows --verdict audit`):")
        _wait_flows(stub, since, 1)
        _show_flows(_flows_since(stub, since, pb.StreamFlowsRequest.VERDICT_FILTER_AUDIT), 4)

        _say("\n[4] the app's own traffic runs (lb -> foo/web:80, foo/web -> foo/api:81); the node keeps a")
        _say("    history of the connections it sees (SQLite in its state directory)")
        # The probes of [3] must fall outside the window suggest reads
        # (rows last seen in the last N seconds): a pause, then the app.
        time.sleep(3)
        started = time.time()
        calls = _app_traffic(state)
        _wait_flows(stub, started, 2 * len(calls) * 2)
        window = math.ceil(time.time() - started) + 1
        command = [sys.executable, "-m", "enforcer", "suggest", "--namespace", "foo", "--since", f"{window}s",
                   "--socket", str(daemon.socket)]
        _say(f"    enforcer suggest --namespace foo --since {window}s   (policies in audit mode, ready to apply):")
        suggested = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        _say("\n".join("      " + line for line in suggested.splitlines()))
        (source / "foo-suggested.yaml").write_text(suggested)
        daemon.wait_synced(directory_revision(source))

        _say("\n[5] audit clean? the app's traffic again, with the suggestions (still in audit mode) beside the")
        _say("    audited default deny:")
        again = time.time()
        _app_traffic(state)
        _wait_flows(stub, again, 2 * len(calls) * 2)
        app_pods = {"foo/web", "foo/api"}
        would_drop = [f for f in _flows_since(stub, again, pb.StreamFlowsRequest.VERDICT_FILTER_AUDIT)
                      if f"{f.destination.namespace}/{f.destination.pod}" in app_pods]
        _say(f"    audit verdicts for the app's traffic: {len(would_drop) or 'none'}")
        _show_flows(would_drop, 4)

        _say("\n[6] enforcing: the annotation removed from the default deny and the suggestions")
        _write_objects(source / deny.name, _enforced(list(yaml.safe_load_all((source / deny.name).read_text()))))
        _write_objects(source / "foo-suggested.yaml",
                       _enforced(list(yaml.safe_load_all((source / "foo-suggested.yaml").read_text()))))
        t0 = time.monotonic()
        status = daemon.wait_synced(directory_revision(source))
        _say(f"    applied in {1e3 * (time.monotonic() - t0):.0f} ms (file written -> maps written): "
             f"{status['endpoints']} endpoints, {status['policy_entries']} policy entries, "
             f"errors: {status['errors'] or 'none'}\n")
        _matrices(state)
        _app_traffic(state)
        _say("    the app's traffic still flows (checked); everything else into and out of foo is dropped;")
        _say("    the node reaches everything (kubelet probes). examples/foo-allow-list.yaml is a hand-written")
        _say("    allow list for the same app, looser than what was observed.\n")
        _say("[7] verdict flows, from the daemon's API (`enforcer flows --verdict denied`):")
        denied: list[str] = []
        only_denied = pb.StreamFlowsRequest(since_recent=True, verdict=pb.StreamFlowsRequest.VERDICT_FILTER_DENIED)
        client.stream_flows(stub, False, only_denied, out=denied.append)
        for line in denied[:4]:
            _say("    " + line)
        _say("\n[8] why? (`enforcer explain bar/client foo/web --port 80`, and foo/web -> foo/api on 81)")
        for src, dst, port in (("bar/client", "foo/web", 80), ("foo/web", "foo/api", 81)):
            text = client.show_explain(stub, False, pb.ExplainRequest(source=src, destination=dst, port=port))
            _say("\n".join("    " + line for line in text.splitlines()))
        _say(f"\n[9] cluster policy tiers: adding {', '.join(p.name for p in sorted(CLUSTER_EXAMPLES.glob('*.yaml')))}")
        _say("    Admin: bar may open no connection to any pod (no NetworkPolicy can override it);")
        _say("    Baseline: every namespace but foo is default-deny for ingress (its NetworkPolicies may open it)")
        for f in sorted(CLUSTER_EXAMPLES.glob("*.yaml")):
            shutil.copy(f, source / f"cluster-{f.name}")
        status = daemon.wait_synced(directory_revision(source))
        _say(f"    applied: {status['policy_entries']} policy entries, errors: {status['errors'] or 'none'}\n")
        _matrices(state)
        _say("    bar/client's row is empty (Admin Deny); bar/client's ingress is closed by the Baseline (foo/web's")
        _say("    egress by its own policy already); foo keeps its own NetworkPolicies (Baseline never applies")
        _say("    where one isolates).\n")
        _say("[10] which tier decided? (`enforcer explain foo/web bar/client --port 80`, bar/client -> foo/web)")
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
