"""A small authoritative DNS server on loopback, used as the resolver's upstream in integration tests.

It runs in its own threads (UDP and TCP on the same ephemeral port), so it is independent of any event loop
and of the process under test. It records every query it receives and can misbehave on purpose, per name, to
drive the resolver's failure paths::

    with AuthServer() as auth:
        auth.add("www.example.test", "A", "192.0.2.10")
        auth.set_behaviour("slow.example.test", "slow:0.5")
        ...  # point the resolver at auth.address

Behaviours (they apply to the name given and every name below it):

``normal``          answer from the zone.
``silent``          never reply (the query is still recorded): drives upstream timeouts.
``truncate``        over UDP reply with TC=1 and no records; over TCP answer in full.
``garbage``         reply with the query's ID followed by random bytes (no valid DNS message).
``wrong-id``        reply with ID+1 carrying a poisoned answer (``POISON_V4``).
``wrong-question``  reply with the query's ID but for another name (``POISON_NAME``), poisoned answer.
``servfail``        reply SERVFAIL.  ``refused``  reply REFUSED.
``slow:SECONDS``    answer normally after SECONDS, without holding up other queries.
``drop:N``          the first N queries for each name get no reply (a lossy link), later ones are answered.
``lowercase``       answer normally, but echo the question name in lowercase (an upstream that breaks DNS 0x20).
``spoof-case``      first a poisoned reply with the right ID and the question in the other case (a spoofer who
                    does not know our 0x20 case), then the honest answer.
``wrong-id-flood``  over UDP, ``FLOOD`` poisoned replies with wrong IDs and no honest one; over TCP, the answer.
``txt:BYTES``       answer any name (and type) with one TXT record of BYTES bytes of text, TTL 300, made up on
                    the spot (big answers for many names, without holding them all in the zone).
``chatty``          answer from the zone the way many recursive servers do: AD set, the zone's NS records in the
                    authority section (after the SOA of a negative answer) and their addresses in the additional.

A bad reply always carries ``POISON_V4`` so a resolver that accepts it is caught by the answer it returns.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from dnslib import EDNS0, NS, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

POISON_V4 = "203.0.113.66"
POISON_NAME = "poison.invalid"

BEHAVIOURS = ("normal", "silent", "truncate", "garbage", "wrong-id", "wrong-question", "servfail", "refused",
              "lowercase", "spoof-case", "wrong-id-flood", "chatty")
FLOOD = 5
CHATTY_NS = ("ns1", "ns2")  # the NS names ``chatty`` adds below the zone, with CHATTY_GLUE as their addresses
CHATTY_GLUE = ("192.0.2.53", "192.0.2.54")


@dataclass(frozen=True)
class Seen:
    """One query as the server received it."""

    name: str  # lowercased, no trailing dot
    qtype: str  # "A", "AAAA", ...
    transport: str  # "udp" | "tcp"
    id: int
    had_edns: bool
    rd: bool
    port: int = 0  # the asker's source port
    sent_name: str = ""  # the question name as it arrived, case and all (DNS 0x20)


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _under(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:53`` / ``[::1]:53``, the form the resolver's CLI takes."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AuthServer:
    """Authoritative test server for a handful of names; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", *, soa_minimum: int = 60, soa_ttl: int = 300) -> None:
        self.host = host
        self.port = 0
        self.soa_minimum = soa_minimum
        self.soa_ttl = soa_ttl
        self.queries: list[Seen] = []
        self._records: dict[str, list[RR]] = {}
        self._behaviours: dict[str, str] = {}
        self._dropped: dict[str, int] = {}  # drop:N: queries dropped so far, per name
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # ---------------------------------------------------------------- zone

    def add(self, name: str, rtype: str, value: str, ttl: int = 300) -> None:
        """Add one record. ``value`` is zone-file rdata: ``"10 mx.example.test."`` for MX; TXT takes raw text."""
        owner = _norm(name)
        rtype = rtype.upper()
        if rtype == "TXT":
            chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
            rrs = [RR(owner + ".", QTYPE.TXT, ttl=ttl, rdata=TXT(chunks))]
        else:
            rrs = RR.fromZone(f"{owner}. {ttl} IN {rtype} {value}")
        with self._cond:
            self._records.setdefault(owner, []).extend(rrs)

    def set_behaviour(self, name: str, behaviour: str) -> None:
        """Make the server misbehave for ``name`` and every name below it (``normal`` restores it)."""
        if behaviour not in BEHAVIOURS and not behaviour.startswith(("slow:", "drop:", "txt:")):
            raise ValueError(f"unknown behaviour {behaviour!r}")
        if behaviour.startswith("slow:"):
            float(behaviour.split(":", 1)[1])
        if behaviour.startswith(("drop:", "txt:")):
            int(behaviour.split(":", 1)[1])
        with self._cond:
            self._behaviours[_norm(name)] = behaviour

    def behaviour_for(self, name: str) -> str:
        labels = _norm(name).split(".")
        with self._cond:
            for i in range(len(labels)):
                found = self._behaviours.get(".".join(labels[i:]))
                if found is not None:
                    return found
        return "normal"

    # ---------------------------------------------------------------- observing

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``[::1]:PORT`` for IPv6), as ``--upstream`` takes it."""
        if not self.port:
            raise RuntimeError("AuthServer not started")
        return format_address(self.host, self.port)

    def count(self, name: str, qtype: str | None = None, transport: str | None = None) -> int:
        """How many queries for exactly ``name`` (and ``qtype``/``transport`` when given) were received."""
        want = _norm(name)
        with self._cond:
            return sum(
                1
                for q in self.queries
                if q.name == want
                and (qtype is None or q.qtype == qtype.upper())
                and (transport is None or q.transport == transport)
            )

    def count_under(self, suffix: str) -> int:
        """How many queries for ``suffix`` or any name below it were received."""
        want = _norm(suffix)
        with self._cond:
            return sum(1 for q in self.queries if _under(q.name, want))

    def seen(self, name: str) -> list[Seen]:
        want = _norm(name)
        with self._cond:
            return [q for q in self.queries if q.name == want]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait (on a condition, not a sleep) until ``predicate()`` holds; return whether it did."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_for_queries(self, n: int, timeout: float = 5.0, name: str | None = None) -> bool:
        """Wait until at least ``n`` queries (for ``name``, when given) have been received."""
        if name is None:
            return self.wait_until(lambda: len(self.queries) >= n, timeout)
        want = _norm(name)
        return self.wait_until(lambda: sum(1 for q in self.queries if q.name == want) >= n, timeout)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            break
        else:
            raise RuntimeError("could not bind UDP and TCP on the same port")
        self._udp, self._tcp, self.port = udp, tcp, port
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, name=f"auth-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self.host, port

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_w.send(b"x")
        for t in self._threads:
            t.join(timeout=5)
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def __enter__(self) -> AuthServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving

    def _until_stopped(self, sock: socket.socket, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable`` each time ``sock`` is readable, until ``stop()`` writes to the wake-up pipe."""
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    on_readable()

    def _serve_udp(self) -> None:
        udp = self._udp
        assert udp is not None

        def readable() -> None:
            try:
                data, peer = udp.recvfrom(65535)
            except OSError:
                return
            self._handle(data, "udp", functools.partial(self._udp_send, udp, peer), peer[1])

        self._until_stopped(udp, readable)

    @staticmethod
    def _udp_send(sock: socket.socket, peer: tuple[str, int], reply: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        tcp = self._tcp
        assert tcp is not None

        def readable() -> None:
            try:
                conn, peer = tcp.accept()
            except OSError:
                return
            with self._cond:
                self._conns.add(conn)
            threading.Thread(target=self._serve_conn, args=(conn, peer[1]), name="auth-tcp-conn", daemon=True).start()

        self._until_stopped(tcp, readable)

    def _serve_conn(self, conn: socket.socket, port: int) -> None:
        lock = threading.Lock()

        def send(reply: bytes) -> None:
            with lock, contextlib.suppress(OSError):
                conn.sendall(struct.pack("!H", len(reply)) + reply)

        try:
            while True:
                head = recv_exact(conn, 2)
                if head is None:
                    return
                body = recv_exact(conn, struct.unpack("!H", head)[0])
                if body is None:
                    return
                self._handle(body, "tcp", send, port)
        except OSError:
            return
        finally:
            with self._cond:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, data: bytes, transport: str, send: Callable[[bytes], None], port: int) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # a test upstream ignores what it cannot parse
            return
        if query.header.qr or not query.questions:
            return
        question = query.q
        name = _norm(str(question.qname))
        had_edns = any(rr.rtype == QTYPE.OPT for rr in query.ar)
        with self._cond:
            self.queries.append(
                Seen(
                    name=name,
                    qtype=QTYPE.get(question.qtype),
                    transport=transport,
                    id=query.header.id,
                    had_edns=had_edns,
                    rd=bool(query.header.rd),
                    port=port,
                    sent_name=str(question.qname).rstrip("."),
                )
            )
            self._cond.notify_all()
        behaviour = self.behaviour_for(name)
        if behaviour == "silent":
            return
        if behaviour.startswith("drop:"):
            with self._cond:
                dropped = self._dropped.get(name, 0)
                if dropped < int(behaviour.split(":", 1)[1]):
                    self._dropped[name] = dropped + 1
                    return
        if behaviour == "lowercase":
            send(_recased(self._answer(query, transport), data, bytes.lower))
            return
        if behaviour == "spoof-case":
            fake = self._reply_header(query)
            fake.add_answer(RR(question.qname, QTYPE.A, ttl=300, rdata=A(POISON_V4)))
            send(_recased(fake.pack(), data, bytes.swapcase))
            send(self._answer(query, transport))
            return
        if behaviour == "wrong-id-flood" and transport == "udp":
            for n in range(1, FLOOD + 1):
                fake = self._reply_header(query)
                fake.header.id = (query.header.id + n) & 0xFFFF
                fake.add_answer(RR(question.qname, QTYPE.A, ttl=300, rdata=A(POISON_V4)))
                send(fake.pack())
            return
        if behaviour.startswith("slow:"):
            delay = float(behaviour.split(":", 1)[1])
            timer = threading.Timer(delay, lambda: send(self._answer(query, transport)))
            timer.daemon = True
            timer.start()
            return
        if behaviour == "garbage":
            send(data[:2] + os.urandom(30))
        elif behaviour == "wrong-id":
            reply = self._reply_header(query)
            reply.header.id = (query.header.id + 1) & 0xFFFF
            reply.add_answer(RR(question.qname, QTYPE.A, ttl=300, rdata=A(POISON_V4)))
            send(reply.pack())
        elif behaviour == "wrong-question":
            reply = self._reply_header(query)
            reply.questions = [DNSQuestion(POISON_NAME, QTYPE.A)]
            reply.add_answer(RR(POISON_NAME, QTYPE.A, ttl=300, rdata=A(POISON_V4)))
            send(reply.pack())
        elif behaviour in ("servfail", "refused"):
            reply = self._reply_header(query)
            reply.header.rcode = RCODE.SERVFAIL if behaviour == "servfail" else RCODE.REFUSED
            send(reply.pack())
        elif behaviour == "truncate" and transport == "udp":
            reply = self._reply_header(query)
            reply.header.tc = 1
            send(reply.pack())
        else:
            try:
                answer = self._answer(query, transport, behaviour)
            except Exception:  # a name dnslib cannot encode back: SERVFAIL, and the test upstream keeps serving
                reply = self._reply_header(query)
                reply.header.rcode = RCODE.SERVFAIL
                answer = reply.pack()
            send(answer)

    def _reply_header(self, query: DNSRecord) -> DNSRecord:
        reply = DNSRecord(
            DNSHeader(id=query.header.id, qr=1, aa=1, ra=0, rd=query.header.rd, opcode=query.header.opcode),
            q=query.q,
        )
        opt = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
        if opt is not None:
            do = bool(opt.ttl & 0x8000)
            reply.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
        return reply

    def _answer(self, query: DNSRecord, transport: str, behaviour: str = "normal") -> bytes:
        """The honest answer from the zone (or made up, for ``txt:``), truncated (TC=1, no records) when it exceeds
        the UDP size."""
        reply = self._reply_header(query)
        if behaviour.startswith("txt:"):
            text = "x" * int(behaviour.split(":", 1)[1])
            reply.add_answer(RR(query.q.qname, QTYPE.TXT, ttl=300,
                                rdata=TXT([text[i : i + 255] for i in range(0, len(text), 255)])))
        else:
            self._from_zone(query, reply)
        if behaviour == "chatty":
            self._chatter(reply)
        wire = reply.pack()
        if transport == "udp":
            opt = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
            limit = max(512, opt.rclass) if opt is not None else 512
            if len(wire) > limit:
                short = self._reply_header(query)
                short.header.tc = 1
                wire = short.pack()
        return bytes(wire)

    def _from_zone(self, query: DNSRecord, reply: DNSRecord) -> None:
        qname = query.q.qname
        qtype = query.q.qtype
        name = _norm(str(qname))
        owner = qname
        with self._cond:
            for _hop in range(8):
                rrs = self._records.get(name, [])
                matching = [rr for rr in rrs if rr.rtype == qtype]
                cnames = [rr for rr in rrs if rr.rtype == QTYPE.CNAME]
                if matching:
                    for rr in matching:
                        reply.add_answer(RR(owner, rr.rtype, ttl=rr.ttl, rdata=rr.rdata))
                    break
                if cnames and qtype != QTYPE.CNAME:
                    rr = cnames[0]
                    reply.add_answer(RR(owner, rr.rtype, ttl=rr.ttl, rdata=rr.rdata))
                    owner = DNSLabel(str(rr.rdata.label))
                    name = _norm(str(rr.rdata.label))
                    continue
                exists = any(_under(known, name) for known in self._records)
                if not exists:
                    reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(self._soa(name))
                break

    def _chatter(self, reply: DNSRecord) -> None:
        """What ``chatty`` adds: AD, the zone's NS records and their glue."""
        labels = _norm(str(reply.q.qname)).split(".")
        apex = ".".join(labels[-2:])
        reply.header.ad = 1
        for host, address in zip(CHATTY_NS, CHATTY_GLUE, strict=True):
            reply.add_auth(RR(apex + ".", QTYPE.NS, ttl=86400, rdata=NS(f"{host}.{apex}.")))
            reply.add_ar(RR(f"{host}.{apex}.", QTYPE.A, ttl=86400, rdata=A(address)))

    def _soa(self, name: str) -> RR:
        labels = name.split(".")
        apex = ".".join(labels[-2:]) if len(labels) >= 2 else name
        # The root (a resolver's health probe asks ". NS") gets a SOA owned by "." from a made-up server.
        server = apex or "root-servers.test"
        return RR(
            apex + ".",
            QTYPE.SOA,
            ttl=self.soa_ttl,
            rdata=SOA(
                f"ns.{server}.",
                f"hostmaster.{server}.",
                (2024010101, 3600, 600, 86400, self.soa_minimum),
            ),
        )


def _recased(reply: bytes, query: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """``reply`` with its question name (the query's, uncompressed at offset 12) put through ``change``."""
    end = 12
    while query[end]:
        end += 1 + query[end]
    reply = bytes(reply)
    return reply[:12] + change(reply[12:end]) + reply[end:]


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    """Exactly n bytes from a stream socket, or None if it closes first."""
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
