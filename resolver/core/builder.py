"""Compile platforms, lists, groups and exemptions into a Policy snapshot (pure: no I/O, no clock).

The trie holds, per entry, one interned tuple of Verdicts indexed by group: a million list entries with the
same claims share one tuple, and the hot path does ``trie.lookup(labels)[group]``. Entries go straight into
the flat table a PackedTrie serves from, in runs of names that share a rule: a list is never held as entries,
and no dict per node is ever made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

from resolver.core import order
from resolver.core.policy import (
    ALLOW,
    DEFAULT_ALWAYS_ALLOW,
    DOH_CATEGORY,
    PASS,
    SPECIAL_NAMES,
    Exemption,
    Group,
    ListInput,
    Platform,
    Policy,
    PolicySpec,
    Rule,
    Verdict,
)
from resolver.core.table import TableBuilder
from resolver.core.trie import Match, PackedTrie
from resolver.errors import ConfigError


@dataclass(frozen=True, slots=True)
class _Resolved:
    platforms: frozenset[str]
    lists: frozenset[str]


def build_policy(platforms: list[Platform], lists: list[ListInput], spec: PolicySpec) -> Policy:
    """Assemble the snapshot. Names in groups are platform ids, categories or list names; unknown ones are errors."""
    by_id = {p.id: p for p in platforms}
    categories: dict[str, set[str]] = {}
    for p in platforms:
        categories.setdefault(p.category, set()).add(p.id)
    list_names = {}
    for i, parsed in enumerate(lists):
        name = parsed.name or f"list{i}"
        if name in list_names:
            raise ConfigError(f"{spec.where}.lists", f"two lists are named {name!r}; give each a distinct name")
        list_names[name] = parsed.source

    groups = _groups(spec, _Names(by_id, categories, list_names))
    for e in spec.exemptions:
        unknown = sorted(e.platforms - set(by_id) - set(categories))
        if unknown:
            raise ConfigError(f"{e.where}.platforms", f"unknown platform {unknown[0]!r}")
    exemptions = tuple(_expand(e, categories) for e in spec.exemptions)

    expected = 16 + 2 * sum(len(p.domains) for p in platforms)  # more as the lists show their size
    builder = _Builder(tuple(groups), exemptions, expected)
    digest = hashlib.sha256(repr(spec).encode())
    if any((spec.bypass.firefox_canary, spec.bypass.private_relay, spec.bypass.ddr)):
        for name, match, reply, switch, why in SPECIAL_NAMES:
            if getattr(spec.bypass, switch):
                builder.add((name,), match, Rule("special", reply, f"bypass.{switch}", text=why))
    for platform in platforms:
        rule = Rule("platform", "block", platform.source, platform)
        digest.update(f"{platform.id}:{platform.category}:{','.join(platform.domains)}".encode())
        builder.add(platform.domains, "subtree", rule)
    for name, parsed in zip(list_names, lists, strict=True):
        _add_list(builder, name, parsed, digest)
    everyone = Rule("allow_domains", "allow", f"{spec.where}.allow_domains")
    builder.add(spec.allow_domains, "subtree", everyone)
    for g in spec.groups:
        if g.allow_domains:
            rule = Rule("allow_domains", "allow", f"{g.where}.allow_domains", groups=frozenset((g.name,)))
            builder.add(g.allow_domains, "subtree", rule)
    return Policy(builder.finish(), by_id, tuple(groups), exemptions, spec, digest.hexdigest()[:16], list_names)


class _Names:
    """What a name in a group's block/allow/monitor may be: a platform id, a category or a list name."""

    def __init__(self, by_id: dict[str, Platform], categories: dict[str, set[str]], lists: dict[str, str]) -> None:
        self.by_id = by_id
        self.categories = categories
        self.lists = lists

    def resolve(self, names: tuple[str, ...], where: str) -> _Resolved:
        chosen: set[str] = set()
        chosen_lists: set[str] = set()
        for i, name in enumerate(names):
            if name in self.by_id:
                chosen.add(name)
            elif name in self.categories:
                chosen.update(self.categories[name])
            elif name in self.lists:
                chosen_lists.add(name)
            else:
                known = ", ".join(sorted(set(self.categories) | set(self.by_id) | set(self.lists)))
                raise ConfigError(f"{where}[{i}]", f"unknown platform, category or list {name!r} (known: {known})")
        return _Resolved(frozenset(chosen), frozenset(chosen_lists))


def _groups(spec: PolicySpec, names: _Names) -> list[Group]:
    """Each group's names resolved to platform ids and lists. An allow (explicit, or an always-allowed category)
    beats a block; the DoH-bypass category is blocked for every group that does not allow it; monitoring applies
    only to what is neither allowed nor blocked."""
    categories = names.categories
    if spec.always_allow is None:
        always = names.resolve(tuple(c for c in DEFAULT_ALWAYS_ALLOW if c in categories), f"{spec.where}.always_allow")
    else:
        always = names.resolve(spec.always_allow, f"{spec.where}.always_allow")
    doh = frozenset(categories.get(DOH_CATEGORY, ())) if spec.bypass.doh_servers else frozenset()
    groups = []
    for g in spec.groups:
        block = names.resolve(g.block, f"{g.where}.block")
        allow = names.resolve(g.allow, f"{g.where}.allow")
        monitor = names.resolve(g.monitor, f"{g.where}.monitor")
        allowed = allow.platforms | always.platforms
        groups.append(Group(
            g.name,
            block=(block.platforms | (doh - allow.platforms)) - allowed,
            allow=allowed,
            monitor=monitor.platforms - allowed - block.platforms,
            lists_allowed=allow.lists | always.lists,
            lists_monitored=monitor.lists - block.lists,
            networks=g.networks,
            client_ids=frozenset(g.client_ids),
        ))
    return groups


def _add_list(builder: _Builder, name: str, parsed: ListInput, digest: hashlib._Hash) -> None:
    """One list, run by run. A bulk list says how many entries it projects from what it has read so far, so
    the table can grow early, while re-placing keys is cheap: by one node per entry still to come, a floor
    (ancestors add more, but how many varies along a sorted list, and doubling too far doubles the memory)."""
    by_action: dict[str, Rule] = {}
    bulk = parsed.bulk
    if bulk is None:
        digest.update(f"list {name} {parsed.digest}".encode())
    runs = bulk.runs() if bulk is not None else _runs(parsed.entries)
    table = builder.table
    seen = 0
    for match, action, names in runs:
        rule = by_action.get(action)
        if rule is None:
            rule = by_action[action] = Rule("list", action, parsed.source, list_name=name)
        builder.add(names, match, rule)
        if bulk is not None:
            seen += len(names)
            table.reserve(bulk.projected() - seen)
        elif not parsed.digest:
            for domain in names:
                digest.update(f"{domain}|{match}|{action}\n".encode())
    if bulk is not None:  # a streamed list knows its content hash once it has been read
        digest.update(f"list {name} {bulk.digest()}".encode())


def _runs(entries: Iterable[tuple[str, Match, str]]) -> Iterator[tuple[Match, str, list[str]]]:
    """Entries one by one, as runs of consecutive entries that share a match and an action."""
    for (match, action), run in groupby(entries, key=lambda e: (e[1], e[2])):
        yield match, action, [e[0] for e in run]


def _expand(e: Exemption, categories: dict[str, set[str]]) -> Exemption:
    """Exemptions may name a category; store platform ids."""
    ids: set[str] = set()
    for name in e.platforms:
        ids.update(categories.get(name, {name}))
    return Exemption(frozenset(ids), e.approved_by, e.reason, e.reference, e.starts, e.expires, e.clients,
                     e.networks, e.groups, e.client_ids, e.where)


class _Builder:
    """The claims on each node, as value pairs (here, below) in the table being built.

    A claim set is a tuple of Rules in the order they were added; its verdicts are interned, and so are pairs
    of them: a list's entries with the same claims share one pair, and merging one more rule into a pair is
    worked out once per (pair, rule) and remembered.
    """

    def __init__(self, groups: tuple[Group, ...], exemptions: tuple[Exemption, ...], expected: int) -> None:
        self.table = TableBuilder(expected)
        self.groups = groups
        self.exemptions = exemptions
        self.values: list[tuple[Verdict, ...] | None] = [None]
        self.here = [0]  # per pair: index in values, 0 for None
        self.below = [0]
        self._index: dict[int, int] = {}  # id(verdicts) -> index in values
        self._pairs: dict[tuple[int, int], int] = {(0, 0): 0}
        self._codes: dict[tuple[Rule, Match], int] = {}  # the pair of one entry of (rule, match) on its own
        self._code_of: dict[int, tuple[Rule, Match]] = {}
        self._combined: dict[tuple[int, int], int] = {}
        self._by_claims: dict[tuple[Rule, ...], tuple[Verdict, ...]] = {}
        self._claims: dict[int, tuple[Rule, ...]] = {}  # id(verdict tuple) -> claims
        self.needs_pass = False

    def add(self, names: Sequence[str], match: Match, rule: Rule) -> None:
        code = self._codes.get((rule, match))
        if code is None:
            verdicts = self._verdicts((rule,))
            code = self._pair(None if match == "below" else verdicts, None if match == "exact" else verdicts)
            self._codes[rule, match] = code
            self._code_of[code] = (rule, match)
        self.table.add(names, code, self._combine)

    def _combine(self, old: int, code: int) -> int:
        """The pair of a node with pair ``old`` that one more entry, of pair ``code``, claims."""
        pair = self._combined.get((old, code))
        if pair is None:
            rule, match = self._code_of[code]
            here, below = self.values[self.here[old]], self.values[self.below[old]]
            if match != "below":
                here = self._with(here, rule)
            if match != "exact":
                below = self._with(below, rule)
            pair = self._combined[old, code] = self._pair(here, below)
        return pair

    def _pair(self, here: tuple[Verdict, ...] | None, below: tuple[Verdict, ...] | None) -> int:
        key = (self._value(here), self._value(below))
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = len(self.here)
            self.here.append(key[0])
            self.below.append(key[1])
        return pair

    def _value(self, verdicts: tuple[Verdict, ...] | None) -> int:
        if verdicts is None:
            return 0
        n = self._index.get(id(verdicts))
        if n is None:
            n = self._index[id(verdicts)] = len(self.values)
            self.values.append(verdicts)
        return n

    def _with(self, old: tuple[Verdict, ...] | None, rule: Rule) -> tuple[Verdict, ...]:
        """The verdicts for an entry's claims plus ``rule``."""
        if old is None:
            return self._verdicts((rule,))
        claims = self._claims[id(old)]
        return old if rule in claims else self._verdicts((*claims, rule))

    def _verdicts(self, claims: tuple[Rule, ...]) -> tuple[Verdict, ...]:
        verdicts = self._by_claims.get(claims)
        if verdicts is None:
            verdicts = self._by_claims[claims] = tuple(self._decide(claims, g) for g in self.groups)
            self._claims[id(verdicts)] = claims
            if any(v.action == PASS or v.protective for v in verdicts):
                self.needs_pass = True
        return verdicts

    def _decide(self, rules: tuple[Rule, ...], group: Group) -> Verdict:
        platform_ids = {r.platform.id for r in rules if r.platform is not None}
        exemptions = tuple(e for e in self.exemptions if e.platforms & platform_ids)
        return order.decide(rules, group, exemptions)[1]

    def finish(self) -> PackedTrie[tuple[Verdict, ...]]:
        """The served trie. The between-names rules (an allow shields what is below it; PASS decides nothing)
        apply on its walks, where they arise, instead of in a pass over every node."""
        merge = _merge if self.needs_pass else None
        return PackedTrie.packed(self.table, self.values, self.here, self.below, merge)


def _merge(own: tuple[Verdict, ...], inherited: tuple[Verdict, ...]) -> tuple[Verdict, ...]:
    """Per group, the verdict a name gets from its own entry under an ancestor's below-verdicts."""
    out = tuple(
        up if (up.protective and own_v.action != ALLOW and own_v.label != "bypass")
        or (own_v.action == PASS and up.action != PASS) else own_v
        for own_v, up in zip(own, inherited, strict=True))
    return own if out == own else out
