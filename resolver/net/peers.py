"""With ``--workers N``, a cache miss goes to the worker that owns its name, which asks the upstream once for all.

``Route`` stands where the upstream pool stands for the Forwarder (it has the pool's ``resolve``). A question
whose name this worker owns (``net/steer.owner``) goes upstream from here, and identical questions from the
other workers join it (``pending``); any other goes to its owner over a datagram socket pair the supervisor
made, and comes back as the owner's cached answer or the upstream's reply. The asking worker's pipeline then
caches and renders it exactly as an upstream reply: its policy, counters, query log and CNAME check are its own,
and the owner only lends its cache and its place in the queue for the upstream.

UDP queries reach their owner directly (the kernel steers them, ``net/steer.py``), so this hop is for TCP, DoT
and DoH, for prefetches of entries a worker holds for a stream client, and for every miss if steering could not
be set up. A worker's questions in flight are bounded by its in-flight table, so what an owner holds for its
peers is bounded by the number of workers times that table.

A dead owner, or one that has stopped reporting to the supervisor (it says so, ``down``), is not asked: its
questions, those already asked included, go upstream from here until it is back. A question an owner never
answers (it died with it) is given up after the query deadline, as an upstream's.

Messages, one per datagram: a question is ``Q`` + request id + refresh flag + the query as we would send it
upstream; an answer is ``A`` + request id + the reply, or nothing when the owner got none.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Mapping

from resolver.core import cache as cache_mod
from resolver.core import wire
from resolver.core.pipeline import Pipeline
from resolver.core.wire import Query
from resolver.errors import WireFormatError
from resolver.net.steer import owner
from resolver.net.upstream import Answered, UpstreamPool

log = logging.getLogger("resolver.net.peers")

_HEAD = struct.Struct("!cIB")  # kind, request id, refresh
_QUESTION = b"Q"
_ANSWER = b"A"
PEER_BUFFER = 4 << 20  # bytes a socket pair may hold unread: a burst of misses must not fail a send
MAX_MESSAGE = 65535 + _HEAD.size


class Route:
    """Where this worker's cache misses go: upstream for the names it owns, to their owner for the rest."""

    def __init__(self, pool: UpstreamPool, pipeline: Pipeline, index: int, count: int,
                 peers: Mapping[int, socket.socket], deadline: float) -> None:
        self.pool = pool
        self.pipeline = pipeline
        self.index = index
        self.count = count
        self.peers = dict(peers)
        self.down: set[int] = set()
        self.deadline = deadline
        # Questions this worker has upstream: key -> everyone waiting (query, callback, asked by a peer).
        self.pending: dict[bytes, list[tuple[Query, Answered, bool]]] = {}
        # Our questions at their owners: request id -> (owner, query, callback, give-up timer).
        self.asked: dict[int, tuple[int, Query, Answered, asyncio.TimerHandle]] = {}
        self._ids = itertools.count(1)
        self.loop = asyncio.get_running_loop()
        self.served = 0  # peers' questions answered from our cache
        for peer, sock in self.peers.items():
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PEER_BUFFER)
            self.loop.add_reader(sock.fileno(), self._readable, peer, sock)

    # -- the Forwarder's side -------------------------------------------------------------------------------------

    def resolve(self, query: Query, done: Answered) -> None:
        """As ``UpstreamPool.resolve``: a reply matching ``query`` (or None) to ``done``, from wherever is best."""
        peer = owner(query.qname, self.count)
        if peer != self.index and peer in self.peers and peer not in self.down:
            refresh = query.received == 0.0  # a prefetch: the Pipeline stamps only the questions clients wait for
            if self._ask(peer, query, done, refresh):
                return
        self._upstream(query, done, False)

    def _upstream(self, query: Query, done: Answered, for_peer: bool) -> None:
        key = query.cache_key
        waiters = self.pending.get(key)
        if waiters is not None:
            waiters.append((query, done, for_peer))
            return
        self.pending[key] = [(query, done, for_peer)]
        self.pool.resolve(query, self._answered)

    def _answered(self, query: Query, reply: bytes | None) -> None:
        waiters = self.pending.pop(query.cache_key, [])
        if reply is not None and all(for_peer for _, _, for_peer in waiters):
            self.pipeline.store(query, reply)  # only peers asked: our cache must still hold what we own
        for waiting, done, _ in waiters:
            try:
                done(waiting, reply)
            except Exception:  # a bug: one bad waiter must not take the others down with it
                log.exception("internal error answering %s", waiting.name)

    def _ask(self, peer: int, query: Query, done: Answered, refresh: bool) -> bool:
        rid = next(self._ids) & 0xFFFFFFFF
        message = _HEAD.pack(_QUESTION, rid, 1 if refresh else 0) + wire.upstream_query(query, query.id)
        try:
            self.peers[peer].send(message)
        except OSError:  # its buffer is full (it is stuck or gone): ask the upstream ourselves
            return False
        timer = self.loop.call_later(self.deadline, self._gave_up, rid)
        self.asked[rid] = (peer, query, done, timer)
        return True

    def _gave_up(self, rid: int) -> None:
        asked = self.asked.pop(rid, None)
        if asked is not None:
            asked[2](asked[1], None)

    def peer_down(self, peer: int) -> None:
        """The supervisor says ``peer`` died: what we asked it goes upstream from here, and so do its names until
        it is back."""
        self.down.add(peer)
        for rid, (at, query, done, timer) in list(self.asked.items()):
            if at == peer:
                del self.asked[rid]
                timer.cancel()
                self._upstream(query, done, False)

    def peer_up(self, peer: int) -> None:
        self.down.discard(peer)

    def peer_state(self, peer: int, up: bool) -> None:
        if up:
            self.peer_up(peer)
        else:
            self.peer_down(peer)

    # -- the owner's side -----------------------------------------------------------------------------------------

    def _readable(self, peer: int, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                message = sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(message) < _HEAD.size:
                continue
            kind, rid, refresh = _HEAD.unpack_from(message)
            body = message[_HEAD.size :]
            if kind == _QUESTION:
                self._question(sock, rid, bool(refresh), body)
            elif kind == _ANSWER:
                self._reply(rid, body or None)

    def _question(self, sock: socket.socket, rid: int, refresh: bool, packet: bytes) -> None:
        try:
            query = wire.parse_query(packet)
        except WireFormatError:
            _send(sock, rid, None)
            return
        if not refresh:
            now = self.pipeline.clock()
            entry = self.pipeline.cache.get(query.cache_key, now)
            if entry is not None:
                self.served += 1
                _send(sock, rid, cache_mod.render(entry, query, now))
                return
        self._upstream(query, _answer_to(sock, rid, query.id), True)

    def _reply(self, rid: int, reply: bytes | None) -> None:
        asked = self.asked.pop(rid, None)
        if asked is None:  # given up already, or meant for the worker that had this slot before a restart
            return
        _, query, done, timer = asked
        timer.cancel()
        if reply is not None and not wire.is_response(reply, query.id, query):
            reply = None
        done(query, reply)

    def close(self) -> None:
        for sock in self.peers.values():
            self.loop.remove_reader(sock.fileno())
        for _, _, _, timer in self.asked.values():
            timer.cancel()


def _answer_to(sock: socket.socket, rid: int, qid: int) -> Answered:
    def answer(query: Query, reply: bytes | None) -> None:
        # The upstream's reply carries the ID we gave the upstream; the asker checks its own.
        _send(sock, rid, None if reply is None else qid.to_bytes(2, "big") + reply[2:])

    return answer


def _send(sock: socket.socket, rid: int, reply: bytes | None) -> None:
    with contextlib.suppress(OSError):  # the asker is gone or stuck: it gives up on its own timer
        sock.send(_HEAD.pack(_ANSWER, rid, 0) + (reply or b""))


def mesh(count: int) -> dict[tuple[int, int], tuple[socket.socket, socket.socket]]:
    """One datagram socket pair per two workers (the supervisor's, held for its life): (i, j) -> (i's, j's)."""
    pairs: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
    for i in range(count):
        for j in range(i + 1, count):
            pairs[i, j] = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return pairs

