"""Prometheus metrics, read from the plain counters at scrape time, served by a small HTTP server on the loop.

Labels are bounded: transport, outcome, platform (or list file), upstream address from the config. Never a
client address or a query name. The families are built in ``resolver.ops.exporter`` and the status page lives in
``resolver.ops.statuspage``; both are imported when a server is made, so a resolver with metrics off (the default)
starts without prometheus_client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from resolver import __version__
from resolver.core.policy import exemption_state
from resolver.core.stats import OUTCOMES
from resolver.net.limits import METRICS_CONNECTIONS
from resolver.ops.snapshot import Snapshot

if TYPE_CHECKING:
    from resolver.ops.statuspage import StatusSnapshot

log = logging.getLogger("resolver.ops.metrics")
MAX_REQUEST_BYTES = 8192  # a request head (request line, headers, blank line) longer than this is answered 431
MAX_CONNECTIONS = METRICS_CONNECTIONS  # open at once (Prometheus, a few dashboards and probes); counted in the budget
READ_SECONDS = 5.0  # for the whole request head, however it trickles in
WRITE_SECONDS = 5.0  # for the whole answer to reach a client that reads slowly or not at all
WARN_SECONDS = 60.0  # at most one warning this often while connections are turned away for the cap
COUNTED_PATHS = (b"/metrics", b"/status.json")  # the pages that show counts (a supervisor refreshes them first)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
UPSTREAM_RECENT = 30.0  # an upstream is "up" in /readyz?verbose when it answered within this many seconds


def readiness(ready: bool, snap: Snapshot | None) -> list[tuple[bool, str]]:
    """/readyz?verbose: each check as (passed, line). Only listening and the policy decide readiness: an upstream
    outage must not take every replica out of its load balancer, since serve-stale answers phones meanwhile. The
    upstreams are listed for information (and exported as ``resolver_upstream_healthy``)."""
    checks = [(ready, "listening ok" if ready else "listening failed: not listening yet, or shutting down")]
    if snap is None:
        return [*checks, (False, "policy failed: none loaded yet")]
    checks.append((True, f"policy ok: version {snap.policy_version}"))
    for name, up in sorted(snap.upstreams.items()):
        if up.answered_ago <= UPSTREAM_RECENT:
            checks.append((True, f"upstream {name} up: last good reply {up.answered_ago:.0f}s ago (information)"))
        else:
            checks.append((False, f"upstream {name} down: no good reply in the last {UPSTREAM_RECENT:.0f}s "
                                  "(information, not part of readiness)"))
    return checks


def readiness_text(checks: list[tuple[bool, str]], ready: bool) -> bytes:
    lines = [f"[{'+' if passed else '-'}]{line}" for passed, line in checks]
    lines.append("readyz check passed" if ready else "readyz check failed")
    return ("\n".join(lines) + "\n").encode()


def status_of(snap: Snapshot) -> StatusSnapshot:
    """The status page's plain numbers, from the same snapshot the metrics use."""
    from resolver.ops import statuspage

    per_outcome = {outcome: 0 for outcome in OUTCOMES}
    for i, count in enumerate(snap.queries):
        per_outcome[OUTCOMES[i % len(OUTCOMES)]] += count
    now = time.time()
    exemptions = {"active": 0, "pending": 0, "expired": 0}
    for _, _, starts, expires in snap.exemptions:
        exemptions[exemption_state(now, starts, expires)] += 1
    return statuspage.StatusSnapshot(
        time=now,
        uptime_seconds=now - snap.started,
        version=__version__,
        policy_version=snap.policy_version,
        policy_loaded_at=snap.loaded_at,
        queries=per_outcome,
        blocked=statuspage.by_platform(snap.blocked),
        cache_hits=snap.counters.get("cache_hits", 0),
        cache_misses=snap.counters.get("cache_misses", 0),
        cache_entries=snap.cache_entries,
        upstreams={name: {"requests": u.requests, "errors": u.errors, "timeouts": u.timeouts,
                          "healthy": 1 if u.healthy else 0} for name, u in snap.upstreams.items()},
        reloads_failed=snap.counters.get("reloads_failed", 0),
        exemptions=exemptions,
    )


class NoSnapshotYet(RuntimeError):
    """Nothing to count from yet: a supervisor none of whose workers has reported. A page of counts answers 503."""


def _request_line(head: bytes) -> list[bytes]:
    return head.split(b"\n", 1)[0].rstrip(b"\r").split()


def _wants_counts(head: bytes) -> bool:
    """Whether answering ``head`` reads the counters (a supervisor asks its workers for fresh ones first)."""
    parts = _request_line(head)
    return len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and parts[1].partition(b"?")[0] in COUNTED_PATHS


class RequestTooLarge(Exception):
    """The request head did not end within MAX_REQUEST_BYTES."""


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request head up to its blank line (CRLF or bare LF line ends), or None when the client closed before it
    ended. ``RequestTooLarge`` when it does not end within MAX_REQUEST_BYTES."""
    data = b""
    while len(data) < MAX_REQUEST_BYTES:
        chunk = await reader.read(MAX_REQUEST_BYTES - len(data))
        if not chunk:
            return None
        start = max(0, len(data) - 3)  # the blank line may straddle two reads
        data += chunk
        end = _HEAD_END.search(data, start)
        if end is not None:
            return data[:end.start()]
    raise RequestTooLarge


class MetricsServer:
    """Just enough HTTP/1.1 for Prometheus and probes: GET or HEAD, one response, close.

    At most MAX_CONNECTIONS connections at once, so the listener fits the file-descriptor budget
    (``net/limits.py``) however many clients connect. Over it, the oldest connection still waiting for its request
    makes room: a client that connects and says nothing cannot keep Prometheus or a liveness probe out, and one
    that asks at once is answered before a flood could push it out. Only when every connection is being answered
    is the newcomer closed."""

    def __init__(self, source: Callable[[], Snapshot], ready: Callable[[], bool]) -> None:
        from resolver.ops import exporter, statuspage

        self.source = source
        self.registry = exporter.make_registry(source, lambda: self.turned_away)
        self.ready = ready
        self._render = exporter.generate_latest
        self._page, self._status_json = statuspage.PAGE, statuspage.status_json
        # The status page allows only its own inline style and script; nothing here may be framed, sniffed or cached.
        self._security_headers = (f"Content-Security-Policy: {statuspage.CONTENT_SECURITY_POLICY}; "
                                  "frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\n"
                                  "Cache-Control: no-store\r\n")
        self._open: dict[asyncio.StreamWriter, bool] = {}  # oldest first; True once its request has been read
        self.turned_away = 0  # connections closed for the cap: evicted while idle, or refused
        self._warned = -WARN_SECONDS

    def _snapshot_or_none(self) -> Snapshot | None:
        try:
            return self.source()
        except RuntimeError:  # a supervisor none of whose workers has reported yet (NoSnapshotYet)
            return None

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Count ``writer`` in, making room by closing the oldest idle connection; False when there is none."""
        if len(self._open) >= MAX_CONNECTIONS:
            self.turned_away += 1
            now = time.monotonic()
            if now - self._warned >= WARN_SECONDS:  # a flood must not flood the log too
                self._warned = now
                log.warning("metrics: %d connections open, the most allowed: closing the oldest that has not sent "
                            "its request, or the new one when all are being answered (%d closed so far)",
                            MAX_CONNECTIONS, self.turned_away)
            idle = next((w for w, busy in self._open.items() if not busy), None)
            if idle is None:
                return False
            del self._open[idle]
            idle.transport.abort()
        self._open[writer] = False
        return True

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                     refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve one connection. ``refresh`` (a supervisor's): called before answering a request that shows
        counts, once that request has been read, so an empty connection or a probe costs nothing."""
        if not self._admit(writer):
            writer.transport.abort()
            return
        try:
            await self._serve(reader, writer, refresh)
        finally:
            self._open.pop(writer, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     refresh: Callable[[], Awaitable[None]] | None) -> None:
        try:
            head = await asyncio.wait_for(read_head(reader), READ_SECONDS)
        except (TimeoutError, ConnectionError):
            return
        except RequestTooLarge:
            head = None
        else:
            if head is None:  # the client hung up first
                return
        if writer not in self._open:  # closed to make room meanwhile
            return
        self._open[writer] = True
        if head is None:
            status, ctype, body = "431 Request Header Fields Too Large", "text/plain", b"request too large\n"
        else:
            if refresh is not None and _wants_counts(head):
                await refresh()
            status, ctype, body = self.route(head)
        header = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                  f"{self._security_headers}Connection: close\r\n\r\n").encode()
        if head is not None and _request_line(head)[:1] == [b"HEAD"]:
            body = b""  # the length of what GET would send, and no body (RFC 9110, 9.3.2)
        # Drain the whole answer, not just below the usual high-water mark, so a client that never reads it is
        # cut off here rather than holding its descriptor behind close() for as long as it likes.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            writer.write(header + body)
            await asyncio.wait_for(writer.drain(), WRITE_SECONDS)
        except (ConnectionError, TimeoutError):
            writer.transport.abort()

    def route(self, head: bytes) -> tuple[str, str, bytes]:
        parts = _request_line(head)
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        path, _, query = parts[1].partition(b"?")
        try:
            if path == b"/metrics":
                return "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._render(self.registry)
            if path == b"/status.json":
                return "200 OK", "application/json", self._status_json(status_of(self.source()))
        except NoSnapshotYet:
            return "503 Service Unavailable", "text/plain", b"not ready: no counts yet\n"
        if path == b"/":
            return "200 OK", "text/html; charset=utf-8", self._page
        if path == b"/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == b"/readyz":
            ready = self.ready()
            status = "200 OK" if ready else "503 Service Unavailable"
            if b"verbose" not in query.split(b"&"):
                return status, "text/plain", b"ready\n" if ready else b"not ready\n"
            return status, "text/plain", readiness_text(readiness(ready, self._snapshot_or_none()), ready)
        return "404 Not Found", "text/plain", b"not found\n"
