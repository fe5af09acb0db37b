"""UDP and TCP as a client sees them: truncation, connection reuse, pipelining, idle close, IPv6, garbage."""

from __future__ import annotations

import random
import socket
import struct

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.authserver import AuthServer
from tests.support.resolverproc import (
    ResolverFactory,
    ResolverProcess,
    addresses,
    ipv6_loopback_available,
    make_query,
    tcp_connect,
    tcp_recv,
    tcp_send,
    udp_exchange,
)
from tests.support.zone import BIG, BIG_TXT, MAIL, MAIL_MX, WWW, WWW_V4, WWW_V6

FORMERR = dns.rcode.FORMERR


@pytest.fixture(scope="module")
def server(module_resolver_factory: ResolverFactory) -> ResolverProcess:
    return module_resolver_factory.shared(None)


# ------------------------------------------------------------------ truncation towards the client


def test_large_answer_over_udp_without_edns_is_truncated(server: ResolverProcess) -> None:
    q = make_query(BIG, "TXT", edns=False)
    wire = udp_exchange(server.port, q.to_wire())
    assert wire is not None, "no reply"
    assert len(wire) <= 512, f"{len(wire)} bytes over UDP to a client without EDNS"
    reply = dns.message.from_wire(wire)
    assert reply.id == q.id
    assert reply.flags & dns.flags.TC, "answer does not fit in 512 bytes but TC is not set"


def test_large_answer_over_udp_with_edns_respects_payload_size(server: ResolverProcess) -> None:
    q = make_query(BIG, "TXT", edns=True, payload=1232)
    wire = udp_exchange(server.port, q.to_wire())
    assert wire is not None, "no reply"
    assert len(wire) <= 1232
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC, "a ~3.7 KB answer was not truncated for a 1232-byte buffer"


def test_large_answer_over_tcp_is_complete(server: ResolverProcess) -> None:
    reply = server.query(BIG, "TXT", tcp=True, edns=False)
    assert not reply.flags & dns.flags.TC
    assert addresses(reply, "TXT") == sorted(f'"{t}"' for t in BIG_TXT)


def test_small_answer_over_udp_without_edns_is_not_truncated(server: ResolverProcess) -> None:
    reply = server.query(WWW, "A", edns=False)
    assert not reply.flags & dns.flags.TC
    assert addresses(reply, "A") == [WWW_V4]


# ------------------------------------------------------------------ TCP connections


def test_several_queries_on_one_tcp_connection(server: ResolverProcess) -> None:
    asks = [
        (WWW, "A", [WWW_V4]),
        (WWW, "AAAA", [WWW_V6]),
        ("www.tiktok.com", "A", ["0.0.0.0"]),
        (MAIL, "MX", [MAIL_MX]),
    ]
    with tcp_connect(server.port) as sock:
        for name, rtype, expected in asks:
            q = make_query(name, rtype)
            tcp_send(sock, q.to_wire())
            wire = tcp_recv(sock)
            assert wire is not None, f"connection closed before answering {name} {rtype}"
            reply = dns.message.from_wire(wire)
            assert reply.id == q.id
            assert addresses(reply, rtype) == expected


def test_tcp_query_arriving_in_pieces(server: ResolverProcess) -> None:
    q = make_query(WWW, "A")
    wire = q.to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with tcp_connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(framed)):  # one byte per segment: the length prefix split too
            sock.sendall(framed[i : i + 1])
        answer = tcp_recv(sock)
    assert answer is not None
    reply = dns.message.from_wire(answer)
    assert reply.id == q.id
    assert addresses(reply, "A") == [WWW_V4]


def test_pipelined_tcp_queries_all_answered_by_id(server: ResolverProcess) -> None:
    asks = {0x1111: (WWW, "A", [WWW_V4]), 0x2222: ("www.tiktok.com", "A", ["0.0.0.0"]), 0x3333: (MAIL, "MX", [MAIL_MX])}
    frames = b""
    for qid, (name, rtype, _) in asks.items():
        q = make_query(name, rtype)
        q.id = qid
        wire = q.to_wire()
        frames += struct.pack("!H", len(wire)) + wire
    with tcp_connect(server.port) as sock:
        sock.sendall(frames)  # all three before reading anything
        replies: dict[int, dns.message.Message] = {}
        for _ in asks:
            answer = tcp_recv(sock)
            assert answer is not None, f"connection closed after {len(replies)} of {len(asks)} answers"
            reply = dns.message.from_wire(answer)
            replies[reply.id] = reply
    assert sorted(replies) == sorted(asks)
    for qid, (name, rtype, expected) in asks.items():
        assert replies[qid].question[0].name.to_text() == name + "."
        assert addresses(replies[qid], rtype) == expected


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="module")
def idle_server(module_resolver_factory: ResolverFactory) -> ResolverProcess:
    return module_resolver_factory.shared({"tcp": {"idle_timeout": 1}})


def test_idle_tcp_connection_is_closed_by_server(idle_server: ResolverProcess) -> None:
    with tcp_connect(idle_server.port) as sock:
        # idle_timeout is 1 s; allow a generous 10 s before calling it "never closed".
        assert _closed_by_server(sock, timeout=10), "server kept an idle TCP connection open"


def test_tcp_connection_idle_after_an_answer_is_closed(idle_server: ResolverProcess) -> None:
    with tcp_connect(idle_server.port) as sock:
        q = make_query(WWW, "A")
        tcp_send(sock, q.to_wire())
        wire = tcp_recv(sock)
        assert wire is not None
        assert addresses(dns.message.from_wire(wire), "A") == [WWW_V4]
        assert _closed_by_server(sock, timeout=10), "server kept an idle TCP connection open"


# ------------------------------------------------------------------ IPv6


def test_ipv6_listen_answers_udp_and_tcp(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    if not ipv6_loopback_available():
        pytest.skip("::1 is not available on this host")
    server = resolver_factory(listen_host="::1")
    assert server.host == "::1"
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
    assert addresses(server.query(WWW, "AAAA", tcp=True), "AAAA") == [WWW_V6]
    assert addresses(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert addresses(server.query("www.tiktok.com", "AAAA", tcp=True), "AAAA") == ["::"]


# ------------------------------------------------------------------ garbage


def _header(qid: int, flags: int, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


_QTAIL = struct.pack("!HH", 1, 1)  # type A, class IN


def _response_packet() -> bytes:
    q = make_query(WWW, "A")
    q.id = 0x7777
    r = dns.message.make_response(q)
    return r.to_wire()


GARBAGE = {
    "random-bytes": random.Random(20240101).randbytes(48),
    "five-bytes": b"\x12\x34\x01\x00\x00",
    "claims-5-questions-has-none": _header(0xBEEF, 0x0100, qd=5),
    "compression-loop-in-question": _header(0xC0DE, 0x0100, qd=1) + b"\xc0\x0c" + _QTAIL,
    "label-longer-than-63": _header(0x0A0B, 0x0100, qd=1) + b"\x40" + b"a" * 64 + b"\x00" + _QTAIL,
    "question-cut-short": _header(0x3333, 0x0100, qd=1) + b"\x03www\x07exa",
    "response-packet": _response_packet(),
}


def _check_garbage_reply(wire: bytes, garbage: bytes, label: str) -> None:
    """A reply to garbage may only be FORMERR carrying the garbage's ID."""
    assert len(wire) >= 12, f"{label}: reply shorter than a header: {wire!r}"
    qid, flags = struct.unpack("!HH", wire[:4])
    assert qid == struct.unpack("!H", garbage[:2])[0], f"{label}: reply ID {qid:#x} is not the packet's"
    assert flags & 0x8000, f"{label}: reply without QR"
    assert flags & 0xF == FORMERR, f"{label}: reply rcode {flags & 0xF}, expected FORMERR or no reply"


@pytest.mark.parametrize("label", sorted(GARBAGE))
def test_udp_garbage_gets_formerr_or_nothing_and_server_keeps_answering(server: ResolverProcess, label: str) -> None:
    garbage = GARBAGE[label]
    if label != "response-packet":
        with pytest.raises(Exception):  # noqa: B017 - precondition: this really is not a parseable query
            dns.message.from_wire(garbage)
    good = make_query(WWW, "A")
    good.id = 0x5A5A
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", server.port))
        sock.send(garbage)
        sock.send(good.to_wire())
        while True:
            try:
                wire = sock.recv(65535)
            except TimeoutError:
                pytest.fail(f"{label}: a valid query sent after the garbage was not answered")
            if wire[:2] == struct.pack("!H", good.id):
                reply = dns.message.from_wire(wire)
                assert addresses(reply, "A") == [WWW_V4]
                break
            _check_garbage_reply(wire, garbage, label)
        sock.setblocking(False)
        while True:  # anything else that already arrived must also be a FORMERR for the garbage
            try:
                wire = sock.recv(65535)
            except BlockingIOError:
                break
            _check_garbage_reply(wire, garbage, label)
    assert server.alive()


@pytest.mark.parametrize("label", sorted(GARBAGE))
def test_tcp_garbage_gets_formerr_or_close_and_server_keeps_answering(server: ResolverProcess, label: str) -> None:
    garbage = GARBAGE[label]
    good = make_query(WWW, "A")
    good.id = 0x5A5A
    answered = False
    with tcp_connect(server.port) as sock:
        tcp_send(sock, garbage)
        try:
            tcp_send(sock, good.to_wire())
            while True:
                wire = tcp_recv(sock)
                if wire is None:
                    break  # the server closed the connection: allowed
                if wire[:2] == struct.pack("!H", good.id):
                    assert addresses(dns.message.from_wire(wire), "A") == [WWW_V4]
                    answered = True
                    break
                _check_garbage_reply(wire, garbage, label)
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed by the server: allowed
    if not answered:
        reply = server.query(WWW, "A", tcp=True)
        assert addresses(reply, "A") == [WWW_V4]
    assert server.alive()


def test_server_still_alive_after_garbage(server: ResolverProcess) -> None:
    assert server.alive(), server.stderr_text()
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
    assert addresses(server.query(WWW, "A", tcp=True), "A") == [WWW_V4]
