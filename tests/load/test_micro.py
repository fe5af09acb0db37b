"""Micro-benchmarks of the hot path, with pytest-benchmark. Not part of the default run (pytest's testpaths are
tests/unit and tests/integration); run them with::

    python -m pytest tests/load/test_micro.py --benchmark-only

Each benchmark goes through the narrowest public door it can, so that changes to the policy internals do not
break it: the wire parser and the trie directly, the cache through ``prepare``/``put``/``get``/``render``, and
the sinkhole through the same config loading that ``resolver serve --blocklist FILE`` uses.
"""

from __future__ import annotations

import random
from typing import Any

import dns.message
import dns.rrset
import pytest

from resolver.core import cache as cache_mod
from resolver.core import wire
from resolver.core.cache import Cache, CacheLimits
from tests.support.domaintrie import DomainTrie, pack

pytest.importorskip("pytest_benchmark")

LIST_SIZE = 100_000
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _domains(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        seen.add("".join(rng.choices(_LETTERS, k=rng.randint(5, 14))) + "." + rng.choice(("com", "net", "org", "io")))
    return sorted(seen)


def _labels(name: str) -> list[bytes]:
    return name.lower().encode().split(b".")


def _query(name: str, rtype: str = "A") -> bytes:
    return dns.message.make_query(name, rtype, use_edns=0, payload=1232).to_wire()


@pytest.fixture(scope="module")
def domains() -> list[str]:
    return _domains(LIST_SIZE)


# ------------------------------------------------------------------------------------------------------ wire


@pytest.mark.parametrize("name", ["example.com", "a.very.long.name.under.some.cdn.example.net"])
def test_parse_query(benchmark: Any, name: str) -> None:
    packet = _query(name)
    query = benchmark(wire.parse_query, packet)
    assert query.labels == _labels(name)


# ------------------------------------------------------------------------------------------------------ trie


@pytest.fixture(scope="module")
def trie(domains: list[str]) -> DomainTrie[str]:
    built: DomainTrie[str] = DomainTrie()
    for domain in domains:
        built.insert(_labels(domain), "subtree", "block")
    return built


@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_trie_lookup_100k(benchmark: Any, trie: DomainTrie[str], domains: list[str], kind: str) -> None:
    """``DomainTrie.lookup``: the dict-of-dicts trie the policy is built in."""
    labels = _labels(_trie_name(domains, kind))
    assert benchmark(trie.lookup, labels) == ("block" if kind == "hit" else None)


@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_packed_trie_lookup_100k(benchmark: Any, trie: DomainTrie[str], domains: list[str], kind: str) -> None:
    """``PackedTrie.lookup``, when the policy serves from a packed copy of the trie (skipped where it does not)."""
    packed = pack(trie)
    labels = _labels(_trie_name(domains, kind))
    assert benchmark(packed.lookup, labels) == ("block" if kind == "hit" else None)


def _trie_name(domains: list[str], kind: str) -> str:
    return f"www.cdn.{domains[len(domains) // 2]}" if kind == "hit" else "www.cdn.not-listed-anywhere.example"


# ----------------------------------------------------------------------------------------------------- cache


def test_cache_hit(benchmark: Any) -> None:
    """``Cache.get`` then ``render``: what a cached answer costs, header to TTL ageing."""
    request = dns.message.make_query("www.example.com", "A", use_edns=0, payload=1232)
    upstream = dns.message.make_response(request)
    upstream.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
    query = wire.parse_query(request.to_wire())
    cache = Cache(CacheLimits())
    cache.put(query.cache_key, cache_mod.prepare(upstream.to_wire(), query, 0.0, cache.limits))

    def hit() -> bytes:
        entry = cache.get(query.cache_key, 10.0)
        assert entry is not None
        return cache_mod.render(entry, query, 10.0)

    reply = dns.message.from_wire(benchmark(hit))
    assert reply.id == request.id
    assert reply.answer[0].ttl == 290


# -------------------------------------------------------------------------------------------------- sinkhole


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory, domains: list[str]) -> Any:
    """A policy built from a 100k-domain list the way ``resolver serve -c CFG --blocklist FILE`` builds it."""
    from resolver.config.loader import load_config, with_overrides
    from resolver.lists.load import load_policy

    directory = tmp_path_factory.mktemp("micro")
    listed = directory / "bench-list.txt"
    listed.write_text("\n".join(domains) + "\n")
    config_file = directory / "resolver.yaml"
    config_file.write_text("policy:\n  block: []\n")
    config = with_overrides(load_config(config_file), blocklists=[str(listed)])
    return load_policy(config).policy


@pytest.mark.parametrize("rtype", ["A", "HTTPS"])
def test_sinkhole_reply(benchmark: Any, policy: Any, domains: list[str], rtype: str) -> None:
    """``Policy.blocked_reply`` for a listed name (the lookup is done once, outside the timing)."""
    query = wire.parse_query(_query(f"www.{domains[0]}", rtype))
    verdict = policy.lookup(query.labels)
    assert verdict is not None
    reply = dns.message.from_wire(benchmark(policy.blocked_reply, query, verdict))
    if rtype == "A":
        assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["0.0.0.0"]
    else:
        assert not reply.answer
