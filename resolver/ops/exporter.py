"""The Prometheus families, every one built from one Snapshot, so one process and N workers export the same way.

Apart from ``resolver.ops.metrics`` (the HTTP side) because only a resolver with a metrics listener needs it: one with
metrics off never imports prometheus_client, whose import would lengthen every start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from resolver import __version__, build
from resolver.core.policy import exemption_state
from resolver.core.stats import LATENCY_BOUNDS, OUTCOMES, QTYPES, REJECT_REASONS, SHED_REASONS, TRANSPORTS
from resolver.ops.snapshot import Snapshot

__all__ = ["ListenerCollector", "ResolverCollector", "generate_latest", "make_registry"]


class ResolverCollector(Collector):
    """Builds every family from one Snapshot."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        for part in (_queries, _counters, _upstreams, _policy, _process):
            yield from part(snap)


def _queries(snap: Snapshot) -> Iterator[Metric]:
    """What was answered, and how: outcomes, blocks by platform and group, latency."""
    queries = CounterMetricFamily("resolver_queries", "DNS queries answered, by transport, query type and outcome.",
                                  labels=["transport", "qtype", "outcome"])
    i = 0
    for transport in TRANSPORTS:
        for qtype in QTYPES:
            for outcome in OUTCOMES:
                queries.add_metric([transport, qtype, outcome], snap.queries[i])
                i += 1
    yield queries
    for name, doc, counts in (
        ("resolver_blocked", "Blocked queries by platform (or list:NAME, or bypass) and group.", snap.blocked),
        ("resolver_monitored", "Would-be blocks in monitor mode, answered normally.", snap.monitored),
        ("resolver_exempted", "Blocks lifted by an active exemption.", snap.exempted),
    ):
        family = CounterMetricFamily(name, doc, labels=["platform", "group"])
        for (label, group), value in sorted(counts.items()):
            family.add_metric([label, group], value)
        yield family
    latency = HistogramMetricFamily("resolver_query_duration_seconds",
                                    "Time from receiving a query to sending its answer.", labels=["outcome"])
    for o, outcome in enumerate(OUTCOMES):
        latency.add_metric([outcome], _buckets(snap.buckets[o]), snap.sums[o])
    yield latency


def _counters(snap: Snapshot) -> Iterator[Metric]:
    """Packets and queries turned away at a bound or a check, and the cache."""
    c = snap.counters
    for name, doc, key in (
        ("resolver_malformed_packets", "Packets dropped unanswered (unreadable, or a response).", "malformed"),
        ("resolver_upstream_mismatched_replies", "Upstream replies dropped because ID or question did not match.",
         "upstream_mismatch"),
        ("resolver_acl_dropped_packets", "Packets from clients outside access.allow, dropped.", "acl_dropped"),
        ("resolver_rate_limited_queries", "Queries over a client's rate limit (dropped or truncated).",
         "rate_limited"),
        ("resolver_udp_send_dropped", "UDP answers the kernel refused: send buffer full, or the address unusable.",
         "send_dropped"),
        ("resolver_cache_hits", "Cache lookups that found a live answer.", "cache_hits"),
        ("resolver_cache_misses", "Cache lookups that found nothing live.", "cache_misses"),
        ("resolver_cache_evictions", "Answers evicted to keep the cache bounded.", "cache_evictions"),
    ):
        yield _counter(name, doc, c.get(key, 0))
    yield _gauge("resolver_cache_entries", "Answers held in the cache (summed over workers).", snap.cache_entries)
    yield _gauge("resolver_cache_bytes", "What the cached answers count against cache.max_bytes (summed over workers).",
                 snap.cache_bytes)
    shed = CounterMetricFamily("resolver_shed_queries", "Queries answered at once (stale or SERVFAIL) because a bound "
                               "was reached, by reason.", labels=["reason"])
    for reason in SHED_REASONS:
        shed.add_metric([reason], c.get(f"shed_{reason}", 0))
    yield shed
    rejected = CounterMetricFamily("resolver_tcp_rejected_connections", "TCP, DoT and DoH connections closed at "
                                   "accept, by reason: outside access.allow, or the cap reached.", labels=["reason"])
    for reason in REJECT_REASONS:
        rejected.add_metric([reason], c.get(f"tcp_rejected_{reason}", 0))
    yield rejected
    yield _gauge("resolver_tcp_connections", "Client TCP connections open now (summed over workers).",
                 snap.tcp_connections)
    yield _gauge("resolver_open_fds", "File descriptors open now (summed over workers).", snap.open_fds)


def _upstreams(snap: Snapshot) -> Iterator[Metric]:
    up_req = CounterMetricFamily("resolver_upstream_requests", "Queries sent upstream.", labels=["upstream"])
    up_err = CounterMetricFamily("resolver_upstream_errors", "Upstream failures other than timeouts.",
                                 labels=["upstream"])
    up_to = CounterMetricFamily("resolver_upstream_timeouts", "Upstream queries that timed out.",
                                labels=["upstream"])
    up_latency = HistogramMetricFamily("resolver_upstream_duration_seconds",
                                       "Time for an upstream to answer (attempts that got a reply).",
                                       labels=["upstream"])
    up_healthy = GaugeMetricFamily("resolver_upstream_healthy",
                                   "1 while an upstream is in the rotation, 0 while it is asked last.",
                                   labels=["upstream"])
    for name, up in snap.upstreams.items():
        up_req.add_metric([name], up.requests)
        up_err.add_metric([name], up.errors)
        up_to.add_metric([name], up.timeouts)
        up_latency.add_metric([name], _buckets(up.latency_buckets), up.latency_sum)
        up_healthy.add_metric([name], 1 if up.healthy else 0)
    yield from (up_req, up_err, up_to, up_latency, up_healthy)


def _policy(snap: Snapshot) -> Iterator[Metric]:
    """The active policy, its exemptions, and how it got loaded (reloads, list downloads)."""
    c = snap.counters
    domains = GaugeMetricFamily("resolver_policy_domains", "Domains listed per platform.",
                                labels=["platform", "category", "blocked"])
    for pid, category, blocked, count in snap.platforms:
        domains.add_metric([pid, category, str(blocked).lower()], count)
    yield domains
    now = time.time()
    states = GaugeMetricFamily("resolver_exemptions", "Exemptions by state.", labels=["state"])
    by_state = {"pending": 0, "active": 0, "expired": 0}
    expiry = GaugeMetricFamily("resolver_exemption_expiry_timestamp_seconds",
                               "When each exemption expires (alert before it does).",
                               labels=["reference", "platforms", "state"])
    for reference, platforms, starts, expires in snap.exemptions:
        state = exemption_state(now, starts, expires)
        by_state[state] += 1
        expiry.add_metric([reference, platforms, state], expires)
    for state, count in by_state.items():
        states.add_metric([state], count)
    yield from (states, expiry)
    # One series per worker (worker="0" for a single process too, so a query never depends on --workers): a reload
    # refused by one worker and taken by another shows as two versions on one instance.
    info = GaugeMetricFamily("resolver_policy_info", "The policy version (a content hash) each worker serves.",
                             labels=["version", "worker"])
    for worker, version in sorted(snap.policy_versions.items()):
        info.add_metric([version, str(worker)], 1)
    yield info
    yield _gauge("resolver_policy_loaded_timestamp_seconds", "When the active policy was loaded.", snap.loaded_at)
    reloads = CounterMetricFamily("resolver_reloads", "Policy reloads by result.", labels=["result"])
    reloads.add_metric(["success"], c.get("reloads_ok", 0))
    reloads.add_metric(["failure"], c.get("reloads_failed", 0))
    reloads.add_metric(["refused"], c.get("reloads_refused", 0))
    yield reloads
    fetches = CounterMetricFamily("resolver_list_fetches", "Downloads of URL lists by result.",
                                  labels=["result"])
    fetches.add_metric(["success"], c.get("fetch_ok", 0))
    fetches.add_metric(["failure"], c.get("fetch_failed", 0))
    yield fetches


def _process(snap: Snapshot) -> Iterator[Metric]:
    """The query log, the workers and the build."""
    c = snap.counters
    lines = CounterMetricFamily("resolver_querylog_lines", "Query log lines by result (dropped: queue or disk "
                                "full; answering never waits for the log).", labels=["result"])
    if snap.querylog is not None:
        lines.add_metric(["written"], snap.querylog[0])
        lines.add_metric(["dropped"], snap.querylog[1])
    yield lines
    yield _gauge("resolver_workers", "Worker processes serving (1 without --workers).", snap.workers)
    yield _counter("resolver_worker_restarts", "Worker processes restarted after dying.",
                   c.get("worker_restarts", 0))
    yield _gauge("resolver_start_time_seconds", "When the resolver started.", snap.started)
    info = GaugeMetricFamily("resolver_build_info", "Build information: version, and mypyc or python (the hot path "
                             "compiled or interpreted).", labels=["version", "build"])
    info.add_metric([__version__, build()], 1)
    yield info


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts -> Prometheus's cumulative (le, count) pairs."""
    out: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*LATENCY_BOUNDS, float("inf")), counts, strict=True):
        cumulative += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return out


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ListenerCollector(Collector):
    """The metrics listener's own count, kept by the process that serves it (the supervisor with workers)."""

    def __init__(self, turned_away: Callable[[], int]) -> None:
        self.turned_away = turned_away

    def collect(self) -> Iterator[Metric]:
        yield _counter("resolver_metrics_rejected_connections", "Connections to the metrics listener closed because "
                       "it had as many as it serves at once.", self.turned_away())


def make_registry(source: Callable[[], Snapshot], turned_away: Callable[[], int] | None = None) -> CollectorRegistry:
    """The registry /metrics renders; ``turned_away``: the metrics listener's connections closed for its cap."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResolverCollector(source))
    if turned_away is not None:
        registry.register(ListenerCollector(turned_away))
    ProcessCollector(registry=registry)
    return registry
