"""Prometheus metrics, read from the plain counters at scrape time, served by a small HTTP server on the loop.

Labels are bounded: transport, outcome, platform (or list file), upstream address from the config. Never a
client address or a query name. The families are built in ``resolver.ops.exporter`` and the status page lives in
``resolver.ops.statuspage``; both are imported when a server is made, so a resolver with metrics off (the default)
starts without prometheus_client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from resolver import __version__
from resolver.core.policy import exemption_state
from resolver.core.stats import OUTCOMES
from resolver.ops.snapshot import Snapshot

if TYPE_CHECKING:
    from resolver.ops.statuspage import StatusSnapshot

log = logging.getLogger("resolver.ops.metrics")
MAX_REQUEST_BYTES = 8192
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


class MetricsServer:
    """Just enough HTTP/1.1 for Prometheus and probes: GET, one response, close."""

    def __init__(self, source: Callable[[], Snapshot], ready: Callable[[], bool]) -> None:
        from resolver.ops import exporter, statuspage

        self.source = source
        self.registry = exporter.make_registry(source)
        self.ready = ready
        self._render = exporter.generate_latest
        self._page, self._status_json = statuspage.PAGE, statuspage.status_json
        # The status page allows only its own inline style and script; nothing here may be framed, sniffed or cached.
        self._security_headers = (f"Content-Security-Policy: {statuspage.CONTENT_SECURITY_POLICY}; "
                                  "frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\n"
                                  "Cache-Control: no-store\r\n")

    def _snapshot_or_none(self) -> Snapshot | None:
        try:
            return self.source()
        except RuntimeError:  # a supervisor none of whose workers has reported yet
            return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            status, ctype, body = self.route(head)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        header = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                  f"{self._security_headers}Connection: close\r\n\r\n").encode()
        try:
            writer.write(header + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def route(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET\n"
        path, _, query = parts[1].partition(b"?")
        if path == b"/metrics":
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", self._render(self.registry)
        if path == b"/":
            return "200 OK", "text/html; charset=utf-8", self._page
        if path == b"/status.json":
            return "200 OK", "application/json", self._status_json(status_of(self.source()))
        if path == b"/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == b"/readyz":
            ready = self.ready()
            status = "200 OK" if ready else "503 Service Unavailable"
            if b"verbose" not in query.split(b"&"):
                return status, "text/plain", b"ready\n" if ready else b"not ready\n"
            return status, "text/plain", readiness_text(readiness(ready, self._snapshot_or_none()), ready)
        return "404 Not Found", "text/plain", b"not found\n"
