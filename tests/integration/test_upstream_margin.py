"""Answers under loss and a spoofing margin on the upstream side, through the real server and a loopback upstream
that loses, lowercases, forges or floods replies on purpose (``tests/support/authserver.py``).

Each test says what the upstream does and what the client sees. Client timeouts are below ``query_timeout`` (4 s):
an answer inside one of them shows the resolver did not sit out the question's whole deadline. No test measures
how long anything took.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import dns.message
import dns.rcode

from tests.support.authserver import POISON_V4, AuthServer
from tests.support.prom import by_labels, parse_samples
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, make_query, wait_for
from tests.support.zone import WWW, WWW_V4

CLIENT_TIMEOUT = 2.0  # < query_timeout (4 s)
ADDRESS = "192.0.2.80"


def warnings(server: ResolverProcess) -> list[str]:
    """The messages of the WARNING lines the server logged (JSON lines on stderr)."""
    found = []
    for line in server.stderr_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") == "warning":
            found.append(str(record.get("msg")))
    return found


def mismatches(server: ResolverProcess) -> float:
    return sum(by_labels(parse_samples(server.metrics_text()), "resolver_upstream_mismatched_replies_total").values())


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# ------------------------------------------------------------------------------------------------ loss


def test_a_lost_reply_is_retransmitted_with_a_new_id_from_a_new_port(resolver_factory: ResolverFactory,
                                                                     auth: AuthServer) -> None:
    """The only upstream drops its first reply for the name. The client (one try of 2 s) gets the answer: the
    resolver asked again, with another ID from another port, instead of waiting out query_timeout."""
    name = "lossy.example.test"
    auth.add(name, "A", ADDRESS)
    auth.set_behaviour(name, "drop:1")
    server = resolver_factory()
    reply = server.query(name, "A", timeout=CLIENT_TIMEOUT)
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply, "A") == [ADDRESS], reply.to_text()
    seen = [q for q in auth.seen(name) if q.transport == "udp"]
    assert len(seen) >= 2, seen
    assert len({q.id for q in seen}) == len(seen), seen
    assert len({q.port for q in seen}) == len(seen), seen


def test_a_clients_own_retry_joins_the_question_that_is_being_retransmitted(resolver_factory: ResolverFactory,
                                                                            auth: AuthServer) -> None:
    """A phone asks, then asks again (new ID) before any answer: the second ask waits on the same upstream question,
    which is retransmitted after the lost reply, and both asks get the answer under their own ID."""
    name = "retry.example.test"
    auth.add(name, "A", ADDRESS)
    auth.set_behaviour(name, "drop:1")
    server = resolver_factory()
    first, second = make_query(name, "A"), make_query(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.sendto(first.to_wire(), ("127.0.0.1", server.port))
        assert auth.wait_for_queries(1, timeout=5, name=name)  # the first ask is upstream (and lost) now
        sock.sendto(second.to_wire(), ("127.0.0.1", server.port))
        replies = {r.id: r for r in (dns.message.from_wire(sock.recv(65535)) for _ in range(2))}
    assert set(replies) == {first.id, second.id}
    assert all(addresses(r, "A") == [ADDRESS] for r in replies.values()), [r.to_text() for r in replies.values()]


# ------------------------------------------------------------------------------------------- source ports, 0x20


def test_source_ports_span_every_unprivileged_port_and_names_go_out_in_random_case(
        resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    """Enough questions for a dozen sockets (each carries at most 64): their ports are drawn from 1024-65535, not
    from the kernel's ephemeral range, and each name reaches the upstream with its letters in random case."""
    server = resolver_factory()
    names = [f"p{i}.ports.example.test" for i in range(800)]
    for name in names:
        assert server.query(name, "A").rcode() == dns.rcode.NXDOMAIN
    seen = [q for q in auth.queries if q.name.endswith(".ports.example.test") and q.transport == "udp"]
    assert len(seen) >= len(names)
    ports = {q.port for q in seen}
    low, high = ephemeral_range()
    assert len(ports) >= 12, sorted(ports)
    assert min(ports) >= 1024, sorted(ports)
    assert any(not low <= p <= high for p in ports), f"every port in the ephemeral range {low}-{high}: {sorted(ports)}"
    assert all(q.sent_name.lower() == q.name for q in seen)
    assert sum(q.sent_name != q.name for q in seen) > len(seen) * 0.9  # all lowercase by chance: 2^-letters


def test_an_upstream_that_lowercases_the_echo_still_answers_and_is_named_once(resolver_factory: ResolverFactory,
                                                                             auth: AuthServer) -> None:
    """The upstream answers every question but echoes its name in lowercase. Such replies are not taken (a
    spoofer's would not be either), so the first questions go over TCP; after a few the upstream is marked as not
    keeping the case, logged once at WARNING by address, and asked in lowercase from then on."""
    auth.set_behaviour("lc.example.test", "lowercase")
    for i in range(8):
        auth.add(f"n{i}.lc.example.test", "A", ADDRESS)
    server = resolver_factory()
    for i in range(8):
        reply = server.query(f"n{i}.lc.example.test", "A", timeout=CLIENT_TIMEOUT)
        assert addresses(reply, "A") == [ADDRESS], (i, reply.to_text())
    lines = [w for w in warnings(server) if "0x20" in w]
    assert len(lines) == 1 and auth.address in lines[0], warnings(server)
    last = auth.seen("n7.lc.example.test")
    assert last and all(q.sent_name == q.name for q in last)  # lowercase now


def test_a_forged_reply_in_the_wrong_case_is_rejected_and_counted(resolver_factory: ResolverFactory,
                                                                  auth: AuthServer) -> None:
    """Before the honest answer, the upstream's address sends a reply with the right ID and name but not our
    random case, carrying a poisoned address: the client gets the honest answer, the forgery is counted."""
    name = "forged.example.test"
    auth.add(name, "A", ADDRESS)
    auth.set_behaviour(name, "spoof-case")
    server = resolver_factory(metrics=True)
    reply = server.query(name, "A", timeout=CLIENT_TIMEOUT)
    assert addresses(reply, "A") == [ADDRESS], reply.to_text()
    assert wait_for(lambda: mismatches(server) >= 1), server.metrics_text()
    assert [w for w in warnings(server) if "0x20" in w] == []  # one forgery does not turn 0x20 off


# -------------------------------------------------------------------------------------------------- near misses


def test_a_flood_of_wrong_ids_moves_the_question_to_tcp(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    """For each UDP question the upstream's address sends a burst of poisoned replies with wrong IDs and never the
    answer: after a few near misses the resolver asks over TCP and the client gets the true answer."""
    name = "flood.example.test"
    auth.add(name, "A", ADDRESS)
    auth.set_behaviour(name, "wrong-id-flood")
    server = resolver_factory(metrics=True)
    reply = server.query(name, "A", timeout=CLIENT_TIMEOUT)
    assert POISON_V4 not in addresses(reply, "A")
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply, "A") == [ADDRESS], reply.to_text()
    assert auth.count(name, "A", transport="tcp") >= 1
    assert wait_for(lambda: mismatches(server) >= 3), server.metrics_text()


# ------------------------------------------------------------------------------------------------ start-up probe


def test_a_silent_upstream_is_named_in_one_warning_at_start(resolver_factory: ResolverFactory,
                                                           auth: AuthServer) -> None:
    """One upstream answers nothing, not even the health probe; the other is good. The server becomes ready,
    answers through the good one, and warns once, naming the silent one."""
    with AuthServer() as silent:
        silent.set_behaviour(".", "silent")
        silent.set_behaviour("example.test", "silent")
        server = resolver_factory(upstreams=[silent.address, auth.address])
        assert server.wait_stderr("health probe", timeout=5), server.stderr_text()
        reply = server.query(WWW, "A", timeout=CLIENT_TIMEOUT)
        assert addresses(reply, "A") == [WWW_V4]
        probe = [w for w in warnings(server) if "health probe" in w]
        assert len(probe) == 1 and silent.address in probe[0], warnings(server)
        assert all(auth.address not in w for w in warnings(server)), warnings(server)
