"""A phone's stub resolver, many times over: paced queries from a few threads, each with a timeout and retries.

The fault tests need to say what a client saw while something broke: how many queries were answered at once,
how many only after a retry, how many never, and how long each took. ``ask`` is one stub lookup (dnspython, a
fresh socket and a fresh ID per try, TCP when the UDP answer is truncated, as glibc and Android do), and
``StubLoad`` runs a steady stream of them in the background and keeps every ``Asked`` record.

Loopback only: the resolver under test is given by port on 127.0.0.1 (or ``host``, which must be loopback).
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from tests.support.resolverproc import addresses, make_query


def rcode_text(rcode: int) -> str:
    """``NOERROR``, ``SERVFAIL`` … (the number, for a code dnspython has no name for)."""
    return dns.rcode.to_text(dns.rcode.Rcode.make(rcode))


@dataclass(frozen=True)
class Asked:
    """One stub lookup: what the client sent, when, how many tries it took and what it got back."""

    name: str
    rtype: str
    sent: float  # time.monotonic() of the first try
    done: float  # when the answer arrived, or when the last try gave up
    tries: int  # tries made; 1 = answered at the first
    rcode: int | None  # None: no answer after every try
    answers: tuple[str, ...]  # rdata of the answer section's records of ``rtype``, sorted
    tcp: bool  # the answer came over TCP (the UDP one was truncated)
    errors: tuple[str, ...]  # what went wrong on tries that got no usable answer

    @property
    def answered(self) -> bool:
        return self.rcode is not None

    @property
    def elapsed(self) -> float:
        return self.done - self.sent

    def describe(self) -> str:
        got = "no answer" if self.rcode is None else f"{rcode_text(self.rcode)} {list(self.answers)}"
        return f"{self.name} {self.rtype}: {got} after {self.tries} tries, {self.elapsed:.2f}s {list(self.errors)}"


def ask(port: int, name: str, rtype: str = "A", *, timeout: float = 1.5, tries: int = 2,
        host: str = "127.0.0.1") -> Asked:
    """One lookup as a stub resolver makes it: up to ``tries`` UDP tries of ``timeout`` seconds each (a new
    socket, so a new source port, and a new ID every time), then TCP if the UDP answer had TC set."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    errors: list[str] = []
    started = time.monotonic()
    for attempt in range(1, tries + 1):
        query = make_query(name, rtype)
        try:
            reply = dns.query.udp(query, host, port=port, timeout=timeout, raise_on_truncation=False)
            tcp = bool(reply.flags & dns.flags.TC)
            if tcp:
                reply = dns.query.tcp(query, host, port=port, timeout=timeout)
        except dns.exception.Timeout:
            errors.append(f"try {attempt}: timeout")
            continue
        except (dns.exception.DNSException, OSError) as err:  # a reply that does not match, a refused port
            errors.append(f"try {attempt}: {err.__class__.__name__}: {err}")
            continue
        return Asked(name, rtype, started, time.monotonic(), attempt, reply.rcode(),
                     tuple(addresses(reply, rtype)), tcp, tuple(errors))
    return Asked(name, rtype, started, time.monotonic(), tries, None, (), False, tuple(errors))


class StubLoad:
    """A steady stream of lookups at about ``qps`` from ``threads`` threads until ``stop()``.

    ``names(i)`` gives the name for the i-th lookup (a counter shared by every thread). Each thread sends on a
    fixed schedule; a lookup that waits out a timeout delays only its own thread, as one phone's retry does not
    hold up the others. ``mark(label)`` notes a moment (a kill, a reload) to compare lookups against.
    """

    def __init__(self, port: int, names: Callable[[int], str], *, qps: float = 200.0, threads: int = 8,
                 timeout: float = 1.5, tries: int = 2, rtype: str = "A") -> None:
        self.port = port
        self.names = names
        self.qps = qps
        self.threads = threads
        self.timeout = timeout
        self.tries = tries
        self.rtype = rtype
        self.asked: list[Asked] = []
        self.crashed: list[str] = []  # a thread that died would silently thin the load: stop() reports it
        self.marks: dict[str, float] = {}
        self.started = 0.0
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> StubLoad:
        self.started = time.monotonic()
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index,), name=f"stub-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _run(self, index: int) -> None:
        try:
            self._send(index)
        except Exception as err:  # reported by stop(), not lost with the thread
            with self._lock:
                self.crashed.append(f"{threading.current_thread().name}: {err!r}")

    def _send(self, index: int) -> None:
        interval = self.threads / self.qps
        due = self.started + index * interval / self.threads
        while not self._stop.is_set():
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            asked = ask(self.port, self.names(next(self._counter)), self.rtype, timeout=self.timeout,
                        tries=self.tries)
            with self._lock:
                self.asked.append(asked)
            due = max(due + interval, time.monotonic())  # late after a timeout: carry on, no burst to catch up

    def mark(self, label: str) -> float:
        now = time.monotonic()
        self.marks[label] = now
        return now

    def count(self) -> int:
        with self._lock:
            return len(self.asked)

    def wait_count(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` lookups have finished (for a phase of the test to have seen traffic)."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while self.count() < n:
            if time.monotonic() >= deadline:
                return False
            pause.wait(0.02)
        return True

    def stop(self) -> list[Asked]:
        """Stop sending, let every lookup in progress finish (with its retries), return all of them."""
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=self.timeout * self.tries + 10)
        with self._lock:
            if self.crashed:
                raise RuntimeError(f"load threads died: {self.crashed}")
            return sorted(self.asked, key=lambda a: a.sent)

    def __enter__(self) -> StubLoad:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Seen:
    """What a set of lookups saw, in the figures a fault test reports."""

    total: int
    first_try: int  # answered at the first try
    after_retry: int  # answered, but only after a retry
    unanswered: int  # no answer after every try
    rcodes: dict[str, int]
    slowest: float  # seconds, first try to answer, over the answered ones
    tcp: int  # answered over TCP after a truncated UDP answer

    def __str__(self) -> str:
        return (f"{self.total} lookups: {self.first_try} answered at the first try, {self.after_retry} only after "
                f"a retry, {self.unanswered} unanswered; rcodes {self.rcodes}; slowest {self.slowest:.2f}s"
                + (f"; {self.tcp} over TCP after TC" if self.tcp else ""))


def summarise(asked: list[Asked]) -> Seen:
    answered = [a for a in asked if a.answered]
    rcodes: dict[str, int] = {}
    for a in answered:
        assert a.rcode is not None
        text = rcode_text(a.rcode)
        rcodes[text] = rcodes.get(text, 0) + 1
    return Seen(
        total=len(asked),
        first_try=sum(1 for a in answered if a.tries == 1),
        after_retry=sum(1 for a in answered if a.tries > 1),
        unanswered=len(asked) - len(answered),
        rcodes=dict(sorted(rcodes.items())),
        slowest=max((a.elapsed for a in answered), default=0.0),
        tcp=sum(1 for a in answered if a.tcp),
    )
