"""The real node daemon (`enforcer run`, a child process in the lab's node
namespace) on a lab, driven through manifest files as a cluster would be.

A DaemonLab owns everything it makes, and close() removes all of it, step by
step even when a step fails: the daemon process, the namespaces (with the
servers in them, the veths and any tc filter on them), the pins, the
manifest and work directories.

Every change to the manifests is followed by sync(): wait until the daemon's
status file says it has applied exactly the directory's content revision, so
no probe races a sync.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from enforcer.datapath.attach import TcAttacher
from enforcer.datapath.layout import CtEntry, CtKey, EndpointInfo, addr_from_bytes
from enforcer.datapath.loader import FROM_POD, TO_NETWORK, TO_POD, remove_pins
from enforcer.datapath.maps import DatapathMaps
from enforcer.datapath.source import DatapathConfig
from enforcer.lab.loader import DaemonProcess
from enforcer.lab.netns import entered, netns_path
from enforcer.lab.probe import Outcome, ProbeResult, ProbeSpec, connect_tcp, probe, probe_many
from enforcer.lab.topology import ROUTED, Lab
from enforcer.sources.directory import directory_revision
from tests.lab.flows import Flow  # one flow table for lab and daemon tests
from tests.support.fast import FAST_POLL

log = logging.getLogger(__name__)

NODE_NAME = "lab-node"
NAMESPACE = "default"
PIN_ROOT = Path("/sys/fs/bpf")
PIN_PREFIX = "enforcer-daemontest-"

OK = Outcome.OK
DENIED = Outcome.TIMEOUT   # dropped: nothing comes back
DENY_TIMEOUT = 1.0
PASS_TIMEOUT = 3.0
LABELS = {OK: "ok", DENIED: "denied (no answer)", Outcome.REFUSED: "refused", Outcome.ERROR: "error"}


# -- manifests ---------------------------------------------------------------

def pod_peer(name: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"pod": name}}}


def ports(*specs: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"protocol": proto.upper(), "port": port} for proto, port in specs]


def policy(name: str, selects: str | None, *, ingress: list | None = None, egress: list | None = None,
           types: Sequence[str] | None = None) -> dict[str, Any]:
    """A NetworkPolicy in the lab's namespace selecting pod `selects` (None:
    every pod). ingress/egress: lists of rules (None: no rules)."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"pod": selects}} if selects else {}}
    if types is None:
        types = (["Ingress"] if ingress is not None or egress is None else []) + (["Egress"] if egress is not None else [])
    spec["policyTypes"] = list(types)
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def allow_from(pod: str, *port_specs: tuple[str, int]) -> dict[str, Any]:
    """One ingress rule: from `pod` on these ports."""
    rule: dict[str, Any] = {"from": [pod_peer(pod)]}
    if port_specs:
        rule["ports"] = ports(*port_specs)
    return rule


def allow_to(pod: str, *port_specs: tuple[str, int]) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": [pod_peer(pod)]}
    if port_specs:
        rule["ports"] = ports(*port_specs)
    return rule


# -- flows -------------------------------------------------------------------

# -- the lab with its daemon -------------------------------------------------

POD_PROGRAMS = (f"enforcer_{FROM_POD}", f"enforcer_{TO_POD}")
NODE_PROGRAMS = (f"enforcer_{TO_NETWORK}",)


class DaemonLab:
    def __init__(self, prefix: str, pods: Sequence[str], pin_dir: Path, mode: str = ROUTED,
                 labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        if not str(pin_dir).startswith(str(PIN_ROOT / PIN_PREFIX)):
            raise ValueError(f"pin dir {pin_dir} is not a daemon test's")
        self.lab = Lab(prefix, pods, mode=mode)
        self.pin_dir = Path(pin_dir)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{PIN_PREFIX}{os.getpid()}-{prefix}-"))
        self.source = self.workdir / "manifests"
        self.daemon: DaemonProcess | None = None
        self.daemon_args: list[str] = []
        self._maps: DatapathMaps | None = None
        self.labels: dict[str, dict[str, str]] = {}
        self.uids: dict[str, str] = {}
        self.addresses: dict[str, tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]] = {}
        self.manifest_pods: list[str] = []  # lab pods the manifests list
        self.pod_namespaces: dict[str, str] = {}  # pods not in NAMESPACE (write_cluster after a change)
        for name in pods:
            self._name_pod(name, labels.get(name) if labels else None)

    def _name_pod(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        pod = self.lab.pod(name)  # kept: the pod may leave the lab before the manifests
        self.addresses[name] = (pod.ipv4, pod.ipv6)
        self.labels[name] = dict(labels) if labels else {"pod": name}
        self.uids[name] = str(uuid.uuid4())  # a new pod object: a new uid
        self.manifest_pods.append(name)

    # -- lifecycle --

    def start(self, daemon_args: Sequence[str] = ()) -> DaemonLab:
        try:
            Lab.cleanup_stale(self.lab.prefix)
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            (self.source / "policies").mkdir(parents=True)
            self.lab.up()
            self.write_cluster()
            self.start_daemon(daemon_args)
        except BaseException:
            self.close()
            raise
        return self

    def start_daemon(self, args: Sequence[str] = (), sync: bool = True) -> DaemonProcess:
        if self.daemon is None:
            self.daemon = DaemonProcess(self.lab.node_netns, self.pin_dir, self.source, NODE_NAME,
                                        workdir=self.workdir / "daemon")
        self.daemon_args = list(args)  # what the test asked for (FAST_POLL goes first)
        self.daemon.extra_args = [*FAST_POLL, *args]
        self.daemon.status_file.unlink(missing_ok=True)  # the status we wait for is the new process's
        self.daemon.start()
        if sync:
            self.sync()
        return self.daemon

    def close(self) -> None:
        errors: list[BaseException] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as e:  # keep going: every later step still runs
                log.error("daemon lab cleanup: %s failed: %s", what, e)
                errors.append(e)

        if self._maps is not None:
            step("closing maps", self._maps.close)
            self._maps = None
        if self.daemon is not None:
            step("stopping daemon", self.daemon.close)
        step("deleting namespaces", self.lab.down)
        step("removing pins", self._remove_pins)
        step("removing files", lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        if errors:
            raise errors[0]

    def _remove_pins(self) -> None:
        if self.pin_dir.exists():
            remove_pins(DatapathConfig(pin_dir=self.pin_dir))
            shutil.rmtree(self.pin_dir, ignore_errors=True)

    # -- manifests --

    def _write(self, rel: str, content: str) -> None:
        path = self.source / rel
        tmp = path.with_name("." + path.name)
        tmp.write_text(content)
        tmp.replace(path)  # atomic, as a careful writer does

    def _pod_manifest(self, name: str) -> dict[str, Any]:
        v4, v6 = self.addresses[name]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.pod_namespaces.get(name, NAMESPACE), "uid": self.uids[name],
                         "labels": self.labels[name]},
            "spec": {"nodeName": NODE_NAME, "containers": [{"name": "server", "image": "lab"}]},
            "status": {"phase": "Running", "podIP": str(v4), "podIPs": [{"ip": str(v4)}, {"ip": str(v6)}]},
        }

    def write_cluster(self) -> None:
        namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}
                      for ns in sorted({NAMESPACE, *self.pod_namespaces.values()})]
        pods = [self._pod_manifest(n) for n in self.manifest_pods]
        self._write("cluster.yaml", yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [*namespaces, *pods]}))

    def write_policy(self, obj: Mapping[str, Any] | str, name: str | None = None) -> None:
        """A policy file (a dict is dumped as YAML; a str is written as is)."""
        if isinstance(obj, str):
            assert name is not None
            self._write(f"policies/{name}.yaml", obj)
        else:
            self._write(f"policies/{name or obj['metadata']['name']}.yaml", yaml.safe_dump(dict(obj)))

    def write_policies(self, objs: Iterable[Mapping[str, Any]]) -> None:
        for obj in objs:
            self.write_policy(obj)

    def remove_policy(self, name: str) -> None:
        (self.source / "policies" / f"{name}.yaml").unlink()

    def clear_policies(self) -> None:
        for f in (self.source / "policies").iterdir():
            f.unlink()

    def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        self.labels[name] = dict(labels)
        self.write_cluster()

    def add_pod(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """A new pod: in the lab (namespace, veth, server), then in the manifests."""
        self.lab.add_pod(name)
        self._name_pod(name, labels)
        self.write_cluster()

    def drop_from_manifests(self, name: str) -> None:
        self.manifest_pods.remove(name)
        self.write_cluster()

    def revision(self) -> str:
        return directory_revision(self.source)

    def sync(self, allow_unplaced: bool = False, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the daemon has applied the directory as it is now and
        (unless allow_unplaced) found every local pod's interface: a pass
        can end with a pod unplaced while its neighbour entry is resolved
        (bridge mode); the retry a moment later places it."""
        assert self.daemon is not None
        revision = self.revision()
        status = self.daemon.wait_synced(revision, timeout=timeout)
        if allow_unplaced:
            return status
        deadline = time.monotonic() + 5.0
        while status.get("unplaced") or status.get("source_revision") != revision:
            if time.monotonic() > deadline:
                raise AssertionError(f"pods without interface: {status.get('unplaced')}\n{self.daemon.log_tail(20)}")
            time.sleep(0.05)
            status = self.daemon.status()
        return status

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        while True:
            st = self.daemon.status()
            if st and pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"status never got there: {st}\n{self.daemon.log_tail(20)}")
            time.sleep(0.05)

    # -- what the kernel holds --

    @property
    def maps(self) -> DatapathMaps:
        if self._maps is None:
            self._maps = DatapathMaps(self.pin_dir)
        return self._maps

    def attachments(self, programs: tuple[str, ...] = POD_PROGRAMS) -> dict[int, set[str]]:
        """ifindex -> hooks carrying our `programs` (by default a pod
        interface's two), in the node namespace."""
        out: dict[int, set[str]] = {}
        with entered(self.lab.node_netns):  # no pyroute2 fork (see LabSession)
            for a in TcAttacher().attachments():
                if a.program in programs:
                    out.setdefault(a.ifindex, set()).add(a.hook)
        return out

    def node_attachments(self) -> dict[int, set[str]]:
        """ifindex -> hooks carrying to_network (the node's interfaces)."""
        return self.attachments(NODE_PROGRAMS)

    def all_attachments(self) -> dict[int, set[str]]:
        return self.attachments(POD_PROGRAMS + NODE_PROGRAMS)

    def attached_programs(self) -> dict[tuple[int, str], int]:
        with entered(self.lab.node_netns):
            return {(a.ifindex, a.hook): a.prog_id for a in TcAttacher().attachments()}

    def endpoints(self) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, EndpointInfo]:
        return self.maps.endpoints()

    def ipcache(self) -> dict:  # type: ignore[type-arg]
        return self.maps.identities()

    def conntrack_of(self, name: str, endpoint_id: int | None = None) -> list[tuple[CtKey, CtEntry]]:
        """Conntrack entries whose pod side is this pod's address (or whose
        endpoint id is endpoint_id)."""
        addrs = set(self.addresses[name])
        return [(k, v) for k, v in self.maps.conntrack()
                if addr_from_bytes(k.family, k.pod) in addrs or v.endpoint_id == endpoint_id]

    def endpoint_id(self, name: str) -> int:
        eps = self.endpoints()
        ids = {eps[ip].id for ip in self.addresses[name] if ip in eps}
        assert len(ids) == 1, f"pod {name}: endpoint entries {ids}"
        return ids.pop()

    def node_cli(self, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """`enforcer ARGS` in the node namespace (nsenter keeps /sys/fs/bpf)."""
        return subprocess.run(["nsenter", f"--net={netns_path(self.lab.node_netns)}", sys.executable,
                               "-m", "enforcer", *args], capture_output=True, text=True, timeout=60)

    # -- traffic --

    def check_flows(self, table: Sequence[Flow], family: int, attempts: int = 1) -> None:
        """Probe every flow concurrently; assert each has its outcome. A
        mismatch is re-probed up to attempts-1 more times before it counts."""
        pending = list(table)
        wrong: list[str] = []
        for _ in range(attempts):
            specs = [ProbeSpec(self.lab.netns_of(f.src), self.lab.pod(f.dst).ip(family), f.port, f.proto, None,
                               DENY_TIMEOUT if f.expect is DENIED else PASS_TIMEOUT) for f in pending]
            wrong, again = [], []
            for flow, res in zip(pending, probe_many(specs), strict=False):
                if res.outcome is not flow.expect:
                    wrong.append(f"{flow.text(family)}: expected {LABELS[flow.expect]}, "
                                 f"got {LABELS[res.outcome]} {res.detail}".rstrip())
                    again.append(flow)
                elif res.ok and res.answered_by != flow.dst:
                    wrong.append(f"{flow.text(family)}: answered by {res.answered_by!r}")
                    again.append(flow)
            if not again:
                return
            pending = again
        log_tail = self.daemon.log_tail(15) if self.daemon else ""
        raise AssertionError("connectivity differs from the table:\n  " + "\n  ".join(wrong)
                             + "\ndaemon log:\n" + log_tail)


# -- traffic watched through faults --------------------------------------------
#
# A Prober keeps opening new connections on a set of flows and keeps
# exchanging lines on long-lived TCP streams, in threads, while a test kills
# and restarts the daemon or changes policy. Every probe and every line is
# recorded with when it started; check() holds each against what policy
# says at that moment. What policy says can change: change() records when
# new expectations were written, and Change.applied when the daemon reported
# them applied. In between, either outcome is right (a dead daemon changes
# nothing in the kernel), before it the old expectation holds, after it the
# new one, with no exception.

# An allowed probe fails when it is not answered at all, or when TCP had to
# retransmit to get its answer (a SYN, SYN-ACK or segment was lost): drops,
# not slowness, so this timeout is only a guard against a hang. A UDP probe
# that is dropped is never answered.
ALLOWED_TIMEOUT = 10.0
DENIED_TIMEOUT = 0.4    # silence this long: the probe was dropped (a pass answers in ms)
PROBE_INTERVAL = 0.05
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
    except TimeoutError:
        return ProbeResult(Outcome.TIMEOUT), 0
    except ConnectionRefusedError:
        return ProbeResult(Outcome.REFUSED), 0
    except OSError as e:
        return ProbeResult(Outcome.ERROR, detail=str(e)), 0
    with s:
        return ProbeResult(Outcome.OK, greeting.partition(" ")[0]), total_retrans(s)


@dataclass(frozen=True)
class Stream:
    """A long-lived TCP connection from pod src to pod dst's port: one line
    out, its echo back, every interval."""

    src: str
    dst: str
    port: int = 80
    family: int = 4

    def text(self) -> str:
        return f"stream {self.src} -> {self.dst} tcp/{self.port} IPv{self.family}"


@dataclass
class ProbeRecord:
    flow: Flow
    family: int
    started: float   # time.monotonic()
    ended: float
    result: ProbeResult
    retransmits: int


@dataclass
class Exchange:
    """Line n of a stream: when it was sent, when its echo came back (None:
    never, as far as the prober saw; a late echo is still recorded)."""

    stream: Stream
    n: int
    sent: float
    deadline: float
    answered: float | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.answered is not None or self.error is not None


@dataclass
class Change:
    """New expectations for some flows and streams, written at `written`;
    in force from `applied` (set by the test once the daemon reports the
    revision that carries them)."""

    flows: dict[tuple[Flow, int], Outcome]
    streams: dict[Stream, bool]
    written: float
    applied: float | None = None

    def mark_applied(self) -> None:
        self.applied = time.monotonic()


class Prober:
    """Every interval, one probe (a new connection, or a UDP exchange) of
    each watched flow, run concurrently (a denied one waits DENIED_TIMEOUT),
    and one line on each stream, until stop()."""

    def __init__(self, env: DaemonLab, watched: Sequence[tuple[Flow, int]],
                 streams: Sequence[Stream] = (Stream("a", "b"),), interval: float = PROBE_INTERVAL) -> None:
        self.env = env
        self.watched = list(watched)
        self.streams = list(streams)
        self.interval = interval
        self.results: list[ProbeRecord] = []
        self.exchanges: dict[Stream, dict[int, Exchange]] = {s: {} for s in self.streams}
        self.changes: list[Change] = []
        self.notes: list[tuple[float, str]] = []
        self.retransmits: dict[Stream, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=128)
        self._futures: list[Future] = []  # type: ignore[type-arg]
        self._conns: dict[Stream, socket.socket] = {}
        self._retrans0: dict[Stream, int] = {}
        lab = env.lab
        try:
            for s in self.streams:
                conn, greeting = connect_tcp(lab.pod(s.src).netns, lab.pod(s.dst).ip(s.family), s.port,
                                             timeout=ALLOWED_TIMEOUT)
                self._conns[s] = conn
                assert greeting == s.dst, f"{s.text()}: greeted by {greeting!r}"
                self._retrans0[s] = total_retrans(conn)
        except BaseException:
            for conn in self._conns.values():
                conn.close()
            raise
        self._threads = [threading.Thread(target=self._probe_loop, daemon=True)]
        self._threads += [threading.Thread(target=self._stream_loop, args=(s,), daemon=True) for s in self.streams]
        self.t0 = time.monotonic()

    # -- what is expected when --

    def change(self, flows: Mapping[tuple[Flow, int], Outcome] | None = None,
               streams: Mapping[Stream, bool] | None = None) -> Change:
        """Call just before writing the policy that changes these
        expectations; mark_applied() the result once the daemon reports it."""
        ch = Change(dict(flows or {}), dict(streams or {}), time.monotonic())
        self.changes.append(ch)
        self.note("policy written: " + ", ".join([f.text(fam) for f, fam in ch.flows]
                                                 + [s.text() for s in ch.streams]))
        return ch

    def expected(self, flow: Flow, family: int, at: float) -> Outcome | None:
        """What a probe of flow started at `at` must get (None: either)."""
        out: Outcome | None = flow.expect
        for ch in self.changes:
            if (flow, family) not in ch.flows or at < ch.written:
                continue
            if ch.applied is None or at < ch.applied:
                return None
            out = ch.flows[(flow, family)]
        return out

    def stream_expected(self, stream: Stream, at: float) -> bool | None:
        """Whether a line sent on stream at `at` must be echoed (None: either)."""
        out: bool | None = True
        for ch in self.changes:
            if stream not in ch.streams or at < ch.written:
                continue
            if ch.applied is None or at < ch.applied:
                return None
            out = ch.streams[stream]
        return out

    def note(self, what: str) -> float:
        """Record an event of the test (kill, restart, ...) for the report."""
        at = time.monotonic()
        self.notes.append((at, what))
        return at

    # -- running --

    def start(self) -> Prober:
        self.note("prober started")
        for t in self._threads:
            t.start()
        return self

    def _probe_one(self, flow: Flow, family: int) -> None:
        lab = self.env.lab
        started = time.monotonic()
        timeout = ALLOWED_TIMEOUT if self.expected(flow, family, started) is OK else DENIED_TIMEOUT
        res, retrans = probe_counting_retransmits(lab.netns_of(flow.src), lab.pod(flow.dst).ip(family),
                                                  flow.port, flow.proto, timeout)
        with self._lock:
            self.results.append(ProbeRecord(flow, family, started, time.monotonic(), res, retrans))

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            tick = time.monotonic()
            for flow, family in self.watched:
                self._futures.append(self._pool.submit(self._probe_one, flow, family))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def _stream_loop(self, stream: Stream) -> None:
        conn = self._conns[stream]
        mine = self.exchanges[stream]
        buf = b""
        n = 0
        while not self._stop.is_set():
            tick = time.monotonic()
            n += 1
            timeout = ALLOWED_TIMEOUT if self.stream_expected(stream, tick) else DENIED_TIMEOUT
            ex = Exchange(stream, n, tick, tick + timeout)
            with self._lock:
                mine[n] = ex
            try:
                conn.sendall(f"n{n} {'x' * 200}\n".encode())
                while not ex.done:  # read echoes (late ones of earlier lines too) until ours
                    left = ex.deadline - time.monotonic()
                    if left <= 0:
                        ex.error = "no answer"
                        break
                    conn.settimeout(left)
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        ex.error = "closed by peer"
                        break
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self._echo(mine, stream, line.decode(errors="replace"))
            except OSError as e:
                ex.error = repr(e)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def _echo(self, mine: dict[int, Exchange], stream: Stream, line: str) -> None:
        name, _, rest = line.partition(" ")
        tag = rest.partition(" ")[0]
        ex = mine.get(int(tag[1:])) if tag[:1] == "n" and tag[1:].isdigit() else None
        if ex is None or name != stream.dst:
            bad = Exchange(stream, -1, time.monotonic(), 0.0, error=f"unexpected line {line[:40]!r}")
            with self._lock:
                mine[-len(mine) - 1] = bad
            return
        ex.answered = time.monotonic()

    def wait_covered(self, since: float, timeout: float = 30.0) -> None:
        """Wait until every watched flow has a probe started at or after
        `since` and finished, and every stream a line sent since then and
        answered or given up on: traffic was watched from `since` to now."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                flows = {(r.flow, r.family) for r in self.results if r.started >= since}
                streams = {s for s, exs in self.exchanges.items()
                           if any(e.sent >= since and e.done for e in exs.values())}
            missing = [f.text(fam) for f, fam in self.watched if (f, fam) not in flows]
            missing += [s.text() for s in self.streams if s not in streams]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no traffic watched since +{since - self.t0:.3f}s on: {missing}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.note("prober stopped")
        self._stop.set()
        for t in self._threads:
            t.join(timeout=ALLOWED_TIMEOUT + 5)
        for fut in self._futures:
            fut.result()
        self._pool.shutdown()
        for s, conn in self._conns.items():
            try:
                self.retransmits[s] = total_retrans(conn) - self._retrans0[s]
            finally:
                conn.close()

    # -- verdict --

    def _at(self, t: float) -> str:
        return f"+{t - self.t0:7.3f}s"

    def timeline(self) -> str:
        return "\n".join(f"  {self._at(at)} {what}" for at, what in self.notes)

    def check(self, min_probes: int = 1) -> None:
        """Every probe and every line as expected when it started; each flow
        probed and each stream exercised at least min_probes times; a stream
        that had to pass throughout never retransmitted."""
        wrong: list[tuple[float, str]] = []
        for r in self.results:
            exp = self.expected(r.flow, r.family, r.started)
            res = r.result
            if exp is None:
                continue
            if exp is OK and not (res.ok and res.answered_by == r.flow.dst and r.retransmits == 0):
                got = f"answered by {res.answered_by}" if res.ok else f"{res.outcome.value} {res.detail}".rstrip()
                if res.ok and r.retransmits:
                    got += f" only after {r.retransmits} TCP retransmission(s): a packet was lost"
                wrong.append((r.started, f"{r.flow.text(r.family)}: expected ok, got {got}"))
            elif exp is DENIED and res.outcome is not Outcome.TIMEOUT:
                wrong.append((r.started, f"{r.flow.text(r.family)}: expected denied, got {res.outcome.value}"
                                         f"{' from ' + str(res.answered_by) if res.ok else ''}"))
        for stream, exs in self.exchanges.items():
            for ex in exs.values():
                if ex.n < 0:
                    wrong.append((ex.sent, f"{stream.text()}: {ex.error}"))
                    continue
                exp_s = self.stream_expected(stream, ex.sent)
                if exp_s is True and ex.answered is None:
                    wrong.append((ex.sent, f"{stream.text()} line {ex.n}: {ex.error or 'no answer'}"))
                elif exp_s is False and ex.answered is not None:
                    wrong.append((ex.sent, f"{stream.text()} line {ex.n}: echoed after "
                                           f"{ex.answered - ex.sent:.3f}s, but policy no longer allows it"))
        wrong.sort()
        report = "\n".join(f"  {self._at(at)} {what}" for at, what in wrong[:40])
        assert not wrong, (f"{len(wrong)} of {len(self.results)} probes and "
                           f"{sum(len(e) for e in self.exchanges.values())} stream lines went wrong:\n{report}\n"
                           f"timeline:\n{self.timeline()}")
        for flow, family in self.watched:
            n = sum(1 for r in self.results if (r.flow, r.family) == (flow, family))
            assert n >= min_probes, f"{flow.text(family)} probed only {n} times"
        for stream, exs in self.exchanges.items():
            assert len(exs) >= min_probes, f"{stream.text()}: only {len(exs)} lines"
            if not any(stream in ch.streams for ch in self.changes):
                assert self.retransmits.get(stream, 0) == 0, \
                    f"{stream.text()} retransmitted {self.retransmits[stream]} segment(s): a packet was lost"
