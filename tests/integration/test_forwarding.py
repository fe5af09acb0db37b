"""Allowed names are forwarded to the upstreams, cached, and upstream failures become SERVFAIL or failover.

Tests that count upstream queries use a name of their own (``unique_name``), so one shared server per module
is enough; failure tests start their own upstreams.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.authserver import POISON_V4, AuthServer
from tests.support.resolverproc import (
    ResolverFactory,
    ResolverProcess,
    addresses,
    ipv6_loopback_available,
    make_query,
)
from tests.support.zone import (
    ALIAS,
    BIG,
    BIG_TXT,
    MAIL,
    MAIL_MX,
    MISSING,
    TXT_NAME,
    TXT_VALUE,
    WWW,
    WWW_V4,
    WWW_V6,
    populate,
)

_counter = itertools.count()

# Short timeouts so failure paths finish quickly; the client still waits up to 5 s for any reply.
FAST_FAILOVER = {"upstream_timeout": 0.5, "query_timeout": 3.0}
CLIENT_TIMEOUT = 5.0


def unique_name(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}.example.test"


@pytest.fixture(scope="module")
def server(module_resolver_factory: ResolverFactory) -> ResolverProcess:
    return module_resolver_factory.shared(None)


@pytest.fixture
def good() -> Iterator[AuthServer]:
    with AuthServer() as s:
        yield populate(s)


@pytest.fixture
def bad() -> Iterator[AuthServer]:
    with AuthServer() as s:
        yield populate(s)


# ------------------------------------------------------------------ answers


def test_a_and_aaaa_forwarded_with_upstream_records(server: ResolverProcess) -> None:
    a = server.query(WWW, "A")
    assert a.rcode() == dns.rcode.NOERROR
    assert addresses(a, "A") == [WWW_V4]
    aaaa = server.query(WWW, "AAAA")
    assert addresses(aaaa, "AAAA") == [WWW_V6]
    assert not a.flags & dns.flags.TC


def test_mx_and_txt_forwarded(server: ResolverProcess) -> None:
    assert addresses(server.query(MAIL, "MX"), "MX") == [MAIL_MX]
    assert addresses(server.query(TXT_NAME, "TXT"), "TXT") == [f'"{TXT_VALUE}"']


def test_cname_chain_forwarded(server: ResolverProcess) -> None:
    reply = server.query(ALIAS, "A")
    assert addresses(reply, "CNAME") == [f"{WWW}."]
    assert addresses(reply, "A") == [WWW_V4]


def test_nxdomain_forwarded_with_soa(server: ResolverProcess) -> None:
    reply = server.query(MISSING, "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


def test_nodata_forwarded_with_soa(server: ResolverProcess) -> None:
    reply = server.query(WWW, "MX")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


# ------------------------------------------------------------------ cache


def test_second_ask_is_answered_from_cache(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("cache")
    module_auth.add(name, "A", "192.0.2.77", ttl=300)
    first = server.query(name, "A")
    second = server.query(name, "A")
    assert addresses(first, "A") == addresses(second, "A") == ["192.0.2.77"]
    assert module_auth.count(name, "A") == 1, "the second ask reached the upstream"
    assert first.answer[0].ttl <= 300
    assert second.answer[0].ttl <= first.answer[0].ttl


def test_cache_hit_over_tcp_after_udp(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("cache-tcp")
    module_auth.add(name, "A", "192.0.2.78")
    server.query(name, "A")
    reply = server.query(name, "A", tcp=True)
    assert addresses(reply, "A") == ["192.0.2.78"]
    assert module_auth.count(name) == 1


def test_cached_answer_echoes_new_id_and_case(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("cache-case")
    module_auth.add(name, "A", "192.0.2.79")
    server.query(name, "A")
    q = make_query(name.upper(), "A")
    q.id = 0x1357
    reply = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)
    assert reply.id == 0x1357
    assert reply.question[0].name.to_text() == name.upper() + "."
    assert addresses(reply, "A") == ["192.0.2.79"]
    assert module_auth.count(name) == 1


def test_cached_answer_follows_each_clients_edns(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("cache-edns")
    module_auth.add(name, "A", "192.0.2.82")
    with_edns = server.query(name, "A", edns=True)
    without = server.query(name, "A", edns=False)
    again_with = server.query(name, "A", edns=True)
    assert module_auth.count(name) == 1
    assert with_edns.opt is not None
    assert without.opt is None, "a cached reply carried OPT to a client that sent none"
    assert again_with.opt is not None, "a cached reply dropped OPT for a client that sent EDNS"
    for reply in (with_edns, without, again_with):
        assert addresses(reply, "A") == ["192.0.2.82"]
        assert not reply.options, f"forwarded reply carries EDNS options: {reply.options}"


def test_nxdomain_is_negatively_cached(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("nx")  # not in the zone
    first = server.query(name, "A")
    second = server.query(name, "A")
    assert first.rcode() == second.rcode() == dns.rcode.NXDOMAIN
    assert module_auth.count(name, "A") == 1, "the NXDOMAIN was not cached"
    assert [rrset.rdtype for rrset in second.authority] == [dns.rdatatype.SOA]


def test_nodata_is_negatively_cached(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("nodata")
    module_auth.add(name, "A", "192.0.2.80")
    first = server.query(name, "MX")
    second = server.query(name, "MX")
    assert first.rcode() == second.rcode() == dns.rcode.NOERROR
    assert first.answer == second.answer == []
    assert module_auth.count(name, "MX") == 1


def test_each_qtype_is_its_own_cache_entry(server: ResolverProcess, module_auth: AuthServer) -> None:
    name = unique_name("types")
    module_auth.add(name, "A", "192.0.2.81")
    module_auth.add(name, "AAAA", "2001:db8::81")
    assert addresses(server.query(name, "A"), "A") == ["192.0.2.81"]
    assert addresses(server.query(name, "AAAA"), "AAAA") == ["2001:db8::81"]
    assert addresses(server.query(name, "A"), "A") == ["192.0.2.81"]
    assert addresses(server.query(name, "AAAA"), "AAAA") == ["2001:db8::81"]
    assert module_auth.count(name, "A") == 1
    assert module_auth.count(name, "AAAA") == 1


# ------------------------------------------------------------------ upstream failures


def test_silent_first_upstream_fails_over_to_second(
    resolver_factory: ResolverFactory, bad: AuthServer, good: AuthServer
) -> None:
    bad.set_behaviour("example.test", "silent")
    server = resolver_factory(FAST_FAILOVER, upstreams=[bad.address, good.address])
    reply = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, "A") == [WWW_V4]
    assert good.count(WWW, "A") >= 1


def test_all_upstreams_silent_gives_servfail(resolver_factory: ResolverFactory, bad: AuthServer) -> None:
    with AuthServer() as bad2:
        bad.set_behaviour("example.test", "silent")
        bad2.set_behaviour("example.test", "silent")
        server = resolver_factory(
            {"upstream_timeout": 0.5, "query_timeout": 1.5}, upstreams=[bad.address, bad2.address]
        )
        # The SERVFAIL must arrive before the client gives up (5 s): a reply, not silence.
        reply = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert reply.answer == []
        assert bad.count(WWW, "A") >= 1


@pytest.mark.parametrize("behaviour", ["garbage", "wrong-id", "wrong-question"])
def test_bad_reply_from_only_upstream_is_not_accepted(
    resolver_factory: ResolverFactory, bad: AuthServer, behaviour: str
) -> None:
    bad.set_behaviour("example.test", behaviour)
    server = resolver_factory(FAST_FAILOVER, upstreams=[bad.address])
    reply = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
    assert POISON_V4 not in addresses(reply, "A"), f"accepted a {behaviour} reply"
    assert reply.rcode() == dns.rcode.SERVFAIL, f"got {dns.rcode.to_text(reply.rcode())}: {reply.answer}"
    assert bad.count(WWW, "A") >= 1
    assert server.alive()


@pytest.mark.parametrize("behaviour", ["garbage", "wrong-id", "wrong-question"])
def test_bad_reply_then_good_upstream(
    resolver_factory: ResolverFactory, bad: AuthServer, good: AuthServer, behaviour: str
) -> None:
    bad.set_behaviour("example.test", behaviour)
    server = resolver_factory(FAST_FAILOVER, upstreams=[bad.address, good.address])
    reply = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
    assert POISON_V4 not in addresses(reply, "A"), f"accepted a {behaviour} reply"
    # The bad reply is dropped, the first upstream times out (0.5 s) and the second answers well inside 3 s.
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, "A") == [WWW_V4]
    assert good.count(WWW, "A") >= 1


def test_servfail_from_first_upstream_then_good_second(
    resolver_factory: ResolverFactory, bad: AuthServer, good: AuthServer
) -> None:
    bad.set_behaviour("example.test", "servfail")
    server = resolver_factory(FAST_FAILOVER, upstreams=[bad.address, good.address])
    reply = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, "A") == [WWW_V4]


def test_truncated_udp_upstream_reply_is_retried_over_tcp(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    name = "tc.example.test"
    auth.add(name, "A", "192.0.2.60")
    auth.set_behaviour(name, "truncate")
    server = resolver_factory()
    reply = server.query(name, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, "A") == ["192.0.2.60"]
    assert not reply.flags & dns.flags.TC
    assert auth.count(name, "A", transport="tcp") >= 1


def test_large_upstream_answer_fetched_over_tcp(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    server = resolver_factory()
    reply = server.query(BIG, "TXT", tcp=True)
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, "TXT") == sorted(f'"{t}"' for t in BIG_TXT)
    assert auth.count(BIG, "TXT", transport="tcp") >= 1


def test_slow_upstream_does_not_hold_up_other_queries(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    auth.add("slow.example.test", "A", "192.0.2.61")
    auth.set_behaviour("slow.example.test", "slow:2")
    server = resolver_factory({"upstream_timeout": 4.0, "query_timeout": 6.0})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow_sock:
        slow_q = make_query("slow.example.test", "A")
        slow_sock.sendto(slow_q.to_wire(), ("127.0.0.1", server.port))
        assert auth.wait_for_queries(1, timeout=5, name="slow.example.test")
        fast = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
        assert addresses(fast, "A") == [WWW_V4]
        # The fast answer came while the slow one was still pending upstream.
        slow_sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            slow_sock.recv(65535)
        slow_sock.setblocking(True)
        slow_sock.settimeout(8)
        slow = dns.message.from_wire(slow_sock.recv(65535))
        assert slow.id == slow_q.id
        assert addresses(slow, "A") == ["192.0.2.61"]


def test_ipv6_upstream(resolver_factory: ResolverFactory) -> None:
    if not ipv6_loopback_available():
        pytest.skip("::1 is not available on this host")
    with AuthServer("::1") as v6:
        populate(v6)
        server = resolver_factory(upstreams=[v6.address])
        assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
        assert v6.count(WWW, "A") == 1


def test_upstream_questions_carry_random_ids_and_move_to_fresh_ports(server: ResolverProcess,
                                                                    module_auth: AuthServer) -> None:
    """What a spoofer must guess: the upstream sees unpredictable IDs, and no source port carries more than 64
    questions before a new one (a new random port) takes over."""
    names = [unique_name("spoof") for _ in range(300)]
    for name in names:
        server.query(name, "A")
    wanted = set(names)
    seen = [q for q in module_auth.queries if q.name in wanted and q.transport == "udp"]
    assert len(seen) == 300
    ids = [q.id for q in seen]
    assert len(set(ids)) >= 290  # 300 draws from 65,536: a handful of repeats at most
    assert sum(1 for a, b in itertools.pairwise(ids) if b - a == 1) <= 3  # not a counter
    per_port: dict[int, int] = {}
    for q in seen:
        per_port[q.port] = per_port.get(q.port, 0) + 1
    assert max(per_port.values()) <= 64
    assert len(per_port) >= 5
    assert len({p % 1024 for p in per_port}) >= 4  # not neighbours handed out in order
