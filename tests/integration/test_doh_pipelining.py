"""DoH over HTTP/1.1 answers one request at a time. A client that pipelines megabytes of requests behind one whose
answer is slow in coming must not make the server buffer them all, nor answer the whole backlog in one go while
every other client waits: the server stops reading it, works through what it read a share at a time, and its
memory stays where it was. The client still gets an answer to every request it managed to send.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import ssl
import threading
import time
from pathlib import Path

import dns.message
import pytest

from tests.integration.test_bounds import vm_rss_kb
from tests.support.authserver import AuthServer
from tests.support.phones import SERVER_NAME, client_context, make_certs, tool
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, free_port
from tests.support.zone import WWW, WWW_V4

pytestmark = pytest.mark.skipif(tool("openssl") is None, reason="openssl makes the test CA")

SLOW = "slow-pipeline.example.test"
PIPELINED_BYTES = 48 << 20  # what the client tries to push behind the slow request
PADDING = 8000  # a header per request: many bytes in few requests, so answering them all stays quick
SENDING_SECONDS = 20.0  # the client gives up sending after this long, however far it got
RSS_MARGIN_KB = 16 * 1024  # far below what the pipelined bytes would take if they were buffered


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certs(tmp_path_factory.mktemp("pki"))


def request(name: str, padding: int = 0) -> bytes:
    wire = dns.message.make_query(name, "A", id=0).to_wire()
    query = base64.urlsafe_b64encode(wire).decode().rstrip("=")
    pad = f"X-Pad: {'a' * padding}\r\n" if padding else ""
    return f"GET /dns-query?dns={query} HTTP/1.1\r\nHost: {SERVER_NAME}\r\n{pad}\r\n".encode()


class Pipeliner:
    """One HTTP/1.1 connection, in a thread of its own: a slow request, then as many padded ones as it can push
    before its deadline, while it reads and counts the responses. One thread does both (non-blocking): TLS
    does not take a read and a write from two threads at once."""

    def __init__(self, port: int, ca: Path) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.9", 0))
        self.conn = client_context(ca, ["http/1.1"]).wrap_socket(raw, server_hostname=SERVER_NAME)
        assert self.conn.selected_alpn_protocol() == "http/1.1"
        self.sent = 0  # requests wholly written
        self.statuses: list[bytes] = []
        self.closed = False
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        batch = request(WWW, PADDING) * 64
        out, requests, pushed = request(SLOW), 1, 0
        deadline = time.monotonic() + SENDING_SECONDS
        self.conn.setblocking(False)  # (polled: select on a TLS socket may wait though TLS has bytes ready)
        unread = b""
        while time.monotonic() < deadline + 30 and not self.closed:
            if not out and pushed < PIPELINED_BYTES and time.monotonic() < deadline:
                out, requests = batch, 64
                pushed += len(batch)
            if out:
                with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    out = out[self.conn.send(out[:1 << 16]):]
                if not out:
                    self.sent += requests
            unread = self._receive(unread)
            done_sending = not out and (pushed >= PIPELINED_BYTES or time.monotonic() >= deadline)
            if done_sending and len(self.statuses) >= self.sent:
                return
            select.select([self.conn], [self.conn] if out else [], [], 0.001)

    def _receive(self, unread: bytes) -> bytes:
        """Reads what is there; counts each response's status; returns an unfinished status line's bytes."""
        try:
            while True:
                chunk = self.conn.recv(1 << 16)
                if not chunk:
                    self.closed = True
                    break
                unread += chunk
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (OSError, ssl.SSLError):
            self.closed = True
        pos = 0
        while (found := unread.find(b"HTTP/1.1 ", pos)) >= 0 and len(unread) >= found + 12:
            self.statuses.append(unread[found + 9:found + 12])
            pos = found + 12
        return unread[found if found >= 0 else max(pos, len(unread) - 11):]


def test_a_pipelined_backlog_behind_a_slow_answer_is_neither_buffered_nor_a_stall(
        resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]) -> None:
    auth.set_behaviour(SLOW, "slow:1.0")
    port = free_port(udp=False)
    proc: ResolverProcess = resolver_factory({
        "upstreams": [auth.address], "doh": [f"127.0.0.1:{port}"],
        "tls": {"cert": str(certs[1]), "key": str(certs[2]), "server_name": SERVER_NAME}})
    assert proc.proc is not None
    assert addresses(proc.query(WWW), "A") == [WWW_V4]  # cached: the pipelined requests are answered at once
    before = vm_rss_kb(proc.proc.pid)
    peak = [before]
    attacker = Pipeliner(port, certs[0])
    attacker.thread.start()
    answered = 0
    while attacker.thread.is_alive():  # another client, meanwhile, on plain DNS
        assert addresses(proc.query(WWW, source="127.0.0.2"), "A") == [WWW_V4]
        answered += 1
        peak.append(vm_rss_kb(proc.proc.pid))
    attacker.thread.join()
    peak.append(vm_rss_kb(proc.proc.pid))
    attacker.conn.close()
    assert answered, "the pipelining client was done before anyone else asked"
    assert attacker.sent > 1000, f"only {attacker.sent} requests were sent"
    assert len(attacker.statuses) >= attacker.sent, f"{len(attacker.statuses)} answers to {attacker.sent} requests"
    assert set(attacker.statuses) == {b"200"}, set(attacker.statuses)
    assert max(peak) - before < RSS_MARGIN_KB, f"VmRSS grew by {max(peak) - before} kB"
    assert addresses(ask_http11(port, certs[0]), "A") == [WWW_V4]  # and DoH serves on
    assert "Traceback" not in proc.stderr_text()


def ask_http11(port: int, ca: Path) -> dns.message.Message:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(ca, ["http/1.1"]).wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
        conn.sendall(request(WWW))
        response = b""
        while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < length(response):
            chunk = conn.recv(65536)
            assert chunk, f"closed before the whole response: {response!r}"
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return dns.message.from_wire(body)


def length(response: bytes) -> int:
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0
