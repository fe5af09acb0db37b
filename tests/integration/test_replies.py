"""What reaches a phone, through the real server on loopback with dnspython as the phone.

The upstream (``chatty``) answers the way many recursive servers do: TTLs of up to 68 years, the zone's NS records
in the authority section and their addresses in the additional one, AD set. A phone gets a minimal answer: the
answer section; for a negative answer the SOA and nothing else; no additional records but our OPT; every TTL at
most ``cache.max_ttl`` (a negative answer's SOA at most ``cache.negative_max_ttl``), on the first, uncached answer
as on every cached one; AD only when it asked with AD or DO.

And the protocol edge: a header-only message with an opcode other than QUERY gets NOTIMP (RFC 1035 4.1.1, RFC 8906
3.1.4), a header-only QUERY still FORMERR.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, make_query, udp_exchange

MAX_TTL = 3600
NEGATIVE_MAX_TTL = 600
HUGE = 2**31 - 1  # the largest TTL RFC 2181 allows
ZONE = "phones.test"


@pytest.fixture(scope="module")
def chatty() -> Iterator[AuthServer]:
    with AuthServer(soa_ttl=HUGE, soa_minimum=HUGE) as server:
        server.add(f"huge.{ZONE}", "A", "192.0.2.7", ttl=HUGE)
        server.add(f"huge.{ZONE}", "AAAA", "2001:db8::7", ttl=HUGE)
        server.add(f"alias.{ZONE}", "CNAME", f"huge.{ZONE}.", ttl=HUGE)
        server.set_behaviour(ZONE, "chatty")
        yield server


@pytest.fixture(scope="module")
def server(module_resolver_factory: ResolverFactory, chatty: AuthServer) -> ResolverProcess:
    config = {"cache": {"max_ttl": MAX_TTL, "negative_max_ttl": NEGATIVE_MAX_TTL}}
    return module_resolver_factory.shared(config, upstreams=[chatty.address])


def ask(server: ResolverProcess, name: str, rtype: str = "A", *, ad: bool = False,
        do: bool = False) -> dns.message.Message:
    q = make_query(name, rtype)
    if ad:
        q.flags |= dns.flags.AD
    if do:
        q.want_dnssec(True)
    data = udp_exchange(server.port, q.to_wire())
    assert data is not None, f"no answer for {name}"
    reply = dns.message.from_wire(data)
    assert reply.id == q.id
    return reply


def ttls(reply: dns.message.Message) -> list[int]:
    return [rrset.ttl for section in (reply.answer, reply.authority, reply.additional) for rrset in section]


def test_positive_answers_are_minimal_capped_and_without_ad(server: ResolverProcess, chatty: AuthServer) -> None:
    """The upstream sends A (TTL 2^31-1) + 2 NS + 2 glue, AD set; the phone gets the A record alone, TTL 3600,
    AD clear, first from the upstream and then from the cache (the upstream asked once)."""
    for attempt in range(2):
        reply = ask(server, f"huge.{ZONE}")
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply, "A") == ["192.0.2.7"]
        assert not reply.authority and not reply.additional, (attempt, reply)
        assert reply.edns == 0, "our OPT is kept"
        assert all(0 < ttl <= MAX_TTL for ttl in ttls(reply)), (attempt, ttls(reply))
        assert not reply.flags & dns.flags.AD, attempt
    assert chatty.count(f"huge.{ZONE}", "A") == 1


def test_a_cname_chain_is_kept_whole_and_capped(server: ResolverProcess) -> None:
    reply = ask(server, f"alias.{ZONE}")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert not reply.authority and not reply.additional
    assert all(ttl <= MAX_TTL for ttl in ttls(reply)), ttls(reply)


@pytest.mark.parametrize(("name", "rtype", "rcode"), [
    (f"missing.{ZONE}", "A", dns.rcode.NXDOMAIN),
    (f"huge.{ZONE}", "TXT", dns.rcode.NOERROR),  # NODATA
])
def test_negative_answers_keep_only_the_soa(server: ResolverProcess, name: str, rtype: str, rcode: int) -> None:
    """The upstream sends SOA (TTL and minimum 2^31-1) + 2 NS in the authority section and 2 glue records; the
    phone gets the SOA alone with TTL at most negative_max_ttl (how long it may cache the negative answer)."""
    for attempt in range(2):
        reply = ask(server, name, rtype)
        assert reply.rcode() == rcode and not reply.answer and not reply.additional, (attempt, reply)
        assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA], (attempt, reply)
        assert 0 < reply.authority[0].ttl <= NEGATIVE_MAX_TTL, (attempt, reply.authority[0].ttl)


@pytest.mark.parametrize(("ad", "do"), [(True, False), (False, True)])
def test_ad_reaches_a_client_that_asked_for_it(server: ResolverProcess, ad: bool, do: bool) -> None:
    """A query with AD (RFC 6840 5.7) or DO set gets the upstream's AD; before and after it, one with neither
    gets AD clear from the same cache entry."""
    name = f"huge.{ZONE}"
    assert not ask(server, name, "AAAA").flags & dns.flags.AD
    assert ask(server, name, "AAAA", ad=ad, do=do).flags & dns.flags.AD
    assert not ask(server, name, "AAAA").flags & dns.flags.AD


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 6, 15])  # IQUERY, STATUS, unassigned, NOTIFY, UPDATE, DSO, …
def test_header_only_message_with_another_opcode_gets_notimp(server: ResolverProcess, opcode: int) -> None:
    packet = struct.pack("!HHHHHH", 0x4242, opcode << 11, 0, 0, 0, 0)
    data = udp_exchange(server.port, packet)
    assert data is not None
    reply = dns.message.from_wire(data)
    assert (reply.id, reply.rcode(), reply.opcode()) == (0x4242, dns.rcode.NOTIMP, opcode)
    assert reply.flags & dns.flags.QR


def test_header_only_query_is_still_formerr(server: ResolverProcess) -> None:
    data = udp_exchange(server.port, struct.pack("!HHHHHH", 0x4343, 0x0100, 0, 0, 0, 0))
    assert data is not None
    reply = dns.message.from_wire(data)
    assert (reply.id, reply.rcode(), reply.opcode()) == (0x4343, dns.rcode.FORMERR, dns.opcode.QUERY)
