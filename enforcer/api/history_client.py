"""CLI side of the flow history: `enforcer history` and `enforcer suggest`.

Both read the histories of one or more daemons (unix sockets, or TCP
addresses with TLS), every page of each, and refuse to go on when one of
them cannot be read or keeps no history: policies suggested from part of
the traffic would cut the rest. What a history may have missed (the
datapath's event rate limit, a full queue) is said on stderr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..errors import ConfigError, EnforcerError
from ..history.rows import FlowRow, labels_text, merge_rows
from ..history.suggest import render, suggest
from ..model.meta import AUDIT_ANNOTATION
from ..v1 import enforcer_pb2 as pb
from ..v1 import enforcer_pb2_grpc as pb_grpc
from .client import call, connect, table
from .history import row_of

PAGES_MAX = 10_000  # a daemon answering pages forever is a bug; stop somewhere


@dataclass(frozen=True)
class Tls:
    """Client side of the daemon's TLS listener: the CA that signed its
    certificate (system roots when None), this client's certificate and key
    when it requires one (--tls-client-ca), the name to expect in its
    certificate when it is not the address's host."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("--tls-cert and --tls-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)


@dataclass(frozen=True)
class Source:
    name: str  # the socket path or address, for messages
    stub: pb_grpc.EnforcerStub


def sources(sockets: Sequence[str], addresses: Sequence[str], tls: Tls, default_socket: Path) -> list[Source]:
    """The daemons to read: every socket and address given, else the
    default socket."""
    found = [Source(s, connect(Path(s))) for s in sockets]
    if addresses:
        creds = tls.credentials()
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        found += [Source(a, pb_grpc.EnforcerStub(grpc.secure_channel(a, creds, options=options)))
                  for a in addresses]
    return found or [Source(str(default_socket), connect(default_socket))]


@dataclass(frozen=True)
class History:
    node: str
    source: str
    rows: list[FlowRow]
    warnings: list[str]


def read_history(source: Source, namespace: str = "", since: float = 0.0) -> History:
    """Every page of one daemon's history; EnforcerError when it keeps none."""
    rows: list[FlowRow] = []
    token = ""
    for _ in range(PAGES_MAX):
        page = call(source.stub.FlowHistory, pb.FlowHistoryRequest(namespace=namespace, since_unix=since,
                                                                   page_token=token))
        if not page.enabled:
            raise EnforcerError(f"{source.name} (node {page.node}) keeps no flow history: {page.disabled_reason}")
        try:
            rows += [row_of(r, page.node) for r in page.rows]
        except ValueError as e:
            raise EnforcerError(f"{source.name}: {e}") from None
        token = page.next_page_token
        if not token:
            break
    else:
        raise EnforcerError(f"{source.name}: the history did not end after {PAGES_MAX} pages")
    return History(page.node, source.name, rows, _losses(page))


def _losses(page: pb.FlowHistoryResponse) -> list[str]:
    """What the history may have missed, as a reader should hear it."""
    missed = [(page.events_suppressed, "held back by the datapath's rate limit (1000 a second per CPU)"),
              (page.events_lost, "lost to a full ring buffer"),
              (page.events_dropped, "dropped by the recorder's full queue"),
              (page.events_unattributed, "not attributed (no state yet, pod gone, labels over 2 KiB)")]
    said = [f"{n} verdict events {why}" for n, why in missed if n]
    if page.write_errors:
        said.append(f"{page.write_errors} batches of rows not written")
    if page.rows_evicted:
        said.append(f"{page.rows_evicted} rows evicted (more than {page.max_rows} rows)")
    return [f"node {page.node}: the history may miss flows: " + "; ".join(said)] if said else []


def read_histories(found: Sequence[Source], namespace: str = "", since: float = 0.0) -> list[History]:
    return [read_history(s, namespace, since) for s in found]


def show_history(histories: Sequence[History], as_machine: bool, namespaces: Sequence[str] = ()) -> str:
    """Every row (of local pods in namespaces, when given), by node and key."""
    rows = sorted((r for h in histories for r in h.rows if not namespaces or r.key.namespace in namespaces),
                  key=lambda r: (r.node, r.key))
    if as_machine:
        return json.dumps([{"node": r.node, "namespace": r.key.namespace, "pod": r.key.pod,
                            "labels": dict(r.key.labels), "direction": r.key.direction,
                            "peer_kind": r.key.peer_kind, "peer_namespace": r.key.peer_namespace,
                            "peer_labels": dict(r.key.peer_labels), "peer_address": r.key.peer_address,
                            "protocol": r.key.protocol, "port": r.key.port, "verdict": r.key.verdict,
                            "count": r.count, "first_seen_unix": r.first_seen, "last_seen_unix": r.last_seen}
                           for r in rows], indent=1)

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    return table([[r.node, f"{r.key.namespace}/{r.key.pod}", labels_text(r.key.labels), r.key.direction,
                   r.key.peer_text(), f"{r.key.protocol}/{r.key.port}" if r.key.port else r.key.protocol,
                   r.key.verdict, str(r.count), when(r.first_seen), when(r.last_seen)] for r in rows],
                 ["node", "pod", "labels", "direction", "peer", "port", "verdict", "count", "first seen",
                  "last seen"])


def suggest_yaml(histories: Sequence[History], namespaces: Sequence[str], *, audit: bool, since_text: str) -> str:
    rows = merge_rows(h.rows for h in histories)
    header = [f"NetworkPolicies suggested by `enforcer suggest` for namespace {', '.join(namespaces)} from the "
              f"flow history of node {', '.join(sorted({h.node for h in histories}))}"
              + (f" (flows last seen in the last {since_text})" if since_text else "") + ".",
              "Only traffic seen is allowed: review before applying"
              + (f", and apply in audit mode first ({AUDIT_ANNOTATION}: \"true\")." if audit else ".")]
    return render([suggest(rows, ns, audit=audit) for ns in namespaces], header)


def warn_losses(histories: Sequence[History], out: Callable[[str], None]) -> None:
    for h in histories:
        for w in h.warnings:
            out(f"warning: {w}")
