"""What counting costs on the hot path: the whole pipeline for a blocked and a cached answer, with the real
counters and with counting switched off. Not in the default run::

    python -m pytest tests/load/test_micro_pipeline.py --benchmark-only --benchmark-group-by=param:kind

Compare the ``counted`` and ``uncounted`` rows of each group: the difference is what metrics cost per query.
"""

from __future__ import annotations

import time
from typing import Any

import dns.message
import pytest

import resolver
from resolver.config.loader import load_config
from resolver.core import wire
from resolver.core.cache import Cache, CacheLimits
from resolver.core.pipeline import Pipeline
from resolver.core.stats import UDP, Stats
from resolver.lists.load import load_policy

pytest.importorskip("pytest_benchmark")


class Uncounted(Stats):
    """Stats whose per-query call does nothing: the baseline."""

    def observe(self, transport: int, qtype: int, outcome: int, seconds: float) -> None:
        pass


def _pipeline(stats: Stats) -> Pipeline:
    policy = load_policy(load_config(None)).policy
    pipe = Pipeline(policy, Cache(CacheLimits()), stats, time.monotonic, time.time)
    # Put one forwarded answer in the cache.
    query = pipe.on_query(dns.message.make_query("www.example.test", "A", use_edns=0).to_wire(), UDP, "127.0.0.1")
    assert isinstance(query, wire.Query)
    reply = dns.message.make_response(dns.message.from_wire(wire.upstream_query(query, 1)))
    reply.answer.append(dns.rrset.from_text("www.example.test.", 3600, "IN", "A", "192.0.2.1"))
    pipe.on_reply(query, reply.to_wire())
    return pipe


@pytest.mark.parametrize("counting", ["counted", "uncounted"])
@pytest.mark.parametrize("kind", ["blocked", "cached"])
def test_pipeline_cost_of_counting(benchmark: Any, kind: str, counting: str) -> None:
    if counting == "uncounted" and resolver.build() == "mypyc":
        pytest.skip("a compiled Stats cannot be subclassed by interpreted code: install with RESOLVER_PURE=1")
    pipe = _pipeline(Stats() if counting == "counted" else Uncounted())
    name = "www.tiktok.com" if kind == "blocked" else "www.example.test"
    packet = dns.message.make_query(name, "A", use_edns=0).to_wire()
    reply = benchmark(pipe.on_query, packet, UDP, "127.0.0.1")
    assert isinstance(reply, bytes)
