"""Asking the upstream resolvers: the pool, each upstream's health, and the failover walk of one question.

The transports are elsewhere: ``udp`` (connected sockets, random IDs and ports), ``streamconn`` (TCP and DNS over
TLS, and UDP's truncated replies); ``attempt`` holds what they share with the pool. The pool decides which upstream
is asked, when, and for how long, on an injected clock; the transports only carry the questions.
"""

from __future__ import annotations

import asyncio
import logging
import random
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import LATENCY_BOUNDS, Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError, UpstreamTimeout
from resolver.net.attempt import Attempt, Sweep, Transport
from resolver.net.streamconn import StreamTransport
from resolver.net.udp import RandomIds, UdpTransport

log = logging.getLogger("resolver.net.upstream")

# An upstream that just failed is asked last for this long, so one dead server does not cost every query a timeout.
PENALTY_SECONDS: Final = 5.0
_RETRY_RCODES: Final = (wire.SERVFAIL, wire.REFUSED, wire.NOTIMP)
Answered = Callable[[Query, bytes | None], None]


@dataclass(slots=True)
class UpstreamStats:
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latency_sum: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    answered: int = 0
    down_until: float = 0.0  # clock time until which it is asked last
    last_ok: float = -1e9  # clock time of its last good reply (a query or a probe)
    ewma: float = 0.0  # smoothed answer time, for parallel_best

    def answered_in(self, seconds: float) -> None:
        self.answered += 1
        self.latency_sum += seconds
        self.latency_buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1


class UpstreamPool:
    """The configured upstreams, their health, and the walk down them for each question (``resolve``).

    ``sweep`` brings the clock: the event loop unless a test gives a fake one. ``udp`` carries questions to
    udp:// upstreams and ``stream`` to tcp:// and tls:// ones: by default sockets and connections on the running
    loop, in tests fakes that record what is sent. UDP attempts wait in tables the sweep walks, so their
    timeouts follow the injected clock.
    """

    def __init__(self, endpoints: tuple[Endpoint, ...], timeout: float, deadline: float, stats: Stats,
                 strategy: str = "strict", ca_file: str | None = None, *, sweep: Sweep | None = None,
                 udp: Transport | None = None, stream: Transport | None = None) -> None:
        if not endpoints:
            raise UpstreamError("no upstream resolvers configured")
        self.endpoints = endpoints
        self.strategy = strategy
        self.timeout = timeout
        self.deadline = deadline
        self.stats = stats
        self._stats = {e: UpstreamStats() for e in endpoints}  # the per-query path: no str() per query
        self.upstream_stats = {str(e): s for e, s in self._stats.items()}  # the same objects, for metrics
        self._all_up_after = 0.0  # no upstream's penalty runs past this time
        self.ids = RandomIds()
        # The loop is kept, not looked up per question: asyncio.get_running_loop() costs a getpid() system call.
        self.sweep = sweep if sweep is not None else Sweep(asyncio.get_running_loop())
        self.clock = self.sweep.clock
        self.stream = stream if stream is not None else StreamTransport(endpoints, ca_file, self.ids.unused, stats)
        self.udp = udp if udp is not None else UdpTransport(asyncio.get_running_loop(), self.sweep, self.ids, stats,
                                                            self.stream)

    def _order(self, now: float) -> Sequence[Endpoint]:
        """Healthy upstreams first (in config order, shuffled, or fastest first, by strategy), then the rest."""
        if now >= self._all_up_after and self.strategy == "strict":
            return self.endpoints  # the usual case, with nothing to sort
        healthy = [e for e in self.endpoints if self._stats[e].down_until <= now]
        if self.strategy == "random":
            healthy = random.sample(healthy, len(healthy))
        elif self.strategy == "parallel_best":
            healthy.sort(key=lambda e: self._stats[e].ewma)
        return healthy + [e for e in self.endpoints if e not in healthy]

    def resolve(self, query: Query, done: Answered) -> None:
        """Find a reply matching ``query`` and hand both to ``done`` (None: no upstream gave one before the deadline).

        Callbacks, not a task per question: over UDP a cache miss costs a send, an entry in the socket's table of
        questions, and two small objects. ``parallel_best`` asks the two fastest healthy upstreams at once and
        takes the first good answer; every strategy then goes down the rest of the list one at a time. A SERVFAIL
        or REFUSED reply is kept as the answer of last resort while other upstreams are tried.
        """
        _Resolution(self, query, done)

    def _penalise(self, stats: UpstreamStats, now: float) -> None:
        stats.down_until = self._all_up_after = now + PENALTY_SECONDS

    def _record(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> bool:
        """Count one finished attempt and keep the upstream's health; whether ``reply`` is a usable answer."""
        stats = self._stats[attempt.endpoint]
        now = self.clock.time()
        if reply is None:
            if isinstance(error, UpstreamTimeout):
                stats.timeouts += 1
            else:
                stats.errors += 1
            self._penalise(stats, now)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("upstream %s failed: %s", attempt.endpoint, error)
            return False
        elapsed = now - attempt.started
        stats.answered_in(elapsed)
        stats.ewma = elapsed if stats.ewma == 0.0 else 0.7 * stats.ewma + 0.3 * elapsed
        if reply[3] & 0x0F in _RETRY_RCODES:
            stats.errors += 1
            return False
        stats.down_until = 0.0
        stats.last_ok = now
        return True

    def healthy(self, within: float) -> bool:
        """Whether any upstream gave a good reply in the last ``within`` seconds (for /readyz)."""
        now = self.clock.time()
        return any(now - s.last_ok <= within for s in self.upstream_stats.values())

    async def probe(self) -> None:
        """Ask every upstream for the root NS set: any matching reply (even REFUSED) shows it is alive and
        puts it back in the rotation; silence takes it out. Runs whether or not clients are asking."""
        loop = asyncio.get_running_loop()
        clock = self.clock
        probe = wire.parse_query(wire.HEADER.pack(0, wire.RD, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01")
        for endpoint in self.endpoints:
            stats = self._stats[endpoint]
            future: asyncio.Future[bytes | None] = loop.create_future()
            now = clock.time()
            attempt = Attempt(endpoint, probe, now, self.timeout, now + self.timeout, partial(_settle, future))
            (self.udp if endpoint.transport == "udp" else self.stream).send(attempt)
            if await future is None:
                self._penalise(stats, clock.time())
            else:
                stats.down_until = 0.0
                stats.last_ok = clock.time()

    def close(self) -> None:
        """Close the transports' sockets and connections (at shutdown; anything still waiting was given its drain
        time)."""
        self.stream.close()
        self.udp.close()
        self.sweep.close()


def _settle(future: asyncio.Future[bytes | None], _attempt: Attempt, reply: bytes | None,
            _error: BaseException | None) -> None:
    if not future.done():
        future.set_result(reply)


class _Resolution:
    """One question walking down the upstream list by callbacks, until a usable reply or the deadline."""

    __slots__ = ("deadline", "done", "fallback", "live", "next", "order", "pool", "query")

    def __init__(self, pool: UpstreamPool, query: Query, done: Answered) -> None:
        self.pool = pool
        self.query = query
        self.done: Answered | None = done
        now = pool.clock.time()
        self.deadline = now + pool.deadline
        self.order = pool._order(now)
        self.fallback: bytes | None = None
        self.live = 0
        self.next = 0
        self._launch(2 if pool.strategy == "parallel_best" else 1, now)

    def _launch(self, count: int, now: float) -> None:
        pool = self.pool
        order = self.order
        while count and self.next < len(order):
            endpoint = order[self.next]
            self.next += 1
            count -= 1
            pool._stats[endpoint].requests += 1
            self.live += 1
            # Each upstream gets upstream_timeout before the next is asked; the last one left may use all the time
            # the question has (query_timeout), since there is nobody else to ask.
            left = max(0.01, self.deadline - now)
            timeout = left if self.next == len(order) else min(pool.timeout, left)
            attempt = Attempt(endpoint, self.query, now, timeout, self.deadline, self._finished)
            (pool.udp if endpoint.transport == "udp" else pool.stream).send(attempt)
        if not self.live:
            self._finish(self.fallback)

    def _finished(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> None:
        self.live -= 1
        usable = self.pool._record(attempt, reply, error)
        if self.done is None:  # already answered by the other of two parallel attempts
            return
        if usable:
            self._finish(reply)
            return
        if reply is not None:
            self.fallback = reply
        if not self.live:
            now = self.pool.clock.time()
            if self.deadline - now > 0:
                self._launch(1, now)
            else:
                self._finish(self.fallback)

    def _finish(self, reply: bytes | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(self.query, reply)
