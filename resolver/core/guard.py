"""What a new policy would stop blocking that the running one blocks, and whether someone approved it.

A ban is a security control, so a change that weakens it must be seen and signed for: ``compare`` lists every
change between two policies as the clients see them (per group, platform, list, allow entry, bypass defence,
exemption and sinkhole), ``unapproved`` keeps the reductions no active ``Approval`` covers, and
``missing_required`` names the mandatory platforms a policy fails to block. A reload, ``resolver serve
--check-against`` and ``resolver diff`` all use these; none of them has a rule of its own. Pure: no I/O, and
``now`` is a parameter.

Clients are compared where they land: the address space is cut into the ranges in which no group's network, old
or new, starts or ends, and one address of each range is compared (the first address of a network alone would
miss the half of a /8 that a /9 of a stricter group used to cover); so are client ids, and a client in no group.
So a removed or renamed group, or a network moved into a laxer group, is compared like any other group whose
blocks shrank. Names are probed from both sides: every domain the old platforms blocked, and every name the new
policy lets through (allow entries, every platform domain, and a name below each, for wildcard allows).

Exemptions and the sinkhole are compared too (``resolver.core.scope``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from resolver.core.policy import ALLOW, BLOCK, Group, Policy
from resolver.core.scope import Change, exemption_changes, sinkhole_changes

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
    sinkhole: frozenset[str] = frozenset()  # addresses blocked names may be answered with

    def covers(self, change: Change, now: float, categories: dict[str, str]) -> bool:
        if now >= self.expires or not self._for_whom(change):
            return False
        if change.kind == "exemption":  # every platform it lifts must be approved, or an approval for TikTok
            return bool(change.platforms) and all(self._platform(p, categories) for p in change.platforms)
        if change.platform and self._platform(change.platform, categories):
            return True
        if change.kind == "list":
            return change.subject in self.lists
        if change.kind == "domain":
            return any(change.subject == d or change.subject.endswith("." + d) for d in self.domains)
        if change.kind == "sinkhole":
            return change.subject in self.sinkhole
        return change.kind == "bypass" and change.subject in self.bypass

    def _for_whom(self, change: Change) -> bool:
        """An approval for some groups covers a change only if every client who sees it is in those groups: a
        change for every group (a list cut, a bypass defence, the sinkhole) is not approved for the comms team
        alone."""
        if not self.groups:
            return True
        seen = change.seen_by or (frozenset({change.group}) if change.group else frozenset())
        return bool(seen) and seen <= self.groups

    def _platform(self, pid: str, categories: dict[str, str]) -> bool:
        return pid in self.platforms or categories.get(pid) in self.platforms


@dataclass(frozen=True, slots=True)
class Side:
    """One policy as ``compare`` needs it: the policy, and per list its blocking entries and allow names (the
    lists themselves are not kept)."""

    policy: Policy
    blocking: dict[str, int] = field(default_factory=dict)  # list name -> entries that block
    allow_names: tuple[str, ...] = ()  # allow entries from allow lists
    unchecked: dict[str, int] = field(default_factory=dict)  # list name -> allow entries past ``allow_names``

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
        # Two exemptions may share a reference (only a config check forbids it): each is a change of its own.
        where = change.detail if change.kind == "exemption" else change.group
        changes.setdefault((change.kind, change.subject, where), change)
    return list(changes.values())


def _all(old: Side, new: Side, limits: Limits) -> Iterator[Change]:
    pairs = _pairs(old.policy, new.policy)
    for og, ng in pairs:
        yield from _groups(old, new, og, ng)
    yield from _shrunk(old, new, limits, pairs)
    yield from _unchecked(new)
    yield from _bypass(old, new)
    yield from exemption_changes(old.policy, new.policy)
    yield from sinkhole_changes(old.policy.spec.sinkhole, new.policy.spec.sinkhole)


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

PROBE_LABEL = "resolver-guard-probe"  # a name below an allow entry: a wildcard allow lifts what is below it


def _pairs(old: Policy, new: Policy) -> list[tuple[int, int]]:
    """(old group, new group) for every kind of client either policy names, and for a client in no group."""
    pairs = {(0, 0)}
    for address in _representatives(old, new):
        pairs.add((old.group_of(address), new.group_of(address)))
    for policy in (old, new):
        for group in policy.groups:
            for cid in group.client_ids:
                pairs.add((_by_id(old, cid), _by_id(new, cid)))
    return sorted(pairs)


def _representatives(old: Policy, new: Policy) -> Iterator[str]:
    """One address of each range in which group membership is the same in both policies: every network starts a
    range and the address after it starts another, so between two such points nothing changes."""
    for version, address in ((4, ipaddress.IPv4Address), (6, ipaddress.IPv6Address)):
        top = 1 << (32 if version == 4 else 128)
        points = {0}
        for policy in (old, new):
            for group in policy.groups:
                for network in group.networks:
                    if network.version == version:
                        points.update((int(network.network_address), int(network.broadcast_address) + 1))
        yield from (str(address(point)) for point in sorted(points) if point < top)


def _by_id(policy: Policy, client_id: str) -> int:
    return policy.by_client_id.get(client_id, 0)


def _label(old: Policy, new: Policy, og: int, ng: int) -> str:
    before, after = old.groups[og].name, new.groups[ng].name
    return after if before == after else f"{after} (clients of {before})"


def _groups(old: Side, new: Side, og: int, ng: int) -> Iterator[Change]:
    """What the clients that were in old group ``og`` and are now in new group ``ng`` lose and gain."""
    before, after = old.policy.groups[og], new.policy.groups[ng]
    label = _label(old.policy, new.policy, og, ng)
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
    yield from _joined(new.policy, before, after, label)
    yield from _leaks(old, new, og, ng, label, lost)


def _joined(new: Policy, before: Group, after: Group, label: str) -> Iterator[Change]:
    """Clients moved into a group that an exemption names now have what it lifts: the exemption was signed for
    the group's members, not for the clients someone later moves into it."""
    if before.name == after.name:
        return
    for e in new.exemptions:
        if after.name in e.groups and before.name not in e.groups:
            for pid in sorted(e.platforms & before.block & after.block):
                yield Change("platform", pid, label, "allowed", f"lifted by exemption {e.reference} of group "
                             f"{after.name}, which these clients joined", True, pid)


def _leaks(old: Side, new: Side, og: int, ng: int, label: str, reported: frozenset[str]) -> Iterator[Change]:
    """Names the old group blocked and the new one lets through although their platform is still blocked: an
    allow entry now covers them, or the domain left the platform file. The probes are every old platform domain,
    and what the new policy may let through: every allow entry and every platform domain (an always-allowed
    platform may list a banned name), each with a name below it."""
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
    allows = [*spec.allow_domains, *(d for g in spec.groups for d in g.allow_domains), *new.allow_names,
              *(d for p in new.policy.platforms.values() for d in p.domains)]
    for name in dict.fromkeys(allows):
        for probe, what in ((name, "blocked before"), (f"{PROBE_LABEL}.{name}", "names below it blocked before")):
            if old.blocks(probe, og) and not new.blocks(probe, ng) and _owner(old, probe, og) not in reported:
                yield Change("domain", name, label, "allowed", f"{what}, now allowed by {_decider(new, probe, ng)}",
                             True)
                break


def _owner(side: Side, name: str, group: int) -> str | None:
    """The platform whose block decided ``name``: a platform no longer blocked is reported once, as a platform."""
    verdict = side.policy.lookup(name.encode("ascii").split(b"."), group)
    rule = None if verdict is None else verdict.rule
    return None if rule is None or rule.platform is None else rule.platform.id


def _decider(side: Side, name: str, group: int) -> str:
    verdict = side.policy.lookup(name.encode("ascii").split(b"."), group)
    if verdict is None or verdict.rule is None:
        return "no rule (nothing blocks it)"
    return verdict.rule.source if verdict.action == ALLOW else verdict.reason


def _state(group: Group, pid: str) -> str:
    return "allowed" if pid in group.allow else "only monitored" if pid in group.monitor else "not in its block list"


def _shrunk(old: Side, new: Side, limits: Limits, pairs: list[tuple[int, int]]) -> Iterator[Change]:
    """Platforms and lists that are still there but much smaller: a truncated download or a file cut short.
    ``seen_by`` names the groups whose clients see the cut, so an approval for one group cannot cover it for all."""
    blocked = frozenset().union(*(g.block for g in old.policy.groups))
    for pid in sorted(blocked & set(new.policy.platforms)):
        before, after = len(old.policy.platforms[pid].domains), len(new.policy.platforms[pid].domains)
        if after < before * (1 - limits.platform_shrink):
            seen = _seen(old, new, pairs, "platform", pid)
            yield Change("platform", pid, "", "allowed", f"domains {before} -> {after} ({_share(before, after)}, "
                         f"more than the {limits.platform_shrink:.0%} allowed)", True, pid, seen_by=seen)
    for name in sorted(set(old.blocking) & set(new.blocking)):
        before, after = old.blocking[name], new.blocking[name]
        if before and after < before * (1 - limits.list_shrink):
            how = "emptied" if not after else f"more than the {limits.list_shrink:.0%} allowed"
            seen = _seen(old, new, pairs, "list", name)
            yield Change("list", name, "", "allowed", f"blocking entries {before} -> {after} "
                         f"({_share(before, after)}, {how})", True, seen_by=seen)


def _seen(old: Side, new: Side, pairs: list[tuple[int, int]], kind: str, subject: str) -> frozenset[str]:
    """The groups (as ``_groups`` labels them) whose clients a platform or list blocked, and still does."""
    def sees(before: Group, after: Group) -> bool:
        if kind == "platform":
            return subject in before.block and subject in after.block
        return subject in old.applied(before) and subject in new.applied(after)
    return frozenset(_label(old.policy, new.policy, og, ng) for og, ng in pairs
                     if sees(old.policy.groups[og], new.policy.groups[ng]))


def _unchecked(new: Side) -> Iterator[Change]:
    """An allow list too long to keep every name of cannot be checked name by name, so it is a reduction until
    someone approves the list itself (fail closed: the name past the limit may be the banned one)."""
    for name, count in sorted(new.unchecked.items()):
        if count:
            yield Change("list", name, "", "allowed", f"allow list too long to check: {count} allow entries past "
                         "the ones kept to compare with the blocks; approve the list to take it", True)


def _share(before: int, after: int) -> str:
    return f"{(after - before) / before:+.0%}"


def _bypass(old: Side, new: Side) -> Iterator[Change]:
    for switch in BYPASS_SWITCHES:
        was, now = getattr(old.policy.spec.bypass, switch), getattr(new.policy.spec.bypass, switch)
        if was != now:
            yield Change("bypass", switch, "", "blocked" if now else "allowed",
                         "defence turned " + ("on" if now else "off"), not now)
