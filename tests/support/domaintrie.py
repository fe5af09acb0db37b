"""The reference trie the tests check the served one against: plain dicts, obviously right, slow.

Nodes are dicts keyed by label bytes; two int keys, which can never be labels, hold the values: ``HERE`` applies
to the node's own name, ``BELOW`` to every name strictly under it (a "subtree" entry sets both). ``pack`` turns
one into the ``PackedTrie`` a policy serves from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Generic, TypeVar

from resolver.core.table import ROOT, TableBuilder
from resolver.core.trie import Match, PackedTrie

T = TypeVar("T")

HERE: Final = 0
BELOW: Final = 1


class DomainTrie(Generic[T]):
    __slots__ = ("_nodes", "_root", "_size")

    def __init__(self) -> None:
        self._root: dict[object, object] = {}
        self._size = 0
        self._nodes = 0

    def __len__(self) -> int:
        """Number of (name, match) entries stored."""
        return self._size

    def _make(self, labels: list[bytes]) -> dict[object, object]:
        node = self._root
        for label in reversed(labels):
            child = node.get(label)
            if child is None:
                child = node[label] = {}
                self._nodes += 1
            node = child  # type: ignore[assignment]
        return node

    def update(self, labels: list[bytes], match: Match, change: Callable[[T | None], T | None]) -> None:
        """Set each slot ``match`` covers to ``change(old value)`` in one walk (None leaves the slot as it is).
        The bulk-building path: one walk per entry instead of a get and an insert."""
        node = self._make(labels)
        fresh = HERE not in node and BELOW not in node
        for key in (HERE, BELOW) if match == "subtree" else (HERE,) if match == "exact" else (BELOW,):
            new = change(node.get(key))  # type: ignore[arg-type]
            if new is not None:
                node[key] = new
        if fresh and (HERE in node or BELOW in node):
            self._size += 1

    def insert(self, labels: list[bytes], match: Match, value: T) -> T | None:
        """Store ``value`` for ``labels`` (leftmost first); returns the value it replaced, if any."""
        node = self._make(labels)
        old: object = None
        keys = (HERE, BELOW) if match == "subtree" else (HERE,) if match == "exact" else (BELOW,)
        for key in keys:
            old = node.get(key, old)
            node[key] = value
        if old is None:
            self._size += 1
        return old  # type: ignore[return-value]

    def get(self, labels: list[bytes], match: Match) -> T | None:
        """The value stored for exactly this entry (not a lookup: no inheritance from parents)."""
        node = self._node(labels)
        if node is None:
            return None
        return node.get(BELOW if match == "below" else HERE)  # type: ignore[return-value]

    def lookup(self, labels: list[bytes]) -> T | None:
        """The value of the most specific entry that covers the name, or None. (Served from PackedTrie, whose
        lookup is the hot path; this one is for building and tests.)"""
        found = self.along(labels)
        return found[-1][1] if found else None

    def along(self, labels: list[bytes]) -> list[tuple[int, T]]:
        """Every value that applies to the name, as (labels of the entry counted from the right, value),
        least specific first; ``lookup`` is the last of them. For ``explain``."""
        node = self._root
        found: list[tuple[int, T]] = []
        last = len(labels) - 1
        for i in range(last, -1, -1):
            child = node.get(labels[i])
            if child is None:
                break
            node = child  # type: ignore[assignment]
            value = node.get(HERE if i == 0 else BELOW)
            if value is not None:
                found.append((last - i + 1, value))  # type: ignore[arg-type]
        return found

    def rewrite(self, merge: Callable[[T, T | None], T]) -> None:
        """Top-down pass: every value becomes ``merge(value, inherited)``, where ``inherited`` is the (rewritten)
        ``BELOW`` value of the nearest ancestor that has one (values with no such ancestor are left alone). Used
        at build time for rules between names, such as "an allow shields everything below it"."""
        stack: list[tuple[dict[object, object], object]] = [(self._root, None)]
        while stack:
            node, inherited = stack.pop()
            if inherited is not None:  # merge(value, None) is always value: skip the call
                for slot in (HERE, BELOW):
                    value = node.get(slot)
                    if value is not None:
                        node[slot] = merge(value, inherited)  # type: ignore[arg-type]
            inherited = node.get(BELOW, inherited)
            for key, child in node.items():
                if isinstance(key, bytes):
                    stack.append((child, inherited))  # type: ignore[arg-type]

    def items(self) -> Iterator[tuple[list[bytes], Match, T]]:
        """Every entry as (labels leftmost first, match, value)."""
        stack: list[tuple[dict[object, object], list[bytes]]] = [(self._root, [])]
        while stack:
            node, path = stack.pop()
            here, below = node.get(HERE), node.get(BELOW)
            if here is not None and here is below:
                yield path, "subtree", here  # type: ignore[misc]
            else:
                if here is not None:
                    yield path, "exact", here  # type: ignore[misc]
                if below is not None:
                    yield path, "below", below  # type: ignore[misc]
            for key, child in node.items():
                if isinstance(key, bytes):
                    stack.append((child, [key, *path]))  # type: ignore[arg-type]

    def _node(self, labels: list[bytes]) -> dict[object, object] | None:
        node = self._root
        for label in reversed(labels):
            child = node.get(label)
            if child is None:
                return None
            node = child  # type: ignore[assignment]
        return node


def pack(trie: DomainTrie[T]) -> PackedTrie[T]:
    """The served form of ``trie``: the same entries in one flat table."""
    values: list[T | None] = [None]
    index: dict[int, int] = {id(None): 0}
    pairs: dict[tuple[int, int], int] = {(0, 0): 0}
    table = TableBuilder(trie._nodes)
    walk: list[tuple[dict[object, object], int]] = [(trie._root, ROOT)]
    while walk:
        node, path = walk.pop()
        for key, child in node.items():
            if key.__class__ is not bytes:
                continue
            pair = []
            for value in (child.get(HERE), child.get(BELOW)):  # type: ignore[attr-defined]
                n = index.get(id(value))
                if n is None:
                    n = index[id(value)] = len(values)
                    values.append(value)
                pair.append(n)
            v = pairs.setdefault((pair[0], pair[1]), len(pairs))
            table.reserve(1, v)
            h = hash((path, key))
            table.put((h,), v, _keep)
            walk.append((child, h))  # type: ignore[arg-type]
    ordered = sorted(pairs, key=pairs.__getitem__)
    packed = PackedTrie.packed(table, values, [p[0] for p in ordered], [p[1] for p in ordered], None)
    packed._size = len(trie)  # entries, as the reference counts them (the table counts every node on a path)
    return packed


def _keep(old: int, new: int) -> int:
    return new
