"""Read the platform files: one YAML file per platform (``blocklists/tiktok.yaml``), its id the file name.

A platform's ``category`` is one of a closed set: the bundled categories below, plus any the config declares
(``policy.categories``). Groups block by category, so an open set would let a typo (``socail``) quietly move a
platform out of the category its group blocks; with a closed set the typo is an error instead.

Errors name the file and, where the text shows it, the line; ``resolver check`` and a reload show them as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from resolver.config.yamlfile import load_yaml, short
from resolver.core.policy import DEFAULT_ALWAYS_ALLOW, DOH_CATEGORY, Platform
from resolver.errors import ConfigError
from resolver.lists.entries import normalise_name

PLATFORM_KEYS = ("name", "category", "owner", "domains", "notes", "sources")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_PLATFORM_BYTES = 16 * 1024 * 1024
# The categories the bundled blocklists/ use, declared once: the default group blocks social and messaging, the
# core always allows DEFAULT_ALWAYS_ALLOW and blocks DOH_CATEGORY for every group (policy.bypass.doh_servers).
BUNDLED_CATEGORIES: Final = ("social", "messaging", *DEFAULT_ALWAYS_ALLOW, DOH_CATEGORY)


def load_platforms(directory: Path, extra_categories: Iterable[str] = ()) -> list[Platform]:
    """Every platform file in ``directory``; ``extra_categories`` are the config's ``policy.categories``, allowed
    beside BUNDLED_CATEGORIES."""
    try:
        found = directory.is_dir()
    except (OSError, ValueError) as err:  # a path no directory can have: too long, a NUL byte
        raise ConfigError(str(directory), f"not a usable path: {getattr(err, 'strerror', None) or err}") from None
    if not found:
        raise ConfigError(str(directory), "blocklists directory not found")
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise ConfigError(str(directory), "no platform files (*.yaml) in the blocklists directory")
    extra = tuple(extra_categories)
    return [load_platform(path, extra) for path in files]


def load_platform(path: Path, extra_categories: Iterable[str] = ()) -> Platform:
    file = str(path)
    platform_id = path.stem
    if not _ID.match(platform_id):
        raise ConfigError(file, "the file name is the platform id: lowercase letters, digits, - and _ only")
    raw, text = load_yaml(path, MAX_PLATFORM_BYTES)
    if not isinstance(raw, dict):
        raise ConfigError(file, "must be a mapping with keys " + ", ".join(PLATFORM_KEYS))
    for key in raw:
        if key not in PLATFORM_KEYS:
            raise ConfigError(f"{file}:{line_of(text, str(key) + ':')}", f"{key}: unknown key "
                              f"(known: {', '.join(PLATFORM_KEYS)})")
    for key in ("name", "category", "owner"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{file}", f"{key}: required, a non-empty string")
    _check_category(raw["category"], extra_categories, f"{file}:{line_of(text, 'category:')}")
    domains = _domains(raw.get("domains"), file, text)
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise ConfigError(file, "sources: required, a list saying where the domains come from")
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise ConfigError(file, "notes: must be text")
    return Platform(platform_id, raw["name"].strip(), raw["category"], raw["owner"].strip(),
                    tuple(dict.fromkeys(domains)), file, notes, tuple(sources))


def _check_category(category: str, extra: Iterable[str], where: str) -> None:
    if not _ID.match(category):
        raise ConfigError(where, "category: lowercase letters, digits, - and _ only")
    known = sorted({*BUNDLED_CATEGORIES, *extra})
    if category not in known:
        raise ConfigError(where, f"category: unknown category {category!r} (known: {', '.join(known)}; "
                                 "declare a new one in the config's policy.categories)")


def _domains(domains_raw: Any, file: str, text: str) -> list[str]:
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
    return domains


def line_of(text: str, needle: str) -> str:
    """The line a value sits on, found by text: PyYAML's plain loader forgets positions, and this is the slow path."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line and not line.lstrip().startswith("#"):
            return str(number)
    return "?"
