"""The policy snapshot: which names are blocked, allowed or just forwarded, and the sinkhole replies.

Built once per (re)load from platforms, list files and the policy config, then never mutated (apart from the
lazily filled reply tails, which are a pure function of the snapshot): a reload builds a new one and swaps it in
with one assignment, so the hot path never locks.

Precedence at one name, documented in README: an allow entry (``allow_domains``, ``@@`` list rules, a platform
named in ``policy.allow``) beats a platform block, which beats a block from another list. Between names the
most specific entry that decides wins, so an allow entry below a blocked domain is reachable; an entry of a
platform this policy neither blocks nor allows decides nothing and the broader entry above it still applies.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from resolver.core import wire
from resolver.core.trie import DomainTrie, Match
from resolver.core.wire import ECHO_MASK, HEADER, QR, RA, Query
from resolver.errors import ConfigError

PASS, ALLOW, BLOCK = 0, 1, 2
ACTION_NAMES = {PASS: "forwarded", ALLOW: "allowed", BLOCK: "blocked"}


@dataclass(frozen=True, slots=True)
class Platform:
    id: str
    name: str
    category: str
    owner: str
    domains: tuple[str, ...]
    source: str  # the file it was read from
    notes: str = ""
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """Where an entry comes from: a platform file, a list file or the config. One object per source, shared."""

    kind: str  # "platform" | "list" | "allow_domains"
    action: str  # "block" | "allow" | "nxdomain" | "nodata"
    source: str  # file path, or "config policy.allow_domains"
    platform: Platform | None = None

    @property
    def label(self) -> str:
        """Bounded metrics label: the platform id, or the list file's name."""
        if self.platform is not None:
            return self.platform.id
        return "list:" + self.source.rsplit("/", 1)[-1]


@dataclass(eq=False, slots=True)
class Verdict:
    """What happens to names under one trie entry; shared by every entry with the same claims."""

    action: int
    rule: Rule | None  # the rule that decided; None for PASS
    rules: tuple[Rule, ...]  # every rule that claims the entry
    reason: str
    label: str = ""
    mode: str = ""  # sinkhole mode for BLOCK
    ede: bytes = b""
    tails: dict[int, tuple[int, int, int, int, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SinkholeSpec:
    mode: str = "null"
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ttl: int = 10


@dataclass(frozen=True, slots=True)
class ListInput:
    """One parsed list file as the policy needs it: entries as (domain, match, action)."""

    source: str
    entries: Iterable[tuple[str, Match, str]]


class Policy:
    def __init__(
        self, trie: DomainTrie[Verdict], platforms: dict[str, Platform], blocked: frozenset[str],
        allowed: frozenset[str], sinkhole: SinkholeSpec, version: str,
    ) -> None:
        self.trie = trie
        self.platforms = platforms
        self.blocked_platforms = blocked
        self.allowed_platforms = allowed
        self.sinkhole = sinkhole
        self.version = version

    def lookup(self, labels: list[bytes]) -> Verdict | None:
        return self.trie.lookup(labels)

    def blocked_reply(self, query: Query, verdict: Verdict) -> bytes:
        """The sinkhole answer, built from a cached tail: only the header and question are per query."""
        qtype = query.qtype
        key = (1 if qtype == wire.TYPE_A else 2 if qtype == wire.TYPE_AAAA else 0) * 4 + (
            2 if query.edns else 0) + (1 if query.do else 0)
        tail = verdict.tails.get(key)
        if tail is None:
            tail = verdict.tails[key] = _tail(self.sinkhole, verdict, qtype, query.edns, query.do)
        rcode, an, ns, ar, body = tail
        return HEADER.pack(query.id, QR | RA | (query.flags & ECHO_MASK) | rcode, 1, an, ns, ar) + query.question + body


_SOA_NAMES = wire.encode_name("resolver.invalid") + wire.encode_name("blocked.resolver.invalid")
_SOA_TIMERS = struct.Struct("!IIIII")  # serial, refresh, retry, expire, minimum


def _tail(spec: SinkholeSpec, verdict: Verdict, qtype: int, edns: bool, do: bool) -> tuple[int, int, int, int, bytes]:
    ttl = spec.ttl
    mode = verdict.mode
    records: list[bytes] = []
    rcode = wire.NOERROR
    if mode == "refused":
        rcode = wire.REFUSED
    elif mode == "nxdomain":
        rcode = wire.NXDOMAIN
    elif mode in ("null", "address") and qtype == wire.TYPE_A:
        addresses = ("0.0.0.0",) if mode == "null" else spec.ipv4
        records = [wire.rr(wire.TYPE_A, ttl, _packed(a)) for a in addresses]
    elif mode in ("null", "address") and qtype == wire.TYPE_AAAA:
        addresses = ("::",) if mode == "null" else spec.ipv6
        records = [wire.rr(wire.TYPE_AAAA, ttl, _packed(a)) for a in addresses]
    authority = []
    if not records and rcode != wire.REFUSED:
        # A SOA lets the phone cache the negative answer for the sinkhole TTL (RFC 2308 section 5).
        soa = _SOA_NAMES + _SOA_TIMERS.pack(1, 3600, 600, 86400, ttl)
        authority = [wire.rr(wire.TYPE_SOA, ttl, soa)]
    opt = wire.opt_record(do, verdict.ede) if edns else b""
    body = b"".join(records) + b"".join(authority) + opt
    return rcode, len(records), len(authority), 1 if opt else 0, body


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def build_policy(
    platforms: list[Platform],
    lists: list[ListInput],
    block: tuple[str, ...],
    allow: tuple[str, ...],
    allow_domains: tuple[str, ...],
    sinkhole: SinkholeSpec,
    where: str = "policy",
) -> Policy:
    """Assemble the snapshot. ``block``/``allow`` name platform ids or categories; unknown names are errors."""
    by_id = {p.id: p for p in platforms}
    categories = {p.category for p in platforms}

    def resolve(names: tuple[str, ...], key: str) -> frozenset[str]:
        chosen: set[str] = set()
        for i, name in enumerate(names):
            if name in by_id:
                chosen.add(name)
            elif name in categories:
                chosen.update(p.id for p in platforms if p.category == name)
            else:
                known = ", ".join(sorted(categories | set(by_id)))
                raise ConfigError(f"{where}.{key}[{i}]", f"unknown platform or category {name!r} (known: {known})")
        return frozenset(chosen)

    blocked = resolve(block, "block")
    allowed = resolve(allow, "allow")
    digest = hashlib.sha256()
    for item in (block, allow, allow_domains, (sinkhole.mode, sinkhole.ttl, *sinkhole.ipv4, *sinkhole.ipv6)):
        digest.update(repr(item).encode())

    builder = _Builder(blocked, allowed, sinkhole.mode)
    for platform in platforms:
        rule = Rule("platform", "block", platform.source, platform)
        digest.update(f"{platform.id}:{platform.category}:{','.join(platform.domains)}".encode())
        for domain in platform.domains:
            builder.add(domain, "subtree", rule)
    for parsed in lists:
        rules: dict[str, Rule] = {}
        for domain, match, action in parsed.entries:
            rule_for = rules.get(action)
            if rule_for is None:
                rule_for = rules[action] = Rule("list", action, parsed.source)
            builder.add(domain, match, rule_for)
            digest.update(f"{domain}|{match}|{action}\n".encode())
    allow_rule = Rule("allow_domains", "allow", "config policy.allow_domains")
    for domain in allow_domains:
        builder.add(domain, "subtree", allow_rule)
    if builder.has_pass:
        builder.trie.inherit(lambda verdict: verdict.action == PASS)
    return Policy(builder.trie, by_id, blocked, allowed, sinkhole, digest.hexdigest()[:16])


class _Builder:
    """Inserts entries, interning one Verdict per distinct set of claims so a million entries share a few objects."""

    def __init__(self, blocked: frozenset[str], allowed: frozenset[str], mode: str) -> None:
        self.trie: DomainTrie[Verdict] = DomainTrie()
        self.blocked = blocked
        self.allowed = allowed
        self.mode = mode
        self._interned: dict[tuple[Rule, ...], Verdict] = {}
        self.has_pass = False

    def add(self, domain: str, match: Match, rule: Rule) -> None:
        labels = domain.encode("ascii").split(b".")
        parts: tuple[Match, ...] = ("exact", "below") if match == "subtree" else (match,)
        for part in parts:
            old = self.trie.get(labels, part)
            if old is not None and rule in old.rules:
                continue
            rules = (*old.rules, rule) if old is not None else (rule,)
            verdict = self._interned.get(rules)
            if verdict is None:
                verdict = self._interned[rules] = self._decide(rules)
            self.trie.insert(labels, part, verdict)

    def _decide(self, rules: tuple[Rule, ...]) -> Verdict:
        for rule in rules:
            if rule.action == "allow":
                return Verdict(ALLOW, rule, rules, f"allowed by {rule.source}")
        for rule in rules:
            if rule.platform is not None and rule.platform.id in self.allowed:
                return Verdict(ALLOW, rule, rules, f"platform {rule.platform.id} is allowed by policy.allow")
        for rule in rules:
            if rule.platform is not None and rule.platform.id in self.blocked:
                p = rule.platform
                text = f"blocked: {p.name} ({p.id})"
                return Verdict(BLOCK, rule, rules, f"platform {p.id} ({p.category}) is blocked", p.id, self.mode,
                               wire.ede_option(wire.EDE_BLOCKED, text))
        for rule in rules:
            if rule.kind == "list" and rule.action != "allow":
                mode = self.mode if rule.action == "block" else rule.action
                name = rule.label.removeprefix("list:")
                return Verdict(BLOCK, rule, rules, f"listed in {rule.source}", rule.label, mode,
                               wire.ede_option(wire.EDE_BLOCKED, f"blocked: list {name}"))
        owners = ", ".join(r.platform.id for r in rules if r.platform is not None)
        self.has_pass = True
        return Verdict(PASS, None, rules, f"belongs to {owners}, which this policy does not block")
