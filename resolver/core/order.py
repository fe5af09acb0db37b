"""The evaluation order: which of the claims on a name decides it, for one group. Written once, here.

Every list entry, platform domain, allow entry and special name that covers a name is a claim (a ``Rule``). The
builder walks ``STEPS`` once per distinct set of claims and group, and the first step that decides gives the
verdict the hot path then finds in one trie lookup; ``resolver explain`` walks the same table to print every
step for one name and client. README's "How a name is decided" describes this table.

Between names the most specific entry that decides wins (the trie does that, see ``builder._merge``): an
allow entry shields its name and everything below it, and an entry that decides nothing (``PASS``) leaves
the broader entry above it in force.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from resolver.core import wire
from resolver.core.policy import ALLOW, BLOCK, MONITOR, PASS, Exemption, Group, Rule, Verdict

Decide = Callable[[tuple[Rule, ...], Group, tuple[Exemption, ...]], Verdict | None]
Describe = Callable[[tuple[Rule, ...], Group], str]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    why: str  # the reason for its place in the order
    decide: Decide  # the verdict when this step decides, else None
    describe: Describe  # what this step sees for the name (for explain)


def _special(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    for rule in rules:
        if rule.kind == "special":
            return Verdict(BLOCK, rule, rules, rule.text, group.name, "bypass", rule.action,
                           wire.ede_option(wire.EDE_BLOCKED, f"blocked: {rule.text}"), key=("bypass", group.name))
    return None


def _describe_special(rules: tuple[Rule, ...], group: Group) -> str:
    return next((f"{r.source}: {r.text}" for r in rules if r.kind == "special"), "no")


def _exemptions(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    # Exemptions start and stop on the wall clock, so they are not decided here: the block verdict of a later
    # step carries the ones that may lift it, and the pipeline checks them per query (Pipeline._exempted).
    return None


def _describe_exemptions(rules: tuple[Rule, ...], group: Group) -> str:
    return "checked per query against the clock and the client (below)"


def _allow_entry(rule: Rule, group: Group) -> bool:
    return rule.action == "allow" and (rule.groups is None or group.name in rule.groups) and not (
        rule.kind == "list" and rule.list_name in group.lists_allowed)


def _allow_entries(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    for rule in rules:
        if _allow_entry(rule, group):
            return Verdict(ALLOW, rule, rules, f"allowed by {rule.source}", group.name, protective=True)
    return None


def _describe_allow_entries(rules: tuple[Rule, ...], group: Group) -> str:
    return ", ".join(f"{r.source}" for r in rules if _allow_entry(r, group)) or "none"


def _platform_allowed(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    for rule in rules:
        if rule.platform is not None and rule.platform.id in group.allow:
            return Verdict(ALLOW, rule, rules, f"platform {rule.platform.id} is allowed for group {group.name}",
                           group.name, protective=True)
    return None


def _platforms_in(which: Callable[[Group], frozenset[str]]) -> Describe:
    """What a platform step sees: the platforms claiming the name that the group puts in ``which``."""
    def describe(rules: tuple[Rule, ...], group: Group) -> str:
        ids = [r.platform.id for r in rules if r.platform is not None]
        mine = [pid for pid in ids if pid in which(group)]
        return ", ".join(mine) if mine else f"none (claimed by {', '.join(ids)})" if ids else "none"
    return describe


def _platform_blocked(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    for rule in rules:
        p = rule.platform
        if p is not None and p.id in group.block:
            return Verdict(BLOCK, rule, rules, f"platform {p.id} ({p.category}) is blocked for group {group.name}",
                           group.name, p.id, "", wire.ede_option(wire.EDE_BLOCKED, f"blocked: {p.name} ({p.id})"),
                           exemptions=exemptions, key=(p.id, group.name))
    return None


def _lists(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    name = group.name
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
    return None


def _describe_lists(rules: tuple[Rule, ...], group: Group) -> str:
    def state(rule: Rule) -> str:
        if rule.list_name in group.lists_allowed:
            return f"{rule.action}, but group {group.name} allows the list"
        return "monitored" if rule.list_name in group.lists_monitored and rule.action != "allow" else rule.action

    return ", ".join(f"{r.list_name} ({state(r)})" for r in rules if r.kind == "list") or "none"


def _platform_monitored(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> Verdict | None:
    for rule in rules:
        p = rule.platform
        if p is not None and p.id in group.monitor:
            return Verdict(MONITOR, rule, rules, f"platform {p.id} is monitored for group {group.name}", group.name,
                           p.id, key=(p.id, group.name))
    return None


STEPS: tuple[Step, ...] = (
    Step("special names", "the bypass defences answer for every client: no allow, exemption or list may undo "
         "them, or a phone could switch its DNS away from the filter", _special, _describe_special),
    Step("exemptions", "an approved, unexpired exemption for a platform that claims the name lifts any block of "
         "that name for the clients it covers, whichever step below would block it", _exemptions,
         _describe_exemptions),
    Step("allow entries", "allow_domains and the entries of allow lists are the operator's explicit word on a name; "
         "they shield it and everything below it", _allow_entries, _describe_allow_entries),
    Step("allowed platforms", "a platform the group allows (or an always-allowed category: maps, news, transport) "
         "beats the category block that would otherwise cover it", _platform_allowed,
         _platforms_in(lambda g: g.allow)),
    Step("platform blocks", "the ban itself: platforms the group blocks", _platform_blocked,
         _platforms_in(lambda g: g.block)),
    Step("other lists", "a list that blocks the name applies even where the group only monitors the platform: "
         "monitor mode measures one platform's ban and must not lift a block that exists for another reason",
         _lists, _describe_lists),
    Step("monitored platforms", "counted as would-be blocks and answered normally: last, so it never weakens a "
         "block from any step above", _platform_monitored,
         _platforms_in(lambda g: g.monitor)),
)


# Where the exemptions step sits: explain names it as the deciding step when an exemption lifts a block.
EXEMPTIONS = next(i for i, step in enumerate(STEPS) if step.decide is _exemptions)


def decide(rules: tuple[Rule, ...], group: Group, exemptions: tuple[Exemption, ...]) -> tuple[int, Verdict]:
    """The first step that decides, as (index in STEPS, verdict); (len(STEPS), a PASS verdict) when none does:
    the name belongs to platforms the group neither blocks nor allows."""
    for index, step in enumerate(STEPS):
        verdict = step.decide(rules, group, exemptions)
        if verdict is not None:
            return index, verdict
    owners = ", ".join(sorted({r.platform.id for r in rules if r.platform is not None}))
    return len(STEPS), Verdict(PASS, None, rules, f"belongs to {owners}, which group {group.name} neither blocks "
                                                  "nor allows", group.name)
