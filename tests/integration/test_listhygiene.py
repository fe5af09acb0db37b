"""A ban cannot be lifted by a list (issue 14), as an operator meets it: ``resolver check`` refuses a list entry
that is a public suffix, a plain-http list and a list that is not the content pinned, each with one ``error:`` line;
a running server keeps blocking what a list's allow rule tries to lift, lets an allow list through, and fetches a
pinned list over https. Every server is real, on loopback; every answer is asked with dnspython.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from tests.support.authserver import AuthServer
from tests.support.listsite import ListSite
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, run_cli, write_config

SINK_V4 = "0.0.0.0"
SUFFIX = "public suffix: would cover every name under it"


def only_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused config prints: exit 2, one `error:` line, nothing else on stderr."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def a_records(server: ResolverProcess, name: str) -> list[str]:
    reply = server.query(name, "A")
    assert reply.rcode() == dns.rcode.NOERROR, f"{name}: {reply}"
    return addresses(reply, "A")


# --- resolver check ----------------------------------------------------------------------------------------


def test_check_names_the_file_and_line_of_a_public_suffix_entry(tmp_path: Path) -> None:
    listed = tmp_path / "ads.txt"
    listed.write_text("||ads.example^\n||co.uk^\n||github.io^\n")
    config = write_config(tmp_path / "resolver.yaml", {"policy": {"lists": [{"path": str(listed)}]}})
    want = f"error: {listed}:2: '||co.uk^': {SUFFIX}"
    assert only_error(run_cli("check", "-c", str(config))) == want
    assert only_error(run_cli("check", "--blocklist", str(listed))) == want


def test_check_refuses_a_plain_http_list_unless_it_is_marked_insecure(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/ads.txt"  # never fetched: check reads the last copy, and there is none
    config = write_config(tmp_path / "resolver.yaml", {"policy": {"lists": [{"url": url, "name": "ads"}]}})
    assert only_error(run_cli("check", "-c", str(config))) == (
        f"error: {config}: policy.lists[0].url: {url!r} is plain http: a list must come over https (or set "
        "insecure: true to take it unprotected)")
    write_config(config, {"policy": {"lists": [{"url": url, "name": "ads", "insecure": True}]}})
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "error:" not in result.stderr and "list ads: fetched over plain http" in result.stderr, result.stderr
    assert result.stdout.rstrip().endswith("ok"), result.stdout


def test_check_refuses_a_list_that_is_not_the_content_pinned(tmp_path: Path) -> None:
    listed = tmp_path / "ads.txt"
    listed.write_bytes(b"||ads.example^\n")
    pin = hashlib.sha256(b"||ads.example^\n").hexdigest()
    config = write_config(tmp_path / "resolver.yaml", {"policy": {"lists": [{"path": str(listed), "sha256": pin}]}})
    assert run_cli("check", "-c", str(config)).returncode == 0
    listed.write_bytes(b"||ads.example^\n@@||tiktok.com^\n")
    got = hashlib.sha256(listed.read_bytes()).hexdigest()
    assert only_error(run_cli("check", "-c", str(config))) == (
        f"error: {listed}: sha256 mismatch: expected {pin}, got {got}")


# --- a running server --------------------------------------------------------------------------------------


def test_an_allow_rule_in_a_list_that_blocks_does_not_lift_the_ban(
        resolver_factory: ResolverFactory, tmp_path: Path) -> None:
    listed = tmp_path / "ads.txt"
    listed.write_text("! a list that tries to lift a ban\n@@||tiktok.com^\n||ads.hygiene.test^\n")
    server = resolver_factory({"policy": {"lists": [{"path": str(listed), "name": "ads"}]}})
    for name in ("tiktok.com", "www.tiktok.com", "ads.hygiene.test"):
        assert a_records(server, name) == [SINK_V4], name
    assert server.config_path is not None
    result = run_cli("check", "-c", str(server.config_path))
    assert result.returncode == 0, result.stderr
    assert "    line 2: allow rule outside an allow list: @@||tiktok.com^\n" in result.stdout, result.stdout
    assert f"  ads: {listed}  adblock  1 entries (1 blocking), 1 lines skipped\n" in result.stdout, result.stdout


def test_an_allow_list_lets_through_a_name_another_list_blocks(
        resolver_factory: ResolverFactory, auth: AuthServer, tmp_path: Path) -> None:
    for name, address in (("example.org", "192.0.2.201"), ("www.example.org", "192.0.2.202"),
                          ("other.hygiene.test", "192.0.2.203")):
        auth.add(name, "A", address)
    blocking, allowing = tmp_path / "ads.txt", tmp_path / "ok.txt"
    blocking.write_text("||example.org^\n||other.hygiene.test^\n")
    allowing.write_text("@@||example.org^\n")
    server = resolver_factory({"policy": {"lists": [{"path": str(blocking), "name": "ads"},
                                                    {"path": str(allowing), "name": "ok", "allowlist": True}]}})
    assert a_records(server, "example.org") == ["192.0.2.201"]
    assert a_records(server, "www.example.org") == ["192.0.2.202"]
    assert a_records(server, "other.hygiene.test") == [SINK_V4]  # the block list still blocks the rest


@pytest.fixture
def https_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListSite]:
    tls = tmp_path / "tls"
    tls.mkdir()
    with ListSite(b"||url-listed.hygiene.test^\n", tls) as site:
        assert site.ca is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(site.ca))  # the resolver child trusts the test CA, and only it
        yield site


def test_a_pinned_https_list_is_fetched_and_a_wrong_pin_keeps_it_out(
        resolver_factory: ResolverFactory, auth: AuthServer, https_site: ListSite, tmp_path: Path) -> None:
    auth.add("url-listed.hygiene.test", "A", "192.0.2.204")
    pin = hashlib.sha256(https_site.body).hexdigest()
    cache = str(tmp_path / "cache")
    server = resolver_factory({"policy": {"list_cache_dir": cache,
                                          "lists": [{"url": https_site.url(), "name": "web", "sha256": pin}]}})
    assert a_records(server, "url-listed.hygiene.test") == [SINK_V4]
    server.stop()

    wrong = "0" * 64
    server = resolver_factory({"policy": {"list_cache_dir": str(tmp_path / "cache2"),
                                          "lists": [{"url": https_site.url(), "name": "web", "sha256": wrong}]}})
    assert server.wait_stderr("sha256 mismatch", timeout=10), server.stderr_text()
    assert a_records(server, "url-listed.hygiene.test") == ["192.0.2.204"]
