"""The reduction check (``resolver.core.guard``) on built policies: what counts as unblocking, for whom, and what
an approval covers. Real policies from ``build_policy``; the served consequences are in
tests/integration/test_guard.py."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from resolver.core.builder import build_policy
from resolver.core.guard import Approval, Change, Limits, Side, compare, missing_required, unapproved
from resolver.core.policy import Bypass, Exemption, GroupSpec, ListInput, Platform, Policy, PolicySpec

NOW = 1_800_000_000.0
LATER = NOW + 86400


def platform(pid: str, category: str, *domains: str) -> Platform:
    return Platform(pid, pid.title(), category, "Owner", domains, f"/lists/{pid}.yaml")


TIKTOK = platform("tiktok", "social", "tiktok.com", "tiktokv.com", "tiktokcdn.com", "musical.ly", "byteoversea.com",
                  "ibytedtos.com", "tiktokcdn-us.com", "tik-tokapi.com", "tiktokw.us", "ttwstatic.com")
FACEBOOK = platform("facebook", "social", "facebook.com", "fbcdn.net")
MAPS = platform("maps", "maps", "maps.example")
PLATFORMS = [TIKTOK, FACEBOOK, MAPS]


def build(*, platforms: list[Platform] | None = None, groups: tuple[GroupSpec, ...] | None = None,
          allow_domains: tuple[str, ...] = (), lists: dict[str, list[str]] | None = None,
          bypass: Bypass | None = None, exemptions: tuple[Exemption, ...] = ()) -> Policy:
    spec = PolicySpec(groups=groups or (GroupSpec("default", ("social",)),), allow_domains=allow_domains,
                      bypass=bypass or Bypass(doh_servers=False), exemptions=exemptions)
    inputs = [ListInput(f"/l/{name}.txt", [(d.lstrip("@"), "subtree", "allow" if d.startswith("@") else "block")
                                           for d in names], name)
              for name, names in (lists or {}).items()]
    return build_policy(platforms or PLATFORMS, inputs, spec)


def side(policy: Policy, lists: dict[str, list[str]] | None = None) -> Side:
    lists = lists or {}
    return Side(policy, {n: sum(not d.startswith("@") for d in names) for n, names in lists.items()},
                tuple(d.lstrip("@") for names in lists.values() for d in names if d.startswith("@")))


def reductions(old: Side, new: Side, limits: Limits | None = None) -> list[str]:
    return sorted(c.text() for c in compare(old, new, limits or Limits()) if c.reduction)


def approval(**kinds: frozenset[str]) -> Approval:
    return Approval("J. Smith (CISO)", "comms pilot", "CHG-1", LATER, **kinds)


def test_no_change_is_no_reduction() -> None:
    assert compare(side(build()), side(build())) == []


def test_a_removed_platform_is_a_reduction_for_each_group_that_blocked_it() -> None:
    groups = (GroupSpec("default", ("social",)), GroupSpec("ops", ("social",), networks=(_net("10.1.0.0/16"),)))
    old = side(build(groups=groups))
    new = side(build(groups=groups, platforms=[FACEBOOK, MAPS]))
    assert reductions(old, new) == [
        "platform tiktok for group default: no longer blocked: platform removed",
        "platform tiktok for group ops: no longer blocked: platform removed",
    ]


def test_a_platform_moved_to_monitor_or_allow_is_a_reduction() -> None:
    old = side(build())
    monitored = side(build(groups=(GroupSpec("default", ("facebook",), monitor=("tiktok",)),)))
    allowed = side(build(groups=(GroupSpec("default", ("social",), allow=("tiktok",)),)))
    assert reductions(old, monitored) == ["platform tiktok for group default: no longer blocked: only monitored"]
    assert reductions(old, allowed) == ["platform tiktok for group default: no longer blocked: allowed"]


def test_a_category_typo_drops_the_platform_out_of_the_block() -> None:
    typo = replace(TIKTOK, category="socail")
    new = side(build(platforms=[typo, FACEBOOK, MAPS]))
    assert reductions(side(build()), new) == [
        "platform tiktok for group default: no longer blocked: not in its block list"]


def test_a_platform_that_lost_more_than_the_limit_of_its_domains() -> None:
    fewer = replace(TIKTOK, domains=TIKTOK.domains[:8])  # 10 -> 8: -20%
    old, new = side(build()), side(build(platforms=[fewer, FACEBOOK, MAPS]))
    gone = [f"domain {d} for group default: tiktok domain removed from the platform" for d in TIKTOK.domains[8:]]
    assert reductions(old, new) == sorted([*gone, "platform tiktok: domains 10 -> 8 (-20%, more than the 10% allowed)"])
    assert reductions(old, new, Limits(platform_shrink=0.25)) == sorted(gone), "the domains are still named"


def test_every_domain_taken_out_of_a_platform_is_a_reduction_of_its_own() -> None:
    """Within the shrink limit or not: one domain gone unblocks as surely as an allow entry over it (a platform
    file losing its API domain would otherwise pass as "no change")."""
    nine = side(build(platforms=[replace(TIKTOK, domains=TIKTOK.domains[:9]), FACEBOOK, MAPS]))
    assert reductions(side(build()), nine) == [
        f"domain {TIKTOK.domains[9]} for group default: tiktok domain removed from the platform"]
    # A subdomain taken out while its parent stays listed is still blocked: nothing to approve.
    listed = replace(TIKTOK, domains=(*TIKTOK.domains, "api.tiktok.com"))
    assert reductions(side(build(platforms=[listed, FACEBOOK, MAPS])), side(build())) == []


def test_a_change_is_judged_by_the_stricter_of_the_two_limits() -> None:
    assert Limits(0.5, 0.9).stricter(Limits(0.1, 0.95)) == Limits(0.1, 0.9)


def test_an_allow_entry_over_a_platform_domain_is_a_reduction() -> None:
    new = side(build(allow_domains=("tiktok.com",)))
    changes = [c for c in compare(side(build()), new) if c.reduction]
    assert [c.text() for c in changes] == [
        "domain tiktok.com for group default: tiktok domain now allowed by policy.allow_domains"]
    assert changes[0].platform == "tiktok"


def test_an_allow_entry_below_a_platform_domain_is_a_reduction_too() -> None:
    new = side(build(allow_domains=("www.tiktok.com",)))
    assert reductions(side(build()), new) == [
        "domain www.tiktok.com for group default: blocked before, now allowed by policy.allow_domains"]


def test_an_allow_entry_in_an_allow_list_over_a_list_blocked_name() -> None:
    old_lists = {"ads": ["ads.example", "tracker.example"]}
    new_lists = {"ads": ["ads.example", "tracker.example"], "ok": ["@tracker.example"]}
    old, new = side(build(lists=old_lists), old_lists), side(build(lists=new_lists), new_lists)
    assert reductions(old, new) == [
        "domain tracker.example for group default: blocked before, now allowed by /l/ok.txt"]


@pytest.mark.parametrize(("after", "how"), [
    ({}, "no longer blocks: list removed"),
    ({"ads": []}, "no longer blocks: emptied"),
])
def test_a_list_removed_or_emptied(after: dict[str, list[str]], how: str) -> None:
    before = {"ads": ["a.example", "b.example"]}
    found = reductions(side(build(lists=before), before), side(build(lists=after), after))
    assert f"list ads for group default: {how}" in found, found


def test_a_list_shrunk_by_more_than_half() -> None:
    before = {"ads": [f"n{i}.example" for i in range(10)]}
    half = {"ads": before["ads"][:5]}
    less = {"ads": before["ads"][:4]}
    old = side(build(lists=before), before)
    assert reductions(old, side(build(lists=half), half)) == []
    assert reductions(old, side(build(lists=less), less)) == [
        "list ads: blocking entries 10 -> 4 (-60%, more than the 50% allowed)"]


def test_a_new_group_that_allows_a_platform_for_some_clients_is_a_reduction() -> None:
    comms = GroupSpec("comms", ("social",), allow=("tiktok",), networks=(_net("10.9.0.0/24"),))
    new = side(build(groups=(GroupSpec("default", ("social",)), comms)))
    assert reductions(side(build()), new) == [
        "platform tiktok for group comms (clients of default): no longer blocked: allowed"]


def test_a_network_moved_into_a_laxer_group_is_a_reduction() -> None:
    strict = GroupSpec("ops", ("social",), networks=(_net("10.1.0.0/16"),))
    lax = GroupSpec("comms", ("facebook",), networks=(_net("10.9.0.0/24"),))
    moved = GroupSpec("comms", ("facebook",), networks=(_net("10.9.0.0/24"), _net("10.1.0.0/16")))
    old = side(build(groups=(GroupSpec("default", ("social",)), strict, lax)))
    new = side(build(groups=(GroupSpec("default", ("social",)), moved)))
    assert reductions(old, new) == [
        "platform tiktok for group comms (clients of ops): no longer blocked: not in its block list"]


def test_turning_a_bypass_defence_off_is_a_reduction() -> None:
    new = side(build(bypass=Bypass(doh_servers=False, private_relay=False)))
    assert reductions(side(build()), new) == ["bypass private_relay: defence turned off"]


def test_more_blocking_is_listed_but_is_no_reduction() -> None:
    new = side(build(groups=(GroupSpec("default", ("social",)),)))
    changes = compare(side(build(groups=(GroupSpec("default", ("facebook",)),))), new)
    assert [(c.text(), c.reduction) for c in changes] == [("platform tiktok for group default: now blocked", False)]


def test_exemptions_added_removed_and_changed_are_listed_not_counted() -> None:
    e = Exemption(frozenset({"tiktok"}), "CISO", "comms account", "EX-1", NOW, LATER, frozenset({"10.0.0.5"}))
    longer = replace(e, expires=LATER + 86400)
    assert [(c.effect, c.subject, c.reduction) for c in compare(side(build()), side(build(exemptions=(e,))))] == [
        ("added", "EX-1", False)]
    assert [c.effect for c in compare(side(build(exemptions=(e,))), side(build()))] == ["removed"]
    assert [c.effect for c in compare(side(build(exemptions=(e,))), side(build(exemptions=(longer,))))] == [
        "changed"]


def test_an_approval_covers_its_platform_category_list_domain_or_bypass_until_it_expires() -> None:
    removed = compare(side(build()), side(build(platforms=[FACEBOOK, MAPS])))
    categories = {"tiktok": "social"}
    assert unapproved(removed, [], NOW, categories) == [c for c in removed if c.reduction]
    assert unapproved(removed, [approval(platforms=frozenset({"tiktok"}))], NOW, categories) == []
    assert unapproved(removed, [approval(platforms=frozenset({"social"}))], NOW, categories) == []
    assert unapproved(removed, [approval(platforms=frozenset({"facebook"}))], NOW, categories) != []
    assert unapproved(removed, [approval(platforms=frozenset({"tiktok"}))], LATER, categories) != [], \
        "an expired approval approves nothing"
    domain = Change("domain", "www.tiktok.com", "default", "allowed", "", True)
    assert unapproved([domain], [approval(domains=frozenset({"tiktok.com"}))], NOW, {}) == []
    assert unapproved([domain], [approval(domains=frozenset({"ok.tiktok.com"}))], NOW, {}) == [domain]
    listed = Change("list", "ads", "", "allowed", "", True)
    assert unapproved([listed], [approval(lists=frozenset({"ads"}))], NOW, {}) == []
    switch = Change("bypass", "ddr", "", "allowed", "", True)
    assert unapproved([switch], [approval(bypass=frozenset({"ddr"}))], NOW, {}) == []


def test_an_approval_for_some_groups_covers_only_those() -> None:
    change = Change("platform", "tiktok", "ops", "allowed", "", True, "tiktok")
    only_comms = replace(approval(platforms=frozenset({"tiktok"})), groups=frozenset({"comms"}))
    assert unapproved([change], [only_comms], NOW, {}) == [change]
    assert unapproved([replace(change, group="comms")], [only_comms], NOW, {}) == []


def test_the_mandatory_set() -> None:
    assert missing_required(build(), ["tiktok", "social"]) == []
    assert missing_required(build(), ["maps"]) == [(0, "maps", "the default group does not block maps")]
    assert missing_required(build(), ["snapchat"]) == [(0, "snapchat", "no such platform or category")]
    assert missing_required(build(allow_domains=("tiktokv.com",)), ["tiktok"]) == [
        (0, "tiktok", "tiktokv.com (tiktok) is not blocked for the default group")]


def _net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)
