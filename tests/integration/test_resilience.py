"""Upstream transports (DNS over TLS, TCP) and strategies, against real upstreams on loopback.

Serve-stale and prefetch are timed by TTLs: they are tested on the injected clock in tests/unit/test_forwarding.py,
and serve-stale end to end (an upstream gone, then a TTL run out) in tests/integration/test_faults.py.
"""

from __future__ import annotations

from pathlib import Path

import dns.edns
import dns.rcode
import pytest

from tests.support.authserver import AuthServer
from tests.support.resolverproc import ResolverFactory, addresses, wait_for
from tests.support.tlsproxy import TlsProxy, make_ca
from tests.support.zone import WWW, WWW_V4, populate

# --------------------------------------------------------------------------------- upstream transports


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"))


def test_dns_over_tls_upstream_with_a_verified_certificate(
    resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = certs
    with TlsProxy(cert, key, ("127.0.0.1", int(auth.address.rsplit(":", 1)[1]))) as proxy:
        server = resolver_factory({"upstream_ca": str(ca)}, upstreams=[f"tls://127.0.0.1:{proxy.port}#dns.test"])
        assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
        assert proxy.handshakes >= 1
        assert auth.count(WWW, "A", transport="tcp") == 1 and auth.count(WWW, "A", transport="udp") == 0


def test_dns_over_tls_reuses_its_connection_and_survives_the_upstream_closing_it(
    resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path]
) -> None:
    """Ten questions, one TLS handshake; the upstream then closes the idle connection, and the next question
    is still answered (on a new connection)."""
    ca, cert, key = certs
    with TlsProxy(cert, key, ("127.0.0.1", int(auth.address.rsplit(":", 1)[1])), idle=1.0) as proxy:
        server = resolver_factory({"upstream_ca": str(ca)}, upstreams=[f"tls://127.0.0.1:{proxy.port}#dns.test"])
        baseline = proxy.handshakes  # the start-up health probe may have opened the connection already
        assert baseline <= 1
        for i in range(10):
            auth.add(f"n{i}.example.test", "A", f"192.0.2.{100 + i}")
            assert addresses(server.query(f"n{i}.example.test", "A"), "A") == [f"192.0.2.{100 + i}"]
        assert proxy.handshakes == 1
        assert wait_for(lambda: proxy.idle_closed == 1, timeout=10)  # the upstream closes the idle connection
        assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
        assert proxy.handshakes == 2
        assert server.stop() == 0, server.stderr_text()  # and it shuts down cleanly with a connection open


@pytest.mark.parametrize("problem", ["wrong name", "untrusted CA"])
def test_dns_over_tls_refuses_a_certificate_it_cannot_verify(
    resolver_factory: ResolverFactory, auth: AuthServer, certs: tuple[Path, Path, Path], problem: str
) -> None:
    ca, cert, key = certs
    with TlsProxy(cert, key, ("127.0.0.1", int(auth.address.rsplit(":", 1)[1]))) as proxy:
        name = "evil.test" if problem == "wrong name" else "dns.test"
        config = {"upstream_timeout": 0.5, "query_timeout": 1.5, **({"upstream_ca": str(ca)}
                                                                    if problem == "wrong name" else {})}
        server = resolver_factory(config, upstreams=[f"tls://127.0.0.1:{proxy.port}#{name}"])
        assert server.query(WWW, "A", timeout=5).rcode() == dns.rcode.SERVFAIL
        assert auth.count(WWW) == 0, "the query went through an unverified TLS connection"


def test_plain_tcp_upstream(resolver_factory: ResolverFactory, auth: AuthServer) -> None:
    server = resolver_factory(upstreams=[f"tcp://{auth.address}"])
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]
    assert auth.count(WWW, "A", transport="tcp") == 1 and auth.count(WWW, "A", transport="udp") == 0


# --------------------------------------------------------------------------------- upstream strategies


def test_parallel_best_asks_two_upstreams_at_once(resolver_factory: ResolverFactory) -> None:
    with AuthServer() as silent, AuthServer() as good:
        populate(good)
        silent.set_behaviour("example.test", "silent")
        server = resolver_factory({"upstream_strategy": "parallel_best", "upstream_timeout": 3.0,
                                   "query_timeout": 4.0}, upstreams=[silent.address, good.address])
        # With one upstream at a time the silent one would hold the answer for its 3 s timeout; the client gives
        # up after 2 s, so an answer at all shows both were asked at once.
        reply = server.query(WWW, "A", timeout=2)
        assert addresses(reply, "A") == [WWW_V4], (reply.to_text(), server.stderr_text()[-2000:])
        # The silent upstream's server thread may record the question just after the good one answered it.
        assert wait_for(lambda: silent.count(WWW, "A") == 1, timeout=2) and good.count(WWW, "A") == 1


def test_random_strategy_spreads_queries(resolver_factory: ResolverFactory) -> None:
    with AuthServer() as one, AuthServer() as two:
        for s in (one, two):
            for i in range(30):
                s.add(f"r{i}.example.test", "A", "192.0.2.70")
        server = resolver_factory({"upstream_strategy": "random"}, upstreams=[one.address, two.address])
        for i in range(30):
            assert addresses(server.query(f"r{i}.example.test", "A"), "A") == ["192.0.2.70"]
        assert one.count_under("example.test") > 0 and two.count_under("example.test") > 0


def test_strict_strategy_uses_the_first_healthy_upstream(resolver_factory: ResolverFactory) -> None:
    with AuthServer() as one, AuthServer() as two:
        for s in (one, two):
            populate(s)
        server = resolver_factory({"upstream_strategy": "strict"}, upstreams=[one.address, two.address])
        for rtype in ("A", "AAAA", "MX"):
            server.query(WWW, rtype)
        assert one.count(WWW) == 3 and two.count(WWW) == 0
