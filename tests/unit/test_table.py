"""The packed table a policy serves from, built in bulk from names: it must answer exactly like the dict trie.

``DomainTrie`` is the reference (simple, obviously right); ``TableBuilder`` + ``PackedTrie`` must agree with it
on random lists, through growth and rehashing from the smallest table, for exact, subtree and below entries, for
names claimed several times, and for the between-names merge (an allow shields what is below it) that the packed
trie applies on its walk instead of in a pass over the tree.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import pytest

from resolver.core.builder import _Builder, _merge, build_policy
from resolver.core.policy import (
    SPECIAL_NAMES,
    Bypass,
    Exemption,
    Group,
    GroupSpec,
    ListInput,
    Platform,
    PolicySpec,
    Rule,
    Verdict,
)
from resolver.core.table import ROOT, TableBuilder, chains
from resolver.core.trie import Match, PackedTrie
from tests.support.domaintrie import DomainTrie

WORDS = ["a", "b", "cdn", "www", "tiktok", "example", "co", "uk", "com", "x1", "deep", "_srv", "a-b"]
MATCHES: list[Match] = ["exact", "subtree", "below"]


def random_name(rng: random.Random, most: int = 5) -> str:
    return ".".join(rng.choice(WORDS) for _ in range(rng.randint(1, most)))


def labels(name: str) -> list[bytes]:
    return name.encode().split(b".")


def chain(name: str) -> list[int]:
    """The keys of a name's path, top first, as the lookup computes them."""
    keys, h = [], ROOT
    for label in reversed(labels(name)):
        h = hash((h, label))
        keys.append(h)
    return keys


class Claims:
    """A minimal pair manager, as the policy builder keeps one: values are tuples of rule ids in claim order."""

    def __init__(self) -> None:
        self.values: list[tuple[int, ...] | None] = [None]
        self.index: dict[tuple[int, ...] | None, int] = {None: 0}
        self.here, self.below = [0], [0]
        self.pairs: dict[tuple[int, int], int] = {(0, 0): 0}
        self.codes: dict[int, tuple[int, Match]] = {}

    def value(self, claims: tuple[int, ...] | None) -> int:
        if claims not in self.index:
            self.index[claims] = len(self.values)
            self.values.append(claims)
        return self.index[claims]

    def pair(self, here: tuple[int, ...] | None, below: tuple[int, ...] | None) -> int:
        key = (self.value(here), self.value(below))
        if key not in self.pairs:
            self.pairs[key] = len(self.here)
            self.here.append(key[0])
            self.below.append(key[1])
        return self.pairs[key]

    def code(self, rule: int, match: Match) -> int:
        code = self.pair(None if match == "below" else (rule,), None if match == "exact" else (rule,))
        self.codes[code] = (rule, match)
        return code

    def combine(self, old: int, code: int) -> int:
        rule, match = self.codes[code]
        here, below = self.values[self.here[old]], self.values[self.below[old]]
        if match != "below":
            here = with_rule(here, rule)
        if match != "exact":
            below = with_rule(below, rule)
        return self.pair(here, below)

    def packed(self, table: TableBuilder,
               merge: Callable[[tuple[int, ...], tuple[int, ...]], tuple[int, ...]] | None = None,
               ) -> PackedTrie[tuple[int, ...]]:
        return PackedTrie.packed(table, self.values, self.here, self.below, merge)


def with_rule(claims: tuple[int, ...] | None, rule: int) -> tuple[int, ...]:
    return (rule,) if claims is None else claims if rule in claims else (*claims, rule)


def build_both(entries: list[tuple[str, Match, int]], runs: int = 7,
               ) -> tuple[DomainTrie[tuple[int, ...]], TableBuilder, Claims]:
    """The same entries into the reference trie (one by one) and into a table (in runs of names per rule)."""
    reference: DomainTrie[tuple[int, ...]] = DomainTrie()
    for name, match, rule in entries:
        reference.update(labels(name), match, lambda old, r=rule: with_rule(old, r))  # type: ignore[misc]
    table, claims = TableBuilder(), Claims()
    for start in range(0, len(entries), runs):
        batch = entries[start : start + runs]
        for name, match, rule in batch:  # one name per add keeps the claim order of the entries
            table.add([name], claims.code(rule, match), claims.combine)
    return reference, table, claims


def test_chains_are_the_keys_the_lookup_computes() -> None:
    rng = random.Random(1)
    names = [random_name(rng) for _ in range(500)]
    entries, ancestors = chains(names)
    assert sorted(entries) == sorted(chain(n)[-1] for n in names)
    assert ancestors == {key for n in names for key in chain(n)[:-1]}
    assert chains([]) == ([], set())


def test_chains_with_the_memo_of_top_labels_skip_the_tops_already_in_the_table() -> None:
    """``TableBuilder.add`` passes its memo of top-level nodes: their keys come from it and are not ancestors again."""
    rng = random.Random(2)
    first, second = [random_name(rng) for _ in range(300)], [random_name(rng) for _ in range(300)]
    tops: dict[bytes, int] = {}
    entries, ancestors = chains(first, tops)
    assert (entries, ancestors) == chains(first)
    assert tops == {labels(n)[-1]: chain(n)[0] for n in first}
    entries, ancestors = chains(second, tops)
    plain_entries, plain_ancestors = chains(second)
    assert entries == plain_entries
    assert ancestors == plain_ancestors - {chain(n)[0] for n in first}


@pytest.mark.parametrize("seed", range(5))
def test_packed_table_answers_like_the_dict_trie(seed: int) -> None:
    rng = random.Random(seed)
    entries = [(random_name(rng), rng.choice(MATCHES), rng.randrange(1, 6)) for _ in range(3000)]
    reference, table, claims = build_both(entries)
    assert table.capacity >= 3000 and table.nodes * 3 <= table.capacity * 2  # grew from 8 slots, at most 2/3 full
    packed = claims.packed(table)
    assert len(packed) == len(reference)
    for _ in range(20000):
        name = [rng.choice(WORDS).encode() for _ in range(rng.randint(1, 7))]
        assert packed.lookup(name) == reference.lookup(name), name
        assert packed.along(name) == reference.along(name), name
    for name, match, _ in entries:
        assert packed.get(labels(name), match) == reference.get(labels(name), match)
    assert packed.lookup([]) is None and packed.along([]) == []


def test_bulk_runs_equal_one_by_one() -> None:
    """A run of names of one rule is one ``add``; the table it makes is the one made name by name."""
    rng = random.Random(9)
    names = [random_name(rng) for _ in range(2000)]
    one, one_claims = TableBuilder(), Claims()
    for name in names:
        one.add([name], one_claims.code(1, "subtree"), one_claims.combine)
    bulk, bulk_claims = TableBuilder(), Claims()
    bulk.add(names, bulk_claims.code(1, "subtree"), bulk_claims.combine)
    assert (bulk.nodes, bulk.size) == (one.nodes, one.size)
    first, second = one_claims.packed(one), bulk_claims.packed(bulk)
    for _ in range(5000):
        name = [rng.choice(WORDS).encode() for _ in range(rng.randint(1, 6))]
        assert first.lookup(name) == second.lookup(name)


def test_value_indices_widen_past_a_byte() -> None:
    """More distinct claim sets than 255 (many lists overlapping) widen the value index array, keys stay put."""
    rng = random.Random(3)
    entries = [(f"n{i % 400}.{rng.choice(WORDS)}.test", "subtree", 1 + i % 23) for i in range(6000)]
    reference, table, claims = build_both(entries, runs=1)  # type: ignore[arg-type]
    assert len(claims.here) > 256 and table._values.typecode != "B"
    packed = claims.packed(table)
    for name, _, _ in entries:
        assert packed.lookup(labels(name)) == reference.lookup(labels(name))
        assert packed.lookup(labels("x." + name)) == reference.lookup(labels("x." + name))


@pytest.mark.parametrize("seed", range(3))
def test_the_merge_on_the_walk_equals_the_rewrite_of_the_tree(seed: int) -> None:
    """``DomainTrie.rewrite`` (a pass over every node, what the builder did) and the packed trie's merge on the
    walk give every name the same value, and ``along`` the same steps."""
    rng = random.Random(seed)

    def merge(own: tuple[int, ...], inherited: tuple[int, ...]) -> tuple[int, ...]:
        return inherited if inherited[-1] % 2 == 0 and own[0] % 3 else own  # some shield, some do not

    entries = [(random_name(rng), rng.choice(MATCHES), rng.randrange(1, 9)) for _ in range(2000)]
    reference, table, claims = build_both(entries)
    reference.rewrite(lambda own, up: own if up is None else merge(own, up))
    packed = claims.packed(table, merge)
    for _ in range(20000):
        name = [rng.choice(WORDS).encode() for _ in range(rng.randint(1, 7))]
        assert packed.lookup(name) == reference.lookup(name), name
        assert packed.along(name) == reference.along(name), name


# ------------------------------------------------------------------------------------ through the policy builder


def platform(pid: str, category: str, *domains: str) -> Platform:
    return Platform(pid, pid.title(), category, "Owner", domains, f"/lists/{pid}.yaml")


def reference_trie(spec: PolicySpec, platforms: list[Platform], lists: list[ListInput],
                   groups: tuple[Group, ...], exemptions: tuple[Exemption, ...]) -> DomainTrie[tuple[Verdict, ...]]:
    """What the builder did before the packed table: claims in a DomainTrie, then a rewrite pass."""
    builder = _Builder(groups, exemptions, 0)
    trie: DomainTrie[tuple[Verdict, ...]] = DomainTrie()

    def add(name: str, match: Match, rule: Rule) -> None:
        trie.update(labels(name), match, lambda old: builder._with(old, rule))

    for name, match, reply, switch, why in SPECIAL_NAMES:
        if getattr(spec.bypass, switch):
            add(name, match, Rule("special", reply, f"bypass.{switch}", text=why))
    for p in platforms:
        for domain in p.domains:
            add(domain, "subtree", Rule("platform", "block", p.source, p))
    for i, parsed in enumerate(lists):
        for domain, match, action in parsed.entries:
            add(domain, match, Rule("list", action, parsed.source, list_name=parsed.name or f"list{i}"))
    for domain in spec.allow_domains:
        add(domain, "subtree", Rule("allow_domains", "allow", f"{spec.where}.allow_domains"))
    if builder.needs_pass:
        trie.rewrite(lambda own, up: own if up is None else _merge(own, up))
    return trie


def shown(verdicts: tuple[Verdict, ...] | None) -> list[tuple[object, ...]] | None:
    if verdicts is None:
        return None
    return [(v.action, v.rule, v.rules, v.reason, v.label, v.mode, v.group) for v in verdicts]


@pytest.mark.parametrize("seed", range(4))
def test_policy_from_bulk_runs_decides_like_the_dict_trie_builder(seed: int) -> None:
    rng = random.Random(seed)
    platforms = [platform(f"p{i}", rng.choice(["social", "messaging", "maps", "news"]),
                          *sorted({random_name(rng, 3) + ".test" for _ in range(30)})) for i in range(6)]
    actions = ["block", "allow", "nxdomain", "nodata"]
    raw = [[(random_name(rng) + ".test", rng.choice(MATCHES), rng.choice(actions)) for _ in range(800)]
           for _ in range(3)]
    raw[0] += [("use-application-dns.net", "subtree", "allow"), ("resolver.arpa", "exact", "block")]
    lists = [ListInput(f"/l/{i}.txt", entries, f"l{i}") for i, entries in enumerate(raw)]
    spec = PolicySpec(groups=(GroupSpec("default", ("social", "l0")), GroupSpec("team", ("messaging",), ("l1",))),
                      allow_domains=tuple(sorted({random_name(rng, 2) + ".test" for _ in range(10)})),
                      bypass=Bypass(doh_servers=False))
    policy = build_policy(platforms, lists, spec)
    reference = reference_trie(spec, platforms, lists, policy.groups, policy.exemptions)
    names = [labels(random_name(rng, 6) + ".test") for _ in range(8000)]
    names += [labels(d) for p in platforms for d in p.domains] + [labels(e[0]) for e in raw[0]]
    names += [labels(n) for n in ("use-application-dns.net", "x.resolver.arpa", "resolver.arpa", "mask.icloud.com")]
    for name in names:
        assert shown(policy.trie.lookup(name)) == shown(reference.lookup(name)), name
        assert [(d, shown(v)) for d, v in policy.trie.along(name)] == [
            (d, shown(v)) for d, v in reference.along(name)], name
    assert policy.trie._joins, "no name sat under two entries: the merge on the walk went untested"


class Bulk:
    """A ``BulkList`` over entries in memory: runs of up to ``size`` consecutive entries of one match and action."""

    def __init__(self, entries: list[tuple[str, Match, str]], size: int) -> None:
        self.entries, self.size, self.read = entries, size, 0

    def runs(self) -> Iterator[tuple[Match, str, Sequence[str]]]:
        run: list[str] = []
        kind: tuple[Match, str] | None = None
        for name, match, action in self.entries:
            if (match, action) != kind or len(run) >= self.size:
                if run and kind is not None:
                    yield (*kind, run)
                kind, run = (match, action), []
            run.append(name)
            self.read += 1
        if run and kind is not None:
            yield (*kind, run)

    def projected(self) -> int:
        return len(self.entries) if self.read else 0

    def digest(self) -> str:
        return "d1"


def test_a_bulk_list_builds_the_policy_its_entries_build() -> None:
    rng = random.Random(11)
    entries: list[tuple[str, Match, str]] = [
        (random_name(rng) + ".test", rng.choice(MATCHES), rng.choice(["block", "allow", "nxdomain"]))
        for _ in range(5000)]
    spec = PolicySpec(groups=(GroupSpec("default", ("social",)),), bypass=Bypass(doh_servers=False))
    platforms = [platform("p", "social", "tiktok.com", "b.test")]
    eager = build_policy(platforms, [ListInput("/l/a.txt", entries, "a", "d1")], spec)
    for size in (1, 7, 5000):
        bulk = build_policy(platforms, [ListInput("/l/a.txt", name="a", bulk=Bulk(entries, size))], spec)
        assert bulk.version == eager.version and len(bulk.trie) == len(eager.trie)
        for _ in range(3000):
            name = labels(random_name(rng, 6) + ".test")
            assert shown(bulk.trie.lookup(name)) == shown(eager.trie.lookup(name)), name
