"""UDP and TCP listeners. They move bytes between sockets and the pipeline and decide nothing themselves.

A blocked or cached answer is sent from inside the UDP reader callback: no task, no coroutine. Only a query that
must go upstream leaves the callback, through ``Forwarder.forward``.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import socket
import struct
from asyncio.streams import StreamReaderProtocol  # (named from its module: mypyc's C for the base class needs it)
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Final, Protocol

from mypy_extensions import mypyc_attr

from resolver.config.model import TcpConfig
from resolver.core.client import canonical_client
from resolver.core.forwarding import Prefetch
from resolver.core.pipeline import Pipeline
from resolver.core.stats import TCP, UDP
from resolver.core.wire import Query
from resolver.net import mmsg
from resolver.net.framing import frame, read_frame
from resolver.net.limits import Gate
from resolver.net.mmsg import BATCH

log = logging.getLogger("resolver.transport")

# Answers one stream connection (TCP, DoT, DoH) may have waiting on upstreams at once; past it a question gets
# SERVFAIL at once (``Pipeline.on_shed``).
MAX_PENDING: Final = 64
# Answers buffered for one TCP client beyond what the kernel holds: past it the connection reads no more queries
# until its client reads. Several large answers' worth, so a client that reads slowly is never held up.
OUTPUT_CAP: Final = 64 * 1024
# Queries a client has already sent sit in the reader's buffer and are read without waiting, so a connection that
# pipelines thousands would be served in one go while every other client waits: it gives the loop back after as
# many as the UDP reader takes from one wakeup.
TCP_SLICE: Final = mmsg.BATCH
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, zero seconds: close() sends a reset


class Forwarder(Protocol):
    def forward(self, query: Query, respond: Callable[[bytes], None]) -> None: ...

    def prefetch(self, query: Query) -> None: ...


def settle(result: bytes | Query | Prefetch, pipeline: Pipeline, forwarder: Forwarder, pending: int) -> bytes | Query:
    """What a stream connection (TCP, DoT, DoH) with ``pending`` answers waiting on upstreams does with
    ``Pipeline.on_query``'s result: the bytes to send now (an answer; a prefetch's answer, its question sent
    upstream; SERVFAIL at MAX_PENDING), or the Query for the caller to forward and count."""
    if type(result) is bytes:
        return result
    if type(result) is Prefetch:
        forwarder.prefetch(result.query)
        return result.answer
    if pending >= MAX_PENDING:
        return pipeline.on_shed(result)  # type: ignore[arg-type]
    return result  # type: ignore[return-value]


class UdpListener:
    """A bound, non-blocking UDP socket read by one reader callback, a batch of datagrams per wake-up.

    Not an asyncio DatagramTransport: its per-datagram protocol call and its send path (address checks, a write
    buffer a DNS server does not want) cost more than a plain reader, a share of every answer worth saving. With
    the C extension (``mmsg``) a wake-up is one recvmmsg for the datagrams waiting and one sendmmsg for the answers
    they got at once, and the client's address stays in C unless a query goes upstream; without it, a recvfrom and
    a sendto per datagram. A reply the kernel will not take at once (its send buffer full) is dropped and counted,
    as a full receive buffer drops queries; the phone asks again.
    """

    BATCH: Final = BATCH

    def __init__(self, sock: _socket.socket, pipeline: Pipeline, forwarder: Forwarder) -> None:
        self.sock: _socket.socket | None = sock
        self.fd = sock.fileno()
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.loop = asyncio.get_running_loop()
        self.batch = mmsg.batch(self.fd)
        self.loop.add_reader(self.fd, self._readable if self.batch is None else self._readable_batched)

    def _readable_batched(self) -> None:
        batch = self.batch
        if batch is None or self.sock is None:
            return
        try:
            datagrams = batch.recv()
        except OSError:  # an ICMP error reported on the socket, say: nothing to answer; the next wake-up reads on
            return
        on_query = self.pipeline.on_query
        for position, (data, host) in enumerate(datagrams):
            # The batch is read already: a bug one query trips must not lose the others (the plain reader leaves
            # them in the kernel's queue), so it is logged here, as the event loop would, and the batch goes on.
            try:
                result = on_query(data, UDP, host)
                if result is not None:
                    if type(result) is bytes:
                        batch.reply(position, result)
                    elif type(result) is Query:
                        self.forwarder.forward(result, partial(self._send_to, batch.peer(position)))
                    else:
                        batch.reply(position, result.answer)  # type: ignore[union-attr]
                        self.forwarder.prefetch(result.query)  # type: ignore[union-attr]
            except Exception:
                log.exception("a UDP query from %s failed", host)
        dropped = batch.flush()
        if dropped or batch.truncated:
            self._count_drops(batch, dropped)

    def _count_drops(self, batch: mmsg.Batch, dropped: int) -> None:
        stats = self.pipeline.stats
        stats.send_dropped += dropped
        stats.malformed += batch.truncated  # longer than any query: not a DNS client
        batch.truncated = 0

    def _send_to(self, peer: bytes, reply: bytes) -> None:
        """An answer that came back from upstream, to the client ``peer`` (a raw address from the batch)."""
        batch = self.batch
        if batch is None or self.sock is None:  # closed at shutdown while this answer was upstream
            return
        if not batch.send_to(peer, reply):
            self.pipeline.stats.send_dropped += 1

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
            self.batch = None


class TcpListener:
    """RFC 7766: length-framed messages (``framing``), several (pipelined) queries per connection, answers in any
    order, on connections the listener admits (``protocol``).

    Every wait on a client is bounded, so a client cannot hold a slot by doing nothing: ``idle_timeout`` for each
    whole query (a byte every few seconds, or a length and then silence, still ends there), ``write_timeout`` for
    a client that stops reading its answers, ``max_lifetime`` for one that keeps the connection busy.
    """

    def __init__(self, pipeline: Pipeline, forwarder: Forwarder, config: TcpConfig, gate: Gate) -> None:
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.gate = gate
        self.idle_timeout = config.idle_timeout
        self.write_timeout = config.write_timeout
        self.max_lifetime = config.max_lifetime

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``: one ``_Admission`` per accepted socket."""
        return _Admission(self)

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """The canonical client of a just-accepted connection when it may stay, else None (the caller closes it).

        The access list is checked here, not per query: a client that may not ask must not hold a slot while it
        trickles a question it will be refused for."""
        peer = transport.get_extra_info("peername")
        client = canonical_client(peer[0]) if peer else ""  # the caps count the phone, not the address's spelling
        return client if self.gate.admit(client) else None

    async def serve_proxied(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        """A connection whose trusted balancer's PROXY v2 header (net/proxy.py) named ``client``: admitted and
        served as that phone."""
        if not self.gate.admit(client):
            writer.transport.abort()
            return
        await self.serve(reader, writer, client)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        """Answer an admitted connection's queries until it ends, goes idle, outlives ``max_lifetime`` or stops
        reading; then give its slot back once the socket is closed."""
        transport = writer.transport
        in_order = False
        try:
            # Above the cap the transport pauses writing: drain() then waits, and this loop stops reading queries.
            transport.set_write_buffer_limits(OUTPUT_CAP, OUTPUT_CAP // 2)
            if await self._queries(reader, writer, client):
                writer.close()
                async with asyncio.timeout(self.write_timeout):  # the last answers out, then the FIN
                    await writer.wait_closed()
                in_order = True
        except (ConnectionError, TimeoutError):
            pass
        finally:
            if not in_order:
                _reset(transport)
            self.gate.release(client)

    async def _queries(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> bool:
        """Read and answer queries; True when the connection may close in order, False when the client stopped
        reading and its answers are to be thrown away."""
        transport = writer.transport
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.max_lifetime
        pending = 0
        drained = asyncio.Event()
        drained.set()

        def respond(reply: bytes) -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                drained.set()
            if transport.is_closing():
                return
            if transport.get_write_buffer_size() > OUTPUT_CAP:
                # Still over the cap: the client is not reading. Buffering more would let a few such clients hold
                # the memory, so the connection goes (the client asks again on a new one if it is alive).
                _reset(transport)
                return
            writer.write(frame(reply))

        served = 0
        while True:
            left = ends - loop.time()
            if left <= 0:
                break
            served += 1
            if served % TCP_SLICE == 0:
                await asyncio.sleep(0)
            try:
                data = await read_frame(reader, min(self.gate.table.idle_timeout(self.idle_timeout), left))
            except (TimeoutError, ConnectionError):  # idle, or gone (FrameError: gone mid-message)
                break
            if data is None:
                break
            result = self.pipeline.on_query(data, TCP, client)
            if result is None:
                continue
            answer = settle(result, self.pipeline, self.forwarder, pending)
            if type(answer) is bytes:
                writer.write(frame(answer))
            else:
                pending += 1
                drained.clear()
                self.forwarder.forward(answer, respond)  # type: ignore[arg-type]
            if transport.get_write_buffer_size() > OUTPUT_CAP:
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await writer.drain()
                except TimeoutError:
                    return False
        # The client stopped sending, went idle or reached max_lifetime: answers it is owed go out before we close.
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_timeout + 5):
                    await drained.wait()
        return True


@mypyc_attr(native_class=False)  # compiled, a class must be a plain one to derive from asyncio's
class _Admission(StreamReaderProtocol):
    """A TCP connection as it is accepted: closed at once, before anything is read, unless the listener admits it;
    then served as a stream."""

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._client = ""
        super().__init__(asyncio.StreamReader(), self._serve)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self._listener.admit(transport)
        if client is None:
            transport.close()  # nothing read, nothing written: a plain FIN
            return
        self._client = client
        super().connection_made(transport)

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Coroutine[Any, Any, None]:
        return self._listener.serve(reader, writer, self._client)


def _reset(transport: asyncio.WriteTransport) -> None:
    """Close with a reset: what is buffered for a client that stopped reading is thrown away, in our memory and in
    the kernel's, and the socket leaves no TIME_WAIT behind. (Nothing to do on a socket already closed.)"""
    if transport.is_closing() and transport.get_write_buffer_size() == 0:
        return
    with contextlib.suppress(OSError, RuntimeError):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
