"""Build the policy from what the config names: the platform files (``resolver.lists.platforms``), the list files
streamed into the build (``resolver.lists.stream``), the policy section.

Errors name the file and the line or key, and the reason; ``resolver check`` and a reload show them as they are.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from resolver.config.model import BUNDLED_BLOCKLISTS, Config
from resolver.config.policy import ListSource
from resolver.core.builder import build_policy
from resolver.core.guard import Side, missing_required
from resolver.core.policy import ListInput, Platform, Policy
from resolver.errors import ConfigError
from resolver.lists.entries import ParsedList, SkippedLine, normalise_name
from resolver.lists.platforms import load_platforms
from resolver.lists.stream import ListStream
from resolver.lists.suffixes import REASON as PUBLIC_SUFFIX

log = logging.getLogger("resolver")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A built policy with what it was built from, for ``check`` and ``explain``."""

    policy: Policy
    platforms: list[Platform]
    lists: list[ParsedList]  # counts and skipped lines; the entries are read again only if iterated

    def side(self) -> Side:
        """What the reduction check compares (``resolver.core.guard``): small, so a server keeps it."""
        names = self.policy.lists
        # The allow names kept are the first MAX_ALLOW_NAMES of a list; the ones past them are only counted.
        unchecked = {name: len(parsed.entries) - parsed.blocking - len(parsed.allow_names)
                     for name, parsed in zip(names, self.lists, strict=True)}
        return Side(self.policy, {name: parsed.blocking for name, parsed in zip(names, self.lists, strict=True)},
                    tuple(n for parsed in self.lists for n in parsed.allow_names),
                    {name: count for name, count in unchecked.items() if count > 0})


def load_policy(config: Config, strict: bool = False) -> Loaded:
    """Read and build. List files are streamed into the build, never held as entries; the memory the build
    used is given back to the OS before the (long-lived) policy is returned. (It makes no cycles worth a
    ``gc.collect()`` here: everything it drops is freed as it goes.)

    A list entry that is a public suffix is skipped (dropping an over-broad entry weakens no ban) and logged once
    per list; ``strict`` (``resolver check``) makes the first such entry an error naming its file and line, so it
    is fixed rather than carried."""
    pc = config.policy
    platforms = load_platforms(pc.blocklists_dir or BUNDLED_BLOCKLISTS, pc.categories)
    for src in pc.lists:
        if src.insecure and src.url is not None and src.url.startswith("http://"):
            log.warning("list %s: fetched over plain http (%s.insecure: true): anyone on the path can change what "
                        "it blocks", src.name, src.where)
    streams = [open_list(src, pc.list_cache_dir) for src in pc.lists]
    spec = pc.spec
    groups = tuple(replace(g, allow_domains=_names(g.allow_domains, f"{g.where}.allow_domains")) for g in spec.groups)
    spec = replace(spec, groups=groups, allow_domains=_names(spec.allow_domains, f"{spec.where}.allow_domains"),
                   sinkhole=config.sinkhole)
    names = [src.name for src in pc.lists]
    policy = build_policy(platforms, [ListInput(s.source, name=n, bulk=s) for s, n in zip(streams, names, strict=True)],
                          spec)
    trim_memory()
    _public_suffixes(streams, strict)
    missing = missing_required(policy, pc.guard.required)
    if missing:
        index, name, why = missing[0]
        raise ConfigError(f"{spec.where}.required[{index}]", f"{name!r} must be blocked for the default group: {why}")
    return Loaded(policy, platforms, [stream.parsed() for stream in streams])


def _public_suffixes(streams: list[ListStream], strict: bool) -> None:
    for stream in streams:
        first = stream.first_suffix
        if first is None:
            continue
        where = str(stream.path or stream.source)  # the file the line number counts in
        if strict:
            raise ConfigError(f"{where}:{first.line}", f"{first.text!r}: {PUBLIC_SUFFIX}")  # (repr: a list's
            # bytes are a stranger's, and must not reach the operator's terminal raw)
        log.warning("list %s: %d entries skipped, each a public suffix that would cover every name under it "
                    "(the first at %s:%d: %r)", stream.source, stream.suffixes, where, first.line, first.text)


def open_list(source: ListSource, cache_dir: Path) -> ListStream:
    """A list file, or for a URL list the last good copy on disk (empty, with a note, if none was ever fetched)."""
    fmt = source.format
    if source.path is not None:
        return ListStream(source.path, fmt, str(source.path), allowlist=source.allowlist,  # type: ignore[arg-type]
                          sha256=source.sha256)
    cached = source.cache_path(cache_dir)
    try:
        present = cached.exists()
    except (OSError, ValueError) as err:  # a cache directory no file can be in: too long, a NUL byte
        raise ConfigError(str(source.url), f"list_cache_dir is not a usable path: "
                          f"{getattr(err, 'strerror', None) or err}") from None
    if not present:
        return ListStream(None, fmt, str(source.url), note=SkippedLine(0, "not fetched yet: no copy on disk", ""))  # type: ignore[arg-type]
    return ListStream(cached, fmt, str(source.url), allowlist=source.allowlist,  # type: ignore[arg-type]
                      sha256=source.sha256)


def trim_memory() -> None:
    """Ask glibc to return free heap pages to the OS (a no-op where glibc is absent). Without it a process keeps
    its load-time peak for good: freed memory stays in malloc's heap."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols: glibc's malloc_trim if the C library is glibc (no ldconfig lookup)
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    return trim


_malloc_trim = _libc_malloc_trim()


def _names(names: tuple[str, ...], where: str) -> tuple[str, ...]:
    out = []
    for i, name in enumerate(names):
        try:
            out.append(normalise_name(name))
        except ValueError as err:
            raise ConfigError(f"{where}[{i}]", f"{name!r}: {err}") from None
    return tuple(out)
