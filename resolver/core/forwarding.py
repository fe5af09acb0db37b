"""What to do with a cache miss: send it upstream, let it wait on an identical question already there, or shed it.

Pure bookkeeping, no I/O: the pipeline admits misses here and the transport glue (``resolver.net.forwarder``)
does what the answer says. Keyed by the cache key, so identical questions (same name, type, class and DO bit)
share one upstream query and one answer; bounded, so a flood of unique names cannot queue without limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from resolver.core.wire import Query

START: Final = 0  # the first of its kind: the caller sends it upstream
JOINED: Final = 1  # an identical question is upstream already: its answer serves this one too
SHED: Final = 2  # the table is full: answer now (stale or SERVFAIL) rather than queue without bound

# Distinct questions that may wait on upstreams at once.
MAX_INFLIGHT: Final = 10_000

Respond = Callable[[bytes], None]


class Prefetch:
    """A cached answer to send now, and a popular entry to refresh upstream in the background (the ticket's
    question is already admitted: the glue only sends it)."""

    __slots__ = ("answer", "query")

    def __init__(self, answer: bytes, query: Query) -> None:
        self.answer = answer
        self.query = query


class Inflight:
    """The questions waiting on upstreams, each with who waits for its answer (None: a background refresh)."""

    __slots__ = ("limit", "waiting")

    def __init__(self, limit: int = MAX_INFLIGHT) -> None:
        self.limit = limit
        self.waiting: dict[bytes, list[tuple[Query, Respond | None]]] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    def admit(self, query: Query, respond: Respond) -> int:
        """START, JOINED or SHED for a cache miss whose answer goes to ``respond``."""
        key = query.cache_key
        waiters = self.waiting.get(key)
        if waiters is not None:
            waiters.append((query, respond))
            return JOINED
        if len(self.waiting) >= self.limit:
            return SHED
        self.waiting[key] = [(query, respond)]
        return START

    def admit_prefetch(self, query: Query) -> bool:
        """Whether to refresh ``query``'s entry now. Refreshes are optional work: they never join a question in
        flight (its answer refreshes the entry anyway) and never take the last half of the table, which is kept
        for the clients actually waiting."""
        key = query.cache_key
        if key in self.waiting or len(self.waiting) >= self.limit // 2:
            return False
        self.waiting[key] = [(query, None)]
        return True

    def settle(self, query: Query) -> list[tuple[Query, Respond | None]]:
        """Everyone waiting on ``query``'s answer, taken out of the table."""
        return self.waiting.pop(query.cache_key, [])
