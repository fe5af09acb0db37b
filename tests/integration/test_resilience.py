"""When upstreams fail: serve-stale (RFC 8767), prefetch of popular names, upstream strategies."""

from __future__ import annotations

import time

import dns.edns
import dns.rcode

from tests.integration.test_metrics import by_label, parse_samples
from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, addresses, wait_for


def test_stale_answer_when_every_upstream_fails(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    auth.add("short.example.test", "A", "192.0.2.44", ttl=1)
    server = resolver_factory({"upstream_timeout": 0.3, "query_timeout": 1.0}, metrics=True)
    assert addresses(server.query("short.example.test", "A"), "A") == ["192.0.2.44"]
    auth.set_behaviour("example.test", "silent")
    time.sleep(1.5)  # let the one-second TTL run out (wall time must pass; nothing to wait on)
    reply = server.query("short.example.test", "A", timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply, "A") == ["192.0.2.44"]
    assert reply.answer[0].ttl == 30  # RFC 8767's recommended stale TTL
    assert [o.code for o in reply.options if o.otype == dns.edns.EDE] == [3]  # "Stale Answer"
    assert auth.count("short.example.test", "A") >= 2, "the resolver did not try upstream first"
    # A name never cached still gets SERVFAIL, promptly.
    assert server.query("never.example.test", "A", timeout=5).rcode() == dns.rcode.SERVFAIL
    outcomes = by_label(parse_samples(server.metrics_text()), "resolver_queries_total", "outcome")
    assert outcomes["stale"] == 1.0


def test_stale_answers_can_be_switched_off(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    auth.add("short2.example.test", "A", "192.0.2.45", ttl=1)
    server = resolver_factory({"upstream_timeout": 0.3, "query_timeout": 1.0, "cache": {"stale_max_age": 0}})
    assert addresses(server.query("short2.example.test", "A"), "A") == ["192.0.2.45"]
    auth.set_behaviour("example.test", "silent")
    time.sleep(1.5)
    assert server.query("short2.example.test", "A", timeout=5).rcode() == dns.rcode.SERVFAIL


def test_popular_entry_is_refreshed_before_it_expires(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    auth.add("hot.example.test", "A", "192.0.2.46", ttl=4)
    server = resolver_factory({"cache": {"prefetch_fraction": 0.75, "prefetch_min_hits": 2}})
    for _ in range(3):
        assert addresses(server.query("hot.example.test", "A"), "A") == ["192.0.2.46"]
    assert auth.count("hot.example.test", "A") == 1
    time.sleep(1.2)  # past 1/4 of the TTL: inside the prefetch window
    assert addresses(server.query("hot.example.test", "A"), "A") == ["192.0.2.46"]  # from the cache, at once
    assert wait_for(lambda: auth.count("hot.example.test", "A") == 2, timeout=5)
    time.sleep(3)  # the original entry has expired by now; the refreshed one has not
    assert addresses(server.query("hot.example.test", "A"), "A") == ["192.0.2.46"]
    assert auth.count("hot.example.test", "A") == 2
