"""Questions to the upstreams over UDP, on short-lived connected sockets (``Channel``), with random IDs, random
source ports and (DNS 0x20) a random case of the question name.

Each socket is bound to a port drawn uniformly from 1024-65535 (not the kernel's narrower ephemeral range), is
connected to one upstream (the kernel drops datagrams from any other address) and carries a few dozen questions for
at most a second before a new one takes a fresh port; with a random ID, the name's case and the question checked on
the reply, a spoofed answer has to guess about 32 bits, the name, and one bit per letter of it. Replies that do not
match are dropped, counted, and reported to the question they name (its near misses); the question keeps waiting,
so a forged packet cannot cut a real answer short.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
from collections.abc import Callable, Container
from typing import Final

from resolver.config.model import Endpoint
from resolver.core import wire
from resolver.core.stats import Stats
from resolver.errors import UpstreamError, WireFormatError
from resolver.net.attempt import Attempt, Sweep, Transport

# The source ports a socket is bound to: every unprivileged port, far more than the kernel's ephemeral range.
FIRST_PORT: Final = 1024
# Ports already taken (by us or anyone) are skipped; after this many tries the kernel picks one.
BIND_TRIES: Final = 8
# 0x20 in the position of every ASCII lowercase letter: the bits the name's case may flip (length bytes are < 64).
_LETTERS: Final = bytes(0x20 if 0x61 <= b <= 0x7A else 0 for b in range(256))


class RandomIds:
    """Unpredictable query IDs, source ports and name case from the OS's CSPRNG, read 4 KiB at a time instead of a
    syscall per draw."""

    __slots__ = ("_at", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def next(self) -> int:
        at = self._at
        if at + 2 > len(self._buffer):  # mixed_case takes an odd number of bytes at times: one may be left over
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

    def port(self) -> int:
        """A source port, uniform over FIRST_PORT-65535 (a rejected draw is drawn again, so none is likelier)."""
        port = self.next()
        while port < FIRST_PORT:
            port = self.next()
        return port

    def mixed_case(self, name: bytes) -> bytes:
        """``name`` (a lowercased wire name) with each letter's case drawn at random: DNS 0x20. A reply must echo
        it exactly, which a spoofer who does not see our packet has to guess, one bit per letter."""
        n = len(name)
        at = self._at
        if at + n > len(self._buffer):
            self._buffer = os.urandom(4096)
            at = 0
        self._at = at + n
        noise = int.from_bytes(self._buffer[at : at + n], "big")
        flips = int.from_bytes(name.translate(_LETTERS), "big") & noise
        return (int.from_bytes(name, "big") ^ flips).to_bytes(n, "big")


class UdpTransport:
    """The ``Transport`` for udp:// upstreams: each question goes out on its upstream's current ``Channel``, and
    waits in that channel's table for the sweep to time it out. A truncated reply is asked again on ``fallback``
    (the TCP transport), since the whole answer only fits there."""

    __slots__ = ("avoid", "channels", "fallback", "ids", "loop", "open", "stats", "sweep")

    def __init__(self, loop: asyncio.AbstractEventLoop, sweep: Sweep, ids: RandomIds, stats: Stats,
                 fallback: Transport, avoid: Container[int] = ()) -> None:
        self.loop = loop
        self.sweep = sweep
        self.ids = ids
        self.stats = stats
        self.fallback = fallback
        self.avoid = avoid  # our own listening ports: a socket holding one would stop a restarted worker binding it
        self.channels: dict[Endpoint, Channel] = {}  # the socket new questions to each upstream go out on
        self.open: set[Channel] = set()  # every socket still open: the current ones, and retired ones

    def send(self, attempt: Attempt) -> None:
        endpoint = attempt.endpoint
        try:
            channel = self._channel(endpoint, attempt)
        except OSError as err:  # out of file descriptors, say: this question fails, the server goes on
            self.loop.call_soon(attempt.failed, UpstreamError(f"{endpoint}: {err}"))  # not from inside the caller
            return
        try:
            channel.send(attempt)
        except OSError as err:  # an ICMP error from an earlier question, say: the socket's others share its fate
            error = UpstreamError(f"{endpoint}: {err}")
            self.loop.call_soon(channel.fail, error)
            self.loop.call_soon(attempt.failed, error)

    def _channel(self, endpoint: Endpoint, attempt: Attempt) -> Channel:
        """The socket for the next question to ``endpoint``: a new one (a new random port) once the current one
        has had its share of questions or time, or when ``attempt`` retransmits a question still waiting on it (a
        retransmission goes out from a port the question has not used, so a spoofer who found the first port
        gains nothing; a socket serves the questions of many retransmissions at once, so a lossy link does not
        cost a socket per lost packet)."""
        now = attempt.started
        channel = self.channels.get(endpoint)
        if channel is not None and channel.uses > 0 and now < channel.retire_at and not _asked_on(attempt, channel):
            return channel
        fresh = self.channels[endpoint] = Channel(self, endpoint, now)
        if channel is not None and not channel.pending:
            channel.close()
        return fresh

    def truncated(self, attempt: Attempt) -> None:
        """``attempt`` got a reply with TC set: ask again over TCP with the time the question has left."""
        attempt.table = None
        attempt.tcp = True
        attempt.timeout = max(0.05, attempt.deadline - self.loop.time())
        self.fallback.send(attempt)

    def close(self) -> None:
        """Close every socket (at shutdown: anything still waiting was given its drain time)."""
        for channel in list(self.open):
            channel.fail(UpstreamError(f"{channel.endpoint}: shutting down"))


def _asked_on(attempt: Attempt, channel: Channel) -> bool:
    """Whether an earlier attempt of ``attempt``'s question still waits on ``channel``."""
    earlier = attempt.after
    while earlier is not None:
        if earlier.table is channel:
            return True
        earlier = earlier.after
    return False


class Channel:
    """A connected UDP socket to one upstream, shared by at most ``USES`` questions in turn, with its reader
    registered once: a cache miss costs a send and a share of one wake-up, not a socket, a connect, two epoll
    changes and a close.

    Spoofing: a forged reply must still hit an open port and an ID in flight there, and name the question. The
    odds per forged packet are the same as with a socket per question (questions in flight over open ports × IDs,
    whichever way they are spread). What a shared socket gives away is time: a port that stays open could be found
    by a side channel (SAD DNS) and then flooded. So no port serves more than ``USES`` questions or is asked for
    more than ``SECONDS``; then a new socket takes a fresh random port, and the old one closes when its last
    question is answered or times out."""

    USES: Final = 64
    SECONDS: Final = 1.0

    __slots__ = ("endpoint", "fd", "pending", "retire_at", "sock", "sweep", "transport", "uses")

    def __init__(self, transport: UdpTransport, endpoint: Endpoint, now: float) -> None:
        # The C socket type, created non-blocking: the Python wrapper and a separate ioctl cost on every miss.
        family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
        sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            bind_random(sock, "::" if endpoint.family_v6 else "0.0.0.0", transport.ids.port, transport.avoid)
            sock.connect((endpoint.host, endpoint.port))  # the kernel drops datagrams from any other address
            _drain(sock)
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
        packet = wire.upstream_query(attempt.query, qid)
        name = attempt.name
        if name is not attempt.query.qname:  # 0x20: the same name, its letters in the attempt's own case
            packet = packet[:12] + name + packet[12 + len(name):]
        self.sock.send(packet)
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
                meant = attempt if attempt is not None else self._naming(data)
                if meant is not None:
                    meant.mismatched(False)
                continue
            name = attempt.name
            if name is not attempt.query.qname and data[12 : 12 + len(name)] != name:
                # Right ID and name but not our case: a spoofer's guess, or an upstream that rewrites the case
                # (its owner tells the two apart over time).
                self.transport.stats.upstream_mismatch += 1
                attempt.mismatched(True)
                continue
            self._release(attempt.qid)
            if data[2] & 0x02:  # TC
                self.transport.truncated(attempt)
            else:
                attempt.replied(data)

    def _naming(self, data: bytes) -> Attempt | None:
        """The attempt waiting here for the question a reply with an unknown ID names, if any: a near miss of that
        question. Only this socket's few dozen questions are looked at, so a flood costs a bounded scan each."""
        if not self.pending:
            return None
        try:
            end = wire.skip_name(data, 12)
        except WireFormatError:
            return None
        name = data[12:end].lower()
        rest = data[end : end + 4]
        for attempt in self.pending.values():
            if attempt.query.qname == name and attempt.query.question[-4:] == rest:
                return attempt
        return None

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


def bind_random(sock: _socket.socket, wildcard: str, ports: Callable[[], int], avoid: Container[int]) -> None:
    """Bind ``sock`` to a port from ``ports`` (random, FIRST_PORT-65535) not in ``avoid``; when every try finds the
    port taken, leave it unbound so that connect takes one from the kernel (a question still goes out)."""
    for _ in range(BIND_TRIES):
        port = ports()
        if port in avoid:
            continue
        try:
            sock.bind((wildcard, port))
            return
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise


def _drain(sock: _socket.socket) -> None:
    """Drop whatever reached the socket while it was bound but not yet connected: it came from anyone, and
    nothing has been asked on it yet."""
    try:
        while True:
            sock.recv(65535)
    except BlockingIOError:
        return
