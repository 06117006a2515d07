"""The FlowHistory RPC: the node's flow history a page at a time, and the
conversion of its rows both ways (the CLI merges several nodes' rows).

An answer is bounded whatever the history holds: at most PAGE_MAX rows and
about PAGE_BYTES_MAX bytes (a row's labels are at most 2 KiB a side), with
a page token (the last row's id: ids only grow, so a reader never sees a
row twice, however the history changes between pages) and the count of
matching rows after the page.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import grpc

from ..history.recorder import HistoryRecorder
from ..history.rows import ALLOWED, AUDIT, CIDR, DENIED, EGRESS, HOST, INGRESS, POD, WORLD, FlowKey, FlowRow
from ..history.store import Filter
from ..v1 import enforcer_pb2 as pb

PAGE_MAX = 1000
PAGE_BYTES_MAX = 2 << 20  # well under gRPC's 4 MB a message
FLUSH_TIMEOUT = 2.0  # the first page waits this long at most for the recorder's pending rows

Row = pb.FlowHistoryRow
PEER_KINDS = {POD: Row.PEER_KIND_POD, CIDR: Row.PEER_KIND_CIDR, WORLD: Row.PEER_KIND_WORLD,
              HOST: Row.PEER_KIND_HOST}
VERDICTS = {ALLOWED: Row.VERDICT_ALLOWED, AUDIT: Row.VERDICT_AUDIT, DENIED: Row.VERDICT_DENIED}
_PEER_KIND_NAMES = {v: k for k, v in PEER_KINDS.items()}
_VERDICT_NAMES = {v: k for k, v in VERDICTS.items()}


def row_pb(row: FlowRow) -> pb.FlowHistoryRow:
    k = row.key
    return pb.FlowHistoryRow(
        namespace=k.namespace, pod=k.pod, labels=dict(k.labels),
        direction=pb.DIRECTION_INGRESS if k.direction == INGRESS else pb.DIRECTION_EGRESS,
        peer_kind=PEER_KINDS[k.peer_kind], peer_namespace=k.peer_namespace, peer_labels=dict(k.peer_labels),
        peer_address=k.peer_address, protocol=k.protocol, port=k.port, verdict=VERDICTS[k.verdict],
        count=row.count, first_seen_unix=row.first_seen, last_seen_unix=row.last_seen)


def row_of(msg: pb.FlowHistoryRow, node: str) -> FlowRow:
    """A row from the API (of node's history). ValueError for kinds or
    verdicts this version does not know."""
    try:
        peer_kind, verdict = _PEER_KIND_NAMES[msg.peer_kind], _VERDICT_NAMES[msg.verdict]
    except KeyError:
        raise ValueError(f"a history row of an unknown peer kind or verdict ({msg.peer_kind}, {msg.verdict}): "
                         "is this client older than the daemon?") from None
    key = FlowKey(namespace=msg.namespace, pod=msg.pod, labels=tuple(sorted(msg.labels.items())),
                  direction=INGRESS if msg.direction == pb.DIRECTION_INGRESS else EGRESS, peer_kind=peer_kind,
                  peer_namespace=msg.peer_namespace, peer_labels=tuple(sorted(msg.peer_labels.items())),
                  peer_address=msg.peer_address, protocol=msg.protocol, port=msg.port, verdict=verdict)
    return FlowRow(key, msg.count, msg.first_seen_unix, msg.last_seen_unix, node)


def flow_history(recorder: HistoryRecorder | None, daemon: Any, request: pb.FlowHistoryRequest,
                 context: grpc.ServicerContext) -> pb.FlowHistoryResponse:
    resp = pb.FlowHistoryResponse(node=daemon.config.node_name)
    events = daemon.event_stats()
    resp.events_suppressed, resp.events_lost = events.get("suppressed", 0), events.get("lost", 0)
    if recorder is None or not recorder.enabled:
        resp.disabled_reason = recorder.stats().disabled_reason if recorder is not None else "not recorded"
        return resp
    try:
        after_id = int(request.page_token or 0)
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a page token: {request.page_token[:100]!r}")
        raise  # unreachable: abort raises
    if not after_id:
        # The first page includes what the daemon has seen until now: the
        # recorder writes what it holds in memory (history only, never
        # enforcement state).
        recorder.flush(FLUSH_TIMEOUT)
    which = Filter(request.namespace, request.since_unix)
    try:
        rows = recorder.read(which, after_id, min(request.page_size or PAGE_MAX, PAGE_MAX))
        size, last_id = 0, after_id
        for row_id, row in rows:
            msg = row_pb(row)
            if resp.rows and size + msg.ByteSize() > PAGE_BYTES_MAX:
                break
            resp.rows.append(msg)
            size, last_id = size + msg.ByteSize(), row_id
        resp.remaining = recorder.count(which, last_id)
    except sqlite3.Error as e:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"the flow history cannot be read now: {e}")
    resp.next_page_token = str(last_id) if resp.remaining else ""
    stats = recorder.stats()
    resp.enabled = True
    resp.rows_total, resp.max_rows, resp.rows_evicted = stats.rows, stats.max_rows, stats.rows_evicted
    resp.events_dropped, resp.events_unattributed = stats.events_dropped, stats.events_unattributed
    resp.write_errors = stats.write_errors
    return resp
