"""A local API server that speaks list and watch as kube-apiserver does, for
the collections the enforcer reads. Enough of the protocol to be faithful
where clients go wrong:

- one global resourceVersion (etcd's revision), bumped by every write;
- list: `{"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}`,
  items without kind/apiVersion (as the real server sends them);
- watch (`?watch=true&resourceVersion=N`): HTTP/1.1 chunked stream of JSON
  lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`,
  starting after N; with `allowWatchBookmarks=true`, BOOKMARK events carry
  the current resourceVersion; `timeoutSeconds` ends the stream;
- history is kept until compact(): a watch from before it gets an ERROR
  event with a 410 Status (reason Expired), a list at such a version 410;
- restart(): connections drop, the port goes away and comes back (with or
  without history);
- failing[path] = status: every request to one collection fails (as an
  aggregated or not yet served API group would), the others keep working;
- absent: collections not served yet (a CRD not installed): 404 Not Found,
  as kube-apiserver answers; install(kind) serves one from then on.
Test code drives it in-process: create/update/delete/compact/restart.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

COLLECTIONS = {
    "/api/v1/namespaces": ("Namespace", "v1", False),
    "/api/v1/pods": ("Pod", "v1", True),
    "/apis/networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1", True),
    "/api/v1/services": ("Service", "v1", True),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1", True),
    "/api/v1/nodes": ("Node", "v1", False),
    # CRDs (kubernetes-sigs/network-policy-api)
    "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies":
        ("ClusterNetworkPolicy", "policy.networking.k8s.io/v1alpha2", False),
    "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies":
        ("AdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1", False),
    "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies":
        ("BaselineAdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1", False),
}
CRD_KINDS = ("ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")
KIND_PATH = {kind: path for path, (kind, _, _) in COLLECTIONS.items()}


@dataclass
class Event:
    rv: int
    kind: str
    type: str
    obj: dict[str, Any]


def status_410(message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Expired", "code": 410}


class State:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.rv = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.events: list[Event] = []
        self.compacted = 0  # events at or below this rv are gone

    def write(self, kind: str, obj: dict[str, Any], type_: str) -> int:
        with self.lock:
            self.rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("uid", f"uid-{kind}-{meta.get('namespace', '')}-{meta['name']}")
            key = (kind, meta.get("namespace", ""), meta["name"])
            if type_ == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self.events.append(Event(self.rv, kind, type_, obj))
            self.lock.notify_all()
            return self.rv


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.fake.connections_lock:
            self.server.fake.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake.connections_lock:
            self.server.fake.connections.discard(self.connection)
        super().finish()

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path not in COLLECTIONS or url.path in self.server.fake.absent:
            self.server.fake.requests.append((url.path, q))
            self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                             "reason": "NotFound", "message": f"{url.path} not found"})
            return
        kind, api, _ = COLLECTIONS[url.path]
        self.server.fake.requests.append((url.path, q))
        failing = self.server.fake.failing.get(url.path)
        if failing is not None:
            self._json(failing, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": failing,
                                 "reason": "ServiceUnavailable", "message": f"{url.path} is failing (test)"})
            return
        if q.get("watch") in ("1", "true"):
            self._watch(kind, q)
        else:
            self._list(kind, api, q)

    def _list(self, kind: str, api: str, q: dict[str, str]) -> None:
        st = self.server.fake.state
        with st.lock:
            rv = q.get("resourceVersion", "")
            if rv not in ("", "0") and int(rv) <= st.compacted:
                self._json(410, status_410(f"too old resource version: {rv} ({st.compacted + 1})"))
                return
            items = [copy.deepcopy(o) for (k, _, _), o in sorted(st.objects.items()) if k == kind]
            current = st.rv
        for it in items:  # items in a list carry no kind/apiVersion
            it.pop("kind", None)
            it.pop("apiVersion", None)
        self._json(200, {"kind": f"{kind}List", "apiVersion": api, "metadata": {"resourceVersion": str(current)},
                         "items": items})

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, kind: str, q: dict[str, str]) -> None:
        fake = self.server.fake
        st = fake.state
        generation = fake.generation  # a stop ends this watch, even if a start follows at once
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        start = int(q.get("resourceVersion") or 0)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
        try:
            with st.lock:
                if start and start < st.compacted:
                    self._chunk({"type": "ERROR", "object": status_410(
                        f"too old resource version: {start} ({st.compacted + 1})")})
                    return
                last = start or st.rv
            last_bookmark = time.monotonic()
            # A collection that stops being served (CRD deleted) ends its watches.
            while (time.monotonic() < deadline and fake.generation == generation and not fake.stopping.is_set()
                   and KIND_PATH[kind] not in fake.absent):
                with st.lock:
                    pending = [e for e in st.events if e.rv > last and e.kind == kind]
                    if not pending:
                        st.lock.wait(timeout=0.1)
                        pending = [e for e in st.events if e.rv > last and e.kind == kind]
                    current = st.rv
                for e in pending:
                    obj = copy.deepcopy(e.obj)
                    obj.setdefault("kind", kind)
                    obj.setdefault("apiVersion", COLLECTIONS[KIND_PATH[kind]][1])
                    self._chunk({"type": e.type, "object": obj})
                    last = e.rv
                if bookmarks and time.monotonic() - last_bookmark > fake.bookmark_interval:
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": COLLECTIONS[KIND_PATH[kind]][1],
                        "metadata": {"resourceVersion": str(current)}}})
                    fake.bookmarks_sent += 1
                    last = max(last, current)
                    last_bookmark = time.monotonic()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeApiServer, sock: socket.socket) -> None:
        self.fake = fake
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


class FakeApiServer:
    """make_socket: called to create the listening socket (a test makes it
    inside a lab's network namespace)."""

    def __init__(self, make_socket=None, port: int = 0, absent: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
        self.state = State()
        self.absent = {KIND_PATH[kind] for kind in absent}  # collections answering 404 (CRD not installed)
        self.make_socket = make_socket or (lambda p: socket.create_server(("127.0.0.1", p)))
        self.port = port
        self.bookmark_interval = 1.0
        self.bookmarks_sent = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.failing: dict[str, int] = {}  # collection path -> HTTP status every request to it gets
        self.stopping = threading.Event()
        self.generation = 0  # bumped by stop(): watches of an earlier generation end
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        sock = self.make_socket(self.port)
        self.port = sock.getsockname()[1]
        self.stopping.clear()
        self._server = _Server(self, sock)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The server goes away with every connection (kept-alive ones too:
        none of them may serve a request after a restart)."""
        self.stopping.set()
        with self.state.lock:
            self.generation += 1
            self.state.lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.connections_lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.connections.clear()

    def restart(self, lose_history: bool = False, down_for: float = 0.5) -> None:
        """Drop every connection and the port; come back after down_for."""
        self.stop()
        if lose_history:
            self.compact()
        time.sleep(down_for)
        self.start()

    def install(self, kind: str) -> None:
        """Serve a collection that was absent (its CRD is installed now)."""
        self.absent.discard(KIND_PATH[kind])

    def uninstall(self, kind: str) -> None:
        """Stop serving a collection and drop its objects (a CRD deleted:
        its objects go first, each with a DELETED event)."""
        with self.state.lock:
            keys = [key for key in self.state.objects if key[0] == kind]
        for k, ns, name in keys:
            self.delete(k, ns or None, name)
        self.absent.add(KIND_PATH[kind])

    # -- test-side writes --
    def create(self, obj: dict[str, Any]) -> int:
        return self.state.write(obj["kind"], obj, "ADDED")

    def update(self, obj: dict[str, Any]) -> int:
        return self.state.write(obj["kind"], obj, "MODIFIED")

    def delete(self, kind: str, namespace: str | None, name: str) -> int:
        with self.state.lock:
            obj = self.state.objects.get((kind, namespace or "", name))
        if obj is None:
            raise KeyError(f"{kind} {namespace}/{name}")
        return self.state.write(kind, obj, "DELETED")

    def compact(self) -> None:
        """Forget history up to now: watches from older versions get 410."""
        with self.state.lock:
            self.state.compacted = self.state.rv
            self.state.events.clear()

    @property
    def resource_version(self) -> int:
        return self.state.rv
