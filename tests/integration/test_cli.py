"""`resolver check` and `resolver explain` as an operator runs them: exit codes and what they print."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support.blocklists import load_platforms
from tests.support.resolverproc import run_cli, write_config

BLOCKED_BY_DEFAULT = {"social", "messaging", "doh-bypass"}  # doh-bypass: policy.bypass.doh_servers


# ------------------------------------------------------------------ check: valid


def test_check_default_config_lists_every_platform_with_its_domain_count() -> None:
    platforms = load_platforms()
    assert platforms, "no platform files in blocklists/"
    result = run_cli("check")
    assert result.returncode == 0, result.stderr
    for pid, platform in platforms.items():
        line = re.search(
            rf"^\s*{re.escape(pid)}\s+{re.escape(platform.category)}\s+(\d+) domains\b(.*)$",
            result.stdout,
            re.MULTILINE,
        )
        assert line, f"no line for platform {pid!r} ({platform.category}) in:\n{result.stdout}"
        assert int(line.group(1)) == len(platform.domains), f"{pid}: check says {line.group(1)} domains"
        blocked = re.match(r"\s+blocked\b", line.group(2)) is not None
        assert blocked == (platform.category in BLOCKED_BY_DEFAULT), f"{pid}: status {line.group(2)!r}"


def test_check_tiktok_line_format() -> None:
    platforms = load_platforms()
    assert "tiktok" in platforms
    result = run_cli("check")
    assert result.returncode == 0, result.stderr
    m = re.search(r"^\s*tiktok\s+social\s+(\d+) domains\s+blocked", result.stdout, re.MULTILINE)
    assert m, result.stdout
    assert int(m.group(1)) == len(platforms["tiktok"].domains)


def test_check_valid_config_file_exits_zero(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "ok.yaml",
        {
            "listen": ["127.0.0.1:5353", "[::1]:5353"],
            "upstreams": ["127.0.0.1:53"],
            "sinkhole": {"mode": "address", "ipv4": ["192.0.2.99"], "ipv6": ["2001:db8::99"], "ttl": 7},
            "policy": {"block": ["tiktok"], "allow_domains": ["help.tiktok.com"]},
        },
    )
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ check: invalid


def _check_fails(cfg: Path) -> str:
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "error:" in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"sinkhole": {"mode": "null", "colour": "red"}}, "sinkhole.colour"),
        ({"sinkhole": {"mode": "blackhole"}}, "sinkhole.mode"),
        ({"listen": ["127.0.0.1:notaport"]}, "listen"),
        ({"listen": ["256.1.1.1:5353"]}, "listen"),
        ({"listen": ["127.0.0.1:5\u00b3"]}, "listen[0]"),  # a superscript: a digit to isdigit(), not to int()
        ({"cache": {"max_bytes": "\u00b2MiB"}}, "cache.max_bytes"),
        ({"policy": {"blocklists_dir": "a" * 5000}}, "not a usable path"),
        ({"policy": {"lists": [{"name": "x", "url": "https://lists.example/x.txt"}],
                     "list_cache_dir": "a" * 5000}}, "list_cache_dir is not a usable path"),
        ({"policy": {"lists": [{"name": "x", "path": "x\0y"}]}}, "contains a NUL byte"),
        ({"policy": {"exemptions": [{"reference": "R-1", "networks": ["10.0.0.0/8"], "platforms": ["tiktok"],
                                     "approved_by": "A", "reason": "B",
                                     "starts": "2026-01-01T00:00:00Z", "expires": "9999-12-31T23:00:00-05:00"}]}},
         "out of range"),
        ({"policy": {"lists": [{"name": "x", "url": "https://lists.example/x.txt", "refresh": float("nan")}]}},
         "refresh"),
        ({"sinkhole": {"mode": "null", "co\nlour\x1b[31m": "red"}}, "co\\nlour\\x1b[31m"),
    ],
    ids=["unknown-key", "bad-mode", "listen-port-not-a-number", "listen-bad-address", "superscript-port",
         "superscript-size", "blocklists-dir-too-long", "list-cache-dir-too-long", "nul-in-list-path",
         "exemption-past-year-9999-in-utc", "refresh-nan", "newline-and-escape-in-a-key"],
)
def test_check_bad_config_names_file_and_key(tmp_path: Path, config: dict[str, Any], key: str) -> None:
    cfg = write_config(tmp_path / "bad-config.yaml", config)
    stderr = _check_fails(cfg)
    # It names the config file, or the path or list that is wrong.
    assert any(name in stderr for name in ("bad-config.yaml", "lists.example", "aaaa", "x\\x00y")), stderr
    assert key in stderr, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr and "\x1b" not in stderr, stderr


def test_check_refuses_a_list_that_is_a_pipe_at_once(tmp_path: Path) -> None:
    """A FIFO with no writer would block the read for ever; it is refused by what it is."""
    os.mkfifo(tmp_path / "force.txt")
    cfg = write_config(tmp_path / "cfg.yaml", {"policy": {"lists": [{"name": "force", "path": "force.txt"}]}})
    stderr = _check_fails(cfg)
    assert "force.txt: not a regular file" in stderr, stderr


def test_check_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("upstream_timeout: 1.5\nquery_timeout: 4.0\nsinkhole: mode: nxdomain\n")
    stderr = _check_fails(cfg)
    assert re.search(r"broken\.yaml:3\b", stderr), f"expected FILE:3 in: {stderr}"


GOOD_PLATFORM = """\
name: Good
category: social
owner: Good Ltd.
domains:
  - good.example
  - two.example
sources:
  - written for this test
"""


def _platform_dir(tmp_path: Path, bad_text: str) -> Path:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "goodplatform.yaml").write_text(GOOD_PLATFORM)
    (lists / "badplatform.yaml").write_text(textwrap.dedent(bad_text))
    return write_config(tmp_path / "cfg.yaml", {"policy": {"blocklists_dir": "lists", "block": ["social"]}})


def test_check_platform_file_without_domains(tmp_path: Path) -> None:
    cfg = _platform_dir(tmp_path, "name: Bad\ncategory: social\nowner: Nobody\nsources:\n  - this test\n")
    stderr = _check_fails(cfg)
    assert "badplatform.yaml" in stderr, stderr
    assert "domains" in stderr, stderr


def test_check_platform_file_with_invalid_domain(tmp_path: Path) -> None:
    cfg = _platform_dir(
        tmp_path,
        """\
        name: Bad
        category: social
        domains:
          - fine.example
          - "not a domain!"
        owner: Nobody
        sources:
          - this test
        """,
    )
    stderr = _check_fails(cfg)
    assert "badplatform.yaml" in stderr, stderr
    assert re.search(r"badplatform\.yaml:5\b", stderr) or "domains" in stderr, (
        f"expected the line (5) or the key (domains[1]) of the bad entry in: {stderr}"
    )


def test_check_refuses_a_category_typo_in_one_line_naming_file_line_and_the_known_categories(tmp_path: Path) -> None:
    """A typo would move the platform out of the category the group blocks: `check` fails instead."""
    cfg = _platform_dir(tmp_path, GOOD_PLATFORM.replace("category: social", "category: socail"))
    stderr = _check_fails(cfg)
    assert stderr.splitlines() == [
        f"error: {tmp_path / 'lists' / 'badplatform.yaml'}:2: category: unknown category 'socail' (known: "
        "doh-bypass, maps, messaging, news, social, transport; declare a new one in the config's policy.categories)"
    ], stderr


def test_check_accepts_a_category_the_config_declares(tmp_path: Path) -> None:
    _platform_dir(tmp_path, GOOD_PLATFORM.replace("category: social", "category: video"))
    cfg = write_config(tmp_path / "cfg.yaml", {"policy": {"blocklists_dir": "lists", "categories": ["video"],
                                                          "block": ["social", "video"]}})
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s*badplatform\s+video\s+2 domains\s+blocked", result.stdout, re.MULTILINE), result.stdout


def test_check_platform_dir_relative_to_config_is_valid(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "goodplatform.yaml").write_text(GOOD_PLATFORM)
    cfg = write_config(tmp_path / "cfg.yaml", {"policy": {"blocklists_dir": "lists", "block": ["social"]}})
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s*goodplatform\s+social\s+2 domains\s+blocked", result.stdout, re.MULTILINE), result.stdout


# ------------------------------------------------------------------ explain


def test_explain_blocked_name_shows_the_rule() -> None:
    result = run_cli("explain", "www.tiktok.com")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "verdict: blocked" in out, out
    assert re.search(r"\btiktok\b", out), out
    assert "tiktok.yaml" in out, out
    assert re.search(r"(?<![\w.])tiktok\.com\b", out), f"matched entry tiktok.com not shown: {out}"


def test_explain_unlisted_name_is_forwarded() -> None:
    result = run_cli("explain", "www.example.test")
    assert result.returncode == 0, result.stderr
    assert "verdict: forwarded" in result.stdout, result.stdout


def test_explain_allow_domains_gives_allowed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "allow.yaml", {"policy": {"allow_domains": ["help.tiktok.com"]}})
    result = run_cli("explain", "help.tiktok.com", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "verdict: allowed" in result.stdout, result.stdout
    below = run_cli("explain", "a.help.tiktok.com", "-c", str(cfg))
    assert "verdict: allowed" in below.stdout, below.stdout
    still = run_cli("explain", "www.tiktok.com", "-c", str(cfg))
    assert "verdict: blocked" in still.stdout, still.stdout
