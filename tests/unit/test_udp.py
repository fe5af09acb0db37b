"""The UDP transport against a scripted upstream socket on loopback: random source ports, the 0x20 echo checked
exactly, near misses reported to the question they name, and retransmissions sent from a port of their own."""

from __future__ import annotations

import _socket
import asyncio
import itertools
import socket
from collections.abc import Iterator

import pytest

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError
from resolver.net.attempt import Attempt, Sweep
from resolver.net.udp import FIRST_PORT, RandomIds, UdpTransport, bind_random


class Recorder:
    """An ``Owner`` that keeps what its attempts report."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Attempt, object]] = []
        self.changed = asyncio.Event()

    def finished(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> None:
        self.events.append(("finished", attempt, reply if reply is not None else error))
        self.changed.set()

    def timed_out(self, attempt: Attempt) -> None:
        self.events.append(("timed out", attempt, None))

    def near_miss(self, attempt: Attempt, case_only: bool) -> None:
        self.events.append(("near miss", attempt, case_only))
        self.changed.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()


class NotUsed:
    def send(self, attempt: Attempt) -> None:
        raise AssertionError("no TCP here")

    def close(self) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def question(name: str = "www.Example.test") -> Query:
    return wire.parse_query(wire.HEADER.pack(7, wire.RD, 1, 0, 0, 0) + wire.encode_name(name) + b"\x00\x01\x00\x01")


def answer(packet: bytes, *, qid: int | None = None, name: bytes | None = None) -> bytes:
    """The upstream's reply to ``packet``: the packet itself with QR set, its ID or name changed when given."""
    reply = bytearray(packet)
    reply[2] |= 0x80
    if qid is not None:
        reply[0:2] = qid.to_bytes(2, "big")
    if name is not None:
        reply[12 : 12 + len(name)] = name
    return bytes(reply)


async def setup(upstream: socket.socket) -> tuple[UdpTransport, Stats, Endpoint]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    transport = UdpTransport(loop, Sweep(loop), RandomIds(), stats, NotUsed())
    return transport, stats, Endpoint("127.0.0.1", upstream.getsockname()[1])


def attempt_for(endpoint: Endpoint, query: Query, owner: Recorder, name: bytes | None = None,
                after: Attempt | None = None) -> Attempt:
    now = asyncio.get_running_loop().time()
    return Attempt(endpoint, query, now, 3.0, now + 3.0, owner, 0.0, name, after)


async def test_a_reply_must_echo_the_random_case_exactly(upstream: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    transport, stats, endpoint = await setup(upstream)
    owner = Recorder()
    query = question()
    mixed = transport.ids.mixed_case(query.qname)
    while mixed == query.qname:  # (all lowercase by chance: nothing to check)
        mixed = transport.ids.mixed_case(query.qname)
    sent = attempt_for(endpoint, query, owner, mixed)
    transport.send(sent)
    packet, peer = await loop.sock_recvfrom(upstream, 65535)
    assert packet[12 : 12 + len(mixed)] == mixed
    upstream.sendto(answer(packet, name=query.qname), peer)  # lowercased: not our case
    await owner.wait(1)
    assert owner.events == [("near miss", sent, True)] and stats.upstream_mismatch == 1
    good = answer(packet)
    upstream.sendto(good, peer)
    await owner.wait(2)
    assert owner.events[1] == ("finished", sent, good)
    transport.close()


async def test_a_reply_with_an_unknown_id_is_a_near_miss_of_the_question_it_names(upstream: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    transport, stats, endpoint = await setup(upstream)
    owner = Recorder()
    ours, other = question("a.example.test"), question("b.example.test")
    sent = attempt_for(endpoint, ours, owner)
    transport.send(sent)
    packet, peer = await loop.sock_recvfrom(upstream, 65535)
    qid = packet[0] << 8 | packet[1]
    upstream.sendto(answer(packet, qid=qid ^ 1), peer)  # wrong ID, our question: a spoofer's guess
    stranger = answer(wire.upstream_query(other, qid ^ 2))
    upstream.sendto(stranger, peer)  # wrong ID, a question nobody asked here
    upstream.sendto(answer(packet), peer)
    await owner.wait(2)
    assert [(kind, attempt) for kind, attempt, _ in owner.events] == [("near miss", sent), ("finished", sent)]
    assert stats.upstream_mismatch == 2
    transport.close()


async def test_a_retransmission_goes_out_from_another_port_and_both_are_awaited(upstream: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    transport, _, endpoint = await setup(upstream)
    owner = Recorder()
    query = question()
    first = attempt_for(endpoint, query, owner)
    transport.send(first)
    first_packet, first_peer = await loop.sock_recvfrom(upstream, 65535)
    unrelated = attempt_for(endpoint, question("other.example.test"), Recorder())
    transport.send(unrelated)  # a question of its own shares the socket
    _, unrelated_peer = await loop.sock_recvfrom(upstream, 65535)
    assert unrelated_peer == first_peer
    again = attempt_for(endpoint, query, owner, after=first)
    transport.send(again)
    again_packet, again_peer = await loop.sock_recvfrom(upstream, 65535)
    assert again_peer != first_peer and again_packet[:2] != first_packet[:2]
    assert min(first_peer[1], again_peer[1]) >= FIRST_PORT
    upstream.sendto(answer(first_packet), first_peer)  # the late reply to the first send
    await owner.wait(1)
    assert owner.events == [("finished", first, answer(first_packet))]
    transport.close()


def test_ports_are_drawn_over_every_unprivileged_port() -> None:
    ids = RandomIds()
    ports = [ids.port() for _ in range(20000)]
    assert min(ports) >= FIRST_PORT and max(ports) <= 65535
    assert min(ports) < FIRST_PORT + 1000 and max(ports) > 65535 - 1000  # far outside 32768-60999
    assert sum(p < 32768 for p in ports) > 8000  # about half


def test_bind_skips_avoided_and_taken_ports_then_leaves_it_to_the_kernel() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        busy = taken.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("0.0.0.0", 0))
            free = probe.getsockname()[1]
        sock = _socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            bind_random(sock, "0.0.0.0", iter([5353, busy, free]).__next__, {5353})
            assert sock.getsockname()[1] == free
        finally:
            sock.close()
        sock = _socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            bind_random(sock, "0.0.0.0", itertools.repeat(busy).__next__, ())
            assert sock.getsockname()[1] == 0  # unbound: connect will take a port from the kernel
        finally:
            sock.close()


def test_mixed_case_changes_only_the_case_of_letters() -> None:
    ids = RandomIds()
    name = wire.encode_name("a-1.b_2.xn--c3.example")
    seen = {ids.mixed_case(name) for _ in range(200)}
    assert all(m.lower() == name for m in seen)
    assert len(seen) > 100
    upper = [sum(m[i] != name[i] for m in seen) for i in range(len(name))]
    assert all(u == 0 for i, u in enumerate(upper) if not 0x61 <= name[i] <= 0x7A)
    assert all(u > 0 for i, u in enumerate(upper) if 0x61 <= name[i] <= 0x7A)


def test_ids_and_ports_drawn_between_odd_length_names_never_run_off_the_random_buffer() -> None:
    """An odd-length name leaves the draw position odd; at the end of the 4 KiB buffer one byte is left over, and
    an ID drawn there must come from a fresh buffer (it raised IndexError, and a whole batch of queries was lost)."""
    ids = RandomIds()
    name = wire.encode_name("abc.example")  # 13 bytes
    assert len(name) % 2 == 1
    for _ in range(3 * 4096):
        ids.mixed_case(name)
        assert 0 <= ids.next() <= 0xFFFF
        assert FIRST_PORT <= ids.port() <= 0xFFFF


async def test_a_failed_send_fails_the_attempt_later_not_inside_send(upstream: socket.socket) -> None:
    transport, _, _ = await setup(upstream)
    owner = Recorder()
    sent = attempt_for(Endpoint("127.0.0.1", 0), question(), owner)  # port 0: connect refuses it
    transport.send(sent)
    assert owner.events == []
    await owner.wait(1)
    assert owner.events[0][0] == "finished" and isinstance(owner.events[0][2], UpstreamError)
    transport.close()
