"""Prometheus /metrics after known traffic: every query counted once, by outcome, platform and duration."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator

import dns.rcode
import pytest

from tests.support.authserver import AuthServer
from tests.support.blocklists import load_platforms
from tests.support.resolverproc import ResolverFactory, ResolverProcess, addresses, wait_for
from tests.support.zone import MAIL, MISSING, WWW, WWW_V4, populate

Sample = tuple[str, dict[str, str], float]
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> list[Sample]:
    """(sample name, labels, value) for every sample in a Prometheus text exposition."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:  # prometheus_client is a dependency; parse by hand only if it is missing
        samples: list[Sample] = []
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m and not line.startswith("#"):
                samples.append((m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
        return samples
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def by_label(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    """Sum of the samples called ``name``, grouped by ``label`` (summing over every other label)."""
    out: dict[str, float] = defaultdict(float)
    for sname, labels, value in samples:
        if sname == name:
            out[labels.get(label, "")] += value
    return dict(out)


def total(samples: list[Sample], name: str) -> float:
    return sum(value for sname, _, value in samples if sname == name)


@pytest.fixture(scope="module")
def upstream() -> Iterator[AuthServer]:
    with AuthServer() as s:
        populate(s)
        s.add("dead.example.test", "A", "192.0.2.200")
        s.set_behaviour("dead.example.test", "silent")
        yield s


@pytest.fixture(scope="module")
def traffic(module_resolver_factory: ResolverFactory, upstream: AuthServer) -> ResolverProcess:
    """A fresh server with metrics, after exactly this traffic (10 queries):

    blocked 4 (TikTok 3: two UDP, one TCP; Telegram's t.me 1), forwarded 3, cached 2, error 1.
    """
    server = module_resolver_factory(
        {"upstream_timeout": 0.5, "query_timeout": 1.5}, upstreams=[upstream.address], metrics=True
    )
    assert addresses(server.query("www.tiktok.com", "A"), "A") == ["0.0.0.0"]
    assert addresses(server.query("tiktok.com", "AAAA"), "AAAA") == ["::"]
    assert addresses(server.query("m.tiktok.com", "A", tcp=True), "A") == ["0.0.0.0"]
    assert addresses(server.query("t.me", "A"), "A") == ["0.0.0.0"]
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]  # forwarded
    assert server.query(MAIL, "MX", tcp=True).rcode() == dns.rcode.NOERROR  # forwarded
    assert server.query(MISSING, "A").rcode() == dns.rcode.NXDOMAIN  # forwarded
    assert addresses(server.query(WWW, "A"), "A") == [WWW_V4]  # cached
    assert server.query(MISSING, "A").rcode() == dns.rcode.NXDOMAIN  # cached (negative)
    assert server.query("dead.example.test", "A", timeout=5).rcode() == dns.rcode.SERVFAIL  # error
    assert upstream.count(WWW, "A") == 1 and upstream.count(MISSING, "A") == 1
    return server


def platform_of(domain: str) -> str:
    found = [p.id for p in load_platforms().values() if domain in p.domains]
    assert len(found) == 1, f"{domain} is listed by {found}"
    return found[0]


EXPECTED_OUTCOMES = {"blocked": 4.0, "forwarded": 3.0, "cached": 2.0, "error": 1.0}
TOTAL_QUERIES = 10.0


def _settled(server: ResolverProcess) -> list[Sample]:
    """Scrape until the query counter shows all the traffic (metrics may lag the reply by a moment)."""
    latest: list[list[Sample]] = [[]]

    def done() -> bool:
        latest[0] = parse_samples(server.metrics_text())
        return (
            total(latest[0], "resolver_queries_total") >= TOTAL_QUERIES
            and total(latest[0], "resolver_query_duration_seconds_count") >= TOTAL_QUERIES
        )

    wait_for(done, timeout=5)
    return latest[0]


def test_queries_total_by_outcome(traffic: ResolverProcess) -> None:
    samples = _settled(traffic)
    outcomes = by_label(samples, "resolver_queries_total", "outcome")
    assert {k: v for k, v in outcomes.items() if v} == EXPECTED_OUTCOMES, outcomes


def test_queries_total_by_transport(traffic: ResolverProcess) -> None:
    samples = _settled(traffic)
    transports = by_label(samples, "resolver_queries_total", "transport")
    assert {k: v for k, v in transports.items() if v} == {"udp": 8.0, "tcp": 2.0}, transports


def test_blocked_total_per_platform(traffic: ResolverProcess) -> None:
    samples = _settled(traffic)
    platforms = by_label(samples, "resolver_blocked_total", "platform")
    assert platforms.get("tiktok") == 3.0, platforms
    assert platforms.get(platform_of("t.me")) == 1.0, platforms
    assert sum(platforms.values()) == 4.0, platforms


def test_duration_histogram_counts_every_query(traffic: ResolverProcess) -> None:
    samples = _settled(traffic)
    assert total(samples, "resolver_query_duration_seconds_count") == TOTAL_QUERIES


def test_metrics_labels_never_carry_names_or_addresses(traffic: ResolverProcess) -> None:
    text = traffic.metrics_text()
    for leak in ("tiktok.com", "t.me", "example.test"):
        assert leak not in text, f"{leak!r} appears in /metrics"
