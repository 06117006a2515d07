"""Namespaces, Pods, NetworkPolicies, Services, EndpointSlices, Nodes and
the policy.networking.k8s.io CRDs (ClusterNetworkPolicy v1alpha2,
AdminNetworkPolicy and BaselineAdminNetworkPolicy v1alpha1) from the
Kubernetes API: list, then watch from the list's resourceVersion, per kind
(a reflector each).

- Continuity: every event and bookmark advances the kind's resourceVersion;
  a watch that ends (server timeout, dropped connection, API server
  restart) resumes from it, so nothing is missed or replayed.
- 410 Gone (the version was compacted away): list again and replace that
  kind in one step (ClusterStore.replace_kind); the reconcile loop then
  writes only the difference, so enforcement never drops.
- Outages: the store keeps the last good state and the datapath keeps
  enforcing it; reconnects back off exponentially with full jitter.
- Readiness: the store is marked ready only after every kind has been
  listed once; before that nothing is compiled (a partial view would
  remove entries a previous daemon left).
- A CRD that is not installed (404 Not Found) holds no objects: its kind
  counts as listed (empty) for readiness and revision, is logged once, and
  is asked for again with the usual backoff (capped at BACKOFF_MAX_S) until
  it is served; then it is listed and watched like any other kind.
- Objects stay the API's JSON: lists are read raw, and watch events are
  not turned into the client's models (which reject what the model must
  report itself, e.g. an EndpointSlice whose addresses are not a list: the
  watch would fail on that event again on every retry and stall the kind).
List items come without kind/apiVersion (as the API sends them); the
source puts them back, so the model parses exactly what `kubectl get -o
json` prints.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..model.state import ClusterStore

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # server-side; a little jitter is added per watch
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


POLICY_GROUP = "policy.networking.k8s.io"


@dataclass(frozen=True)
class Kind:
    name: str
    api_version: str
    list_fn: Callable[..., Any]
    optional: bool = False  # a CRD: may not be installed (404), which is no error


def api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster config when running in a pod, else the kubeconfig."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def kinds(api: Any) -> list[Kind]:
    from kubernetes import client

    core, net, discovery = client.CoreV1Api(api), client.NetworkingV1Api(api), client.DiscoveryV1Api(api)
    custom = client.CustomObjectsApi(api)

    def crd(kind: str, version: str, plural: str) -> Kind:
        return Kind(kind, f"{POLICY_GROUP}/{version}",
                    functools.partial(custom.list_cluster_custom_object, POLICY_GROUP, version, plural), optional=True)

    return [Kind("Namespace", "v1", core.list_namespace),
            Kind("Pod", "v1", core.list_pod_for_all_namespaces),
            Kind("NetworkPolicy", "networking.k8s.io/v1", net.list_network_policy_for_all_namespaces),
            Kind("Service", "v1", core.list_service_for_all_namespaces),
            Kind("EndpointSlice", "discovery.k8s.io/v1", discovery.list_endpoint_slice_for_all_namespaces),
            Kind("Node", "v1", core.list_node),
            crd("ClusterNetworkPolicy", "v1alpha2", "clusternetworkpolicies"),
            crd("AdminNetworkPolicy", "v1alpha1", "adminnetworkpolicies"),
            crd("BaselineAdminNetworkPolicy", "v1alpha1", "baselineadminnetworkpolicies")]


def _raw_watch() -> Any:
    """A Watch whose events carry the API's JSON only: with no return type
    the client skips its model deserialisation ('object' is the raw dict),
    while ERROR events (410 Gone) still raise ApiException as usual."""
    from kubernetes import watch

    class RawWatch(watch.Watch):
        def get_return_type(self, func: Any) -> None:
            return None

    return RawWatch()


class Reflector:
    def __init__(self, kind: Kind, store: ClusterStore, on_listed: Callable[[], None],
                 revision: Callable[[], str], stop: threading.Event) -> None:
        self.kind = kind
        self.store = store
        self.on_listed = on_listed
        self.revision = revision
        self.stop = stop
        self.resource_version: str | None = None
        self.lists = 0
        self.watches = 0
        self.errors = 0
        # An optional kind (a CRD) the API server does not serve: it holds no
        # objects, and counts as listed for readiness and the revision.
        self.absent = False
        self.absent_checks = 0
        self._backoff = BACKOFF_START_S
        self._watch: Any = None
        self.thread = threading.Thread(target=self._run, name=f"watch-{kind.name}", daemon=True)

    def _complete(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("kind", self.kind.name)
        obj.setdefault("apiVersion", self.kind.api_version)
        return obj

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch_once()
                self._backoff = BACKOFF_START_S
            except ApiException as e:
                if e.status == 410:
                    log.info("%s: resourceVersion %s expired (410 Gone): listing again",
                             self.kind.name, self.resource_version)
                    self.resource_version = None
                    continue
                if e.status == 404 and self.kind.optional:
                    self._not_served()
                    continue
                self._wait_after_error(f"API error {e.status} {e.reason}")
            except Exception as e:  # connection refused/reset, timeouts, bad JSON: back off
                self._wait_after_error(f"{type(e).__name__}: {e}")

    def _not_served(self) -> None:
        """404 on an optional kind: its CRD is not installed (or was
        removed, which deletes its objects). Nothing of it is in force; it
        does not hold back readiness; asked again with backoff, logged once."""
        first = not self.absent
        self.absent = True  # before the version goes: the revision never waits for this kind
        self.resource_version = None
        self.absent_checks += 1
        if first:
            log.info("%s: not served by the API server (%s: CRD not installed?); going on without it, "
                     "checking again every %.0f s at most", self.kind.name, self.kind.api_version, BACKOFF_MAX_S)
            self.store.replace_kind(self.kind.name, [], self.revision())
            self.on_listed()
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        self.stop.wait(random.uniform(self._backoff / 2, self._backoff))

    def _wait_after_error(self, what: str) -> None:
        self.errors += 1
        delay = random.uniform(0, self._backoff)  # full jitter
        log.warning("%s: %s; keeping the last good state, retrying in %.1fs", self.kind.name, what, delay)
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        self.stop.wait(delay)

    def _list(self) -> None:
        resp = self.kind.list_fn(_preload_content=False, _request_timeout=60)
        body = json.loads(resp.data)
        items = [self._complete(item) for item in body.get("items") or []]
        self.resource_version = body["metadata"]["resourceVersion"]
        if self.absent:
            log.info("%s: served now; listed %d", self.kind.name, len(items))
            self.absent = False
        self.store.replace_kind(self.kind.name, items, self.revision())
        self.lists += 1
        self.on_listed()

    def _watch_once(self) -> None:
        self._watch = _raw_watch()
        self.watches += 1
        timeout = WATCH_TIMEOUT_S + random.randint(0, 60)
        for event in self._watch.stream(self.kind.list_fn, resource_version=self.resource_version,
                                        allow_watch_bookmarks=True, timeout_seconds=timeout,
                                        _request_timeout=timeout + 30):
            if self.stop.is_set():
                self._watch.stop()
                return
            obj = event["raw_object"]
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            kind = event["type"]
            if kind in ("ADDED", "MODIFIED"):
                self.store.upsert(self._complete(obj), self.revision())
            elif kind == "DELETED":
                meta = obj.get("metadata") or {}
                self.store.delete(self.kind.name, meta.get("namespace"), str(meta.get("name", "")), self.revision())
            elif kind == "BOOKMARK":
                self.store.set_source_revision(self.revision())


class KubernetesSource:
    def __init__(self, store: ClusterStore, api: Any) -> None:
        self.store = store
        self.api = api
        self.host = getattr(api.configuration, "host", "")
        self._stop = threading.Event()
        self.reflectors = [Reflector(k, store, self._listed, self._revision, self._stop) for k in kinds(api)]

    def _revision(self) -> str:
        """The version the store is complete up to: resourceVersions are one
        cluster-wide sequence (etcd's revision), and each kind has seen
        everything up to its own (bookmarks move idle kinds along), so the
        store holds the cluster as of the smallest. (The largest would claim
        a version whose event a slower kind has not delivered yet.)"""
        versions = [r.resource_version for r in self.reflectors if not r.absent]  # an absent kind holds nothing
        if not versions or any(v is None for v in versions):
            return "rv:0"
        return f"rv:{min(int(v) for v in versions)}"  # type: ignore[arg-type]

    def _listed(self) -> None:
        if all(r.lists or r.absent for r in self.reflectors) and not self.store.ready.is_set():
            absent = [r.kind.name for r in self.reflectors if r.absent and not r.lists]
            log.info("initial list of %s complete%s", ", ".join(r.kind.name for r in self.reflectors if r.lists),
                     f" ({', '.join(absent)} not served)" if absent else "")
            self.store.mark_ready()

    def start(self) -> None:
        for r in self.reflectors:
            r.thread.start()

    def stop(self) -> None:
        self._stop.set()
        for r in self.reflectors:
            if r._watch is not None:
                r._watch.stop()
        for r in self.reflectors:
            r.thread.join(timeout=2)
