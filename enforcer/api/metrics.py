"""Prometheus metrics, read from the daemon at scrape time (counters from
the per-CPU maps, occupancy, invalid objects) plus the sync latency
histogram the reconcile loop observes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..datapath.layout import DIR_INGRESS
from ..datapath.reasons import is_drop
from ..datapath.sync import REASONS, WRITTEN_MAPS
from .flows import tier_of_reason


class DaemonCollector(Collector):
    def __init__(self, daemon, flows=None, history=None) -> None:
        self.daemon = daemon
        self.flows = flows  # the FlowHub, when flows are served
        self.history = history  # the HistoryRecorder, when one records

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        verdicts = CounterMetricFamily("enforcer_verdicts",
                                       "Packets by verdict reason, endpoint and direction; verdict: allowed, "
                                       "denied, or audit (passed; a policy in audit mode would drop it); tier: "
                                       "the tier the reason names (Admin, Baseline, NetworkPolicy; empty for the "
                                       "others)",
                                       labels=["namespace", "pod", "direction", "reason", "verdict", "tier"])
        view = self.daemon.view()
        endpoints = [(0, "", "")]
        if view is not None:
            endpoints += [(i, *s.pod.split("/", 1)) for i, s in sorted(view.endpoint_by_id.items())]
        for ep_id, ns, pod in endpoints:
            for (direction, reason), (pkts, _bytes) in self.daemon.counters(ep_id).items():
                verdicts.add_metric([ns, pod, "ingress" if direction == DIR_INGRESS else "egress",
                                     reason.name, "denied" if is_drop(reason)
                                     else "audit" if reason.name == "ALLOW_AUDIT" else "allowed",
                                     tier_of_reason(reason)], pkts)
        yield verdicts
        entries = GaugeMetricFamily("enforcer_map_entries", "Entries in a datapath map", labels=["map"])
        capacity = GaugeMetricFamily("enforcer_map_capacity", "Capacity of a datapath map", labels=["map"])
        for name, (n, cap) in self.daemon.map_occupancy().items():
            entries.add_metric([name], n)
            capacity.add_metric([name], cap)
        yield entries
        yield capacity
        yield GaugeMetricFamily("enforcer_invalid_objects", "Objects not enforced as written",
                                value=len(view.desired.errors) if view is not None else 0)
        notices = getattr(view.desired, "notices", ()) if view is not None else ()
        yield GaugeMetricFamily("enforcer_cluster_policy_notices",
                                "Same-priority cluster policies of one tier selecting one local pod (ordered by name)",
                                value=len(notices))
        failures = self.daemon.status.write_failures
        not_written = GaugeMetricFamily("enforcer_map_write_failures",
                                        "Entries the last sync pass could not write, by map and reason "
                                        "(full: no room; other: another error; held: an ipcache prefix waiting "
                                        "for a more specific entry that could not be written)",
                                        labels=["map", "reason"])
        for name in WRITTEN_MAPS:
            by_reason = failures.by_map.get(name, {})
            for reason in REASONS:
                not_written.add_metric([name, reason], by_reason.get(reason, 0))
        yield not_written
        yield GaugeMetricFamily("enforcer_objects_not_written",
                                "Objects (policies, pods, Services...) with entries the last sync pass could not write",
                                value=failures.objects_total)
        yield GaugeMetricFamily("enforcer_ready", "1 once the first sync is written",
                                value=1 if self.daemon.status.ready else 0)
        events = self.daemon.event_stats()
        yield CounterMetricFamily("enforcer_events_suppressed", "Verdict events held back by the rate limit",
                                  value=events.get("suppressed", 0))
        yield CounterMetricFamily("enforcer_events_lost", "Verdict events lost to a full ring buffer",
                                  value=events.get("lost", 0))
        if self.flows is not None:
            yield CounterMetricFamily("enforcer_flows_dropped_slow_subscribers",
                                      "Flows not delivered to a StreamFlows subscriber whose queue was full",
                                      value=self.flows.dropped_for_slow_subscribers)
        if self.history is not None and self.history.enabled:
            st = self.history.stats()
            yield GaugeMetricFamily("enforcer_history_rows", "Rows in the flow history", value=st.rows)
            yield GaugeMetricFamily("enforcer_history_max_rows", "The flow history's cap in rows", value=st.max_rows)
            yield CounterMetricFamily("enforcer_history_rows_evicted",
                                      "Flow history rows dropped for room, seen longest ago first",
                                      value=st.rows_evicted)
            missed = CounterMetricFamily("enforcer_history_events_missed",
                                         "Verdict events the flow history did not record, by why: queue_full, "
                                         "unattributed (no local pod, labels too large), write_error",
                                         labels=["why"])
            missed.add_metric(["queue_full"], st.events_dropped)
            missed.add_metric(["unattributed"], st.events_unattributed)
            missed.add_metric(["write_error"], st.write_errors)
            yield missed


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sync_seconds = Histogram("enforcer_sync_duration_seconds",
                                      "Time of a reconcile pass: snapshot to maps written",
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                      registry=self.registry)

    def attach(self, daemon, flows=None, history=None) -> None:
        self.registry.register(DaemonCollector(daemon, flows, history))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
