"""Bounds under hostile clients, through the real server on loopback: the cache's memory, and one client's flood
against the others' lookups.

- Big answers: a real upstream makes up a TXT answer of tens of kilobytes for any name; a client asks for many of
  them. Each answer reaches the client whole, the cache keeps only what fits ``cache.max_bytes`` (answers over
  ``cache.max_answer_bytes`` not at all) and the process's resident memory does not grow with the number asked.
- Fairness: one client address floods unique names at an upstream that never answers them (so every one waits
  in the in-flight table) while another address asks names of its own: the second gets every answer, the first
  is shed at its quota with SERVFAIL and an Extended DNS Error, counted by reason.

No timed assertions: the flood is paced by what the resolver has done with it (each question either reached the
upstream or was answered), and memory is compared before and after, with a wide margin.
"""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype

from resolver.core.forwarding import ADDRESS_QUOTA, MAX_INFLIGHT
from tests.support.authserver import AuthServer
from tests.support.prom import by_labels, parse_samples
from tests.support.resolverproc import (
    ResolverFactory,
    ResolverProcess,
    addresses,
    make_query,
    query,
    tcp_connect,
    tcp_recv,
    tcp_send,
)

BIG_BYTES = 60_000  # an answer bigger than cache.max_answer_bytes: passed on, never kept
MID_BYTES = 12_000  # an answer the cache keeps, until max_bytes makes it evict
MAX_BYTES = 1 << 20
WARM_UP = 150  # big and mid names asked before memory is first measured, so allocators have settled
ASKED = 1_000  # big names asked after that: 60 MB of answers, had they been kept
# What the process may grow by while ASKED more big answers pass through it: far below the 60 MB they would take
# if kept, far above what a bounded cache and the allocator's own slack can account for.
RSS_MARGIN_KB = 24 * 1024


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def metric(server: ResolverProcess, name: str, **labels: str) -> float:
    values = by_labels(parse_samples(server.metrics_text()), name, *labels)
    return sum(v for k, v in values.items() if k == tuple(labels.values()))


def ask_txt(conn: socket.socket, name: str) -> dns.message.Message:
    """One TXT question over the client's TCP connection (the answers are too big for UDP)."""
    q = make_query(name, "TXT")
    tcp_send(conn, q.to_wire())
    data = tcp_recv(conn)
    assert data is not None, f"connection closed asking {name}"
    reply = dns.message.from_wire(data)
    assert reply.id == q.id
    return reply


def txt_length(reply: dns.message.Message) -> int:
    return sum(len(s) for rrset in reply.answer if rrset.rdtype == dns.rdatatype.TXT for rd in rrset
               for s in rd.strings)  # type: ignore[attr-defined]


def test_cache_stays_within_max_bytes_and_memory_does_not_grow_with_big_answers(
        resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    """The client sees every 60 KB and 12 KB answer whole; a big name asked twice goes upstream twice (never
    cached); /metrics shows the cache within max_bytes, having evicted mid answers to stay there; and VmRSS after
    1,000 more big answers is within RSS_MARGIN_KB of before (unbounded, it would grow by about 60 MB)."""
    auth.set_behaviour("big.bounds.test", f"txt:{BIG_BYTES}")
    auth.set_behaviour("mid.bounds.test", f"txt:{MID_BYTES}")
    server = resolver_factory({"cache": {"max_bytes": "1MiB"}}, metrics=True)
    assert server.proc is not None
    with tcp_connect(server.port) as conn:
        for i in range(WARM_UP):
            for kind, size in (("big", BIG_BYTES), ("mid", MID_BYTES)):
                reply = ask_txt(conn, f"w{i}.{kind}.bounds.test")
                assert reply.rcode() == dns.rcode.NOERROR and txt_length(reply) == size
        before = vm_rss_kb(server.proc.pid)
        for i in range(ASKED):
            reply = ask_txt(conn, f"n{i}.big.bounds.test")
            assert reply.rcode() == dns.rcode.NOERROR and txt_length(reply) == BIG_BYTES
            if i % 4 == 0:
                assert txt_length(ask_txt(conn, f"n{i}.mid.bounds.test")) == MID_BYTES
        after = vm_rss_kb(server.proc.pid)
        assert txt_length(ask_txt(conn, "n0.big.bounds.test")) == BIG_BYTES
    assert auth.count("n0.big.bounds.test", "TXT", "tcp") == 2, "a big answer was cached"
    cached = metric(server, "resolver_cache_bytes")
    assert 0 < cached <= MAX_BYTES, cached
    assert metric(server, "resolver_cache_evictions_total") > 0, "mid answers beyond max_bytes were evicted"
    assert after - before < RSS_MARGIN_KB, f"VmRSS grew by {after - before} kB asking {ASKED} big names"


# ------------------------------------------------------------------------------------------------ fairness

FLOODER = "127.0.0.2"
NEIGHBOUR = "127.0.0.3"  # the same /24: the network's quota must leave it room too
FLOOD = MAX_INFLIGHT + 500  # more unique names than the whole table holds
BATCH = 200  # sent at once, then accounted for before the next: well inside the sockets' buffers
OWN = 20


def test_a_client_flooding_unique_names_does_not_starve_another(resolver_factory: ResolverFactory,
                                                                auth: AuthServer) -> None:
    """127.0.0.2 sends 10,500 unique names that the upstream never answers; each one either reaches the upstream
    or is answered at once. Then 127.0.0.3 asks 20 names of its own: every one gets its A record. The flooder had
    at most its quota upstream; the rest of its questions got SERVFAIL with EDE 0 naming the reason, counted as
    resolver_shed_queries_total{reason="client_quota"}. (Without per-client quotas the flood fills the table and
    127.0.0.3 gets SERVFAIL.)"""
    auth.set_behaviour("flood.bounds.test", "silent")
    for i in range(OWN):
        auth.add(f"own{i}.fair.bounds.test", "A", f"192.0.2.{i + 1}")
    # Long timeouts: the flood's questions stay in the table for the whole test.
    server = resolver_factory({"upstream_timeout": 30, "query_timeout": 60}, metrics=True)
    shed = flood(server, auth)
    assert len(shed) + flood_seen(auth) >= FLOOD, "the flood was not all accounted for"
    assert flood_seen(auth) <= ADDRESS_QUOTA
    sample = dns.message.from_wire(shed[0])
    assert sample.rcode() == dns.rcode.SERVFAIL
    assert [o.code for o in sample.options if o.otype == dns.edns.EDE] == [0]
    for i in range(OWN):
        reply = query(server.port, f"own{i}.fair.bounds.test", source=NEIGHBOUR, timeout=5.0)
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply, "A") == [f"192.0.2.{i + 1}"], reply
    assert metric(server, "resolver_shed_queries_total", reason="client_quota") >= FLOOD - ADDRESS_QUOTA


def flood_seen(auth: AuthServer) -> int:
    """Distinct flood names the upstream has been asked (a resolver may ask one more than once)."""
    with auth._cond:
        return len({q.name for q in auth.queries if q.name.endswith(".flood.bounds.test")})


def flood(server: ResolverProcess, auth: AuthServer) -> list[bytes]:
    """Send FLOOD unique names from FLOODER, a batch at a time; return the replies it got (the shed ones)."""
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((FLOODER, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.settimeout(0.2)
        sent = 0
        while sent < FLOOD:
            for i in range(sent, min(FLOOD, sent + BATCH)):
                packet = make_query(f"f{i}.flood.bounds.test").to_wire()
                sock.sendto(struct.pack("!H", i & 0xFFFF) + packet[2:], ("127.0.0.1", server.port))
            sent = min(FLOOD, sent + BATCH)
            quiet = 0  # rounds in a row without a reply (each waits at most the socket's timeout)
            while quiet < 100 and len(replies) + flood_seen(auth) < sent:
                try:
                    replies.append(sock.recv(65535))
                    quiet = 0
                except TimeoutError:
                    quiet += 1
    return replies
