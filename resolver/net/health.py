"""Each upstream as the pool sees it: its counters, the penalty after a failure, the round-trip time that sets its
retransmission timeout (RFC 6298), and whether it echoes the case of a question (DNS 0x20).

Kept apart from the walk of one question (``resolution``) and from the pool that owns the transports (``upstream``):
both read and update this, on the injected clock.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import LATENCY_BOUNDS
from resolver.core.wire import Query
from resolver.net.attempt import SWEEP_SECONDS, Attempt, Clock
from resolver.net.udp import RandomIds

log = logging.getLogger("resolver.net.upstream")

# An upstream that just failed is asked last for this long, so one dead server does not cost every query a timeout.
PENALTY_SECONDS: Final = 5.0
RETRY_RCODES: Final = (wire.SERVFAIL, wire.REFUSED, wire.NOTIMP)
# The retransmission timeout's bounds. The floor keeps a loopback or LAN upstream, whose round trip is far below it,
# from being asked twice whenever a busy host is slow to schedule the reply; the ceiling keeps a slow upstream
# retransmitted to a few times within a question's life.
MIN_RTO: Final = 0.1
MAX_RTO: Final = 2.0
# Before the first measured round trip (the start-up probe usually gives one): a guess that suits a distant upstream.
INITIAL_RTO: Final = 0.5
# Replies in a row with the question's case not echoed before an upstream is asked without 0x20. More than one, so
# that a spoofer who guessed an ID does not turn it off; any reply echoing a mixed case starts the count again.
CASE_STRIKES: Final = 3


@dataclass(slots=True)
class UpstreamStats:
    requests: int = 0  # questions sent, retransmissions included
    errors: int = 0
    timeouts: int = 0  # turns that ran out without a reply
    latency_sum: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    answered: int = 0
    down_until: float = 0.0  # clock time until which it is asked last
    last_ok: float = -1e9  # clock time of its last good reply (a query or a probe)
    ewma: float = 0.0  # smoothed answer time, for parallel_best
    srtt: float = -1.0  # smoothed UDP round trip (negative: none measured yet)
    rttvar: float = 0.0  # its mean deviation
    case_random: bool = True  # its questions go out with the name in random case (0x20)
    case_strikes: int = 0  # replies in a row that did not echo that case
    probe_silent: bool = False  # the last health probe got no reply (logged once when that starts)

    def answered_in(self, seconds: float) -> None:
        self.answered += 1
        self.latency_sum += seconds
        self.latency_buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def sampled(self, rtt: float) -> None:
        """One measured UDP round trip (RFC 6298 2.2-2.3). Every attempt has an ID of its own, so a reply tells
        which send it answers and no sample is ambiguous (Karn's problem does not arise)."""
        if self.srtt < 0.0:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def rto(self) -> float:
        """How long to wait for a UDP reply before asking again (RFC 6298 2.3, bounded by MIN_RTO and MAX_RTO)."""
        if self.srtt < 0.0:
            return INITIAL_RTO
        return min(MAX_RTO, max(MIN_RTO, self.srtt + max(SWEEP_SECONDS, 4 * self.rttvar)))


class Health:
    """Every upstream's ``UpstreamStats``, and the decisions made from them: the order a question walks
    (``order``), what a finished attempt says about its upstream (``record``), how long to wait before asking again
    (``rto``) and how to spell the question to it (``name_for``)."""

    __slots__ = ("_all_up_after", "by_name", "clock", "endpoints", "ids", "stats", "strategy")

    def __init__(self, endpoints: tuple[Endpoint, ...], strategy: str, clock: Clock, ids: RandomIds) -> None:
        self.endpoints = endpoints
        self.strategy = strategy
        self.clock = clock
        self.ids = ids
        self.stats = {e: UpstreamStats() for e in endpoints}  # the per-query path: no str() per query
        self.by_name = {str(e): s for e, s in self.stats.items()}  # the same objects, for metrics
        self._all_up_after = 0.0  # no upstream's penalty runs past this time

    def order(self, now: float) -> Sequence[Endpoint]:
        """Healthy upstreams first (in config order, shuffled, or fastest first, by strategy), then the rest."""
        if now >= self._all_up_after and self.strategy == "strict":
            return self.endpoints  # the usual case, with nothing to sort
        healthy = [e for e in self.endpoints if self.stats[e].down_until <= now]
        if self.strategy == "random":
            healthy = random.sample(healthy, len(healthy))
        elif self.strategy == "parallel_best":
            healthy.sort(key=lambda e: self.stats[e].ewma)
        return healthy + [e for e in self.endpoints if e not in healthy]

    def penalise(self, stats: UpstreamStats, now: float) -> None:
        stats.down_until = self._all_up_after = now + PENALTY_SECONDS

    def record(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> bool:
        """Count one attempt's reply or error and keep the upstream's health; whether ``reply`` is a usable answer.
        (A turn that runs out is counted by ``timed_out``, once, however many sends it made.)"""
        stats = self.stats[attempt.endpoint]
        now = self.clock.time()
        if reply is None:
            stats.errors += 1
            self.penalise(stats, now)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("upstream %s failed: %s", attempt.endpoint, error)
            return False
        elapsed = now - attempt.started
        stats.answered_in(elapsed)
        stats.ewma = elapsed if stats.ewma == 0.0 else 0.7 * stats.ewma + 0.3 * elapsed
        if not attempt.tcp and attempt.endpoint.transport == "udp":
            stats.sampled(elapsed)
        name = attempt.name
        if name is not attempt.query.qname and name != attempt.query.qname and reply[12 : 12 + len(name)] == name:
            stats.case_strikes = 0  # it echoed a mixed case: earlier misses were not its doing
        if reply[3] & 0x0F in RETRY_RCODES:
            stats.errors += 1
            return False
        stats.down_until = 0.0
        stats.last_ok = now
        return True

    def timed_out(self, endpoint: Endpoint, now: float) -> None:
        """``endpoint``'s turn for a question ran out: counted, and it is asked last for a while."""
        stats = self.stats[endpoint]
        stats.timeouts += 1
        self.penalise(stats, now)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("upstream %s: no reply in its turn", endpoint)

    def rto(self, endpoint: Endpoint) -> float:
        return self.stats[endpoint].rto()

    def name_for(self, endpoint: Endpoint, query: Query) -> bytes:
        """The question name as sent to a udp:// upstream: in random case (0x20) unless it was found not to echo it.
        (Over TCP a spoofer must take over the connection, so the lowercased name is enough there.)"""
        if self.stats[endpoint].case_random:
            return self.ids.mixed_case(query.qname)
        return query.qname

    def case_mismatch(self, endpoint: Endpoint) -> None:
        """A reply with the right ID and name echoed the name in another case than asked."""
        stats = self.stats[endpoint]
        stats.case_strikes += 1
        if stats.case_random and stats.case_strikes >= CASE_STRIKES:
            stats.case_random = False
            log.warning("upstream %s does not echo the case of the question name (DNS 0x20): its questions go out "
                        "in lowercase from now on", endpoint)

    def healthy(self, within: float) -> bool:
        """Whether any upstream gave a good reply in the last ``within`` seconds (for /readyz)."""
        now = self.clock.time()
        return any(now - s.last_ok <= within for s in self.stats.values())
