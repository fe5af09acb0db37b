"""ops/metrics.py's HTTP side over real loopback sockets, on the test's own event loop: the connection cap, the
declared request limit, bare-LF requests, HEAD, slow clients cut, and a supervisor that asks its workers for counts
only for the pages that show them (and answers 503 before any worker reported)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from resolver.config.model import Config
from resolver.core.stats import LATENCY_BOUNDS, OUTCOMES, QTYPES, TRANSPORTS
from resolver.ops import metrics
from resolver.ops.metrics import MAX_CONNECTIONS, MAX_REQUEST_BYTES, MetricsServer
from resolver.ops.snapshot import Snapshot
from resolver.ops.workers import Supervisor
from tests.unit.test_metrics import snap
from tests.unit.test_workers import FakeClock, Plant

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def exchange(port: int, request: bytes, *, timeout: float = 3.0, eof: bool = False) -> tuple[bytes, float]:
    """Send ``request`` (then hang up our side: ``eof``) and read until the server closes: (everything received,
    seconds it took)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        if eof:
            writer.write_eof()
        data = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        data = b""
    finally:
        writer.close()
    return data, time.monotonic() - started


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


def test_head_answers_the_headers_of_get_and_no_body() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async with serving(MetricsServer(snap, lambda: True).handle) as port:
            got, _ = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _ = await exchange(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return got, head

    got, head = asyncio.run(scenario())
    status, headers, body = split(got)
    assert status == "HTTP/1.1 200 OK" and body == b"ok\n"
    head_status, head_headers, head_body = split(head)
    assert head_status == status and head_headers == headers and head_headers["content-length"] == "3"
    assert head_body == b""


def test_a_request_over_the_declared_limit_is_refused_at_once() -> None:
    async def scenario() -> tuple[tuple[bytes, float], tuple[bytes, float]]:
        async with serving(MetricsServer(snap, lambda: True).handle) as port:
            line = b"GET /healthz HTTP/1.1\r\n"
            fits = line + b"X: " + b"a" * (MAX_REQUEST_BYTES - len(line) - 7) + b"\r\n\r\n"
            assert len(fits) == MAX_REQUEST_BYTES
            return await exchange(port, fits), await exchange(port, fits[:-4] + b"a\r\n\r\n")

    (fitting, _), (over, took) = asyncio.run(scenario())
    assert split(fitting)[0] == "HTTP/1.1 200 OK"
    # 431, or (when the unread rest of the request turns the close into a reset) nothing: never an answer, and never
    # a wait for the read timeout.
    assert over == b"" or split(over)[0] == "HTTP/1.1 431 Request Header Fields Too Large", over
    assert took < 1.0


def test_bare_lf_line_ends_are_answered_at_once() -> None:
    async def scenario() -> list[tuple[bytes, float]]:
        async with serving(MetricsServer(snap, lambda: True).handle) as port:
            return [await exchange(port, request) for request in (
                b"GET /healthz HTTP/1.1\nHost: x\n\n", b"GET /readyz HTTP/1.1\r\nHost: x\n\r\n", b"GET /healthz\n\n")]

    for response, took in asyncio.run(scenario()):
        assert split(response)[0] == "HTTP/1.1 200 OK" and took < 1.0, response


def test_a_request_that_never_ends_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "READ_SECONDS", 0.3)

    async def scenario() -> tuple[bytes, float]:
        async with serving(MetricsServer(snap, lambda: True).handle) as port:
            return await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

    response, took = asyncio.run(scenario())
    assert response == b"" and took < 2.0


def test_an_answer_nobody_reads_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "WRITE_SECONDS", 0.3)
    server = MetricsServer(snap, lambda: True)
    monkeypatch.setattr(server, "route", lambda head: ("200 OK", "text/plain", b"x" * (64 << 20)))

    async def scenario() -> tuple[int, float]:
        async with serving(server.handle) as port:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            started = time.monotonic()
            while time.monotonic() - started < 5 and not server._open:  # being answered
                await asyncio.sleep(0.01)
            while time.monotonic() - started < 5 and server._open:  # ... and then given up on
                await asyncio.sleep(0.01)
            sock.close()
            return len(server._open), time.monotonic() - started

    still_open, took = asyncio.run(scenario())
    assert still_open == 0 and took < 3.0


async def _idle(port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        held.append(sock)
        await asyncio.sleep(0)  # let the server accept it
    return held


async def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1), 0.5) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


class Counting(MetricsServer):
    """Remembers the most connections it ever held at once."""

    peak = 0

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        admitted = super()._admit(writer)
        self.peak = max(self.peak, len(self._open))
        return admitted


def test_idle_connections_over_the_cap_make_room_for_new_ones() -> None:
    """More idle connections than the cap: the oldest are closed as new ones come, the server never holds more than
    the cap, and a scrape that asks at once is answered meanwhile."""
    server = Counting(snap, lambda: True)

    async def scenario() -> tuple[list[bool], bytes]:
        async with serving(server.handle) as port:
            held = await _idle(port, MAX_CONNECTIONS + 40)
            while len(server._open) < MAX_CONNECTIONS or server.turned_away < 40:
                await asyncio.sleep(0.01)
            answered, _ = await exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            closed = [await _closed_by_server(sock) for sock in held[:45]]
            for sock in held:
                sock.close()
            return closed, answered

    closed, answered = asyncio.run(scenario())
    assert split(answered)[0] == "HTTP/1.1 200 OK"
    assert all(closed[:41]), closed  # the 40 oldest made room for the 40 over the cap, the next one for the scrape
    assert closed[41:] == [False] * 4, closed
    assert server.turned_away == 41 and server.peak == MAX_CONNECTIONS


def test_when_every_connection_is_being_answered_a_new_one_is_closed() -> None:
    server = MetricsServer(snap, lambda: True)

    async def scenario() -> tuple[bytes, list[bytes]]:
        gate = asyncio.Event()

        async def slow_refresh() -> None:
            await gate.wait()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.handle(reader, writer, refresh=slow_refresh)

        async with serving(handler) as port:
            busy = [asyncio.ensure_future(exchange(port, b"GET /status.json HTTP/1.1\r\n\r\n"))
                    for _ in range(MAX_CONNECTIONS)]
            while sum(server._open.values()) < MAX_CONNECTIONS:
                await asyncio.sleep(0.01)
            refused, _ = await exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            gate.set()
            return refused, [response for response, _ in await asyncio.gather(*busy)]

    refused, answered = asyncio.run(scenario())
    assert refused == b""
    assert all(split(response)[0] == "HTTP/1.1 200 OK" for response in answered)


# ---------------------------------------------------------------------------------------------- with a supervisor


def worker_snap(queries: int) -> Snapshot:
    """A worker's report with every series /metrics exports."""
    counted = [0] * (len(TRANSPORTS) * len(QTYPES) * len(OUTCOMES))
    counted[0] = queries
    return Snapshot(queries=counted, buckets=[[0] * (len(LATENCY_BOUNDS) + 1) for _ in OUTCOMES],
                    sums=[0.0] * len(OUTCOMES), blocked={}, monitored={}, exempted={}, counters={}, cache_entries=0,
                    upstreams={}, policy_version="v1", platforms=[], exemptions=[], loaded_at=1.0, ready=True,
                    started=1.0)


def _supervisor() -> tuple[Supervisor, Plant]:
    plant = Plant()
    sup = Supervisor(2, ["serve"], Config(), start=plant.start, timers=FakeClock())
    sup.start()
    return sup, plant


async def _through(sup: Supervisor, requests: list[bytes],
                   between: Callable[[], Awaitable[None]] | None = None) -> list[tuple[bytes, float]]:
    """Each request through the supervisor's metrics handler; the workers answer every scrape at once."""
    answering = True

    async def answer_scrapes() -> None:
        while answering:
            for worker in sup.workers:
                if worker.latest is not None:
                    sup.reported(worker.index, worker.latest, sup.scrapes)
            await asyncio.sleep(0.005)

    answerer = asyncio.ensure_future(answer_scrapes())
    try:
        async with serving(sup._scraped(MetricsServer(sup.snapshot, sup.ready))) as port:
            out = []
            for request in requests:
                out.append(await exchange(port, request, eof=not request))
                if between is not None:
                    await between()
            return out
    finally:
        answering = False
        await answerer


def test_only_the_pages_with_counts_ask_the_workers() -> None:
    sup, plant = _supervisor()
    sup.reported(0, worker_snap(1))
    sup.reported(1, worker_snap(2))
    scrapes: list[int] = []

    async def count() -> None:
        scrapes.append(sup.scrapes)

    requests = [b"" if line is None else line.encode() + b" HTTP/1.1\r\n\r\n" for line in (
        "GET /healthz", "GET /readyz", "GET /readyz?verbose", None, "GET /", "POST /metrics", "GET /metrics",
        "GET /status.json")]
    answers = asyncio.run(_through(sup, requests, count))
    assert scrapes == [0, 0, 0, 0, 0, 0, 1, 2]
    assert [c.told.count((b"S", 1)) for c in plant.started] == [1, 1]
    statuses = [split(response)[0] if response else "" for response, _ in answers]
    assert statuses == ["HTTP/1.1 200 OK"] * 3 + ["", "HTTP/1.1 200 OK", "HTTP/1.1 405 Method Not Allowed"] \
        + ["HTTP/1.1 200 OK"] * 2
    assert b"\nresolver_queries_total{" in answers[6][0]


def test_before_any_worker_reported_the_counted_pages_answer_503(caplog: pytest.LogCaptureFixture) -> None:
    sup, _ = _supervisor()
    caplog.set_level(logging.WARNING)
    requests = [b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /status.json HTTP/1.1\r\n\r\n",
                b"HEAD /metrics HTTP/1.1\r\n\r\n", b"GET /readyz?verbose HTTP/1.1\r\n\r\n"]
    answers = asyncio.run(_through(sup, requests))
    for response, took in answers[:2]:
        status, headers, body = split(response)  # read to the close: the connection was closed after the answer
        assert status == "HTTP/1.1 503 Service Unavailable" and len(body) < 64 and took < 2.0, response
        assert headers["content-length"] == str(len(body))
    assert split(answers[2][0])[0] == "HTTP/1.1 503 Service Unavailable" and split(answers[2][0])[2] == b""
    assert split(answers[3][0])[0] == "HTTP/1.1 503 Service Unavailable"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_connections_closed_for_the_cap_are_exported() -> None:
    server = MetricsServer(lambda: worker_snap(1), lambda: True)
    server.turned_away = 3
    status, _, body = server.route(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "200 OK" and b"\nresolver_metrics_rejected_connections_total 3.0\n" in body
