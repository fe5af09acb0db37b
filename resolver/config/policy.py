"""The ``policy:`` section of the config: groups, exemptions, lists, bypass defences.

Turned straight into the core's spec types (GroupSpec, Exemption, Bypass); names of platforms and categories are
checked later, against the platform files, by the policy builder. Errors name the file and key path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resolver.config.changes import GUARD_KEYS, Guard, parse_guard
from resolver.config.yamlfile import Section, short
from resolver.core.client import canonical_client
from resolver.core.policy import DEFAULT_GROUP, Bypass, Exemption, GroupSpec, IPNetwork, PolicySpec
from resolver.errors import ConfigError

LIST_FORMATS = ("auto", "hosts", "domains", "adblock", "rpz", "wildcard")
_SHA256 = re.compile(r"^[0-9A-Fa-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # spelt like a platform id
_LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC).timestamp()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_LIST_CACHE = Path.home() / ".cache" / "resolver" / "lists"


@dataclass(frozen=True, slots=True)
class ListSource:
    """A list file, or a URL fetched every ``refresh`` seconds into ``cache_path`` (the last good copy).

    ``allowlist``: the list names what to let through (every entry allows); any other list only blocks, and its
    allow rules are skipped. ``insecure``: a URL list may come over plain http. ``sha256``: the content's pinned
    hash (lowercase hex), checked on every download and every load.
    """

    name: str
    path: Path | None = None
    url: str | None = None
    format: str = "auto"
    refresh: float = 86400.0
    allowlist: bool = False
    insecure: bool = False
    sha256: str | None = None
    where: str = ""  # the config entry, for messages: "resolver.yaml: policy.lists[0]"

    def cache_path(self, directory: Path) -> Path:
        digest = hashlib.sha256((self.url or "").encode()).hexdigest()[:16]
        return directory / f"{self.name}-{digest}.txt"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    blocklists_dir: Path | None = None  # None: the bundled blocklists/
    categories: tuple[str, ...] = ()  # allowed in platform files beside the bundled ones (resolver.lists.platforms)
    lists: tuple[ListSource, ...] = ()
    list_cache_dir: Path = DEFAULT_LIST_CACHE
    max_exemption_days: int = 90
    spec: PolicySpec = field(default_factory=PolicySpec)
    guard: Guard = field(default_factory=Guard)  # required platforms, approved reductions, shrink limits


def parse_duration(value: Any, where: str) -> float:
    """``90``, ``30s``, ``15m``, ``6h``, ``7d``, ``2w`` -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # .inf would never refresh, and .nan would fail every comparison with it
            raise ConfigError(where, f"{value!r} is not a duration (e.g. 30s, 15m, 6h, 7d)")
        return float(value)
    match = _DURATION.match(str(value))
    if match is None:
        raise ConfigError(where, f"{value!r} is not a duration (e.g. 30s, 15m, 6h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(value: Any, where: str) -> float:
    """An ISO 8601 instant (YAML timestamp or text) -> Unix time. Without a zone it is UTC."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(where, f"{value!r} is not a date-time (e.g. 2026-12-01T09:00:00Z)") from None
    else:
        raise ConfigError(where, f"must be a date-time, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        stamp = moment.timestamp()
    except (OverflowError, ValueError):
        stamp = -1.0
    # Every instant is printed back in UTC later (logs, `resolver exemptions`): one near year 1 or 9999 with an
    # offset has no UTC year to print, so the range is checked here, where the error can name the key.
    if not 0 <= stamp < _LATEST:
        raise ConfigError(where, f"{short(value)} is out of range (1970 to 8999)")
    return stamp


def parse_networks(items: tuple[str, ...], where: str) -> tuple[IPNetwork, ...]:
    """CIDRs, strict (no host bits set), so a typo such as 10.0.0.1/8 is an error rather than a surprise."""
    out = []
    for i, text in enumerate(items):
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as err:
            raise ConfigError(f"{where}[{i}]", f"{text!r} is not a network (CIDR): {err}") from None
    return tuple(out)


def _addresses(items: tuple[str, ...], where: str) -> frozenset[str]:
    out = set()
    for i, text in enumerate(items):
        try:
            out.add(canonical_client(str(ipaddress.ip_address(text))))
        except ValueError:
            raise ConfigError(f"{where}[{i}]", f"{text!r} is not an IP address") from None
    return frozenset(out)


def parse_policy(s: Section, base: Path) -> PolicyConfig:
    """Read ``policy:`` (``s``); relative paths are relative to ``base``, the config file's directory."""
    s.check_keys(("blocklists_dir", "block", "allow", "monitor", "always_allow", "allow_domains", "lists", "groups",
                  "exemptions", "max_exemption_days", "bypass", "list_cache_dir", "categories", *GUARD_KEYS))
    directory = s.raw.get("blocklists_dir")
    lists = _lists(s, base)
    max_days = s.number("max_exemption_days", 90, 1, 3650, integer=True)

    groups = _groups(s)
    group_names = {g.name for g in groups}

    exemptions = []
    raw_exemptions = s.raw.get("exemptions") or []
    if not isinstance(raw_exemptions, list):
        raise ConfigError(s.where("exemptions"), "must be a list of exemption records")
    references: dict[str, int] = {}
    for i, raw in enumerate(raw_exemptions):
        exemption = _exemption(s, raw, f"exemptions[{i}]", max_days, group_names)
        # A reference names one signed record: a second exemption under it would pass for the first one.
        first = references.setdefault(exemption.reference, i)
        if first != i:
            raise ConfigError(s.where(f"exemptions[{i}].reference"), f"{exemption.reference!r} is already the "
                              f"reference of {s.path}.exemptions[{first}]: each exemption has its own reference")
        exemptions.append(exemption)

    bypass = s.section("bypass")
    bypass.check_keys(("firefox_canary", "private_relay", "ddr", "doh_servers", "cname_cloaking"))
    flags = {}
    for key in ("firefox_canary", "private_relay", "ddr", "doh_servers", "cname_cloaking"):
        value = bypass.raw.get(key, True)
        if not isinstance(value, bool):
            raise ConfigError(bypass.where(key), f"must be true or false, got {value!r}")
        flags[key] = value
    always = s.raw.get("always_allow")
    cache_dir = s.raw.get("list_cache_dir")
    spec = PolicySpec(
        groups=tuple(groups),
        always_allow=None if always is None else s.strings("always_allow", ()),
        allow_domains=s.strings("allow_domains", ()),
        exemptions=tuple(exemptions),
        bypass=Bypass(**flags),
        where=f"{s.file}: {s.path}",
    )
    config = PolicyConfig(
        blocklists_dir=None if directory is None else base / str(directory),
        categories=_categories(s),
        lists=lists,
        list_cache_dir=DEFAULT_LIST_CACHE if cache_dir is None else base / str(cache_dir),
        max_exemption_days=max_days,
        spec=spec,
        guard=parse_guard(s, parse_time),
    )
    return config


def _categories(s: Section) -> tuple[str, ...]:
    names = s.strings("categories", ())
    for i, name in enumerate(names):
        if not _CATEGORY.match(name):
            raise ConfigError(f"{s.where('categories')}[{i}]", f"{name!r}: lowercase letters, digits, - and _ only")
    return names


def _groups(s: Section) -> list[GroupSpec]:
    """``groups:``, the default group first; ``policy.block/allow/monitor`` are shorthand for the default group."""
    groups_raw = s.raw.get("groups") or {}
    if not isinstance(groups_raw, dict):
        raise ConfigError(s.where("groups"), "must be a mapping of group name to group")
    shorthand = {k: s.raw[k] for k in ("block", "allow", "monitor") if k in s.raw}
    if shorthand and DEFAULT_GROUP in groups_raw:
        raise ConfigError(s.where(next(iter(shorthand))),
                          "policy.block/allow/monitor are shorthand for groups.default; give one or the other")
    groups = [_group(s, DEFAULT_GROUP, groups_raw.get(DEFAULT_GROUP, shorthand), True,
                     f"{s.path}.groups.{DEFAULT_GROUP}" if DEFAULT_GROUP in groups_raw else s.path)]
    for name, raw in groups_raw.items():
        if name == DEFAULT_GROUP:
            continue
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(s.where(f"groups.{name}"), "group names are letters, digits, '.', '-' and '_'")
        groups.append(_group(s, name, raw, False, f"{s.path}.groups.{name}"))
    return groups


def _group(s: Section, name: str, raw: Any, is_default: bool, path: str) -> GroupSpec:
    g = Section(raw, s.file, path)
    g.check_keys(("block", "allow", "monitor", "allow_domains", "networks", "client_ids"))
    if is_default and (g.raw.get("networks") or g.raw.get("client_ids")):
        raise ConfigError(g.where("networks"), "the default group takes every client in no other group: "
                                               "it has no networks or client_ids of its own")
    default_block = ("social", "messaging") if is_default else ()
    networks = parse_networks(g.strings("networks", ()), g.where("networks"))
    client_ids = g.strings("client_ids", ())
    if not is_default and not networks and not client_ids:
        raise ConfigError(g.where("networks"), "a group needs networks or client_ids, or no client can be in it")
    return GroupSpec(name, g.strings("block", default_block), g.strings("allow", ()), g.strings("monitor", ()),
                     g.strings("allow_domains", ()), networks, client_ids, where=f"{s.file}: {path}")


def _exemption(s: Section, raw: Any, path: str, max_days: int, groups: set[str]) -> Exemption:
    e = Section(raw, s.file, f"{s.path}.{path}")
    e.check_keys(("platforms", "clients", "networks", "groups", "client_ids", "approved_by", "reason", "reference",
                  "starts", "expires"))
    platforms = e.strings("platforms", ())
    if not platforms:
        raise ConfigError(e.where("platforms"), "required: the platform ids (or categories) exempted")
    for key in ("approved_by", "reason", "reference"):
        value = e.raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(e.where(key), "required: every exemption records who approved it, why, and the ticket")
    for key in ("starts", "expires"):
        if e.raw.get(key) is None:
            raise ConfigError(e.where(key), "required: exemptions apply between starts and expires (ISO 8601)")
    starts = parse_time(e.raw["starts"], e.where("starts"))
    expires = parse_time(e.raw["expires"], e.where("expires"))
    if expires <= starts:
        raise ConfigError(e.where("expires"), "must be after starts")
    if expires - starts > max_days * 86400:
        raise ConfigError(e.where("expires"), f"an exemption may last at most {max_days} days "
                                              f"(policy.max_exemption_days); this one lasts "
                                              f"{(expires - starts) / 86400:.1f}")
    member_groups = e.strings("groups", ())
    for i, name in enumerate(member_groups):
        if name not in groups:
            raise ConfigError(f"{e.where('groups')}[{i}]", f"unknown group {name!r}")
    clients = _addresses(e.strings("clients", ()), e.where("clients"))
    networks = parse_networks(e.strings("networks", ()), e.where("networks"))
    client_ids = frozenset(e.strings("client_ids", ()))
    if not (clients or networks or member_groups or client_ids):
        raise ConfigError(e.where("clients"), "an exemption names who it is for: clients, networks, groups or "
                                              "client_ids")
    return Exemption(frozenset(platforms), e.raw["approved_by"].strip(), e.raw["reason"].strip(),
                     e.raw["reference"].strip(), starts, expires, clients, networks, frozenset(member_groups),
                     client_ids, where=f"{s.file}: {e.path}")


def _lists(s: Section, base: Path) -> tuple[ListSource, ...]:
    raw_lists = s.raw.get("lists") or []
    if not isinstance(raw_lists, list):
        raise ConfigError(s.where("lists"), "must be a list of {name, path or url, format, refresh}")
    return tuple(_list(Section({"path": item} if isinstance(item, str) else item, s.file, f"{s.path}.lists[{i}]"),
                       base, i) for i, item in enumerate(raw_lists))


def _list(entry: Section, base: Path, i: int) -> ListSource:
    entry.check_keys(("name", "path", "url", "format", "refresh", "allowlist", "insecure", "sha256"))
    path, url = entry.raw.get("path"), entry.raw.get("url")
    if (path is None) == (url is None):
        raise ConfigError(entry.where("path"), "give exactly one of path (a file) or url (https)")
    allowlist, insecure = _flag(entry, "allowlist"), _flag(entry, "insecure")
    if url is not None:
        _check_url(entry, url, insecure)
    elif insecure:
        raise ConfigError(entry.where("insecure"), "only a url list is fetched, so only a url list can be insecure")
    if path is not None and not isinstance(path, str):
        raise ConfigError(entry.where("path"), "must be a file path")
    fmt = str(entry.raw.get("format", "auto"))
    if fmt not in LIST_FORMATS:
        raise ConfigError(entry.where("format"), f"must be one of {', '.join(LIST_FORMATS)}, got {fmt!r}")
    default_name = Path(path).stem if path is not None else str(url).rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    name = str(entry.raw.get("name", default_name or f"list{i}"))
    if not _NAME.match(name):
        raise ConfigError(entry.where("name"), f"{name!r}: letters, digits, '.', '-' and '_' only")
    refresh = parse_duration(entry.raw.get("refresh", "24h"), entry.where("refresh"))
    if refresh < 60:
        raise ConfigError(entry.where("refresh"), "at least 60 seconds: list servers are somebody else's")
    return ListSource(name, None if path is None else base / path, url, fmt, refresh, allowlist, insecure,
                      _sha256(entry), f"{entry.file}: {entry.path}")


def _flag(entry: Section, key: str) -> bool:
    value = entry.raw.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(entry.where(key), f"must be true or false, got {value!r}")
    return value


def _check_url(entry: Section, url: Any, insecure: bool) -> None:
    """https only: a list fetched in the clear can be rewritten on the way, and a rewritten blocklist lifts a ban
    as surely as an edited config. Plain http is the operator's explicit choice (``insecure: true``)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(entry.where("url"), f"must be an https:// URL, got {url!r}")
    if url.startswith("http://") and not insecure:
        raise ConfigError(entry.where("url"), f"{url!r} is plain http: a list must come over https (or set "
                                              "insecure: true to take it unprotected)")


def _sha256(entry: Section) -> str | None:
    value = entry.raw.get("sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ConfigError(entry.where("sha256"), f"must be 64 hex digits (a quoted string), got {value!r}")
    return value.lower()
