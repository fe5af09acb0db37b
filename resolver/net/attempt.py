"""What the upstream pool and its transports share: one question to one upstream (``Attempt``), the interface a
transport implements to carry it (``Transport``), the clock the pool runs on (``Clock``), and the sweep that times
out the attempts waiting for a UDP reply (``Sweep``).

Nothing here does I/O or reads the time by itself: the pool's failover walk and its timeouts run the same on the
event loop with a UDP socket as on a fake clock with a fake transport, which is how the unit tests drive them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol

from resolver.config.model import Endpoint
from resolver.core.wire import Query
from resolver.errors import UpstreamTimeout

SWEEP_SECONDS: Final = 0.02

Done = Callable[["Attempt", bytes | None, BaseException | None], None]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the pool needs of the event loop (which is one): its time, and a callback after a delay."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer: ...


class Attempt:
    """One question to one upstream, reported once to ``done`` as (reply, None) or (None, error).

    The transport carrying it reports through ``replied`` (a reply that answers it) or ``failed``. An attempt
    waiting in a ``Waiting`` table (``table``, under ID ``qid``) is timed out by the ``Sweep`` through ``expire``
    once the clock passes ``expires``. ``timeout`` is what the pool gave it, and a transport that asks again
    by other means (TCP after a truncated UDP reply) sets it anew.
    """

    __slots__ = ("deadline", "done", "endpoint", "expires", "qid", "query", "started", "table", "timeout")

    def __init__(self, endpoint: Endpoint, query: Query, now: float, timeout: float, deadline: float,
                 done: Done) -> None:
        self.endpoint = endpoint
        self.query = query
        self.started = now
        self.timeout = timeout
        self.expires = now + timeout
        self.deadline = deadline  # the question's own: past it nobody waits for an answer
        self.done = done
        self.table: Waiting | None = None
        self.qid = 0

    def replied(self, reply: bytes) -> None:
        self.table = None
        self.done(self, reply, None)

    def failed(self, error: BaseException) -> None:
        self.table = None
        self.done(self, None, error)

    def expire(self) -> None:
        table = self.table
        if table is not None:
            self.table = None
            table.forget(self)
            self.done(self, None, UpstreamTimeout(f"{self.endpoint}: no reply within {self.timeout:.2f}s"))


class Transport(Protocol):
    """Carries attempts to their upstreams (UDP sockets, TCP or TLS connections; a fake in tests).

    ``send`` must not report from inside the call (the caller is still setting up); later it reports each attempt
    once, on the attempt: ``replied``, ``failed``, or (for an attempt it leaves in a ``Waiting`` table the sweep
    walks) nothing, and the sweep expires it.
    """

    def send(self, attempt: Attempt) -> None: ...

    def close(self) -> None: ...


class Waiting(Protocol):
    """Attempts waiting for replies, by the ID they went out with (a UDP socket's questions in flight)."""

    @property
    def pending(self) -> Mapping[int, Attempt]: ...

    def forget(self, attempt: Attempt) -> None:
        """``attempt`` timed out: its ID is no longer awaited here."""


class Sweep:
    """Times out the attempts still waiting when their time is up: one timer every ``SWEEP_SECONDS`` while any
    waits, walking every table in ``tables``, instead of a timer per question on the per-query path. A timeout
    fires up to ``SWEEP_SECONDS`` late, which nobody can tell from a timeout of a second or more.

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
