"""The README's own check, with the tool operators use: `dig @127.0.0.1 -p PORT ...`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support.resolverproc import ResolverFactory, ResolverProcess
from tests.support.zone import MAIL_MX, WWW, WWW_V4, WWW_V6

DIG = shutil.which("dig")
pytestmark = pytest.mark.skipif(DIG is None, reason="dig not installed (apt-get install bind9-dnsutils)")


@pytest.fixture(scope="module")
def server(module_resolver_factory: ResolverFactory) -> ResolverProcess:
    return module_resolver_factory.shared(None)


def dig(server: ResolverProcess, *args: str) -> str:
    assert DIG is not None
    result = subprocess.run(
        [DIG, "@127.0.0.1", "-p", str(server.port), "+tries=1", "+time=3", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, f"dig {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_dig_short_blocked_name_gets_null_address(server: ResolverProcess) -> None:
    assert dig(server, "www.tiktok.com", "A", "+short").split() == ["0.0.0.0"]


def test_dig_short_blocked_name_aaaa(server: ResolverProcess) -> None:
    assert dig(server, "www.tiktok.com", "AAAA", "+short").split() == ["::"]


def test_dig_short_forwarded_name(server: ResolverProcess) -> None:
    assert dig(server, WWW, "A", "+short").split() == [WWW_V4]
    assert dig(server, WWW, "AAAA", "+short").split() == [WWW_V6]
    assert dig(server, "mail.example.test", "MX", "+short").strip() == MAIL_MX


def test_dig_over_tcp(server: ResolverProcess) -> None:
    assert dig(server, "www.tiktok.com", "A", "+short", "+tcp").split() == ["0.0.0.0"]
    assert dig(server, WWW, "A", "+short", "+tcp").split() == [WWW_V4]


def test_dig_shows_ede_blocked_for_a_blocked_name(server: ResolverProcess) -> None:
    out = dig(server, "www.tiktok.com", "A")
    assert "status: NOERROR" in out, out
    assert re.search(r"^; EDE: 15 \(Blocked\)", out, re.MULTILINE), f"no EDE line in:\n{out}"
    assert "TikTok" in out, out


def test_dig_no_ede_for_a_forwarded_name(server: ResolverProcess) -> None:
    out = dig(server, WWW, "A")
    assert "status: NOERROR" in out, out
    assert "EDE:" not in out, out


def test_dig_without_edns_gets_no_opt(server: ResolverProcess) -> None:
    out = dig(server, "www.tiktok.com", "A", "+noedns")
    assert "status: NOERROR" in out, out
    assert "OPT PSEUDOSECTION" not in out, out
