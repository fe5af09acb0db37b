"""Clients of the encrypted listeners that do not play along: each must lose its connection within the TCP
bounds, and an honest phone must still be answered meanwhile.

- a client that opens TLS and never finishes the handshake (a slow ClientHello),
- an HTTP/2 client that sets its receive window to 0 and asks: answers are owed but can never be sent,
- a client that keeps a DoT connection busy past tcp.max_lifetime.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import dns.message
import dns.rcode
import h2.config
import h2.connection
import h2.settings
import pytest

from tests.integration.test_lifecycle import _error_lines, _serve_until_exit
from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, dot_query, make_certs, tool
from tests.support.resolverproc import ResolverFactory, addresses, free_port, write_config
from tests.support.zone import WWW, WWW_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


def start(factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path],
          tcp: dict[str, float]) -> tuple[int, int]:
    """A resolver with DoT and DoH and the given ``tcp`` bounds: (DoT port, DoH port)."""
    dot, doh = free_port(udp=False), free_port(udp=False)
    factory({"upstreams": [auth.address], "dot": [f"127.0.0.1:{dot}"], "doh": [f"127.0.0.1:{doh}"],
                    "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME},
                    "tcp": tcp})
    return dot, doh


def closed_by_server(sock: socket.socket | ssl.SSLSocket, within: float = 30.0) -> bool:
    """True when the server ends the connection (EOF or a reset) before ``within`` seconds pass; whatever else
    arrives meanwhile (TLS records, HTTP/2 frames) is read and thrown away."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    return True


def test_a_handshake_that_never_finishes_is_closed(resolver_factory: ResolverFactory, auth: AuthServer,
                                                   certs: tuple[Path, Path, Path]) -> None:
    dot, doh = start(resolver_factory, auth, certs, {"idle_timeout": 1})
    for port in (dot, doh):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header announcing a ClientHello, then nothing
            assert closed_by_server(sock), f"a half-sent handshake held its connection on {port}"
    assert addresses(dot_query(dot, WWW, certs[0]), "A") == [WWW_V4]


def test_an_http2_client_with_a_closed_window_is_closed_at_idle_timeout(
        resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]) -> None:
    """The answer is owed but the client's window of 0 lets no byte of it out: the connection must not count as
    busy for ever, or such clients would keep their slots for good."""
    dot, doh = start(resolver_factory, auth, certs, {"idle_timeout": 1})
    raw = socket.create_connection(("127.0.0.1", doh), timeout=5)
    with client_context(certs[0], ["h2"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        wire = dns.message.make_query(WWW, "A").to_wire()
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, [(":method", "POST"), (":scheme", "https"), (":authority", SERVER_NAME),
                                     (":path", "/dns-query"), ("content-type", "application/dns-message"),
                                     ("content-length", str(len(wire)))])
        client.send_data(stream, wire, end_stream=True)
        conn.sendall(client.data_to_send())
        assert closed_by_server(conn), "an answer the client never lets out held the connection"
    assert addresses(dot_query(dot, WWW, certs[0]), "A") == [WWW_V4]


def test_a_busy_dot_connection_ends_at_max_lifetime(resolver_factory: ResolverFactory, auth: AuthServer,
                                                    certs: tuple[Path, Path, Path]) -> None:
    """A question every 0.2 s keeps the connection from ever going idle; tcp.max_lifetime still ends it, after
    its questions are answered."""
    dot, _ = start(resolver_factory, auth, certs, {"idle_timeout": 5, "max_lifetime": 2})
    raw = socket.create_connection(("127.0.0.1", dot), timeout=5)
    answered = 0
    with client_context(certs[0], ["dot"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        wire = dns.message.make_query(WWW, "A").to_wire()
        ends = time.monotonic() + 60
        try:
            while time.monotonic() < ends:
                conn.sendall(len(wire).to_bytes(2, "big") + wire)
                size = conn.recv(2)
                if len(size) < 2:
                    break
                body = b""
                while len(body) < int.from_bytes(size, "big"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                assert dns.message.from_wire(body).rcode() == dns.rcode.NOERROR
                answered += 1
                time.sleep(0.2)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        assert time.monotonic() < ends, "a busy connection outlived tcp.max_lifetime"
    assert answered >= 1
    assert addresses(dot_query(dot, WWW, certs[0]), "A") == [WWW_V4]


@pytest.mark.parametrize("kind", ["dot", "doh"])
def test_a_second_supervisor_cannot_join_the_encrypted_ports(resolver_factory: ResolverFactory, auth: AuthServer,
                                                             certs: tuple[Path, Path, Path], tmp_path: Path,
                                                             kind: str) -> None:
    """Both with several workers, so both would bind with SO_REUSEPORT: a second resolver on other plain ports but
    the first's DoT or DoH port must be refused with one error line, not take a share of its phones."""
    dot, doh = free_port(udp=False), free_port(udp=False)
    tls = {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}
    config = {"upstreams": [auth.address], "dot": [f"127.0.0.1:{dot}"], "doh": [f"127.0.0.1:{doh}"], "tls": tls}
    resolver_factory(config, ["--workers", "2"])
    taken = dot if kind == "dot" else doh
    other = write_config(tmp_path / "other.yaml", {**config, kind: [f"127.0.0.1:{taken}"],
                                                   "dot" if kind == "doh" else "doh": []})
    second = _serve_until_exit("-c", str(other), "--listen", f"127.0.0.1:{free_port()}", "--workers", "2")
    assert second.returncode == 2, second.stderr
    assert _error_lines(second.stderr) == [f"error: cannot listen on 127.0.0.1:{taken} (tcp): Address already in use"]
    assert "Traceback" not in second.stderr
    assert addresses(dot_query(dot, WWW, certs[0]), "A") == [WWW_V4]
