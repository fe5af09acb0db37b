"""Asking the upstream resolvers: UDP on short-lived connected sockets, TCP when the reply is truncated.

Each UDP socket is connected to one upstream (the kernel drops datagrams from any other address) and carries a
few dozen questions for at most a second before a new one takes a fresh random source port (``_Channel``); with a
random ID and the question checked on the reply, a spoofed answer has to guess about 32 bits and the name.
Replies that do not match are dropped and counted, and we keep listening until the timeout, so a forged packet
cannot cut a real answer short.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import os
import random
import socket
import ssl
from bisect import bisect_left
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import LATENCY_BOUNDS, Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError, UpstreamTimeout
from resolver.net.streamconn import ConnectionLost, StreamConn
from resolver.tasks import TaskSet

log = logging.getLogger("resolver.net.upstream")

# An upstream that just failed is asked last for this long, so one dead server does not cost every query a timeout.
PENALTY_SECONDS: Final = 5.0
_RETRY_RCODES: Final = (wire.SERVFAIL, wire.REFUSED, wire.NOTIMP)
Answered = Callable[[Query, bytes | None], None]
SWEEP_SECONDS: Final = 0.02


@dataclass(slots=True)
class UpstreamStats:
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    latency_sum: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    answered: int = 0
    down_until: float = 0.0  # loop time until which it is asked last
    last_ok: float = -1e9  # loop time of its last good reply (a query or a probe)
    ewma: float = 0.0  # smoothed answer time, for parallel_best

    def answered_in(self, seconds: float) -> None:
        self.answered += 1
        self.latency_sum += seconds
        self.latency_buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1


class RandomIds:
    """Unpredictable 16-bit query IDs from the OS's CSPRNG, read 4 KiB at a time instead of a syscall per ID."""

    __slots__ = ("_at", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def next(self) -> int:
        at = self._at
        if at >= len(self._buffer):
            self._buffer = os.urandom(4096)
            at = 0
        self._at = at + 2
        return self._buffer[at] << 8 | self._buffer[at + 1]

    def unused(self, taken: Container[int]) -> int:
        """A random ID not in ``taken`` (the IDs in flight where it will be sent)."""
        qid = self.next()
        while qid in taken:
            qid = self.next()
        return qid


class UpstreamPool:
    def __init__(self, endpoints: tuple[Endpoint, ...], timeout: float, deadline: float, stats: Stats,
                 strategy: str = "strict", ca_file: str | None = None) -> None:
        if not endpoints:
            raise UpstreamError("no upstream resolvers configured")
        self.endpoints = endpoints
        self.strategy = strategy
        # Certificates of DoT upstreams are verified: the system's trust store, plus ca_file when given. Loaded
        # only when a DoT upstream (or a CA file, checked now) is configured: it is ~40 ms of every start-up.
        self.tls_context: ssl.SSLContext | None = None
        if ca_file is not None or any(e.transport == "tls" for e in endpoints):
            self.tls_context = ssl.create_default_context(cafile=ca_file)
            self.tls_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout
        self.deadline = deadline
        self.stats = stats
        self._stats = {e: UpstreamStats() for e in endpoints}  # the per-query path: no str() per query
        self.upstream_stats = {str(e): s for e, s in self._stats.items()}  # the same objects, for metrics
        self.streams = TaskSet()  # TCP/TLS exchanges in flight
        self._conns: dict[Endpoint, StreamConn] = {}
        self._channels: dict[Endpoint, _Channel] = {}  # the UDP socket new questions to each upstream go out on
        self._open: set[_Channel] = set()  # every UDP socket still open: the current ones, and retired ones
        self._timer: asyncio.TimerHandle | None = None  # the timeout sweep, while any UDP question waits
        self.ids = RandomIds()
        self._all_up_after = 0.0  # no upstream's penalty runs past this loop time
        # Kept, not looked up per question: asyncio.get_running_loop() costs a getpid() system call each time.
        self.loop = asyncio.get_running_loop()

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
        questions, and two small objects. ``parallel_best``
        asks the two fastest healthy upstreams at once and takes the first good answer; every strategy then goes
        down the rest of the list one at a time. A SERVFAIL or REFUSED reply is kept as the answer of last resort
        while other upstreams are tried.
        """
        _Resolution(self, query, done)

    def _channel(self, endpoint: Endpoint, now: float) -> _Channel:
        """The UDP socket for the next question to ``endpoint``: a new one (a new random port) once the current
        one has had its share of questions or time."""
        channel = self._channels.get(endpoint)
        if channel is not None and channel.uses > 0 and now < channel.retire_at:
            return channel
        fresh = self._channels[endpoint] = _Channel(self, endpoint, now)
        if channel is not None and not channel.pending:
            channel.close()
        return fresh

    def _sweep(self) -> None:
        """Time out the UDP questions past their deadline. One sweep every ``SWEEP_SECONDS`` while any question
        waits, instead of a timer per question: a timeout fires up to that much late, which nobody can tell
        from a timeout of a second or more."""
        now = self.loop.time()
        for channel in list(self._open):
            for attempt in [a for a in channel.pending.values() if a.expires <= now]:
                attempt.expire()
        self._timer = None
        if any(channel.pending for channel in self._open):
            self._timer = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _penalise(self, stats: UpstreamStats, now: float) -> None:
        stats.down_until = self._all_up_after = now + PENALTY_SECONDS

    def _record(self, attempt: _Attempt, reply: bytes | None, error: BaseException | None) -> bool:
        """Count one finished attempt and keep the upstream's health; whether ``reply`` is a usable answer."""
        stats = self._stats[attempt.endpoint]
        now = self.loop.time()
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
        now = self.loop.time()
        return any(now - s.last_ok <= within for s in self.upstream_stats.values())

    async def probe(self) -> None:
        """Ask every upstream for the root NS set: any matching reply (even REFUSED) shows it is alive and
        puts it back in the rotation; silence takes it out. Runs whether or not clients are asking."""
        loop = self.loop
        probe = wire.parse_query(wire.HEADER.pack(0, wire.RD, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01")
        for endpoint in self.endpoints:
            stats = self._stats[endpoint]
            future: asyncio.Future[bytes | None] = loop.create_future()
            now = loop.time()
            _Attempt(self, endpoint, probe, now, now + self.timeout, partial(_settle, future))
            if await future is None:
                self._penalise(stats, loop.time())
            else:
                stats.down_until = 0.0
                stats.last_ok = loop.time()

    async def _stream(self, endpoint: Endpoint, query: Query, timeout: float) -> bytes:
        """One question over TCP, or TLS (DNS over TLS, RFC 7858, the certificate checked against the endpoint's
        name), on the endpoint's shared connection. A question sent on a reused connection that the upstream
        had just closed (idle servers do) is sent once more on a fresh one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for fresh_only in (False, True):
            conn = self._conns.get(endpoint)
            if conn is None or conn.closed or fresh_only:
                conn = self._conns[endpoint] = StreamConn(
                    endpoint, self.tls_context if endpoint.transport == "tls" else None, self.ids.unused, self.stats,
                    self.streams, self._conn_closed)
            reused = conn.answered > 0
            try:
                return await asyncio.wait_for(conn.ask(query), max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise UpstreamTimeout(f"{endpoint}: no {endpoint.transport.upper()} reply within {timeout:.2f}s") \
                    from None
            except ConnectionLost as err:
                if not reused or fresh_only:
                    raise UpstreamError(f"{endpoint}: {err.__cause__ or err}") from err
        raise AssertionError("unreachable")

    def _conn_closed(self, conn: StreamConn) -> None:
        if self._conns.get(conn.endpoint) is conn:
            del self._conns[conn.endpoint]

    def close(self) -> None:
        """Close the shared TCP/TLS connections and the current UDP sockets (at shutdown; anything still waiting
        was given its drain time)."""
        for conn in list(self._conns.values()):
            conn.close()  # (takes itself out of the table)
        for channel in list(self._open):
            channel.fail(UpstreamError(f"{channel.endpoint}: shutting down"))
        if self._timer is not None:
            self._timer.cancel()


Done = Callable[["_Attempt", bytes | None, BaseException | None], None]


def _settle(future: asyncio.Future[bytes | None], _attempt: _Attempt, reply: bytes | None,
            _error: BaseException | None) -> None:
    if not future.done():
        future.set_result(reply)


class _Channel:
    """A connected UDP socket to one upstream, shared by at most ``USES`` questions in turn, with its reader
    registered once: a cache miss costs a send and a share of one wake-up, not a socket, a connect, two epoll
    changes and a close.

    Spoofing: a forged reply must still hit an open port and an ID in flight there, and name the question. The
    odds per forged packet are the same as with a socket per question (questions in flight over open ports × IDs,
    whichever way they are spread). What a shared socket gives away is time: a port that stays open could be found
    by a side channel (SAD DNS) and then flooded. So no port serves more than ``USES`` questions or is asked for
    more than ``SECONDS``; then a new socket takes a fresh random port from the kernel, and the old one closes
    when its last question is answered or times out."""

    USES: Final = 64
    SECONDS: Final = 1.0

    __slots__ = ("endpoint", "fd", "pending", "pool", "retire_at", "sock", "uses")

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint, now: float) -> None:
        # The C socket type, created non-blocking: the Python wrapper and a separate ioctl are measurable per miss.
        family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
        sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect((endpoint.host, endpoint.port))  # the kernel drops datagrams from any other address
        except OSError:
            sock.close()
            raise
        self.pool = pool
        self.endpoint = endpoint
        self.sock: _socket.socket | None = sock
        self.fd = sock.fileno()
        self.pending: dict[int, _Attempt] = {}
        self.uses = self.USES
        self.retire_at = now + self.SECONDS
        pool.loop.add_reader(self.fd, self._readable)
        pool._open.add(self)

    def send(self, attempt: _Attempt, query: Query) -> int:
        """Send ``query`` for ``attempt``; returns the ID it went out with."""
        pool = self.pool
        qid = pool.ids.unused(self.pending)
        assert self.sock is not None
        self.sock.send(wire.upstream_query(query, qid))
        self.uses -= 1
        self.pending[qid] = attempt
        if pool._timer is None:
            pool._timer = pool.loop.call_later(SWEEP_SECONDS, pool._sweep)
        return qid

    def _readable(self) -> None:
        pending = self.pending
        while (sock := self.sock) is not None:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as err:  # e.g. ICMP port unreachable: nobody listens there, so fail them all now
                self.fail(UpstreamError(f"{self.endpoint}: {err}"))
                return
            attempt = pending.get(data[0] << 8 | data[1]) if len(data) >= 12 else None
            if attempt is None or not wire.is_response(data, attempt.qid, attempt.query):
                self.pool.stats.upstream_mismatch += 1  # forged or stale: keep listening for the real one
                continue
            self._release(attempt.qid)
            attempt.replied(data)

    def retired(self) -> bool:
        """Whether new questions go out on another socket now."""
        return self.uses <= 0 or self.pool._channels.get(self.endpoint) is not self

    def forget(self, attempt: _Attempt) -> None:
        """``attempt`` timed out: its ID is no longer awaited here."""
        if self.pending.get(attempt.qid) is attempt:
            self._release(attempt.qid)

    def _release(self, qid: int) -> None:
        del self.pending[qid]
        if not self.pending and self.retired():
            self.close()  # nothing left to wait for on a socket that takes no new questions

    def fail(self, error: BaseException) -> None:
        waiting = list(self.pending.values())
        self.pending.clear()
        self.close()
        for attempt in waiting:
            attempt.failed(error)

    def close(self) -> None:
        if self.pool._channels.get(self.endpoint) is self:
            del self.pool._channels[self.endpoint]
        if self.sock is not None:
            self.pool._open.discard(self)
            self.pool.loop.remove_reader(self.fd)
            self.sock.close()
            self.sock = None


class _Attempt:
    """One question to one upstream over its transport, reported once to ``done`` as (reply, None) or
    (None, error). UDP goes out on the upstream's current ``_Channel``, and its timeout is found by the pool's
    sweep, not a timer of its own; a truncated reply, or a tcp:// or tls:// upstream, takes a task for
    the stream exchange."""

    __slots__ = ("channel", "deadline", "done", "endpoint", "expires", "pool", "qid", "query", "started", "timeout")

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint, query: Query, now: float, deadline: float, done: Done,
                 last: bool = False) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.query = query
        self.done = done
        self.started = now
        self.deadline = deadline
        self.channel: _Channel | None = None
        loop = pool.loop
        # Each upstream gets upstream_timeout before the next is asked; the last one left may use all the time
        # the question has (query_timeout), since there is nobody else to ask.
        left = max(0.01, deadline - now)
        timeout = self.timeout = left if last else min(pool.timeout, left)
        if endpoint.transport != "udp":
            self._stream(timeout)
            return
        try:
            channel = pool._channel(endpoint, now)
        except OSError as err:  # out of file descriptors, say: this question fails, the server goes on
            loop.call_soon(done, self, None, UpstreamError(f"{endpoint}: {err}"))  # not from inside the caller
            return
        try:
            self.qid = channel.send(self, query)
        except OSError as err:  # an ICMP error from an earlier question, say: the socket's others share its fate
            error = UpstreamError(f"{endpoint}: {err}")
            loop.call_soon(channel.fail, error)
            loop.call_soon(done, self, None, error)
            return
        self.channel = channel
        self.expires = now + timeout

    def replied(self, data: bytes) -> None:
        self.channel = None
        if data[2] & 0x02:  # TC: the whole answer only fits over TCP
            self._stream(max(0.05, self.deadline - self.pool.loop.time()))
        else:
            self.done(self, data, None)

    def failed(self, error: BaseException) -> None:
        if self.channel is not None:
            self.channel = None
            self.done(self, None, error)

    def expire(self) -> None:
        channel = self.channel
        if channel is not None:
            channel.forget(self)
            self.channel = None
            self.done(self, None, UpstreamTimeout(f"{self.endpoint}: no reply within {self.timeout:.2f}s"))

    def _stream(self, timeout: float) -> None:
        task = self.pool.streams.spawn(self.pool._stream(self.endpoint, self.query, timeout))
        task.add_done_callback(self._streamed)

    def _streamed(self, task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            self.done(self, None, UpstreamError(f"{self.endpoint}: cancelled"))
        elif (error := task.exception()) is not None:
            self.done(self, None, error)
        else:
            self.done(self, task.result(), None)


class _Resolution:
    """One question walking down the upstream list by callbacks, until a usable reply or the deadline."""

    __slots__ = ("deadline", "done", "fallback", "live", "next", "order", "pool", "query")

    def __init__(self, pool: UpstreamPool, query: Query, done: Answered) -> None:
        self.pool = pool
        self.query = query
        self.done: Answered | None = done
        now = pool.loop.time()
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
            _Attempt(pool, endpoint, self.query, now, self.deadline, self._finished, last=self.next == len(order))
        if not self.live:
            self._finish(self.fallback)

    def _finished(self, attempt: _Attempt, reply: bytes | None, error: BaseException | None) -> None:
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
            now = self.pool.loop.time()
            if self.deadline - now > 0:
                self._launch(1, now)
            else:
                self._finish(self.fallback)

    def _finish(self, reply: bytes | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(self.query, reply)
