"""One question's walk down the upstreams: whom to ask, when to ask again, which reply to take.

The walk keeps the pool's strategy: upstreams in the order ``Health.order`` gives, one at a time (``parallel_best``:
the first two at once), each for ``upstream_timeout`` before the next, the last for what is left of
``query_timeout``. Within an upstream's turn a UDP question that gets no reply is sent again after the upstream's
retransmission timeout (its measured round trip, RFC 6298), doubled at each send: a single lost packet costs a
fraction of a second, not the question. Every send has its own ID and source port and keeps listening until the
question is answered (also after its upstream's turn has passed to the next one), so a late reply to an earlier
send is as good as any: the first valid reply wins and the rest are closed.

A reply that names the question but fails validation (wrong ID, question or 0x20 case) is a near miss: after
``NEAR_MISSES`` of them someone is trying to poison this question, and its remaining sends go over TCP, where a
spoofer would have to take over a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from resolver.config.model import Endpoint
from resolver.core.wire import Query
from resolver.errors import UpstreamTimeout
from resolver.net.attempt import Attempt, Clock, Transport
from resolver.net.health import MAX_RTO, Health

NEAR_MISSES: Final = 3

Answered = Callable[[Query, bytes | None], None]


class Walker:
    """What every question's walk shares: the upstreams' health, the two transports, the clock and the timeouts."""

    __slots__ = ("clock", "deadline", "health", "parallel", "stream", "timeout", "udp")

    def __init__(self, health: Health, udp: Transport, stream: Transport, clock: Clock, timeout: float,
                 deadline: float) -> None:
        self.health = health
        self.udp = udp
        self.stream = stream
        self.clock = clock
        self.timeout = timeout  # upstream_timeout: one upstream's turn
        self.deadline = deadline  # query_timeout: the whole question
        self.parallel = 2 if health.strategy == "parallel_best" else 1

    def resolve(self, query: Query, done: Answered) -> None:
        Resolution(self, query, done)


class Resolution:
    """One question walking down the upstream list by callbacks (the ``Owner`` of its attempts), until a usable
    reply or the deadline.

    ``heads`` holds the latest send of each turn in progress (one, or two for parallel_best): its retransmission
    timeout asks again, and its turn's end moves the walk on. ``live`` holds every send still listening, heads
    included. A SERVFAIL, REFUSED or NOTIMP reply is kept as the answer of last resort while others are asked.
    """

    __slots__ = ("deadline", "done", "fallback", "heads", "last", "live", "misses", "next", "order", "query",
                 "tcp", "walker")

    def __init__(self, walker: Walker, query: Query, done: Answered) -> None:
        self.walker = walker
        self.query = query
        self.done: Answered | None = done
        now = walker.clock.time()
        self.deadline = now + walker.deadline
        self.order = walker.health.order(now)
        self.fallback: bytes | None = None
        self.heads: list[Attempt] = []
        self.live: list[Attempt] = []
        self.last: Attempt | None = None  # the latest send: each send links to the one before (``Attempt.after``)
        self.next = 0
        self.misses = 0
        self.tcp = False  # switched to TCP after near misses
        for _ in range(walker.parallel):
            self._turn(now)
        if not self.heads:
            self._finish(self.fallback)

    # ------------------------------------------------------------------------------------------ sending

    def _turn(self, now: float) -> bool:
        """Start the next upstream's turn: ``upstream_timeout``, or for the last one all the time that is left."""
        order = self.order
        if self.next >= len(order) or now >= self.deadline:
            return False
        endpoint = order[self.next]
        self.next += 1
        left = self.deadline - now
        timeout = left if self.next == len(order) else min(self.walker.timeout, left)
        self._send(endpoint, now, timeout, self.walker.health.rto(endpoint))
        return True

    def _send(self, endpoint: Endpoint, now: float, timeout: float, rto: float) -> None:
        """Ask ``endpoint``, as the head of a turn that ends ``timeout`` from now."""
        walker = self.walker
        health = walker.health
        health.stats[endpoint].requests += 1
        if self.tcp or endpoint.transport != "udp":
            attempt = Attempt(endpoint, self.query, now, timeout, self.deadline, self, 0.0, None, self.last)
            attempt.tcp = endpoint.transport == "udp"
            transport = walker.stream
        else:
            attempt = Attempt(endpoint, self.query, now, timeout, self.deadline, self, rto,
                              health.name_for(endpoint, self.query), self.last)
            transport = walker.udp
        self.last = attempt
        self.heads.append(attempt)
        self.live.append(attempt)
        transport.send(attempt)

    def _walk(self, now: float) -> None:
        """No turn is in progress: start the next one, or give up (sends of earlier turns that still listen are
        closed: with nobody left to ask, the kept SERVFAIL or silence is the answer now, as before retransmission)."""
        if self.heads or self.done is None:
            return
        if not self._turn(now):
            self._finish(self.fallback)

    def _to_tcp(self, now: float) -> None:
        """Near misses enough: close the question's UDP sends and carry on each UDP turn over TCP."""
        self.tcp = True
        udp_heads = [h for h in self.heads if h.table is not None]
        for attempt in [a for a in self.live if a.table is not None]:
            attempt.close()
            self.live.remove(attempt)
        self.heads = [h for h in self.heads if h not in udp_heads]
        for head in udp_heads:
            self._send(head.endpoint, now, max(0.01, head.started + head.timeout - now), 0.0)

    # ---------------------------------------------------------------------------------- what attempts report

    def timed_out(self, attempt: Attempt) -> None:
        """``attempt``'s retransmission timeout passed without a reply: ask again, or end its turn."""
        if attempt not in self.heads:  # (only a head waits on a retransmission timeout)
            return
        if self.done is None:  # a head left open to measure its upstream has had its time
            attempt.close()
            self.live.remove(attempt)
            self.heads.remove(attempt)
            return
        now = self.walker.clock.time()
        turn_end = attempt.started + attempt.timeout
        self.heads.remove(attempt)
        if now < turn_end:  # back off (RFC 6298 5.5), from the upstream's own timeout if it has grown meanwhile
            endpoint = attempt.endpoint
            rto = max(self.walker.health.rto(endpoint), min(MAX_RTO, attempt.rto * 2))
            self._send(endpoint, now, turn_end - now, rto)
            return
        self.walker.health.timed_out(attempt.endpoint, now)
        self._walk(now)

    def finished(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> None:
        if attempt not in self.live:
            return  # closed by the walk already (its socket failed after the walk moved on)
        self.live.remove(attempt)
        head = attempt in self.heads
        if head:
            self.heads.remove(attempt)
        health = self.walker.health
        now = self.walker.clock.time()
        if reply is None and isinstance(error, UpstreamTimeout):
            if head and self.done is not None:  # the turn ran out (the deadline, or a TCP wait)
                health.timed_out(attempt.endpoint, now)
                self._walk(now)
            return
        usable = health.record(attempt, reply, error)
        if self.done is None:  # answered already: counted, not handed on
            return
        if usable:
            self._finish(reply)
            return
        if reply is not None:
            self.fallback = reply
        self._failed(attempt.endpoint)
        self._walk(now)

    def _failed(self, endpoint: Endpoint) -> None:
        """``endpoint`` failed this question outright: its other sends would end the same way."""
        for attempt in [a for a in self.live if a.endpoint == endpoint]:
            attempt.close()
            self.live.remove(attempt)
        self.heads = [h for h in self.heads if h.endpoint != endpoint]

    def near_miss(self, attempt: Attempt, case_only: bool) -> None:
        if case_only:
            self.walker.health.case_mismatch(attempt.endpoint)
        if self.done is None or self.tcp:
            return
        self.misses += 1
        if self.misses >= NEAR_MISSES:
            self._to_tcp(self.walker.clock.time())

    def _finish(self, reply: bytes | None) -> None:
        """Hand the answer on and close every send still listening, except the heads of other turns, which wait out
        their current timeout so that their reply still measures their upstream."""
        done, self.done = self.done, None
        for attempt in self.live:
            if attempt not in self.heads:
                attempt.close()
        self.live = list(self.heads)
        if done is not None:
            done(self.query, reply)
