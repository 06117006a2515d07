"""`enforcer` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .compiler.admission import MAX_ENTRIES_PER_POLICY_POD, MAX_PREFIXES_PER_POLICY, PREFIXES_PER_PASS
from .datapath.registry import map_size_fields
from .datapath.source import DEFAULT_PIN_DIR, DatapathConfig
from .errors import EnforcerError
from .history.store import DEFAULT_MAX_ROWS, DEFAULT_STATE_DIR
from .model.meta import AUDIT_ANNOTATION

DEFAULT_SOCKET = "/run/enforcer/enforcer.sock"

log = logging.getLogger("enforcer")


def _datapath_run(args: argparse.Namespace) -> int:
    """Load the programs, attach them to the named interfaces and stay up,
    logging verdict events, until SIGTERM/SIGINT. Leaving does not detach:
    enforcement stays in place for the next loader."""
    from .datapath.attach import TcAttacher
    from .datapath.events import EventReader, Verdict
    from .datapath.loadchild import load_pinned

    config = DatapathConfig(pin_dir=Path(args.pin_dir))
    loaded = load_pinned(config)  # compiled by a child process: no bcc here
    attacher = TcAttacher()
    for ifname in args.attach:
        attacher.attach(attacher.ifindex(ifname), loaded.fds)
        log.info("attached to %s", ifname)

    def on_event(v: Verdict) -> None:
        log.info("%s %s %s ep=%d %s:%d -> %s:%d proto=%d peer_id=%d rule=%d",
                 "ALLOW" if v.allowed else "DROP", v.reason.name if hasattr(v.reason, "name") else v.reason,
                 v.direction, v.endpoint_id, v.src, v.sport, v.dst, v.dport, v.proto,
                 v.peer_identity, v.rule_id)

    reader = EventReader(loaded.events_fd, on_event)
    stop = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    print("ready", flush=True)
    while not stop:
        reader.poll(200)
    log.info("stopping; programs stay attached")
    return 0


# --map-size names -> DatapathConfig fields (the registry's maps an option sizes).
MAP_SIZE_FIELDS = map_size_fields()


def _map_size(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in MAP_SIZE_FIELDS:
        raise argparse.ArgumentTypeError(f"expected MAP=ENTRIES with MAP one of {', '.join(sorted(MAP_SIZE_FIELDS))}")
    return MAP_SIZE_FIELDS[name], _positive(value)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _run(args: argparse.Namespace) -> int:
    """The node daemon."""
    from .compiler.admission import CompileLimits
    from .daemon.runtime import Daemon, DaemonConfig
    from .model.state import ClusterStore
    from .sources.directory import DirectorySource

    store = ClusterStore()
    config = DaemonConfig(node_name=args.node,
                          datapath=DatapathConfig(pin_dir=Path(args.pin_dir), mark_shift=args.mark_shift,
                                                  cache_dir=args.bpf_cache_dir, **dict(args.map_size or ())),
                          node_devices=tuple(args.node_device) if args.node_device else None,
                          revoke_established=not args.keep_established, audit_all=args.audit_all,
                          status_file=Path(args.status_file) if args.status_file else None,
                          limits=CompileLimits(max_prefixes_per_policy=args.max_prefixes_per_policy,
                                               max_entries_per_policy_pod=args.max_entries_per_policy_pod,
                                               prefixes_per_pass=args.prefixes_per_pass))
    # Flows go to the API (FlowHub); into the log only when asked: a line
    # per verdict would make the log as busy as the node's traffic.
    flows = logging.getLogger("enforcer.flows")
    if not args.log_flows:
        flows.setLevel(logging.WARNING)

    from .api.flows import FlowHub
    from .api.metrics import Metrics
    from .api.server import ApiServer, ServerConfig
    from .api.service import EnforcerService

    server_config = ServerConfig(
        socket=Path(args.socket) if args.socket else None, listen=args.listen,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None, tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None)
    server_config.validate()

    daemon = Daemon(config, store)
    hub = FlowHub(daemon.view)
    from .history.recorder import open_recorder

    history = open_recorder(args.state_dir, args.history_max_rows)

    from .api.client import flow_line

    def on_verdict(v) -> None:
        flow = hub.publish(v)
        history.offer(v, daemon.view())  # never blocks: a full queue costs the event (counted)
        if flows.isEnabledFor(logging.INFO):
            flows.info("%s", flow_line(flow))

    daemon.on_verdict = on_verdict
    metrics = Metrics()
    daemon.on_sync.append(metrics.sync_seconds.observe)
    metrics.attach(daemon, hub, history)
    if args.source == "kubernetes":
        from .sources.kubernetes import KubernetesSource, api_client

        k8s = api_client(args.kubeconfig)
        k8s_source = KubernetesSource(store, k8s)
        source: KubernetesSource | DirectorySource = k8s_source
        source_text = f"kubernetes:{k8s_source.host}"
    else:
        options: dict[str, Any] = {}
        if args.max_manifest_bytes is not None:
            options["max_manifest_bytes"] = args.max_manifest_bytes
        if args.poll_interval is not None:
            options["interval"] = args.poll_interval
        source = DirectorySource(Path(args.source), store, **options)
        source_text = f"directory:{Path(args.source).resolve()}"
    api = ApiServer(server_config, EnforcerService(daemon, hub, source_text, history=history))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # The source reads (its first read is most of a cold start's work) while
    # the datapath loads: a compile runs in a child process, a cached load
    # waits in the kernel's verifier. The first pass waits for both.
    history.start()
    source.start()
    daemon.start()
    api.start()
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_addr)
    while not daemon.synced.wait(0.2):
        daemon.check_loaded()  # raises what loading the datapath raised
        if stop.is_set():
            break
    api.set_serving(daemon.synced.is_set())
    log.info("enforcing on node %s from %s", args.node, args.source)
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    stop.wait()
    log.info("stopping; enforcement stays in place (enforcer cleanup removes it)")
    api.set_serving(False)
    source.stop()
    daemon.stop()
    api.stop()
    history.stop()  # after the events thread: what it offered is written
    return 0


def _datapath_detach(args: argparse.Namespace) -> int:
    from .datapath.attach import TcAttacher

    attacher = TcAttacher()
    for ifname in args.interfaces:
        attacher.detach(attacher.ifindex(ifname))
    return 0


def _datapath_show(args: argparse.Namespace) -> int:
    from .datapath.attach import TcAttacher
    from .datapath.maps import DatapathMaps, ct_key_text, policy_key_text

    with DatapathMaps(Path(args.pin_dir)) as maps:
        print("attachments:")
        for a in TcAttacher().attachments():
            print(f"  ifindex {a.ifindex} {a.hook}: {a.program}")
        print("ipcache:")
        for net, ident in sorted(maps.identities().items(), key=lambda kv: (kv[0].version, str(kv[0]))):
            print(f"  {net} -> {ident}")
        print("endpoints:")
        for ip, ep in maps.endpoints().items():
            print(f"  {ip}: id={ep.id} ifindex={ep.ifindex} identity={ep.identity} flags={ep.flags:#x}")
        print("policy:")
        for k, v in maps["policy"].items():
            audit = f" audit={v.audit_reason}/rule={v.audit_rule_id}" if v.audit_reason else ""
            print(f"  {policy_key_text(k)} reason={v.reason} rule={v.rule_id}{audit}")
        print("conntrack:")
        for k, v in maps.conntrack():
            print(f"  {ct_key_text(k)} origin={v.origin} flags={v.flags:#x} rule={v.rule_id}")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from .datapath.attach import TcAttacher
    from .datapath.loader import remove_pins

    attacher = TcAttacher()
    for a in {a.ifindex for a in attacher.attachments()}:
        attacher.detach(a)
    removed = remove_pins(DatapathConfig(pin_dir=Path(args.pin_dir)))
    print(f"removed programs from this network namespace and pins: {', '.join(removed) or 'none'}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from .lab.cluster import DEMO_SPEC, NODE_NAME, LabState, lab_down, lab_up, matrix

    if args.lab_command == "up":
        _, state = lab_up(args.prefix, Path(args.dir).resolve(), DEMO_SPEC)
        print(f"lab {args.prefix} is up; its Namespace and Pod manifests are in {state.source_dir}")
        for key, pod in state.pods.items():
            print(f"  pod {key:<12} {pod['ipv4']:<14} {pod['ipv6']:<18} netns {pod['netns']}")
        for name, ext in state.externals.items():
            print(f"  external {name:<7} {ext['ipv4']:<14} {ext['ipv6']:<18} netns {ext['netns']}")
        print(f"run the daemon in its node:\n  nsenter --net=/run/netns/{state.node_netns} "
              f"{sys.executable} -m enforcer run --source {state.source_dir} --node {NODE_NAME}")
    elif args.lab_command == "probe":
        state = LabState.load(args.prefix)
        for proto in args.proto.split(","):
            for port in (int(p) for p in args.port.split(",")):
                print(matrix(state, port, proto, args.family))
                print()
    else:
        lab_down(args.prefix)
        print(f"lab {args.prefix} removed")
    return 0


def _api(args: argparse.Namespace) -> int:
    from .api import client
    from .v1 import enforcer_pb2 as pb

    stub = client.connect(Path(args.socket))
    if args.command == "status":
        print(client.show_status(stub, args.json))
    elif args.command == "endpoints":
        print(client.show_endpoints(stub, args.json))
    elif args.command == "policies":
        print(client.show_policies(stub, args.json))
    elif args.command == "counters":
        print(client.show_counters(stub, args.json, args.namespace or "", args.pod or ""))
    elif args.command == "flows":
        verdict = {"all": pb.StreamFlowsRequest.VERDICT_FILTER_ALL,
                   "allowed": pb.StreamFlowsRequest.VERDICT_FILTER_ALLOWED,
                   "denied": pb.StreamFlowsRequest.VERDICT_FILTER_DENIED,
                   "audit": pb.StreamFlowsRequest.VERDICT_FILTER_AUDIT}[args.verdict]
        flows_req = pb.StreamFlowsRequest(namespace=args.namespace or "", pod=args.pod or "", verdict=verdict,
                                          since_recent=True, follow=args.follow, tier=args.tier or "")
        try:
            client.stream_flows(stub, args.json, flows_req, out=lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            pass
    elif args.command == "explain":
        explain_req = pb.ExplainRequest(source=args.source, destination=args.destination, protocol=args.protocol,
                                        port=args.port)
        print(client.show_explain(stub, args.json, explain_req))
    elif args.command == "diagnose":
        text, code = client.show_diagnose(stub, args.json)
        print(text)
        return code
    return 0


def _history(args: argparse.Namespace) -> int:
    """`enforcer history` and `enforcer suggest`: read every daemon's history, list or suggest."""
    from .api import history_client as hc
    from .history.duration import parse_duration

    since = time.time() - parse_duration(args.since) if args.since else 0.0
    namespaces = args.namespace or []
    tls = hc.Tls(Path(args.tls_ca) if args.tls_ca else None, Path(args.tls_cert) if args.tls_cert else None,
                 Path(args.tls_key) if args.tls_key else None, args.tls_server_name or "")
    found = hc.sources(args.socket or [], args.address or [], tls, Path(DEFAULT_SOCKET))
    # One namespace is filtered by each daemon; several are read whole and filtered here.
    histories = hc.read_histories(found, namespaces[0] if len(namespaces) == 1 else "", since)
    hc.warn_losses(histories, lambda line: print(line, file=sys.stderr))
    if args.command == "suggest":
        print(hc.suggest_yaml(histories, namespaces, audit=not args.enforce, since_text=args.since or ""), end="")
    else:
        print(hc.show_history(histories, args.json, namespaces))
    return 0


def _duration(text: str) -> str:
    from .history.duration import parse_duration

    try:
        parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _add_history_sources(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--since", type=_duration, metavar="DURATION",
                     help="only flows last seen this recently: 90s, 30m, 1h, 2d, 1w, 1h30m (default: all)")
    cmd.add_argument("--socket", action="append", metavar="PATH",
                     help=f"a daemon's API socket; repeatable (default {DEFAULT_SOCKET} when no --socket or "
                          "--address is given)")
    cmd.add_argument("--address", action="append", metavar="HOST:PORT",
                     help="a daemon's TLS API (enforcer run --listen); repeatable: the histories are merged")
    cmd.add_argument("--tls-ca", metavar="FILE", help="with --address: the CA of the daemons' certificates "
                                                       "(default: the system's roots)")
    cmd.add_argument("--tls-cert", metavar="FILE", help="with --address: this client's certificate, for daemons "
                                                         "that require one (--tls-client-ca)")
    cmd.add_argument("--tls-key", metavar="FILE", help="with --tls-cert: its key")
    cmd.add_argument("--tls-server-name", metavar="NAME",
                     help="with --address: the name the daemons' certificates carry, if not the address's host")
    cmd.set_defaults(func=_history)


def _demo(args: argparse.Namespace) -> int:
    from .lab.demo import run_demo

    return run_demo()


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enforcer", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run the node daemon")
    run_p.add_argument("--source", default="kubernetes",
                       help="'kubernetes' (the API: in-cluster config, else --kubeconfig) or a directory of manifests")
    run_p.add_argument("--kubeconfig", help="kubeconfig for --source kubernetes outside a cluster")
    run_p.add_argument("--max-manifest-bytes", type=_positive_int, metavar="N",
                       help="with a directory --source: a manifest file larger than this is not read and is "
                            "reported as invalid (default 8388608, 8 MiB)")
    run_p.add_argument("--poll-interval", type=_positive_float, metavar="SECONDS",
                       help="with a directory --source: poll it this often; a changed file is read once it has "
                            "held still for one poll (default 0.1)")
    run_p.add_argument("--node", required=True, help="this node's name (spec.nodeName of local pods)")
    run_p.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR))
    run_p.add_argument("--bpf-cache-dir", metavar="DIR",
                       help="where compiled BPF bytecode is kept, so that a restart with the same source, "
                            "settings, kernel and bcc loads it without compiling ('' for no cache; default "
                            "$ENFORCER_BPF_CACHE_DIR, else /var/cache/enforcer/bpf)")
    run_p.add_argument("--node-device", action="append", metavar="IFNAME",
                       help="a node interface (uplink, overlay, bridge) where a pod's packet to a Service "
                            "leaves after DNAT; repeatable (default: every interface but loopback and the pods')")
    run_p.add_argument("--mark-shift", type=int, default=20,
                       help="skb->mark bits [N, N+10) carry a Service packet's sender until it is judged "
                            "after DNAT; no other component may use them (default 20: 0x3ff00000)")
    run_p.add_argument("--log-flows", action="store_true",
                       help="also write every verdict flow into the log (at most the datapath's event rate, "
                            "1000 a second by default); `enforcer flows` reads them from the API either way")
    run_p.add_argument("--audit-all", action="store_true",
                       help="put every NetworkPolicy and cluster policy in audit mode: judged and reported as "
                            "audit verdicts (`enforcer flows --verdict audit`), nothing enforced, as if each "
                            f"carried the annotation {AUDIT_ANNOTATION}: \"true\"")
    run_p.add_argument("--keep-established", action="store_true",
                       help="do not cut tracked connections that policy no longer allows (an Admin-tier "
                            "cluster policy Deny still cuts them)")
    run_p.add_argument("--map-size", action="append", type=_map_size, metavar="MAP=ENTRIES",
                       help="capacity of a BPF map, fixed when it is first pinned (a pinned map of another size "
                            "is refused until `enforcer cleanup`); repeatable. MAP is one of "
                            + ", ".join(sorted(MAP_SIZE_FIELDS)))
    run_p.add_argument("--max-prefixes-per-policy", type=_positive, default=MAX_PREFIXES_PER_POLICY,
                       help="a NetworkPolicy naming more ipBlock prefixes (cidrs and excepts) is enforced "
                            "fail-closed: it isolates, allows nothing, and is reported "
                            f"(default {MAX_PREFIXES_PER_POLICY})")
    run_p.add_argument("--max-entries-per-policy-pod", type=_positive, default=MAX_ENTRIES_PER_POLICY_POD,
                       help="a NetworkPolicy compiling to more policy map entries for one local pod allows "
                            f"that pod nothing and is reported (default {MAX_ENTRIES_PER_POLICY_POD})")
    run_p.add_argument("--prefixes-per-pass", type=_positive, default=PREFIXES_PER_PASS,
                       help="new ipBlock prefixes one sync pass takes in; a policy needing more waits, its "
                            "previous version in force, while they are staged, so that it never delays "
                            f"other changes by more than one such pass (default {PREFIXES_PER_PASS})")
    run_p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), metavar="DIR",
                       help="keep the flow history (history.db) here, across restarts; created 0700 when missing "
                            f"('' for no history; default {DEFAULT_STATE_DIR})")
    run_p.add_argument("--history-max-rows", type=_positive, default=DEFAULT_MAX_ROWS, metavar="N",
                       help="rows the flow history keeps; past it, those seen longest ago go first "
                            f"(default {DEFAULT_MAX_ROWS}; a row with its indexes takes about 300 bytes, "
                            "at most about 5 KiB)")
    run_p.add_argument("--ready-file", help="write this file after the first sync")
    run_p.add_argument("--status-file", help="write JSON status here after every sync pass")
    run_p.add_argument("--socket", default=str(DEFAULT_SOCKET), help="API unix socket ('' for none)")
    run_p.add_argument("--listen", help="also serve the API on HOST:PORT over TLS")
    run_p.add_argument("--tls-cert")
    run_p.add_argument("--tls-key")
    run_p.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    run_p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port")
    run_p.add_argument("--metrics-addr", default="0.0.0.0")
    run_p.set_defaults(func=_run)

    dp = sub.add_parser("datapath", help="low-level datapath operations")
    dsub = dp.add_subparsers(dest="datapath_command", required=True)
    run = dsub.add_parser("run", help="load, attach and stay up logging verdicts")
    run.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR))
    run.add_argument("--attach", action="append", default=[], metavar="IFNAME")
    run.add_argument("--ready-file", help="write this file once attached")
    run.set_defaults(func=_datapath_run)
    det = dsub.add_parser("detach", help="remove the programs from interfaces")
    det.add_argument("interfaces", nargs="+")
    det.set_defaults(func=_datapath_detach)
    show = dsub.add_parser("show", help="dump attachments and map contents")
    show.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR))
    show.set_defaults(func=_datapath_show)

    clean = sub.add_parser("cleanup", help="remove programs (this netns) and pins")
    clean.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR))
    clean.set_defaults(func=_cleanup)

    api_cmds = []
    for name, text in (("status", "the daemon's state"), ("endpoints", "local endpoints"),
                       ("policies", "network policies and cluster policies, and what they compiled to"),
                       ("counters", "verdict counters per endpoint"), ("flows", "verdict flows"),
                       ("explain", "why a connection is allowed or denied")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--socket", default=str(DEFAULT_SOCKET))
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
        cmd.set_defaults(func=_api)
        api_cmds.append(cmd)
    for cmd in (sub.choices["counters"], sub.choices["flows"]):
        cmd.add_argument("--namespace")
        cmd.add_argument("--pod")
    sub.choices["flows"].add_argument("--follow", "-f", action="store_true", help="keep streaming")
    sub.choices["flows"].add_argument("--verdict", choices=("all", "allowed", "denied", "audit"), default="all",
                                      help="audit: flows that passed though a policy in audit mode would drop them")
    sub.choices["flows"].add_argument("--tier", choices=("Admin", "Baseline", "NetworkPolicy"),
                                      help="only flows this tier decided (an Admin or Baseline cluster policy, "
                                           "or NetworkPolicy)")
    explain_cmd = sub.choices["explain"]
    explain_cmd.add_argument("source", help="IP or namespace/pod")
    explain_cmd.add_argument("destination", help="IP or namespace/pod")
    explain_cmd.add_argument("--protocol", default="TCP")
    explain_cmd.add_argument("--port", type=int, default=0)

    diagnose_cmd = sub.add_parser(
        "diagnose", help="configurations that cannot do what they seem to mean (the NodePort SNAT trap)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Report what the daemon's objects configure that cannot work as meant. snat-trap: a\n"
        "NodePort/LoadBalancer Service with externalTrafficPolicy Cluster whose backends a NetworkPolicy\n"
        "admits by ipBlock. kube-proxy SNATs external clients to the node's address, so the ipBlock\n"
        "denies the clients it allows (it holds no node address) or admits every client through any\n"
        "node (it holds them). Fix: externalTrafficPolicy: Local on the Service.",
        epilog="exit status: 0 no problems found; 3 problems found (printed); 1 the daemon could not be\n"
        "asked (as for every command); 2 usage error.")
    diagnose_cmd.add_argument("--socket", default=str(DEFAULT_SOCKET))
    diagnose_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    diagnose_cmd.set_defaults(func=_api)

    history_cmd = sub.add_parser("history", help="the flow history: connections local pods made and received")
    history_cmd.add_argument("--namespace", action="append", metavar="NS",
                             help="only local pods of this namespace; repeatable")
    history_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    _add_history_sources(history_cmd)
    suggest_cmd = sub.add_parser(
        "suggest", help="least-privilege NetworkPolicies (YAML) from the flow history",
        description="Print NetworkPolicies allowing exactly the traffic the daemons' flow histories saw for the "
                    "namespace's pods: one per workload (distinct stable labels), ingress and egress, DNS to "
                    f"kube-dns, and a default deny for the namespace. They carry {AUDIT_ANNOTATION}: \"true\" "
                    "unless --enforce: apply them in audit mode first.")
    suggest_cmd.add_argument("--namespace", action="append", required=True, metavar="NS",
                             help="the namespace to suggest policies for; repeatable")
    suggest_cmd.add_argument("--enforce", action="store_true",
                             help="leave out the audit annotation: the policies are enforced once applied")
    _add_history_sources(suggest_cmd)

    lab = sub.add_parser("lab", help="a lab cluster in network namespaces")
    lsub = lab.add_subparsers(dest="lab_command", required=True)
    up = lsub.add_parser("up", help="build the lab and write its manifests")
    up.add_argument("--dir", required=True, help="directory for the lab's Namespace and Pod manifests")
    probe = lsub.add_parser("probe", help="print the connectivity matrix")
    probe.add_argument("--port", default="80,81")
    probe.add_argument("--proto", default="tcp")
    probe.add_argument("--family", type=int, choices=(4, 6), default=4)
    lsub.add_parser("down", help="remove the lab")
    for lab_cmd in (up, probe, lsub.choices["down"]):
        lab_cmd.add_argument("--prefix", default="enflab", help="name of the lab (netns prefix)")
    lab.set_defaults(func=_lab)

    demo = sub.add_parser("demo", help="run the demo on the embedded default")
    demo.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EnforcerError as e:
        print(f"enforcer: {e}", file=sys.stderr)
        return 1
