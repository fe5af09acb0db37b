"""A ban cannot be lifted by accident: each change that used to unblock a platform silently, tried through a
real reload of a running server, is refused (the name stays blocked, the log names it, an audit record and a
counter show it); the same change with an ``approved_changes`` entry is accepted. Also the mandatory set at
start, ``resolver diff`` and ``serve --check-against``.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.approvals import approval
from tests.support.authserver import AuthServer
from tests.support.blocklists import BLOCKLISTS_DIR
from tests.support.prom import by_labels, parse_samples
from tests.support.resolverproc import (
    ResolverFactory,
    ResolverProcess,
    addresses,
    run_cli,
    wait_for,
    write_config,
)
from tests.support.zone import TIKTOK_V4

TIKTOK = "www.tiktok.com"
LISTED = ("ads.guard.test", "tracker.guard.test", "beacon.guard.test")
LISTED_V4 = "192.0.2.77"


def sinkholed(server: ResolverProcess, name: str) -> bool:
    return addresses(server.query(name, "A"), "A") == ["0.0.0.0"]


def answers(server: ResolverProcess, name: str, want: str) -> bool:
    return addresses(server.query(name, "A"), "A") == [want]


def audit_records(server: ResolverProcess) -> list[dict[str, Any]]:
    """The audit trail: one JSON record per reload attempt, on the ``resolver.audit`` logger."""
    out = []
    for line in server.stderr_text().splitlines():
        if line.startswith("{") and '"resolver.audit"' in line:
            out.append(json.loads(json.loads(line)["msg"]))
    return out


def refused_reloads(server: ResolverProcess) -> float:
    samples = by_labels(parse_samples(server.metrics_text()), "resolver_reloads_total", "result")
    return samples.get(("refused",), 0.0)


def reload_and_expect(server: ResolverProcess, outcome: str, count: int) -> str:
    """SIGHUP, then wait for the ``count``-th log line of ``outcome`` ("reload refused" or "policy reloaded")."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_stderr_count(outcome, count, timeout=15), server.stderr_text()[-3000:]
    return server.stderr_lines(outcome)[count - 1]


def blocklists_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "blocklists"
    shutil.copytree(BLOCKLISTS_DIR, directory)
    return directory


# --- the five silent unblocks ------------------------------------------------------------------------------------


def test_a_deleted_platform_file_is_refused_until_approved(resolver_factory: ResolverFactory,
                                                           tmp_path: Path) -> None:
    directory = blocklists_copy(tmp_path)
    config: dict[str, Any] = {"policy": {"blocklists_dir": str(directory)}}
    server = resolver_factory(config, metrics=True)
    assert server.config_path is not None and sinkholed(server, TIKTOK)
    (directory / "tiktok.yaml").unlink()  # the watcher notices on its own
    assert server.wait_stderr("reload refused", timeout=15), server.stderr_text()[-3000:]
    line = server.stderr_lines("reload refused")[0]
    assert "platform tiktok for group default: no longer blocked: platform removed" in line, line
    assert sinkholed(server, TIKTOK), "the old policy must keep serving"
    assert refused_reloads(server) >= 1
    record = audit_records(server)[-1]
    assert record["result"] == "refused" and record["new_version"] != record["old_version"], record
    assert {"kind": "platform", "subject": "tiktok", "group": "default", "effect": "allowed",
            "detail": "no longer blocked: platform removed", "reduction": True} in record["changes"], record

    config["policy"]["approved_changes"] = [approval(platforms=["tiktok"])]
    write_config(server.config_path, config)
    reload_and_expect(server, "policy reloaded", 1)
    assert answers(server, TIKTOK, TIKTOK_V4)
    accepted = audit_records(server)[-1]
    assert accepted["result"] == "accepted" and accepted["approvals"][0]["reference"] == "CHG-TEST-1", accepted


def test_a_category_typo_is_refused_and_a_declared_approved_category_is_accepted(
    resolver_factory: ResolverFactory, tmp_path: Path
) -> None:
    directory = blocklists_copy(tmp_path)
    config: dict[str, Any] = {"policy": {"blocklists_dir": str(directory)}}
    server = resolver_factory(config)
    assert server.config_path is not None and sinkholed(server, TIKTOK)
    platform = directory / "tiktok.yaml"
    platform.write_text(platform.read_text().replace("category: social", "category: socail"))
    line = reload_and_expect(server, "reload refused", 1)
    assert "tiktok.yaml:" in line and "socail" in line, line
    assert sinkholed(server, TIKTOK)

    # Declared on purpose, TikTok leaves the blocked category: a reduction, accepted once signed off.
    config["policy"]["categories"] = ["socail"]
    write_config(server.config_path, config)
    line = reload_and_expect(server, "reload refused", 2)
    assert "platform tiktok for group default: no longer blocked" in line, line
    assert sinkholed(server, TIKTOK)
    config["policy"]["approved_changes"] = [approval(platforms=["tiktok"])]
    write_config(server.config_path, config)
    reload_and_expect(server, "policy reloaded", 1)
    assert answers(server, TIKTOK, TIKTOK_V4)


def list_server(factory: ResolverFactory, auth: AuthServer, tmp_path: Path) -> tuple[ResolverProcess, Path,
                                                                                     dict[str, Any]]:
    for name in LISTED:
        auth.add(name, "A", LISTED_V4)
    local = tmp_path / "local.txt"
    local.write_text("".join(f"{name}\n" for name in LISTED))
    config: dict[str, Any] = {"policy": {"lists": [{"path": str(local), "name": "local"}]}}
    server = factory(config)
    assert all(sinkholed(server, name) for name in LISTED)
    return server, local, config


@pytest.mark.parametrize("content", ["", "ads..guard.test\n-bad-.guard test\n!!!\n"], ids=["emptied", "invalid"])
def test_a_local_list_emptied_or_of_invalid_names_is_refused_until_approved(
    resolver_factory: ResolverFactory, auth: AuthServer, tmp_path: Path, content: str
) -> None:
    server, local, config = list_server(resolver_factory, auth, tmp_path)
    assert server.config_path is not None
    local.write_text(content)
    line = reload_and_expect(server, "reload refused", 1)
    assert "list local" in line and "emptied" in line, line
    assert all(sinkholed(server, name) for name in LISTED)
    config["policy"]["approved_changes"] = [approval(lists=["local"])]
    write_config(server.config_path, config)
    reload_and_expect(server, "policy reloaded", 1)
    assert all(answers(server, name, LISTED_V4) for name in LISTED)


def test_an_exception_rule_in_a_third_party_list_unblocks_nothing(resolver_factory: ResolverFactory,
                                                                  tmp_path: Path) -> None:
    third = tmp_path / "third.txt"
    third.write_text("||ads.guard.test^\n")
    config: dict[str, Any] = {"policy": {"lists": [{"path": str(third), "name": "third"}]}}
    server = resolver_factory(config)
    third.write_text("||ads.guard.test^\n@@||tiktok.com^\n")
    reload_and_expect(server, "policy reloaded", 1)  # nothing unblocked: the allow rule is not honoured here
    assert sinkholed(server, TIKTOK)
    checked = run_cli("check", "-c", str(server.config_path))
    assert "allow rule outside an allow list" in checked.stdout, checked.stdout


def test_an_allow_list_over_a_blocked_platform_is_refused_until_approved(resolver_factory: ResolverFactory,
                                                                         tmp_path: Path) -> None:
    server = resolver_factory({"policy": {}})
    assert server.config_path is not None
    allow = tmp_path / "allow.txt"
    allow.write_text("@@||tiktok.com^\n")
    config: dict[str, Any] = {"policy": {"lists": [{"path": str(allow), "name": "ok", "allowlist": True}]}}
    write_config(server.config_path, config)
    line = reload_and_expect(server, "reload refused", 1)
    assert "domain tiktok.com for group default" in line, line
    assert sinkholed(server, TIKTOK)
    checked = run_cli("check", "-c", str(server.config_path))
    assert f"  ok: {allow}  adblock  allow list, 1 entries (0 blocking), 0 lines skipped\n" in checked.stdout, \
        checked.stdout
    config["policy"]["approved_changes"] = [approval(domains=["tiktok.com"])]
    write_config(server.config_path, config)
    reload_and_expect(server, "policy reloaded", 1)
    assert answers(server, TIKTOK, TIKTOK_V4)


# --- the mandatory set, review before deploy ----------------------------------------------------------------------


def test_a_required_platform_missing_stops_the_start_and_check(tmp_path: Path, auth: AuthServer) -> None:
    directory = blocklists_copy(tmp_path)
    (directory / "tiktok.yaml").unlink()
    config = write_config(tmp_path / "required.yaml",
                          {"policy": {"blocklists_dir": str(directory), "required": ["social", "tiktok"]}})
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 2, checked
    assert checked.stderr == f"error: {config}: policy.required[1]: 'tiktok' must be blocked for the default " \
                             "group: no such platform or category\n"
    served = run_cli("serve", "-c", str(config), "--listen", "127.0.0.1:0", "--upstream", auth.address)
    assert served.returncode == 2 and served.stderr.strip().splitlines() == checked.stderr.strip().splitlines()


def diff_configs(tmp_path: Path, new_policy: dict[str, Any]) -> tuple[Path, Path]:
    old = write_config(tmp_path / "old.yaml", {"policy": {"block": ["social", "messaging"]}})
    new = write_config(tmp_path / "new.yaml", {"policy": new_policy})
    return old, new


def test_diff_shows_the_reduction_per_group_and_gates_on_it(tmp_path: Path) -> None:
    old, new = diff_configs(tmp_path, {"block": ["social"], "groups": {
        "comms": {"networks": ["10.9.0.0/24"], "block": ["messaging"]}}})
    result = run_cli("diff", str(old), str(new))
    assert result.returncode == 1, result
    out = result.stdout
    default = out.split("group default:\n  becomes allowed:\n")[1].split("group ")[0]
    whatsapp = "    platform whatsapp: no longer blocked: not in its block list  [reduction: NOT APPROVED]\n"
    assert whatsapp in default, out
    comms = out.split("group comms (clients of default):\n  becomes allowed:\n")[1].split("result:")[0]
    assert "    platform tiktok: no longer blocked: not in its block list  [reduction: NOT APPROVED]\n" in comms, out
    assert "result: " in out and "not approved: NEW must approve them in policy.approved_changes" in out, out

    _, approved = diff_configs(tmp_path, {"block": ["social"], "groups": {
        "comms": {"networks": ["10.9.0.0/24"], "block": ["messaging"]}},
        "approved_changes": [approval(platforms=["messaging", "social"])]})
    result = run_cli("diff", str(old), str(approved))
    assert result.returncode == 0, result
    assert "[reduction: approved]" in result.stdout and "all approved (CHG-TEST-1)" in result.stdout, result.stdout


def test_diff_of_blocklists_directories(tmp_path: Path) -> None:
    new = blocklists_copy(tmp_path)
    (new / "tiktok.yaml").unlink()
    result = run_cli("diff", str(BLOCKLISTS_DIR), str(new))
    assert result.returncode == 1, result
    assert "platform tiktok: no longer blocked: platform removed  [reduction: NOT APPROVED]" in result.stdout
    same = run_cli("diff", str(BLOCKLISTS_DIR), str(BLOCKLISTS_DIR))
    assert same.returncode == 0 and "no change in what any group blocks" in same.stdout, same


def test_diff_with_a_broken_side_is_one_error_line(tmp_path: Path) -> None:
    old, _ = diff_configs(tmp_path, {})
    broken = tmp_path / "broken.yaml"
    broken.write_text("policy:\n  block: [no-such-platform]\n")
    result = run_cli("diff", str(old), str(broken))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no-such-platform" in result.stderr


def test_serve_check_against_refuses_an_unapproved_reduction(tmp_path: Path, auth: AuthServer,
                                                             resolver_factory: ResolverFactory) -> None:
    old, new = diff_configs(tmp_path, {"block": ["social"]})
    refused = run_cli("serve", "-c", str(new), "--check-against", str(old), "--listen", "127.0.0.1:0",
                      "--upstream", auth.address)
    assert refused.returncode == 2, refused
    assert refused.stderr.startswith("error: --check-against: refusing to start against") and \
        "platform whatsapp for group default" in refused.stderr and "Traceback" not in refused.stderr, refused
    server = resolver_factory({"policy": {"block": ["social"],
                                          "approved_changes": [approval(platforms=["messaging"])]}},
                              ["--check-against", str(old)])
    assert wait_for(lambda: sinkholed(server, TIKTOK))


def test_raising_the_shrink_limit_in_the_same_change_does_not_let_a_cut_through(tmp_path: Path) -> None:
    blocklists_copy(tmp_path / "old")
    new_dir = blocklists_copy(tmp_path / "new")
    tiktok = new_dir / "tiktok.yaml"
    platform = yaml.safe_load(tiktok.read_text())
    platform["domains"] = platform["domains"][: len(platform["domains"]) // 2]  # half of TikTok's domains gone
    tiktok.write_text(yaml.safe_dump(platform))
    # Each side is a policy repository: resolver.yaml and its blocklists/ directory.
    old = write_config(tmp_path / "old" / "resolver.yaml", {"policy": {"blocklists_dir": "blocklists"}})
    new = write_config(tmp_path / "new" / "resolver.yaml",
                       {"policy": {"blocklists_dir": "blocklists", "max_platform_shrink": "90%"}})
    result = run_cli("diff", str(tmp_path / "old"), str(tmp_path / "new"))
    assert result.returncode == 1, result
    assert "platform tiktok: domains" in result.stdout and "more than the 10% allowed" in result.stdout, result.stdout
    assert old.exists() and new.exists()
    assert run_cli("diff", str(old), str(new)).returncode == 1, "the config files name the same sides"
