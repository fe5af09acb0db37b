"""Blocked names get the configured sinkhole answer and never reach the upstream; everything else is forwarded.

Each config is started once per module (``module_resolver_factory.shared``); the upstream is ``module_auth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.authserver import AuthServer
from tests.support.blocklists import Platform, load_platforms
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, make_query
from tests.support.zone import (
    DEEP_HELP_TIKTOK,
    DEEP_HELP_TIKTOK_V4,
    FACEBOOK,
    FACEBOOK_V4,
    HELP_TIKTOK,
    HELP_TIKTOK_V4,
    NOTTIKTOK,
    NOTTIKTOK_V4,
    WHATSAPP,
    WHATSAPP_V4,
    WWW,
    WWW_V4,
)

SINKHOLE_TTL = 7
BLOCK_V4 = "192.0.2.99"
BLOCK_V6 = "2001:db8::99"
EDE_BLOCKED = 15

MODES: dict[str, dict[str, Any]] = {
    "null": {"mode": "null", "ttl": SINKHOLE_TTL},
    "nxdomain": {"mode": "nxdomain", "ttl": SINKHOLE_TTL},
    "refused": {"mode": "refused", "ttl": SINKHOLE_TTL},
    "address": {"mode": "address", "ipv4": [BLOCK_V4], "ipv6": [BLOCK_V6], "ttl": SINKHOLE_TTL},
}

# (mode, qtype) -> (rcode, the answer records expected, whether a SOA must be in the authority section)
EXPECTED: dict[tuple[str, str], tuple[int, list[str], bool]] = {
    ("null", "A"): (dns.rcode.NOERROR, ["0.0.0.0"], False),
    ("null", "AAAA"): (dns.rcode.NOERROR, ["::"], False),
    ("null", "HTTPS"): (dns.rcode.NOERROR, [], True),
    ("null", "MX"): (dns.rcode.NOERROR, [], True),
    ("nxdomain", "A"): (dns.rcode.NXDOMAIN, [], True),
    ("nxdomain", "AAAA"): (dns.rcode.NXDOMAIN, [], True),
    ("nxdomain", "HTTPS"): (dns.rcode.NXDOMAIN, [], True),
    ("nxdomain", "MX"): (dns.rcode.NXDOMAIN, [], True),
    ("refused", "A"): (dns.rcode.REFUSED, [], False),
    ("refused", "AAAA"): (dns.rcode.REFUSED, [], False),
    ("refused", "HTTPS"): (dns.rcode.REFUSED, [], False),
    ("refused", "MX"): (dns.rcode.REFUSED, [], False),
    ("address", "A"): (dns.rcode.NOERROR, [BLOCK_V4], False),
    ("address", "AAAA"): (dns.rcode.NOERROR, [BLOCK_V6], False),
    ("address", "HTTPS"): (dns.rcode.NOERROR, [], True),
    ("address", "MX"): (dns.rcode.NOERROR, [], True),
}

DEFAULT_BLOCKED = ["www.tiktok.com", "facebook.com", "web.whatsapp.com", "x.com", "t.me"]


@pytest.fixture(scope="module")
def servers(module_resolver_factory: ResolverFactory) -> ResolverFactory:
    return module_resolver_factory


def sinkhole_server(servers: ResolverFactory, mode: str) -> ResolverProcess:
    return servers.shared({"sinkhole": MODES[mode]})


def default_server(servers: ResolverFactory) -> ResolverProcess:
    return servers.shared(None)


def rdata_of(msg: dns.message.Message, qtype: str) -> list[str]:
    return addresses(msg, qtype)


def negative_ttl(msg: dns.message.Message) -> int:
    """RFC 2308: how long a client may cache this negative answer (min of the SOA's TTL and its MINIMUM)."""
    soas = [rrset for rrset in msg.authority if rrset.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, f"expected one SOA in the authority section, got {msg.authority}"
    minimum: int = soas[0][0].minimum
    return min(soas[0].ttl, minimum)


def ede_options(msg: dns.message.Message) -> list[dns.edns.EDEOption]:
    return [opt for opt in msg.options if opt.otype == dns.edns.OptionType.EDE]


# ------------------------------------------------------------------ sinkhole modes


@pytest.mark.parametrize(("mode", "qtype"), sorted(EXPECTED))
def test_blocked_answer_per_sinkhole_mode(
    servers: ResolverFactory, module_auth: AuthServer, mode: str, qtype: str
) -> None:
    server = sinkhole_server(servers, mode)
    name = f"{mode}-{qtype.lower()}.tiktok.com"
    reply = server.query(name, qtype)
    rcode, records, has_soa = EXPECTED[(mode, qtype)]
    assert reply.rcode() == rcode, f"{mode}/{qtype}: got {dns.rcode.to_text(reply.rcode())}"
    assert rdata_of(reply, qtype) == records
    assert all(rrset.rdtype == dns.rdatatype.from_text(qtype) for rrset in reply.answer), reply.answer
    for rrset in reply.answer:
        assert rrset.ttl == SINKHOLE_TTL, f"blocked answer TTL {rrset.ttl}, sinkhole.ttl is {SINKHOLE_TTL}"
    if has_soa:
        assert negative_ttl(reply) == SINKHOLE_TTL
    assert module_auth.count(name) == 0, "a blocked name was sent upstream"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_blocked_answer_carries_ede_blocked_naming_the_platform(servers: ResolverFactory, mode: str) -> None:
    reply = sinkhole_server(servers, mode).query("www.tiktok.com", "A", edns=True)
    assert reply.opt is not None, "query had EDNS, reply has no OPT record"
    edes = ede_options(reply)
    assert [e.code for e in edes] == [EDE_BLOCKED], f"EDE options: {edes}"
    assert edes[0].text is not None and "TikTok" in edes[0].text, f"EDE text {edes[0].text!r} does not name TikTok"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_opt_in_blocked_reply_when_query_had_no_edns(servers: ResolverFactory, mode: str) -> None:
    reply = sinkhole_server(servers, mode).query("www.tiktok.com", "A", edns=False)
    assert reply.opt is None, "query had no EDNS, reply carries an OPT record"
    assert reply.edns == -1


def test_address_mode_without_ipv6_gives_nodata_for_aaaa(servers: ResolverFactory) -> None:
    server = servers.shared({"sinkhole": {"mode": "address", "ipv4": [BLOCK_V4], "ttl": SINKHOLE_TTL}})
    a = server.query("www.tiktok.com", "A")
    assert rdata_of(a, "A") == [BLOCK_V4]
    aaaa = server.query("www.tiktok.com", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert aaaa.answer == []
    assert negative_ttl(aaaa) == SINKHOLE_TTL


def test_default_sinkhole_ttl_is_ten_seconds(servers: ResolverFactory) -> None:
    reply = default_server(servers).query("ttl.tiktok.com", "A")
    assert rdata_of(reply, "A") == ["0.0.0.0"]
    assert [rrset.ttl for rrset in reply.answer] == [10]


# ------------------------------------------------------------------ names, case, header


def test_subdomain_of_blocked_domain_is_blocked(servers: ResolverFactory, module_auth: AuthServer) -> None:
    reply = sinkhole_server(servers, "null").query("a.b.c.tiktok.com", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdata_of(reply, "A") == ["0.0.0.0"]
    assert module_auth.count("a.b.c.tiktok.com") == 0


def test_blocking_ignores_case_and_echoes_the_question_exactly(servers: ResolverFactory) -> None:
    server = sinkhole_server(servers, "null")
    reply = server.query("WwW.TikTok.COM", "A")
    assert rdata_of(reply, "A") == ["0.0.0.0"]
    assert reply.question[0].name.to_text() == "WwW.TikTok.COM."
    assert reply.answer[0].name.to_text().lower() == "www.tiktok.com."


def test_forwarded_reply_echoes_the_question_case(servers: ResolverFactory) -> None:
    reply = sinkhole_server(servers, "null").query("WwW.ExAmPle.TeSt", "A")
    assert rdata_of(reply, "A") == [WWW_V4]
    assert reply.question[0].name.to_text() == "WwW.ExAmPle.TeSt."


def test_name_that_only_ends_with_the_same_letters_is_forwarded(
    servers: ResolverFactory, module_auth: AuthServer
) -> None:
    reply = sinkhole_server(servers, "null").query(NOTTIKTOK, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdata_of(reply, "A") == [NOTTIKTOK_V4]
    assert module_auth.count(NOTTIKTOK, "A") >= 1


@pytest.mark.parametrize("rd", [True, False], ids=["rd1", "rd0"])
@pytest.mark.parametrize("name", ["www.tiktok.com", WWW], ids=["blocked", "forwarded"])
def test_header_id_question_and_rd_echoed_qr_and_ra_set(servers: ResolverFactory, rd: bool, name: str) -> None:
    server = sinkhole_server(servers, "null")
    q = make_query(name, "A", rd=rd)
    q.id = 0x4A5B if rd else 0x0102
    reply = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)
    assert reply.id == q.id
    assert reply.question == q.question
    assert bool(reply.flags & dns.flags.QR)
    assert bool(reply.flags & dns.flags.RA)
    assert bool(reply.flags & dns.flags.RD) == rd
    assert reply.opcode() == 0


# ------------------------------------------------------------------ policy


@pytest.mark.parametrize("name", DEFAULT_BLOCKED)
def test_default_policy_blocks_social_and_messaging(
    servers: ResolverFactory, module_auth: AuthServer, name: str
) -> None:
    reply = default_server(servers).query(name, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdata_of(reply, "A") == ["0.0.0.0"], f"{name} was not blocked"
    assert module_auth.count(name) == 0


def test_default_policy_forwards_other_names(servers: ResolverFactory) -> None:
    server = default_server(servers)
    assert rdata_of(server.query(WWW, "A"), "A") == [WWW_V4]
    assert rdata_of(server.query(NOTTIKTOK, "A"), "A") == [NOTTIKTOK_V4]


def test_allow_domains_exempts_the_name_and_below(servers: ResolverFactory) -> None:
    server = servers.shared({"policy": {"allow_domains": [HELP_TIKTOK]}})
    assert rdata_of(server.query(HELP_TIKTOK, "A"), "A") == [HELP_TIKTOK_V4]
    assert rdata_of(server.query(DEEP_HELP_TIKTOK, "A"), "A") == [DEEP_HELP_TIKTOK_V4]
    assert rdata_of(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert rdata_of(server.query("tiktok.com", "A"), "A") == ["0.0.0.0"]


def test_allow_platform_unblocks_it(servers: ResolverFactory) -> None:
    server = servers.shared({"policy": {"allow": ["whatsapp"]}})
    assert rdata_of(server.query(WHATSAPP, "A"), "A") == [WHATSAPP_V4]
    assert rdata_of(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert rdata_of(server.query(FACEBOOK, "A"), "A") == ["0.0.0.0"]


def test_block_by_platform_id_blocks_only_that_platform(servers: ResolverFactory) -> None:
    server = servers.shared({"policy": {"block": ["tiktok"]}})
    assert rdata_of(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert rdata_of(server.query(FACEBOOK, "A"), "A") == [FACEBOOK_V4]
    assert rdata_of(server.query(WHATSAPP, "A"), "A") == [WHATSAPP_V4]


def _shared_domain() -> tuple[str, list[Platform]]:
    """A domain listed by two or more bundled platforms, and those platforms."""
    claims: dict[str, list[Platform]] = {}
    for platform in load_platforms().values():
        for domain in platform.domains:
            claims.setdefault(domain, []).append(platform)
    shared = sorted((d, ps) for d, ps in claims.items() if len(ps) > 1)
    if not shared:
        pytest.skip("no domain is claimed by two platforms in blocklists/")
    return shared[0][0], shared[0][1]


def test_name_claimed_by_several_platforms_is_forwarded_when_one_is_allowed(
    servers: ResolverFactory, module_auth: AuthServer
) -> None:
    domain, platforms = _shared_domain()
    module_auth.add(domain, "A", "192.0.2.42")
    blocked = servers.shared({"policy": {"block": [platforms[0].id]}})
    assert rdata_of(blocked.query(domain, "A"), "A") == ["0.0.0.0"], f"{domain} claimed by {platforms[0].id}"
    allowed = servers.shared({"policy": {"block": [p.id for p in platforms], "allow": [platforms[-1].id]}})
    assert rdata_of(allowed.query(domain, "A"), "A") == ["192.0.2.42"], (
        f"{domain}: {platforms[-1].id} is allowed, so the name must not be blocked"
    )


# ------------------------------------------------------------------ extra list files

HOSTS_FILE = """\
# a hosts file
0.0.0.0 ads.hosts.test
0.0.0.0   tracker.hosts.test # trailing comment
"""
DOMAINS_FILE = """\
# plain domains
blocked.domains.test
"""
ADBLOCK_FILE = """\
! AdBlock rules
||adblock.example.test^
"""


@pytest.fixture(scope="module")
def list_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("lists")
    files = [d / "hosts.txt", d / "domains.txt", d / "adblock.txt"]
    for path, text in zip(files, (HOSTS_FILE, DOMAINS_FILE, ADBLOCK_FILE), strict=True):
        path.write_text(text)
    return files


LISTED = [
    "ads.hosts.test",
    "tracker.hosts.test",
    "sub.ads.hosts.test",
    "blocked.domains.test",
    "deep.sub.blocked.domains.test",
    "adblock.example.test",
    "x.adblock.example.test",
]


@pytest.mark.parametrize("name", LISTED)
def test_blocklist_flag_blocks_listed_names_and_subdomains(
    servers: ResolverFactory, module_auth: AuthServer, list_files: list[Path], name: str
) -> None:
    args = [a for path in list_files for a in ("--blocklist", str(path))]
    server = servers.shared(None, args)
    reply = server.query(name, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdata_of(reply, "A") == ["0.0.0.0"], f"{name} from a --blocklist file was not blocked"
    assert module_auth.count(name) == 0


def test_blocklist_flag_leaves_other_names_forwarded(servers: ResolverFactory, list_files: list[Path]) -> None:
    args = [a for path in list_files for a in ("--blocklist", str(path))]
    server = servers.shared(None, args)
    assert rdata_of(server.query(WWW, "A"), "A") == [WWW_V4]
    assert rdata_of(server.query(NOTTIKTOK, "A"), "A") == [NOTTIKTOK_V4]
    assert server.query("hosts.test", "A").rcode() == dns.rcode.NXDOMAIN  # the parent is not listed


def test_policy_lists_path_is_relative_to_the_config_file(
    tmp_path: Path, resolver_factory: ResolverFactory, auth: AuthServer
) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ads.txt").write_text(ADBLOCK_FILE)
    config = {"policy": {"lists": [{"path": "lists/ads.txt", "format": "adblock"}]}}
    # The factory writes the config into tmp_path, next to lists/.
    server = resolver_factory(config)
    assert server.config_path is not None and server.config_path.parent == tmp_path
    assert rdata_of(server.query("adblock.example.test", "A"), "A") == ["0.0.0.0"]
    assert rdata_of(server.query(WWW, "A"), "A") == [WWW_V4]
    assert auth.count("adblock.example.test") == 0
