"""The phones: sessions of lookups at the day's rate, each lookup 2 or 3 queries from the phone's own address.

One thread runs an epoll loop for UDP: a lookup opens a socket bound to its phone's address (so the resolver sees
that phone, and its group applies), sends its queries, and closes the socket once every answer is in or the phone
gives up. Only the lookups in flight hold a socket, so 30,000 addresses never need 30,000 descriptors. TCP phones
(and UDP answers with TC set, asked again over TCP as a phone would) go to a few threads with blocking sockets:
they are a small share, and a thread each keeps the loop simple. Results come back to the loop, which alone
keeps the counts, so nothing is locked.

Counts are kept per second of the replay, by the time a query was sent.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import random
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.load.forceday.oracle import ALLOWED, BLOCKED, ERROR, Oracle, classify
from tests.load.forceday.world import ANDROID_TYPES, IOS_TYPES, QTYPE, Day, Draw, Mix, Phone

OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS0, 1232-byte payload, as phones send
HEADER = struct.Struct("!HHHHHH")


def encode_query(qid: int, name: str, qtype: int) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode("ascii") for label in name.split(".")) + b"\x00"
    return HEADER.pack(qid, 0x0100, 1, 0, 0, 1) + wire + struct.pack("!HH", qtype, 1) + OPT


@dataclass
class Bucket:
    """One second of the replay."""

    sent: int = 0
    answered: int = 0
    lost: int = 0
    blocked: int = 0
    wrong: int = 0
    errors: int = 0  # answers that are neither a verdict nor NXDOMAIN (SERVFAIL, REFUSED)
    tcp: int = 0  # queries sent over TCP (TCP phones, and TC retries)
    truncated: int = 0  # UDP answers with TC set (rate limit), asked again over TCP
    late: int = 0  # lookups the simulator sent more than 50 ms after their time (it fell behind)
    latencies: list[float] = field(default_factory=list)  # ms, answered queries
    qtypes: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    buckets: list[Bucket]
    started: float  # time.time() at the start
    seconds: float
    wrong_examples: list[str]
    lookups: int = 0
    sessions: int = 0


@dataclass
class _Lookup:
    phone: Phone
    name: str
    bucket: int
    sock: socket.socket | None
    pending: dict[int, tuple[str, int]]  # query id -> (qtype, sent at, ns)


class Phones:
    """The simulator. ``run()`` replays ``day`` against the resolver at ``server``."""

    def __init__(self, server: tuple[str, int], draw: Draw, oracle: Oracle, day: Day, mix: Mix, *,
                 timeout: float = 3.0, tcp_threads: int = 8, seed: int = 18) -> None:
        self.server = server
        self.draw = draw
        self.oracle = oracle
        self.day = day
        self.mix = mix
        self.timeout = timeout
        self.rnd = random.Random(seed + 1)
        self.slots = day.slots()
        self.duration = self.slots[-1].end
        self.buckets = [Bucket() for _ in range(int(self.duration) + int(timeout) + 2)]
        self.wrong_examples: list[str] = []
        self.inflight: dict[int, _Lookup] = {}
        self.deadlines: deque[tuple[float, _Lookup]] = deque()
        self.epoll = select.epoll()
        self.tcp_pool = ThreadPoolExecutor(tcp_threads, thread_name_prefix="phone-tcp")
        self.tcp_done: queue.SimpleQueue[tuple[_Lookup, int, bytes | None, float]] = queue.SimpleQueue()
        self.tcp_open = 0
        self.lookups = self.sessions = 0
        self.t0 = 0.0

    # ------------------------------------------------------------------------------------------ the schedule

    def session_rate(self, t: float) -> float:
        per_lookup = self.mix.ios_share * len(IOS_TYPES) + (1 - self.mix.ios_share) * len(ANDROID_TYPES)
        for slot in self.slots:
            if slot.start <= t < slot.end:
                return slot.qps / per_lookup / self.mix.lookups_per_session
        return 0.0

    def run(self, on_tick: Callable[[float], None] | None = None) -> Result:
        started = time.time()
        self.t0 = time.monotonic()
        heap: list[tuple[float, int, Phone, int]] = []
        seq = 0
        next_session = self.rnd.expovariate(max(self.session_rate(0.0), 1e-9))
        last_tick = 0.0
        while True:
            now = time.monotonic() - self.t0
            while next_session <= now and next_session < self.duration:
                rate = self.session_rate(next_session)
                if rate > 0:
                    heapq.heappush(heap, (next_session, seq, self.draw.phone(), self.draw.session_size()))
                    seq += 1
                    self.sessions += 1
                next_session += self.rnd.expovariate(max(rate, 1e-9)) if rate > 0 else 0.01
            while heap and heap[0][0] <= now:
                due, _, phone, left = heapq.heappop(heap)
                self.lookup(phone, due, now)
                if left > 1:
                    seq += 1
                    heapq.heappush(heap, (due + self.rnd.expovariate(1 / self.mix.session_gap), seq, phone, left - 1))
            self.expire(now)
            self.drain_tcp()
            if now >= self.duration and not heap and not self.inflight and self.tcp_open == 0:
                break
            if now > self.duration + self.timeout + 2:
                break
            if on_tick is not None and now - last_tick >= 1.0:
                last_tick = now
                on_tick(now)
            wake = min(heap[0][0] if heap else now + 0.005, next_session, now + 0.005) - now
            for fd, _ in self.epoll.poll(max(wake, 0.0005)):
                self.readable(fd)
        self.tcp_pool.shutdown(wait=True)
        self.drain_tcp()
        self.epoll.close()
        return Result(self.buckets, started, time.monotonic() - self.t0, self.wrong_examples, self.lookups,
                      self.sessions)

    # ----------------------------------------------------------------------------------------------- UDP

    def lookup(self, phone: Phone, due: float, now: float) -> None:
        self.lookups += 1
        name = self.draw.name(phone)
        bucket = self.buckets[int(due)]
        if now - due > 0.05:
            bucket.late += 1
        look = _Lookup(phone, name, int(due), None, {})
        packets: list[tuple[int, str, bytes]] = []
        for qtype in IOS_TYPES if phone.ios else ANDROID_TYPES:
            qid = self.rnd.getrandbits(16)
            while any(qid == p[0] for p in packets):
                qid = self.rnd.getrandbits(16)
            packets.append((qid, qtype, encode_query(qid, name, QTYPE[qtype])))
        if phone.tcp:
            for qid, qtype, _ in packets:
                look.pending[qid] = (qtype, 0)
            self.tcp_open += 1
            self.tcp_pool.submit(self.ask_tcp, look, [(qid, p) for qid, _, p in packets])
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((phone.address, 0))
        sock.connect(self.server)
        look.sock = sock
        self.inflight[sock.fileno()] = look
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        for qid, qtype, packet in packets:
            look.pending[qid] = (qtype, time.monotonic_ns())
            sock.send(packet)
            bucket.sent += 1
            bucket.qtypes[qtype] = bucket.qtypes.get(qtype, 0) + 1
        self.deadlines.append((now + self.timeout, look))

    def readable(self, fd: int) -> None:
        look = self.inflight.get(fd)
        if look is None or look.sock is None:
            return
        while True:
            try:
                reply = look.sock.recv(4096)
            except BlockingIOError:
                break
            except OSError:  # ICMP unreachable: the resolver is gone; the queries will be counted lost
                break
            arrived = time.monotonic_ns()
            if len(reply) < 12:
                continue
            sent = look.pending.pop(reply[0] << 8 | reply[1], None)
            if sent is None:
                continue
            if reply[2] & 0x02:  # TC: ask again over TCP, as the phone's stub would
                self.buckets[look.bucket].truncated += 1
                retry = _Lookup(look.phone, look.name, look.bucket, None, {reply[0] << 8 | reply[1]: (sent[0], 0)})
                self.tcp_open += 1
                qid = reply[0] << 8 | reply[1]
                self.tcp_pool.submit(self.ask_tcp, retry, [(qid, encode_query(qid, look.name, QTYPE[sent[0]]))])
                continue
            self.record(look, sent[0], reply, (arrived - sent[1]) / 1e6)
        if not look.pending:
            self.close(look)

    def close(self, look: _Lookup) -> None:
        sock = look.sock
        if sock is not None:
            self.inflight.pop(sock.fileno(), None)
            with contextlib.suppress(OSError):
                self.epoll.unregister(sock.fileno())
            sock.close()
            look.sock = None

    def expire(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, look = self.deadlines.popleft()
            if look.sock is not None:
                self.buckets[look.bucket].lost += len(look.pending)
                look.pending.clear()
                self.close(look)

    # ----------------------------------------------------------------------------------------------- TCP

    def ask_tcp(self, look: _Lookup, packets: list[tuple[int, bytes]]) -> None:
        """In a pool thread: one connection from the phone's address, the queries pipelined, the answers read."""
        results: list[tuple[int, bytes | None, float]] = []
        waiting = {qid for qid, _ in packets}
        sent_ns: dict[int, int] = {}
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.bind((look.phone.address, 0))
                sock.connect(self.server)
                for qid, packet in packets:
                    sent_ns[qid] = time.monotonic_ns()
                    sock.sendall(struct.pack("!H", len(packet)) + packet)
                buffer = b""
                while waiting:
                    chunk = sock.recv(65535)
                    if not chunk:
                        break
                    buffer += chunk
                    while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack_from("!H", buffer)[0]:
                        size = struct.unpack_from("!H", buffer)[0]
                        reply, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                        qid = reply[0] << 8 | reply[1] if len(reply) >= 2 else -1
                        if qid in waiting:
                            waiting.discard(qid)
                            results.append((qid, reply, (time.monotonic_ns() - sent_ns[qid]) / 1e6))
        except OSError:
            pass
        results += [(qid, None, 0.0) for qid in waiting]
        for qid, reply, ms in results:
            self.tcp_done.put((look, qid, reply, ms))
        self.tcp_done.put((look, -1, None, 0.0))  # this lookup is done

    def drain_tcp(self) -> None:
        while True:
            try:
                look, qid, reply, ms = self.tcp_done.get_nowait()
            except queue.Empty:
                return
            if qid < 0:
                self.tcp_open -= 1
                continue
            bucket = self.buckets[look.bucket]
            qtype = look.pending.pop(qid, ("A", 0))[0]
            if look.phone.tcp:  # a TC retry was counted as sent over UDP already
                bucket.sent += 1
                bucket.qtypes[qtype] = bucket.qtypes.get(qtype, 0) + 1
            bucket.tcp += 1
            if reply is None:
                bucket.lost += 1
            else:
                self.record(look, qtype, reply, ms)

    # --------------------------------------------------------------------------------------------- verdicts

    def record(self, look: _Lookup, qtype: str, reply: bytes, ms: float) -> None:
        bucket = self.buckets[look.bucket]
        bucket.answered += 1
        bucket.latencies.append(ms)
        try:
            got, rcode = classify(reply)
        except (IndexError, struct.error):
            got, rcode = ERROR, -1
        if got == ERROR:
            bucket.errors += 1
            return
        want = self.oracle.expect(look.name, look.phone.address)
        if got == BLOCKED:
            bucket.blocked += 1
        if got != want:
            bucket.wrong += 1
            if len(self.wrong_examples) < 20:
                self.wrong_examples.append(f"{look.name} {qtype} from {look.phone.address} ({look.phone.team}): "
                                           f"answered {got} (rcode {rcode}), policy says {want}")
        assert want in (ALLOWED, BLOCKED)
