"""Read what a policy is built from: platform files, list files, the policy config. All the disk I/O lives here.

Errors name the file and the line or key, and the reason; ``resolver check`` and a reload show them as they are.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from resolver.config import BUNDLED_BLOCKLISTS, Config
from resolver.core.builder import build_policy
from resolver.core.policy import ListInput, Platform, Policy, SinkholeSpec
from resolver.errors import ConfigError
from resolver.lists import ParsedList, SkippedLine, normalise_name, parse_file
from resolver.policyconfig import ListSource, PolicyConfig
from resolver.reader import SAFE_LOADER, check_shape, short

PLATFORM_KEYS = ("name", "category", "owner", "domains", "notes", "sources")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_PLATFORM_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Loaded:
    """A built policy with what it was built from, for ``check`` and ``explain``."""

    policy: Policy
    platforms: list[Platform]
    lists: list[ParsedList]


def load_policy(config: Config) -> Loaded:
    pc = config.policy
    platforms = load_platforms(pc.blocklists_dir or BUNDLED_BLOCKLISTS)
    lists = [load_list(src, pc.list_cache_dir) for src in pc.lists]
    spec = pc.spec
    groups = tuple(replace(g, allow_domains=_names(g.allow_domains, f"{g.where}.allow_domains")) for g in spec.groups)
    sinkhole = SinkholeSpec(config.sinkhole.mode, config.sinkhole.ipv4, config.sinkhole.ipv6, config.sinkhole.ttl)
    spec = replace(spec, groups=groups, allow_domains=_names(spec.allow_domains, f"{spec.where}.allow_domains"),
                   sinkhole=sinkhole)
    inputs = [ListInput(p.source, ((e.domain, e.match, e.action) for e in p.entries), src.name, _digest(src, pc))
              for p, src in zip(lists, pc.lists, strict=True)]
    return Loaded(build_policy(platforms, inputs, spec), platforms, lists)


def load_list(source: ListSource, cache_dir: Path) -> ParsedList:
    """A list file, or for a URL list the last good copy on disk (empty, with a note, if none was ever fetched)."""
    if source.path is not None:
        return parse_file(source.path, source.format)  # type: ignore[arg-type]
    cached = source.cache_path(cache_dir)
    if not cached.exists():
        return ParsedList(str(source.url), "domains", (), (SkippedLine(0, "not fetched yet: no copy on disk", ""),))
    parsed = parse_file(cached, source.format)  # type: ignore[arg-type]
    return replace(parsed, source=str(source.url))


def _digest(source: ListSource, config: PolicyConfig) -> str:
    """Content hash of a list file (the policy version changes exactly when a list's content does)."""
    path = source.path if source.path is not None else source.cache_path(config.list_cache_dir)
    digest = hashlib.sha256(source.format.encode())
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        digest.update(b"missing")
    return digest.hexdigest()


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
