"""Snapshots: ``take`` copies the numbers out of the parts it is handed, and ``merge`` adds workers' copies up so
that no counter goes backwards when a worker dies."""

from __future__ import annotations

import pickle
from dataclasses import replace

from resolver.core.builder import build_policy
from resolver.core.cache import Cache, CacheLimits
from resolver.core.policy import Bypass, GroupSpec, Platform, Policy, PolicySpec
from resolver.core.stats import BLOCKED, UDP, Stats
from resolver.net.upstream import UpstreamStats
from resolver.ops.exporter import generate_latest, make_registry
from resolver.ops.reload import ReloadStats
from resolver.ops.snapshot import Snapshot, UpstreamSnap, merge, take
from tests.support.prom import parse_samples


def _policy() -> Policy:
    platforms = [Platform(pid, pid.title(), category, "Owner", (f"{pid}.example",), f"/lists/{pid}.yaml")
                 for pid, category in (("tiktok", "social"), ("facebook", "social"), ("travel", "travel"))]
    spec = PolicySpec(groups=(GroupSpec("default", ("social",), ()),), bypass=Bypass(doh_servers=False))
    return build_policy(platforms, [], spec)


def _take(stats: Stats, *, loop_now: float = 100.0, down_until: float = 0.0, ready: bool = True,
          worker: int = 0) -> Snapshot:
    upstream = UpstreamStats(requests=5, errors=1, timeouts=2, down_until=down_until, last_ok=90.0)
    return take(stats=stats, cache=Cache(CacheLimits()), policy=_policy(),
                reloads=ReloadStats(ok=3, failed=2, refused=1, loaded_at=50.0), upstreams={"192.0.2.1:53": upstream},
                loop_now=loop_now, tcp_rejected={"access": 4, "total": 1}, querylog=(7, 1), ready=ready, started=10.0,
                worker=worker)


def _snap(queries: int, *, loaded_at: float = 50.0, started: float = 10.0, ready: bool = True,
          cache_entries: int = 0, healthy: bool = True, version: str = "v1") -> Snapshot:
    return Snapshot(
        queries=[queries, 0], buckets=[[queries, 0]], sums=[queries / 10], blocked={("tiktok", "default"): queries},
        monitored={}, exempted={}, counters={"cache_hits": queries}, cache_entries=cache_entries,
        upstreams={"u": UpstreamSnap(queries, 0, 0, [queries], 0.0, healthy)}, policy_version=version,
        platforms=[], exemptions=[], loaded_at=loaded_at, ready=ready, started=started, querylog=(queries, 0))


def test_take_copies_the_numbers_and_exports_every_blocked_platform_from_zero() -> None:
    stats = Stats()
    stats.observe(UDP, 0, BLOCKED, 0.001)
    stats.blocked[("tiktok", "default")] = 1
    snap = _take(stats)
    assert sum(snap.queries) == 1
    assert snap.blocked == {("tiktok", "default"): 1, ("facebook", "default"): 0}
    assert snap.counters["reloads_ok"] == 3
    assert snap.counters["tcp_rejected_access"] == 4 and snap.counters["tcp_rejected_total"] == 1
    assert snap.counters["reloads_failed"] == 2 and snap.counters["reloads_refused"] == 1
    assert snap.querylog == (7, 1) and snap.loaded_at == 50.0 and snap.started == 10.0 and snap.ready
    assert {p[0]: p[2] for p in snap.platforms} == {"tiktok": True, "facebook": True, "travel": False}
    assert snap.upstreams["192.0.2.1:53"] == UpstreamSnap(5, 1, 2, [0] * len(snap.buckets[0]), 0.0, True, 10.0)
    # A copy: what the server counts afterwards does not reach a snapshot already sent.
    stats.observe(UDP, 0, BLOCKED, 0.001)
    stats.blocked[("tiktok", "default")] = 2
    assert sum(snap.queries) == 1 and snap.blocked[("tiktok", "default")] == 1


def test_an_upstream_is_healthy_once_its_penalty_is_over_on_the_loop_clock() -> None:
    assert not _take(Stats(), loop_now=100.0, down_until=100.5).upstreams["192.0.2.1:53"].healthy
    assert _take(Stats(), loop_now=100.5, down_until=100.5).upstreams["192.0.2.1:53"].healthy


def test_a_snapshot_survives_the_pipe() -> None:
    snap = _take(Stats())
    assert pickle.loads(pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL)) == snap


def test_merge_adds_counters_and_keeps_what_retired_workers_counted() -> None:
    retired = merge([], merge([_snap(5, cache_entries=9, healthy=True, started=1.0)]))
    out = merge([_snap(2, cache_entries=3, healthy=False), _snap(3, cache_entries=4, healthy=False)], retired)
    assert out.queries == [10, 0] and out.buckets == [[10, 0]] and out.sums == [1.0]
    assert out.blocked == {("tiktok", "default"): 10} and out.counters == {"cache_hits": 10}
    assert out.upstreams["u"].requests == 10 and out.querylog == (10, 0)
    # What only the living hold: the cache (a dead worker's went with it), health, readiness, the worker count.
    assert out.cache_entries == 7 and not out.upstreams["u"].healthy and out.workers == 2
    assert out.started == 1.0  # the service started with the first worker


def test_merge_is_ready_only_when_every_living_worker_is() -> None:
    assert merge([_snap(1), _snap(1)]).ready
    assert not merge([_snap(1), _snap(1, ready=False)]).ready
    assert not merge([], _snap(1)).ready  # only dead workers' counts: nobody is serving


def test_merge_takes_the_policy_facts_from_the_newest_load() -> None:
    old, new = _snap(1, loaded_at=50.0, version="old"), _snap(1, loaded_at=60.0, version="new")
    assert merge([new, old]).policy_version == "new"
    assert merge([old], replace(new, loaded_at=70.0)).policy_version == "old"  # a dead worker's policy is no fact


def test_each_worker_reports_the_version_it_serves_and_only_the_living_count() -> None:
    version = _policy().version
    assert _take(Stats()).policy_versions == {0: version}  # a single process is worker 0
    assert _take(Stats(), worker=1).policy_versions == {1: version}
    a, b = replace(_snap(1), policy_versions={0: "a"}), replace(_snap(1), policy_versions={1: "b"})
    retired = merge([], merge([replace(_snap(1), policy_versions={2: "gone"})]))
    assert retired.policy_versions == {}  # a dead worker serves nothing
    assert merge([a, b], retired).policy_versions == {0: "a", 1: "b"}


def _scrape(snap: Snapshot) -> list[tuple[str, dict[str, str], float]]:
    return parse_samples(generate_latest(make_registry(lambda: snap)).decode())


def test_a_scrape_shows_one_policy_version_per_worker_and_refused_reloads() -> None:
    workers = [_take(Stats(), worker=i) for i in (0, 1)]
    workers[1] = replace(workers[1], policy_versions={1: "other"})  # worker 1 took a reload worker 0 refused
    samples = _scrape(merge(workers))
    info = sorted((labels["worker"], labels["version"], value) for name, labels, value in samples
                  if name == "resolver_policy_info")
    assert info == [("0", _policy().version, 1.0), ("1", "other", 1.0)]
    reloads = {labels["result"]: value for name, labels, value in samples if name == "resolver_reloads_total"}
    assert reloads == {"success": 6.0, "failure": 4.0, "refused": 2.0}
    single = [(name, labels) for name, labels, _ in _scrape(_take(Stats())) if name == "resolver_policy_info"]
    assert single == [("resolver_policy_info", {"version": _policy().version, "worker": "0"})]


def test_merge_adds_the_connection_and_descriptor_gauges_of_the_living_only() -> None:
    retired = replace(_snap(1), tcp_connections=50, open_fds=80)  # a dead worker's sockets closed with it
    out = merge([replace(_snap(1), tcp_connections=3, open_fds=40), replace(_snap(1), tcp_connections=2,
                                                                             open_fds=30)], retired)
    assert out.tcp_connections == 5 and out.open_fds == 70


def test_merge_keeps_the_freshest_good_reply_of_an_upstream() -> None:
    """/readyz?verbose shows an upstream up when any worker heard from it lately: each asks it on its own."""
    parts = [_snap(1), _snap(2), _snap(3)]
    for part, ago in zip(parts, (40.0, 5.0, float("inf")), strict=True):
        part.upstreams["u"].answered_ago = ago
    assert merge(parts).upstreams["u"].answered_ago == 5.0
    assert merge([parts[2]], retired=parts[1]).upstreams["u"].answered_ago == float("inf")  # the dead one's is old
