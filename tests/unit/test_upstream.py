"""The upstream pool's failover walk and the timeout sweep, on a fake clock with fake transports: no socket, no wait.

``Net`` builds a pool whose transports only record what is sent; the test answers, fails, or lets the fake clock
run until the real sweep times a question out. Each test states the sends it expects as (time, upstream) in order,
so a behaviour that adds sends (retransmitting a lost UDP question, say) shows up as entries in those lists.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable

import pytest

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError, UpstreamTimeout
from resolver.net.attempt import SWEEP_SECONDS, Attempt, Sweep
from resolver.net.health import INITIAL_RTO, MIN_RTO
from resolver.net.upstream import PENALTY_SECONDS, UpstreamPool

A = Endpoint("192.0.2.1", 53)
B = Endpoint("192.0.2.2", 53)
C = Endpoint("192.0.2.3", 53)
TCP = Endpoint("192.0.2.9", 53, "tcp")
TLS = Endpoint("192.0.2.9", 853, "tls")
NAMES = {A: "a", B: "b", C: "c", TCP: "tcp", TLS: "tls"}


def late(seconds: float) -> object:
    """A time the sweep reports as ``seconds``: up to one sweep period after it."""
    return pytest.approx(seconds + SWEEP_SECONDS / 2, abs=SWEEP_SECONDS / 2 + 1e-9)


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The event loop's time and timers, moved on by the test: due callbacks run in time order as it passes them."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback()
        self.now = end

    def timers(self) -> int:
        return sum(not timer.cancelled for _, _, timer in self._timers)


def reply_to(attempt: Attempt, rcode: int = wire.NOERROR) -> bytes:
    """What an upstream would send back: our query with QR, RA and ``rcode`` set."""
    reply = bytearray(wire.upstream_query(attempt.query, attempt.qid))
    reply[2] |= 0x80
    reply[3] = 0x80 | rcode
    return bytes(reply)


class FakeTransport:
    """A transport with no socket: it records each attempt sent, and leaves it waiting in a table the pool's sweep
    walks, as a UDP socket does, so timeouts come from the real sweep as the fake clock advances."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.pending: dict[int, Attempt] = {}
        self.sent: list[tuple[float, Attempt]] = []
        self.closed = False
        sweep.tables.add(self)

    def send(self, attempt: Attempt) -> None:
        qid = len(self.sent)
        self.sent.append((self.sweep.clock.time(), attempt))
        self.pending[qid] = attempt
        attempt.qid = qid
        attempt.table = self
        if self.sweep.timer is None:
            self.sweep.arm()

    def forget(self, attempt: Attempt) -> None:
        self.pending.pop(attempt.qid, None)

    def close(self) -> None:
        self.closed = True

    def waiting(self, endpoint: Endpoint) -> Attempt:
        (attempt,) = self.all_waiting(endpoint)
        return attempt

    def all_waiting(self, endpoint: Endpoint) -> list[Attempt]:
        """Every send to ``endpoint`` still awaited, oldest first."""
        return [a for a in self.pending.values() if a.endpoint == endpoint]

    def reply(self, endpoint: Endpoint, rcode: int = wire.NOERROR) -> bytes:
        return self.answer(self.waiting(endpoint), rcode)

    def answer(self, attempt: Attempt, rcode: int = wire.NOERROR) -> bytes:
        assert self.pending.get(attempt.qid) is attempt, "not awaited any more"
        del self.pending[attempt.qid]
        reply = reply_to(attempt, rcode)
        attempt.replied(reply)
        return reply

    def fail(self, endpoint: Endpoint, error: BaseException) -> None:
        attempt = self.waiting(endpoint)
        del self.pending[attempt.qid]
        attempt.failed(error)


class Net:
    """A pool of upstreams on a fake clock, both transports fakes; ``answers`` is what ``resolve`` handed back."""

    def __init__(self, *endpoints: Endpoint, strategy: str = "strict", timeout: float = 1.0,
                 deadline: float = 3.0) -> None:
        self.clock = FakeClock()
        self.sweep = Sweep(self.clock)
        self.udp = FakeTransport(self.sweep)
        self.stream = FakeTransport(self.sweep)
        self.pool = UpstreamPool(endpoints, timeout, deadline, Stats(), strategy, sweep=self.sweep, udp=self.udp,
                                 stream=self.stream)
        self.answers: list[tuple[float, bytes | None]] = []

    def ask(self, name: str = "www.example.test") -> Query:
        query = wire.parse_query(wire.HEADER.pack(0x1234, wire.RD, 1, 0, 0, 0) + wire.encode_name(name) +
                                 b"\x00\x01\x00\x01")
        self.pool.resolve(query, lambda _query, reply: self.answers.append((self.clock.now, reply)))
        return query

    def sends(self) -> list[tuple[float, str]]:
        sent = self.udp.sent + self.stream.sent
        return [(at, NAMES[attempt.endpoint]) for at, attempt in sorted(sent, key=lambda s: s[0])]

    def first_asked(self) -> str:
        """Ask a question, answer it from the upstream asked first, and say which one that was."""
        before = len(self.udp.sent)
        self.ask()
        endpoint = self.udp.sent[before][1].endpoint
        self.udp.reply(endpoint)
        return NAMES[endpoint]


def rcode(reply: bytes | None) -> int | None:
    return None if reply is None else reply[3] & 0x0F


# ------------------------------------------------------------------------------------------------ the failover walk


def test_the_first_upstream_answers() -> None:
    net = Net(A, B)
    net.ask()
    net.clock.advance(0.1)
    reply = net.udp.reply(A)
    assert net.answers == [(0.1, reply)]
    assert net.sends() == [(0.0, "a")]
    net.clock.advance(10)
    assert net.sends() == [(0.0, "a")] and len(net.answers) == 1


def test_a_timeout_moves_to_the_next_upstream() -> None:
    """Within its turn the silent upstream is asked again after its retransmission timeout (INITIAL_RTO: nothing
    measured yet); when the turn is over, the next upstream."""
    net = Net(A, B, timeout=1.0)
    net.ask()
    net.clock.advance(0.99)
    assert net.sends() == [(0.0, "a"), (late(INITIAL_RTO), "a")]
    net.clock.advance(0.05)
    assert net.sends() == [(0.0, "a"), (late(INITIAL_RTO), "a"), (late(1.0), "b")]
    reply = net.udp.reply(B)
    assert net.answers == [(net.clock.now, reply)]
    assert net.pool.upstream_stats[str(A)].timeouts == 1
    assert net.pool.upstream_stats[str(B)].timeouts == 0


@pytest.mark.parametrize("bad", [wire.SERVFAIL, wire.REFUSED, wire.NOTIMP])
def test_a_servfail_refused_or_notimp_moves_on_at_once(bad: int) -> None:
    net = Net(A, B)
    net.ask()
    net.clock.advance(0.1)
    net.udp.reply(A, bad)
    assert net.sends() == [(0.0, "a"), (0.1, "b")]
    assert net.answers == []
    good = net.udp.reply(B)
    assert net.answers == [(0.1, good)]
    assert net.pool.upstream_stats[str(A)].errors == 1


@pytest.mark.parametrize("other", [wire.NXDOMAIN, wire.FORMERR])
def test_other_rcodes_are_answers(other: int) -> None:
    """NXDOMAIN is an answer; so is FORMERR, which another upstream would give the same question too."""
    net = Net(A, B)
    net.ask()
    reply = net.udp.reply(A, other)
    assert net.answers == [(0.0, reply)] and net.sends() == [(0.0, "a")]


def test_when_every_upstream_refuses_the_last_refusal_is_the_answer() -> None:
    net = Net(A, B, C)
    net.ask()
    net.udp.reply(A, wire.SERVFAIL)
    net.udp.reply(B, wire.REFUSED)
    net.clock.advance(0.2)
    last = net.udp.reply(C, wire.SERVFAIL)
    assert net.sends() == [(0.0, "a"), (0.0, "b"), (0.0, "c")]
    assert net.answers == [(0.2, last)]


def test_a_failed_send_moves_on_and_counts_an_error() -> None:
    net = Net(A, B)
    net.ask()
    net.clock.advance(0.01)
    net.udp.fail(A, UpstreamError("192.0.2.1:53: network unreachable"))
    assert net.sends() == [(0.0, "a"), (0.01, "b")]
    stats = net.pool.upstream_stats[str(A)]
    assert (stats.errors, stats.timeouts, stats.down_until) == (1, 0, 0.01 + PENALTY_SECONDS)


def test_a_kept_servfail_is_the_answer_when_the_rest_time_out() -> None:
    net = Net(A, B, timeout=1.0, deadline=2.0)
    net.ask()
    servfail = net.udp.reply(A, wire.SERVFAIL)
    net.clock.advance(5)
    # b, the last, has until the deadline: asked again after 0.5 s, then after 1 s (backed off).
    assert net.sends() == [(0.0, "a"), (0.0, "b"), (late(0.5), "b"), (late(1.5), "b")]
    assert net.answers == [(late(2.0), servfail)]


def test_nobody_answers_none_at_the_deadline() -> None:
    net = Net(A, B, timeout=1.0, deadline=3.0)
    net.ask()
    net.clock.advance(10)
    assert net.sends() == [(0.0, "a"), (late(0.5), "a"), (late(1.0), "b"), (late(1.5), "b"), (late(2.5), "b")]
    assert net.answers == [(late(3.0), None)]
    assert [net.pool.upstream_stats[str(e)].timeouts for e in (A, B)] == [1, 1]  # one per turn, not per send
    assert [net.pool.upstream_stats[str(e)].requests for e in (A, B)] == [2, 3]  # every send
    assert not net.udp.pending  # past the deadline nothing is awaited


def test_the_last_upstream_gets_what_is_left_of_the_query_timeout() -> None:
    """Each upstream but the last gets upstream_timeout; the last may use all the time the question has left."""
    net = Net(A, B, C, timeout=1.0, deadline=4.0)
    net.ask()
    net.clock.advance(0.5)
    net.udp.reply(A, wire.SERVFAIL)
    b = net.udp.waiting(B)
    assert b.timeout == 1.0
    net.clock.advance(1.1)
    c = net.udp.waiting(C)
    assert c.timeout == pytest.approx(4.0 - c.started) and c.timeout > 2.0
    net.clock.advance(2.5)
    assert net.answers[0][0] == late(4.0)


def test_a_single_upstream_gets_the_whole_query_timeout() -> None:
    net = Net(A, timeout=1.0, deadline=3.0)
    net.ask()
    assert net.udp.waiting(A).timeout == 3.0
    net.clock.advance(2.9)
    assert net.answers == []
    net.clock.advance(0.2)
    assert net.answers == [(late(3.0), None)]


def test_the_deadline_stops_the_walk() -> None:
    """The second upstream gets only what is left of query_timeout; the third is never asked."""
    net = Net(A, B, C, timeout=1.0, deadline=1.5)
    net.ask()
    net.clock.advance(1.1)
    assert net.udp.waiting(B).timeout == pytest.approx(1.5 - net.udp.waiting(B).started)
    net.clock.advance(5)
    assert net.sends() == [(0.0, "a"), (late(0.5), "a"), (late(1.0), "b")]
    assert net.answers == [(late(1.5), None)]


def test_a_late_reply_to_an_earlier_send_is_taken_and_the_rest_are_closed() -> None:
    """A send keeps listening after its upstream's turn has passed to the next one: the first valid reply to any
    send of the question is the answer; every other send stops being awaited (a reply to it is stale)."""
    net = Net(A, B)
    net.ask()
    first = net.udp.waiting(A)
    net.clock.advance(1.05)
    assert net.sends() == [(0.0, "a"), (late(0.5), "a"), (late(1.0), "b")]
    assert net.udp.all_waiting(A)[0] is first and first.table is net.udp  # still awaited
    good = net.udp.answer(first)
    assert net.answers == [(1.05, good)]
    assert net.udp.all_waiting(A) == []
    net.clock.advance(1)  # b's send waits out its retransmission timeout (its reply would measure b), then closes
    assert not net.udp.pending and len(net.answers) == 1 and net.sends()[-1] == (late(1.0), "b")


def test_a_reply_after_the_deadline_is_not_taken() -> None:
    net = Net(A, timeout=1.0, deadline=1.0)
    net.ask()
    sends = net.udp.all_waiting(A)
    net.clock.advance(1.05)
    assert net.answers == [(late(1.0), None)]
    assert all(a.table is None and a.qid not in net.udp.pending for a in sends)  # no longer awaited


# ---------------------------------------------------------------------------------------------------- health


def test_a_failed_upstream_is_asked_last_for_the_penalty() -> None:
    net = Net(A, B, C)
    net.ask()
    net.clock.advance(1.05)  # a timed out
    net.udp.reply(B)
    assert [net.first_asked() for _ in range(3)] == ["b", "b", "b"]
    net.ask()
    net.udp.reply(B, wire.SERVFAIL)  # b is not penalised for an rcode: it answered
    assert net.sends()[-1][1] == "c"
    net.udp.reply(C)
    net.clock.advance(PENALTY_SECONDS - 0.1)
    assert net.first_asked() == "b"
    net.clock.advance(0.2)
    assert net.first_asked() == "a"


def test_the_failed_upstream_is_still_asked_when_the_others_fail() -> None:
    net = Net(A, B)
    net.ask()
    net.clock.advance(1.05)
    net.udp.reply(B)
    net.ask()  # b first, a last
    net.udp.reply(B, wire.REFUSED)
    assert [name for _, name in net.sends()[-2:]] == ["b", "a"]
    reply = net.udp.reply(A)
    assert net.answers[-1] == (net.clock.now, reply)
    assert net.pool.upstream_stats[str(A)].down_until == 0.0  # a good reply ends the penalty
    assert net.first_asked() == "a"


def test_stats_count_on_the_clock() -> None:
    net = Net(A, B)
    net.ask()
    net.clock.advance(0.25)
    net.udp.reply(A)
    stats = net.pool.upstream_stats[str(A)]
    assert (stats.requests, stats.answered, stats.latency_sum, stats.ewma, stats.last_ok) == (1, 1, 0.25, 0.25, 0.25)
    assert sum(stats.latency_buckets) == 1
    assert net.pool.upstream_stats[str(B)].requests == 0


def test_healthy_means_a_good_reply_within_the_window() -> None:
    net = Net(A, B)
    assert not net.pool.healthy(30)
    net.clock.advance(100)
    net.first_asked()
    assert net.pool.healthy(30)
    net.clock.advance(31)
    assert not net.pool.healthy(30)


async def settle() -> None:
    """Let the probe's tasks run as far as they can without the (fake) clock moving."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_probe_marks_silent_upstreams_down_and_answering_ones_up() -> None:
    """Any reply to the probe shows an upstream is alive, even REFUSED; silence puts it last. Every upstream is
    probed at once, and a silent one is asked again on its retransmission timeout within upstream_timeout."""
    net = Net(A, B, timeout=1.0)
    net.clock.advance(10)
    probing = asyncio.ensure_future(net.pool.probe())
    await settle()
    assert net.sends() == [(10.0, "a"), (10.0, "b")]
    assert net.udp.waiting(A).query.name == "."
    net.udp.reply(A, wire.REFUSED)
    await settle()
    assert not probing.done()
    net.clock.advance(1.05)
    await settle()
    assert probing.done()
    await probing
    assert net.sends() == [(10.0, "a"), (10.0, "b"), (late(10.0 + INITIAL_RTO), "b")]
    a, b = net.pool.upstream_stats[str(A)], net.pool.upstream_stats[str(B)]
    assert (a.last_ok, a.down_until) == (10.0, 0.0)
    assert b.down_until == pytest.approx(11.05 + PENALTY_SECONDS)
    assert not net.udp.pending
    assert net.first_asked() == "a"
    assert net.answers[-1][1] is not None


async def test_a_silent_upstream_is_logged_once_at_warning_and_once_when_it_answers_again(
        caplog: pytest.LogCaptureFixture) -> None:
    net = Net(A, B, timeout=1.0)
    with caplog.at_level(logging.INFO, logger="resolver.net.upstream"):
        for _ in range(2):  # silent in two probes: one warning
            probing = asyncio.ensure_future(net.pool.probe())
            await settle()
            net.udp.reply(A)
            net.clock.advance(1.05)
            await settle()
            await probing
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(B) in warnings[0] and str(A) not in warnings[0], warnings
        probing = asyncio.ensure_future(net.pool.probe())
        await settle()
        net.udp.reply(A)
        net.udp.reply(B)
        await settle()
        await probing
    back = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(back) == 1 and str(B) in back[0], back
    assert net.pool.upstream_stats[str(B)].down_until == 0.0


async def test_the_probe_gives_the_first_round_trip() -> None:
    """The start-up probe's reply times the retransmissions of the first questions (no INITIAL_RTO guess)."""
    net = Net(A, timeout=1.0)
    probing = asyncio.ensure_future(net.pool.probe())
    await settle()
    net.clock.advance(0.004)
    net.udp.reply(A)
    await settle()
    await probing
    assert net.pool.health.rto(A) == MIN_RTO
    net.ask()
    net.clock.advance(0.15)
    assert [name for _, name in net.sends()] == ["a", "a", "a"]
    assert net.sends()[-1] == (late(0.004 + MIN_RTO), "a")


# -------------------------------------------------------------------------------------------------- strategies


def test_random_shuffles_the_healthy_and_keeps_the_failed_last() -> None:
    net = Net(A, B, C, strategy="random")
    firsts = {net.first_asked() for _ in range(60)}
    assert firsts == {"a", "b", "c"}
    net.ask()
    first = net.sends()[-1][1]
    net.clock.advance(1.05)  # the first asked times out; the second answers
    second = net.udp.sent[-1][1].endpoint
    assert NAMES[second] != first
    net.udp.reply(second)
    later = {net.first_asked() for _ in range(60)}
    assert first not in later and len(later) == 2


def test_parallel_best_asks_the_two_fastest_at_once_and_takes_the_first_good_answer() -> None:
    net = Net(A, B, C, strategy="parallel_best")
    net.ask()
    assert net.sends() == [(0.0, "a"), (0.0, "b")]
    net.clock.advance(0.05)
    first = net.udp.reply(B)
    net.clock.advance(0.05)
    net.udp.reply(A)  # the slower answer is counted but not handed on
    assert net.answers == [(0.05, first)]
    assert net.pool.upstream_stats[str(A)].answered == 1


def test_parallel_best_moves_on_only_when_both_have_failed() -> None:
    net = Net(A, B, C, strategy="parallel_best")
    net.ask()
    net.udp.reply(A, wire.SERVFAIL)
    assert net.sends() == [(0.0, "a"), (0.0, "b")]  # b is still out
    net.clock.advance(1.05)  # b, asked again in its turn, times out: now c
    assert net.sends() == [(0.0, "a"), (0.0, "b"), (late(0.5), "b"), (late(1.0), "c")]
    reply = net.udp.reply(C)
    assert net.answers == [(1.05, reply)]


def test_parallel_best_orders_by_smoothed_answer_time() -> None:
    net = Net(A, B, C, strategy="parallel_best")
    net.ask()  # a and b asked
    net.clock.advance(0.01)
    net.udp.reply(B)
    net.clock.advance(0.3)
    net.udp.reply(A)
    net.ask()  # fastest first: c (no time yet), b, then a
    assert [name for _, name in net.sends()[-2:]] == ["c", "b"]


# -------------------------------------------------------------------------------------------------- transports


@pytest.mark.parametrize("stream", [TCP, TLS], ids=str)
def test_stream_upstreams_go_to_the_stream_transport(stream: Endpoint) -> None:
    net = Net(stream, A)
    net.ask()
    assert [a.endpoint for _, a in net.stream.sent] == [stream] and not net.udp.sent
    net.stream.fail(stream, UpstreamTimeout("no TCP reply"))
    assert [a.endpoint for _, a in net.udp.sent] == [A]
    assert net.pool.upstream_stats[str(stream)].timeouts == 1


def test_close_closes_both_transports_and_stops_the_sweep() -> None:
    net = Net(A)
    net.ask()
    assert net.clock.timers() == 1
    net.pool.close()
    assert net.udp.closed and net.stream.closed and net.clock.timers() == 0


# --------------------------------------------------------------------------------------------------- the sweep


class Outcomes(list[tuple[float, str]]):
    """An ``Owner`` that writes down what its attempts report, and when."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def finished(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> None:
        self.append((self.clock.time(), type(error).__name__ if reply is None else "reply"))

    def timed_out(self, attempt: Attempt) -> None:
        self.append((self.clock.time(), "retransmission timeout"))

    def near_miss(self, attempt: Attempt, case_only: bool) -> None:
        self.append((self.clock.time(), "near miss"))


class Table:
    """A bare ``Waiting`` table for the sweep alone."""

    def __init__(self, sweep: Sweep) -> None:
        self.pending: dict[int, Attempt] = {}
        self.sweep = sweep
        sweep.tables.add(self)

    def wait(self, qid: int, timeout: float, outcomes: Outcomes, rto: float = 0.0) -> Attempt:
        clock = self.sweep.clock
        now = clock.time()
        query = wire.parse_query(wire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01")
        attempt = Attempt(A, query, now, timeout, now + timeout, outcomes, rto)
        self.pending[qid] = attempt
        attempt.qid, attempt.table = qid, self
        if self.sweep.timer is None:
            self.sweep.arm()
        return attempt

    def forget(self, attempt: Attempt) -> None:
        del self.pending[attempt.qid]


def test_the_sweep_runs_only_while_something_waits() -> None:
    clock = FakeClock()
    sweep = Sweep(clock)
    table = Table(sweep)
    assert clock.timers() == 0
    outcomes = Outcomes(clock)
    table.wait(1, 0.1, outcomes)
    table.wait(2, 0.1, outcomes)
    assert clock.timers() == 1  # one timer for all, not one per question
    clock.advance(0.05)
    assert clock.timers() == 1 and outcomes == []
    clock.advance(0.1)
    assert outcomes == [(late(0.1), "UpstreamTimeout")] * 2
    assert clock.timers() == 0 and not table.pending


def test_the_sweep_times_out_at_most_one_period_late() -> None:
    clock = FakeClock()
    table = Table(Sweep(clock))
    outcomes = Outcomes(clock)
    clock.advance(0.013)
    for qid, timeout in enumerate((0.05, 0.5, 0.501, 1.0)):
        table.wait(qid, timeout, outcomes)
    clock.advance(2)
    times = [at for at, _ in outcomes]
    assert times == [late(0.063), late(0.513), late(0.514), late(1.013)]


def test_the_sweep_leaves_an_answered_attempt_alone() -> None:
    clock = FakeClock()
    table = Table(Sweep(clock))
    outcomes = Outcomes(clock)
    answered = table.wait(1, 0.1, outcomes)
    table.wait(2, 0.1, outcomes)
    clock.advance(0.05)
    del table.pending[1]
    answered.replied(b"reply")
    clock.advance(1)
    assert outcomes == [(0.05, "reply"), (late(0.1), "UpstreamTimeout")]
    answered.expire()  # no longer waiting anywhere: nothing more is reported
    assert len(outcomes) == 2


def test_the_sweep_walks_every_table() -> None:
    clock = FakeClock()
    sweep = Sweep(clock)
    first, second = Table(sweep), Table(sweep)
    outcomes = Outcomes(clock)
    first.wait(1, 0.1, outcomes)
    clock.advance(0.05)
    second.wait(1, 0.1, outcomes)
    clock.advance(1)
    assert outcomes == [(late(0.1), "UpstreamTimeout"), (late(0.15), "UpstreamTimeout")]


def test_a_retransmission_timeout_tells_the_owner_and_keeps_the_attempt_waiting_until_the_deadline() -> None:
    clock = FakeClock()
    table = Table(Sweep(clock))
    outcomes = Outcomes(clock)
    attempt = table.wait(1, 1.0, outcomes, rto=0.25)
    clock.advance(0.5)
    assert outcomes == [(late(0.25), "retransmission timeout")]
    assert table.pending == {1: attempt} and attempt.expires == attempt.deadline
    clock.advance(1)
    assert outcomes == [(late(0.25), "retransmission timeout"), (late(1.0), "UpstreamTimeout")]
    assert not table.pending and attempt.table is None


def test_closing_an_attempt_forgets_it_and_reports_nothing() -> None:
    clock = FakeClock()
    table = Table(Sweep(clock))
    outcomes = Outcomes(clock)
    attempt = table.wait(1, 1.0, outcomes, rto=0.25)
    attempt.close()
    clock.advance(2)
    assert outcomes == [] and not table.pending and attempt.table is None


def test_closing_the_sweep_cancels_its_timer() -> None:
    clock = FakeClock()
    sweep = Sweep(clock)
    outcomes = Outcomes(clock)
    Table(sweep).wait(1, 0.1, outcomes)
    sweep.close()
    clock.advance(1)
    assert clock.timers() == 0 and outcomes == [] and sweep.timer is None
