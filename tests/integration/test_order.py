"""The evaluation order, step by step: what a phone is served and what `resolver explain` says agree.

One server with one config holds a case for every step of ``resolver.core.order.STEPS`` (and for a name no
step decides). For each, the test asks the real server from the case's client address and runs
``resolver explain`` on the same config file for the same client, and checks both against what the README's
"How a name is decided" promises.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from resolver.core.order import STEPS
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, run_cli
from tests.support.zone import HELP_TIKTOK, HELP_TIKTOK_V4, TIKTOK_V4

TIKTOK = "www.tiktok.com"
LISTED = "tiktokv.com"  # a TikTok platform domain that a third-party list names too: one trie entry, two claims
LISTED_V4 = "192.0.2.61"
MAPS = "maps.google.com"
MAPS_V4 = "192.0.2.102"
SINK = "0.0.0.0"
EXEMPT, PILOT, OPEN = "127.0.0.3", "127.0.0.4", "127.0.0.5"


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


@pytest.fixture(scope="module")
def setup(module_resolver_factory: ResolverFactory, module_auth: AuthServer,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[ResolverProcess, Path]:
    module_auth.add(LISTED, "A", LISTED_V4)
    module_auth.add(MAPS, "A", MAPS_V4)
    module_auth.add("use-application-dns.net", "A", "192.0.2.106")
    lists = tmp_path_factory.mktemp("order") / "extra.txt"
    lists.write_text(f"||{LISTED}^\n")
    now = time.time()
    config: dict[str, Any] = {"policy": {
        "allow_domains": [HELP_TIKTOK],
        "lists": [{"path": str(lists), "name": "extra"}],
        "groups": {
            "default": {"block": ["social", "messaging"]},
            "pilot": {"networks": [f"{PILOT}/32"], "block": ["messaging"], "monitor": ["social"]},
            "open": {"networks": [f"{OPEN}/32"], "block": ["messaging"]},
        },
        "exemptions": [{
            "platforms": ["tiktok"], "clients": [EXEMPT], "approved_by": "DSO", "reason": "comms account",
            "reference": "ORDER-1", "starts": _iso(now - 3600), "expires": _iso(now + 86400),
        }],
    }}
    server = module_resolver_factory(config)
    assert server.config_path is not None
    return server, server.config_path


# (client, name, served: the A address or "NXDOMAIN", explain's verdict, the deciding step's name or None)
CASES = [
    ("127.0.0.1", "use-application-dns.net", "NXDOMAIN", "blocked", "special names"),
    (EXEMPT, TIKTOK, TIKTOK_V4, "allowed", "exemptions"),
    ("127.0.0.1", HELP_TIKTOK, HELP_TIKTOK_V4, "allowed", "allow entries"),
    ("127.0.0.1", MAPS, MAPS_V4, "allowed", "allowed platforms"),
    ("127.0.0.1", TIKTOK, SINK, "blocked", "platform blocks"),
    (PILOT, LISTED, SINK, "blocked", "other lists"),  # the group only monitors TikTok; the list still blocks
    (PILOT, TIKTOK, TIKTOK_V4, "monitored", "monitored platforms"),
    (OPEN, TIKTOK, TIKTOK_V4, "forwarded", None),  # social neither blocked nor allowed for the group
]


def test_every_step_has_a_case() -> None:
    assert {case[4] for case in CASES} - {None} == {step.name for step in STEPS}


@pytest.mark.parametrize(("client", "name", "served", "verdict", "step"), CASES,
                         ids=[c[4] or "no step" for c in CASES])
def test_served_answer_and_explain_agree(setup: tuple[ResolverProcess, Path], client: str, name: str, served: str,
                                         verdict: str, step: str | None) -> None:
    server, config = setup
    reply = server.query(name, "A", source=client)
    if served == "NXDOMAIN":
        assert reply.rcode() == dns.rcode.NXDOMAIN, reply.to_text()
    else:
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply, "A") == [served], reply.to_text()
    result = run_cli("explain", name, "-c", str(config), "--client", client)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"verdict: {verdict}\n" in out, out
    if step is None:
        assert "decided by: no step" in out, out
        assert "<- decides" not in out, out
    else:
        number = next(i for i, s in enumerate(STEPS, 1) if s.name == step)
        assert f"decided by: step {number}, {step}:" in out, out
        decides = re.findall(r"^  (\d+) .*<- decides$", out, re.MULTILINE)
        assert decides == [str(number)], out
