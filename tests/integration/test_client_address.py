"""One client address: an IPv4 phone reaching an IPv6 (dual-stack) listener keeps its group, its exemptions,
its rate limit and its line in the query log.

The listener is an IPv6 socket bound to ``::ffff:127.0.0.1``: it hears IPv4 clients on loopback exactly as a
``[::]`` listener hears them (as ``::ffff:a.b.c.d``), without listening beyond loopback.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.rcode
import pytest

from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, query, wait_for
from tests.support.zone import TIKTOK_V4, WWW, WWW_V4

TIKTOK = "www.tiktok.com"
MAPPED_LISTENER = "::ffff:127.0.0.1"
COMMS, EXEMPT, OTHER = "127.0.0.2", "127.0.0.3", "127.0.0.9"


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _config(log: Path) -> dict[str, Any]:
    now = time.time()
    return {
        "query_log": {"path": str(log), "client": "full"},
        "rate_limit": {"qps": 1, "burst": 3},
        "policy": {
            "groups": {"default": {"block": ["social", "messaging"]},
                       "comms": {"networks": [f"{COMMS}/32"], "block": ["messaging"]}},
            "exemptions": [{
                "platforms": ["tiktok"], "clients": [EXEMPT], "approved_by": "DSO", "reason": "comms account",
                "reference": "MAPPED-1", "starts": _iso(now - 3600), "expires": _iso(now + 86400),
            }],
        },
    }


@pytest.fixture
def server(resolver_factory: ResolverFactory, tmp_path: Path) -> ResolverProcess:
    return resolver_factory(_config(tmp_path / "queries.jsonl"), listen_host=MAPPED_LISTENER)


def ask(server: ResolverProcess, name: str, client: str, *, tcp: bool = False, timeout: float = 3.0) -> Any:
    return query(server.port, name, host="127.0.0.1", source=client, tcp=tcp, timeout=timeout)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_ipv4_client_on_a_dual_stack_listener_keeps_group_and_exemption(server: ResolverProcess, tcp: bool) -> None:
    assert addresses(ask(server, TIKTOK, COMMS, tcp=tcp), "A") == [TIKTOK_V4], "the comms group lost its network"
    assert addresses(ask(server, TIKTOK, EXEMPT, tcp=tcp), "A") == [TIKTOK_V4], "the exemption missed its client"
    assert addresses(ask(server, TIKTOK, OTHER, tcp=tcp), "A") == ["0.0.0.0"], "the default group must block"


def test_query_log_and_rate_limit_see_the_ipv4_address(server: ResolverProcess, tmp_path: Path) -> None:
    assert addresses(ask(server, WWW, COMMS), "A") == [WWW_V4]
    log = tmp_path / "queries.jsonl"
    assert wait_for(lambda: log.exists() and log.read_text().strip() != "", timeout=5)
    assert [json.loads(line)["client"] for line in log.read_text().splitlines()] == [COMMS]
    # The limit is per phone: one address's burst spent, another's untouched, in whichever form each arrives.
    answered = 0
    for _ in range(6):
        with contextlib.suppress(dns.exception.Timeout):
            answered += ask(server, WWW, OTHER, timeout=0.5).rcode() == dns.rcode.NOERROR
    assert answered <= 4, "the rate limit did not hold for a mapped client"
    assert addresses(ask(server, WWW, EXEMPT), "A") == [WWW_V4]
