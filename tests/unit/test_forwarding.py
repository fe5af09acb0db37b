"""Forwarding decisions on the injected clock: the in-flight table (coalescing, shedding, prefetch admission),
serve-stale and prefetch through the real pipeline and cache, and the net glue that carries out what they decide.

No sockets and no sleeps: time is the ``Clock`` the pipeline is given, and the upstream pool is a recorder
that answers when the test says so.
"""

from __future__ import annotations

from collections.abc import Callable

import dns.edns
import dns.message
import dns.rcode

from resolver.core import wire
from resolver.core.cache import Cache, CacheLimits
from resolver.core.forwarding import (
    JOINED,
    SHED,
    SHED_CLIENT,
    SHED_HEAVY,
    SHED_PENDING,
    START,
    Inflight,
    Prefetch,
)
from resolver.core.pipeline import Pipeline
from resolver.core.stats import CACHED, ERROR, FORWARDED, SHED_REASONS, STALE, UDP, Stats
from resolver.net.forwarder import Forwarder
from tests.unit.test_core import Clock, make_query, policy, upstream_reply

NAME = "www.example.test"


def answer(query: wire.Query, ttl: int, address: str = "192.0.2.1") -> bytes:
    return upstream_reply(wire.upstream_query(query, 7), answers=[("A", ttl, address)], qid=7)


def ask(pipe: Pipeline, name: str = NAME) -> bytes | wire.Query | Prefetch | None:
    return pipe.on_query(make_query(name), UDP, "127.0.0.1")


class Upstreams:
    """Records what the forwarder sends; the test answers each question when it likes."""

    def __init__(self) -> None:
        self.asked: list[tuple[wire.Query, Callable[[wire.Query, bytes | None], None]]] = []

    def resolve(self, query: wire.Query, done: Callable[[wire.Query, bytes | None], None]) -> None:
        self.asked.append((query, done))


def setup(limits: CacheLimits | None = None) -> tuple[Clock, Stats, Pipeline, Upstreams, Forwarder]:
    clock, stats = Clock(), Stats()
    pipe = Pipeline(policy(), Cache(limits or CacheLimits()), stats, clock, lambda: 1e9)
    upstreams = Upstreams()
    return clock, stats, pipe, upstreams, Forwarder(pipe, upstreams)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the in-flight table


def test_identical_misses_share_one_upstream_question() -> None:
    inflight = Inflight(limit=4)
    first = wire.parse_query(make_query(NAME))
    second = wire.parse_query(make_query(NAME))
    other = wire.parse_query(make_query("other.example.test"))
    got: list[bytes] = []
    assert inflight.admit(first, got.append) == START
    assert inflight.admit(second, got.append) == JOINED
    assert inflight.admit(other, got.append) == START
    assert [q for q, _ in inflight.settle(first)] == [first, second]
    assert inflight.settle(first) == [] and len(inflight) == 1


def test_a_full_table_sheds_and_prefetch_keeps_half_for_clients() -> None:
    inflight = Inflight(limit=4)
    queries = [wire.parse_query(make_query(f"n{i}.example.test")) for i in range(5)]
    assert [inflight.admit_prefetch(q) for q in queries[:3]] == [True, True, False]  # half the table, no more
    assert [inflight.admit(q, print) for q in queries[2:5]] == [START, START, SHED]
    assert not inflight.admit_prefetch(queries[2]), "a refresh never joins a question in flight"


def miss(name: str, client: str) -> wire.Query:
    query = wire.parse_query(make_query(name))
    query.client = client
    return query


def test_each_address_and_network_has_a_quota() -> None:
    inflight = Inflight(limit=100, per_address=3, per_network=5)
    flooder = [inflight.admit(miss(f"f{i}.example.test", "10.0.0.2"), print) for i in range(4)]
    assert flooder == [START, START, START, SHED_CLIENT]
    assert inflight.admit(miss("f0.example.test", "10.0.0.2"), print) == SHED_CLIENT, "a join counts too"
    # Neighbours in the /24 share what the network has left; another /24 does not.
    assert [inflight.admit(miss(f"n{i}.example.test", f"10.0.0.{3 + i}"), print) for i in range(3)] == [
        START, START, SHED_CLIENT]
    assert inflight.admit(miss("f0.example.test", "10.0.1.2"), print) == JOINED
    # IPv6: the /56 is the network.
    six = [inflight.admit(miss(f"s{i}.example.test", f"2001:db8:0:{i:x}::1"), print) for i in (0x00, 0xff, 0x100)]
    assert six == [START, START, START]
    assert inflight.network_of("2001:db8:0:ff::1") == inflight.network_of("2001:db8::1") != \
        inflight.network_of("2001:db8:0:100::1")
    # An answer gives the quota back.
    inflight.settle(miss("f0.example.test", ""))
    assert inflight.admit(miss("f9.example.test", "10.0.0.2"), print) == START
    assert inflight.by_address["10.0.0.2"] == 3 and "10.0.1.2" not in inflight.by_address


def test_near_full_the_heaviest_networks_are_shed_first() -> None:
    inflight = Inflight(limit=8, per_address=8, per_network=8)
    assert [inflight.admit(miss(f"h{i}.example.test", "10.0.0.2"), print) for i in range(5)] == [START] * 5
    assert inflight.admit(miss("l0.example.test", "10.9.0.2"), print) == START  # 6 of 8: three quarters
    assert inflight.admit(miss("h5.example.test", "10.0.0.2"), print) == SHED_HEAVY  # 5 of 6: above the average
    assert inflight.admit(miss("l1.example.test", "10.9.0.2"), print) == START  # 1 of 6: below it
    assert inflight.admit(miss("n0.example.test", "10.8.0.2"), print) == START  # a newcomer: the last slot
    assert inflight.admit(miss("n1.example.test", "10.7.0.2"), print) == SHED  # full: everyone waits
    assert inflight.admit(miss("h0.example.test", "10.0.0.3"), print) == JOINED  # (a join takes no slot)
    for i in range(5):
        inflight.settle(miss(f"h{i}.example.test", ""))
    assert inflight.clients == 3 and inflight.by_network == {"10.9.0": 2, "10.8.0": 1}


def test_the_table_of_waiting_clients_is_bounded_too() -> None:
    inflight = Inflight(limit=10, per_address=100, per_network=100, max_waiting=3)
    assert [inflight.admit(miss("same.example.test", f"10.0.{i}.1"), print) for i in range(4)] == [
        START, JOINED, JOINED, SHED]


def test_a_shed_question_gets_servfail_with_its_reason_counted() -> None:
    _, stats, pipe, upstreams, forwarder = setup()
    pipe.inflight.per_address = 1
    replies: list[bytes] = []
    for name in ("a.example.test", "b.example.test"):
        query = ask(pipe, name)
        assert isinstance(query, wire.Query)
        forwarder.forward(query, replies.append)
    reply = dns.message.from_wire(replies[0])
    assert reply.rcode() == dns.rcode.SERVFAIL and len(upstreams.asked) == 1
    assert [(o.code, o.text) for o in reply.options if o.otype == dns.edns.EDE] == [
        (0, "resolver busy (client_quota): try again later")]
    assert stats.shed == 1 and dict(zip(SHED_REASONS, stats.shed_by, strict=True)) == {
        "inflight_full": 0, "client_quota": 1, "heaviest_client": 0, "tcp_pending": 0}
    query = ask(pipe, "c.example.test")
    assert isinstance(query, wire.Query)
    pipe.on_shed(query)  # a transport's own bound (TCP pipelining), the default reason
    assert stats.shed == 2 and stats.shed_by[SHED_PENDING - SHED] == 1


# ------------------------------------------------------------------------------------------ through the pipeline


def test_coalesced_misses_get_one_upstream_question_and_each_its_own_answer() -> None:
    _, stats, pipe, upstreams, forwarder = setup()
    replies: list[bytes] = []
    for _ in range(3):
        query = ask(pipe)
        assert isinstance(query, wire.Query)
        forwarder.forward(query, replies.append)
    assert len(upstreams.asked) == 1
    sent, done = upstreams.asked[0]
    done(sent, answer(sent, 60))
    assert len(replies) == 3 and len({r[:2] for r in replies}) == 3, "each client gets its own ID back"
    assert all(dns.message.from_wire(r).answer[0][0].to_text() == "192.0.2.1" for r in replies)
    assert stats.count(UDP, FORWARDED) == 3 and len(pipe.inflight) == 0


def test_shed_miss_is_answered_at_once() -> None:
    _, stats, pipe, upstreams, forwarder = setup()
    pipe.inflight.limit = 1
    replies: list[bytes] = []
    for name in ("a.example.test", "b.example.test"):
        query = ask(pipe, name)
        assert isinstance(query, wire.Query)
        forwarder.forward(query, replies.append)
    assert len(upstreams.asked) == 1
    assert [dns.message.from_wire(r).rcode() for r in replies] == [dns.rcode.SERVFAIL]
    assert stats.shed == 1 and stats.count(UDP, ERROR) == 1


def test_stale_answer_when_the_upstream_fails_after_expiry() -> None:
    clock, stats, pipe, upstreams, forwarder = setup()
    first = ask(pipe)
    assert isinstance(first, wire.Query)
    pipe.on_reply(first, answer(first, 1))
    clock.now += 1.5  # the one-second TTL has run out
    again = ask(pipe)
    assert isinstance(again, wire.Query), "an expired entry is asked upstream first"
    replies: list[bytes] = []
    forwarder.forward(again, replies.append)
    sent, done = upstreams.asked[0]
    done(sent, None)  # every upstream failed
    reply = dns.message.from_wire(replies[0])
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].to_text() == "192.0.2.1"
    assert reply.answer[0].ttl == 30 and [o.code for o in reply.options if o.otype == dns.edns.EDE] == [3]
    assert stats.count(UDP, STALE) == 1


def test_stale_answers_can_be_switched_off() -> None:
    clock, _, pipe, _, _ = setup(CacheLimits(stale_max_age=0))
    first = ask(pipe)
    assert isinstance(first, wire.Query)
    pipe.on_reply(first, answer(first, 1))
    clock.now += 1.5
    again = ask(pipe)
    assert isinstance(again, wire.Query)
    assert dns.message.from_wire(pipe.on_reply(again, None)).rcode() == dns.rcode.SERVFAIL


def test_popular_entry_is_refreshed_before_it_expires() -> None:
    clock, stats, pipe, upstreams, forwarder = setup(CacheLimits(prefetch_fraction=0.75, prefetch_min_hits=2))
    first = ask(pipe)
    assert isinstance(first, wire.Query)
    pipe.on_reply(first, answer(first, 4))
    assert all(type(ask(pipe)) is bytes for _ in range(2))  # popular now, and not yet in the refresh window
    clock.now += 1.2  # past a quarter of the TTL: inside the window
    ticket = ask(pipe)
    assert isinstance(ticket, Prefetch), ticket
    assert dns.message.from_wire(ticket.answer).answer[0][0].to_text() == "192.0.2.1"  # answered from the cache
    assert type(ask(pipe)) is bytes, "one refresh per entry, not one per answer"
    forwarder.prefetch(ticket.query)
    sent, done = upstreams.asked[0]
    done(sent, answer(sent, 4, "192.0.2.2"))
    clock.now += 3.0  # the original entry has expired; the refreshed one has not
    served = ask(pipe)
    assert type(served) is bytes
    assert dns.message.from_wire(served).answer[0][0].to_text() == "192.0.2.2"
    assert stats.count(UDP, CACHED) == 5 and len(upstreams.asked) == 1 and len(pipe.inflight) == 0


def test_a_failed_refresh_leaves_the_entry_to_expire() -> None:
    clock, _, pipe, upstreams, forwarder = setup(CacheLimits(prefetch_fraction=0.75, prefetch_min_hits=1))
    first = ask(pipe)
    assert isinstance(first, wire.Query)
    pipe.on_reply(first, answer(first, 4))
    ask(pipe)
    clock.now += 1.2
    ticket = ask(pipe)
    assert isinstance(ticket, Prefetch)
    forwarder.prefetch(ticket.query)
    sent, done = upstreams.asked[0]
    done(sent, upstream_reply(wire.upstream_query(sent, 7), rcode=dns.rcode.SERVFAIL, qid=7))
    served = ask(pipe)
    assert type(served) is bytes and dns.message.from_wire(served).answer[0][0].to_text() == "192.0.2.1"
