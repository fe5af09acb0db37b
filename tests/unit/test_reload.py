"""Reload decisions, without sockets or sleeps: a fake clock, fake builds and fetches, a pipeline that records swaps.

What is decided: whether a change of the watched files starts a reload and what the watcher remembers after one;
what the reload line says changed; when a URL list is fetched again; that a failed build keeps the old policy
and is counted, and a good one is swapped in. The loops in ``Reloader.watch`` and ``refresh`` only sleep and call
these; the integration tests (test_policy, test_faults, test_lifecycle) run them against a real server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from resolver.config.loader import config_from_dict, with_overrides
from resolver.config.model import Config
from resolver.config.policy import ListSource
from resolver.core.policy import Policy
from resolver.errors import ConfigError
from resolver.lists.load import Loaded, load_policy
from resolver.ops import reload
from resolver.ops.reload import (
    FETCH_RETRY,
    Reloader,
    Summary,
    after_reload,
    changed_files,
    next_fetch_delay,
    watch_reason,
)
from tests.support.listsite import ListSite

A, B, C = Path("/etc/resolver/a.yaml"), Path("/etc/resolver/b.yaml"), Path("/etc/resolver/c.yaml")


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakePipeline:
    """Records what would be served: the swap is the one thing a reload does to the serving path."""

    def __init__(self) -> None:
        self.swapped: list[Policy] = []

    def swap(self, policy: Policy) -> None:
        self.swapped.append(policy)


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    """A swap freezes the GC's view of the heap (for a long-lived policy); give later tests theirs back."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def before() -> tuple[Config, Loaded]:
    config = Config()
    return config, load_policy(config)


@pytest.fixture(scope="module")
def after(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Loaded]:
    listed = tmp_path_factory.mktemp("lists") / "ads.txt"
    listed.write_text("ads.example\ntracker.example\n")
    config = with_overrides(Config(), blocklists=[str(listed)])
    return config, load_policy(config)


def make(before: tuple[Config, Loaded], build: Callable[..., Any] | None = None,
         fetch: Callable[..., Any] | None = None) -> tuple[Reloader, FakePipeline, FakeClock]:
    pipeline, clock = FakePipeline(), FakeClock()
    config, loaded = before
    kwargs: dict[str, Any] = {"clock": clock}
    if build is not None:
        kwargs["build"] = build
    if fetch is not None:
        kwargs["fetch"] = fetch
    return Reloader(lambda: config, config, pipeline, loaded, **kwargs), pipeline, clock  # type: ignore[arg-type]


# --- does a change of the watched files start a reload --------------------------------------------------------


def test_no_change_no_reload() -> None:
    seen = {A: (1, 10), B: (2, 20)}
    assert changed_files(seen, dict(seen)) == []


@pytest.mark.parametrize(("now", "changed"), [
    ({A: (5, 10), B: (2, 20)}, [str(A)]),  # edited in place: a new mtime, the same size
    ({A: (1, 11), B: (2, 20)}, [str(A)]),  # the same mtime (a coarse clock), a new size
    ({A: (1, 10), B: (-1, -1)}, [str(B)]),  # gone or unreadable
    ({A: (1, 10), B: (2, 20), C: (3, 30)}, [str(C)]),  # a new platform file in the directory
    ({A: (1, 10)}, [str(B)]),  # no longer watched (the config dropped it)
    ({B: (9, 9), A: (9, 9)}, [str(A), str(B)]),  # sorted, so the log line is stable
])
def test_a_changed_added_or_removed_file_starts_a_reload(now: dict[Path, tuple[int, int]], changed: list[str]) -> None:
    assert changed_files({A: (1, 10), B: (2, 20)}, now) == changed


def test_the_reason_names_the_first_three_files() -> None:
    assert watch_reason(["a", "b"]) == "changed: a, b"
    assert watch_reason(["a", "b", "c"]) == "changed: a, b, c"
    assert watch_reason(["a", "b", "c", "d"]) == "changed: a, b, c …"


def test_a_change_during_the_reload_still_counts_afterwards() -> None:
    started = {A: (1, 10), B: (2, 20)}
    current = {A: (7, 70), B: (2, 20), C: (3, 30)}  # A edited while the build ran; C added by the new config
    seen = after_reload(started, current)
    assert seen == {A: (1, 10), B: (2, 20), C: (3, 30)}
    assert changed_files(seen, current) == [str(A)]  # so the next look reloads again, for A only


def test_a_file_the_new_config_dropped_is_forgotten() -> None:
    assert after_reload({A: (1, 10), B: (2, 20)}, {A: (1, 10)}) == {A: (1, 10)}


def test_watched_covers_the_config_the_platform_files_and_the_list_files(tmp_path: Path,
                                                                         before: tuple[Config, Loaded]) -> None:
    platforms = tmp_path / "blocklists"
    platforms.mkdir()
    (platforms / "one.yaml").write_text("name: One\n")
    listed = tmp_path / "ads.txt"
    listed.write_text("ads.example\n")
    source = tmp_path / "resolver.yaml"
    source.write_text("{}\n")
    reloader, _, _ = make(before)
    policy = replace(reloader.config.policy, blocklists_dir=platforms, lists=(ListSource("ads", listed),))
    reloader.config = replace(reloader.config, source=str(source), policy=policy)
    seen = reloader.watched()
    assert set(seen) == {source, platforms, platforms / "one.yaml", listed}
    assert changed_files(seen, reloader.watched()) == []
    (platforms / "two.yml").write_text("name: Two\n")
    listed.write_text("ads.example\nmore.example\n")
    os.utime(source, ns=(1, 1))
    assert changed_files(seen, reloader.watched()) == sorted(
        str(p) for p in (source, platforms, platforms / "two.yml", listed))


# --- what the reload line says changed ------------------------------------------------------------------------


def summary(**kwargs: Any) -> Summary:
    fields: dict[str, Any] = {"version": "v1", "platforms": {"tiktok": 10}, "lists": {}, "exemptions": {},
                              "groups": {"default": "blocks 1, allows 0, monitors 0 platforms"}}
    return Summary(**(fields | kwargs))


def test_no_change_says_so() -> None:
    assert summary().changes(summary(version="v2")) == "no change in platforms, lists, groups, exemptions or sinkhole"


def test_changes_name_platforms_lists_groups_exemptions_and_the_sinkhole() -> None:
    """An exemption granting something else under the same reference, and a new sinkhole, are changes too."""
    old = summary(platforms={"tiktok": 10, "gone": 1}, lists={"ads": 3, "old": 5},
                  exemptions={"T-1": "tiktok to comms", "T-3": "tiktok to comms until May"}, sinkhole="mode null")
    new = summary(platforms={"tiktok": 12, "new": 2}, lists={"ads": 4, "fresh": 1},
                  exemptions={"T-2": "x", "T-3": "tiktok to everyone until May"}, sinkhole="mode address 203.0.113.7",
                  groups={"default": "blocks 2, allows 0, monitors 0 platforms", "lab": "blocks 0, allows 0, "
                                                                                      "monitors 1 platforms"})
    assert old.changes(new).split("; ") == [
        "platforms added: new",
        "platforms removed: gone",
        "tiktok domains 10 -> 12",
        "list ads entries 3 -> 4",
        "list fresh entries - -> 1",
        "list old entries 5 -> -",
        "exemptions added: T-2",
        "exemptions changed: T-3",
        "group default: blocks 1, allows 0, monitors 0 platforms -> blocks 2, allows 0, monitors 0 platforms",
        "group lab: new -> blocks 0, allows 0, monitors 1 platforms",
        "exemptions removed: T-1",
        "sinkhole: mode null -> mode address 203.0.113.7",
    ]


def test_summary_of_a_built_policy(before: tuple[Config, Loaded], after: tuple[Config, Loaded]) -> None:
    old, new = Summary.of(before[1]), Summary.of(after[1])
    assert new.lists == {"ads": 2} and old.lists == {}
    assert old.platforms == new.platforms and len(old.platforms) > 10
    assert old.changes(new) == "list ads entries - -> 2"


# --- when a URL list is fetched again -------------------------------------------------------------------------


def test_after_a_success_the_refresh_interval() -> None:
    assert next_fetch_delay(86400.0, ok=True) == 86400.0
    assert next_fetch_delay(60.0, ok=True) == 60.0


def test_after_a_failure_sooner_but_never_later_than_the_interval() -> None:
    assert next_fetch_delay(86400.0, ok=False) == FETCH_RETRY
    assert next_fetch_delay(60.0, ok=False) == 60.0


# --- what a finished build does -------------------------------------------------------------------------------


def test_a_failed_build_keeps_the_old_policy_and_is_counted(before: tuple[Config, Loaded],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    reloader, pipeline, clock = make(before)
    loaded_at, config, version = reloader.stats.loaded_at, reloader.config, reloader.summary.version
    clock.now += 60
    with caplog.at_level(logging.ERROR, "resolver.ops.reload"):
        assert reloader.refused("SIGHUP", ConfigError("policy.yaml:3", "YAML syntax: bad")) is False
    assert pipeline.swapped == []
    assert (reloader.stats.ok, reloader.stats.failed, reloader.stats.loaded_at) == (0, 1, loaded_at)
    assert reloader.config is config and reloader.summary.version == version
    assert caplog.messages == ["reload refused (SIGHUP), the old policy keeps serving: policy.yaml:3: YAML syntax: bad"]


def test_a_good_build_is_swapped_in(before: tuple[Config, Loaded], after: tuple[Config, Loaded],
                                    caplog: pytest.LogCaptureFixture) -> None:
    reloader, pipeline, clock = make(before)
    assert reloader.stats.loaded_at == clock.now
    clock.now += 60
    config, loaded = after
    with caplog.at_level(logging.INFO, "resolver.ops.reload"):
        assert reloader.swapped("list ads refreshed", config, loaded) is True
    assert pipeline.swapped == [loaded.policy]
    assert (reloader.stats.ok, reloader.stats.failed, reloader.stats.loaded_at) == (1, 0, clock.now)
    assert reloader.config is config and reloader.summary == Summary.of(loaded)
    assert caplog.messages == [f"policy reloaded (list ads refreshed): version {before[1].policy.version} -> "
                               f"{loaded.policy.version}; list ads entries - -> 2"]


def test_reload_runs_the_build_and_routes_its_outcome(before: tuple[Config, Loaded],
                                                     after: tuple[Config, Loaded]) -> None:
    """The plumbing: ``reload`` hands the config factory to the build (off the loop) and applies what it gives."""
    outcomes: list[tuple[Config, Loaded] | ConfigError] = [ConfigError("x.yaml", "bad"), after,
                                                            ConfigError("x.yaml", "worse")]
    factories: list[Callable[[], Config]] = []

    def build(config_factory: Callable[[], Config]) -> tuple[Config, Loaded]:
        factories.append(config_factory)
        outcome = outcomes.pop(0)
        if isinstance(outcome, ConfigError):
            raise outcome
        return outcome

    reloader, pipeline, _ = make(before, build=build)

    async def three() -> list[bool]:
        return [await reloader.reload(f"try {i}") for i in range(3)]

    assert asyncio.run(three()) == [False, True, False]
    assert factories == [reloader.config_factory] * 3
    assert pipeline.swapped == [after[1].policy]  # the failure after the success keeps the new policy
    assert (reloader.stats.ok, reloader.stats.failed) == (1, 2) and reloader.config is after[0]


def test_an_unforeseen_error_in_a_build_is_a_refusal_and_the_watcher_lives_on(
        before: tuple[Config, Loaded], after: tuple[Config, Loaded], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A file nobody foresaw (any exception, not only ConfigError) refuses that reload like a bad file: counted,
    logged in one line, the old policy kept. The watcher that started it keeps watching, so the fix after it is
    applied without a SIGHUP."""
    outcomes: list[tuple[Config, Loaded] | Exception] = [ValueError("embedded null byte"), after]

    def build(config_factory: Callable[[], Config]) -> tuple[Config, Loaded]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    reloader, pipeline, _ = make(before, build=build)
    edits = [0]
    reloader.watched = lambda: {tmp_path / "policy.yaml": (1, edits[0], 1)}  # type: ignore[method-assign]
    reloader._seen = reloader.watched()

    async def two_changes() -> None:
        watcher = asyncio.ensure_future(reloader.watch())
        for done in (1, 2):
            edits[0] += 1
            for _ in range(500):  # the build runs in a thread: wait for it, boundedly
                await asyncio.sleep(0.01)
                if reloader.stats.failed + reloader.stats.ok == done:
                    break
        assert not watcher.done(), watcher.exception()
        watcher.cancel()

    with caplog.at_level(logging.ERROR, "resolver.ops.reload"), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr("resolver.ops.reload.WATCH_SECONDS", 0)
        asyncio.run(two_changes())
    assert (reloader.stats.failed, reloader.stats.ok) == (1, 1)
    assert pipeline.swapped == [after[1].policy]
    assert any("internal error while reading it: ValueError: embedded null byte" in m for m in caplog.messages)


def test_a_failed_fetch_keeps_the_last_copy_and_is_counted(before: tuple[Config, Loaded], tmp_path: Path) -> None:
    results: list[bool | ConfigError] = [ConfigError("https://lists.example/ads.txt", "download failed: timed out"),
                                         True, False]
    targets: list[Path] = []

    def fetch(source: ListSource, target: Path) -> bool:
        targets.append(target)
        result = results.pop(0)
        if isinstance(result, ConfigError):
            raise result
        return result

    reloader, _, _ = make(before, fetch=fetch)
    reloader.config = replace(reloader.config, policy=replace(reloader.config.policy, list_cache_dir=tmp_path))
    source = ListSource("ads", url="https://lists.example/ads.txt")

    async def three() -> list[tuple[bool, bool]]:
        return [await reloader.fetch(source) for _ in range(3)]

    assert asyncio.run(three()) == [(False, False), (True, True), (True, False)]
    assert targets == [source.cache_path(tmp_path)] * 3
    assert (reloader.stats.fetch_ok, reloader.stats.fetch_failed) == (2, 1)


def test_the_default_build_reads_the_config_with_the_collector_off(before: tuple[Config, Loaded]) -> None:
    seen: list[bool] = []
    config = before[0]

    def factory() -> Config:
        seen.append(gc.isenabled())
        return config

    built, loaded = reload.rebuild(factory)
    assert built is config and seen == [False] and gc.isenabled()
    assert loaded.policy.version == before[1].policy.version


def test_a_refused_list_download_is_set_aside_so_a_restart_serves_the_last_accepted_copy(tmp_path: Path) -> None:
    """A real https list server on loopback; the refreshed list lost two of its three entries (more than the
    default 50%): the reload is refused and the cache file holds the accepted copy again."""
    tls = tmp_path / "tls"
    tls.mkdir()
    accepted = b"||a.refresh.test^\n||b.refresh.test^\n||c.refresh.test^\n"
    with ListSite(accepted, tls) as site:
        assert site.ca is not None
        os.environ["SSL_CERT_FILE"] = str(site.ca)
        try:
            config = config_from_dict({"policy": {"list_cache_dir": "cache", "lists": [
                {"url": site.url(), "name": "web", "refresh": "1h"}]}}, "test.yaml", tmp_path)
            source = config.policy.lists[0]
            target = source.cache_path(config.policy.list_cache_dir)
            reload.fetch_missing(config)
            loaded = load_policy(config)
            assert loaded.lists[0].blocking == 3
            pipeline = FakePipeline()
            reloader = Reloader(lambda: config, config, pipeline, loaded)  # type: ignore[arg-type]
            site.body = b"||a.refresh.test^\n"
            assert asyncio.run(reloader.refresh_once(source)) == 3600
        finally:
            del os.environ["SSL_CERT_FILE"]
    assert pipeline.swapped == [] and reloader.stats.refused == 1
    assert target.read_bytes() == accepted
    assert load_policy(config).lists[0].blocking == 3, "a restart builds from the accepted copy"
