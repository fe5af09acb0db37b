"""ops/metrics.py's readiness: /readyz is "listening with a policy loaded", and /readyz?verbose lists every check,
the upstreams as information only. Routed without a socket."""

from __future__ import annotations

from resolver.ops.metrics import UPSTREAM_RECENT, MetricsServer, readiness
from resolver.ops.snapshot import Snapshot, UpstreamSnap


def snap(**ages: float) -> Snapshot:
    return Snapshot(queries=[], buckets=[], sums=[], blocked={}, monitored={}, exempted={}, counters={},
                    cache_entries=0, upstreams={name: UpstreamSnap(answered_ago=ago) for name, ago in ages.items()},
                    policy_version="abc123", platforms=[], exemptions=[], loaded_at=1.0, ready=True, started=1.0)


def test_upstreams_are_listed_but_do_not_decide() -> None:
    checks = readiness(True, snap(b=UPSTREAM_RECENT + 1, a=2.0))
    assert checks == [
        (True, "listening ok"),
        (True, "policy ok: version abc123"),
        (True, "upstream a up: last good reply 2s ago (information)"),
        (False, f"upstream b down: no good reply in the last {UPSTREAM_RECENT:.0f}s (information, not part of "
                "readiness)"),
    ]


def test_not_listening_or_no_policy_yet() -> None:
    assert readiness(False, None) == [(False, "listening failed: not listening yet, or shutting down"),
                                      (False, "policy failed: none loaded yet")]


def route(server: MetricsServer, target: str) -> tuple[str, bytes]:
    status, _, body = server.route(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return status, body


def test_readyz_with_every_upstream_down_is_ready() -> None:
    server = MetricsServer(lambda: snap(u=float("inf")), lambda: True)
    assert route(server, "/readyz") == ("200 OK", b"ready\n")
    status, body = route(server, "/readyz?verbose")
    assert status == "200 OK"
    assert body.decode().splitlines() == [
        "[+]listening ok", "[+]policy ok: version abc123",
        f"[-]upstream u down: no good reply in the last {UPSTREAM_RECENT:.0f}s (information, not part of readiness)",
        "readyz check passed"]


def test_readyz_of_a_supervisor_before_any_worker_reported() -> None:
    def nothing_yet() -> Snapshot:
        raise RuntimeError("no worker has reported yet")

    server = MetricsServer(nothing_yet, lambda: False)
    assert route(server, "/readyz") == ("503 Service Unavailable", b"not ready\n")
    status, body = route(server, "/readyz?verbose")
    assert status == "503 Service Unavailable" and body.decode().splitlines()[-1] == "readyz check failed"
