"""Asking the upstream resolvers: UDP with a fresh socket per query, TCP when the reply is truncated.

A fresh connected socket gives every upstream query its own random source port (the kernel picks it) and makes
the kernel drop datagrams from any other address; with a random ID and the question checked on the reply, a
spoofed answer has to guess about 32 bits and the name. Replies that do not match are dropped and counted, and
we keep listening until the timeout, so a forged packet cannot cut a real answer short.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import ssl
from bisect import bisect_left
from dataclasses import dataclass, field

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


def _expire(future: asyncio.Future[bytes], endpoint: Endpoint, timeout: float) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeout(f"{endpoint}: no reply within {timeout:.2f}s"))


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

    def _order(self, now: float) -> list[Endpoint]:
        """Healthy upstreams first (in config order, shuffled, or fastest first, by strategy), then the rest."""
        healthy = [e for e in self.endpoints if self._stats[e].down_until <= now]
        if self.strategy == "random":
            healthy = random.sample(healthy, len(healthy))
        elif self.strategy == "parallel_best":
            healthy.sort(key=lambda e: self._stats[e].ewma)
        return healthy + [e for e in self.endpoints if e not in healthy]

    async def resolve(self, query: Query) -> bytes:
        """A reply matching ``query`` from the first upstream that gives a usable one, within the deadline.

        ``parallel_best`` asks the two fastest healthy upstreams at once and takes the first good answer; every
        strategy then goes down the rest of the list one at a time. A SERVFAIL or REFUSED reply is kept as the
        answer of last resort while other upstreams are tried.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        order = self._order(loop.time())
        fallback: bytes | None = None
        errors: list[BaseException] = []
        if self.strategy == "parallel_best" and len(order) >= 2:
            first, order = order[:2], order[2:]
            pending = {asyncio.ensure_future(self._attempt(e, query, deadline)) for e in first}
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        error = task.exception()
                        if error is not None:
                            errors.append(error)
                            continue
                        reply = task.result()
                        if reply[3] & 0x0F not in _RETRY_RCODES:
                            return reply
                        fallback = reply
            finally:
                for task in pending:
                    task.cancel()
        for endpoint in order:
            if deadline - loop.time() <= 0:
                break
            try:
                reply = await self._attempt(endpoint, query, deadline)
            except (UpstreamError, OSError) as err:
                errors.append(err)
                continue
            if reply[3] & 0x0F not in _RETRY_RCODES:
                return reply
            fallback = reply
        if fallback is not None:
            return fallback
        last = errors[-1] if errors else UpstreamError("no upstream was asked before the deadline")
        raise UpstreamError(f"no upstream answered: {last}") from last

    async def _attempt(self, endpoint: Endpoint, query: Query, deadline: float) -> bytes:
        """One upstream, one question, counted; raises UpstreamError (or a subclass) on any failure."""
        loop = asyncio.get_running_loop()
        stats = self._stats[endpoint]
        started = loop.time()
        stats.requests += 1
        try:
            reply = await self._exchange(endpoint, query, deadline)
        except UpstreamTimeout:
            stats.timeouts += 1
            stats.down_until = loop.time() + PENALTY_SECONDS
            raise
        except (OSError, UpstreamError, asyncio.IncompleteReadError, ssl.SSLError) as err:
            stats.errors += 1
            stats.down_until = loop.time() + PENALTY_SECONDS
            raise UpstreamError(f"{endpoint}: {err}") from err
        elapsed = loop.time() - started
        stats.answered_in(elapsed)
        stats.ewma = elapsed if stats.ewma == 0.0 else 0.7 * stats.ewma + 0.3 * elapsed
        if reply[3] & 0x0F in _RETRY_RCODES:
            stats.errors += 1
        else:
            stats.down_until = 0.0
            stats.last_ok = loop.time()
        return reply

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
            try:
                await self._exchange(endpoint, probe, loop.time() + self.timeout)
            except (UpstreamError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
                stats.down_until = loop.time() + PENALTY_SECONDS
            else:
                stats.down_until = 0.0
                stats.last_ok = loop.time()

    async def _exchange(self, endpoint: Endpoint, query: Query, deadline: float) -> bytes:
        """One question to one upstream over its transport: a fresh random ID, and for UDP the TCP retry when
        the reply is truncated. Raises on any failure; counting is the caller's."""
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        packet = wire.upstream_query(query, qid)
        timeout = min(self.timeout, max(0.01, deadline - loop.time()))
        if endpoint.transport != "udp":
            return await self._stream(endpoint, packet, qid, query, timeout)
        reply = await self._udp(endpoint, packet, qid, query, timeout)
        if reply[2] & 0x02:  # TC: the whole answer only fits over TCP
            reply = await self._stream(endpoint, packet, qid, query, max(0.05, deadline - loop.time()))
        return reply

    async def _udp(self, endpoint: Endpoint, packet: bytes, qid: int, query: Query, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET, socket.SOCK_DGRAM)
        future: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            while not future.done():
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    return
                except OSError as err:  # e.g. ICMP port unreachable: fail now, not at the timeout
                    future.set_exception(err)
                    return
                if matches(data, qid, query):
                    future.set_result(data)
                else:
                    self.stats.upstream_mismatch += 1

        try:
            sock.setblocking(False)
            sock.connect((endpoint.host, endpoint.port))
            loop.add_reader(sock.fileno(), readable)
            # A timer on the future itself: asyncio.wait_for would wrap it in another task per query.
            timer = loop.call_later(timeout, _expire, future, endpoint, timeout)
            try:
                sock.send(packet)
                return await future
            finally:
                timer.cancel()
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    async def _stream(self, endpoint: Endpoint, packet: bytes, qid: int, query: Query, timeout: float) -> bytes:
        """TCP, or TLS (DNS over TLS, RFC 7858) with the certificate checked against the endpoint's name.
        One connection per question: simple and robust; the UDP path carries the volume."""
        tls = self.tls_context if endpoint.transport == "tls" else None

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=tls, server_hostname=(endpoint.tls_name or endpoint.host)
                if tls is not None else None)
            try:
                writer.write(len(packet).to_bytes(2, "big") + packet)
                await writer.drain()
                size = int.from_bytes(await reader.readexactly(2), "big")
                return await reader.readexactly(size)
            finally:
                writer.close()

        try:
            reply = await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"{endpoint}: no {endpoint.transport.upper()} reply within {timeout:.2f}s") from None
        if not matches(reply, qid, query):
            self.stats.upstream_mismatch += 1
            raise UpstreamError(f"{endpoint}: reply does not match the question")
        return reply
