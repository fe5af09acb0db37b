"""One encrypted connection (DoT or DoH): an optional PROXY v2 header, TLS through memory buffers, plaintext to
a session that speaks the protocol on top (``dot.DotSession``, ``doh.H2Session``, ``doh.H11Session``).

TLS runs on an ``ssl.SSLObject`` over two memory BIOs rather than asyncio's own TLS transport, because the PROXY
header comes *before* the TLS handshake: the bytes must be read raw first and then fed to TLS, which an asyncio
TLS server (handshake before the handler runs) or ``start_tls`` (bytes already read are lost) cannot do. It is
also how asyncio's TLS works inside, so nothing is paid for it.

Limits are those of the TCP listener, in the same table (``limits.Gate``): the access list and the connection caps
for the client as the PROXY header names it, and an idle timeout that closes a connection with nothing in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Final, Protocol, cast

from resolver.core.client import canonical_client
from resolver.core.policy import IPNetwork
from resolver.net import proxy
from resolver.net.limits import Gate
from resolver.net.tlsconf import PhoneSSLObject, client_id_of

log = logging.getLogger("resolver.transport")

READ_CHUNK: Final = 65536
HIGH_WATER: Final = 256 * 1024  # unsent bytes past which we stop reading the client (it is not reading us)
# Why a connection stops reading its client (``TlsConnection.hold``); it reads again once no reason is left, so
# one reason ending never undoes another.
WRITING: Final = 1  # the client does not read its answers
SESSION: Final = 2  # the session has questions enough to work through first (HTTP/1.1 answers one at a time)
ENDING: Final = 4  # past tcp.max_lifetime: only what is owed goes out


class Session(Protocol):
    """The protocol spoken inside TLS; ``conn.send`` carries its bytes out."""

    def received(self, data: bytes) -> None: ...  # b"": nothing new, carry on with what is buffered

    def busy(self) -> bool: ...  # answers still with the upstreams: the idle timeout and max_lifetime wait

    def closed(self) -> None: ...  # the connection is gone: late answers are dropped


SessionFactory = Callable[["TlsConnection", str | None], Session]  # (connection, negotiated ALPN) -> session


class TlsListener:
    """What every connection of one listener shares."""

    def __init__(self, context: Callable[[], ssl.SSLContext], server_name: str, session: SessionFactory,
                 gate: Gate, idle_timeout: float, max_lifetime: float,
                 proxy_trusted: tuple[IPNetwork, ...] = ()) -> None:
        self.context = context  # the current context: a certificate rotation swaps it for new connections
        self.server_name = server_name
        self.session = session
        self.gate = gate
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.proxy_trusted = proxy_trusted

    def __call__(self) -> TlsConnection:
        return TlsConnection(self)


class TlsConnection(asyncio.Protocol):
    def __init__(self, listener: TlsListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.client = ""  # the canonical client address: the peer's, or the PROXY header's
        self.client_id: str | None = None
        self.admitted = False
        self.sniffing = False  # reading a PROXY header: only from a trusted balancer (connection_made)
        self.raw = b""  # bytes before TLS, while a PROXY header may be coming
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None
        self.session: Session | None = None
        self.last = 0.0
        self.ends = 0.0  # tcp.max_lifetime: however busy, the connection is closed once its answers are out
        self.timer: asyncio.TimerHandle | None = None
        # While the session reads one batch of bytes, what it sends is gathered and written once at the end: one
        # write (a system call) for a batch of pipelined answers rather than one each.
        self.corked: list[bytes] | None = None
        self.held = 0  # the reasons reading is paused, as bits
        self.loop = asyncio.get_running_loop()

    # -- asyncio ---------------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.client = canonical_client(peer[0]) if peer else ""
        self.last = self.loop.time()
        self.ends = self.last + self.listener.max_lifetime
        self.timer = self.loop.call_later(self.listener.gate.table.idle_timeout(self.listener.idle_timeout), self._idle)
        transport.set_write_buffer_limits(HIGH_WATER)
        # Anyone else is admitted (access list, caps) now, before a byte is read, as on TCP: waiting to see a header
        # first would let untrusted peers hold sockets outside the connection table. A header they send is then
        # fed to TLS, whose handshake fails on it, and the connection closes.
        self.sniffing = proxy.trusted(self.client, self.listener.proxy_trusted)
        if not self.sniffing:
            self._start_tls(self.client)

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            self.raw += data
            found = proxy.sniff(self.raw)
            if found.kind == proxy.NEED_MORE:
                return
            self.sniffing = False
            if found.kind == proxy.INVALID:
                self.abort()
                return
            data, self.raw = self.raw[found.size:], b""
            if not self._start_tls(found.client or self.client):
                return
        if self.tls is None:
            return
        self.incoming.write(data)
        self._pump()

    def eof_received(self) -> bool | None:
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.admitted = False
            self.listener.gate.release(self.client)
        # The session and this connection refer to each other. Dropped here, both go now, by reference counting.
        # Otherwise the cycle waits for a full garbage collection. That can be thousands of connections away,
        # because a connection allocates few Python objects, and meanwhile each one holds its TLS state and
        # nghttp2's in C memory that the collector does not see.
        session, self.session = self.session, None
        if session is not None:
            session.closed()
        self.tls = None
        self.transport = None

    def pause_writing(self) -> None:
        self.hold(WRITING)  # the client does not read its answers: stop taking its questions

    def resume_writing(self) -> None:
        self.hold(WRITING, False)
        if self.session is not None and self.tls is not None:
            self.batch(self.session.received)  # a session that stopped for our writes goes on (doh.H11Session)

    # -- TLS --------------------------------------------------------------------------------------------------------

    def _start_tls(self, client: str) -> bool:
        self.client = client
        if not self.listener.gate.admit(client):
            self.abort()
            return False
        self.admitted = True
        self.tls = self.listener.context().wrap_bio(self.incoming, self.outgoing, server_side=True)
        return True

    def _pump(self) -> None:
        tls = self.tls
        assert tls is not None
        if self.session is None:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError):
                self._flush()  # the alert, if any
                self.abort()
                return
            sni = tls.sni if isinstance(tls, PhoneSSLObject) else None
            self.client_id = client_id_of(sni, self.listener.server_name)
            self.session = self.listener.session(self, tls.selected_alpn_protocol())
        chunks = []
        while True:
            try:
                chunk = tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                self.close()
                break
            except (ssl.SSLError, OSError):
                self.abort()
                return
            if not chunk:
                break
            chunks.append(chunk)  # (a record each: a client writing query by query sends many per read)
        if chunks and self.transport is not None:
            self.batch(self.session.received, b"".join(chunks) if len(chunks) > 1 else chunks[0])
        self._flush()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending and self.transport is not None:
            self.transport.write(pending)

    # -- for the session ----------------------------------------------------------------------------------------------

    def batch(self, work: Callable[[bytes], None], data: bytes = b"") -> None:
        """``work(data)`` with what it sends written once, at the end."""
        if self.corked is not None:
            work(data)
            return
        self.corked = []
        try:
            work(data)
        finally:
            corked, self.corked = self.corked, None
        if corked:
            self._write(corked)

    def hold(self, reason: int, on: bool = True) -> None:
        """Stop reading the client for ``reason`` (``on``), or drop that reason; reading resumes with none left."""
        held = self.held | reason if on else self.held & ~reason
        if self.transport is not None and bool(held) != bool(self.held):
            if held:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        self.held = held

    def send(self, data: bytes) -> None:
        """Encrypt and write ``data`` (dropped once the connection is closing)."""
        if self.corked is not None:
            self.corked.append(data)
            return
        self._write((data,))

    def _write(self, pieces: list[bytes] | tuple[bytes]) -> None:
        """A TLS record per piece (a client may read one record per answer: dnsperf's DoH does), one write."""
        if self.transport is None or self.tls is None or self.transport.is_closing():
            return
        try:
            for piece in pieces:
                self.tls.write(piece)
        except (ssl.SSLError, OSError):
            self.abort()
            return
        self._flush()

    def touch(self) -> None:
        """A message came in: the idle timeout starts again."""
        self.last = self.loop.time()

    def close(self) -> None:
        """Say goodbye properly (TLS close_notify), then close once what is written has gone out."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.corked:  # answers gathered before the session chose to close go out first
            corked, self.corked = self.corked, None
            self._write(corked)
        if self.tls is not None and self.session is not None:
            with contextlib.suppress(ssl.SSLError, OSError):  # (it waits for the client's close_notify: no)
                self.tls.unwrap()
            self._flush()
        transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _idle(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        due = min(self.last + self.listener.gate.table.idle_timeout(self.listener.idle_timeout), self.ends)
        now = self.loop.time()
        if now >= self.ends:
            self.hold(ENDING)  # past max_lifetime: no new questions, only what is owed
        if now < due or (self.session is not None and self.session.busy()):
            self.timer = self.loop.call_later(max(due - now, 0.5), self._idle)
            return
        if self.transport.get_write_buffer_size():
            self.abort()  # answers written long ago and still unread: a graceful close would wait on them for ever
            return
        self.close()
