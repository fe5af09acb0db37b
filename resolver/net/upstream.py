"""Asking the upstream resolvers: the pool that owns the transports, each upstream's health, and its probes.

The transports are elsewhere: ``udp`` (connected sockets, random IDs, ports and name case), ``streamconn`` (TCP and
DNS over TLS, and UDP's truncated replies); ``attempt`` holds what they share with the pool. ``health`` keeps each
upstream's counters, penalty, round-trip time and 0x20 capability; ``resolution`` walks one question down the
upstreams, retransmitting on the way. The pool decides on an injected clock; the transports only carry questions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container
from typing import Final

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError
from resolver.net.attempt import Attempt, Sweep, Transport
from resolver.net.health import PENALTY_SECONDS as PENALTY_SECONDS
from resolver.net.health import Health
from resolver.net.health import UpstreamStats as UpstreamStats
from resolver.net.resolution import Walker
from resolver.net.streamconn import StreamTransport
from resolver.net.udp import RandomIds, UdpTransport

log = logging.getLogger("resolver.net.upstream")

Answered = Callable[[Query, bytes | None], None]
_PROBE: Final = wire.HEADER.pack(0, wire.RD, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01"  # ". NS": any server answers


class UpstreamPool:
    """The configured upstreams, their health, and the walk down them for each question (``resolve``).

    ``sweep`` brings the clock: the event loop unless a test gives a fake one. ``udp`` carries questions to
    udp:// upstreams and ``stream`` to tcp:// and tls:// ones: by default sockets and connections on the running
    loop, in tests fakes that record what is sent. UDP attempts wait in tables the sweep walks, so their
    timeouts and retransmissions follow the injected clock. ``avoid_ports`` are ports no upstream socket may take
    (our own listening ports).
    """

    def __init__(self, endpoints: tuple[Endpoint, ...], timeout: float, deadline: float, stats: Stats,
                 strategy: str = "strict", ca_file: str | None = None, *, sweep: Sweep | None = None,
                 udp: Transport | None = None, stream: Transport | None = None,
                 avoid_ports: Container[int] = ()) -> None:
        if not endpoints:
            raise UpstreamError("no upstream resolvers configured")
        self.endpoints = endpoints
        self.strategy = strategy
        self.timeout = timeout
        self.deadline = deadline
        self.stats = stats
        self.ids = RandomIds()
        # The loop is kept, not looked up per question: asyncio.get_running_loop() costs a getpid() system call.
        self.sweep = sweep if sweep is not None else Sweep(asyncio.get_running_loop())
        self.clock = self.sweep.clock
        self.health = Health(endpoints, strategy, self.clock, self.ids)
        self.upstream_stats = self.health.by_name  # for metrics
        self.stream = stream if stream is not None else StreamTransport(endpoints, ca_file, self.ids.unused, stats)
        self.udp = udp if udp is not None else UdpTransport(asyncio.get_running_loop(), self.sweep, self.ids, stats,
                                                            self.stream, avoid_ports)
        self.walker = Walker(self.health, self.udp, self.stream, self.clock, timeout, deadline)

    def resolve(self, query: Query, done: Answered) -> None:
        """Find a reply matching ``query`` and hand both to ``done`` (None: no upstream gave one before the deadline).

        Callbacks, not a task per question: over UDP a cache miss costs a send, an entry in the socket's table of
        questions, and two small objects. How the walk goes (strategy, failover, retransmission, near misses): see
        ``resolver.net.resolution``.
        """
        self.walker.resolve(query, done)

    def healthy(self, within: float) -> bool:
        """Whether any upstream gave a good reply in the last ``within`` seconds (for /readyz)."""
        return self.health.healthy(within)

    async def probe(self) -> None:
        """Ask every upstream at once for the root NS set: any matching reply (even REFUSED) shows it is alive and
        puts it back in the rotation, and gives a round trip to time retransmissions by; silence takes it out.
        Runs whether or not clients are asking. An upstream that stops answering is logged once at WARNING (at
        start-up too, so a wrong address is seen at once), and once at INFO when it answers again."""
        await asyncio.gather(*(self._probe(endpoint) for endpoint in self.endpoints))

    async def _probe(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        _Probe(self, endpoint, wire.parse_query(_PROBE), future).send(None)
        reply = await future
        stats = self.health.stats[endpoint]
        now = self.clock.time()
        if reply is None:
            self.health.penalise(stats, now)
            if not stats.probe_silent:
                log.warning("upstream %s did not answer a health probe within %.1fs: asked last while it is silent",
                            endpoint, self.timeout)
            stats.probe_silent = True
            return
        if stats.probe_silent:
            log.info("upstream %s answers health probes again", endpoint)
        stats.probe_silent = False
        stats.down_until = 0.0
        stats.last_ok = now

    def close(self) -> None:
        """Close the transports' sockets and connections (at shutdown; anything still waiting was given its drain
        time)."""
        self.stream.close()
        self.udp.close()
        self.sweep.close()


class _Probe:
    """One health probe of one upstream (the ``Owner`` of its attempts): sent again on the upstream's
    retransmission timeout like any question, so that one lost packet does not mark a live upstream down; the
    first reply to any send settles it, silence for ``upstream_timeout`` too."""

    __slots__ = ("endpoint", "future", "live", "pool", "query", "until")

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint, query: Query,
                 future: asyncio.Future[bytes | None]) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.query = query
        self.future = future
        self.live: list[Attempt] = []
        self.until = pool.clock.time() + pool.timeout

    def send(self, after: Attempt | None) -> None:
        pool = self.pool
        now = pool.clock.time()
        udp = self.endpoint.transport == "udp"
        rto = pool.health.rto(self.endpoint) if after is None else after.rto * 2
        attempt = Attempt(self.endpoint, self.query, now, self.until - now, self.until, self,
                          rto if udp else 0.0, None, after)
        self.live.append(attempt)
        (pool.udp if udp else pool.stream).send(attempt)

    def timed_out(self, attempt: Attempt) -> None:
        if not self.future.done():
            self.send(attempt)

    def finished(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> None:
        if reply is not None and self.endpoint.transport == "udp" and not attempt.tcp:
            self.pool.health.stats[self.endpoint].sampled(self.pool.clock.time() - attempt.started)
        if attempt in self.live:
            self.live.remove(attempt)
        if self.future.done():
            return
        if reply is not None or not self.live:
            for other in self.live:
                other.close()
            self.future.set_result(reply)

    def near_miss(self, attempt: Attempt, case_only: bool) -> None:
        """Counted by the transport; a probe has nothing to switch."""
