"""The FlowHistory RPC and the CLI that reads it: answers are bounded (page
size and bytes) and pages never repeat a row; a daemon without history
says why; `enforcer suggest` and `enforcer history` merge several daemons
(unix sockets, a TLS address), keep to --since and warn about what the
histories may have missed. In-process servers on a stand-in daemon: no
kernel."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import yaml

from enforcer.api import history_client as hc
from enforcer.api.history import PAGE_BYTES_MAX, PAGE_MAX
from enforcer.api.server import ApiServer, ServerConfig
from enforcer.api.service import EnforcerService
from enforcer.cli import main
from enforcer.history.recorder import HistoryRecorder
from enforcer.history.rows import FlowKey
from enforcer.history.store import DB_NAME, Tally, open_store
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.v1 import enforcer_pb2_grpc as pb_grpc
from tests.api.test_api_serving import make_pki


class StandIn:
    """What the FlowHistory RPC reads of a Daemon."""

    def __init__(self, node: str, events: dict[str, int] | None = None) -> None:
        self.config = SimpleNamespace(node_name=node)
        self._events = events or {}

    def event_stats(self) -> dict[str, int]:
        return self._events


def key(pod: str = "web-1", port: int = 80, peer: str = "client", namespace: str = "x", labels: str = "web",
        direction: str = "ingress", verdict: str = "allowed") -> FlowKey:
    return FlowKey(namespace, pod, (("app", labels),), direction, "pod", "y", (("app", peer),), "", "TCP", port, verdict)


class Daemon:
    """A history (a store in dir, its recorder) served on a unix socket, or
    on TCP with TLS."""

    def __init__(self, directory: Path, node: str, events: dict[str, int] | None = None, recorder=None,
                 listen: str | None = None, pki: Path | None = None) -> None:
        directory.mkdir()
        self.store = open_store(directory / DB_NAME, 100_000) if recorder is None else None
        self.recorder = recorder or HistoryRecorder(self.store)
        self.recorder.start()
        self.socket = directory / "api.sock"
        tls = {"tls_cert": pki / "server.crt", "tls_key": pki / "server.key"} if pki else {}
        self.server = ApiServer(ServerConfig(socket=self.socket, listen=listen, **tls),
                                EnforcerService(StandIn(node, events), None, "test", history=self.recorder))  # type: ignore[arg-type]
        self.server.start()

    def add(self, rows: dict[FlowKey, tuple[int, float, float]]) -> None:
        assert self.store is not None
        self.store.add({k: Tally(*v) for k, v in rows.items()})

    def stub(self) -> pb_grpc.EnforcerStub:
        return pb_grpc.EnforcerStub(grpc.insecure_channel(f"unix:{self.socket}"))

    def close(self) -> None:
        self.server.stop()
        self.recorder.stop()


@pytest.fixture
def daemons(tmp_path):
    made: list[Daemon] = []

    def make(node: str, **kw) -> Daemon:
        made.append(Daemon(tmp_path / node, node, **kw))
        return made[-1]

    yield make
    for d in made:
        d.close()


def test_pages_are_bounded_and_never_repeat_a_row(daemons):
    d = daemons("n1")
    d.add({key(port=p): (1, 1.0, 1.0) for p in range(2500)})
    first = d.stub().FlowHistory(pb.FlowHistoryRequest(page_size=5000), timeout=10)
    assert len(first.rows) == PAGE_MAX and first.remaining == 1500 and first.next_page_token
    assert (first.enabled, first.node, first.rows_total, first.max_rows) == (True, "n1", 2500, 100_000)
    d.add({key(port=p): (1, 2.0, 2.0) for p in range(10)})  # seen again between pages: no new rows
    d.add({key(port=p): (1, 2.0, 2.0) for p in range(2500, 2600)})  # new rows: at the end
    ports, token, pages = [r.port for r in first.rows], first.next_page_token, 1
    while token:
        page = d.stub().FlowHistory(pb.FlowHistoryRequest(page_size=700, page_token=token), timeout=10)
        assert len(page.rows) <= 700
        ports += [r.port for r in page.rows]
        token, pages = page.next_page_token, pages + 1
    assert ports == list(range(2600)) and pages == 1 + 3 and page.remaining == 0


def test_pages_are_bounded_in_bytes(daemons):
    d = daemons("n1")
    wide = {f"k{i:02}": "v" * 50 for i in range(30)}  # about 2 KiB of labels a side
    d.store.add({FlowKey("x", f"p{i}", tuple(sorted(wide.items())), "ingress", "pod", "y", tuple(sorted(wide.items())),
                         "", "TCP", 80, "allowed"): Tally(1, 1.0, 1.0) for i in range(1500)})  # type: ignore[union-attr]
    page = d.stub().FlowHistory(pb.FlowHistoryRequest(), timeout=10)
    assert 0 < len(page.rows) < PAGE_MAX and page.ByteSize() <= PAGE_BYTES_MAX + 10_000
    assert page.remaining == 1500 - len(page.rows)


def test_a_bad_token_is_refused_and_a_daemon_without_history_says_why(daemons):
    d = daemons("n1")
    with pytest.raises(grpc.RpcError) as err:
        d.stub().FlowHistory(pb.FlowHistoryRequest(page_token="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    off = daemons("n2", recorder=HistoryRecorder.disabled("disabled (--state-dir '')"))
    resp = off.stub().FlowHistory(pb.FlowHistoryRequest(), timeout=10)
    assert not resp.enabled and resp.disabled_reason == "disabled (--state-dir '')" and not resp.rows
    with pytest.raises(hc.EnforcerError, match="keeps no flow history: disabled"):
        hc.read_history(hc.Source("s", off.stub()))


def test_the_first_page_includes_what_the_recorder_holds(daemons, tmp_path):
    """Rows still in the recorder's memory are written before the first page
    is read (no waiting a write interval)."""
    from . import cluster as C

    recorder = HistoryRecorder(open_store(tmp_path / "mem.db", 100), write_interval=3600)
    d = daemons("n1", recorder=recorder)
    state = C.view()
    for v in C.verdicts(state, "y/client", "x/api"):
        recorder.offer(v, state)
    assert len(d.stub().FlowHistory(pb.FlowHistoryRequest(), timeout=10).rows) == 2


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_suggest_merges_several_daemons_and_keeps_to_since(daemons, capsys):
    now = time.time()
    n1 = daemons("n1", events={"suppressed": 7, "lost": 0})
    n2 = daemons("n2")
    # n1 saw web's ingress from y's clients on 80; n2 saw the same and 81, and an old flow on 82.
    n1.add({key(port=80): (2, now - 100, now - 50)})
    n2.add({key(pod="web-2", port=80): (1, now - 40, now - 30), key(pod="web-2", port=81): (1, now - 20, now - 10),
            key(pod="web-2", port=82): (1, now - 7300, now - 7200),
            key(pod="web-2", port=83, verdict="denied"): (5, now - 20, now - 10),
            key(pod="db", labels="db", port=5432, namespace="z"): (1, now - 20, now - 10)})
    code, out, err = run_cli(capsys, "suggest", "--namespace", "x", "--since", "1h", "--socket", str(n1.socket),
                             "--socket", str(n2.socket))
    assert code == 0
    assert "warning: node n1: the history may miss flows: 7 verdict events held back by the datapath's rate limit" in err
    assert "node n2" not in err
    assert out.startswith("# NetworkPolicies suggested by `enforcer suggest` for namespace x from the flow history "
                          "of node n1, n2 (flows last seen in the last 1h).")
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out)}
    assert set(docs) == {"suggested-default-deny", "suggested-app-web"}
    assert all(d["metadata"]["annotations"] == {"enforcer.dev/audit": "true"} for d in docs.values())
    (rule,) = docs["suggested-app-web"]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 81}]
    code, out, _ = run_cli(capsys, "suggest", "--namespace", "x", "--namespace", "z", "--enforce",
                           "--socket", str(n1.socket), "--socket", str(n2.socket))
    docs = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    assert ("z", "suggested-app-db") in docs and all("annotations" not in d["metadata"] for d in docs.values())
    assert [p["port"] for p in docs[("x", "suggested-app-web")]["spec"]["ingress"][0]["ports"]] == [80, 81, 82]


def test_history_lists_every_daemons_rows(daemons, capsys):
    now = time.time()
    n1, n2 = daemons("n1"), daemons("n2")
    n1.add({key(port=80): (2, now - 100, now - 50)})
    n2.add({key(pod="web-2", port=81): (1, now - 20, now - 10), key(namespace="z", port=1): (1, now, now)})
    code, out, _ = run_cli(capsys, "history", "--namespace", "x", "--socket", str(n1.socket), "--socket",
                           str(n2.socket))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:6] == ["node", "pod", "labels", "direction", "peer", "port"]
    assert [line.split()[:2] for line in lines[1:]] == [["n1", "x/web-1"], ["n2", "x/web-2"]]
    assert "y {app=client}" in lines[1] and "TCP/80" in lines[1] and "allowed" in lines[1]
    code, out, _ = run_cli(capsys, "history", "--json", "--socket", str(n1.socket), "--socket", str(n2.socket))
    assert [(r["node"], r["namespace"], r["port"], r["count"]) for r in yaml.safe_load(out)] == [
        ("n1", "x", 80, 2), ("n2", "x", 81, 1), ("n2", "z", 1, 1)]


def test_suggest_over_tls_addresses(tmp_path, daemons, capsys):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    d = daemons("n1", listen="127.0.0.1:0", pki=pki)
    d.add({key(port=80): (1, time.time(), time.time())})
    address = f"127.0.0.1:{d.server.tcp_port}"
    code, out, _ = run_cli(capsys, "suggest", "--namespace", "x", "--address", address,
                           "--tls-ca", str(pki / "ca.crt"))
    assert code == 0 and "suggested-app-web" in out
    code, _, err = run_cli(capsys, "suggest", "--namespace", "x", "--address", address)  # not the system's roots
    assert code == 1 and "not answering" in err


def test_a_daemon_that_cannot_be_read_stops_the_suggestion(tmp_path, daemons, capsys):
    n1 = daemons("n1")
    code, out, err = run_cli(capsys, "suggest", "--namespace", "x", "--socket", str(n1.socket),
                             "--socket", str(tmp_path / "absent.sock"))
    assert code == 1 and out == "" and "no daemon socket at" in err


def test_metrics_carry_the_history_s_size_and_what_it_missed():
    from prometheus_client import CollectorRegistry, generate_latest

    from enforcer.api.metrics import DaemonCollector
    from enforcer.history.recorder import HistoryStats

    history = SimpleNamespace(enabled=True, stats=lambda: HistoryStats(
        enabled=True, rows=12, max_rows=100, rows_evicted=3, events_dropped=4, events_unattributed=5, write_errors=6))
    daemon = SimpleNamespace(view=lambda: None, counters=lambda ep: {}, map_occupancy=lambda: {},
                             status=SimpleNamespace(ready=True, write_failures=SimpleNamespace(by_map={},
                                                                                               objects_total=0)),
                             event_stats=lambda: {})
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon, None, history))
    text = generate_latest(registry).decode()
    for line in ("enforcer_history_rows 12.0", "enforcer_history_max_rows 100.0",
                 "enforcer_history_rows_evicted_total 3.0", 'enforcer_history_events_missed_total{why="queue_full"} 4.0',
                 'enforcer_history_events_missed_total{why="unattributed"} 5.0',
                 'enforcer_history_events_missed_total{why="write_error"} 6.0'):
        assert line in text, text
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon, None, HistoryRecorder.disabled("--state-dir ''")))
    assert "enforcer_history" not in generate_latest(registry).decode()
