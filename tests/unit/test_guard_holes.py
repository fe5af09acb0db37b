"""Holes a red team found in the reduction check (``resolver.core.guard``, ``resolver.core.scope``), each shut:
an exemption for everyone hidden under another's reference (F2), allow entries the check did not look at (F3),
a sinkhole pointed at an address of choice (F4), and an approval for one group that covered a cut for all (F5).
The served consequences are in tests/integration/test_guard_holes.py."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from resolver.config.loader import load_config
from resolver.core.builder import build_policy
from resolver.core.guard import Approval, Limits, Side, compare, unapproved
from resolver.core.policy import (
    Bypass,
    Exemption,
    GroupSpec,
    IPNetwork,
    ListInput,
    Platform,
    Policy,
    PolicySpec,
    SinkholeSpec,
)
from resolver.core.scope import Change, everyone
from resolver.core.trie import Match
from resolver.errors import ConfigError
from tests.unit.test_guard import FACEBOOK, LATER, MAPS, NOW, PLATFORMS, TIKTOK, approval, platform, reductions, side

CATEGORIES = {"tiktok": "social", "facebook": "social", "maps": "maps"}


def policy(*, groups: tuple[GroupSpec, ...] | None = None, exemptions: tuple[Exemption, ...] = (),
           sinkhole: SinkholeSpec | None = None, platforms: list[Platform] | None = None,
           lists: list[ListInput] | None = None) -> Policy:
    spec = PolicySpec(groups=groups or (GroupSpec("default", ("social",)),), exemptions=exemptions,
                      bypass=Bypass(doh_servers=False), sinkhole=sinkhole or SinkholeSpec())
    return build_policy(platforms or PLATFORMS, lists or [], spec)


def exemption(reference: str = "EX-1", *, clients: frozenset[str] = frozenset({"10.0.0.5"}),
              networks: tuple[IPNetwork, ...] = (), groups: frozenset[str] = frozenset()) -> Exemption:
    return Exemption(frozenset({"tiktok"}), "CISO", "comms account", reference, NOW, LATER, clients, networks, groups)


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


# --- F2: exemptions ---------------------------------------------------------------------------------------------


def test_two_exemptions_with_one_reference_are_refused_at_load(tmp_path: Path) -> None:
    record = ("{platforms: [tiktok], clients: [10.0.0.5], approved_by: CISO, reason: r, reference: SEC-1, "
              "starts: 2026-11-01T00:00:00Z, expires: 2026-12-01T00:00:00Z}")
    config = tmp_path / "resolver.yaml"
    config.write_text(f"policy:\n  exemptions:\n    - {record}\n    - {record.replace('10.0.0.5', '10.0.0.6')}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    message = str(refused.value)
    assert "\n" not in message and "policy.exemptions[1].reference" in message, message
    assert "'SEC-1' is already the reference of policy.exemptions[0]" in message, message


def test_an_exemption_for_everyone_under_a_reused_reference_is_seen_and_needs_an_approval() -> None:
    """The F2 attack through the pure functions: an exemption keyed by its reference hid behind the first."""
    comms = exemption("SEC-EX-2026-041", clients=frozenset(), groups=frozenset({"comms"}))
    groups = (GroupSpec("default", ("social",)), GroupSpec("comms", ("social",), networks=(net("10.20.8.0/24"),)))
    everybody = Exemption(frozenset({"tiktok", "facebook"}), "x", "y", "SEC-EX-2026-041", NOW, LATER,
                          networks=(net("0.0.0.0/0"), net("::/0")))
    old = Side(policy(groups=groups, exemptions=(comms,)))
    new = Side(policy(groups=groups, exemptions=(comms, everybody)))
    changes = compare(old, new)
    assert [(c.kind, c.subject, c.effect, c.reduction) for c in changes] == [
        ("exemption", "SEC-EX-2026-041", "added", True)]
    assert "for everyone (networks wider than a /8)" in changes[0].detail, changes[0].detail
    assert unapproved(changes, [], NOW, CATEGORIES) == changes
    only_tiktok = approval(platforms=frozenset({"tiktok"}))
    assert unapproved(changes, [only_tiktok], NOW, CATEGORIES) == changes, "facebook is lifted too"
    assert unapproved(changes, [approval(platforms=frozenset({"social"}))], NOW, CATEGORIES) == []
    scoped = replace(approval(platforms=frozenset({"social"})), groups=frozenset({"comms"}))
    assert unapproved(changes, [scoped], NOW, CATEGORIES) == changes, "it is not for the comms team alone"


def test_an_exemption_widened_in_place_is_a_change_and_for_everyone_a_reduction() -> None:
    narrow = exemption()
    wider = replace(narrow, clients=frozenset(), networks=(net("10.20.0.0/16"),))
    everybody = replace(narrow, clients=frozenset(), groups=frozenset({"default"}))
    old = Side(policy(exemptions=(narrow,)))
    assert [(c.effect, c.reduction) for c in compare(old, Side(policy(exemptions=(wider,))))] == [("changed", False)]
    changes = compare(old, Side(policy(exemptions=(everybody,))))
    assert [(c.effect, c.reduction) for c in changes] == [("changed", True)]
    assert "for everyone (group default)" in changes[0].detail


def test_an_exemption_moved_in_the_file_is_no_change() -> None:
    e = exemption()
    assert compare(Side(policy(exemptions=(e,))), Side(policy(exemptions=(replace(e, where="elsewhere"),)))) == []


@pytest.mark.parametrize(("networks", "broad"), [
    (("10.0.0.0/8",), False),
    (("10.0.0.0/7",), True),
    (("10.0.0.0/8", "11.0.0.0/8"), True),  # side by side, no one of them wide: together wider than a /8
    (("10.0.0.0/8", "10.0.0.0/9"), False),  # overlapping: counted once
    (("2001:db8::/32",), False),
    (("2000::/31",), True),
])
def test_what_counts_as_everyone(networks: tuple[str, ...], broad: bool) -> None:
    e = exemption(clients=frozenset(), networks=tuple(net(n) for n in networks))
    assert bool(everyone(e, "default")) is broad


def test_clients_moved_into_a_group_with_an_exemption_gain_what_it_lifts() -> None:
    """The exemption is unchanged, and signed for the group's members; the clients moved in are not."""
    comms_e = exemption(clients=frozenset(), groups=frozenset({"comms"}))
    before = (GroupSpec("default", ("social",)), GroupSpec("comms", ("social",), networks=(net("10.20.8.0/24"),)))
    after = (GroupSpec("default", ("social",)),
             GroupSpec("comms", ("social",), networks=(net("10.20.8.0/24"), net("10.0.0.0/8"))))
    found = reductions(Side(policy(groups=before, exemptions=(comms_e,))),
                       Side(policy(groups=after, exemptions=(comms_e,))))
    assert found == ["platform tiktok for group comms (clients of default): lifted by exemption EX-1 of group comms, "
                     "which these clients joined"]


# --- F3: what the allow side may let through ---------------------------------------------------------------------


def allow_list(name: str, *entries: tuple[str, Match]) -> ListInput:
    return ListInput(f"/l/{name}.txt", [(domain, match, "allow") for domain, match in entries], name)


def test_a_wildcard_allow_entry_over_a_blocked_platform() -> None:
    """``*.tiktok.com`` lets www.tiktok.com through though tiktok.com itself stays blocked."""
    new = Side(policy(lists=[allow_list("partners", ("tiktok.com", "below"))]), {"partners": 0}, ("tiktok.com",))
    assert reductions(side(policy()), new) == [
        "domain tiktok.com for group default: names below it blocked before, now allowed by /l/partners.txt"]


def test_an_allow_list_longer_than_what_is_kept_is_a_reduction_until_approved() -> None:
    new = Side(policy(), {"partners": 0}, ("ok.example",), unchecked={"partners": 1})
    changes = [c for c in compare(side(policy()), new) if c.reduction]
    assert [c.text() for c in changes] == [
        "list partners: allow list too long to check: 1 allow entries past the ones kept to compare with the "
        "blocks; approve the list to take it"]
    assert unapproved(changes, [approval(lists=frozenset({"partners"}))], NOW, {}) == []


def test_a_new_always_allowed_platform_that_lists_a_banned_name() -> None:
    decoy = platform("force-maps", "transport", "www.tiktok.com")  # (not "maps": that is MAPS's id here)
    new = Side(policy(platforms=[*PLATFORMS, decoy]))
    assert reductions(side(policy()), new) == [
        "domain www.tiktok.com for group default: blocked before, now allowed by /lists/force-maps.yaml"]


def test_an_always_allowed_platform_that_adds_a_banned_name() -> None:
    grown = replace(MAPS, domains=(*MAPS.domains, "tiktokv.com"))
    assert reductions(side(policy()), Side(policy(platforms=[TIKTOK, FACEBOOK, grown]))) == [
        "domain tiktokv.com for group default: tiktok domain now allowed by /lists/maps.yaml"]


@pytest.mark.parametrize(("lax", "strict", "probe"), [
    ("127.0.0.0/8", "127.0.0.0/9", "127.128.0.1"),
    ("fd00::/16", "fd00::/17", "fd00:8000::1"),
])
def test_a_network_half_shadowed_by_a_stricter_one(lax: str, strict: str, probe: str) -> None:
    groups = (GroupSpec("default", ("social",)), GroupSpec("strict-half", ("social",), networks=(net(strict),)),
              GroupSpec("lax", ("facebook",), networks=(net(lax),)))
    new = policy(groups=groups)
    assert new.groups[new.group_of(probe)].name == "lax", "the upper half is the lax group's"
    assert reductions(side(policy()), Side(new)) == [
        "platform tiktok for group lax (clients of default): no longer blocked: not in its block list"]


# --- F4: the sinkhole -------------------------------------------------------------------------------------------


def test_a_sinkhole_pointed_at_a_new_address_is_a_reduction_until_approved() -> None:
    address = SinkholeSpec("address", ("203.0.113.7",), ("2001:db8::7",))
    changes = compare(side(policy()), side(policy(sinkhole=address)))
    assert [(c.kind, c.subject, c.reduction) for c in changes] == [
        ("sinkhole", "203.0.113.7", True), ("sinkhole", "2001:db8::7", True)]
    assert changes[0].detail == ("blocked names answered with 203.0.113.7: mode null, ttl 10 -> "
                                 "mode address 203.0.113.7, 2001:db8::7, ttl 10")
    assert unapproved(changes, [approval(sinkhole=frozenset({"203.0.113.7"}))], NOW, {}) == changes[1:]
    both = approval(sinkhole=frozenset({"203.0.113.7", "2001:db8::7"}))
    assert unapproved(changes, [both], NOW, {}) == []


@pytest.mark.parametrize("after", [SinkholeSpec("refused"), SinkholeSpec("nxdomain"), SinkholeSpec(ttl=60),
                                   SinkholeSpec("address", ("127.0.0.1",))])
def test_a_sinkhole_that_answers_with_nothing_new_is_a_change_but_no_reduction(after: SinkholeSpec) -> None:
    changes = compare(side(policy()), side(policy(sinkhole=after)))
    assert [(c.kind, c.effect, c.reduction) for c in changes] == [("sinkhole", "changed", False)]


def test_a_sinkhole_address_kept_is_no_reduction() -> None:
    page = SinkholeSpec("address", ("192.0.2.80",))
    assert [c.reduction for c in compare(side(policy(sinkhole=page)), side(policy(sinkhole=replace(page, ttl=5))))] \
        == [False]


# --- F5: approvals for some groups -------------------------------------------------------------------------------


def cut(groups: tuple[GroupSpec, ...]) -> list[Change]:
    before = {"force": [f"n{i}.example" for i in range(10)]}
    after = {"force": ["n0.example"]}

    def build(lists: dict[str, list[str]]) -> Side:
        inputs = [ListInput(f"/l/{n}.txt", [(d, "subtree", "block") for d in names], n) for n, names in lists.items()]
        return side(policy(groups=groups, lists=inputs), lists)

    return [c for c in compare(build(before), build(after), Limits()) if c.reduction]


def test_an_approval_for_one_group_does_not_cover_a_list_cut_for_every_group() -> None:
    groups = (GroupSpec("default", ("social", "force")),
              GroupSpec("comms", ("social",), networks=(net("10.9.0.0/24"),)))
    changes = cut(groups)
    assert [c.text() for c in changes] == [
        "list force: blocking entries 10 -> 1 (-90%, more than the 50% allowed)"]
    scoped = replace(approval(lists=frozenset({"force"})), groups=frozenset({"comms"}))
    assert unapproved(changes, [scoped], NOW, {}) == changes
    everyone_sees_it = replace(scoped, groups=frozenset({"comms", "default"}))
    assert unapproved(changes, [everyone_sees_it], NOW, {}) == []


def test_an_approval_for_the_only_group_that_applies_a_list_covers_its_cut() -> None:
    groups = (GroupSpec("default", ("social",), allow=("force",)),
              GroupSpec("comms", ("social",), networks=(net("10.9.0.0/24"),)))
    changes = cut(groups)
    scoped = replace(approval(lists=frozenset({"force"})), groups=frozenset({"comms"}))
    assert changes and unapproved(changes, [scoped], NOW, {}) == []


def test_an_approval_for_one_group_does_not_cover_a_change_for_every_client() -> None:
    off = compare(side(policy()), Side(build_policy(PLATFORMS, [], PolicySpec(
        groups=(GroupSpec("default", ("social",)),), bypass=Bypass(doh_servers=False, ddr=False)))))
    scoped = Approval("CISO", "r", "CHG-2", LATER, bypass=frozenset({"ddr"}), groups=frozenset({"default"}))
    assert [c.subject for c in unapproved(off, [scoped], NOW, {})] == ["ddr"]
    assert unapproved(off, [replace(scoped, groups=frozenset())], NOW, {}) == []
