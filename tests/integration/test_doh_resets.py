"""HTTP/2 streams reset by the thousand, on both engines (nghttp2 and the pure-Python h2): a client that resets its
own (rapid reset), or sends requests the server must reset (a header list past SETTINGS_MAX_HEADER_LIST_SIZE,
cheap to send and costly to decode: one big HPACK table entry referenced again and again). Past a burst, the
server ends the connection with a GOAWAY, and the next connection is served as ever.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import hpack
import pytest
from h2.errors import ErrorCodes

from resolver.net.doh import NGHTTP2, RESET_BURST
from tests.integration.test_doh_hostile import ask, h2_connection, outcomes
from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, make_certs, tool
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, free_port
from tests.support.zone import WWW_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")

STREAMS = int(RESET_BURST) * 3  # the burst and what the rate adds while they are sent, many times over
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_STREAM, END_HEADERS = 1, 4


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["nghttp2", "h2"])
def doh(request: pytest.FixtureRequest, resolver_factory: ResolverFactory, auth: AuthServer,
        certs: tuple[Path, Path, Path]) -> tuple[ResolverProcess, int]:
    if request.param == "nghttp2" and not NGHTTP2:
        pytest.skip("built without libnghttp2's headers: DoH's HTTP/2 is h2's only")
    port = free_port(udp=False)
    proc = resolver_factory({"upstreams": [auth.address], "doh": [f"127.0.0.1:{port}"],
                             "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}},
                            env={"RESOLVER_HTTP2": request.param})
    assert proc.wait_stderr(f"doh 127.0.0.1:{port} (HTTP/2 by {request.param} ")
    return proc, port


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def rapid_resets(encoder: hpack.Encoder) -> list[bytes]:
    """Each stream a whole GET, reset by the client at once."""
    get = [(":method", "GET"), (":scheme", "https"), (":authority", SERVER_NAME), (":path", "/dns-query?dns=AAAA")]
    return [frame(HEADERS, END_STREAM | END_HEADERS, stream, encoder.encode(get))
            + frame(RST_STREAM, 0, stream, struct.pack(">I", ErrorCodes.CANCEL)) for stream in range(1, 2 * STREAMS, 2)]


def oversized_headers(encoder: hpack.Encoder) -> list[bytes]:
    """The first stream puts a 4 KB header in the HPACK table; each later one refers to it past the size limit."""
    first = encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", SERVER_NAME),
                            (":path", "/dns-query?dns=AAAA"), ("x-big", "b" * 4000)])
    newest = b"\xbe"  # the newest entry of the dynamic table: x-big
    block = b"\x82\x87\x84" + newest * 8  # GET, https, / and the big header, over 16 KiB in all
    return [frame(HEADERS, END_STREAM | END_HEADERS, 1, first),
            *(frame(HEADERS, END_STREAM | END_HEADERS, stream, block) for stream in range(3, 2 * STREAMS, 2))]


def goaway_codes(data: bytes) -> list[int]:
    codes, pos = [], 0
    while pos + 9 <= len(data):
        size = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == GOAWAY and pos + 9 + 8 <= len(data):
            codes.append(int.from_bytes(data[pos + 13:pos + 17], "big"))
        pos += 9 + size
    return codes


@pytest.mark.parametrize("attack", [rapid_resets, oversized_headers])
def test_streams_reset_by_the_thousand_end_the_connection(doh: tuple[ResolverProcess, int],
                                                          certs: tuple[Path, Path, Path], attack: object) -> None:
    proc, port = doh
    assert callable(attack)
    frames: list[bytes] = attack(hpack.Encoder())
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(certs[0], ["h2"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        # The server's SETTINGS are never acknowledged: past its stream limit, streams are then refused (more
        # resets) rather than a connection error, whatever the server reads at once.
        conn.sendall(PREFACE + frame(SETTINGS, 0, 0))
        try:
            for start in range(0, len(frames), 100):
                conn.sendall(b"".join(frames[start:start + 100]))
        except (OSError, ssl.SSLError):
            pass  # closed by the server before the last of them
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (OSError, ssl.SSLError):
            pass
    assert goaway_codes(received), f"no GOAWAY after {STREAMS} streams reset"
    with h2_connection(port, certs[0]) as (conn, client):
        stream = ask(client)
        assert addresses(outcomes(conn, client, {stream})[stream], "A") == [WWW_V4]  # type: ignore[arg-type]
    assert "Traceback" not in proc.stderr_text()
