"""Hot reload: SIGHUP, a changed policy file, or a refreshed URL list builds a new policy off the event loop and
swaps it in with one assignment. A policy that fails to load is refused, logged once with the file, line or key,
and counted; the old one keeps serving. Queries in flight never see a half-built policy.

What is decided is kept apart from the loop and the executor, so tests drive it with a fake clock and fake builds,
without sockets or sleeps: whether a change of the watched files triggers a reload (``changed_files``,
``watch_reason``, ``after_reload``), what the reload line says changed (``Summary.changes``), when a URL list is
fetched again (``next_fetch_delay``), and what a finished build does (``Reloader.swapped`` and ``refused``). The
``Reloader`` takes the build, the fetch and the clock as parameters; its loops only sleep, stat and hand work to the
executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from resolver.config.model import BUNDLED_BLOCKLISTS, DEFAULT_SOURCE, Config
from resolver.config.policy import ListSource
from resolver.core.pipeline import Pipeline
from resolver.core.scope import grant_key, sinkhole_text
from resolver.errors import ConfigError
from resolver.lists.fetch import fetch_list, needs_fetch, restore_previous
from resolver.lists.load import Loaded, load_policy, trim_memory
from resolver.ops.review import Review, audit_event, review

log = logging.getLogger("resolver.ops.reload")
audit = logging.getLogger("resolver.audit")  # one JSON record per reload attempt: the audit trail

WATCH_SECONDS = 2.0  # how often policy files are checked for changes
FETCH_RETRY = 300.0  # after a failed fetch, try again this soon (or at the refresh interval if shorter)

# (inode, mtime in ns, size); all -1 for a file that cannot be read. The inode: a symlink swapped to another file
# (a Kubernetes ConfigMap update) is a change even if the new file has the old one's size and time.
FileState = tuple[int, int, int]
Build = Callable[[Callable[[], Config]], tuple[Config, Loaded]]  # config factory -> (config, policy); ConfigError
Fetch = Callable[[ListSource, Path], bool]  # (URL list, cache file) -> content changed; ConfigError


# --- decisions ------------------------------------------------------------------------------------------------


def changed_files(seen: dict[Path, FileState], now: dict[Path, FileState]) -> list[str]:
    """The watched files that appeared, vanished or changed between two looks, sorted; none: no reload."""
    return sorted(str(p) for p in set(now) | set(seen) if now.get(p) != seen.get(p))


def watch_reason(changed: list[str]) -> str:
    """The ``why`` of a reload the watcher starts: the first few files, so the log line stays one line."""
    return "changed: " + ", ".join(changed[:3]) + (" …" if len(changed) > 3 else "")


def after_reload(started: dict[Path, FileState], current: dict[Path, FileState]) -> dict[Path, FileState]:
    """What the watcher compares with next, after a reload that began when the files were ``started``.

    What changed while that reload was being built must still count as a change: files watched before keep the
    state the reload started from; files the new config added start from ``current``; files it dropped are
    forgotten.
    """
    return {path: started.get(path, state) for path, state in current.items()}


def next_fetch_delay(refresh: float, ok: bool) -> float:
    """Seconds until a URL list is fetched again: its refresh interval after a success; after a failure, sooner
    (FETCH_RETRY), so one bad day at the list server does not cost a whole interval."""
    return refresh if ok else min(refresh, FETCH_RETRY)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a reload log line compares: small, so the server never keeps parsed lists around."""

    version: str
    platforms: dict[str, int]  # id -> domains
    lists: dict[str, int]  # name -> entries
    exemptions: dict[str, str]  # reference -> what it grants, to whom, until when
    groups: dict[str, str]  # name -> what it blocks, allows and monitors
    sinkhole: str = ""  # what a blocked name is answered with

    @staticmethod
    def of(loaded: Loaded) -> Summary:
        policy = loaded.policy
        return Summary(
            policy.version,
            {p.id: len(p.domains) for p in loaded.platforms},
            {name: len(parsed.entries) for name, parsed in zip(policy.lists, loaded.lists, strict=True)},
            dict(grant_key(e) for e in policy.exemptions),
            {g.name: f"blocks {len(g.block)}, allows {len(g.allow)}, monitors {len(g.monitor)} platforms"
             for g in policy.groups},
            sinkhole_text(policy.sinkhole),
        )

    def changes(self, new: Summary) -> str:
        parts = []
        added = sorted(set(new.platforms) - set(self.platforms))
        removed = sorted(set(self.platforms) - set(new.platforms))
        if added:
            parts.append("platforms added: " + ", ".join(added))
        if removed:
            parts.append("platforms removed: " + ", ".join(removed))
        for pid in sorted(set(new.platforms) & set(self.platforms)):
            if new.platforms[pid] != self.platforms[pid]:
                parts.append(f"{pid} domains {self.platforms[pid]} -> {new.platforms[pid]}")
        for name in sorted(set(new.lists) | set(self.lists)):
            before, after = self.lists.get(name), new.lists.get(name)
            if before != after:
                parts.append(f"list {name} entries {before if before is not None else '-'} -> "
                             f"{after if after is not None else '-'}")
        had, has = set(self.exemptions), set(new.exemptions)
        if has - had:
            parts.append("exemptions added: " + ", ".join(sorted(has - had)))
        # The same reference granting something else (wider, longer, to others) is as much a change as a new one.
        changed = sorted(r for r in had & has if self.exemptions[r] != new.exemptions[r])
        if changed:
            parts.append("exemptions changed: " + ", ".join(changed))
        for name in sorted(set(new.groups) | set(self.groups)):
            if new.groups.get(name) != self.groups.get(name):
                parts.append(f"group {name}: {self.groups.get(name, 'new')} -> {new.groups.get(name, 'removed')}")
        if had - has:
            parts.append("exemptions removed: " + ", ".join(sorted(had - has)))
        if new.sinkhole != self.sinkhole:
            parts.append(f"sinkhole: {self.sinkhole} -> {new.sinkhole}")
        return "; ".join(parts) or "no change in platforms, lists, groups, exemptions or sinkhole"


@dataclass(slots=True)
class ReloadStats:
    ok: int = 0
    failed: int = 0
    refused: int = 0  # builds that loaded but would unblock something nobody approved
    loaded_at: float = field(default_factory=time.time)
    fetch_ok: int = 0
    fetch_failed: int = 0


def rebuild(config_factory: Callable[[], Config]) -> tuple[Config, Loaded]:
    """Re-read the config and build its policy (in the executor: this is the slow part of a reload).

    Building a big policy makes millions of short-lived objects: with the collector off it does not pause the
    serving thread again and again to scan them (the list parser does the same).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        config = config_factory()
        fetch_missing(config)
        return config, load_policy(config)
    finally:
        if enabled:
            gc.enable()


def fetch_missing(config: Config) -> None:
    """Download the URL lists the config names but has no usable copy of (a new list, or a new ``sha256`` pin),
    so the policy is built with them; a failed download is logged, and the build goes on without that list (a
    pinned list with a stale copy then fails the build, and the old policy keeps serving)."""
    cache = config.policy.list_cache_dir
    for source in config.policy.lists:
        if needs_fetch(source, cache):
            try:
                fetch_list(source, source.cache_path(cache))
            except ConfigError as err:
                log.error("list %s: fetch failed, building without a new copy: %s", source.name, err)


def _settle() -> None:
    """After a swap: keep the new, long-lived policy out of later collections, and hand the old policy's pages
    back to the OS now, or the process keeps the reload's peak for good. (No gc.collect(): this is the serving
    thread, and the build leaves no cycles to collect.)"""
    gc.freeze()
    trim_memory()


# --- plumbing -------------------------------------------------------------------------------------------------


class Reloader:
    """Owns the reloads of one server: ``reload`` (SIGHUP, the watcher, a refreshed list), ``watch`` and ``refresh``
    (the loops app.py runs), ``stats`` (the counters the metrics read), ``config`` (the config last loaded)."""

    def __init__(self, config_factory: Callable[[], Config], config: Config, pipeline: Pipeline, loaded: Loaded,
                 *, build: Build = rebuild, fetch: Fetch = fetch_list,
                 clock: Callable[[], float] = time.time) -> None:
        self.config_factory = config_factory
        self.config = config
        self.pipeline = pipeline
        self.summary = Summary.of(loaded)
        self.side = loaded.side()  # what the next build is compared with
        self._build, self._fetch, self._clock = build, fetch, clock
        self.stats = ReloadStats(loaded_at=clock())
        self._lock = asyncio.Lock()
        # The files as they were when this policy was loaded: taken here, before the server says it is ready, so a
        # change made right after that is a change even if the watch loop has not run yet.
        self._seen = self.watched()

    async def reload(self, why: str) -> bool:
        """Re-read config and lists off the loop; swap the policy in, or keep the old one on any error.

        Listen addresses, upstreams and cache size need a restart; everything under ``policy`` and ``sinkhole``
        reloads.
        """
        async with self._lock:  # one build at a time; a burst of triggers yields a few reloads, not a pile-up
            loop = asyncio.get_running_loop()
            try:
                config, loaded = await loop.run_in_executor(None, self._build, self.config_factory)
                # Compared off the loop too: it looks up every platform domain and allow entry in both policies.
                outcome = await loop.run_in_executor(None, self.review, config, loaded)
            except ConfigError as err:
                return self.refused(why, err)
            except Exception as err:  # a file we failed to foresee: still a refusal, never a dead reloader
                return self.refused(why, ConfigError(self.config.source, f"internal error while reading it: "
                                                     f"{err.__class__.__name__}: {err}"))
            if outcome.refused:
                return self.reduction_refused(why, loaded, outcome)
            return self.swapped(why, config, loaded, outcome)

    def review(self, config: Config, loaded: Loaded) -> Review:
        """The new build against the serving one, with the new config's approvals."""
        return review(self.side, loaded.side(), config.policy.guard, self._clock(), self.config.policy.guard)

    def refused(self, why: str, err: ConfigError) -> bool:
        """A build failed: the old policy and config stay; the failure is logged once and counted."""
        self.stats.failed += 1
        log.error("reload refused (%s), the old policy keeps serving: %s", why, err)
        self._audit(audit_event("failed", why, self.summary.version, None, None, str(err)))
        return False

    def reduction_refused(self, why: str, loaded: Loaded, outcome: Review) -> bool:
        """A build would unblock something no approval covers: the old policy stays, and the log says what."""
        self.stats.refused += 1
        log.error("reload refused (%s), the old policy keeps serving: %s", why, outcome.refusal())
        self._audit(audit_event("refused", why, self.summary.version, loaded.policy.version, outcome))
        return False

    def swapped(self, why: str, config: Config, loaded: Loaded, outcome: Review | None = None) -> bool:
        """A build succeeded: serve its policy from the next query on, and log what changed."""
        new = Summary.of(loaded)
        self._audit(audit_event("accepted", why, self.summary.version, new.version, outcome))
        self.side = outcome.new if outcome is not None else loaded.side()
        self.pipeline.swap(loaded.policy)  # only the policy is kept: the list summaries go with ``loaded``
        _settle()
        self.config = config
        self.stats.ok += 1
        self.stats.loaded_at = self._clock()
        log.info("policy reloaded (%s): version %s -> %s; %s", why, self.summary.version, new.version,
                 self.summary.changes(new))
        self.summary = new
        return True

    @staticmethod
    def _audit(event: dict[str, object]) -> None:
        # WARNING for anything but an accepted reload, so a log filter at that level still keeps refusals.
        level = logging.INFO if event["result"] == "accepted" else logging.WARNING
        audit.log(level, "%s", json.dumps(event, sort_keys=True, ensure_ascii=False))

    def watched(self) -> dict[Path, FileState]:
        """(mtime, size) of every file the policy is read from, and of the blocklists directory itself."""
        config = self.config
        paths: list[Path] = []
        if config.source != DEFAULT_SOURCE:
            paths.append(Path(config.source))
        directory = config.policy.blocklists_dir or BUNDLED_BLOCKLISTS
        paths.append(directory)
        with contextlib.suppress(OSError):
            paths.extend(sorted(directory.glob("*.y*ml")))
        paths.extend(s.path for s in config.policy.lists if s.path is not None)
        out = {}
        for path in paths:
            try:
                st = path.stat()
            except (OSError, ValueError):  # ValueError: a NUL byte in a path; it is refused at the reload
                out[path] = (-1, -1, -1)
            else:
                out[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return out

    async def watch(self) -> None:
        """Poll the policy files: no inotify dependency, and a few dozen stat calls per look cost nothing."""
        seen = self._seen
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                now = self.watched()
                changed = changed_files(seen, now)
                if changed:
                    await self.reload(watch_reason(changed))
                    seen = after_reload(now, self.watched())
            except Exception as err:  # the watcher must outlive anything: a change it misses is a ban not applied
                log.error("policy file watch: internal error, still watching: %s: %s", err.__class__.__name__, err)

    async def refresh(self, source: ListSource) -> None:
        """Fetch a URL list every ``refresh`` seconds; reload when its content changed."""
        while True:
            try:
                delay = await self.refresh_once(source)
            except Exception as err:  # as for the watcher: the next refresh must still come
                log.error("list %s: internal error in its refresh, trying again later: %s: %s", source.name,
                          err.__class__.__name__, err)
                delay = FETCH_RETRY
            await asyncio.sleep(delay)

    async def refresh_once(self, source: ListSource) -> float:
        """One fetch, and a reload if the content changed; the seconds until the next fetch."""
        ok, changed = await self.fetch(source)
        refused = changed and not await self.reload(f"list {source.name} refreshed")
        # A refused copy goes back to the previous one, or a restart would serve what was refused.
        if refused and restore_previous(source.cache_path(self.config.policy.list_cache_dir)):
            log.warning("list %s: the refused download is set aside; the last accepted copy stays on disk",
                        source.name)
        return next_fetch_delay(source.refresh, ok)

    async def fetch(self, source: ListSource) -> tuple[bool, bool]:
        """Fetch one URL list off the loop; (fetched, content changed)."""
        loop = asyncio.get_running_loop()
        target = source.cache_path(self.config.policy.list_cache_dir)
        try:
            changed = await loop.run_in_executor(None, self._fetch, source, target)
        except ConfigError as err:
            return self.fetch_failed(source, err)
        self.stats.fetch_ok += 1
        return True, changed

    def fetch_failed(self, source: ListSource, err: ConfigError) -> tuple[bool, bool]:
        """A failed fetch keeps the last good copy (nothing to reload) and is logged and counted."""
        self.stats.fetch_failed += 1
        log.error("list %s: fetch failed, keeping the last good copy: %s", source.name, err)
        return False, False
