"""The metrics listener against hostile or early clients, on the real server: idle connections cannot take the
file descriptors the DNS side needs, a probe costs the workers nothing, and a scrape during start-up is answered."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import dns.rcode
import pytest

from resolver.config.model import Config, Endpoint, TcpConfig
from resolver.net import limits
from resolver.ops.workers import SCRAPE_WAIT, SILENT_SECONDS
from tests.integration.test_transport import _closed_by_server
from tests.integration.test_workers import _workers
from tests.support.authserver import AuthServer
from tests.support.resolverproc import REPO_ROOT, ResolverFactory, ResolverProcess, wait_for
from tests.support.zone import WWW, WWW_V4

MAX_CONNECTIONS = 16


def ask(port: int, request: bytes, *, timeout: float = 5.0) -> tuple[str, bytes, float]:
    """One request on a fresh connection, read to the server's close: (status line, body, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body, time.monotonic() - started


class FdWatch:
    """The most file descriptors ``pid`` held, sampled from /proc/PID/fd until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fd-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            try:
                self.peak = max(self.peak, len(os.listdir(f"/proc/{self.pid}/fd")))
            except OSError:
                return

    def __enter__(self) -> FdWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that never send a byte (those the kernel will not queue are skipped)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        yield held
    finally:
        for sock in held:
            sock.close()


def test_idle_metrics_clients_cannot_take_the_dns_servers_descriptors(resolver_factory: ResolverFactory) -> None:
    """The open-file limit at exactly the budget README gives, and more idle metrics connections than that limit:
    the resolver keeps answering over UDP (each a cache miss: a new upstream socket) and TCP, never holds more
    descriptors than its budget, and answers a scrape once the idle clients are gone."""
    config = replace(Config(), tcp=TcpConfig(max_connections=MAX_CONNECTIONS), listen=(Endpoint("127.0.0.1", 53),),
                     metrics=Endpoint("127.0.0.1", 9153))
    budget = limits.fd_budget(config, upstreams=1)
    hard = os_hard_limit()
    if hard < 2 * budget:
        pytest.skip("this process's own open-file limit is too low for the idle clients")
    server = resolver_factory({"tcp": {"max_connections": MAX_CONNECTIONS}}, metrics=True,
                              preexec_fn=lambda: _nofile(budget))
    assert server.proc is not None and server.metrics_port is not None
    assert ask(server.metrics_port, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 200 OK"
    with FdWatch(server.proc.pid) as watch, idle_connections(server.metrics_port, budget + 300) as held:
        assert len(held) > budget, "the kernel queued too few connections: the test would prove nothing"
        for i in range(20):
            reply = server.query(f"fd{i}.example.test", "A", tcp=bool(i % 2), timeout=3)
            assert reply.rcode() == dns.rcode.NXDOMAIN, (i, reply)
        closed = sum(_closed_by_server(sock, 2) for sock in held[:100])
        assert closed == 100, "the oldest idle connections were not closed to make room"
    assert watch.peak < budget, (watch.peak, budget)
    status, body, _ = ask(server.metrics_port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and b"resolver_queries_total" in body
    assert server.query(WWW, "A", tcp=True).answer[0][0].to_text() == WWW_V4
    assert "Too many open files" not in server.stderr_text() and "Traceback" not in server.stderr_text()


def os_hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _nofile(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def test_probes_do_not_ask_the_workers_for_counts(resolver_factory: ResolverFactory) -> None:
    """A frozen worker makes a scrape of counts wait for its answer (at most SCRAPE_WAIT); /healthz, /readyz and an
    empty connection do not ask the workers at all, so they are answered at once meanwhile."""
    server = resolver_factory(None, ["--workers", "2"], metrics=True)
    assert server.metrics_port is not None
    assert wait_for(lambda: len(_workers(server)) == 2, timeout=10)
    victim = _workers(server)[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.metrics_port)):
            pass
        for target in (b"/healthz", b"/readyz"):
            status, _, took = ask(server.metrics_port, b"GET " + target + b" HTTP/1.1\r\n\r\n")
            # Asking the workers would take all of SCRAPE_WAIT: the frozen one never answers.
            assert status == "HTTP/1.1 200 OK" and took < SCRAPE_WAIT * 0.8, (target, took)
        status, _, took = ask(server.metrics_port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert time.monotonic() - frozen < SILENT_SECONDS, "too slow: the frozen worker is no longer waited for"
        assert status == "HTTP/1.1 200 OK" and took >= SCRAPE_WAIT * 0.8, took  # what a probe used to cost
    finally:
        os.kill(victim, signal.SIGCONT)
    assert "Traceback" not in server.stderr_text()


def test_a_scrape_before_the_first_worker_reports_is_answered_503(tmp_path: Path, auth: AuthServer) -> None:
    """The supervisor listens for metrics before its workers have loaded the policy: a scrape meanwhile is answered
    503 at once and closed, never left hanging, and nothing is logged as an error."""
    process = ResolverProcess(None, ["--workers", "2"], tmp_path, upstreams=[auth.address], metrics=True)
    port = process.metrics_port
    assert port is not None
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(process.args, cwd=REPO_ROOT, env=process.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "HTTP/1.1 200 OK" not in seen:
            for target in (b"/metrics", b"/status.json"):
                try:
                    status, body, took = ask(port, b"GET " + target + b" HTTP/1.1\r\n\r\n", timeout=3)
                except ConnectionRefusedError:
                    time.sleep(0.01)
                    continue
                assert status in ("HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"), status
                assert took < 2.5 and (status.endswith("OK") or len(body) < 64), (status, body, took)
                seen.append(status)
    finally:
        proc.terminate()
        proc.wait(10)
    assert "HTTP/1.1 503 Service Unavailable" in seen, "no scrape came before the workers reported"
    assert "HTTP/1.1 200 OK" in seen
    log = stderr.read_text()
    assert "Traceback" not in log and "Unhandled exception" not in log, log
