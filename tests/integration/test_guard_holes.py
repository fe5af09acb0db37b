"""The red team's unblocks without an approval, each tried through the real CLI or a real reload: an exemption for
everyone (F2), allow entries the review did not look at (F3), the sinkhole pointed at an address of choice (F4)
and an approval for one group stretched to all (F5). Each is now seen and refused until approved; the pure
functions are tested in tests/unit/test_guard_holes.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.integration.test_guard import TIKTOK, audit_records, blocklists_copy, reload_and_expect, sinkholed
from tests.support.approvals import approval
from tests.support.resolverproc import ResolverFactory, addresses, run_cli, write_config

BASE: dict[str, Any] = {"block": ["social", "messaging"], "groups": {
    "comms": {"networks": ["10.20.8.0/24"], "block": ["social", "messaging"]}},
    "exemptions": [{"platforms": ["tiktok"], "groups": ["comms"], "approved_by": "DSO", "reason": "force account",
                    "reference": "SEC-EX-2026-041", "starts": "2026-11-01T00:00:00Z",
                    "expires": "2027-01-29T00:00:00Z"}]}
EVERYONE = {"platforms": ["social", "messaging"], "networks": ["0.0.0.0/0", "::/0"], "approved_by": "x",
            "reason": "y", "reference": "SEC-EX-2026-099", "starts": "2026-12-01T00:00:00Z",
            "expires": "2027-02-28T00:00:00Z"}
SINK = "203.0.113.7"


def diff(tmp_path: Path, new_policy: dict[str, Any], old_policy: dict[str, Any] | None = None,
         **new_top: Any) -> subprocess.CompletedProcess[str]:
    old = write_config(tmp_path / "old.yaml", {"policy": old_policy or BASE})
    new = write_config(tmp_path / "new.yaml", {**new_top, "policy": new_policy})
    return run_cli("diff", str(old), str(new), timeout=120)


def with_exemption(*extra: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**BASE, "exemptions": [*BASE["exemptions"], *extra], **more}


# --- F2 -----------------------------------------------------------------------------------------------------------


def test_check_refuses_two_exemptions_under_one_reference(tmp_path: Path) -> None:
    config = write_config(tmp_path / "dup.yaml", {"policy": with_exemption(
        {**EVERYONE, "reference": "SEC-EX-2026-041"})})
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 2 and checked.stderr.count("\n") == 1, checked
    assert checked.stderr.startswith(f"error: {config}: policy.exemptions[1].reference: 'SEC-EX-2026-041' is "
                                     "already the reference of policy.exemptions[0]"), checked.stderr


def test_diff_shows_an_exemption_for_everyone_and_gates_on_it(tmp_path: Path) -> None:
    result = diff(tmp_path, with_exemption(EVERYONE))
    assert result.returncode == 1, result
    assert "exemptions:\n  added SEC-EX-2026-099: " in result.stdout, result.stdout
    assert "for everyone (networks wider than a /8): needs an approval for its platforms  " \
           "[reduction: NOT APPROVED]" in result.stdout, result.stdout
    approved = diff(tmp_path, with_exemption(EVERYONE, approved_changes=[
        approval(platforms=["social", "messaging"])]))
    assert approved.returncode == 0 and "[reduction: approved]" in approved.stdout, approved
    narrow = diff(tmp_path, with_exemption({**EVERYONE, "networks": ["10.20.12.0/24"]}))
    assert narrow.returncode == 0 and "added SEC-EX-2026-099: " in narrow.stdout, narrow


def test_a_reload_with_an_exemption_for_everyone_is_refused_and_audited(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory({"policy": BASE})
    assert server.config_path is not None and sinkholed(server, TIKTOK)
    write_config(server.config_path, {"policy": with_exemption(EVERYONE)})
    line = reload_and_expect(server, "reload refused", 1)
    assert "exemption SEC-EX-2026-099: " in line and "for everyone (networks wider than a /8)" in line, line
    assert sinkholed(server, TIKTOK)
    record = audit_records(server)[-1]
    assert record["result"] == "refused" and record["summary"]["exemption_changes"] == 1, record


# --- F3 -----------------------------------------------------------------------------------------------------------


def test_diff_refuses_a_wildcard_allow_list_over_a_banned_platform(tmp_path: Path) -> None:
    allow = tmp_path / "allow-wild.txt"
    allow.write_text("*.tiktok.com\n*.partner.example\n")
    result = diff(tmp_path, {**BASE, "lists": [{"path": str(allow), "name": "partners", "format": "wildcard",
                                                "allowlist": True}]})
    assert result.returncode == 1, result
    assert "domain tiktok.com: names below it blocked before, now allowed by" in result.stdout, result.stdout


def test_diff_refuses_an_allow_list_too_long_to_check_until_the_list_is_approved(tmp_path: Path) -> None:
    allow = tmp_path / "allow-big.txt"
    allow.write_text("".join(f"p{i}.partner.example\n" for i in range(100_000)) + f"{TIKTOK}\n")
    new = {**BASE, "lists": [{"path": str(allow), "name": "partners", "format": "domains", "allowlist": True}]}
    result = diff(tmp_path, new)
    assert result.returncode == 1, result
    assert "list partners: allow list too long to check: 1 allow entries past" in result.stdout, result.stdout
    assert diff(tmp_path, {**new, "approved_changes": [approval(lists=["partners"])]}).returncode == 0


def test_diff_refuses_a_new_always_allowed_platform_that_lists_a_banned_name(tmp_path: Path) -> None:
    directory = blocklists_copy(tmp_path)
    (directory / "force-maps.yaml").write_text(yaml.safe_dump(
        {"name": "Force maps", "category": "maps", "owner": "Example", "domains": [TIKTOK], "sources": ["x"]}))
    result = diff(tmp_path, {**BASE, "blocklists_dir": str(directory)})
    assert result.returncode == 1, result
    assert f"domain {TIKTOK}: blocked before, now allowed by {directory / 'force-maps.yaml'}" in result.stdout, \
        result.stdout


def test_diff_refuses_a_lax_group_half_shadowed_by_a_strict_one(tmp_path: Path) -> None:
    groups = {**BASE["groups"], "strict-half": {"networks": ["127.0.0.0/9"], "block": ["social", "messaging"]},
              "lax": {"networks": ["127.0.0.0/8"], "block": ["messaging"]}}
    result = diff(tmp_path, {**BASE, "groups": groups})
    assert result.returncode == 1, result
    lax = result.stdout.split("group lax (clients of default):\n  becomes allowed:\n")[1].split("result:")[0]
    assert "    platform tiktok: no longer blocked: not in its block list  [reduction: NOT APPROVED]\n" in lax, \
        result.stdout


# --- F4 -----------------------------------------------------------------------------------------------------------


def test_a_sinkhole_pointed_elsewhere_is_refused_until_approved(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory({"policy": BASE})
    assert server.config_path is not None and sinkholed(server, TIKTOK)
    moved: dict[str, Any] = {"sinkhole": {"mode": "address", "ipv4": [SINK]}, "policy": BASE}
    write_config(server.config_path, moved)
    line = reload_and_expect(server, "reload refused", 1)
    assert f"sinkhole {SINK}: blocked names answered with {SINK}" in line, line
    assert sinkholed(server, TIKTOK)
    assert audit_records(server)[-1]["summary"]["sinkhole_changes"] == 1

    write_config(server.config_path, {**moved, "policy": {**BASE, "approved_changes": [approval(sinkhole=[SINK])]}})
    reload_and_expect(server, "policy reloaded", 1)
    assert addresses(server.query(TIKTOK, "A"), "A") == [SINK]
    accepted = audit_records(server)[-1]
    assert accepted["result"] == "accepted" and accepted["summary"]["sinkhole_changes"] == 1, accepted


def test_a_sinkhole_that_refuses_is_reported_but_needs_no_approval(resolver_factory: ResolverFactory,
                                                                   tmp_path: Path) -> None:
    server = resolver_factory({"policy": BASE})
    assert server.config_path is not None
    write_config(server.config_path, {"sinkhole": {"mode": "refused"}, "policy": BASE})
    reload_and_expect(server, "policy reloaded", 1)
    record = audit_records(server)[-1]
    assert record["result"] == "accepted" and record["summary"]["sinkhole_changes"] == 1, record
    result = diff(tmp_path, BASE, sinkhole={"mode": "refused"})
    assert result.returncode == 0, result
    assert "every group concerned:\n  changed:\n    sinkhole sinkhole: mode null, ttl 10 -> mode refused, ttl 10\n" \
        in result.stdout, result.stdout


# --- F5 -----------------------------------------------------------------------------------------------------------


def test_an_approval_for_one_group_does_not_let_a_list_be_cut_for_all(tmp_path: Path) -> None:
    full, cut = tmp_path / "force.txt", tmp_path / "force-cut.txt"
    full.write_text("".join(f"h{i}.blocked.example\n" for i in range(1000)))
    cut.write_text("h0.blocked.example\n")
    old = {**BASE, "lists": [{"path": str(full), "name": "force"}]}
    scoped = approval(lists=["force"], groups=["comms"])
    result = diff(tmp_path, {**BASE, "lists": [{"path": str(cut), "name": "force"}], "approved_changes": [scoped]},
                  old)
    assert result.returncode == 1, result
    assert "list force: blocking entries 1000 -> 1" in result.stdout and "NOT APPROVED" in result.stdout, \
        result.stdout
