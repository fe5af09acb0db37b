"""Questions to the upstreams over TCP or DNS over TLS (RFC 7858): a connection to each upstream, shared by the
questions in flight to it (RFC 7766), and the transport that asks on it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import Stats
from resolver.core.wire import Query
from resolver.errors import UpstreamError, UpstreamTimeout
from resolver.net.attempt import Attempt
from resolver.net.framing import frame, read_frame
from resolver.tasks import TaskSet


class ConnectionLost(UpstreamError):
    """The shared connection failed or was closed under a question."""


class StreamConn:
    """One TCP or TLS connection to an upstream, shared by every question to it (RFC 7766 pipelining: several
    questions in flight, answers in any order, matched on ID and question). One TLS handshake serves many
    questions; the connection closes itself when idle and is opened again on the next question."""

    IDLE_SECONDS = 10.0
    MAX_PENDING = 1000  # questions in flight on one connection; past it new ones fail over to the next upstream

    def __init__(self, endpoint: Endpoint, tls: ssl.SSLContext | None, unused_id: Callable[[dict[int, Any]], int],
                 stats: Stats, tasks: TaskSet, closed: Callable[[StreamConn], None]) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self.unused_id = unused_id  # a random ID not among the ones in flight here
        self.stats = stats
        self.on_close = closed  # told once, when the connection is gone
        self.pending: dict[int, tuple[Query, asyncio.Future[bytes]]] = {}
        self.closed = False
        self.answered = 0
        self.writer: asyncio.StreamWriter | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[asyncio.StreamWriter] = loop.create_future()
        self.task = tasks.spawn(self._run())

    async def ask(self, query: Query) -> bytes:
        if len(self.pending) >= self.MAX_PENDING:
            raise UpstreamError(f"{self.endpoint}: {self.MAX_PENDING} questions already in flight")
        writer = await asyncio.shield(self.opened)
        qid = self.unused_id(self.pending)
        packet = wire.upstream_query(query, qid)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[qid] = (query, future)
        try:
            if self.closed:
                raise ConnectionLost("connection closed")
            writer.write(frame(packet))
            return await future
        finally:
            self.pending.pop(qid, None)

    async def _run(self) -> None:
        endpoint = self.endpoint
        tls = self.tls
        error: BaseException | None = None
        try:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=tls,
                server_hostname=(endpoint.tls_name or endpoint.host) if tls is not None else None)
            self.writer = writer
            self.opened.set_result(writer)
            while True:
                try:
                    reply = await read_frame(reader, self.IDLE_SECONDS)
                except TimeoutError:  # no reply began: the stream is still in step
                    if self.pending:
                        continue
                    return  # idle: close, and open again on the next question
                if reply is None:
                    raise ConnectionLost("closed by the upstream")
                waiting = self.pending.get(reply[0] << 8 | reply[1]) if len(reply) >= 2 else None
                if waiting is None or not wire.is_response(reply, reply[0] << 8 | reply[1], waiting[0]):
                    self.stats.upstream_mismatch += 1
                    continue
                self.answered += 1
                if not waiting[1].done():
                    waiting[1].set_result(reply)
        except (OSError, ssl.SSLError, UpstreamError) as err:  # FrameError is an OSError
            error = err
        finally:
            self.close(error)

    def close(self, error: BaseException | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.on_close(self)
        lost = ConnectionLost("connection closed" if error is None else str(error))
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


class StreamTransport:
    """The ``Transport`` for tcp:// and tls:// upstreams (and for UDP's truncated replies): a task per question,
    on the upstream's shared ``StreamConn``. TLS certificates are verified: the system's trust store, plus
    ``ca_file`` when given."""

    def __init__(self, endpoints: tuple[Endpoint, ...], ca_file: str | None,
                 unused_id: Callable[[dict[int, Any]], int], stats: Stats) -> None:
        self.tls: ssl.SSLContext | None = None
        # Loaded only when a DoT upstream (or a CA file, checked now) is configured: it is a noticeable share of
        # start-up.
        if ca_file is not None or any(e.transport == "tls" for e in endpoints):
            self.tls = ssl.create_default_context(cafile=ca_file)
            self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.unused_id = unused_id
        self.stats = stats
        self.tasks = TaskSet()  # the exchanges in flight
        self.conns: dict[Endpoint, StreamConn] = {}

    def send(self, attempt: Attempt) -> None:
        task = self.tasks.spawn(self.ask(attempt.endpoint, attempt.query, attempt.timeout))
        task.add_done_callback(partial(_report, attempt))

    async def ask(self, endpoint: Endpoint, query: Query, timeout: float) -> bytes:
        """One question on the endpoint's shared connection (TLS: the certificate checked against the endpoint's
        name). A question sent on a reused connection that the upstream had just closed (idle servers do) is sent
        once more on a fresh one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for fresh_only in (False, True):
            conn = self.conns.get(endpoint)
            if conn is None or conn.closed or fresh_only:
                conn = self.conns[endpoint] = StreamConn(
                    endpoint, self.tls if endpoint.transport == "tls" else None, self.unused_id, self.stats,
                    self.tasks, self._closed)
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

    def _closed(self, conn: StreamConn) -> None:
        if self.conns.get(conn.endpoint) is conn:
            del self.conns[conn.endpoint]

    def close(self) -> None:
        """Close the shared connections (at shutdown; anything still waiting was given its drain time)."""
        for conn in list(self.conns.values()):
            conn.close()  # (takes itself out of the table)


def _report(attempt: Attempt, task: asyncio.Task[bytes]) -> None:
    if task.cancelled():
        attempt.failed(UpstreamError(f"{attempt.endpoint}: cancelled"))
    elif (error := task.exception()) is not None:
        attempt.failed(error)
    else:
        attempt.replied(task.result())
