"""The cluster as the enforcer knows it: a store that sources write into,
and immutable snapshots that the compiler reads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import InvalidObjectError
from .clusterpolicy import ANP_KIND, BANP_KIND, CNP_KIND
from .objects import (
    CLUSTER_SCOPED_KINDS,
    ClusterNetworkPolicy,
    EndpointSlice,
    Namespace,
    NetworkPolicy,
    Node,
    Parsed,
    Pod,
    Service,
    parse_object,
)


@dataclass(frozen=True)
class ClusterSnapshot:
    namespaces: Mapping[str, Namespace]
    pods: Mapping[str, Pod]
    policies: Mapping[str, NetworkPolicy]
    errors: tuple[InvalidObjectError, ...] = ()
    revision: int = 0
    source_revision: str = ""
    services: Mapping[str, Service] = field(default_factory=lambda: MappingProxyType({}))
    endpoint_slices: Mapping[str, EndpointSlice] = field(default_factory=lambda: MappingProxyType({}))
    # ClusterNetworkPolicies by ClusterNetworkPolicy.key (converted v1alpha1
    # AdminNetworkPolicy/BaselineAdminNetworkPolicy objects too), Nodes by name.
    cluster_policies: Mapping[str, ClusterNetworkPolicy] = field(default_factory=lambda: MappingProxyType({}))
    nodes: Mapping[str, Node] = field(default_factory=lambda: MappingProxyType({}))


@dataclass
class ClusterStore:
    """Objects by kind and key. Sources replace the whole content
    (directory) or apply upserts and deletes (API watch); every change bumps
    the revision and notifies the listener (the reconcile loop)."""

    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    policies: dict[str, NetworkPolicy] = field(default_factory=dict)
    errors: dict[str, InvalidObjectError] = field(default_factory=dict)  # by object key
    services: dict[str, Service] = field(default_factory=dict)
    endpoint_slices: dict[str, EndpointSlice] = field(default_factory=dict)
    cluster_policies: dict[str, ClusterNetworkPolicy] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    revision: int = 0
    source_revision: str = ""
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # replace_all's parse of each object it was handed, by the object's
        # id (the object is kept, so the id stays its own): a source that
        # hands over the same, unchanged dicts again (the directory source
        # does for every file but the changed one) is not parsed again.
        # Objects handed to replace_all must not be changed afterwards.
        self._parsed: dict[int, tuple[Mapping[str, Any], Any, int, str]] = {}
        # Set by the source once it has delivered a complete first view.
        # Until then the store is not the cluster (it is empty), and
        # compiling it would remove every entry a previous daemon left.
        self.ready = threading.Event()
        # The last snapshot's copy of each table (_frozen).
        self._snapshots: dict[str, tuple[Mapping[str, Any], dict[str, Any]]] = {}

    @staticmethod
    def object_key(raw: Mapping[str, Any]) -> str:
        """The key of an object's error: `kind:namespace/name`, the
        namespace empty for cluster-scoped kinds."""
        meta = raw.get("metadata") or {}
        ns = meta.get("namespace", "default") if raw.get("kind") not in CLUSTER_SCOPED_KINDS else ""
        return f"{raw.get('kind')}:{ns}/{meta.get('name')}"

    def replace_all(self, objects: list[Mapping[str, Any]], extra_errors: list[InvalidObjectError],
                    source_revision: str = "") -> None:
        """Replace everything with `objects`."""
        known = self._parsed
        parsed: dict[int, tuple[Mapping[str, Any], Any, int, str]] = {}
        for raw in objects:
            hit = known.get(id(raw))
            if hit is None or hit[0] is not raw:
                hit = (raw, *parse_for_store(raw))
            parsed[id(raw)] = hit
        self._parsed = parsed
        self.replace_parsed([hit[1:] for hit in parsed.values()], extra_errors, source_revision)

    def replace_parsed(self, entries: Iterable[ParsedEntry], extra_errors: list[InvalidObjectError],
                       source_revision: str = "") -> None:
        """Replace everything with already parsed objects (parse_for_store):
        a source that parses once per change and keeps the parsed objects,
        not the raw dicts (the directory source), saves the dicts' memory."""
        tables: tuple[dict[str, Any], ...] = tuple({} for _ in _TABLES)
        for obj, slot, key in entries:
            tables[slot][key] = obj
        errors = tables[ERRORS_SLOT]
        for i, e in enumerate(extra_errors):
            errors[f"source:{i}"] = e
        with self._lock:
            # A cluster policy that does not validate now keeps its last
            # valid version (ignoring it could drop an admin Deny).
            _keep_last_valid(errors, tables[CLUSTER_POLICIES_SLOT], self.cluster_policies, KEEP_LAST_VALID)
            changed = any(new != getattr(self, name) for name, new in zip(_TABLES, tables, strict=False))
            changed |= bool(source_revision) and source_revision != self.source_revision
            for name, new in zip(_TABLES, tables, strict=False):
                setattr(self, name, new)
            self.source_revision = source_revision or self.source_revision
            if changed:
                self.revision += 1
            self.ready.set()
        if changed and self.on_change:
            self.on_change()

    def replace_kind(self, kind: str, objects: Iterable[Mapping[str, Any]], source_revision: str = "") -> None:
        """Replace every object of one kind at once (a watch source's relist):
        objects of the kind not in `objects` are gone, in the same step."""
        slot = _SLOTS[kind]
        fresh: dict[str, Any] = {}
        fresh_errors: dict[str, InvalidObjectError] = {}
        for raw in objects:
            obj, obj_slot, key = parse_for_store(raw)
            if obj_slot == ERRORS_SLOT:
                fresh_errors[key] = obj
            elif obj_slot == slot and kind_of(obj) == kind:
                fresh[key] = obj
        with self._lock:
            table = getattr(self, _TABLES[slot])
            # A table may hold several kinds (cluster policies): the others stay.
            others = {k: v for k, v in table.items() if kind_of(v) != kind}
            mine = {k: v for k, v in table.items() if kind_of(v) == kind}
            prefix = f"{kind}:"
            kept_errors = {k: e for k, e in self.errors.items() if not k.startswith(prefix)}
            # An object that does not parse now keeps its last valid version.
            _keep_last_valid(fresh_errors, fresh, mine, frozenset([kind]))
            changed = fresh != mine or kept_errors | fresh_errors != self.errors
            table.clear()
            table.update(others)
            table.update(fresh)
            self.errors = kept_errors | fresh_errors
            if source_revision:
                changed |= source_revision != self.source_revision
                self.source_revision = source_revision
            if changed:
                self.revision += 1
        if changed and self.on_change:
            self.on_change()

    def set_source_revision(self, source_revision: str) -> None:
        """A new revision with no object change (a watch bookmark): a pass
        still runs (an incremental no-op), so status reports it applied."""
        with self._lock:
            changed = source_revision != self.source_revision
            self.source_revision = source_revision
            if changed:
                self.revision += 1
        if changed and self.on_change:
            self.on_change()

    def mark_ready(self) -> None:
        """The source has delivered a complete first view."""
        self.ready.set()
        if self.on_change:
            self.on_change()

    def upsert(self, raw: Mapping[str, Any], source_revision: str = "") -> None:
        key = self.object_key(raw)
        with self._lock:
            try:
                obj = parse_object(raw)
            except InvalidObjectError as e:
                self.errors[key] = e
                # The last valid version of the object stays in force.
            else:
                self.errors.pop(key, None)
                getattr(self, _TABLES[_SLOT_OF_TYPE[type(obj)]])[_key_of(obj)] = obj
            self.revision += 1
            self.source_revision = source_revision or self.source_revision
        if self.on_change:
            self.on_change()

    def delete(self, kind: str, namespace: str | None, name: str, source_revision: str = "") -> None:
        with self._lock:
            self.source_revision = source_revision or self.source_revision
            if kind in _SLOTS:
                getattr(self, _TABLES[_SLOTS[kind]]).pop(table_key(kind, namespace, name), None)
            self.errors.pop(f"{kind}:{'' if kind in CLUSTER_SCOPED_KINDS else namespace or ''}/{name}", None)
            self.revision += 1
        if self.on_change:
            self.on_change()

    def snapshot(self) -> ClusterSnapshot:
        """The store now, frozen. A table unchanged since the previous
        snapshot is the very same mapping in this one, so what readers
        derived from it (the API view's pod index) can be kept."""
        with self._lock:
            return ClusterSnapshot(
                namespaces=self._frozen("namespaces"),
                pods=self._frozen("pods"),
                policies=self._frozen("policies"),
                errors=tuple(self.errors.values()),
                revision=self.revision,
                source_revision=self.source_revision,
                services=self._frozen("services"),
                endpoint_slices=self._frozen("endpoint_slices"),
                cluster_policies=self._frozen("cluster_policies"),
                nodes=self._frozen("nodes"),
            )

    def _frozen(self, name: str) -> Mapping[str, Any]:
        """A read-only copy of a table, the previous one if the table still
        holds the same (compared by content: every path that changes a
        table is covered, and unchanged objects compare by identity)."""
        live = getattr(self, name)
        last = self._snapshots.get(name)
        if last is not None and last[1] == live:
            return last[0]
        copy = dict(live)
        proxy = MappingProxyType(copy)
        self._snapshots[name] = (proxy, copy)
        return proxy


# Where the store keeps each kind: its attribute, by slot number.
_TABLES = ("namespaces", "pods", "policies", "errors", "services", "endpoint_slices", "cluster_policies", "nodes")
ERRORS_SLOT = 3  # objects that do not parse, by ClusterStore.object_key
CLUSTER_POLICIES_SLOT = 6
_SLOT_OF_TYPE: dict[type, int] = {Namespace: 0, Pod: 1, NetworkPolicy: 2, Service: 4, EndpointSlice: 5,
                                  ClusterNetworkPolicy: CLUSTER_POLICIES_SLOT, Node: 7}
_SLOTS = {t.__name__: slot for t, slot in _SLOT_OF_TYPE.items()}  # by kind: the classes are named so
_SLOTS.update({ANP_KIND: CLUSTER_POLICIES_SLOT, BANP_KIND: CLUSTER_POLICIES_SLOT})  # converted on parse
# Kinds whose invalid version never replaces the last valid one, in every path.
KEEP_LAST_VALID = frozenset({CNP_KIND, ANP_KIND, BANP_KIND})
# (object or its error, its slot, its key there)
ParsedEntry = tuple[Any, int, str]


def parse_for_store(raw: Mapping[str, Any]) -> ParsedEntry:
    """Parse one API object for the store: replace_parsed takes these."""
    return _parse_for_filing(raw, ClusterStore.object_key)


def _parse_for_filing(raw: Mapping[str, Any], error_key: Callable[[Mapping[str, Any]], str]
                      ) -> tuple[Parsed | InvalidObjectError, int, str]:
    """(object or its error, which of namespaces/pods/policies/errors/
    services/endpoint slices it goes in, its key there)."""
    try:
        obj = parse_object(raw)
    except InvalidObjectError as e:
        return e, ERRORS_SLOT, error_key(raw)
    return obj, _SLOT_OF_TYPE[type(obj)], _key_of(obj)


def _key_of(obj: Parsed) -> str:
    """Namespaces and Nodes by name, cluster policies by their key,
    everything else by namespace/name."""
    return obj.name if isinstance(obj, Namespace) else obj.key


def kind_of(obj: Parsed) -> str:
    """The kind an object came as (a converted AdminNetworkPolicy is a
    ClusterNetworkPolicy that remembers it)."""
    return obj.source_kind if isinstance(obj, ClusterNetworkPolicy) else type(obj).__name__


def table_key(kind: str, namespace: str | None, name: str) -> str:
    """An object's key in its table, from its kind, namespace and name."""
    if kind in (ANP_KIND, BANP_KIND):
        return f"{kind}/{name}"
    if kind in CLUSTER_SCOPED_KINDS:
        return name
    return f"{namespace}/{name}"


def _keep_last_valid(errors: Mapping[str, Any], fresh: dict[str, Any], previous: Mapping[str, Any],
                     kinds: frozenset[str]) -> None:
    """For every error (by ClusterStore.object_key) of one of `kinds`, put
    the object's previous valid version (if any) into `fresh`, unless a
    valid version of it is there already."""
    for err_key in errors:
        kind, _, where = err_key.partition(":")
        if kind not in kinds or "/" not in where:
            continue
        namespace, _, name = where.partition("/")
        key = table_key(kind, namespace or None, name)
        if key not in fresh and key in previous:
            fresh[key] = previous[key]
