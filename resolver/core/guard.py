"""What a new policy would stop blocking that the running one blocks, and whether someone approved it.

A ban is a security control, so a change that weakens it must be seen and signed for: ``compare`` lists every
change between two policies as the clients see them (per group, platform, list, allow entry, bypass defence and
exemption), ``unapproved`` keeps the reductions no active ``Approval`` covers, and ``missing_required`` names the
mandatory platforms a policy fails to block. A reload, ``resolver serve --check-against`` and ``resolver diff``
all use these; none of them has a rule of its own. Pure: no I/O, and ``now`` is a parameter.

Clients are compared where they land: for each group's networks and client ids, old and new, and for a client in
no group, the group it was in and the group it is in now. So a removed or renamed group, or a network moved into a
laxer group, is compared like any other group whose blocks shrank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from resolver.core.policy import ALLOW, BLOCK, Exemption, Group, Policy, utc_text

BYPASS_SWITCHES = ("firefox_canary", "private_relay", "ddr", "doh_servers", "cname_cloaking")


@dataclass(frozen=True, slots=True)
class Limits:
    """How far a platform's domains or a list's blocking entries may shrink before it counts as a reduction."""

    platform_shrink: float = 0.10
    list_shrink: float = 0.50

    def stricter(self, other: Limits) -> Limits:
        """The tighter of two configs' limits: a change cannot loosen the limit it is judged by."""
        return Limits(min(self.platform_shrink, other.platform_shrink), min(self.list_shrink, other.list_shrink))


@dataclass(frozen=True, slots=True)
class Approval:
    """A signed-off reduction (``policy.approved_changes``): what may stop being blocked, for whom, until when."""

    approved_by: str
    reason: str
    reference: str
    expires: float  # Unix time, exclusive
    platforms: frozenset[str] = frozenset()  # platform ids or categories
    lists: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()  # covers the name and every name below it
    bypass: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()  # empty: every group
    where: str = ""

    def covers(self, change: Change, now: float, categories: dict[str, str]) -> bool:
        if now >= self.expires or (self.groups and change.group and change.group not in self.groups):
            return False
        platform = change.platform
        if platform and (platform in self.platforms or categories.get(platform) in self.platforms):
            return True
        if change.kind == "list":
            return change.subject in self.lists
        if change.kind == "domain":
            return any(change.subject == d or change.subject.endswith("." + d) for d in self.domains)
        return change.kind == "bypass" and change.subject in self.bypass


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "platform" | "list" | "domain" | "bypass" | "exemption"
    subject: str  # platform id, list name, domain, bypass switch or exemption reference
    group: str  # the group whose clients see it; "" for every group concerned
    effect: str  # "allowed" or "blocked"; for exemptions "added", "removed" or "changed"
    detail: str
    reduction: bool = False
    platform: str = ""  # the platform a domain belongs to, so approving the platform approves the domain

    def text(self) -> str:
        who = f" for group {self.group}" if self.group else ""
        return f"{self.kind} {self.subject}{who}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Side:
    """One policy as ``compare`` needs it: the policy, and per list its blocking entries and allow names (the
    lists themselves are not kept)."""

    policy: Policy
    blocking: dict[str, int] = field(default_factory=dict)  # list name -> entries that block
    allow_names: tuple[str, ...] = ()  # allow entries from allow lists

    def group_index(self, name: str) -> int:
        return next(i for i, g in enumerate(self.policy.groups) if g.name == name)

    def blocks(self, name: str, group: int) -> bool:
        verdict = self.policy.lookup(name.encode("ascii").split(b"."), group)
        return verdict is not None and verdict.action == BLOCK

    def applied(self, group: Group) -> frozenset[str]:
        """The lists that block for ``group``: the ones it neither allows nor only monitors."""
        return frozenset(name for name, count in self.blocking.items()
                         if count and name not in group.lists_allowed and name not in group.lists_monitored)


def compare(old: Side, new: Side, limits: Limits = Limits()) -> list[Change]:
    """Every change from ``old`` to ``new``; the ones that unblock something are marked ``reduction``."""
    changes: dict[tuple[str, str, str], Change] = {}
    for change in _all(old, new, limits):
        changes.setdefault((change.kind, change.subject, change.group), change)
    return list(changes.values())


def _all(old: Side, new: Side, limits: Limits) -> Iterator[Change]:
    for og, ng in _pairs(old.policy, new.policy):
        yield from _groups(old, new, og, ng)
    yield from _shrunk(old, new, limits)
    yield from _bypass(old, new)
    yield from _exemptions(old.policy.exemptions, new.policy.exemptions)


def unapproved(changes: Iterable[Change], approvals: Iterable[Approval], now: float,
               categories: dict[str, str]) -> list[Change]:
    """The reductions that no active approval covers."""
    approvals = tuple(approvals)
    return [c for c in changes if c.reduction and not any(a.covers(c, now, categories) for a in approvals)]


def approvals_used(changes: Iterable[Change], approvals: Iterable[Approval], now: float,
                   categories: dict[str, str]) -> list[Approval]:
    """The approvals that cover at least one of the reductions, for the audit trail."""
    reductions = [c for c in changes if c.reduction]
    return [a for a in approvals if any(a.covers(c, now, categories) for c in reductions)]


def categories_of(policy: Policy) -> dict[str, str]:
    return {pid: p.category for pid, p in policy.platforms.items()}


def missing_required(policy: Policy, required: Iterable[str]) -> list[tuple[int, str, str]]:
    """(index in ``required``, name, why) for each required platform or category the default group does not
    block: the platform is missing, is not blocked, or has a domain an allow entry lets through."""
    default = policy.groups[0]
    side = Side(policy)
    out = []
    for index, name in enumerate(required):
        ids = sorted(pid for pid, p in policy.platforms.items() if name in (pid, p.category))
        if not ids:
            out.append((index, name, "no such platform or category"))
            continue
        for pid in ids:
            if pid not in default.block:
                out.append((index, name, f"the default group does not block {pid}"))
                break
            leak = next((d for d in policy.platforms[pid].domains if not side.blocks(d, 0)), None)
            if leak is not None:
                out.append((index, name, f"{leak} ({pid}) is not blocked for the default group"))
                break
    return out


# --- the parts of compare ---------------------------------------------------------------------------------------


def _pairs(old: Policy, new: Policy) -> list[tuple[int, int]]:
    """(old group, new group) for every kind of client either policy names, and for a client in no group."""
    pairs = {(0, 0)}
    for policy in (old, new):
        for group in policy.groups:
            for network in group.networks:
                address = str(network.network_address)
                pairs.add((old.group_of(address), new.group_of(address)))
            for cid in group.client_ids:
                pairs.add((_by_id(old, cid), _by_id(new, cid)))
    return sorted(pairs)


def _by_id(policy: Policy, client_id: str) -> int:
    return policy.by_client_id.get(client_id, 0)


def _groups(old: Side, new: Side, og: int, ng: int) -> Iterator[Change]:
    """What the clients that were in old group ``og`` and are now in new group ``ng`` lose and gain."""
    before, after = old.policy.groups[og], new.policy.groups[ng]
    label = after.name if before.name == after.name else f"{after.name} (clients of {before.name})"
    platforms = new.policy.platforms
    lost = before.block - after.block
    for pid in sorted(lost):
        how = "platform removed" if pid not in platforms else _state(after, pid)
        yield Change("platform", pid, label, "allowed", f"no longer blocked: {how}", True, pid)
    for pid in sorted(after.block - before.block):
        yield Change("platform", pid, label, "blocked", "now blocked", False, pid)
    before_lists, after_lists = old.applied(before), new.applied(after)
    for name in sorted(before_lists - after_lists):
        how = ("list removed" if name not in new.blocking else "emptied" if not new.blocking[name]
               else "allowed for the group" if name in after.lists_allowed else "only monitored for the group")
        yield Change("list", name, label, "allowed", f"no longer blocks: {how}", True)
    for name in sorted(after_lists - before_lists):
        yield Change("list", name, label, "blocked", "now blocks", False)
    yield from _leaks(old, new, og, ng, label, lost)


def _leaks(old: Side, new: Side, og: int, ng: int, label: str, reported: frozenset[str]) -> Iterator[Change]:
    """Names the old group blocked and the new one lets through although their platform is still blocked: an
    allow entry now covers them, or the domain left the platform file. The probes are every platform domain and
    every allow entry."""
    for pid, platform in sorted(old.policy.platforms.items()):
        if pid in reported or pid not in new.policy.platforms:
            continue
        kept = set(new.policy.platforms[pid].domains)
        for domain in platform.domains:
            if old.blocks(domain, og) and not new.blocks(domain, ng):
                # One domain taken out of a platform file unblocks as surely as an allow entry does: each is a
                # reduction of its own, however small a share of the platform it is.
                how = f"now allowed by {_decider(new, domain, ng)}" if domain in kept else "removed from the platform"
                yield Change("domain", domain, label, "allowed", f"{pid} domain {how}", True, pid)
    spec = new.policy.spec
    allows = [*spec.allow_domains, *(d for g in spec.groups for d in g.allow_domains), *new.allow_names]
    for name in dict.fromkeys(allows):
        if old.blocks(name, og) and not new.blocks(name, ng):
            yield Change("domain", name, label, "allowed", f"blocked before, now allowed by "
                         f"{_decider(new, name, ng)}", True)


def _decider(side: Side, name: str, group: int) -> str:
    verdict = side.policy.lookup(name.encode("ascii").split(b"."), group)
    if verdict is None or verdict.rule is None:
        return "no rule (nothing blocks it)"
    return verdict.rule.source if verdict.action == ALLOW else verdict.reason


def _state(group: Group, pid: str) -> str:
    return "allowed" if pid in group.allow else "only monitored" if pid in group.monitor else "not in its block list"


def _shrunk(old: Side, new: Side, limits: Limits) -> Iterator[Change]:
    """Platforms and lists that are still there but much smaller: a truncated download or a file cut short."""
    blocked = frozenset().union(*(g.block for g in old.policy.groups))
    for pid in sorted(blocked & set(new.policy.platforms)):
        before, after = len(old.policy.platforms[pid].domains), len(new.policy.platforms[pid].domains)
        if after < before * (1 - limits.platform_shrink):
            yield Change("platform", pid, "", "allowed", f"domains {before} -> {after} ({_share(before, after)}, "
                         f"more than the {limits.platform_shrink:.0%} allowed)", True, pid)
    for name in sorted(set(old.blocking) & set(new.blocking)):
        before, after = old.blocking[name], new.blocking[name]
        if before and after < before * (1 - limits.list_shrink):
            how = "emptied" if not after else f"more than the {limits.list_shrink:.0%} allowed"
            yield Change("list", name, "", "allowed", f"blocking entries {before} -> {after} "
                         f"({_share(before, after)}, {how})", True)


def _share(before: int, after: int) -> str:
    return f"{(after - before) / before:+.0%}"


def _bypass(old: Side, new: Side) -> Iterator[Change]:
    for switch in BYPASS_SWITCHES:
        was, now = getattr(old.policy.spec.bypass, switch), getattr(new.policy.spec.bypass, switch)
        if was != now:
            yield Change("bypass", switch, "", "blocked" if now else "allowed",
                         "defence turned " + ("on" if now else "off"), not now)


def _exemptions(old: tuple[Exemption, ...], new: tuple[Exemption, ...]) -> Iterator[Change]:
    """Exemptions are signed for already; they are listed for the reviewer, not counted as reductions."""
    before, after = {e.reference: e for e in old}, {e.reference: e for e in new}
    for ref in sorted(set(before) | set(after)):
        was, now = before.get(ref), after.get(ref)
        if was is None and now is not None:
            yield Change("exemption", ref, "", "added", _exemption_text(now))
        elif now is None and was is not None:
            yield Change("exemption", ref, "", "removed", _exemption_text(was))
        elif was is not None and now is not None and _exemption_key(was) != _exemption_key(now):
            yield Change("exemption", ref, "", "changed", f"{_exemption_text(was)} -> {_exemption_text(now)}")


def _exemption_key(e: Exemption) -> tuple[object, ...]:
    return (e.platforms, e.approved_by, e.reason, e.starts, e.expires, e.clients, e.networks, e.groups,
            e.client_ids)


def _exemption_text(e: Exemption) -> str:
    return (f"{', '.join(sorted(e.platforms))} for {', '.join(e.who())}, approved by {e.approved_by}, "
            f"until {utc_text(e.expires)}")

