"""UDP under a burst, as the listener reads it a batch at a time (recvmmsg/sendmmsg when the C extension is built,
recvfrom/sendto when not): every query answered to the socket it came from, with its ID and the right answer,
whether it was blocked, answered from the cache or forwarded; an oversized datagram in the middle of a batch costs
nothing but itself."""

from __future__ import annotations

import socket
import time

import dns.message
import pytest

from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, ipv6_loopback_available
from tests.support.zone import WWW, WWW_V4

BLOCKED = "www.tiktok.com"


@pytest.fixture(scope="module")
def server(module_resolver_factory: ResolverFactory) -> ResolverProcess:
    return module_resolver_factory.shared(None)


def _collect(sockets: list[socket.socket], expected: int, seconds: float = 5.0) -> dict[int, list[bytes]]:
    """Every datagram each socket (by index) receives until ``expected`` in all, or the time is up."""
    got: dict[int, list[bytes]] = {i: [] for i in range(len(sockets))}
    deadline = time.monotonic() + seconds
    for sock in sockets:
        sock.setblocking(False)
    while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
        idle = True
        for i, sock in enumerate(sockets):
            try:
                got[i].append(sock.recv(65535))
                idle = False
            except BlockingIOError:
                pass
        if idle:
            time.sleep(0.005)
    return got


def test_a_burst_from_several_clients_is_answered_to_each_with_its_own_ids(server: ResolverProcess) -> None:
    server.query(WWW, "A")  # in the cache, so the burst mixes cached, blocked and forwarded questions
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        sent: dict[int, dict[int, str]] = {}
        for i, sock in enumerate(sockets):
            sent[i] = {}
            for n in range(40):
                name = (WWW, BLOCKED, f"burst{i}-{n}.example.com")[n % 3]
                query = dns.message.make_query(name, "A")
                query.id = i * 1000 + n
                sent[i][query.id] = name
                sock.sendto(query.to_wire(), ("127.0.0.1", server.port))
        got = _collect(sockets, 120)
    finally:
        for sock in sockets:
            sock.close()
    for i, replies in got.items():
        answers = {reply.id: reply for reply in map(dns.message.from_wire, replies)}
        assert set(answers) == set(sent[i]), f"socket {i}: answers for {sorted(set(answers) ^ set(sent[i]))}"
        for qid, name in sent[i].items():
            assert answers[qid].question[0].name.to_text() == name + "."
            if name == WWW:
                assert addresses(answers[qid], "A") == [WWW_V4]
            elif name == BLOCKED:
                assert addresses(answers[qid], "A") == ["0.0.0.0"]
    assert server.alive()


def test_an_oversized_datagram_in_a_batch_is_dropped_and_its_neighbours_answered(server: ResolverProcess) -> None:
    before, oversized, after = (dns.message.make_query(name, "A") for name in (WWW, WWW, BLOCKED))
    before.id, oversized.id, after.id = 1, 2, 3
    huge = oversized.to_wire() + b"\0" * 5000  # longer than any query a client sends
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in (before.to_wire(), huge, after.to_wire()):
            sock.sendto(packet, ("127.0.0.1", server.port))
        ids: set[int] = set()
        deadline = time.monotonic() + 5
        while not {before.id, after.id} <= ids and time.monotonic() < deadline:  # the huge one may be answered too
            ids.update(int.from_bytes(wire[:2], "big") for wire in _collect([sock], 1, 0.5)[0])
    assert {before.id, after.id} <= ids
    assert server.alive()


def test_a_burst_from_an_ipv6_client_is_answered(resolver_factory: ResolverFactory) -> None:
    if not ipv6_loopback_available():
        pytest.skip("::1 is not available on this host")
    six = resolver_factory(listen_host="::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        queries = [dns.message.make_query(BLOCKED, "A") for _ in range(20)]
        for query in queries:
            sock.sendto(query.to_wire(), ("::1", six.port))
        got = _collect([sock], 20)[0]
    assert {dns.message.from_wire(wire).id for wire in got} == {q.id for q in queries}
