"""The glue between the pipeline's forwarding decisions and the upstream pool: it does what the core decided.

The pipeline returns a Query to forward (or a Prefetch ticket); the in-flight table in the core says whether
to send it upstream, let it wait on an identical question, or shed it; the answer comes back through the pool
and each waiter gets the pipeline's rendering of it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from resolver.core.forwarding import JOINED, START, Respond
from resolver.core.pipeline import Pipeline
from resolver.core.wire import Query
from resolver.net.upstream import Answered

log = logging.getLogger("resolver.forward")


class Upstreams(Protocol):
    """Where a question goes: the upstream pool, or with --workers the route to its name's owner (net/peers.py)."""

    def resolve(self, query: Query, done: Answered) -> None: ...


class Forwarder:
    __slots__ = ("inflight", "pipeline", "upstreams")

    def __init__(self, pipeline: Pipeline, upstreams: Upstreams) -> None:
        self.pipeline = pipeline
        self.inflight = pipeline.inflight
        self.upstreams = upstreams

    def forward(self, query: Query, respond: Respond) -> None:
        """A cache miss the pipeline returned; its answer goes to ``respond`` (now, if it is shed)."""
        admitted = self.inflight.admit(query, respond)
        if admitted == START:
            self.upstreams.resolve(query, self._answered)
        elif admitted != JOINED:  # a shed code, which says why
            respond(self.pipeline.on_shed(query, admitted))

    def prefetch(self, query: Query) -> None:
        """A Prefetch ticket's question, already admitted by the pipeline: only the sending is left."""
        self.upstreams.resolve(query, self._answered)

    def _answered(self, query: Query, reply: bytes | None) -> None:
        for waiting, respond in self.inflight.settle(query):
            try:
                if respond is None:
                    self.pipeline.store(waiting, reply)
                else:
                    respond(self.pipeline.on_reply(waiting, reply))
            except Exception:  # a bug: one bad reply must not take the other waiters down with it
                log.exception("internal error answering %s", waiting.name)
