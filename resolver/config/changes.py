"""The guard-rail keys of ``policy:``: ``required``, ``approved_changes``, ``max_platform_shrink``,
``max_list_shrink``. Turned into the core's types (``resolver.core.guard``); errors name the file and key path."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resolver.config.yamlfile import Section
from resolver.core.guard import BYPASS_SWITCHES, Approval, Limits
from resolver.errors import ConfigError

GUARD_KEYS = ("required", "approved_changes", "max_platform_shrink", "max_list_shrink")
TimeParser = Callable[[Any, str], float]  # (value, key path) -> Unix time
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Guard:
    required: tuple[str, ...] = ()  # platform ids or categories the default group must block
    approvals: tuple[Approval, ...] = ()
    limits: Limits = field(default_factory=Limits)


def parse_guard(s: Section, parse_time: TimeParser) -> Guard:
    """``s`` is the ``policy:`` section; ``parse_time`` reads an ISO 8601 instant (config.policy.parse_time)."""
    raw = s.raw.get("approved_changes") or []
    if not isinstance(raw, list):
        raise ConfigError(s.where("approved_changes"), "must be a list of approval records")
    approvals = tuple(_approval(Section(item, s.file, f"{s.path}.approved_changes[{i}]"), parse_time)
                      for i, item in enumerate(raw))
    default = Limits()
    limits = Limits(_share(s, "max_platform_shrink", default.platform_shrink),
                    _share(s, "max_list_shrink", default.list_shrink))
    return Guard(s.strings("required", ()), approvals, limits)


def _share(s: Section, key: str, default: float) -> float:
    """``10%`` or ``0.1``: a share between 0 and 1."""
    value = s.raw.get(key, default)
    if isinstance(value, str) and (match := _SHARE.match(value)):
        value = float(match.group(1)) / 100
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(s.where(key), f"must be a share such as 10% or 0.1, got {value!r}")
    return float(value)


def _approval(a: Section, parse_time: TimeParser) -> Approval:
    a.check_keys(("platforms", "lists", "domains", "bypass", "sinkhole", "groups", "approved_by", "reason",
                  "reference", "expires"))
    for key in ("approved_by", "reason", "reference"):
        value = a.raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(a.where(key), "required: every approved change records who approved it, why, "
                                            "and the change reference")
    if a.raw.get("expires") is None:
        raise ConfigError(a.where("expires"), "required: until when the approval is valid (ISO 8601)")
    kinds = {key: frozenset(a.strings(key, ())) for key in ("platforms", "lists", "domains", "bypass", "sinkhole")}
    if not any(kinds.values()):
        raise ConfigError(a.where("platforms"), "an approved change names what may stop being blocked: "
                                                "platforms, lists, domains, bypass or sinkhole")
    for i, switch in enumerate(sorted(kinds["bypass"])):
        if switch not in BYPASS_SWITCHES:
            raise ConfigError(f"{a.where('bypass')}[{i}]", f"unknown bypass defence {switch!r} "
                                                           f"(known: {', '.join(BYPASS_SWITCHES)})")
    domains = frozenset(d.lower().rstrip(".") for d in kinds["domains"])
    return Approval(a.raw["approved_by"].strip(), a.raw["reason"].strip(), a.raw["reference"].strip(),
                    parse_time(a.raw["expires"], a.where("expires")), kinds["platforms"], kinds["lists"], domains,
                    kinds["bypass"], frozenset(a.strings("groups", ())), where=f"{a.file}: {a.path}",
                    sinkhole=_addresses(a, sorted(kinds["sinkhole"])))


def _addresses(a: Section, texts: list[str]) -> frozenset[str]:
    """Spelt as the review spells them (``2001:db8::1``, not ``2001:DB8:0::1``), or the approval would not match."""
    out = set()
    for i, text in enumerate(texts):
        try:
            out.add(str(ipaddress.ip_address(text.strip())))
        except ValueError:
            raise ConfigError(f"{a.where('sinkhole')}[{i}]", f"{text!r} is not an IP address") from None
    return frozenset(out)
