"""Compile platforms, lists, groups and exemptions into a Policy snapshot (pure: no I/O, no clock).

The trie holds, per entry, one interned tuple of Verdicts indexed by group: a million list entries with the
same claims share one tuple, and the hot path does ``trie.lookup(labels)[group]``. It is built as a DomainTrie
(dicts, easy to change) and served as a PackedTrie (flat arrays, a fraction of the memory).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from resolver.core import wire
from resolver.core.policy import (
    ALLOW,
    BLOCK,
    DEFAULT_ALWAYS_ALLOW,
    DOH_CATEGORY,
    MONITOR,
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
from resolver.core.trie import DomainTrie, Match, PackedTrie
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

    def resolve(names: tuple[str, ...], where: str) -> _Resolved:
        chosen: set[str] = set()
        chosen_lists: set[str] = set()
        for i, name in enumerate(names):
            if name in by_id:
                chosen.add(name)
            elif name in categories:
                chosen.update(categories[name])
            elif name in list_names:
                chosen_lists.add(name)
            else:
                known = ", ".join(sorted(set(categories) | set(by_id) | set(list_names)))
                raise ConfigError(f"{where}[{i}]", f"unknown platform, category or list {name!r} (known: {known})")
        return _Resolved(frozenset(chosen), frozenset(chosen_lists))

    if spec.always_allow is None:
        always = resolve(tuple(c for c in DEFAULT_ALWAYS_ALLOW if c in categories), f"{spec.where}.always_allow")
    else:
        always = resolve(spec.always_allow, f"{spec.where}.always_allow")
    doh = frozenset(categories.get(DOH_CATEGORY, ())) if spec.bypass.doh_servers else frozenset()
    groups = []
    for g in spec.groups:
        block = resolve(g.block, f"{g.where}.block")
        allow = resolve(g.allow, f"{g.where}.allow")
        monitor = resolve(g.monitor, f"{g.where}.monitor")
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
    for e in spec.exemptions:
        unknown = sorted(e.platforms - set(by_id) - set(categories))
        if unknown:
            raise ConfigError(f"{e.where}.platforms", f"unknown platform {unknown[0]!r}")
    exemptions = tuple(_expand(e, categories) for e in spec.exemptions)

    builder = _Builder(tuple(groups), exemptions)
    digest = hashlib.sha256(repr(spec).encode())
    if any((spec.bypass.firefox_canary, spec.bypass.private_relay, spec.bypass.ddr)):
        for name, match, reply, switch, why in SPECIAL_NAMES:
            if getattr(spec.bypass, switch):
                builder.add(name, match, Rule("special", reply, f"bypass.{switch}", text=why))
    for platform in platforms:
        rule = Rule("platform", "block", platform.source, platform)
        digest.update(f"{platform.id}:{platform.category}:{','.join(platform.domains)}".encode())
        for domain in platform.domains:
            builder.add(domain, "subtree", rule)
    for name, parsed in zip(list_names, lists, strict=True):
        by_action: dict[str, Rule] = {}
        digest.update(f"list {name} {parsed.digest}".encode())
        for domain, match, action in parsed.entries:
            list_rule = by_action.get(action)
            if list_rule is None:
                list_rule = by_action[action] = Rule("list", action, parsed.source, list_name=name)
            builder.add(domain, match, list_rule)
            if not parsed.digest:
                digest.update(f"{domain}|{match}|{action}\n".encode())
    everyone = Rule("allow_domains", "allow", f"{spec.where}.allow_domains")
    for domain in spec.allow_domains:
        builder.add(domain, "subtree", everyone)
    for g in spec.groups:
        if g.allow_domains:
            rule = Rule("allow_domains", "allow", f"{g.where}.allow_domains", groups=frozenset((g.name,)))
            for domain in g.allow_domains:
                builder.add(domain, "subtree", rule)
    builder.finish()
    return Policy(PackedTrie(builder.trie), by_id, tuple(groups), exemptions, spec, digest.hexdigest()[:16], list_names)


def _expand(e: Exemption, categories: dict[str, set[str]]) -> Exemption:
    """Exemptions may name a category; store platform ids."""
    ids: set[str] = set()
    for name in e.platforms:
        ids.update(categories.get(name, {name}))
    return Exemption(frozenset(ids), e.approved_by, e.reason, e.reference, e.starts, e.expires, e.clients,
                     e.networks, e.groups, e.client_ids, e.where)


class _Builder:
    def __init__(self, groups: tuple[Group, ...], exemptions: tuple[Exemption, ...]) -> None:
        self.trie: DomainTrie[tuple[Verdict, ...]] = DomainTrie()
        self.groups = groups
        self.exemptions = exemptions
        self._by_claims: dict[tuple[Rule, ...], tuple[Verdict, ...]] = {}
        self._claims: dict[int, tuple[Rule, ...]] = {}  # id(verdict tuple) -> claims
        self.needs_pass = False

    def add(self, domain: str, match: Match, rule: Rule) -> None:
        self.trie.update(domain.encode("ascii").split(b"."), match, lambda old: self._with(old, rule))

    def _with(self, old: tuple[Verdict, ...] | None, rule: Rule) -> tuple[Verdict, ...] | None:
        """The verdicts for an entry's claims plus ``rule`` (None: already claimed, nothing to change)."""
        if old is None:
            return self._verdicts((rule,))
        claims = self._claims[id(old)]
        return None if rule in claims else self._verdicts((*claims, rule))

    def _verdicts(self, claims: tuple[Rule, ...]) -> tuple[Verdict, ...]:
        verdicts = self._by_claims.get(claims)
        if verdicts is None:
            verdicts = self._by_claims[claims] = tuple(self._decide(claims, g) for g in self.groups)
            self._claims[id(verdicts)] = claims
            if any(v.action == PASS or v.protective for v in verdicts):
                self.needs_pass = True
        return verdicts

    def _decide(self, rules: tuple[Rule, ...], group: Group) -> Verdict:
        name = group.name
        for rule in rules:
            if rule.kind == "special":
                return Verdict(BLOCK, rule, rules, rule.text, name, "bypass", rule.action,
                               wire.ede_option(wire.EDE_BLOCKED, f"blocked: {rule.text}"), key=("bypass", name))
        for rule in rules:
            if rule.action == "allow" and (rule.groups is None or name in rule.groups) and not (
                    rule.kind == "list" and rule.list_name in group.lists_allowed):
                return Verdict(ALLOW, rule, rules, f"allowed by {rule.source}", name, protective=True)
        for rule in rules:
            if rule.platform is not None and rule.platform.id in group.allow:
                return Verdict(ALLOW, rule, rules, f"platform {rule.platform.id} is allowed for group {name}", name,
                               protective=True)
        platform_ids = {r.platform.id for r in rules if r.platform is not None}
        exemptions = tuple(e for e in self.exemptions if e.platforms & platform_ids)
        for rule in rules:
            if rule.platform is not None and rule.platform.id in group.block:
                p = rule.platform
                return Verdict(BLOCK, rule, rules, f"platform {p.id} ({p.category}) is blocked for group {name}",
                               name, p.id, "", wire.ede_option(wire.EDE_BLOCKED, f"blocked: {p.name} ({p.id})"),
                               exemptions=exemptions, key=(p.id, name))
        for rule in rules:
            if rule.kind == "list" and rule.action != "allow" and rule.list_name not in group.lists_allowed:
                label = rule.label
                if rule.list_name in group.lists_monitored:
                    return Verdict(MONITOR, rule, rules, f"listed in {rule.source} (monitor only)", name, label,
                                   key=(label, name))
                return Verdict(BLOCK, rule, rules, f"listed in {rule.source}", name, label,
                               "" if rule.action == "block" else rule.action,
                               wire.ede_option(wire.EDE_BLOCKED, f"blocked: list {rule.list_name}"),
                               exemptions=exemptions, key=(label, name))
        for rule in rules:
            if rule.platform is not None and rule.platform.id in group.monitor:
                p = rule.platform
                return Verdict(MONITOR, rule, rules, f"platform {p.id} is monitored for group {name}", name, p.id,
                               key=(p.id, name))
        owners = ", ".join(sorted(platform_ids))
        return Verdict(PASS, None, rules, f"belongs to {owners}, which group {name} neither blocks nor allows", name)

    def finish(self) -> None:
        """Apply the between-names rules per group: an allow shields what is below it; PASS decides nothing."""
        if not self.needs_pass:
            return
        merged: dict[tuple[int, int], tuple[Verdict, ...]] = {}

        def merge(own: tuple[Verdict, ...], inherited: tuple[Verdict, ...] | None) -> tuple[Verdict, ...]:
            if inherited is None:
                return own
            key = (id(own), id(inherited))
            out = merged.get(key)
            if out is None:
                out = tuple(
                    up if (up.protective and own_v.action != ALLOW and own_v.label != "bypass")
                    or (own_v.action == PASS and up.action != PASS) else own_v
                    for own_v, up in zip(own, inherited, strict=True))
                if out == own:
                    out = own
                else:
                    self._claims[id(out)] = self._claims.get(id(own), ())
                merged[key] = out
            return out

        self.trie.rewrite(merge)
