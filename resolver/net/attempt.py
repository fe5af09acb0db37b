"""What the upstream pool and its transports share: one question to one upstream (``Attempt``), who hears how it
ends (``Owner``), the interface a transport implements to carry it (``Transport``), the clock the pool runs on
(``Clock``), and the sweep that times out the attempts waiting for a UDP reply (``Sweep``).

Nothing here does I/O or reads the time by itself: the pool's failover walk, its retransmissions and its timeouts run
the same on the event loop with a UDP socket as on a fake clock with a fake transport, which is how the unit tests
drive them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol

from resolver.config.model import Endpoint
from resolver.core.wire import Query
from resolver.errors import UpstreamTimeout

SWEEP_SECONDS: Final = 0.02


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the pool needs of the event loop (which is one): its time, and a callback after a delay."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer: ...


class Owner(Protocol):
    """Who sent an attempt, and hears how it ends: the question's walk down the upstreams, or a health probe."""

    def finished(self, attempt: Attempt, reply: bytes | None, error: BaseException | None) -> None:
        """The attempt is over: a reply that answers it, or an error (a timeout at the question's deadline)."""

    def timed_out(self, attempt: Attempt) -> None:
        """No reply by ``expires``, which was before the question's deadline: the attempt keeps waiting for a late
        reply until the deadline or until the owner closes it, and the owner may ask again meanwhile."""

    def near_miss(self, attempt: Attempt, case_only: bool) -> None:
        """A reply meant for this attempt's question failed validation (ID, question, or only the 0x20 case): a
        spoofer at work, or a broken upstream. The attempt keeps waiting."""


class Attempt:
    """One question to one upstream, reported once to its ``owner`` as finished (reply or error).

    The transport carrying it reports through ``replied`` (a reply that answers it), ``failed`` or
    ``mismatched``. ``name`` is the question name as sent: the lowercased name, or the same letters in random
    case (DNS 0x20), which a UDP reply must echo exactly. An attempt waiting in a ``Waiting`` table (``table``,
    under ID ``qid``) is woken by the ``Sweep`` through ``expire`` once the clock passes ``expires``: before the
    question's ``deadline`` that is a retransmission timeout (the owner hears ``timed_out`` and the attempt keeps
    listening, since a late reply to it is as good as any), at the deadline it is the end. ``timeout`` is how
    long this upstream's turn lasts from ``started``; a transport that asks again by other means (TCP after a
    truncated UDP reply) sets it anew, and ``tcp``. ``after`` is the attempt of the same question this one follows, so a
    transport can tell which sockets the question already used.
    """

    __slots__ = ("after", "deadline", "endpoint", "expires", "name", "owner", "qid", "query", "rto", "started",
                 "table", "tcp", "timeout")

    def __init__(self, endpoint: Endpoint, query: Query, now: float, timeout: float, deadline: float, owner: Owner,
                 rto: float = 0.0, name: bytes | None = None, after: Attempt | None = None) -> None:
        self.endpoint = endpoint
        self.query = query
        self.name = query.qname if name is None else name
        self.started = now
        self.timeout = timeout
        self.rto = rto  # 0: no retransmission, wait the whole timeout
        self.expires = min(now + (min(rto, timeout) if rto > 0.0 else timeout), deadline)
        self.deadline = deadline  # the question's own: past it nobody waits for an answer
        self.owner = owner
        self.after = after
        self.table: Waiting | None = None
        self.qid = 0
        self.tcp = False  # a udp:// upstream asked over TCP (a truncated reply, or near misses): no UDP round trip

    def replied(self, reply: bytes) -> None:
        self.table = None
        self.owner.finished(self, reply, None)

    def failed(self, error: BaseException) -> None:
        self.table = None
        self.owner.finished(self, None, error)

    def mismatched(self, case_only: bool) -> None:
        self.owner.near_miss(self, case_only)

    def expire(self) -> None:
        table = self.table
        if table is None:
            return
        if self.expires < self.deadline:
            self.expires = self.deadline  # still listening; the owner closes it sooner if it moves on
            self.owner.timed_out(self)
            return
        self.table = None
        table.forget(self)
        self.owner.finished(self, None, UpstreamTimeout(f"{self.endpoint}: no reply within {self.timeout:.2f}s"))

    def close(self) -> None:
        """Stop waiting for a reply (the question was answered, or moved on): the ID is free again, and a reply
        still on its way is dropped as stale."""
        table = self.table
        if table is not None:
            self.table = None
            table.forget(self)


class Transport(Protocol):
    """Carries attempts to their upstreams (UDP sockets, TCP or TLS connections; a fake in tests).

    ``send`` must not report from inside the call (the caller is still setting up); later it reports each attempt
    once, on the attempt: ``replied``, ``failed``, or (for an attempt it leaves in a ``Waiting`` table the sweep
    walks) nothing, and the sweep expires it. Replies that fail validation but name the attempt's question are
    reported on it as ``mismatched``, any number of times.
    """

    def send(self, attempt: Attempt) -> None: ...

    def close(self) -> None: ...


class Waiting(Protocol):
    """Attempts waiting for replies, by the ID they went out with (a UDP socket's questions in flight)."""

    @property
    def pending(self) -> Mapping[int, Attempt]: ...

    def forget(self, attempt: Attempt) -> None:
        """``attempt`` is over (timed out, or closed by its owner): its ID is no longer awaited here."""


class Sweep:
    """Times out the attempts still waiting when their time is up: one timer every ``SWEEP_SECONDS`` while any
    waits, walking every table in ``tables``, instead of a timer per question on the per-query path. A timeout
    fires up to ``SWEEP_SECONDS`` late: small next to the floor of a retransmission timeout, and nothing next to
    a question's deadline.

    A table puts itself in ``tables`` while it may hold attempts, and calls ``arm`` when one starts waiting and
    ``timer`` is None (checked there, so the per-query path makes no call while the sweep runs anyway).
    """

    __slots__ = ("clock", "tables", "timer")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.tables: set[Waiting] = set()
        self.timer: Timer | None = None

    def arm(self) -> None:
        self.timer = self.clock.call_later(SWEEP_SECONDS, self._run)

    def _run(self) -> None:
        now = self.clock.time()
        for table in list(self.tables):
            for attempt in [a for a in table.pending.values() if a.expires <= now]:
                attempt.expire()
        self.timer = None
        if any(table.pending for table in self.tables):
            self.arm()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
