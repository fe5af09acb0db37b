"""Hot reload: SIGHUP, a changed policy file, or a refreshed URL list builds a new policy off the event loop and
swaps it in with one assignment. A policy that fails to load is refused, logged once with the file, line or key,
and counted; the old one keeps serving. Queries in flight never see a half-built policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from resolver.config.model import BUNDLED_BLOCKLISTS, DEFAULT_SOURCE, Config
from resolver.config.policy import ListSource
from resolver.core.pipeline import Pipeline
from resolver.errors import ConfigError
from resolver.lists.fetch import fetch_list
from resolver.lists.load import Loaded, load_policy, trim_memory

log = logging.getLogger("resolver.ops.reload")

WATCH_SECONDS = 2.0  # how often policy files are checked for changes
FETCH_RETRY = 300.0  # after a failed fetch, try again this soon (or at the refresh interval if shorter)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a reload log line compares: small, so the server never keeps parsed lists around."""

    version: str
    platforms: dict[str, int]  # id -> domains
    lists: dict[str, int]  # name -> entries
    exemptions: frozenset[str]  # references
    groups: dict[str, str]  # name -> what it blocks, allows and monitors

    @staticmethod
    def of(loaded: Loaded) -> Summary:
        policy = loaded.policy
        return Summary(
            policy.version,
            {p.id: len(p.domains) for p in loaded.platforms},
            {name: len(parsed.entries) for name, parsed in zip(policy.lists, loaded.lists, strict=True)},
            frozenset(e.reference for e in policy.exemptions),
            {g.name: f"blocks {len(g.block)}, allows {len(g.allow)}, monitors {len(g.monitor)} platforms"
             for g in policy.groups},
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
        if new.exemptions - self.exemptions:
            parts.append("exemptions added: " + ", ".join(sorted(new.exemptions - self.exemptions)))
        for name in sorted(set(new.groups) | set(self.groups)):
            if new.groups.get(name) != self.groups.get(name):
                parts.append(f"group {name}: {self.groups.get(name, 'new')} -> {new.groups.get(name, 'removed')}")
        if self.exemptions - new.exemptions:
            parts.append("exemptions removed: " + ", ".join(sorted(self.exemptions - new.exemptions)))
        return "; ".join(parts) or "no change in platforms, lists, groups or exemptions"


@dataclass(slots=True)
class ReloadStats:
    ok: int = 0
    failed: int = 0
    loaded_at: float = field(default_factory=time.time)
    fetch_ok: int = 0
    fetch_failed: int = 0


class Reloader:
    def __init__(self, config_factory: Callable[[], Config], config: Config, pipeline: Pipeline,
                 loaded: Loaded) -> None:
        self.config_factory = config_factory
        self.config = config
        self.pipeline = pipeline
        self.summary = Summary.of(loaded)
        self.stats = ReloadStats()
        self._lock = asyncio.Lock()

    async def reload(self, why: str) -> bool:
        """Re-read config and lists off the loop; swap the policy in, or keep the old one on any error.

        Listen addresses, upstreams and cache size need a restart; everything under ``policy`` and ``sinkhole``
        reloads.
        """
        async with self._lock:  # one build at a time; a burst of triggers yields a few reloads, not a pile-up
            loop = asyncio.get_running_loop()

            def build() -> tuple[Config, Loaded]:
                # Building a big policy makes millions of short-lived objects: with the collector off it does not
                # pause the serving thread again and again to scan them (the list parser does the same).
                enabled = gc.isenabled()
                gc.disable()
                try:
                    config = self.config_factory()
                    return config, load_policy(config)
                finally:
                    if enabled:
                        gc.enable()

            try:
                config, loaded = await loop.run_in_executor(None, build)
            except ConfigError as err:
                self.stats.failed += 1
                log.error("reload refused (%s), the old policy keeps serving: %s", why, err)
                return False
            new = Summary.of(loaded)
            self.pipeline.swap(loaded.policy)
            del loaded  # the list summaries: only the policy is kept
            # The new policy is long-lived: keep it out of later collections. (No gc.collect() here: this is the
            # serving thread, and the build leaves no cycles to collect.) The swap freed the old policy's table:
            # hand its pages back to the OS now, or the process keeps the reload's peak for good.
            gc.freeze()
            trim_memory()
            self.config = config
            self.stats.ok += 1
            self.stats.loaded_at = time.time()
            log.info("policy reloaded (%s): version %s -> %s; %s", why, self.summary.version, new.version,
                     self.summary.changes(new))
            self.summary = new
            return True

    def watched(self) -> dict[Path, tuple[int, int]]:
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
            except OSError:
                out[path] = (-1, -1)
            else:
                out[path] = (st.st_mtime_ns, st.st_size)
        return out

    async def watch(self) -> None:
        """Poll the policy files: no inotify dependency, and a few dozen stat calls every 2 s cost nothing."""
        seen = self.watched()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            now = self.watched()
            if now != seen:
                changed = sorted(str(p) for p in set(now) | set(seen) if now.get(p) != seen.get(p))
                await self.reload("changed: " + ", ".join(changed[:3]) + (" …" if len(changed) > 3 else ""))
                # What changed while that reload was being built must still count as a change: files watched
                # before keep the state the reload started from; files the new config added start from now.
                seen = {path: now.get(path, state) for path, state in self.watched().items()}

    async def refresh(self, source: ListSource) -> None:
        """Fetch a URL list every ``refresh`` seconds; reload when its content changed."""
        while True:
            ok, changed = await self.fetch(source)
            if changed:
                await self.reload(f"list {source.name} refreshed")
            await asyncio.sleep(source.refresh if ok else min(source.refresh, FETCH_RETRY))

    async def fetch(self, source: ListSource) -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        target = source.cache_path(self.config.policy.list_cache_dir)
        try:
            changed = await loop.run_in_executor(None, fetch_list, source, target)
        except ConfigError as err:
            self.stats.fetch_failed += 1
            log.error("list %s: fetch failed, keeping the last good copy: %s", source.name, err)
            return False, False
        self.stats.fetch_ok += 1
        return True, changed
