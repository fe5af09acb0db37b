"""DNS over TLS (RFC 7858) through clients nobody here wrote: kdig +tls, dnspython's dns.query.tls, openssl
s_client. The phone's TLS server name ``<id>.dns.force.example`` is its client id, and a TikTok exemption for
``client_ids: [comms-01]`` applies over DoT with that name and not without it."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, dot_query, exemption_config, make_certs, run, tool
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, free_port, wait_for
from tests.support.zone import TIKTOK_V4, WWW, WWW_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


def dot_config(upstream: str, certs: tuple[Path, Path, Path], port: int, **extra: Any) -> dict[str, Any]:
    return exemption_config(upstream, {
        "dot": [f"127.0.0.1:{port}"],
        "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}, **extra})


@pytest.fixture(scope="module")
def server(module_resolver_factory: ResolverFactory, module_auth: AuthServer,
           certs: tuple[Path, Path, Path]) -> tuple[ResolverProcess, int]:
    port = free_port(udp=False)
    proc = module_resolver_factory.shared(dot_config(module_auth.address, certs, port))
    assert proc.wait_stderr(f"dot 127.0.0.1:{port}")
    return proc, port


def tls_connect(port: int, ca: Path, sni: str = SERVER_NAME) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_context(ca, ["dot"]).wrap_socket(raw, server_hostname=sni)


def read_message(conn: ssl.SSLSocket) -> dns.message.Message | None:
    head = b""
    while len(head) < 2:
        chunk = conn.recv(2 - len(head))
        if not chunk:
            return None
        head += chunk
    size = int.from_bytes(head, "big")
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        assert chunk, "the connection closed inside a message"
        body += chunk
    return dns.message.from_wire(body)


@pytest.mark.skipif(tool("kdig") is None, reason="kdig (knot-dnsutils) is not installed")
def test_kdig_over_tls_gets_blocked_and_forwarded_answers_on_one_connection(
        server: tuple[ResolverProcess, int], certs: tuple[Path, Path, Path]) -> None:
    _, port = server
    done = run("kdig", "@127.0.0.1", "-p", str(port), "+tls", f"+tls-ca={certs[0]}", f"+tls-hostname={SERVER_NAME}",
               "+keepopen", "www.tiktok.com", "A", WWW, "A")
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    records = [line.split() for line in out.splitlines() if line and not line.startswith(";")]
    assert ["www.tiktok.com.", "10", "IN", "A", "0.0.0.0"] in records, out
    assert any(r[0] == f"{WWW}." and r[-1] == WWW_V4 for r in records), out
    assert "TLS session (TLS1.3)" in out, out


def test_sni_client_id_lifts_the_exemption_over_dot_and_nothing_else_does(
        server: tuple[ResolverProcess, int], certs: tuple[Path, Path, Path]) -> None:
    proc, port = server
    ca = certs[0]
    exempted = dot_query(port, "www.tiktok.com", ca, sni=f"comms-01.{SERVER_NAME}")
    assert addresses(exempted, "A") == [TIKTOK_V4]
    for sni in (SERVER_NAME, f"comms-02.{SERVER_NAME}"):  # no id, another id: the ban
        assert addresses(dot_query(port, "www.tiktok.com", ca, sni=sni), "A") == ["0.0.0.0"], sni
    assert addresses(proc.query("www.tiktok.com"), "A") == ["0.0.0.0"]  # plain DNS carries no id


def test_pipelined_questions_are_answered_out_of_order(server: tuple[ResolverProcess, int],
                                                       certs: tuple[Path, Path, Path],
                                                       module_auth: AuthServer) -> None:
    _, port = server
    module_auth.add("slow-dot.example.test", "A", "192.0.2.77")
    module_auth.set_behaviour("slow-dot.example.test", "slow:0.5")
    slow = dns.message.make_query("slow-dot.example.test", "A")
    fast = dns.message.make_query("www.facebook.com", "A")
    with tls_connect(port, certs[0]) as conn:
        wires = [m.to_wire() for m in (slow, fast)]
        conn.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in wires))  # both in one write
        first, second = read_message(conn), read_message(conn)
    assert first is not None and second is not None
    assert first.id == fast.id and addresses(first, "A") == ["0.0.0.0"]  # the blocked answer did not wait
    assert second.id == slow.id and addresses(second, "A") == ["192.0.2.77"]


def test_a_burst_of_pipelined_questions_gets_every_answer(server: tuple[ResolverProcess, int],
                                                          certs: tuple[Path, Path, Path]) -> None:
    _, port = server
    queries = [dns.message.make_query(name, "A") for name in ("www.facebook.com", WWW) * 25]
    with tls_connect(port, certs[0]) as conn:
        conn.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
        answers = [read_message(conn) for _ in queries]
    assert sorted(a.id for a in answers if a is not None) == sorted(q.id for q in queries)


def test_openssl_sees_alpn_dot_and_a_certificate_that_verifies(server: tuple[ResolverProcess, int],
                                                               certs: tuple[Path, Path, Path]) -> None:
    _, port = server
    done = run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "dot", "-servername", SERVER_NAME,
               "-CAfile", str(certs[0]), "-verify_return_error", data=b"")
    text = (done.stdout + done.stderr).decode()
    assert "ALPN protocol: dot" in text, text
    assert "Verify return code: 0 (ok)" in text, text


def test_a_second_connection_resumes_the_tls_session(server: tuple[ResolverProcess, int],
                                                     certs: tuple[Path, Path, Path]) -> None:
    """OpenSSL's client (through Python's ssl) keeps the session ticket of the first connection and offers it."""
    _, port = server
    context = client_context(certs[0], ["dot"])
    query = dns.message.make_query(WWW, "A").to_wire()
    sessions = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname=SERVER_NAME,
                                 session=sessions[-1] if sessions else None) as conn:
            conn.sendall(len(query).to_bytes(2, "big") + query)
            assert read_message(conn) is not None  # (the ticket arrives before the answer)
            sessions.append(conn.session)
            reused = conn.session_reused
    assert reused


def test_an_idle_connection_is_closed_and_limits_per_client_hold(resolver_factory: ResolverFactory, auth: AuthServer,
                                                                 certs: tuple[Path, Path, Path]) -> None:
    port = free_port(udp=False)
    resolver_factory(dot_config(auth.address, certs, port, tcp={"idle_timeout": 0.5, "max_per_client": 2}))
    first, second = tls_connect(port, certs[0]), tls_connect(port, certs[0])
    with first, second:
        with pytest.raises(OSError):  # a third from the same client is turned away (ssl.SSLError is an OSError)
            tls_connect(port, certs[0]).close()
        query = dns.message.make_query(WWW, "A").to_wire()
        first.sendall(len(query).to_bytes(2, "big") + query)
        answer = read_message(first)
        assert answer is not None and answer.rcode() == dns.rcode.NOERROR
        assert read_message(first) is None  # then nothing more: the server closed it when it went idle
    assert wait_for(lambda: handshakes(port, certs[0]))  # and the slots are free again


def handshakes(port: int, ca: Path) -> bool:
    try:
        tls_connect(port, ca).close()
    except OSError:
        return False
    return True
