"""PROXY protocol v2 from a trusted balancer (the test itself, on 127.0.0.1): the header's address is the client
for groups and the access list, over TCP, DoT and DoH; a header from an untrusted peer closes the connection."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from resolver.net.proxy import header
from tests.integration.test_metrics import parse_samples
from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, exemption_config, make_certs, tool
from tests.support.prom import by_labels
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, free_port
from tests.support.zone import TIKTOK_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")
COMMS_PHONE = "10.20.8.15"  # in the comms group's network, whose TikTok exemption applies


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


def start(factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path],
          trusted: list[str]) -> tuple[ResolverProcess, int, int]:
    dot, doh = free_port(udp=False), free_port(udp=False)
    proc = factory.shared(exemption_config(auth.address, {
        "dot": [f"127.0.0.1:{dot}"], "doh": [f"127.0.0.1:{doh}"],
        "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME},
        "proxy_protocol": {"trusted": trusted}}))
    return proc, dot, doh


@pytest.fixture(scope="module")
def balanced(module_resolver_factory: ResolverFactory, module_auth: AuthServer,
             certs: tuple[Path, Path, Path]) -> tuple[ResolverProcess, int, int]:
    return start(module_resolver_factory, module_auth, certs, ["127.0.0.0/8"])


def connect(port: int, client: str | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if client is not None:
        sock.sendall(header(client, 40000, "::1" if ":" in client else "127.0.0.1", port))
    return sock


def read_exact(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def framed(sock: socket.socket | ssl.SSLSocket, name: str) -> dns.message.Message:
    wire = dns.message.make_query(name, "A").to_wire()
    sock.sendall(len(wire).to_bytes(2, "big") + wire)
    return dns.message.from_wire(read_exact(sock, int.from_bytes(read_exact(sock, 2), "big")))


def over_tcp(port: int, client: str | None, name: str = "www.tiktok.com") -> dns.message.Message:
    with connect(port, client) as sock:
        return framed(sock, name)


def over_dot(port: int, client: str | None, ca: Path) -> dns.message.Message:
    with client_context(ca, ["dot"]).wrap_socket(connect(port, client), server_hostname=SERVER_NAME) as conn:
        return framed(conn, "www.tiktok.com")


def over_doh(port: int, client: str | None, ca: Path) -> dns.message.Message:
    """One HTTP/1.1 POST, written by hand: the test is the balancer, and a balancer relays bytes."""
    wire = dns.message.make_query("www.tiktok.com", "A").to_wire()
    request = (f"POST /dns-query HTTP/1.1\r\nhost: {SERVER_NAME}\r\ncontent-type: application/dns-message\r\n"
               f"content-length: {len(wire)}\r\nconnection: close\r\n\r\n").encode() + wire
    with client_context(ca, ["http/1.1"]).wrap_socket(connect(port, client), server_hostname=SERVER_NAME) as conn:
        conn.sendall(request)
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dns.message.from_wire(body)


def test_the_header_puts_the_phone_in_its_network_group_on_every_listener(
        balanced: tuple[ResolverProcess, int, int], certs: tuple[Path, Path, Path]) -> None:
    proc, dot, doh = balanced
    ca = certs[0]
    assert addresses(over_tcp(proc.port, COMMS_PHONE), "A") == [TIKTOK_V4]  # comms: exempted
    assert addresses(over_dot(dot, COMMS_PHONE, ca), "A") == [TIKTOK_V4]
    assert addresses(over_doh(doh, COMMS_PHONE, ca), "A") == [TIKTOK_V4]
    for client in (None, "10.20.12.9"):  # the balancer itself, a phone in another group: the ban
        assert addresses(over_tcp(proc.port, client), "A") == ["0.0.0.0"], client
        assert addresses(over_dot(dot, client, ca), "A") == ["0.0.0.0"], client
        assert addresses(over_doh(doh, client, ca), "A") == ["0.0.0.0"], client


def test_the_access_list_reads_the_header_address(balanced: tuple[ResolverProcess, int, int],
                                                  certs: tuple[Path, Path, Path]) -> None:
    """A phone outside access.allow, as the header names it, is closed before it is answered on every listener,
    as a plain TCP client outside the list is at accept; the balancer's own address does not let it in."""
    proc, dot, doh = balanced
    for ask in (lambda: over_tcp(proc.port, "203.0.113.7"), lambda: over_dot(dot, "203.0.113.7", certs[0]),
                lambda: over_doh(doh, "203.0.113.7", certs[0])):
        with pytest.raises((ConnectionError, OSError)):  # (ssl.SSLError is an OSError)
            ask()
    assert over_tcp(proc.port, "fd00:20:8::5").rcode() == dns.rcode.NOERROR  # IPv6 headers too


def test_a_header_from_an_untrusted_peer_closes_the_connection(
        module_resolver_factory: ResolverFactory, module_auth: AuthServer, certs: tuple[Path, Path, Path]) -> None:
    proc, dot, doh = start(module_resolver_factory, module_auth, certs, ["192.0.2.0/24"])
    for port in (proc.port, dot, doh):
        with connect(port, COMMS_PHONE) as sock:
            sock.sendall(b"\x16\x03\x01")
            with pytest.raises((ConnectionError, OSError)):
                if not sock.recv(1):
                    raise ConnectionError("closed")
    assert addresses(over_tcp(proc.port, None), "A") == ["0.0.0.0"]  # without a header it is a client as any
    assert addresses(over_dot(dot, None, certs[0]), "A") == ["0.0.0.0"]


def test_untrusted_peers_take_their_slot_at_accept_on_every_listener(
        resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]) -> None:
    """With PROXY support on, a peer that is not a trusted balancer is admitted at accept, before it sends a byte,
    as without it: two silent connections from one address (tcp.max_per_client 2, shared by TCP, DoT and DoH)
    fill its slots, and a third on any listener is closed at once, so silent peers cannot hold sockets outside
    the connection table while the server waits for a header."""
    dot, doh = free_port(udp=False), free_port(udp=False)
    proc = resolver_factory(exemption_config(auth.address, {
        "dot": [f"127.0.0.1:{dot}"], "doh": [f"127.0.0.1:{doh}"],
        "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME},
        "proxy_protocol": {"trusted": ["192.0.2.0/24"]}, "tcp": {"max_per_client": 2, "idle_timeout": 30}}),
        metrics=True)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0))
              for port in (dot, proc.port)]
    try:
        for port in (proc.port, dot, doh):
            with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0)) as extra:
                extra.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    assert extra.recv(1) == b"", f"a third connection from one address was kept on {port}"
        assert addresses(over_tcp(proc.port, None), "A") == ["0.0.0.0"]  # another address is served
    finally:
        for sock in silent:
            sock.close()
    rejected = by_labels(parse_samples(proc.metrics_text()), "resolver_tcp_rejected_connections_total", "reason")
    assert rejected[("client",)] == 3
