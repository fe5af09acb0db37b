"""The running server under a few thousand random and mutated packets, over UDP and TCP.

Every packet we send carries an ID of its own (the first two bytes are overwritten after mutating), so each reply can
be traced to the packet that caused it: a reply must parse with dnspython, carry QR, and answer a packet that was not
itself a response (no reflection). Every ~50 packets a real query checks the server still answers correctly (a
blocked name gets 0.0.0.0, a forwarded name its address from the test upstream). At the end the process is alive,
its RSS grew by less than 30 MB, it logged no traceback, and ``resolver_malformed_packets_total`` went up.

Deterministic: the packets come from ``random.Random(SEED)``; set HOSTILE_SEED to try others. Loopback only, every
loop bounded by a count and a deadline.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.support.prom import by_labels, parse_samples
from tests.support.resolverproc import (
    ResolverFactory,
    ResolverProcess,
    addresses,
    make_query,
    recv_exact,
    tcp_connect,
    tcp_send,
)
from tests.support.zone import BIG, HELP_TIKTOK, HELP_TIKTOK_V4, MAIL, MISSING, TXT_NAME, WWW, WWW_V4

SEED = int(os.environ.get("HOSTILE_SEED", "20261122"))
UDP_PACKETS = 3000
TCP_PACKETS = 300
PROBE_EVERY = 50
DEADLINE = 120.0  # seconds for the whole UDP flood; it normally takes a few
RSS_GROWTH_LIMIT_KB = 30 * 1024
WARMUP_PACKETS = 300  # before the RSS baseline: first use of every code path allocates once
BLOCKED, BLOCKED_ANSWER = "www.tiktok.com", "0.0.0.0"
FORWARDED, FORWARDED_ANSWER = WWW, WWW_V4
NAMES = [WWW, MAIL, TXT_NAME, BIG, MISSING, HELP_TIKTOK, BLOCKED, "m.facebook.com", "use-application-dns.net",
         "mask.icloud.com", "resolver.arpa", "x.example.test", "a" * 63 + ".example.test"]
RTYPES = ["A", "AAAA", "MX", "TXT", "ANY", "HTTPS", "SOA", "NS", "PTR", "SRV", "CAA"]


# ----------------------------------------------------------------------------------------------- packet making


def valid_query(rng: random.Random) -> bytes:
    name = rng.choice(NAMES) if rng.random() < 0.7 else ".".join(
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(rng.randint(1, 20)))
        for _ in range(rng.randint(1, 5)))
    edns = rng.random() < 0.7
    msg = dns.message.make_query(name, rng.choice(RTYPES), use_edns=0 if edns else False,
                                 want_dnssec=edns and rng.random() < 0.3, payload=rng.choice([512, 1232, 4096, 65535]))
    return msg.to_wire()


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(9)
        if op == 0 and buf:  # bit flip
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # byte set
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # truncate
            del buf[rng.randint(0, len(buf)):]
        elif op == 3 and len(buf) >= 12:  # a count field lies
            struct.pack_into("!H", buf, 4 + 2 * rng.randrange(4), rng.choice([0, 1, 2, 3, 255, 0x7FFF, 0xFFFF]))
        elif op == 4:  # appended garbage
            buf += rng.randbytes(rng.randint(1, 64))
        elif op == 5:  # inserted garbage
            pos = rng.randint(0, len(buf))
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 6 and len(buf) > 12:  # a compression pointer anywhere after the header
            pos = rng.randrange(12, len(buf))
            buf[pos:pos + 2] = struct.pack("!H", 0xC000 | rng.randrange(0x4000))
        elif op == 7:  # an OPT record, possibly a bad one (version, length)
            rdata = rng.randbytes(rng.randint(0, 24))
            rdlen = len(rdata) if rng.random() < 0.7 else rng.randrange(0x10000)
            buf += b"\x00\x00\x29" + struct.pack("!HBBHH", rng.randrange(0x10000), 0, rng.choice([0, 0, 1, 255]),
                                                 rng.randrange(0x10000), rdlen) + rdata
        elif op == 8 and len(buf) >= 4:  # header flags: QR, opcode, TC, rcode
            buf[2] = rng.randrange(256)
    return bytes(buf)


def hostile_packet(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.2:
        return rng.randbytes(rng.randint(0, 600))
    if kind < 0.3:  # a plausible header, then junk
        flags = rng.choice([0x0100, 0x0000, 0x8100, 0x0110, 0x2900, 0x7800])
        return struct.pack("!HHHHHH", 0, flags, *(rng.choice([0, 1, 1, 2, 0xFFFF]) for _ in range(4))) \
            + rng.randbytes(rng.randint(0, 300))
    if kind < 0.4:  # a valid query with QR set: must never be answered
        data = bytearray(valid_query(rng))
        data[2] |= 0x80
        return bytes(data)
    return mutate(valid_query(rng), rng)


# ----------------------------------------------------------------------------------------------- bookkeeping


@dataclass
class Ledger:
    """Every packet sent, by ID, and every rule a reply broke."""

    next_id: int
    sent: dict[int, bytes] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    replies: int = 0

    def stamp(self, data: bytes) -> bytes:
        """Give ``data`` an ID no other packet in the run has; shorter packets have no ID to give."""
        if len(data) < 2:
            return data
        qid = self.next_id
        self.next_id = (self.next_id + 1) & 0xFFFF
        assert qid not in self.sent, "ran out of unique IDs"
        stamped = struct.pack("!H", qid) + data[2:]
        self.sent[qid] = stamped
        return stamped

    def check_reply(self, reply: bytes, how: str) -> None:
        self.replies += 1
        if len(reply) < 12:
            self.violations.append(f"{how}: {len(reply)}-byte reply {reply.hex()}")
            return
        qid = struct.unpack_from("!H", reply)[0]
        packet = self.sent.get(qid)
        if packet is None:
            self.violations.append(f"{how}: reply with an ID we never sent: {reply.hex()}")
            return
        if len(packet) >= 3 and packet[2] & 0x80:
            self.violations.append(f"{how}: answered a packet with QR set (reflection): in {packet.hex()} "
                                   f"out {reply.hex()}")
        if not reply[2] & 0x80:
            self.violations.append(f"{how}: reply without QR: in {packet.hex()} out {reply.hex()}")
        try:
            dns.message.from_wire(reply, question_only=True)
        except dns.exception.DNSException as err:
            self.violations.append(f"{how}: reply dnspython cannot read ({err!r}): in {packet.hex()} "
                                   f"out {reply.hex()}")


def probe_answer_ok(reply: bytes, name: str) -> str | None:
    """None if ``reply`` is the right answer to the probe for ``name``, else what is wrong with it."""
    msg = dns.message.from_wire(reply)
    want = BLOCKED_ANSWER if name == BLOCKED else FORWARDED_ANSWER
    if msg.rcode() != dns.rcode.NOERROR or addresses(msg, "A") != [want]:
        return f"probe {name}: rcode {dns.rcode.to_text(msg.rcode())}, answers {addresses(msg, 'A')}, want {want}"
    return None


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def malformed_total(server: ResolverProcess) -> float:
    return by_labels(parse_samples(server.metrics_text()), "resolver_malformed_packets_total").get((), 0.0)


def stderr_problems(server: ResolverProcess) -> list[str]:
    marks = ("Traceback", "internal error", "Exception in callback", "exception was never retrieved", "Task exception")
    return [line.rstrip() for line in server.stderr_text().splitlines() if any(m in line for m in marks)]


UPSTREAM_ZONE = {dns.name.from_text(WWW): WWW_V4, dns.name.from_text(HELP_TIKTOK): HELP_TIKTOK_V4}


class SturdyUpstream:
    """The zone's A records for the probe names over UDP and TCP, NXDOMAIN for any other name, however odd.

    The shared ``auth`` server cannot stand here: a forwarded name whose octets are not valid IDNA (mutated packets
    make plenty) raises in its SOA builder (dnslib's DNSLabel) and kills its UDP thread, after which every forwarded
    probe times out. This one works on dnspython messages, which take any octets.
    """

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(64)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._serve, daemon=True, name="sturdy-upstream")]
        self.threads[0].start()

    def answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            address = UPSTREAM_ZONE.get(question.name)
            if address is not None and question.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", address))
            elif address is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply.to_wire(max_size=65535)
        except Exception:  # whatever a mangled query does to dnspython, this upstream just stays silent
            return None

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.udp, selectors.EVENT_READ)
            sel.register(self.tcp, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in sel.select(0.2):
                    if key.fileobj is self.udp:
                        data, peer = self.udp.recvfrom(65535)
                        reply = self.answer(data)
                        if reply is not None:
                            with contextlib.suppress(OSError):
                                self.udp.sendto(reply, peer)
                    else:
                        conn, _ = self.tcp.accept()
                        thread = threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True)
                        self.threads.append(thread)
                        thread.start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        with conn, contextlib.suppress(OSError):
            while not self.stopping.is_set():
                head = recv_exact(conn, 2)
                data = None if head is None else recv_exact(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                reply = self.answer(data)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def server(resolver_factory: ResolverFactory) -> Iterator[ResolverProcess]:
    """The built-in default policy (social media blocked), forwarding to a sturdy upstream, with metrics."""
    upstream = SturdyUpstream()
    try:
        yield resolver_factory(None, upstreams=[f"127.0.0.1:{upstream.port}"], metrics=True)
    finally:
        resolver_factory.close()
        upstream.close()


# ----------------------------------------------------------------------------------------------------- UDP


class UdpClient:
    def __init__(self, port: int, ledger: Ledger) -> None:
        self.addr = ("127.0.0.1", port)
        self.ledger = ledger
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.answers: dict[int, bytes] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def drain(self, timeout: float = 0.0) -> None:
        """Read every reply waiting (for up to ``timeout`` for the first), checking each against the ledger."""
        while select.select([self.sock], [], [], timeout)[0]:
            reply = self.sock.recv(65535)
            self.ledger.check_reply(reply, "udp")
            if len(reply) >= 2:
                self.answers[struct.unpack_from("!H", reply)[0]] = reply
            timeout = 0.0

    def wait_for(self, qid: int, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while qid not in self.answers:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.drain(left)
        return self.answers.pop(qid)

    def probe(self, name: str) -> str | None:
        """Ask ``name`` (retrying once: UDP may drop) and return what is wrong with the answer, if anything."""
        for _ in range(2):
            data = self.ledger.stamp(make_query(name, "A").to_wire())
            self.send(data)
            reply = self.wait_for(struct.unpack_from("!H", data)[0], 3.0)
            if reply is not None:
                return probe_answer_ok(reply, name)
        return f"probe {name}: no answer over UDP (twice)"

    def close(self) -> None:
        self.sock.close()


def test_udp_flood_of_random_and_mutated_packets(server: ResolverProcess) -> None:
    assert server.proc is not None
    rng = random.Random(SEED)
    ledger = Ledger(next_id=rng.randrange(0x10000))
    client = UdpClient(server.port, ledger)
    malformed_before = malformed_total(server)
    probe_failures: list[str] = []
    rss_start = rss_base = vm_rss_kb(server.proc.pid)
    started = time.monotonic()
    sent = 0
    try:
        for sent in range(1, UDP_PACKETS + 1):
            client.send(ledger.stamp(hostile_packet(rng)))
            if sent % PROBE_EVERY == 0:
                client.drain()
                problem = client.probe(BLOCKED if sent // PROBE_EVERY % 2 else FORWARDED)
                if problem is not None:
                    probe_failures.append(f"after {sent} packets: {problem}")
                    if not server.alive():
                        break
            if sent == WARMUP_PACKETS:
                rss_base = vm_rss_kb(server.proc.pid)
            if time.monotonic() - started > DEADLINE:
                break
        client.drain(1.0)  # late replies (forwarded queries) still get checked
    finally:
        client.close()
    elapsed = time.monotonic() - started
    # Every check is made and reported together: one broken rule must not hide the state of the others.
    failures: list[str] = []
    if not server.alive():
        failures.append(f"the server died after {sent} packets\n{server.stderr_text()[-3000:]}")
    else:
        rss_end = vm_rss_kb(server.proc.pid)
        print(f"udp flood: {sent} packets in {elapsed:.1f} s, {ledger.replies} replies; VmRSS {rss_start} kB at start, "
              f"{rss_base} kB after warm-up, {rss_end} kB at the end; malformed "
              f"{malformed_before:.0f} -> {malformed_total(server):.0f}")
        if rss_end - rss_base >= RSS_GROWTH_LIMIT_KB:
            failures.append(f"RSS grew from {rss_base} kB (after warm-up; {rss_start} kB at start) to {rss_end} kB")
        if malformed_total(server) <= malformed_before:
            failures.append("resolver_malformed_packets_total did not move")
    if sent < UDP_PACKETS:
        failures.append(f"only {sent} of {UDP_PACKETS} packets sent within {DEADLINE:.0f} s")
    failures += probe_failures[:10]
    if ledger.violations:
        failures.append(f"{len(ledger.violations)} bad replies (of {ledger.replies}), e.g.:\n"
                        + "\n".join(ledger.violations[:10]))
    failures += stderr_problems(server)[:20]
    assert not failures, f"{sent} packets in {elapsed:.1f} s:\n" + "\n".join(failures)


# ----------------------------------------------------------------------------------------------------- TCP


class TcpSession:
    """One TCP connection; replies are read in the background of each call and checked against the ledger."""

    def __init__(self, port: int, ledger: Ledger, nodelay: bool = False) -> None:
        self.sock = tcp_connect(port, timeout=5.0)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ledger = ledger
        self.answers: dict[int, bytes] = {}
        self.buffer = b""
        self.closed = False

    def send_frame(self, data: bytes) -> None:
        tcp_send(self.sock, data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self, timeout: float) -> None:
        """Read what has arrived (waiting up to ``timeout`` for something) and check each complete reply."""
        if self.closed or not select.select([self.sock], [], [], timeout)[0]:
            return
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return
        self.buffer += chunk
        while len(self.buffer) >= 2:
            size = struct.unpack_from("!H", self.buffer)[0]
            if len(self.buffer) < 2 + size:
                break
            reply, self.buffer = self.buffer[2:2 + size], self.buffer[2 + size:]
            self.ledger.check_reply(reply, "tcp")
            if len(reply) >= 2:
                self.answers[struct.unpack_from("!H", reply)[0]] = reply

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return predicate()
            self.pump(left)
        return True

    def probe(self, name: str) -> str | None:
        data = self.ledger.stamp(make_query(name, "A").to_wire())
        qid = struct.unpack_from("!H", data)[0]
        self.send_frame(data)
        if not self.wait(lambda: qid in self.answers, 5.0):
            return f"probe {name}: no answer over TCP{' (connection closed)' if self.closed else ''}"
        return probe_answer_ok(self.answers.pop(qid), name)

    def finish(self, timeout: float = 5.0) -> bool:
        """Half-close and read until the server closes; True if it did within ``timeout``."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        closed = self.wait(lambda: self.closed, timeout)
        self.sock.close()
        return closed


def test_tcp_random_frames_lying_lengths_and_split_frames(server: ResolverProcess) -> None:
    assert server.proc is not None
    rng = random.Random(SEED + 1)
    ledger = Ledger(next_id=rng.randrange(0x10000))
    problems: list[str] = []
    malformed_before = malformed_total(server)
    rss_before = vm_rss_kb(server.proc.pid)
    sent = 0

    def expect(problem: str | None, where: str) -> None:
        if problem is not None:
            problems.append(f"{where}: {problem}")

    # Pipelined random and mutated frames, a probe every PROBE_EVERY, on a few long-lived connections.
    for conn in range(3):
        session = TcpSession(server.port, ledger)
        for i in range(TCP_PACKETS // 3):
            session.send_frame(ledger.stamp(hostile_packet(rng)))
            sent += 1
            session.pump(0.0)
            if (i + 1) % PROBE_EVERY == 0:
                expect(session.probe(BLOCKED if i // PROBE_EVERY % 2 else FORWARDED), f"connection {conn}, frame {i}")
        expect(session.probe(FORWARDED), f"connection {conn}, last probe")
        if not session.finish():
            problems.append(f"connection {conn}: not closed within 5 s after our half-close")

    # Zero-length frames, then a real query on the same connection.
    session = TcpSession(server.port, ledger)
    session.send_raw(b"\x00\x00" * 20)
    sent += 20
    expect(session.probe(BLOCKED), "after 20 zero-length frames")
    session.finish()

    # A query split byte by byte (and its length prefix too).
    session = TcpSession(server.port, ledger, nodelay=True)
    for name in (FORWARDED, BLOCKED):
        data = ledger.stamp(make_query(name, "A").to_wire())
        for byte in struct.pack("!H", len(data)) + data:
            session.send_raw(bytes([byte]))
        qid = struct.unpack_from("!H", data)[0]
        if session.wait(lambda q=qid: q in session.answers, 5.0):
            expect(probe_answer_ok(session.answers.pop(qid), name), "query sent byte by byte")
        else:
            problems.append(f"query for {name} sent byte by byte: no answer")
    session.finish()

    # Length prefixes that lie: longer than what follows (then EOF), shorter (the rest misframes), the maximum.
    lies: list[tuple[str, bytes]] = []
    for _ in range(10):
        data = ledger.stamp(valid_query(rng))
        lies.append(("prefix longer than the frame", struct.pack("!H", len(data) + rng.randint(1, 500)) + data))
        data = ledger.stamp(valid_query(rng))
        lies.append(("prefix shorter than the frame", struct.pack("!H", rng.randint(0, len(data) - 1)) + data))
    lies.append(("65535-byte frame of junk", b"\xff\xff" + ledger.stamp(rng.randbytes(0xFFFF))))
    lies.append(("prefix only", b"\x10\x00"))
    lies.append(("half a prefix", b"\x10"))
    for what, raw in lies:
        session = TcpSession(server.port, ledger)
        session.send_raw(raw)
        sent += 1
        if not session.finish():
            problems.append(f"{what}: the server kept the connection open 5 s after our half-close")

    # Connections reset by the client in the middle of a frame.
    for _ in range(30):
        sock = tcp_connect(server.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        data = ledger.stamp(valid_query(rng))
        sock.sendall(struct.pack("!H", len(data)) + data[: len(data) // 2])
        sock.close()  # RST
        sent += 1

    # Still serving, over a fresh connection.
    session = TcpSession(server.port, ledger)
    expect(session.probe(FORWARDED), "fresh connection at the end")
    expect(session.probe(BLOCKED), "fresh connection at the end")
    session.finish()

    if not server.alive():
        problems.append(f"the server died\n{server.stderr_text()[-3000:]}")
    else:
        rss_after = vm_rss_kb(server.proc.pid)
        print(f"tcp: {sent} frames, {ledger.replies} replies; VmRSS {rss_before} kB -> {rss_after} kB; malformed "
              f"{malformed_before:.0f} -> {malformed_total(server):.0f}")
        if rss_after - rss_before >= RSS_GROWTH_LIMIT_KB:
            problems.append(f"RSS grew from {rss_before} kB to {rss_after} kB")
        if malformed_total(server) <= malformed_before:
            problems.append("resolver_malformed_packets_total did not move")
    if ledger.violations:
        problems.append(f"{len(ledger.violations)} bad replies (of {ledger.replies}), e.g.:\n"
                        + "\n".join(ledger.violations[:10]))
    problems += stderr_problems(server)[:20]
    assert sent >= TCP_PACKETS
    assert not problems, "\n".join(problems[:30])


# ----------------------------------------------------------------------------------------- handcrafted packets


def _header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0, flags, qd, an, ns, ar)


_NAME_256 = b"".join(bytes([n]) + b"a" * n for n in (63, 63, 63, 62)) + b"\x00"  # one octet over RFC 1035's 255
_OPT_V1 = b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00"  # EDNS version 1
HANDCRAFTED = {
    "self pointer in question": _header() + b"\xc0\x0c\x00\x01\x00\x01",
    "two pointers at each other": _header() + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01",
    "label length 64": _header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    "qdcount 65535": _header(qd=0xFFFF) + b"\x01a\x00\x00\x01\x00\x01",
    "two OPT records": _header(ar=2) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0" + b"\x00" * 6 * 2,
    "arcount 65535": _header(ar=0xFFFF) + b"\x01a\x00\x00\x01\x00\x01",
    "OPT rdlen past the end": _header(ar=1) + b"\x01a\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\xff\xff",
    # Bugs these tests found, fixed in b2d2786 (see tests/unit/test_hostile.py::test_on_query_regressions):
    "response with EDNS version 1 (must be dropped)": _header(flags=0x8100, ar=1) + b"\x01a\x00\x00\x01\x00\x01"
    + _OPT_V1,
    "CHAOS query for a 256-octet name": _header() + _NAME_256 + b"\x00\x01\x00\x03",
    "blocked 256-octet name": _header() + b"".join(bytes([n]) + b"a" * n for n in (63, 63, 63, 51))
    + b"\x06tiktok\x03com\x00\x00\x01\x00\x01",
}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_handcrafted_hostile_packets(server: ResolverProcess, transport: str) -> None:
    """Each hand-made hostile packet: a readable reply with its ID and QR, or (for a response) none at all."""
    ledger = Ledger(next_id=1)
    problems: list[str] = []
    for what, packet in HANDCRAFTED.items():
        data = ledger.stamp(packet)
        qid = struct.unpack_from("!H", data)[0]
        before = len(ledger.violations)
        if transport == "udp":
            client = UdpClient(server.port, ledger)
            client.send(data)
            reply = client.wait_for(qid, 1.0 if data[2] & 0x80 else 3.0)
            client.close()
        else:
            session = TcpSession(server.port, ledger)
            session.send_frame(data)
            session.wait(lambda q=qid, s=session: q in s.answers, 1.0 if data[2] & 0x80 else 3.0)
            reply = session.answers.get(qid)
            session.finish()
        problems += [f"{what}: {v}" for v in ledger.violations[before:]]
        if reply is None and not data[2] & 0x80:
            problems.append(f"{what}: no reply (a query we cannot read gets FORMERR)")
    assert server.alive()
    assert not problems, "\n".join(problems)
    # The server still answers.
    session = TcpSession(server.port, ledger)
    assert session.probe(BLOCKED) is None
    session.finish()

