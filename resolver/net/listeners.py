"""UDP and TCP listeners. They move bytes between sockets and the pipeline and decide nothing themselves.

A blocked or cached answer is sent from inside the UDP reader callback: no task, no coroutine. Only a query that
must go upstream leaves the callback, through ``Forwarder.forward``.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Final, Protocol

from resolver.core.client import canonical_client
from resolver.core.forwarding import Prefetch
from resolver.core.pipeline import Pipeline
from resolver.core.stats import TCP, UDP
from resolver.core.wire import Query
from resolver.net.framing import frame, read_frame

log = logging.getLogger("resolver.transport")

# Replies on one TCP connection that may wait for upstreams at once; past it the client gets SERVFAIL.
MAX_TCP_PENDING: Final = 64


class Forwarder(Protocol):
    def forward(self, query: Query, respond: Callable[[bytes], None]) -> None: ...

    def prefetch(self, query: Query) -> None: ...


class UdpListener:
    """A bound, non-blocking UDP socket read by one reader callback, a batch of datagrams per wake-up.

    Not an asyncio DatagramTransport: its per-datagram protocol call and its send path (address checks, a write
    buffer a DNS server does not want) cost more than a plain reader, a share of every answer worth saving. A
    reply the kernel will not take at once (its send buffer full) is dropped and counted, as a full receive
    buffer drops queries; the phone asks again.
    """

    BATCH: Final = 64  # datagrams read per wake-up before other callbacks (upstream replies, timers) get a turn

    def __init__(self, sock: _socket.socket, pipeline: Pipeline, forwarder: Forwarder) -> None:
        self.sock: _socket.socket | None = sock
        self.fd = sock.fileno()
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        on_query = self.pipeline.on_query
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error reported on the socket, say: nothing to answer, read on
                continue
            result = on_query(data, UDP, addr[0])
            if result is None:
                continue
            if type(result) is bytes:
                self.send(result, addr)
            elif type(result) is Query:
                self.forwarder.forward(result, partial(self.send, addr=addr))
            else:
                self.send(result.answer, addr)  # type: ignore[union-attr]
                self.forwarder.prefetch(result.query)  # type: ignore[union-attr]

    def send(self, reply: bytes, addr: Any) -> None:
        sock = self.sock
        if sock is None:  # closed at shutdown while this answer was upstream
            return
        try:
            sock.sendto(reply, addr)
        except OSError:  # send buffer full (BlockingIOError), or the client's address unusable
            self.pipeline.stats.send_dropped += 1

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.fd)
            self.sock.close()
            self.sock = None


class TcpListener:
    """RFC 7766: length-framed messages (``framing``), several (pipelined) queries per connection, answers in any
    order. ``idle_timeout`` bounds the wait for each whole query."""

    def __init__(self, pipeline: Pipeline, forwarder: Forwarder, idle_timeout: float, max_connections: int,
                 per_client: int = 32) -> None:
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.per_client = per_client
        self.connections = 0
        self.by_client: dict[str, int] = {}
        self.rejected = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     proxied: str | None = None) -> None:
        """``proxied``: the client a trusted balancer's PROXY v2 header named (net/proxy.py), else the peer."""
        peer = writer.get_extra_info("peername")
        client = proxied or (canonical_client(peer[0]) if peer else "")  # the per-client cap counts the phone
        # One client may not take the whole connection table: a per-client cap below the total one.
        if self.connections >= self.max_connections or self.by_client.get(client, 0) >= self.per_client:
            self.rejected += 1
            writer.close()
            return
        self.connections += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        pending = 0
        drained = asyncio.Event()
        drained.set()

        def respond(reply: bytes) -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                drained.set()
            if not writer.is_closing():
                writer.write(frame(reply))

        try:
            while True:
                try:
                    data = await read_frame(reader, self.idle_timeout)
                except (TimeoutError, ConnectionError):  # idle, or gone (FrameError: gone mid-message)
                    break
                if data is None:
                    break
                result = self.pipeline.on_query(data, TCP, client)
                if result is None:
                    continue
                if type(result) is bytes:
                    writer.write(frame(result))
                elif type(result) is Prefetch:
                    writer.write(frame(result.answer))
                    self.forwarder.prefetch(result.query)
                elif pending >= MAX_TCP_PENDING:
                    reply = self.pipeline.on_shed(result)  # type: ignore[arg-type]
                    writer.write(frame(reply))
                else:
                    pending += 1
                    drained.clear()
                    self.forwarder.forward(result, respond)  # type: ignore[arg-type]
                await writer.drain()
            # The client stopped sending or went idle: answers it is still owed go out before we close.
            await asyncio.wait_for(drained.wait(), self.idle_timeout + 5)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.connections -= 1
            left = self.by_client[client] - 1
            if left:
                self.by_client[client] = left
            else:
                del self.by_client[client]
            writer.close()
