"""The test upstream itself, asked directly with dnspython: if these fail, the other integration tests lie."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.authserver import FLOOD, POISON_V4, AuthServer
from tests.support.resolverproc import (
    addresses,
    ipv6_loopback_available,
    make_query,
    query,
    tcp_connect,
    tcp_recv,
    tcp_send,
    udp_exchange,
)
from tests.support.zone import ALIAS, BIG, BIG_TXT, MAIL, MAIL_MX, MISSING, WWW, WWW_V4, WWW_V6, populate


@pytest.fixture(params=["127.0.0.1", "::1"])
def server(request: pytest.FixtureRequest) -> Iterator[AuthServer]:
    if request.param == "::1" and not ipv6_loopback_available():
        pytest.skip("::1 is not available on this host")
    with AuthServer(request.param) as s:
        yield populate(s)


def ask(s: AuthServer, name: str, rtype: str = "A", **kw: Any) -> dns.message.Message:
    return query(s.port, name, rtype, host=s.host, **kw)


def test_answers_with_aa_and_echoes_case_and_edns(server: AuthServer) -> None:
    r = ask(server, "WwW.Example.TEST")
    assert addresses(r, "A") == [WWW_V4]
    assert r.flags & dns.flags.AA
    assert r.question[0].name.to_text() == "WwW.Example.TEST."
    assert r.opt is not None
    assert ask(server, WWW, edns=False).opt is None
    assert addresses(ask(server, WWW, "AAAA"), "AAAA") == [WWW_V6]
    assert addresses(ask(server, MAIL, "MX"), "MX") == [MAIL_MX]
    assert addresses(ask(server, ALIAS), "A") == [WWW_V4]


def test_nodata_and_nxdomain_carry_soa(server: AuthServer) -> None:
    nodata = ask(server, WWW, "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
    nx = ask(server, MISSING)
    assert nx.rcode() == dns.rcode.NXDOMAIN
    for r in (nodata, nx):
        (soa,) = r.authority
        assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 300 and soa[0].minimum == 60
    assert ask(server, "example.test").rcode() == dns.rcode.NOERROR  # empty non-terminal


def test_big_answer_truncated_over_udp_complete_over_tcp(server: AuthServer) -> None:
    udp = ask(server, BIG, "TXT")
    assert udp.flags & dns.flags.TC and udp.answer == []
    tcp = ask(server, BIG, "TXT", tcp=True)
    assert addresses(tcp, "TXT") == sorted(f'"{t}"' for t in BIG_TXT)
    assert len(tcp.to_wire()) > 1232
    assert server.count(BIG, "TXT", transport="udp") == 1
    assert server.count(BIG, "TXT", transport="tcp") == 1


def test_tcp_pipelined_queries(server: AuthServer) -> None:
    qs = [make_query(n, "A") for n in (WWW, "mx.example.test", "nottiktok.com")]
    with tcp_connect(server.port, host=server.host) as sock:
        for q in qs:
            tcp_send(sock, q.to_wire())
        ids = set()
        for _ in qs:
            wire = tcp_recv(sock)
            assert wire is not None
            ids.add(dns.message.from_wire(wire).id)
    assert ids == {q.id for q in qs}


def test_records_every_query(server: AuthServer) -> None:
    ask(server, WWW, rd=False, edns=False)
    ask(server, WWW, "AAAA", tcp=True)
    seen = server.seen(WWW)
    assert [(s.qtype, s.transport, s.had_edns, s.rd) for s in seen] == [
        ("A", "udp", False, False),
        ("AAAA", "tcp", True, True),
    ]
    assert server.count("WWW.example.test.") == 2
    assert server.wait_for_queries(2, timeout=1)


@pytest.mark.parametrize(("behaviour", "rcode"), [("servfail", dns.rcode.SERVFAIL), ("refused", dns.rcode.REFUSED)])
def test_error_rcodes(server: AuthServer, behaviour: str, rcode: int) -> None:
    server.set_behaviour("example.test", behaviour)
    assert ask(server, WWW).rcode() == rcode
    assert addresses(ask(server, "nottiktok.com"), "A") == ["192.0.2.30"]  # other names unaffected


def test_truncate_behaviour(server: AuthServer) -> None:
    server.set_behaviour(WWW, "truncate")
    assert ask(server, WWW).flags & dns.flags.TC
    assert addresses(ask(server, WWW, tcp=True), "A") == [WWW_V4]


@pytest.mark.parametrize("behaviour", ["wrong-id", "wrong-question", "garbage"])
def test_bad_replies_are_not_valid_responses(server: AuthServer, behaviour: str) -> None:
    server.set_behaviour("example.test", behaviour)
    q = make_query(WWW, "A")
    wire = udp_exchange(server.port, q.to_wire(), host=server.host)
    assert wire is not None
    if behaviour == "wrong-id":
        assert struct.unpack("!H", wire[:2])[0] == (q.id + 1) & 0xFFFF
    else:
        assert wire[:2] == q.to_wire()[:2]
    try:
        reply = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        assert behaviour == "garbage"
    else:
        assert not q.is_response(reply)


def test_silent_records_but_never_replies(server: AuthServer) -> None:
    server.set_behaviour("example.test", "silent")
    with pytest.raises(dns.exception.Timeout):
        ask(server, WWW, timeout=0.3)
    assert server.count(WWW) == 1


def test_slow_answers_later_without_blocking_others(server: AuthServer) -> None:
    server.set_behaviour(WWW, "slow:1")
    with tcp_connect(server.port, host=server.host) as sock:
        tcp_send(sock, make_query(WWW, "A").to_wire())
        tcp_send(sock, make_query("mx.example.test", "A").to_wire())
        first = dns.message.from_wire(tcp_recv(sock) or b"")
        second = dns.message.from_wire(tcp_recv(sock) or b"")
    assert first.question[0].name.to_text() == "mx.example.test."
    assert addresses(second, "A") == [WWW_V4]


def test_drop_leaves_the_first_queries_unanswered(server: AuthServer) -> None:
    server.set_behaviour("example.test", "drop:2")
    for _ in range(2):
        with pytest.raises(dns.exception.Timeout):
            ask(server, WWW, timeout=0.3)
    assert addresses(ask(server, WWW), "A") == [WWW_V4]
    with pytest.raises(dns.exception.Timeout):  # each name has its own count
        ask(server, MAIL, "MX", timeout=0.3)
    assert server.count(WWW) == 3
    assert [q.sent_name for q in server.seen(WWW)] == [WWW] * 3


def test_lowercase_echoes_the_question_in_lowercase(server: AuthServer) -> None:
    server.set_behaviour("example.test", "lowercase")
    q = make_query("WwW.Example.TEST", "A")
    wire = udp_exchange(server.port, q.to_wire(), host=server.host)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.question[0].name.to_text() == "www.example.test."
    assert addresses(reply, "A") == [WWW_V4]
    assert server.seen(WWW)[0].sent_name == "WwW.Example.TEST"


def test_spoof_case_sends_a_poisoned_reply_in_the_other_case_then_the_answer(server: AuthServer) -> None:
    server.set_behaviour("example.test", "spoof-case")
    q = make_query("WwW.Example.TEST", "A")
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(q.to_wire(), (server.host, server.port))
        fake, honest = (dns.message.from_wire(sock.recv(65535)) for _ in range(2))
    assert fake.id == q.id and fake.question[0].name.to_text() == "wWw.eXAMPLE.test."
    assert addresses(fake, "A") == [POISON_V4]
    assert honest.question[0].name.to_text() == "WwW.Example.TEST." and addresses(honest, "A") == [WWW_V4]


def test_wrong_id_flood_over_udp_and_the_answer_over_tcp(server: AuthServer) -> None:
    server.set_behaviour("example.test", "wrong-id-flood")
    q = make_query(WWW, "A")
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(q.to_wire(), (server.host, server.port))
        replies = [dns.message.from_wire(sock.recv(65535)) for _ in range(FLOOD)]
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(65535)
    assert all(r.id != q.id and addresses(r, "A") == [POISON_V4] for r in replies)
    assert addresses(ask(server, WWW, tcp=True), "A") == [WWW_V4]
