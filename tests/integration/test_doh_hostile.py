"""HTTP/2 clients that break the protocol's limits, against DoH on nghttp2: each must cost the client its streams
or its connection, never the server its other clients. The client is the ``h2`` library driven by hand, so it can
send what a well-behaved client would not (streams past the server's limit, a header list past its size).

- more streams at once than SETTINGS_MAX_CONCURRENT_STREAMS: the extra ones are refused, the rest answered;
- a header list past SETTINGS_MAX_HEADER_LIST_SIZE: that stream is reset, the connection serves on;
- bytes that are not HTTP/2 at all: the connection is closed;
- a GOAWAY with an answer still owed: the answer, then the connection is closed;
- many such connections, one after another: the server's memory stays where it was.
"""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from hyperframe.frame import GoAwayFrame

from resolver.net.doh import MAX_HEADERS, MAX_STREAMS, NGHTTP2
from tests.integration.test_bounds import vm_rss_kb
from tests.integration.test_tls_hostile import closed_by_server
from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, make_certs, tool
from tests.support.resolverproc import ResolverFactory, addresses, free_port
from tests.support.zone import WWW, WWW_V4

pytestmark = [pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA"),
              pytest.mark.skipif(not NGHTTP2, reason="built without libnghttp2's headers: DoH's HTTP/2 is h2's")]


CONNECTIONS = 400
RSS_MARGIN_KB = 12 * 1024  # far below what 400 connections kept alive would hold, above the allocators' slack


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def doh(resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]) -> int:
    port = free_port(udp=False)
    proc = resolver_factory({"upstreams": [auth.address], "doh": [f"127.0.0.1:{port}"],
                             "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}})
    assert proc.wait_stderr(f"doh 127.0.0.1:{port} (HTTP/2 by nghttp2 ")
    return port


@contextmanager
def h2_connection(port: int, ca: Path) -> Iterator[tuple[ssl.SSLSocket, h2.connection.H2Connection]]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(ca, ["h2"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        yield conn, client


def ask(client: h2.connection.H2Connection, name: str = WWW, **extra: str) -> int:
    stream = client.get_next_available_stream_id()
    wire = dns.message.make_query(name, "A", id=0).to_wire()
    query = base64.urlsafe_b64encode(wire).decode().rstrip("=")
    client.send_headers(stream, [(":method", "GET"), (":scheme", "https"), (":authority", SERVER_NAME),
                                 (":path", f"/dns-query?dns={query}"), *extra.items()], end_stream=True)
    return stream


def outcomes(conn: ssl.SSLSocket, client: h2.connection.H2Connection, streams: set[int]) -> dict[int, object]:
    """Each stream's end: the answer (a DNS message) or the reset's error code."""
    bodies: dict[int, bytes] = {}
    ended: dict[int, object] = {}
    conn.sendall(client.data_to_send())
    while not streams <= ended.keys():
        data = conn.recv(65536)
        assert data, f"the server closed the connection with streams {sorted(streams - ended.keys())} open"
        for event in client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended[event.stream_id] = dns.message.from_wire(bodies.pop(event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                ended[event.stream_id] = event.error_code
        conn.sendall(client.data_to_send())
    return ended


def test_streams_past_the_limit_are_refused_and_the_rest_answered(doh: int, certs: tuple[Path, Path, Path]) -> None:
    with h2_connection(doh, certs[0]) as (conn, client):
        # Cached first: a flood of questions waiting on the upstream would meet the per-connection cap on pending
        # answers (SERVFAIL past it) before the stream limit.
        assert all(addresses(m, "A") == [WWW_V4] for m in outcomes(conn, client, {ask(client)}).values())
    with h2_connection(doh, certs[0]) as (conn, client):
        # All sent before the server's SETTINGS can arrive: the client does not know the limit yet.
        streams = {ask(client) for _ in range(MAX_STREAMS + 50)}
        ended = outcomes(conn, client, streams)
        answered = [m for m in ended.values() if isinstance(m, dns.message.Message)]
        refused = [c for c in ended.values() if not isinstance(c, dns.message.Message)]
        assert refused, "no stream past the limit was refused"
        assert answered and all(addresses(m, "A") == [WWW_V4] for m in answered)
        assert set(refused) <= {h2.errors.ErrorCodes.REFUSED_STREAM}, refused
        assert all(addresses(m, "A") == [WWW_V4] for m in outcomes(conn, client, {ask(client)}).values())


def test_a_header_list_past_the_limit_resets_its_stream_only(doh: int, certs: tuple[Path, Path, Path]) -> None:
    with h2_connection(doh, certs[0]) as (conn, client):
        big = ask(client, **{"x-padding": "a" * (MAX_HEADERS + 1)})
        ended = outcomes(conn, client, {big})
        assert not isinstance(ended[big], dns.message.Message), "a header list past the limit was answered"
        again = ask(client)
        assert addresses(outcomes(conn, client, {again})[again], "A") == [WWW_V4]  # type: ignore[arg-type]


def test_bytes_that_are_not_http2_close_the_connection(doh: int, certs: tuple[Path, Path, Path]) -> None:
    raw = socket.create_connection(("127.0.0.1", doh), timeout=10)
    with client_context(certs[0], ["h2"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)  # HTTP/1.1 where the h2 preface belongs
        assert closed_by_server(conn)
    with h2_connection(doh, certs[0]) as (conn, client):
        stream = ask(client)
        assert addresses(outcomes(conn, client, {stream})[stream], "A") == [WWW_V4]  # type: ignore[arg-type]


def test_a_client_goaway_gets_its_owed_answers_then_the_connection_closes(
        doh: int, certs: tuple[Path, Path, Path]) -> None:
    with h2_connection(doh, certs[0]) as (conn, client):
        stream = ask(client)  # not cached yet: its answer waits on the upstream while the GOAWAY arrives
        # Written by hand: h2's own close_connection() would then refuse the answer it is waiting for.
        conn.sendall(client.data_to_send() + GoAwayFrame(0, last_stream_id=0).serialize())
        ended = outcomes(conn, client, {stream})
        assert addresses(ended[stream], "A") == [WWW_V4]  # type: ignore[arg-type]
        assert closed_by_server(conn, within=10), "the connection stayed open after its last answer"


def test_memory_does_not_grow_with_connections_that_come_and_go(
        resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]) -> None:
    """Each connection asks a flood of questions, resets some uploads and hangs up. The server's resident memory
    after many more such connections stays where it was. Before the fix, each closed connection kept its TLS
    state and its nghttp2 session until a full garbage collection, about 100 kB each."""
    port = free_port(udp=False)
    proc = resolver_factory({"upstreams": [auth.address], "doh": [f"127.0.0.1:{port}"],
                             "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}})
    assert proc.wait_stderr(f"doh 127.0.0.1:{port} (HTTP/2 by nghttp2 ")
    assert proc.proc is not None

    def connection() -> None:
        with h2_connection(port, certs[0]) as (conn, client):
            streams = {ask(client) for _ in range(40)}
            for _ in range(20):  # uploads abandoned half way
                stream = client.get_next_available_stream_id()
                client.send_headers(stream, [(":method", "POST"), (":scheme", "https"), (":authority", SERVER_NAME),
                                             (":path", "/dns-query"), ("content-type", "application/dns-message")])
                client.send_data(stream, b"x" * 200)
                client.reset_stream(stream)
            outcomes(conn, client, streams)

    for _ in range(CONNECTIONS // 4):  # the allocators settle
        connection()
    before = vm_rss_kb(proc.proc.pid)
    for _ in range(CONNECTIONS):
        connection()
    after = vm_rss_kb(proc.proc.pid)
    assert after - before < RSS_MARGIN_KB, f"VmRSS grew by {after - before} kB over {CONNECTIONS} connections"
