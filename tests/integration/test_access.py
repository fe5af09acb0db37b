"""Not an open resolver: the client access list, the per-client rate limit, and minimal ANY (RFC 8482)."""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.integration.test_metrics import parse_samples, total
from tests.support.authserver import AuthServer
from tests.support.prom import by_labels
from tests.support.resolverproc import ResolverFactory, addresses, query
from tests.support.zone import WWW, WWW_V4


def test_default_access_list_serves_loopback_and_private_clients(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory()
    for source in ("127.0.0.1", "127.0.0.9"):
        assert addresses(query(server.port, WWW, "A", source=source), "A") == [WWW_V4]


def test_clients_outside_the_access_list_are_refused(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    server = resolver_factory({"access": {"allow": ["127.0.0.1/32"]}}, metrics=True)
    reply = query(server.port, WWW, "A", source="127.0.0.2")
    assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
    assert query(server.port, "www.tiktok.com", "A", source="127.0.0.2").rcode() == dns.rcode.REFUSED
    assert auth.count(WWW) == 0, "a refused client's query went upstream"
    assert addresses(query(server.port, WWW, "A", source="127.0.0.1"), "A") == [WWW_V4]
    samples = parse_samples(server.metrics_text())
    refused = sum(v for n, labels, v in samples if n == "resolver_queries_total" and labels["outcome"] == "refused")
    assert refused == 2


def test_access_list_drop_mode_answers_nothing(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory({"access": {"allow": ["127.0.0.1/32"], "action": "drop"}}, metrics=True)
    with pytest.raises(dns.exception.Timeout):
        query(server.port, WWW, "A", source="127.0.0.3", timeout=1.0)
    assert total(parse_samples(server.metrics_text()), "resolver_acl_dropped_packets_total") == 1
    assert addresses(query(server.port, WWW, "A"), "A") == [WWW_V4]


def test_rate_limit_drops_a_flooding_client_but_not_others(resolver_factory: ResolverFactory) -> None:
    # 1 query a second with a burst of 5: a quick run of 20 gets about 5 answers (a few more if the run is slow).
    server = resolver_factory({"rate_limit": {"qps": 1, "burst": 5}}, metrics=True)
    answered = 0
    for i in range(20):
        try:
            query(server.port, f"r{i}.tiktok.com", "A", source="127.0.0.4", timeout=0.3)
            answered += 1
        except dns.exception.Timeout:
            pass
    assert 5 <= answered < 20
    limited = total(parse_samples(server.metrics_text()), "resolver_rate_limited_queries_total")
    assert limited == 20 - answered
    # Another client has its own bucket.
    assert addresses(query(server.port, "www.tiktok.com", "A", source="127.0.0.5"), "A") == ["0.0.0.0"]


def test_rate_limit_truncate_mode_sends_tc(resolver_factory: ResolverFactory) -> None:
    server = resolver_factory({"rate_limit": {"qps": 1, "burst": 1, "action": "truncate"}})
    first = query(server.port, "www.tiktok.com", "A", source="127.0.0.6")
    assert addresses(first, "A") == ["0.0.0.0"]
    second = query(server.port, "www.tiktok.com", "A", source="127.0.0.6")
    assert second.flags & dns.flags.TC and not second.answer
    # TC sends a real client to TCP, which the truncate mode does not limit (a spoofer cannot follow there).
    tcp = query(server.port, "www.tiktok.com", "A", source="127.0.0.6", tcp=True)
    assert addresses(tcp, "A") == ["0.0.0.0"]


def test_any_is_answered_minimally(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    server = resolver_factory()
    reply = query(server.port, WWW, "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.HINFO]
    assert reply.answer[0][0].cpu == b"RFC8482"
    assert auth.count(WWW, "ANY") == 0, "ANY was forwarded"


def test_tcp_connections_are_capped_per_client(resolver_factory: ResolverFactory) -> None:
    import socket

    server = resolver_factory({"tcp": {"max_per_client": 2, "idle_timeout": 5}}, metrics=True)
    held = [socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.7", 0)) for _ in range(2)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.7", 0))
        extra.settimeout(3)
        assert extra.recv(1) == b"", "a third connection from one client was kept open"
        extra.close()
        # Another client is not affected, and the held connections still work.
        assert addresses(query(server.port, "www.tiktok.com", "A", tcp=True, source="127.0.0.8"), "A") == ["0.0.0.0"]
    finally:
        for sock in held:
            sock.close()
    rejected = by_labels(parse_samples(server.metrics_text()), "resolver_tcp_rejected_connections_total", "reason")
    assert rejected == {("access",): 0, ("client",): 1, ("network",): 0, ("total",): 0}
