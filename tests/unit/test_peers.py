"""Two workers' routes in one event loop, joined by a real socket pair, each with a recording upstream: a miss on
the worker that does not own the name goes to the owner, which asks its upstream once for both and keeps the
answer; a dead owner is not waited on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from resolver.core import wire
from resolver.core.cache import Cache, CacheLimits
from resolver.core.pipeline import Pipeline
from resolver.core.stats import TCP, Stats
from resolver.net.forwarder import Forwarder
from resolver.net.peers import Route
from resolver.net.steer import owner
from tests.unit.test_core import Clock, make_query, policy, upstream_reply

Done = Callable[[wire.Query, bytes | None], None]


class Upstream:
    def __init__(self) -> None:
        self.asked: list[tuple[wire.Query, Done]] = []

    def resolve(self, query: wire.Query, done: Done) -> None:
        self.asked.append((query, done))

    def answer_all(self) -> None:
        asked, self.asked = self.asked, []
        for query, done in asked:
            done(query, upstream_reply(wire.upstream_query(query, 9), answers=[("A", 300, "192.0.2.9")], qid=9))


class Worker:
    def __init__(self, index: int, pair: socket.socket) -> None:
        self.pipeline = Pipeline(policy(), Cache(CacheLimits()), Stats(), Clock(), lambda: 1e9)
        self.upstream = Upstream()
        self.route = Route(self.upstream, self.pipeline, index, 2, {1 - index: pair}, 4.0)  # type: ignore[arg-type]
        self.forwarder = Forwarder(self.pipeline, self.route)
        self.answers: list[bytes] = []

    def ask(self, name: str) -> None:
        result = self.pipeline.on_query(make_query(name), TCP, "10.0.0.1")
        if isinstance(result, wire.Query):
            self.forwarder.forward(result, self.answers.append)
        elif isinstance(result, bytes):
            self.answers.append(result)


def _name_owned_by(index: int) -> str:
    return next(n for n in (f"n{i}.example.test" for i in range(100))
                if owner(wire.encode_name(n), 2) == index)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_a_miss_goes_to_the_owner_which_asks_its_upstream_once_for_everyone() -> None:
    async def scenario() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        zero, one = Worker(0, a), Worker(1, b)
        name = _name_owned_by(1)
        zero.ask(name)
        one.ask(name)
        await _settle()
        assert zero.upstream.asked == [] and len(one.upstream.asked) == 1  # the owner asks, once
        one.upstream.answer_all()
        await _settle()
        assert len(zero.answers) == len(one.answers) == 1
        assert zero.answers[0][3] & 0x0F == wire.NOERROR
        zero.ask(name)  # cached on both sides now: nobody asks anyone
        await _settle()
        assert zero.upstream.asked == [] and one.upstream.asked == [] and len(zero.answers) == 2

    asyncio.run(scenario())


def test_the_owner_answers_a_peer_from_its_cache() -> None:
    async def scenario() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        zero, one = Worker(0, a), Worker(1, b)
        name = _name_owned_by(0)
        zero.ask(name)
        zero.upstream.answer_all()
        one.ask(name)
        await _settle()
        assert zero.upstream.asked == [] and one.upstream.asked == []
        assert len(one.answers) == 1 and zero.route.served == 1

    asyncio.run(scenario())


def test_a_dead_owners_names_go_upstream_from_the_asker() -> None:
    async def scenario() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        zero = Worker(0, a)
        name = _name_owned_by(1)
        zero.ask(name)  # the owner never reads (it is dead): the question waits ...
        await _settle()
        assert zero.upstream.asked == []
        zero.route.peer_state(1, False)  # ... until the supervisor says so
        assert len(zero.upstream.asked) == 1
        zero.upstream.answer_all()
        assert len(zero.answers) == 1
        other = next(n for n in (f"x{i}.example.test" for i in range(100)) if owner(wire.encode_name(n), 2) == 1)
        zero.ask(other)  # while it is down, its names go upstream at once
        assert len(zero.upstream.asked) == 1
        zero.route.peer_state(1, True)
        zero.ask(name)
        assert len(zero.answers) == 2  # cached meanwhile: answered at once
        b.close()

    asyncio.run(scenario())
