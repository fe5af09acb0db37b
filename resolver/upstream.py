"""Asking the upstream resolvers: UDP with a fresh socket per query, TCP when the reply is truncated.

A fresh connected socket gives every upstream query its own random source port (the kernel picks it) and makes
the kernel drop datagrams from any other address; with a random ID and the question checked on the reply, a
spoofed answer has to guess about 32 bits and the name. Replies that do not match are dropped and counted, and
we keep listening until the timeout, so a forged packet cannot cut a real answer short.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
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

    def answered_in(self, seconds: float) -> None:
        self.answered += 1
        self.latency_sum += seconds
        self.latency_buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1


class UpstreamPool:
    def __init__(self, endpoints: tuple[Endpoint, ...], timeout: float, deadline: float, stats: Stats) -> None:
        if not endpoints:
            raise UpstreamError("no upstream resolvers configured")
        self.endpoints = endpoints
        self.timeout = timeout
        self.deadline = deadline
        self.stats = stats
        self.upstream_stats = {str(e): UpstreamStats() for e in endpoints}

    def _order(self, now: float) -> list[Endpoint]:
        healthy = [e for e in self.endpoints if self.upstream_stats[str(e)].down_until <= now]
        return healthy + [e for e in self.endpoints if e not in healthy]

    async def resolve(self, query: Query) -> bytes:
        """A reply matching ``query`` from the first upstream that gives a usable one, within the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        fallback: bytes | None = None
        last_error: Exception = UpstreamError("no upstream was asked")
        for endpoint in self._order(loop.time()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            stats = self.upstream_stats[str(endpoint)]
            started = loop.time()
            stats.requests += 1
            try:
                qid = secrets.randbits(16)
                packet = wire.upstream_query(query, qid)
                reply = await self._udp(endpoint, packet, qid, query, min(self.timeout, remaining))
                if reply[2] & 0x02:  # TC: the whole answer only fits over TCP
                    reply = await self._tcp(endpoint, packet, qid, query, max(0.05, deadline - loop.time()))
            except UpstreamTimeout as err:
                stats.timeouts += 1
                stats.down_until = loop.time() + PENALTY_SECONDS
                last_error = err
                continue
            except (OSError, UpstreamError, asyncio.IncompleteReadError) as err:
                stats.errors += 1
                stats.down_until = loop.time() + PENALTY_SECONDS
                last_error = err
                continue
            stats.answered_in(loop.time() - started)
            if reply[3] & 0x0F in _RETRY_RCODES:
                stats.errors += 1
                fallback = reply
                continue
            stats.down_until = 0.0
            stats.last_ok = loop.time()
            return reply
        if fallback is not None:
            return fallback
        raise UpstreamError(f"no upstream answered: {last_error}") from last_error

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
            stats = self.upstream_stats[str(endpoint)]
            qid = secrets.randbits(16)
            try:
                await self._udp(endpoint, wire.upstream_query(probe, qid), qid, probe, self.timeout)
            except (UpstreamError, OSError):
                stats.down_until = loop.time() + PENALTY_SECONDS
            else:
                stats.down_until = 0.0
                stats.last_ok = loop.time()

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
            try:
                sock.send(packet)
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise UpstreamTimeout(f"{endpoint}: no reply within {timeout:.2f}s") from None
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    async def _tcp(self, endpoint: Endpoint, packet: bytes, qid: int, query: Query, timeout: float) -> bytes:
        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
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
            raise UpstreamTimeout(f"{endpoint}: no TCP reply within {timeout:.2f}s") from None
        if not matches(reply, qid, query):
            self.stats.upstream_mismatch += 1
            raise UpstreamError(f"{endpoint}: TCP reply does not match the question")
        return reply
