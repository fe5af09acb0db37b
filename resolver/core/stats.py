"""Plain counters the hot path bumps; the metrics collector reads them at scrape time.

Incrementing a list slot costs a few tens of nanoseconds, where a prometheus_client Counter takes a lock and
label lookup per call. Nothing here knows about Prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

TRANSPORTS: Final = ("udp", "tcp", "dot", "doh")
UDP: Final = 0
TCP: Final = 1
DOT: Final = 2  # DNS over TLS (RFC 7858)
DOH: Final = 3  # DNS over HTTPS (RFC 8484)
# error: we could not answer (SERVFAIL); invalid: the client's query was (FORMERR, NOTIMP, BADVERS) - kept apart
# so one broken app cannot page the on-call through the error-ratio alert.
OUTCOMES: Final = ("blocked", "forwarded", "cached", "error", "refused", "stale", "invalid")
# Indices into OUTCOMES. (Final constants: the compiled hot path reads them as numbers, not module lookups.)
BLOCKED: Final = 0
FORWARDED: Final = 1
CACHED: Final = 2
ERROR: Final = 3
REFUSED: Final = 4
STALE: Final = 5
INVALID: Final = 6
# A fixed set of query types as a label (plus "other"), so a client cannot grow the label set.
QTYPES: Final = ("A", "AAAA", "HTTPS", "SVCB", "CNAME", "MX", "TXT", "PTR", "SRV", "NS", "SOA", "ANY", "other")
QTYPE_INDEX: Final = {1: 0, 28: 1, 65: 2, 64: 3, 5: 4, 15: 5, 16: 6, 12: 7, 33: 8, 2: 9, 6: 10, 255: 11}
OTHER_QTYPE: Final = len(QTYPES) - 1
# (the per-query index, without two len() calls)
_NQTYPES: Final = len(QTYPES)
_NOUTCOMES: Final = len(OUTCOMES)
# Why a query was answered at once instead of going upstream (``Pipeline.on_shed``), in the order of the codes
# ``resolver.core.forwarding`` returns (SHED, SHED_CLIENT, SHED_HEAVY, SHED_PENDING): a bounded label, so the
# on-call can tell one client's flood (client_quota, heaviest_client) from a slow upstream (inflight_full).
SHED_REASONS: Final = ("inflight_full", "client_quota", "heaviest_client", "tcp_pending")
# Why a TCP, DoT or DoH connection was closed at accept (``net.limits.Gate``): outside access.allow, or the cap
# it reached (per address, per network, in total).
REJECT_REASONS: Final = ("access", "client", "network", "total")
# Seconds. Blocked and cached answers land in the first buckets, forwarded ones in the middle.
LATENCY_BOUNDS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                         5.0)


class Stats:
    __slots__ = ("acl_dropped", "blocked", "buckets", "exempted", "malformed", "monitored", "queries",
                 "rate_limited", "send_dropped", "shed", "shed_by", "sums", "upstream_mismatch")

    def __init__(self) -> None:
        self.queries = [0] * (len(TRANSPORTS) * len(QTYPES) * len(OUTCOMES))
        # keyed by (platform or list label, group)
        self.blocked: dict[tuple[str, str], int] = {}
        self.monitored: dict[tuple[str, str], int] = {}  # would-be blocks in monitor mode
        self.exempted: dict[tuple[str, str], int] = {}  # blocks lifted by an active exemption
        self.buckets = [[0] * (len(LATENCY_BOUNDS) + 1) for _ in OUTCOMES]
        self.sums = [0.0] * len(OUTCOMES)
        self.malformed = 0  # packets dropped without a reply
        self.upstream_mismatch = 0  # upstream replies dropped: wrong ID or question
        self.shed = 0  # queries answered at once because a bound was reached
        self.shed_by = [0] * len(SHED_REASONS)  # the same, by reason
        self.acl_dropped = 0  # packets from clients outside the access list, dropped unanswered
        self.rate_limited = 0  # queries over a client's rate limit (dropped or truncated)
        self.send_dropped = 0  # UDP answers the kernel refused (send buffer full, address unusable)

    def observe(self, transport: int, qtype: int, outcome: int, seconds: float) -> None:
        self.queries[(transport * _NQTYPES + qtype) * _NOUTCOMES + outcome] += 1
        self.buckets[outcome][bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.sums[outcome] += seconds

    def count(self, transport: int, outcome: int, qtype: int | None = None) -> int:
        qtypes = range(len(QTYPES)) if qtype is None else (qtype,)
        return sum(self.queries[(transport * len(QTYPES) + q) * len(OUTCOMES) + outcome] for q in qtypes)
