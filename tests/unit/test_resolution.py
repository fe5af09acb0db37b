"""One question's walk under loss and spoofing, on the fake clock of ``test_upstream``: retransmission on the measured
round trip with backoff, near misses moving a question to TCP, and the per-upstream DNS 0x20 fallback."""

from __future__ import annotations

import logging
from itertools import pairwise

import pytest

from resolver.core import wire
from resolver.net.attempt import SWEEP_SECONDS
from resolver.net.health import CASE_STRIKES, INITIAL_RTO, MAX_RTO, MIN_RTO, UpstreamStats
from resolver.net.resolution import NEAR_MISSES
from tests.unit.test_upstream import TCP, A, B, Net, late, reply_to


def measured(net: Net, *endpoints: object, rtt: float = 0.002) -> Net:
    """As after the start-up probe: a round trip known for each upstream, so its timeout is the floor."""
    for endpoint in endpoints or net.pool.endpoints:
        net.pool.health.stats[endpoint].sampled(rtt)  # type: ignore[index]
    return net


# ------------------------------------------------------------------------------------ the retransmission timeout


def test_the_timeout_follows_rfc_6298_within_its_bounds() -> None:
    stats = UpstreamStats()
    assert stats.rto() == INITIAL_RTO  # nothing measured
    stats.sampled(0.3)
    assert (stats.srtt, stats.rttvar) == (0.3, 0.15)
    assert stats.rto() == pytest.approx(0.3 + 4 * 0.15)
    stats.sampled(0.1)
    assert stats.rttvar == pytest.approx(0.75 * 0.15 + 0.25 * 0.2)
    assert stats.srtt == pytest.approx(0.875 * 0.3 + 0.125 * 0.1)
    for _ in range(200):
        stats.sampled(0.001)
    assert stats.rto() == MIN_RTO  # a loopback round trip: the floor
    stats.sampled(30.0)
    assert stats.rto() == MAX_RTO
    zero = UpstreamStats()
    zero.sampled(0.0)  # a reply within the clock's resolution is a sample too
    assert zero.rto() == MIN_RTO


def test_a_lost_reply_is_asked_again_after_the_timeout_with_a_new_id() -> None:
    net = measured(Net(A, timeout=1.5, deadline=4.0))
    net.ask()
    net.clock.advance(0.15)
    assert net.sends() == [(0.0, "a"), (late(MIN_RTO), "a")]
    first, second = net.udp.all_waiting(A)
    assert first.qid != second.qid and second.after is first
    reply = net.udp.answer(second)
    assert net.answers == [(0.15, reply)]
    assert not net.udp.pending and first.table is None  # the first send is closed: a reply to it now is stale


def test_a_silent_upstream_is_asked_again_with_the_timeout_doubled_each_time() -> None:
    net = measured(Net(A, timeout=1.5, deadline=4.0))
    net.ask()
    net.clock.advance(5)
    times = [at for at, _ in net.sends()]
    gaps = [b - a for a, b in pairwise(times)]
    assert gaps == [pytest.approx(min(MAX_RTO, MIN_RTO * 2 ** i), abs=SWEEP_SECONDS) for i in range(len(gaps))]
    assert len(times) == 6  # 0, 0.1, 0.3, 0.7, 1.5, 3.1: the next would be past the deadline
    assert net.answers == [(late(4.0), None)]
    assert net.pool.upstream_stats[str(A)].timeouts == 1  # one turn ran out, however many sends it made


def test_each_upstream_is_asked_again_in_its_own_turn_and_the_walk_keeps_its_order() -> None:
    net = measured(Net(A, B, timeout=0.5, deadline=2.0))
    net.ask()
    net.clock.advance(0.6)
    assert net.sends() == [(0.0, "a"), (late(0.1), "a"), (late(0.3), "a"), (late(0.5), "b")]
    reply = net.udp.reply(B)
    assert net.answers == [(0.6, reply)]


def test_a_slow_reply_to_the_first_send_is_measured_and_answers() -> None:
    """A reply slower than the timeout still answers (the first send listens on) and teaches the upstream's timeout,
    so the next question does not retransmit as early."""
    net = measured(Net(A, timeout=1.5, deadline=4.0))
    net.ask()
    net.clock.advance(0.35)
    first = net.udp.all_waiting(A)[0]
    net.udp.answer(first)
    assert len(net.answers) == 1
    assert net.pool.health.rto(A) > 2 * MIN_RTO


# ------------------------------------------------------------------------------------------ near misses -> TCP


def test_near_misses_move_the_question_to_tcp() -> None:
    net = measured(Net(A, B, timeout=1.0, deadline=3.0))
    net.ask()
    sent = net.udp.waiting(A)
    for _ in range(NEAR_MISSES - 1):
        sent.mismatched(False)
    assert not net.stream.sent and net.udp.pending  # not yet
    sent.mismatched(False)
    assert not net.udp.pending  # its UDP sends closed: any reply there is the spoofer's
    ((_, over_tcp),) = net.stream.sent
    assert over_tcp.endpoint == A and over_tcp.tcp and over_tcp.name == over_tcp.query.qname
    assert over_tcp.timeout == pytest.approx(1.0)  # the rest of a's turn
    net.clock.advance(0.5)
    assert [name for _, name in net.sends()] == ["a", "a"]  # no retransmission over TCP
    reply = net.stream.reply(A)
    assert net.answers == [(0.5, reply)]
    assert not [a for _, a in net.udp.sent if a.endpoint == B]


def test_after_the_switch_the_next_upstreams_are_asked_over_tcp_too() -> None:
    net = measured(Net(A, B, timeout=1.0, deadline=3.0))
    net.ask()
    for _ in range(NEAR_MISSES):
        net.udp.waiting(A).mismatched(False)
    net.clock.advance(0.2)
    net.stream.fail(A, ConnectionError("refused"))
    assert [a.endpoint for _, a in net.stream.sent] == [A, B] and len(net.udp.sent) == 1


def test_near_misses_after_the_answer_change_nothing() -> None:
    net = measured(Net(A))
    net.ask()
    sent = net.udp.waiting(A)
    net.udp.reply(A)
    for _ in range(NEAR_MISSES):
        sent.mismatched(False)
    assert not net.stream.sent and len(net.answers) == 1


# ---------------------------------------------------------------------------------------------------- DNS 0x20


def test_udp_questions_go_out_in_random_case_and_tcp_ones_in_lowercase() -> None:
    net = Net(A, TCP)
    names = set()
    for _ in range(20):
        query = net.ask()
        attempt = net.udp.sent[-1][1] if net.udp.pending else None
        assert attempt is not None and attempt.name.lower() == query.qname
        names.add(attempt.name)
        net.udp.answer(attempt)
    assert len(names) > 10
    net = Net(TCP)
    net.ask()
    assert net.stream.sent[0][1].name is net.stream.sent[0][1].query.qname


def test_an_upstream_that_does_not_echo_the_case_is_asked_in_lowercase_after_a_few_strikes(
        caplog: pytest.LogCaptureFixture) -> None:
    net = measured(Net(A))
    with caplog.at_level(logging.WARNING, logger="resolver.net.upstream"):
        for _ in range(CASE_STRIKES):
            net.ask()
            net.udp.sent[-1][1].mismatched(True)
            net.udp.answer(net.udp.sent[-1][1])  # (over: the fake takes any reply)
        assert not net.pool.health.stats[A].case_random
        net.ask()
        assert net.udp.sent[-1][1].name is net.udp.sent[-1][1].query.qname
        net.udp.sent[-1][1].mismatched(True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(A) in warnings[0] and "0x20" in warnings[0]


def test_a_reply_that_echoes_the_random_case_clears_the_strikes() -> None:
    """A spoofer who guesses an ID now and then cannot turn 0x20 off: the upstream's own replies echo the case."""
    net = measured(Net(A))
    for _ in range(5):
        for _ in range(CASE_STRIKES - 1):
            net.ask()
            sent = net.udp.sent[-1][1]
            sent.mismatched(True)
            net.udp.answer(sent)
        net.ask()
        sent = net.udp.sent[-1][1]
        while sent.name == sent.query.qname:  # a name whose case came out all lowercase proves nothing
            net.udp.answer(sent)
            net.ask()
            sent = net.udp.sent[-1][1]
        reply = bytearray(reply_to(sent))
        reply[12 : 12 + len(sent.name)] = sent.name
        del net.udp.pending[sent.qid]
        sent.replied(bytes(reply))
    assert net.pool.health.stats[A].case_random


def test_a_question_that_only_gets_the_wrong_case_ends_up_over_tcp() -> None:
    """An upstream that lowercases the echo: the first questions get near misses (its replies are not taken, so a
    spoofer's are not either), move to TCP and are answered there; later ones go out in lowercase."""
    net = measured(Net(A, timeout=1.5, deadline=4.0))
    net.ask()
    for _ in range(NEAR_MISSES):
        head = net.udp.sent[-1][1]
        head.mismatched(True)
        if net.udp.pending:
            net.clock.advance(head.rto + SWEEP_SECONDS)
    assert not net.pool.health.stats[A].case_random
    reply = net.stream.reply(A)
    assert net.answers[-1][1] == reply
    net.ask()
    assert net.udp.sent[-1][1].name == net.udp.sent[-1][1].query.qname
    assert rcode_ok(net.udp.reply(A))


def rcode_ok(reply: bytes) -> bool:
    return reply[3] & 0x0F == wire.NOERROR
