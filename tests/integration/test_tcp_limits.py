"""TCP under hostile clients, on the real server: who gets a connection slot, how long a client may hold one, and
the file descriptors behind them.

Each test says what the hostile client sends and what an ordinary client sees meanwhile. Loopback gives every test
as many client addresses as it wants: all of 127.0.0.0/8 is local, so binding 127.0.0.N makes client N.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest

from resolver.net.limits import PRESSED_IDLE
from tests.integration.test_metrics import parse_samples, total
from tests.support.authserver import AuthServer
from tests.support.prom import by_labels
from tests.support.resolverproc import (
    REPO_ROOT,
    ResolverFactory,
    ResolverProcess,
    _child_env,
    addresses,
    free_port,
    make_query,
    query,
    tcp_recv,
    tcp_send,
    wait_for,
    write_config,
)
from tests.support.zone import BIG, BIG_TXT, WWW, WWW_V4

TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (linux/tcp_states.h)


def framed(name: str, rtype: str = "A", qid: int = 0x4242) -> bytes:
    q = make_query(name, rtype)
    q.id = qid
    wire = q.to_wire()
    return struct.pack("!H", len(wire)) + wire


def connect_from(server: ResolverProcess, source: str, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect: the window the server sees is fixed at the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the server closed the connection (FIN or reset) within a generous ``timeout``; data still
    arriving first is read past."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def tcp_state(sock: socket.socket) -> int:
    """The kernel's state of our end of the connection, read without reading (or sending) a byte."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[0]


def gauge(server: ResolverProcess, name: str) -> float:
    return total(parse_samples(server.metrics_text()), name)


def rejected(server: ResolverProcess) -> dict[str, float]:
    """resolver_tcp_rejected_connections_total by reason."""
    samples = by_labels(parse_samples(server.metrics_text()), "resolver_tcp_rejected_connections_total", "reason")
    return {reason: value for (reason,), value in samples.items()}


def answered_over_tcp(server: ResolverProcess, source: str) -> bool:
    reply = query(server.port, WWW, "A", tcp=True, source=source, timeout=5)
    return addresses(reply, "A") == [WWW_V4]


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


# ------------------------------------------------------------------ access list at accept


def test_clients_outside_the_access_list_are_closed_at_accept_and_hold_no_slot(
        resolver_factory: ResolverFactory) -> None:
    """39 clients outside the access list (127.0.0.2 .. .40) connect and trickle a query, a few bytes at a time,
    against a table of 16 slots. Each is closed by the server as soon as it connects, whatever it sends; the allowed
    client 127.0.0.1 gets its answers over TCP all along, and no slot stays taken."""
    server = resolver_factory({"access": {"allow": ["127.0.0.1/32"]},
                               "tcp": {"max_connections": 16, "idle_timeout": 60}}, metrics=True)
    query_bytes = framed(WWW)
    with sockets() as outside:
        for n in range(2, 41):
            outside.append(connect_from(server, f"127.0.0.{n}"))
        for piece in (query_bytes[:2], query_bytes[2:3]):  # the length, then the first byte of the message
            for sock in outside:
                with contextlib.suppress(OSError):  # closed already: that is the point
                    sock.sendall(piece)
            assert answered_over_tcp(server, "127.0.0.1"), "the allowed client was refused a connection"
        assert all(closed_by_server(sock) for sock in outside), "an outside client kept its connection"
    assert answered_over_tcp(server, "127.0.0.1")
    assert wait_for(lambda: gauge(server, "resolver_tcp_connections") == 0, timeout=10)
    assert rejected(server) == {"access": 39, "client": 0, "network": 0, "total": 0}


# ------------------------------------------------------------------ clients that do not play along


def test_a_client_that_never_reads_is_closed_and_others_are_answered(resolver_factory: ResolverFactory) -> None:
    """A client with a tiny receive window pipelines thousands of queries for BIG (a 3.5 KB TXT answer) and never
    reads one. The server stops reading its queries once answers pile up, then closes it (a reset) when it has made
    no progress within tcp.write_timeout; meanwhile other clients get their answers over TCP and UDP."""
    server = resolver_factory({"tcp": {"write_timeout": 2, "idle_timeout": 60}}, metrics=True)
    big = query(server.port, BIG, "TXT", tcp=True, timeout=5)  # cached now: the answers come at once
    assert addresses(big, "TXT") == sorted(f'"{t}"' for t in BIG_TXT)
    hog = connect_from(server, "127.0.0.50", rcvbuf=4096)
    try:
        hog.setblocking(False)
        burst = b"".join(framed(BIG, "TXT", qid) for qid in range(3000))
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < len(burst):
                sent += hog.send(burst[sent:])
        assert sent > 100 * len(framed(BIG, "TXT")), "the server read almost nothing before the client stopped"
        assert answered_over_tcp(server, "127.0.0.51")
        assert addresses(query(server.port, WWW, "A", source="127.0.0.51"), "A") == [WWW_V4]
        assert wait_for(lambda: tcp_state(hog) != TCP_ESTABLISHED, timeout=60), \
            "the server kept a client that reads nothing"
        assert wait_for(lambda: gauge(server, "resolver_tcp_connections") == 0, timeout=10)
    finally:
        hog.close()
    assert answered_over_tcp(server, "127.0.0.50"), "the client is not barred once it reconnects"
    assert server.alive()


def test_a_busy_connection_is_closed_at_max_lifetime(resolver_factory: ResolverFactory) -> None:
    """A client asks question after question on one connection, never idle. After tcp.max_lifetime the server
    answers what it has read and closes; the client reconnects and is answered."""
    server = resolver_factory({"tcp": {"max_lifetime": 1, "idle_timeout": 60}})
    with connect_from(server, "127.0.0.60") as sock:
        closed = False
        for qid in range(200_000):  # at loopback speed this passes max_lifetime long before the end
            try:
                sock.sendall(framed(WWW, "A", qid & 0xFFFF))
                wire = tcp_recv(sock)
            except (ConnectionResetError, BrokenPipeError):
                wire = None
            if wire is None:
                closed = True
                break
            assert dns.message.from_wire(wire).id == qid & 0xFFFF
        assert closed, "a connection outlived tcp.max_lifetime"
    assert answered_over_tcp(server, "127.0.0.60")


def test_a_length_and_then_silence_is_closed_at_idle_timeout(resolver_factory: ResolverFactory) -> None:
    """A client announces a 65535-byte message, sends a few bytes of it and then nothing. The wait for a whole
    message is bounded by tcp.idle_timeout: the server closes the connection."""
    server = resolver_factory({"tcp": {"idle_timeout": 1}})
    with connect_from(server, "127.0.0.70") as sock:
        sock.sendall(b"\xff\xff" + b"\x00" * 100)
        assert closed_by_server(sock, timeout=30), "a half-sent message held its connection"
    assert answered_over_tcp(server, "127.0.0.70")


def test_idle_connections_are_cut_short_once_half_the_slots_are_taken(resolver_factory: ResolverFactory) -> None:
    """Silent clients, each under the per-client and per-network caps, try to hold every slot (tcp.max_connections
    8, idle_timeout 60 s). While at most half the slots are taken, a silent connection keeps its slot past
    PRESSED_IDLE. Past half, a new silent connection is closed after PRESSED_IDLE, far inside 60 s (RFC 7766
    6.2.3), and so are the ones that keep trying; an ordinary client who comes meanwhile is answered."""
    server = resolver_factory({"tcp": {"max_connections": 8, "idle_timeout": 60}}, metrics=True)
    with sockets() as held:
        for n in range(1, 5):  # half the slots: no pressure
            held.append(connect_from(server, f"127.0.7.{n}"))
        assert wait_for(lambda: gauge(server, "resolver_tcp_connections") == 4, timeout=5)
        assert not closed_by_server(held[0], timeout=PRESSED_IDLE * 2), "cut short with half the slots free"
        for n in range(5, 8):  # past half: every wait for a question is now PRESSED_IDLE at most
            held.append(connect_from(server, f"127.0.8.{n}"))
        for sock in held[4:]:
            assert closed_by_server(sock, timeout=30), "a silent connection held its slot under pressure"
        assert answered_over_tcp(server, "127.0.9.1")
    assert rejected(server)["total"] == 0


def test_connections_are_capped_per_network(resolver_factory: ResolverFactory) -> None:
    """Ten addresses of 127.0.5.0/24 connect once each against tcp.max_per_network 4: four are served, the other
    six are closed at once, and an eleventh is closed too while the four stay. An address of 127.0.6.0/24 connects
    and is answered meanwhile."""
    server = resolver_factory({"tcp": {"max_per_network": 4, "idle_timeout": 60}}, metrics=True)
    with sockets() as held:
        for n in range(1, 11):
            held.append(connect_from(server, f"127.0.5.{n}"))
        served = 0
        for n, sock in enumerate(held):
            try:
                sock.sendall(framed(WWW, "A", n))
                wire = tcp_recv(sock)
            except (ConnectionResetError, BrokenPipeError):
                wire = None
            if wire is not None:
                assert addresses(dns.message.from_wire(wire), "A") == [WWW_V4]
                served += 1
        assert served == 4, f"{served} connections from one /24, cap 4"
        with connect_from(server, "127.0.5.11") as late:
            assert closed_by_server(late), "a fifth connection from the /24 was kept"
        assert answered_over_tcp(server, "127.0.6.1"), "another /24 was refused"
        assert gauge(server, "resolver_tcp_connections") == 4
    assert rejected(server) == {"access": 0, "client": 0, "network": 7, "total": 0}


# ------------------------------------------------------------------ file descriptors


def _nofile(soft: int, hard: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_start_is_refused_when_the_file_limit_cannot_cover_the_connections(tmp_path: Path, auth: AuthServer,
                                                                          workers: int) -> None:
    """tcp.max_connections 5000 under a hard open-file limit of 1024: the resolver does not start; it prints one
    `error:` line naming the limit, the budget and tcp.max_connections, and exits 2 (with workers, once, from the
    supervisor, before any worker starts)."""
    if _hard_limit() < 1024:
        pytest.skip("this process's own hard limit is below 1024")
    config = write_config(tmp_path / "big.yaml", {"tcp": {"max_connections": 5000}})
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "resolver", "serve", "-c", str(config), "--listen", f"127.0.0.1:{port}",
         "--upstream", auth.address, "--workers", str(workers)],
        cwd=REPO_ROOT, env=_child_env(), capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: _nofile(256, 1024),
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "tcp.max_connections" in lines[0] and "1024" in lines[0] and "Traceback" not in done.stderr


def test_soft_file_limit_is_raised_to_the_hard_limit(resolver_factory: ResolverFactory) -> None:
    hard = min(_hard_limit(), 4096)
    if hard < 600:
        pytest.skip("this process's own hard limit is too low to test with")
    server = resolver_factory({"tcp": {"max_connections": 64}}, preexec_fn=lambda: _nofile(300, hard))
    assert server.proc is not None
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)], line


def test_open_files_and_tcp_connections_are_exported(resolver_factory: ResolverFactory) -> None:
    """Three TCP clients connect and are answered: resolver_tcp_connections says 3 and resolver_open_fds has grown
    by at least three; once they hang up the connection gauge is back to 0."""
    server = resolver_factory(metrics=True)
    assert wait_for(lambda: gauge(server, "resolver_tcp_connections") == 0, timeout=10)
    before = gauge(server, "resolver_open_fds")
    assert before > 0
    with sockets() as held:
        for n in range(3):
            sock = connect_from(server, f"127.0.0.{80 + n}")
            held.append(sock)
            tcp_send(sock, make_query(WWW, "A").to_wire())
            assert tcp_recv(sock) is not None
        assert gauge(server, "resolver_tcp_connections") == 3
        assert gauge(server, "resolver_open_fds") >= before + 3
    assert wait_for(lambda: gauge(server, "resolver_tcp_connections") == 0, timeout=10)
