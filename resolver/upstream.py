"""Asking the upstream resolvers: UDP with a fresh socket per query, TCP when the reply is truncated.

A fresh connected socket gives every upstream query its own random source port (the kernel picks it) and makes
the kernel drop datagrams from any other address; with a random ID and the question checked on the reply, a
spoofed answer has to guess about 32 bits and the name. Replies that do not match are dropped and counted, and
we keep listening until the timeout, so a forged packet cannot cut a real answer short.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from resolver.config import Endpoint
from resolver.core import wire
from resolver.core.cache import matches
from resolver.core.stats import LATENCY_BOUNDS, Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError, UpstreamTimeout

log = logging.getLogger("resolver.upstream")

# An upstream that just failed is asked last for this long, so one dead server does not cost every query a timeout.
PENALTY_SECONDS = 5.0
_RETRY_RCODES = (wire.SERVFAIL, wire.REFUSED, wire.NOTIMP)


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


class UpstreamPool:
    def __init__(self, endpoints: tuple[Endpoint, ...], timeout: float, deadline: float, stats: Stats,
                 strategy: str = "strict", ca_file: str | None = None) -> None:
        if not endpoints:
            raise UpstreamError("no upstream resolvers configured")
        self.endpoints = endpoints
        self.strategy = strategy
        # Certificates of DoT upstreams are verified: the system's trust store, plus ca_file when given.
        self.tls_context = ssl.create_default_context(cafile=ca_file)
        self.tls_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout
        self.deadline = deadline
        self.stats = stats
        self._stats = {e: UpstreamStats() for e in endpoints}  # the per-query path: no str() per query
        self.upstream_stats = {str(e): s for e, s in self._stats.items()}  # the same objects, for metrics
        self.streams: set[asyncio.Task[Any]] = set()  # TCP/TLS tasks in flight (the loop holds tasks weakly)
        self._conns: dict[Endpoint, _StreamConn] = {}
        self.ids = RandomIds()

    def _order(self, now: float) -> list[Endpoint]:
        """Healthy upstreams first (in config order, shuffled, or fastest first, by strategy), then the rest."""
        healthy = [e for e in self.endpoints if self._stats[e].down_until <= now]
        if self.strategy == "random":
            healthy = random.sample(healthy, len(healthy))
        elif self.strategy == "parallel_best":
            healthy.sort(key=lambda e: self._stats[e].ewma)
        return healthy + [e for e in self.endpoints if e not in healthy]

    def resolve(self, query: Query, done: Callable[[bytes | None], None]) -> None:
        """Find a reply matching ``query`` and hand it to ``done`` (None: no upstream gave one before the deadline).

        Callbacks, not a task per question: a cache miss costs a socket and a timer, nothing more. ``parallel_best``
        asks the two fastest healthy upstreams at once and takes the first good answer; every strategy then goes
        down the rest of the list one at a time. A SERVFAIL or REFUSED reply is kept as the answer of last resort
        while other upstreams are tried.
        """
        _Resolution(self, query, done)

    def _record(self, endpoint: Endpoint, started: float, reply: bytes | None, error: BaseException | None) -> bool:
        """Count one finished attempt and keep the upstream's health; whether ``reply`` is a usable answer."""
        stats = self._stats[endpoint]
        now = asyncio.get_running_loop().time()
        if reply is None:
            if isinstance(error, UpstreamTimeout):
                stats.timeouts += 1
            else:
                stats.errors += 1
            stats.down_until = now + PENALTY_SECONDS
            if log.isEnabledFor(logging.DEBUG):
                log.debug("upstream %s failed: %s", endpoint, error)
            return False
        elapsed = now - started
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
        now = asyncio.get_running_loop().time()
        return any(now - s.last_ok <= within for s in self.upstream_stats.values())

    async def probe(self) -> None:
        """Ask every upstream for the root NS set: any matching reply (even REFUSED) shows it is alive and
        puts it back in the rotation; silence takes it out. Runs whether or not clients are asking."""
        loop = asyncio.get_running_loop()
        probe = wire.parse_query(wire.HEADER.pack(0, wire.RD, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01")
        for endpoint in self.endpoints:
            stats = self._stats[endpoint]
            future: asyncio.Future[bytes | None] = loop.create_future()
            _Attempt(self, endpoint, probe, loop.time() + self.timeout, partial(_settle, future))
            if await future is None:
                stats.down_until = loop.time() + PENALTY_SECONDS
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
                conn = self._conns[endpoint] = _StreamConn(self, endpoint)
            reused = conn.answered > 0
            try:
                return await asyncio.wait_for(conn.ask(query), max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise UpstreamTimeout(f"{endpoint}: no {endpoint.transport.upper()} reply within {timeout:.2f}s") \
                    from None
            except _ConnectionLost as err:
                if not reused or fresh_only:
                    raise UpstreamError(f"{endpoint}: {err.__cause__ or err}") from err
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the shared TCP/TLS connections (at shutdown)."""
        for conn in list(self._conns.values()):
            conn.close()  # (takes itself out of the table)


class _ConnectionLost(UpstreamError):
    """The shared connection failed or was closed under a question."""


class _StreamConn:
    """One TCP or TLS connection to an upstream, shared by every question to it (RFC 7766 pipelining: several
    questions in flight, answers in any order, matched on ID and question). One TLS handshake serves many
    questions; the connection closes itself when idle and is opened again on the next question."""

    IDLE_SECONDS = 10.0
    MAX_PENDING = 1000  # questions in flight on one connection; past it new ones fail over to the next upstream

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.pending: dict[int, tuple[Query, asyncio.Future[bytes]]] = {}
        self.closed = False
        self.answered = 0
        self.writer: asyncio.StreamWriter | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
        self.task = loop.create_task(self._run())
        pool.streams.add(self.task)
        self.task.add_done_callback(pool.streams.discard)

    async def ask(self, query: Query) -> bytes:
        if len(self.pending) >= self.MAX_PENDING:
            raise UpstreamError(f"{self.endpoint}: {self.MAX_PENDING} questions already in flight")
        writer = await asyncio.shield(self.opened)
        qid = self.pool.ids.next()
        while qid in self.pending:
            qid = self.pool.ids.next()
        packet = wire.upstream_query(query, qid)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[qid] = (query, future)
        try:
            if self.closed:
                raise _ConnectionLost("connection closed")
            writer.write(len(packet).to_bytes(2, "big") + packet)
            return await future
        finally:
            self.pending.pop(qid, None)

    async def _run(self) -> None:
        endpoint = self.endpoint
        tls = self.pool.tls_context if endpoint.transport == "tls" else None
        error: BaseException | None = None
        try:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=tls,
                server_hostname=(endpoint.tls_name or endpoint.host) if tls is not None else None)
            self.writer = writer
            self.opened.set_result(writer)
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.IDLE_SECONDS)
                except TimeoutError:
                    if self.pending:
                        continue
                    return  # idle: close, and open again on the next question
                reply = await reader.readexactly(int.from_bytes(head, "big"))
                waiting = self.pending.get(reply[0] << 8 | reply[1]) if len(reply) >= 2 else None
                if waiting is None or not matches(reply, reply[0] << 8 | reply[1], waiting[0]):
                    self.pool.stats.upstream_mismatch += 1
                    continue
                self.answered += 1
                if not waiting[1].done():
                    waiting[1].set_result(reply)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, UpstreamError) as err:
            error = err
        finally:
            self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        self.closed = True
        if self.pool._conns.get(self.endpoint) is self:
            del self.pool._conns[self.endpoint]
        lost = _ConnectionLost("connection closed" if error is None else str(error))
        lost.__cause__ = error
        if not self.opened.done():
            self.opened.set_exception(lost)
            self.opened.exception()  # retrieved here: a question that gave up waiting on it must not log it
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(lost)
        if self.writer is not None:
            self.writer.close()
        if not self.task.done() and asyncio.current_task() is not self.task:
            self.task.cancel()


Done = Callable[[bytes | None, BaseException | None], None]


def _settle(future: asyncio.Future[bytes | None], reply: bytes | None, _error: BaseException | None) -> None:
    if not future.done():
        future.set_result(reply)


class _Attempt:
    """One question to one upstream over its transport, reported once to ``done`` as (reply, None) or
    (None, error). UDP runs on reader and timer callbacks over a fresh connected socket (a random source port
    per question, and the kernel drops datagrams from any other address); a truncated reply, or a tcp:// or
    tls:// upstream, takes a task for the stream exchange."""

    __slots__ = ("deadline", "done", "endpoint", "fd", "loop", "pool", "qid", "query", "sock", "timer")

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint, query: Query, deadline: float, done: Done,
                 last: bool = False) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.query = query
        self.done = done
        self.deadline = deadline
        loop = self.loop = asyncio.get_running_loop()
        # Each upstream gets upstream_timeout before the next is asked; the last one left may use all the time
        # the question has (query_timeout), since there is nobody else to ask.
        left = max(0.01, deadline - loop.time())
        timeout = left if last else min(pool.timeout, left)
        self.sock: _socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        if endpoint.transport != "udp":
            self._stream(timeout)
            return
        self.qid = qid = pool.ids.next()
        packet = wire.upstream_query(query, qid)
        try:
            # The C socket type: the Python wrapper's constructor and close are a measurable share of a miss.
            sock = _socket.socket(socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as err:  # out of file descriptors, say: this question fails, the server goes on
            loop.call_soon(done, None, UpstreamError(f"{endpoint}: {err}"))  # not from inside the caller
            return
        self.fd = sock.fileno()
        try:
            sock.setblocking(False)
            sock.connect((endpoint.host, endpoint.port))
            sock.send(packet)
        except OSError as err:
            sock.close()
            loop.call_soon(done, None, UpstreamError(f"{endpoint}: {err}"))
            return
        self.sock = sock
        loop.add_reader(self.fd, self._readable)
        self.timer = loop.call_later(timeout, self._expire, timeout)

    def _readable(self) -> None:
        sock = self.sock
        while sock is not None:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as err:  # e.g. ICMP port unreachable: fail now, not at the timeout
                self._close()
                self.done(None, UpstreamError(f"{self.endpoint}: {err}"))
                return
            if not matches(data, self.qid, self.query):
                self.pool.stats.upstream_mismatch += 1  # forged or stale: keep listening for the real one
                continue
            self._close()
            if data[2] & 0x02:  # TC: the whole answer only fits over TCP
                self._stream(max(0.05, self.deadline - self.loop.time()))
            else:
                self.done(data, None)
            return

    def _expire(self, timeout: float) -> None:
        if self.sock is not None:
            self._close()
            self.done(None, UpstreamTimeout(f"{self.endpoint}: no reply within {timeout:.2f}s"))

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.fd)
            self.sock.close()
            self.sock = None

    def _stream(self, timeout: float) -> None:
        task = self.loop.create_task(self.pool._stream(self.endpoint, self.query, timeout))
        self.pool.streams.add(task)
        task.add_done_callback(self._streamed)

    def _streamed(self, task: asyncio.Task[bytes]) -> None:
        self.pool.streams.discard(task)
        if task.cancelled():
            self.done(None, UpstreamError(f"{self.endpoint}: cancelled"))
        elif (error := task.exception()) is not None:
            self.done(None, error)
        else:
            self.done(task.result(), None)


class _Resolution:
    """One question walking down the upstream list by callbacks, until a usable reply or the deadline."""

    __slots__ = ("deadline", "done", "fallback", "live", "next", "order", "pool", "query")

    def __init__(self, pool: UpstreamPool, query: Query, done: Callable[[bytes | None], None]) -> None:
        self.pool = pool
        self.query = query
        self.done: Callable[[bytes | None], None] | None = done
        now = asyncio.get_running_loop().time()
        self.deadline = now + pool.deadline
        self.order = pool._order(now)
        self.fallback: bytes | None = None
        self.live = 0
        self.next = 0
        self._launch(2 if pool.strategy == "parallel_best" else 1)

    def _launch(self, count: int) -> None:
        pool = self.pool
        while count and self.next < len(self.order):
            endpoint = self.order[self.next]
            self.next += 1
            count -= 1
            pool._stats[endpoint].requests += 1
            self.live += 1
            started = asyncio.get_running_loop().time()
            _Attempt(pool, endpoint, self.query, self.deadline, partial(self._finished, endpoint, started),
                     last=self.next == len(self.order))
        if not self.live:
            self._finish(self.fallback)

    def _finished(self, endpoint: Endpoint, started: float, reply: bytes | None, error: BaseException | None) -> None:
        self.live -= 1
        usable = self.pool._record(endpoint, started, reply, error)
        if self.done is None:  # already answered by the other of two parallel attempts
            return
        if usable:
            self._finish(reply)
            return
        if reply is not None:
            self.fallback = reply
        if not self.live:
            if self.deadline - asyncio.get_running_loop().time() > 0:
                self._launch(1)
            else:
                self._finish(self.fallback)

    def _finish(self, reply: bytes | None) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(reply)
