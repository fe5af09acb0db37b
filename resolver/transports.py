"""UDP and TCP listeners. They move bytes between sockets and the pipeline and decide nothing themselves.

A blocked or cached answer is sent from inside ``datagram_received``: no task, no coroutine. Only a query that
must go upstream leaves the callback, through ``Forwarder.forward``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from resolver.core.pipeline import Pipeline
from resolver.core.stats import TCP, UDP
from resolver.core.wire import Query

log = logging.getLogger("resolver.transport")

# Replies on one TCP connection that may wait for upstreams at once; past it the client gets SERVFAIL.
MAX_TCP_PENDING = 64


class Forwarder(Protocol):
    def forward(self, query: Query, respond: Callable[[bytes], None]) -> None: ...


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, pipeline: Pipeline, forwarder: Forwarder) -> None:
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Stock asyncio reads every datagram into a 256 KiB buffer; a DNS query is at most 64 KiB and in practice
        # under 512 bytes. (uvloop ignores this attribute.)
        if hasattr(transport, "max_size"):
            transport.max_size = 65535

    def datagram_received(self, data: bytes, addr: Any) -> None:
        result = self.pipeline.on_query(data, UDP, addr[0])
        if result is None:
            return
        transport = self.transport
        if transport is None:
            return
        if type(result) is bytes:
            transport.sendto(result, addr)
            return

        def respond(reply: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(reply, addr)

        self.forwarder.forward(result, respond)  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away; nothing to do, and not worth a log line each.
        pass


class TcpListener:
    """RFC 7766: 2-byte length framing, several (pipelined) queries per connection, answers in any order."""

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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
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
                writer.write(len(reply).to_bytes(2, "big") + reply)

        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                    data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), self.idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                result = self.pipeline.on_query(data, TCP, client)
                if result is None:
                    continue
                if type(result) is bytes:
                    writer.write(len(result).to_bytes(2, "big") + result)
                elif pending >= MAX_TCP_PENDING:
                    reply = self.pipeline.on_shed(result)  # type: ignore[arg-type]
                    writer.write(len(reply).to_bytes(2, "big") + reply)
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
