"""DNS over HTTPS (RFC 8484) over HTTP/2 (nghttp2 through ``_h2``, else ``h2``) and HTTP/1.1 (``h11``): all
sans-IO libraries, driven here by the bytes a ``TlsConnection`` decrypts, their output written back through it.

HTTP/2 is nghttp2's when the extension was built (setup.py, with libnghttp2's headers): the pure-Python ``h2`` costs
several times the DNS work of a request (tests/load/RESULTS.md). ``RESOLVER_HTTP2=h2`` in the environment picks
``h2`` all the same, to compare the two or to step around a fault in one.

The sessions only speak HTTP: ``DohHandler`` takes each complete request to ``dohmsg.dns_request`` (RFC 8484's
rules), the DNS message to ``Pipeline.on_query`` with the client id from the path (else the TLS server name),
and the answer, now or when the upstream replies, back as a response. A bad request gets its HTTP error and
the connection serves on; only a broken HTTP stream closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from typing import TYPE_CHECKING, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11

from resolver.core.pipeline import Pipeline
from resolver.core.stats import DOH
from resolver.net.dohmsg import MAX_MESSAGE, NOT_ANSWERED, TOO_LARGE, Headers, HttpError, dns_request, dns_response
from resolver.net.listeners import Forwarder, settle
from resolver.net.tlsconn import SESSION, WRITING

try:
    from resolver.net._h2 import NGHTTP2_VERSION
    from resolver.net._h2 import Server as NgServer
except ImportError:  # built without libnghttp2's headers, or pure Python
    NgServer = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from resolver.net.tlsconn import Session, TlsConnection

MAX_HEADERS: Final = 16 * 1024  # request line and headers (HTTP/1.1), header list (HTTP/2)

Respond = Callable[[int, Headers, bytes], None]
_Request = tuple[str, str, bytes | None]  # method, path, content type
_STATUS: Final = b":status"
_CODES: Final = {code: str(code).encode() for code in (200, 400, 403, 404, 405, 413, 415)}
MAX_STREAMS: Final = 100  # concurrent requests per connection (SETTINGS_MAX_CONCURRENT_STREAMS), as h2's default
# The request bytes an HTTP/2 connection may hold for requests still arriving (bodies, the path); a stream that
# would take more is refused. A DoH query is a few hundred bytes (RFC 8467 pads queries to 128-byte blocks), so a
# full set of streams of them fits many times over, as do a few messages of the largest size; and every
# connection the listener admits (tcp.max_connections) together cannot hold more than a few hundred megabytes.
MAX_UPLOADS: Final = 256 * 1024
# Stream resets on one HTTP/2 connection, the client's and ours: a burst, then a rate a second; past them the
# connection ends (GOAWAY ENHANCE_YOUR_CALM). Each reset stream costs its HEADERS' decoding and the bookkeeping,
# while a client can reset its own or have us reset a malformed one at no cost. The same bucket as _h2.c's (and
# as nghttp2's own for a client's resets, from 1.57 on); the h2 library keeps none.
RESET_BURST: Final = 1000.0
RESET_RATE: Final = 33.0
# HTTP/1.1 pipelining: what one connection may have read ahead of the request being answered, and how many of its
# requests are answered before the event loop turns to the other clients.
MAX_BACKLOG: Final = 64 * 1024
MAX_PIPELINED: Final = 32
FEED: Final = 4096  # bytes h11 gets at a time, so its own buffer stays small whatever was read
NGHTTP2: Final = NgServer is not None and os.environ.get("RESOLVER_HTTP2", "nghttp2") != "h2"
HTTP2: Final = f"nghttp2 {NGHTTP2_VERSION}" if NGHTTP2 else f"h2 {version('h2')}"  # for the listener's log line


class DohHandler:
    """One connection's requests -> the pipeline -> responses, for either HTTP version."""

    def __init__(self, conn: TlsConnection, pipeline: Pipeline, forwarder: Forwarder) -> None:
        self.conn = conn
        self.pipeline = pipeline
        self.forwarder = forwarder
        self.pending = 0

    def handle(self, method: str, path: str, content_type: bytes | None, body: bytes, respond: Respond) -> None:
        request = dns_request(method, path, content_type, body)
        if isinstance(request, HttpError):
            respond(*request.response())
            return
        message, client_id = request
        conn = self.conn
        conn.touch()
        result = self.pipeline.on_query(message, DOH, conn.client, client_id or conn.client_id)
        if result is None:
            respond(*NOT_ANSWERED.response())
        else:
            answer = settle(result, self.pipeline, self.forwarder, self.pending)
            if type(answer) is bytes:
                _answer(respond, answer)
            else:
                self.pending += 1
                self.forwarder.forward(answer, partial(self._forwarded, respond))  # type: ignore[arg-type]

    def _forwarded(self, respond: Respond, reply: bytes) -> None:
        self.pending -= 1
        _answer(respond, reply)


def _answer(respond: Respond, answer: bytes) -> None:
    response = dns_response(answer)
    respond(*(response.response() if isinstance(response, HttpError) else response))


def doh_session(conn: TlsConnection, alpn: str | None, pipeline: Pipeline, forwarder: Forwarder) -> Session:
    """HTTP/2 when the client chose ``h2`` in ALPN, else HTTP/1.1."""
    handler = DohHandler(conn, pipeline, forwarder)
    if alpn != "h2":
        return H11Session(conn, handler)
    return NgH2Session(conn, handler) if NGHTTP2 else H2Session(conn, handler)


class NgH2Session:
    """HTTP/2 on nghttp2: it hands over whole requests and takes whole responses, and does the rest (flow
    control, window updates, stream limits, HPACK, the protocol's checks of each request) in C."""

    def __init__(self, conn: TlsConnection, handler: DohHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.h2 = NgServer(MAX_STREAMS, MAX_HEADERS, MAX_MESSAGE, MAX_UPLOADS)
        self.gone = False
        self._flush()

    def received(self, data: bytes) -> None:
        requests = self.h2.feed(data)
        if requests is None:  # a broken HTTP/2 stream: nghttp2 said so in a GOAWAY
            self._flush()
            self.conn.close()
            return
        for stream_id, method, path, content_type, body in requests:
            if body is None:
                self._respond(stream_id, *TOO_LARGE.response())  # written before the RST_STREAM that stops the upload
                self.h2.reset(stream_id)
            else:
                self.handler.handle(method or "", path or "", content_type, body, partial(self._respond, stream_id))
        self._flush()

    def _respond(self, stream_id: int, status: int, headers: Headers, body: bytes) -> None:
        if self.gone:
            return
        # Written at once, one TLS record per answer, as unbound does: some clients (dnsperf's DoH among them) take
        # only the first answer from a record that carries several.
        self.h2.respond(stream_id, status, headers, body)
        self._flush()

    def _flush(self) -> None:
        data = self.h2.output()
        if data:
            self.conn.send(data)
        if self.h2.done():  # a GOAWAY either way and every stream answered: nothing more will happen here
            self.conn.close()

    def busy(self) -> bool:
        return self.handler.pending > 0  # as H2Session's

    def closed(self) -> None:
        self.gone = True


class H2Session:
    def __init__(self, conn: TlsConnection, handler: DohHandler) -> None:
        self.conn = conn
        self.handler = handler
        # Our own response headers are fixed and well formed: h2 need not check and normalise them each time. Nor
        # the request's, which is most of h2's own cost per request: the session reads three of them and checks
        # those itself (``dohmsg.dns_request``: the method by name, the path against /dns-query and a strict
        # client id, the message as base64url or a typed body), so a malformed header gets an HTTP error, a
        # header we do not read is never looked at, and nothing is passed on anywhere.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False,
                                           normalize_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings.max_header_list_size = MAX_HEADERS
        self.h2.initiate_connection()
        self.requests: dict[int, tuple[_Request, bytearray]] = {}  # streams still sending
        self.uploads = 0  # the bytes they hold, up to MAX_UPLOADS (as NgH2Session's)
        self.resets, self.reset_time = RESET_BURST, conn.loop.time()
        self.unsent: dict[int, bytes] = {}  # response bodies waiting for flow-control window
        self.gone = False
        self._flush()

    def received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()  # the GOAWAY h2 wrote
            self.conn.close()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self._request(event)  # type: ignore[arg-type]
        elif kind is h2.events.DataReceived:
            self._data(event)  # type: ignore[arg-type]
        elif kind is h2.events.StreamEnded:
            request = self._release(event.stream_id)  # type: ignore[attr-defined]
            if request is not None:
                self._handle(event.stream_id, request[0], bytes(request[1]))  # type: ignore[attr-defined]
        elif kind is h2.events.StreamReset:
            self._release(event.stream_id)  # type: ignore[attr-defined]
            self._count_reset()
            self.unsent.pop(event.stream_id, None)  # type: ignore[attr-defined]
        elif kind is h2.events.WindowUpdated:
            for stream_id in list(self.unsent):
                self._send_body(stream_id)
        elif kind is h2.events.ConnectionTerminated:
            self.conn.close()

    def _request(self, event: h2.events.RequestReceived) -> None:
        method = path = b""
        content_type = None
        for name, value in event.headers or ():
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
        request = (bytes(method).decode("latin-1"), bytes(path).decode("latin-1"),
                   None if content_type is None else bytes(content_type))
        if event.stream_ended is not None:  # a GET: the whole request is here, and its StreamEnded finds nothing
            self._handle(event.stream_id, request, b"")
        elif self.uploads + len(request[1]) > MAX_UPLOADS:  # (its path is held until the request is whole)
            self._reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            self.requests[event.stream_id] = (request, bytearray())
            self.uploads += len(request[1])

    def _data(self, event: h2.events.DataReceived) -> None:
        self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        request = self.requests.get(event.stream_id)
        if request is None:
            return
        data = event.data or b""
        if self.uploads + len(data) > MAX_UPLOADS:  # nothing of it processed: the client may ask again
            self._release(event.stream_id)
            self._reset(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        request[1].extend(data)
        self.uploads += len(data)
        if len(request[1]) > MAX_MESSAGE:
            self._release(event.stream_id)
            self._respond(event.stream_id, *TOO_LARGE.response())
            self._reset(event.stream_id)

    def _release(self, stream_id: int) -> tuple[_Request, bytearray] | None:
        request = self.requests.pop(stream_id, None)
        if request is not None:
            self.uploads -= len(request[0][1]) + len(request[1])  # the path and the body
        return request

    def _handle(self, stream_id: int, request: _Request, body: bytes) -> None:
        method, path, content_type = request
        self.handler.handle(method, path, content_type, body, partial(self._respond, stream_id))

    def _respond(self, stream_id: int, status: int, headers: Headers, body: bytes) -> None:
        if self.gone:
            return
        try:
            self.h2.send_headers(stream_id, [(_STATUS, _CODES.get(status) or str(status).encode()), *headers],
                                 end_stream=not body)
        except h2.exceptions.H2Error:  # the client reset the stream meanwhile
            return
        if body:
            self.unsent[stream_id] = body
            self._send_body(stream_id)
        self._flush()

    def _send_body(self, stream_id: int) -> None:
        data = self.unsent.pop(stream_id)
        try:
            while data:
                window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                if window <= 0:
                    self.unsent[stream_id] = data  # sent on the client's next WINDOW_UPDATE
                    return
                chunk, data = data[:window], data[window:]
                self.h2.send_data(stream_id, chunk, end_stream=not data)
        except h2.exceptions.H2Error:
            return

    def _reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):  # (NO_ERROR: the answer is sent, the upload stops)
            self.h2.reset_stream(stream_id, code)
        self._count_reset()

    def _count_reset(self) -> None:
        now = self.conn.loop.time()
        self.resets = min(RESET_BURST, self.resets + (now - self.reset_time) * RESET_RATE) - 1
        self.reset_time = now
        if self.resets < 0 and not self.gone:
            self.gone = True  # nothing more is answered here
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self._flush()
            self.conn.close()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.conn.send(data)

    def busy(self) -> bool:
        # Answers still with the upstreams only: an answer waiting for the client's flow-control window is up to
        # the client, and a client that never opens its window must not keep the connection (and its slot).
        return self.handler.pending > 0

    def closed(self) -> None:
        self.gone = True


class H11Session:
    """HTTP/1.1 keep-alive: requests are answered one at a time, in order, as the protocol requires.

    What a client pipelines is read ahead only so far: not at all while a request waits for its answer, nor past
    MAX_BACKLOG bytes, nor while the client leaves its answers unread. The backlog is worked through at most
    MAX_PIPELINED requests per turn of the event loop, so one client's backlog never holds up the others."""

    def __init__(self, conn: TlsConnection, handler: DohHandler) -> None:
        self.conn = conn
        self.handler = handler
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.backlog = bytearray()  # read and not yet given to h11, which takes it FEED bytes at a time
        self.turn = 0  # requests answered since this turn of the event loop began
        self.later: asyncio.Handle | None = None  # the next turn's share of the backlog
        self.waiting = False  # a request is with the handler
        self.reading = False  # inside _next: a response given at once must not re-enter it
        self.gone = False

    def received(self, data: bytes) -> None:
        """Also called with nothing new (``b""``) to carry on with the backlog."""
        self.backlog += data
        self.turn = 0
        self._next()
        self.conn.hold(SESSION, not self.gone and (self.waiting or len(self.backlog) > MAX_BACKLOG))

    def _next(self) -> None:
        self.reading = True
        try:
            while not self.waiting and not self.gone:
                if self.conn.held & WRITING:
                    return  # carried on when the client reads its answers again
                if self.turn >= MAX_PIPELINED:
                    if self.later is None:
                        self.later = self.conn.loop.call_soon(self._carry_on)
                    return
                try:
                    event = self.h11.next_event()
                except h11.RemoteProtocolError as err:
                    self._respond(*HttpError(err.error_status_hint, "bad request").response(), close=True)
                    return
                if event is h11.NEED_DATA:
                    if not self.backlog:
                        return
                    self.h11.receive_data(bytes(self.backlog[:FEED]))
                    del self.backlog[:FEED]
                elif event is h11.PAUSED:
                    return
                else:
                    self._event(event)
        finally:
            self.reading = False

    def _carry_on(self) -> None:
        self.later = None
        if not self.gone:
            self.conn.batch(self.received)

    def _event(self, event: object) -> None:
        if isinstance(event, h11.Request):
            self.request, self.body = event, bytearray()
            length = dict(event.headers).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > MAX_MESSAGE:
                self._respond(*TOO_LARGE.response(), close=True)
        elif isinstance(event, h11.Data):
            self.body.extend(event.data)
            if len(self.body) > MAX_MESSAGE:
                self._respond(*TOO_LARGE.response(), close=True)
        elif isinstance(event, h11.EndOfMessage) and self.request is not None:
            request, self.request = self.request, None
            self.waiting = True
            self.turn += 1
            self.conn.touch()
            self.handler.handle(request.method.decode("latin-1"), request.target.decode("latin-1"),
                                dict(request.headers).get(b"content-type"), bytes(self.body), self._respond)
        elif isinstance(event, h11.ConnectionClosed):
            self.conn.close()

    def _respond(self, status: int, headers: Headers, body: bytes, close: bool = False) -> None:
        if self.gone:
            return
        if close:
            headers = [*headers, (b"connection", b"close")]
        try:
            out = self.h11.send(h11.Response(status_code=status, headers=headers)) or b""
            if body:
                out += self.h11.send(h11.Data(data=body)) or b""
            out += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            close = True
            out = b""
        self.conn.send(out)
        if close or self.h11.our_state is h11.MUST_CLOSE:
            self.gone = True
            self.conn.close()
            return
        self.h11.start_next_cycle()
        self.waiting = False
        if not self.reading:  # an answer from the upstream: on to what the client sent after that request
            self.conn.batch(self.received)

    def busy(self) -> bool:
        return self.waiting

    def closed(self) -> None:
        self.gone = True
        if self.later is not None:
            self.later.cancel()
            self.later = None
