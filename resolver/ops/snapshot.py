"""A picklable copy of every number the metrics and the status page show, and how to add them up.

One process takes its snapshot at scrape time. With ``--workers N`` each worker sends one to the supervisor every
``SNAPSHOT_SECONDS``, and the supervisor adds them (plus what workers that died had counted, so counters never go
backwards).

``take`` is handed exactly the parts it reads, never the server: this module sits below the composition root (the
supervisor imports it too), so it must not import its way back up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from resolver.core.stats import SHED_REASONS  # (a tuple of names: the counters module imports nothing heavy)

if TYPE_CHECKING:  # types only: the supervisor, which merely adds snapshots up, need not load the serving modules
    from resolver.core.cache import Cache
    from resolver.core.policy import Policy
    from resolver.core.stats import Stats
    from resolver.net.upstream import UpstreamStats
    from resolver.ops.reload import ReloadStats


@dataclass(slots=True)
class UpstreamSnap:
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latency_buckets: list[int] = field(default_factory=list)
    latency_sum: float = 0.0
    healthy: bool = False
    answered_ago: float = float("inf")  # seconds since its last good reply (a query or a probe), at ``taken``


@dataclass(slots=True)
class Snapshot:
    queries: list[int]
    buckets: list[list[int]]
    sums: list[float]
    blocked: dict[tuple[str, str], int]
    monitored: dict[tuple[str, str], int]
    exempted: dict[tuple[str, str], int]
    counters: dict[str, int]  # malformed, upstream_mismatch, shed, acl_dropped, rate_limited, cache_*, …
    cache_entries: int
    upstreams: dict[str, UpstreamSnap]
    policy_version: str  # the newest of the living workers' (the status page shows one)
    platforms: list[tuple[str, str, bool, int]]  # id, category, blocked for default, domains
    exemptions: list[tuple[str, str, float, float]]  # reference, platforms, starts, expires
    loaded_at: float
    ready: bool
    started: float
    querylog: tuple[int, int] | None = None  # written, dropped
    workers: int = 1
    cache_bytes: int = 0
    taken: float = field(default_factory=time.time)
    # worker index -> the version it serves, each living worker's own: after a reload one worker may have refused
    # what another took, and only a version per worker makes that visible.
    policy_versions: dict[int, str] = field(default_factory=dict)
    tcp_connections: int = 0  # gauges: added up over the live workers only
    open_fds: int = 0


def take(*, stats: Stats, cache: Cache, policy: Policy, reloads: ReloadStats, upstreams: Mapping[str, UpstreamStats],
         loop_now: float, tcp_rejected: Mapping[str, int], querylog: tuple[int, int] | None, ready: bool,
         started: float, worker: int = 0, tcp_connections: int = 0, open_fds: int = 0) -> Snapshot:
    """Copy the numbers out now. ``loop_now`` is the event loop's clock, the one upstream health is kept on;
    ``querylog`` is (written, dropped), None without a query log; ``started`` is Unix time; ``worker`` is this
    process's index under ``--workers N`` (0 for a single process)."""
    default = policy.groups[0]
    # Every (platform, group) the policy blocks or monitors is exported from 0, so rate() sees the first one.
    blocked = {(pid, g.name): 0 for g in policy.groups for pid in g.block}
    blocked.update(stats.blocked)
    monitored = {(pid, g.name): 0 for g in policy.groups for pid in g.monitor}
    monitored.update(stats.monitored)
    return Snapshot(
        queries=list(stats.queries),
        buckets=[list(b) for b in stats.buckets],
        sums=list(stats.sums),
        blocked=blocked,
        monitored=monitored,
        exempted=dict(stats.exempted),
        counters={
            "malformed": stats.malformed, "upstream_mismatch": stats.upstream_mismatch, "shed": stats.shed,
            "acl_dropped": stats.acl_dropped, "rate_limited": stats.rate_limited, "send_dropped": stats.send_dropped,
            "cache_hits": cache.hits, "cache_misses": cache.misses, "cache_evictions": cache.evictions,
            "reloads_ok": reloads.ok, "reloads_failed": reloads.failed, "reloads_refused": reloads.refused,
            "fetch_ok": reloads.fetch_ok, "fetch_failed": reloads.fetch_failed,
            **{f"tcp_rejected_{reason}": n for reason, n in tcp_rejected.items()},
            **{f"shed_{reason}": n for reason, n in zip(SHED_REASONS, stats.shed_by, strict=True)},
        },
        cache_entries=len(cache),
        cache_bytes=cache.bytes,
        upstreams={
            name: UpstreamSnap(u.requests, u.errors, u.timeouts, list(u.latency_buckets), u.latency_sum,
                               u.down_until <= loop_now, loop_now - u.last_ok)
            for name, u in upstreams.items()
        },
        policy_version=policy.version,
        platforms=[(p.id, p.category, p.id in default.block, len(p.domains)) for p in policy.platforms.values()],
        exemptions=[(e.reference, ",".join(sorted(e.platforms)), e.starts, e.expires) for e in policy.exemptions],
        loaded_at=reloads.loaded_at,
        ready=ready,
        started=started,
        querylog=querylog,
        policy_versions={worker: policy.version},
        tcp_connections=tcp_connections,
        open_fds=open_fds,
    )


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)] if a else list(b)


def _add_dicts(a: dict[tuple[str, str], int], b: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return out


def merge(parts: list[Snapshot], retired: Snapshot | None = None) -> Snapshot:
    """Counters add up; the cache sizes add up (each worker has its own); policy facts come from the newest, except
    the version per worker, which only the living report (a dead worker serves nothing)."""
    every = ([retired] if retired is not None else []) + parts
    live = parts or every
    newest = max(live, key=lambda s: s.loaded_at)
    out = Snapshot(
        queries=[], buckets=[], sums=[], blocked={}, monitored={}, exempted={}, counters={}, cache_entries=0,
        upstreams={}, policy_version=newest.policy_version, platforms=newest.platforms,
        exemptions=newest.exemptions, loaded_at=newest.loaded_at, ready=bool(parts) and all(s.ready for s in parts),
        started=min(s.started for s in every), workers=len(parts),
        policy_versions={index: version for snap in parts for index, version in snap.policy_versions.items()},
    )
    for snap in every:
        out.queries = _add_lists(out.queries, snap.queries)
        out.buckets = [_add_lists(a, b) for a, b in zip(out.buckets, snap.buckets, strict=True)] \
            if out.buckets else [list(b) for b in snap.buckets]
        out.sums = [a + b for a, b in zip(out.sums, snap.sums, strict=True)] if out.sums else list(snap.sums)
        out.blocked = _add_dicts(out.blocked, snap.blocked)
        out.monitored = _add_dicts(out.monitored, snap.monitored)
        out.exempted = _add_dicts(out.exempted, snap.exempted)
        for key, value in snap.counters.items():
            out.counters[key] = out.counters.get(key, 0) + value
        for name, up in snap.upstreams.items():
            mine = out.upstreams.setdefault(name, UpstreamSnap())
            mine.requests += up.requests
            mine.errors += up.errors
            mine.timeouts += up.timeouts
            mine.latency_buckets = _add_lists(mine.latency_buckets, up.latency_buckets)
            mine.latency_sum += up.latency_sum
        if snap.querylog is not None:
            written, dropped = out.querylog or (0, 0)
            out.querylog = (written + snap.querylog[0], dropped + snap.querylog[1])
    for snap in parts:
        out.cache_entries += snap.cache_entries
        out.cache_bytes += snap.cache_bytes
        out.tcp_connections += snap.tcp_connections
        out.open_fds += snap.open_fds
        for name, up in snap.upstreams.items():
            out.upstreams[name].healthy |= up.healthy
            out.upstreams[name].answered_ago = min(out.upstreams[name].answered_ago, up.answered_ago)
    return out
