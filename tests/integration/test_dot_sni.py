"""A TLS server name that is not ASCII: CPython's ssl cannot decode it for the SNI callback and fails the
handshake. Each such handshake must end cleanly, with nothing on the server's stderr (before the fix, a traceback
per handshake, outside the JSON log), and the next client is served as ever.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, dot_query, make_certs, tool
from tests.support.resolverproc import ResolverFactory, addresses, free_port
from tests.support.zone import WWW, WWW_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")

HANDSHAKES = 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


def client_hello(server_name: bytes) -> bytes:
    """A real ClientHello (Python's own), its server name swapped for ``server_name`` of the same length, so that
    no length field changes."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    placeholder = b"z" * len(server_name)
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=placeholder.decode() + "." + SERVER_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello.count(placeholder) == 1
    return hello.replace(placeholder, server_name)


def test_a_server_name_that_is_not_ascii_ends_its_handshake_quietly(
        resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]) -> None:
    port = free_port(udp=False)
    proc = resolver_factory({"upstreams": [auth.address], "dot": [f"127.0.0.1:{port}"],
                             "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}})
    hello = client_hello(b'\xff\xfe"}\n{\x1b[')
    for _ in range(HANDSHAKES):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(hello)
            while raw.recv(65536):  # an alert, then the end of the connection
                pass
    assert addresses(dot_query(port, WWW, certs[0], sni=f"comms-01.{SERVER_NAME}"), "A") == [WWW_V4]
    assert addresses(dot_query(port, WWW, certs[0]), "A") == [WWW_V4]
    assert not proc.wait_stderr("Exception ignored", timeout=1.0), proc.stderr_text()[-2000:]
    assert "Traceback" not in proc.stderr_text()
    assert proc.alive()
