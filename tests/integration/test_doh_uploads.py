"""HTTP/2 uploads that never finish: a client may open every stream it is allowed and send each one nearly the
largest body a DNS message may have, then never end them. What one connection holds for such requests is capped
(``doh.MAX_UPLOADS``): the streams past it are refused, the server's memory stays where it was, and the same
connection is still answered. On both HTTP/2 engines: nghttp2 (``_h2``) and the pure-Python ``h2``.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import h2.connection
import h2.errors
import h2.events
import pytest

from resolver.net.doh import MAX_STREAMS, MAX_UPLOADS
from resolver.net.dohmsg import MAX_MESSAGE
from tests.integration import test_doh_resets
from tests.integration.test_bounds import vm_rss_kb
from tests.integration.test_doh_hostile import ask, h2_connection, outcomes
from tests.support.phones import SERVER_NAME, tool
from tests.support.resolverproc import ResolverProcess, addresses
from tests.support.zone import WWW_V4

certs, doh = test_doh_resets.certs, test_doh_resets.doh  # fixtures: the same DoH server on both engines

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")

CONNECTIONS = 8
BODY = MAX_MESSAGE - 535  # under the 413 limit: each upload could still become a request
RSS_MARGIN_KB = 24 * 1024  # CONNECTIONS x MAX_UPLOADS and slack; uncapped, these uploads hold over 50 MB


def test_half_finished_uploads_are_capped_per_connection(doh: tuple[ResolverProcess, int],
                                                         certs: tuple[Path, Path, Path]) -> None:
    proc, port = doh
    assert proc.proc is not None
    with h2_connection(port, certs[0]) as (conn, client):  # the allocators settle, the answer is cached
        assert addresses(outcomes(conn, client, {ask(client)}).popitem()[1], "A") == [WWW_V4]  # type: ignore[arg-type]
    before = vm_rss_kb(proc.proc.pid)
    held = []
    for _ in range(CONNECTIONS):
        connection = h2_connection(port, certs[0])
        conn, client = connection.__enter__()
        held.append(connection)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # many small writes, each waiting on the last
        refused = upload_without_end(conn, client)  # (and the connection serves on)
        assert refused, "no upload was refused: every one is held"
        assert set(refused.values()) == {h2.errors.ErrorCodes.REFUSED_STREAM}, refused
        assert (MAX_STREAMS - 1 - len(refused)) * BODY <= MAX_UPLOADS, f"only {len(refused)} uploads refused"
    grown = vm_rss_kb(proc.proc.pid) - before
    for connection in held:
        connection.__exit__(None, None, None)
    assert grown < RSS_MARGIN_KB, f"VmRSS grew by {grown} kB for {CONNECTIONS} connections' uploads"
    assert "Traceback" not in proc.stderr_text()


def upload_without_end(conn: ssl.SSLSocket, client: h2.connection.H2Connection) -> dict[int, object]:
    """Opens MAX_STREAMS - 1 POST streams and sends BODY bytes on each as flow control allows, never ending one;
    then one GET, answered after every reset the server wrote before it. Returns the uploads reset, by code."""
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", SERVER_NAME), (":path", "/dns-query"),
               ("content-type", "application/dns-message")]
    left = {}
    for _ in range(MAX_STREAMS - 1):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, headers)
        left[stream] = BODY
    reset: dict[int, object] = {}
    while True:
        sent = True
        while sent:  # as much as the windows take: nothing comes back until then
            sent = False
            for stream, n in left.items():
                size = min(n, client.local_flow_control_window(stream), client.max_outbound_frame_size)
                if stream not in reset and size > 0:
                    client.send_data(stream, b"\0" * size)
                    left[stream] -= size
                    sent = True
        conn.sendall(client.data_to_send())
        if not any(n for stream, n in left.items() if stream not in reset):
            break
        data = conn.recv(65536)  # window updates, resets
        assert data, "the server closed the connection"
        for event in client.receive_data(data):
            if isinstance(event, h2.events.StreamReset):
                reset[event.stream_id] = event.error_code
    stream = ask(client)
    ended = outcomes(conn, client, {stream})
    assert addresses(ended.pop(stream), "A") == [WWW_V4]  # type: ignore[arg-type]
    return {**reset, **{s: code for s, code in ended.items() if s in left}}
