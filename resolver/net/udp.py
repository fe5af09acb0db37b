"""Questions to the upstreams over UDP, on short-lived connected sockets (``Channel``), with random IDs.

Each socket is connected to one upstream (the kernel drops datagrams from any other address) and carries a few
dozen questions for at most a second before a new one takes a fresh random source port; with a random ID and the
question checked on the reply, a spoofed answer has to guess about 32 bits and the name. Replies that do not match
are dropped and counted, and the question keeps waiting until its timeout, so a forged packet cannot cut a real
answer short.
"""

from __future__ import annotations

import _socket
import asyncio
import os
import socket
from collections.abc import Container
from typing import Final

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import Stats
from resolver.errors import UpstreamError
from resolver.net.attempt import Attempt, Sweep, Transport


class RandomIds:
    """Unpredictable 16-bit query IDs from the OS's CSPRNG, read 4 KiB at a time instead of a syscall per ID."""

    __slots__ = ("_at", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def next(self) -> int:
        at = self._at
        if at >= len(self._buffer):
            self._buffer = os.urandom(4096)
            at = 0
        self._at = at + 2
        return self._buffer[at] << 8 | self._buffer[at + 1]

    def unused(self, taken: Container[int]) -> int:
        """A random ID not in ``taken`` (the IDs in flight where it will be sent)."""
        qid = self.next()
        while qid in taken:
            qid = self.next()
        return qid


class UdpTransport:
    """The ``Transport`` for udp:// upstreams: each question goes out on its upstream's current ``Channel``, and
    waits in that channel's table for the sweep to time it out. A truncated reply is asked again on ``fallback``
    (the TCP transport), since the whole answer only fits there."""

    __slots__ = ("channels", "fallback", "ids", "loop", "open", "stats", "sweep")

    def __init__(self, loop: asyncio.AbstractEventLoop, sweep: Sweep, ids: RandomIds, stats: Stats,
                 fallback: Transport) -> None:
        self.loop = loop
        self.sweep = sweep
        self.ids = ids
        self.stats = stats
        self.fallback = fallback
        self.channels: dict[Endpoint, Channel] = {}  # the socket new questions to each upstream go out on
        self.open: set[Channel] = set()  # every socket still open: the current ones, and retired ones

    def send(self, attempt: Attempt) -> None:
        endpoint = attempt.endpoint
        try:
            channel = self._channel(endpoint, attempt.started)
        except OSError as err:  # out of file descriptors, say: this question fails, the server goes on
            self.loop.call_soon(attempt.failed, UpstreamError(f"{endpoint}: {err}"))  # not from inside the caller
            return
        try:
            channel.send(attempt)
        except OSError as err:  # an ICMP error from an earlier question, say: the socket's others share its fate
            error = UpstreamError(f"{endpoint}: {err}")
            self.loop.call_soon(channel.fail, error)
            self.loop.call_soon(attempt.failed, error)

    def _channel(self, endpoint: Endpoint, now: float) -> Channel:
        """The socket for the next question to ``endpoint``: a new one (a new random port) once the current one
        has had its share of questions or time."""
        channel = self.channels.get(endpoint)
        if channel is not None and channel.uses > 0 and now < channel.retire_at:
            return channel
        fresh = self.channels[endpoint] = Channel(self, endpoint, now)
        if channel is not None and not channel.pending:
            channel.close()
        return fresh

    def truncated(self, attempt: Attempt) -> None:
        """``attempt`` got a reply with TC set: ask again over TCP with the time the question has left."""
        attempt.table = None
        attempt.timeout = max(0.05, attempt.deadline - self.loop.time())
        self.fallback.send(attempt)

    def close(self) -> None:
        """Close every socket (at shutdown: anything still waiting was given its drain time)."""
        for channel in list(self.open):
            channel.fail(UpstreamError(f"{channel.endpoint}: shutting down"))


class Channel:
    """A connected UDP socket to one upstream, shared by at most ``USES`` questions in turn, with its reader
    registered once: a cache miss costs a send and a share of one wake-up, not a socket, a connect, two epoll
    changes and a close.

    Spoofing: a forged reply must still hit an open port and an ID in flight there, and name the question. The
    odds per forged packet are the same as with a socket per question (questions in flight over open ports × IDs,
    whichever way they are spread). What a shared socket gives away is time: a port that stays open could be found
    by a side channel (SAD DNS) and then flooded. So no port serves more than ``USES`` questions or is asked for
    more than ``SECONDS``; then a new socket takes a fresh random port from the kernel, and the old one closes
    when its last question is answered or times out."""

    USES: Final = 64
    SECONDS: Final = 1.0

    __slots__ = ("endpoint", "fd", "pending", "retire_at", "sock", "sweep", "transport", "uses")

    def __init__(self, transport: UdpTransport, endpoint: Endpoint, now: float) -> None:
        # The C socket type, created non-blocking: the Python wrapper and a separate ioctl cost on every miss.
        family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
        sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect((endpoint.host, endpoint.port))  # the kernel drops datagrams from any other address
        except OSError:
            sock.close()
            raise
        self.transport = transport
        self.sweep = transport.sweep
        self.endpoint = endpoint
        self.sock: _socket.socket | None = sock
        self.fd = sock.fileno()
        self.pending: dict[int, Attempt] = {}
        self.uses = self.USES
        self.retire_at = now + self.SECONDS
        transport.loop.add_reader(self.fd, self._readable)
        transport.open.add(self)
        self.sweep.tables.add(self)

    def send(self, attempt: Attempt) -> None:
        qid = self.transport.ids.unused(self.pending)
        assert self.sock is not None
        self.sock.send(wire.upstream_query(attempt.query, qid))
        self.uses -= 1
        self.pending[qid] = attempt
        attempt.qid = qid
        attempt.table = self
        sweep = self.sweep
        if sweep.timer is None:
            sweep.arm()

    def _readable(self) -> None:
        pending = self.pending
        while (sock := self.sock) is not None:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as err:  # e.g. ICMP port unreachable: nobody listens there, so fail them all now
                self.fail(UpstreamError(f"{self.endpoint}: {err}"))
                return
            attempt = pending.get(data[0] << 8 | data[1]) if len(data) >= 12 else None
            if attempt is None or not wire.is_response(data, attempt.qid, attempt.query):
                self.transport.stats.upstream_mismatch += 1  # forged or stale: keep listening for the real one
                continue
            self._release(attempt.qid)
            if data[2] & 0x02:  # TC
                self.transport.truncated(attempt)
            else:
                attempt.replied(data)

    def retired(self) -> bool:
        """Whether new questions go out on another socket now."""
        return self.uses <= 0 or self.transport.channels.get(self.endpoint) is not self

    def forget(self, attempt: Attempt) -> None:
        if self.pending.get(attempt.qid) is attempt:
            self._release(attempt.qid)

    def _release(self, qid: int) -> None:
        del self.pending[qid]
        if not self.pending and self.retired():
            self.close()  # nothing left to wait for on a socket that takes no new questions

    def fail(self, error: BaseException) -> None:
        waiting = list(self.pending.values())
        self.pending.clear()
        self.close()
        for attempt in waiting:
            attempt.failed(error)

    def close(self) -> None:
        transport = self.transport
        if transport.channels.get(self.endpoint) is self:
            del transport.channels[self.endpoint]
        if self.sock is not None:
            transport.open.discard(self)
            self.sweep.tables.discard(self)
            transport.loop.remove_reader(self.fd)
            self.sock.close()
            self.sock = None
