"""Read what a policy is built from: platform files, list files, the policy config. All the disk I/O lives here.

Errors name the file and the line or key, and the reason; ``resolver check`` and a reload show them as they are.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from resolver.config.model import BUNDLED_BLOCKLISTS, Config
from resolver.config.policy import ListSource
from resolver.config.yamlfile import SAFE_LOADER, check_shape, short
from resolver.core.builder import build_policy
from resolver.core.policy import ListInput, Platform, Policy
from resolver.errors import ConfigError
from resolver.lists.entries import ParsedList, SkippedLine, normalise_name
from resolver.lists.stream import ListStream

PLATFORM_KEYS = ("name", "category", "owner", "domains", "notes", "sources")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_PLATFORM_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Loaded:
    """A built policy with what it was built from, for ``check`` and ``explain``."""

    policy: Policy
    platforms: list[Platform]
    lists: list[ParsedList]  # counts and skipped lines; the entries are read again only if iterated


def load_policy(config: Config) -> Loaded:
    """Read and build. List files are streamed into the build, never held as entries; the memory the build
    used is given back to the OS before the (long-lived) policy is returned. (It makes no cycles worth a
    ``gc.collect()`` here: everything it drops is freed as it goes.)"""
    pc = config.policy
    platforms = load_platforms(pc.blocklists_dir or BUNDLED_BLOCKLISTS)
    streams = [open_list(src, pc.list_cache_dir) for src in pc.lists]
    spec = pc.spec
    groups = tuple(replace(g, allow_domains=_names(g.allow_domains, f"{g.where}.allow_domains")) for g in spec.groups)
    spec = replace(spec, groups=groups, allow_domains=_names(spec.allow_domains, f"{spec.where}.allow_domains"),
                   sinkhole=config.sinkhole)
    names = [src.name for src in pc.lists]
    policy = build_policy(platforms, [ListInput(s.source, name=n, bulk=s) for s, n in zip(streams, names, strict=True)],
                          spec)
    trim_memory()
    return Loaded(policy, platforms, [stream.parsed() for stream in streams])


def open_list(source: ListSource, cache_dir: Path) -> ListStream:
    """A list file, or for a URL list the last good copy on disk (empty, with a note, if none was ever fetched)."""
    fmt = source.format
    if source.path is not None:
        return ListStream(source.path, fmt, str(source.path))  # type: ignore[arg-type]
    cached = source.cache_path(cache_dir)
    if not cached.exists():
        return ListStream(None, fmt, str(source.url), note=SkippedLine(0, "not fetched yet: no copy on disk", ""))  # type: ignore[arg-type]
    return ListStream(cached, fmt, str(source.url))  # type: ignore[arg-type]


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


def load_platforms(directory: Path) -> list[Platform]:
    if not directory.is_dir():
        raise ConfigError(str(directory), "blocklists directory not found")
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise ConfigError(str(directory), "no platform files (*.yaml) in the blocklists directory")
    return [load_platform(path) for path in files]


def load_platform(path: Path) -> Platform:
    file = str(path)
    platform_id = path.stem
    if not _ID.match(platform_id):
        raise ConfigError(file, "the file name is the platform id: lowercase letters, digits, - and _ only")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(file, err.strerror or str(err)) from None
    if len(data) > MAX_PLATFORM_BYTES:
        raise ConfigError(file, f"larger than {MAX_PLATFORM_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        raw: Any = yaml.load(text, Loader=SAFE_LOADER)
    except UnicodeDecodeError as err:
        raise ConfigError(file, f"not UTF-8 text at byte {err.start}") from None
    except yaml.MarkedYAMLError as err:
        line = f":{err.problem_mark.line + 1}" if err.problem_mark is not None else ""
        raise ConfigError(f"{file}{line}", f"YAML syntax: {err.problem}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as err:  # ValueError: an int too long to read
        raise ConfigError(file, f"YAML: {err.__class__.__name__}") from None
    check_shape(raw, file)
    if not isinstance(raw, dict):
        raise ConfigError(file, "must be a mapping with keys " + ", ".join(PLATFORM_KEYS))
    for key in raw:
        if key not in PLATFORM_KEYS:
            raise ConfigError(f"{file}:{line_of(text, str(key) + ':')}", f"{key}: unknown key "
                              f"(known: {', '.join(PLATFORM_KEYS)})")
    for key in ("name", "category", "owner"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{file}", f"{key}: required, a non-empty string")
    if not _ID.match(raw["category"]):
        raise ConfigError(f"{file}:{line_of(text, 'category:')}", "category: lowercase letters, digits, - and _ only")
    domains_raw = raw.get("domains")
    if not isinstance(domains_raw, list) or not domains_raw:
        raise ConfigError(file, "domains: required, a non-empty list of names")
    domains: list[str] = []
    for i, item in enumerate(domains_raw):
        try:
            if not isinstance(item, str):
                raise ValueError(f"must be a name, got {short(item)}")
            name = normalise_name(item)
            if "." not in name:
                raise ValueError("refusing to block a top-level domain")
        except ValueError as err:
            raise ConfigError(f"{file}:{line_of(text, str(item)) if isinstance(item, str) else '?'}",
                              f"domains[{i}]: {short(item)}: {err}") from None
        domains.append(name)
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise ConfigError(file, "sources: required, a list saying where the domains come from")
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise ConfigError(file, "notes: must be text")
    return Platform(platform_id, raw["name"].strip(), raw["category"], raw["owner"].strip(),
                    tuple(dict.fromkeys(domains)), file, notes, tuple(sources))


def line_of(text: str, needle: str) -> str:
    """The line a value sits on, found by text: PyYAML's plain loader forgets positions, and this is the slow path."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line and not line.lstrip().startswith("#"):
            return str(number)
    return "?"
