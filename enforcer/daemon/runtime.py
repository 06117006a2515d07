"""The node daemon: load the datapath once, then keep the maps and
attachments equal to what the cluster's objects compile to."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from ..api.view import StateView
from ..compiler.admission import CompileLimits
from ..compiler.compile import Compiler, DesiredState, NodeContext
from ..compiler.diagnose import Diagnostic, diagnostic_changes
from ..compiler.evaluate import connection_not_admin_denied, connection_still_allowed
from ..datapath import bpfsys
from ..datapath.attach import NODE_HOOKS, TcAttacher
from ..datapath.events import EventReader, Verdict
from ..datapath.layout import Counter
from ..datapath.loadchild import PinnedPrograms, load_pinned
from ..datapath.maps import DatapathMaps
from ..datapath.reasons import REASON_SLOTS
from ..datapath.registry import BY_NAME
from ..datapath.revoke import Affected, Revocation
from ..datapath.source import DatapathConfig
from ..datapath.sync import MapSync, SyncReport
from ..errors import AttachError, MapError
from ..model.state import ClusterStore
from .failures import ERRORS_KEPT, FailureLog, WriteFailures
from .node import InterfaceResolver
from .reconcile import BoundedRunner

log = logging.getLogger(__name__)

# Generation-1 collections before a full one, once the first view is frozen
# (the interpreter's default: 10).
FULL_COLLECTION_AFTER = 1000


@dataclass
class DaemonConfig:
    node_name: str
    datapath: DatapathConfig = field(default_factory=DatapathConfig)
    revoke_established: bool = True  # cut tracked connections policy no longer allows
    resync_interval: float = 30.0
    status_file: Path | None = None  # JSON status written after every pass
    # Node interfaces that get to_network (tc egress): where a local pod's
    # packet to a Service leaves after DNAT sent it to another node
    # (bpf/lib/services.h). None: every interface but loopback and the pods'.
    node_devices: tuple[str, ...] | None = None
    limits: CompileLimits = field(default_factory=CompileLimits)  # per object and per pass (admission.py)
    # Revocation runs after a pass has reported its revision, a slice of at
    # most revoke_chunk conntrack entries at a time, between passes (one
    # slice after each while passes keep coming); a newer pass is folded
    # into the walk under way (revoke.Revocation.restart), which goes on.
    revoke_chunk: int = 2048
    # Every policy in audit mode (--audit-all): judged and reported as
    # audit verdicts, never enforced; as if each carried the annotation.
    audit_all: bool = False


@dataclass
class Status:
    ready: bool = False
    # Map writes of the last pass that did not happen (a full map): the
    # objects they were for, the first OBJECTS_KEPT ("NetworkPolicy ns/a: 4
    # entries"), and the figures (failures.py); never one string per entry.
    failures: list[str] = field(default_factory=list)
    write_failures: WriteFailures = field(default_factory=WriteFailures)
    failure_log: FailureLog = field(default_factory=lambda: FailureLog(log), repr=False, compare=False)
    revision: int = 0
    source_revision: str = ""
    last_sync: float = 0.0
    last_sync_duration: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first ERRORS_KEPT: invalid objects, objects not written
    errors_total: int = 0
    unplaced: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # policies whose latest version is being staged
    attached: set[int] = field(default_factory=set)
    node_devices: set[int] = field(default_factory=set)  # ifindexes with to_network
    revoked_connections: int = 0
    # Revocation after the pass: whether one is under way, the revision the
    # last finished one judged against, how long it took (seconds, from the
    # pass that asked for it).
    revocation_pending: bool = False
    revoked_revision: int = 0
    last_revocation_duration: float = 0.0
    diagnostics: tuple[Diagnostic, ...] = ()  # of the last pass (compiler.diagnose)
    # Map writes of the last pass, and since this process started (a
    # restarted daemon that found the maps right writes nothing).
    last_pass: dict[str, int] = field(default_factory=lambda: {"written": 0, "deleted": 0, "revoked": 0})
    since_start: dict[str, int] = field(
        default_factory=lambda: {"passes": 0, "written": 0, "deleted": 0, "revoked": 0})


class Daemon:
    def __init__(self, config: DaemonConfig, store: ClusterStore,
                 on_verdict: Callable[[Verdict], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.on_verdict = on_verdict
        self.status = Status()
        self.desired: DesiredState | None = None
        self._view: StateView | None = None
        self.on_sync: list[Callable[[float], None]] = []  # called with each pass's duration
        self._ct_count: tuple[float, int] = (0.0, 0)
        # Admission keeps ipBlock prefixes within the ipcache maps' room and
        # compiled entries within the policy map's.
        limits = dataclasses.replace(
            config.limits,
            ipcache_capacity=config.limits.ipcache_capacity or config.datapath.ipcache_max,
            ipcache_hosts_capacity=config.limits.ipcache_hosts_capacity or config.datapath.ipcache_hosts_max,
            policy_capacity=config.limits.policy_capacity or config.datapath.policy_max,
            services_capacity=config.limits.services_capacity or config.datapath.services_max)
        self.compiler = Compiler(config.datapath.max_endpoint_id, limits, audit_all=config.audit_all)
        self.resolver = InterfaceResolver()
        self.attacher = TcAttacher()
        self.runner = BoundedRunner(self.reconcile_once, resync=config.resync_interval,
                                    background=self.revoke_step)
        self._revocation: Revocation | None = None
        self._revocation_revision = 0
        self._revocation_from = 0.0  # when the oldest pass the revocation carries started
        self._revoked_once = False  # a revocation has judged against a state this process compiled
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._seeded = False
        self._stop = threading.Event()
        self.loaded: PinnedPrograms | None = None
        self.maps: DatapathMaps | None = None
        self.sync: MapSync | None = None
        self._events_thread: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._datapath_ready = threading.Event()
        self._load_error: BaseException | None = None
        self._seed_first = False  # a previous daemon's endpoint ids to seed before compiling
        self._missing_devices: list[str] = []

    # -- lifecycle --

    def start(self) -> None:
        """Load the datapath (in a thread of its own) and start passes.
        The first pass compiles while the datapath loads (a first start
        compiles it in a child process: seconds) and waits for it only to
        write the maps, unless a previous daemon's maps are pinned: their
        endpoint ids seed the compiler's first (check_loaded: whether
        loading failed)."""
        self._seed_first = (self.config.datapath.pin_dir / BY_NAME["endpoints"].pin).exists()
        self._loader = threading.Thread(target=self._load_datapath, name="datapath-load", daemon=True)
        self._loader.start()
        self.store.on_change = self.runner.trigger
        self.runner.start()
        self.runner.trigger()

    def _load_datapath(self) -> None:
        try:
            # Compiled and loaded by a child process (bcc and LLVM stay out
            # of this one), which pins the programs; opened here from their
            # pins. A bytecode cache hit loads in this process.
            loaded = load_pinned(self.config.datapath)
            maps = DatapathMaps(self.config.datapath.pin_dir)
            self.sync = MapSync(maps)
            self.maps, self.loaded = maps, loaded
            # Programs left by a previous daemon: replaced with ours on the first pass.
            self._previous_attachments = {a.ifindex for a in self.attacher.attachments()}
            self._events_thread = threading.Thread(target=self._events_loop, name="events", daemon=True)
            self._events_thread.start()
        except BaseException as e:  # the main thread raises it (check_loaded)
            self._load_error = e
        finally:
            self._datapath_ready.set()

    def check_loaded(self) -> bool:
        """Whether the datapath is loaded; raises what loading it raised."""
        if self._load_error is not None:
            raise self._load_error
        return self._datapath_ready.is_set()

    def _wait_datapath(self) -> bool:
        """Wait until the datapath is loaded; False if loading failed
        (the main thread reports it: check_loaded)."""
        if self._loader is not None:
            self._datapath_ready.wait()
        return self.sync is not None and self._load_error is None

    def stop(self) -> None:
        """Stop working; enforcement (programs, maps) stays in place."""
        self._stop.set()
        self.runner.stop()
        if self._events_thread:
            self._events_thread.join(timeout=2)
        self.resolver.watch.close()

    def _events_loop(self) -> None:
        assert self.loaded is not None
        reader = EventReader(self.loaded.events_fd, self._on_event)
        try:
            while not self._stop.is_set():
                reader.poll(200)
        finally:
            reader.close()

    def _on_event(self, v: Verdict) -> None:
        if self.on_verdict:
            self.on_verdict(v)

    # -- one reconcile pass --

    def reconcile_once(self) -> bool:
        if not self.store.ready.is_set():
            return False  # the source's first full view will trigger a pass
        if self._seed_first and not self._wait_datapath():
            return False
        started = time.monotonic()
        snap = self.store.snapshot()
        local = [p for p in snap.pods.values()
                 if p.node_name == self.config.node_name and p.is_running and not p.host_network]
        if not self._seeded:
            if self.sync is not None:
                self._seed_endpoint_ids(local)
            self._seeded = True
        interfaces = self.resolver.resolve(local)
        node = NodeContext(self.config.node_name, self.resolver.addresses, interfaces)
        desired = self.compiler.compile(snap, node)
        if desired.pending:
            # A policy's prefixes are being staged a budget per pass: the
            # next pass is due at once (changes meanwhile join it).
            self.runner.trigger()
        self._note_pending(desired.pending)
        if not self._wait_datapath():
            return False
        assert self.sync is not None
        report = self.sync.apply(desired.map_contents(), desired.describe)
        with self.attacher.session():
            self._attach(desired)
        self._plan_revocation(desired, report, snap.revision, started)
        self._reset_counters(report.removed_endpoint_ids)
        with self._lock:
            self.desired = desired
            self._view = view = (self._view.following(snap, desired) if self._view is not None
                                 else StateView(snap, desired))
            st = self.status
            st.revision, st.source_revision = snap.revision, snap.source_revision
            st.last_sync, st.last_sync_duration = time.time(), time.monotonic() - started
            failures = WriteFailures.of(report)
            st.errors = [str(e) for e in islice(desired.errors, ERRORS_KEPT)]
            st.errors += [f"{o} not written" for o in failures.objects[:ERRORS_KEPT - len(st.errors)]]
            st.errors_total = len(desired.errors) + failures.objects_total
            st.failures = list(failures.objects)
            st.write_failures = failures
            st.unplaced = list(desired.unplaced)
            st.pending = list(desired.pending)
            st.last_pass = {"written": report.written, "deleted": report.deleted, "revoked": 0}
            st.since_start["passes"] += 1
            st.since_start["written"] += report.written
            st.since_start["deleted"] += report.deleted
            st.revocation_pending = self._revocation is not None
            st.ready = True
        self._note_diagnostics(view)
        st.failure_log.note(report, failures)  # one line at most
        if self.config.status_file:
            self._write_status_file(desired)
        for callback in self.on_sync:
            callback(st.last_sync_duration)
        if report.changed:
            log.info("synced revision %d: %d written, %d deleted, %.1f ms",
                     snap.revision, report.written, report.deleted, st.last_sync_duration * 1e3)
        if not self.synced.is_set():
            # The first view is most of what the daemon will ever hold: move
            # it out of the cyclic GC's reach so later collections do not
            # walk it (their pauses would delay every later change). Full
            # collections then come a hundred times less often than the
            # default: at 10k policies they came every ~0.3 s under a
            # stream of changes, 12-23 ms each, and found nothing (the
            # daemon's garbage is freed by reference counts; what cycles
            # it makes wait for the next full collection).
            gc.collect()
            gc.freeze()
            young, middle, _full = gc.get_threshold()
            gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
        self.synced.set()
        return bool(desired.unplaced or not report.complete)

    # -- revocation, after the pass --

    def _plan_revocation(self, desired: DesiredState, report: SyncReport, revision: int, started: float) -> None:
        """Ask for the revocation this pass calls for, or fold it into the
        one under way (which then starts over against this state). It runs
        after the pass has reported (revoke_step)."""
        assert self.maps is not None
        gone = report.removed_endpoint_ids
        if self.config.revoke_established:
            by_id = desired.endpoint_by_id()
            check: Callable | None = lambda c: connection_still_allowed(desired, by_id, c)  # noqa: E731
        elif desired.tier_programs:
            # --keep-established keeps what policy no longer allows, but for
            # an Admin-tier Deny.
            by_id = desired.endpoint_by_id()
            check = lambda c: connection_not_admin_denied(desired, by_id, c)  # noqa: E731
        else:
            check = None
        # Nothing known of the state the tracked connections were judged
        # by (this process's first pass: a previous daemon may have died
        # before revoking): every one is checked.
        affected = Affected.of(report.touched, gone) if self._revoked_once else Affected.everything(gone)
        if check is None:
            affected = affected.only_gone()
        self._revoked_once = True
        job = self._revocation
        if job is not None:
            job.restart(affected, check, recheck_services=self.config.revoke_established)
        elif affected:
            self._revocation = Revocation(self.maps, affected, check, recheck_services=self.config.revoke_established,
                                          chunk=self.config.revoke_chunk)
            self._revocation_from = started
        self._revocation_revision = revision

    def revoke_step(self) -> bool:
        """One slice of the revocation under way (the reconcile thread runs
        it between passes); True while some is left."""
        job = self._revocation
        if job is None:
            return False
        before = job.result.revoked
        try:
            done = job.step()
        except MapError as e:
            log.error("revoking connections: %s; starting over", e)
            job.restart(Affected(), job.still_allowed, job.recheck_services)
            done = False
        n = job.result.revoked - before
        with self._lock:
            st = self.status
            st.revoked_connections += n
            st.since_start["revoked"] += n
            st.last_pass["revoked"] += n
            if done:
                self._revocation = None
                st.revocation_pending = False
                st.revoked_revision = self._revocation_revision
                st.last_revocation_duration = time.monotonic() - self._revocation_from
        if done:
            r = job.result
            if r.revoked or r.rechecked:
                log.info("revision %d: %d connections revoked, %d Service connections to recheck "
                         "(%d of %d tracked judged, %.1f ms after the pass began)", self._revocation_revision,
                         r.revoked, r.rechecked, r.judged, r.walked, st.last_revocation_duration * 1e3)
            if self.config.status_file and self.desired is not None:
                self._write_status_file(self.desired)
        return not done

    def finish_revocation(self) -> None:
        """Run what is left of the revocation under way (tests, tools)."""
        while self.revoke_step():
            pass

    # -- read side, for the API and metrics --

    def view(self) -> StateView | None:
        with self._lock:
            return self._view

    def counters(self, endpoint_id: int) -> dict:
        return self.maps.counters(endpoint_id) if self.maps is not None else {}

    def event_stats(self) -> dict[str, int]:
        return self.maps.event_stats() if self.maps is not None else {}

    def map_occupancy(self) -> dict[str, tuple[int, int]]:
        """entries and capacity per map; conntrack is counted at most every 5 s."""
        if self.maps is None or self.sync is None:
            return {}
        applied = self.sync.applied
        hosts = sum(1 for net in applied.ipcache if net.prefixlen == net.max_prefixlen)
        now = time.monotonic()
        if now - self._ct_count[0] > 5:
            self._ct_count = (now, self.maps["conntrack"].count())
        counts = {"ipcache": len(applied.ipcache) - hosts, "ipcache_hosts": hosts,
                  "endpoints": len(applied.endpoints), "policy": len(applied.policy),
                  "conntrack": self._ct_count[1]}
        return {name: (n, self.maps[name].max_entries) for name, n in counts.items()}

    def interface_names(self) -> dict[int, str]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}

    def _note_pending(self, pending: list[str]) -> None:
        """Log once when a policy starts waiting for its prefixes to be
        staged, and once when it is taken in."""
        before = set(self.status.pending)
        for key in pending:
            if key not in before:
                log.info("NetworkPolicy %s: new version waiting (staged over several passes: more ipBlock prefixes "
                         "than --prefixes-per-pass; or tried again: ipcache room was freed); its previous version "
                         "stays in force meanwhile", key)
        for key in sorted(before - set(pending)):
            log.info("NetworkPolicy %s: no longer staged (its version is in force, or it is gone)", key)

    def _note_diagnostics(self, view: StateView) -> None:
        """Keep the pass's diagnostics for the status; log each one once when
        it appears (WARNING) and once when it goes (INFO). They only report:
        a failure here must not fail the pass."""
        try:
            current = view.diagnostics
        except Exception:  # noqa: BLE001 - a bug in diagnose; enforcement is unaffected
            log.exception("diagnose failed; the diagnostics of the previous pass are kept")
            return
        appeared, gone = diagnostic_changes(self.status.diagnostics, current)
        self.status.diagnostics = current
        for d in appeared:
            log.warning("%s (%s, %s): %s", d.code, d.effect, d.severity, d.message)
        for d in gone:
            log.info("resolved %s (%s): Service %s, NetworkPolicy %s", d.code, d.effect, d.service, d.policy)

    def _write_status_file(self, desired: DesiredState) -> None:
        st = self.status
        doc = {
            "node": self.config.node_name, "ready": st.ready, "revision": st.revision,
            "source_revision": st.source_revision, "last_sync": st.last_sync,
            "last_sync_duration_ms": round(st.last_sync_duration * 1e3, 3),
            "endpoints": len({e.endpoint_id for e in desired.endpoints.values()}),
            "policy_entries": len(desired.policy), "ipcache_entries": len(desired.ipcache),
            "unplaced": st.unplaced, "pending": st.pending[:20], "pending_count": len(st.pending),
            "errors": st.errors, "errors_total": st.errors_total,
            "write_failures": st.write_failures.as_dict(),
            "last_pass": dict(st.last_pass), "since_start": dict(st.since_start),
            "revocation": {"pending": st.revocation_pending, "revision": st.revoked_revision,
                           "duration_ms": round(st.last_revocation_duration * 1e3, 3)},
            "diagnostics": [d.as_dict() for d in st.diagnostics[:ERRORS_KEPT]],
            "diagnostics_total": len(st.diagnostics),
        }
        path = Path(self.config.status_file)  # type: ignore[arg-type]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)

    def _reset_counters(self, endpoint_ids: set[int]) -> None:
        """Counters are indexed by endpoint id: a released id's start again
        from zero, or the next pod given the id would show the traffic of
        the previous one as its own."""
        assert self.maps is not None
        if not endpoint_ids:
            return
        metrics = self.maps["metrics"]
        zero = (Counter * bpfsys.possible_cpus())()
        for ep_id in sorted(endpoint_ids):
            for slot in range(ep_id * 2 * REASON_SLOTS, (ep_id * 2 + 2) * REASON_SLOTS):
                try:
                    metrics.update(ctypes.c_uint32(slot), zero)
                except MapError as e:
                    log.warning("resetting counters of endpoint id %d: %s", ep_id, e)
                    break

    def _seed_endpoint_ids(self, local: list) -> None:
        assert self.sync is not None
        by_ip = self.sync.applied.endpoints
        for pod in local:
            for ip in pod.ips:
                if ip in by_ip:
                    self.compiler.endpoint_ids.seed(pod.uid, by_ip[ip][0])
                    break
        self._seeded = True

    def _attach(self, desired: DesiredState) -> None:
        """from_pod/to_pod on every local pod's interface, to_network on the
        node's other interfaces; our filters go from everything else."""
        assert self.loaded is not None
        want = {e.ifindex for e in desired.endpoints.values()} | desired.blocked_interfaces
        want_node = self._node_devices(want)
        have, have_node = self.status.attached, self.status.node_devices
        for ifindex in sorted(want - have):
            try:
                self.attacher.attach(ifindex, self.loaded.fds)  # replaces a to_network in place
                have.add(ifindex)
                have_node.discard(ifindex)
            except AttachError as e:
                log.error("%s", e)
        # Neither any more, or a pod's that became a node interface (its
        # from_pod must go; to_network is attached again below).
        stale = ((have | have_node | self._previous_attachments) - want - want_node) | ((have - want) & want_node)
        for ifindex in sorted(stale):
            try:
                self.attacher.detach(ifindex)
            except AttachError as e:
                log.warning("%s", e)
            have.discard(ifindex)
            have_node.discard(ifindex)
        for ifindex in sorted(want_node - have_node):
            try:
                self.attacher.attach(ifindex, self.loaded.fds, NODE_HOOKS)
                have_node.add(ifindex)
            except AttachError as e:
                log.error("node interface: %s", e)
        self._previous_attachments = set()

    def _node_devices(self, pod_interfaces: set[int]) -> set[int]:
        """Interfaces to_network goes on: the configured ones, or every one
        that is neither loopback nor a pod's (from the interfaces this
        pass's resolve() read)."""
        links = self.resolver.links
        if self.config.node_devices is None:
            return set(links) - pod_interfaces
        by_name = {name: idx for idx, name in links.items()}
        missing = sorted(set(self.config.node_devices) - by_name.keys())
        if missing and missing != self._missing_devices:
            log.error("node interfaces not found: %s; a local pod's egress to a Service whose backend "
                      "is elsewhere is not judged through them", ", ".join(missing))
        self._missing_devices = missing
        return {by_name[n] for n in self.config.node_devices if n in by_name} - pod_interfaces
