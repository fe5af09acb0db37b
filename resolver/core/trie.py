"""A trie over reversed domain labels (com -> tiktok -> www); the most specific entry on the path wins.

Two forms. ``DomainTrie`` is the reference: nodes are plain dicts keyed by label bytes, and two int keys, which
can never be labels, hold the values: ``HERE`` applies to the node's own name, ``BELOW`` to every name strictly
under it (a "subtree" entry sets both). ``PackedTrie`` is what a policy serves from: the same trie as one flat
hash table (``resolver.core.table`` builds it from lists of names, without a dict per node). Either lookup
costs one probe per label of the query, whatever the size of the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Generic, Literal, TypeVar

from mypy_extensions import i64

from resolver.core.table import ROOT, TableBuilder

T = TypeVar("T")
Match = Literal["exact", "subtree", "below"]

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


class PackedTrie(Generic[T]):
    """The frozen form a policy serves from: one flat open-addressing table (see ``resolver.core.table``).

    A node is a slot keyed by a 64-bit hash of its path from the root (``hash((parent, label))``, keyed per
    process by Python's SipHash, so nobody can aim collisions at it), compared whole. Values are interned: the
    slot holds the index of a pair, the node's value for its own name and for the names below it (each shared by
    every node with the same claims). The walk is label by label from the top and stops at the first missing
    node, so a lookup costs a few probes whatever the list size.

    Between names the most specific value wins, unless the trie has a ``merge``: then a value is first merged
    with the one it inherits, the (merged) below-value of the nearest ancestor that has one. That is how "an allow
    shields what is below it" works without a pass over the tree at build time: the merged values are made on the
    walk, the first time two values meet, and remembered (names under two entries are few).
    """

    __slots__ = ("_below", "_here", "_hot", "_joins", "_keys", "_mask", "_merge", "_size", "_vix")

    def __init__(self, trie: DomainTrie[T] | None = None) -> None:
        """Pack a ``DomainTrie`` (None: an empty trie); policies are built with ``TableBuilder`` instead."""
        values: list[T | None] = [None]
        index: dict[int, int] = {id(None): 0}
        pairs: dict[tuple[int, int], int] = {(0, 0): 0}
        table = TableBuilder(trie._nodes if trie is not None else 0)
        walk: list[tuple[dict[object, object], int]] = [(trie._root, ROOT)] if trie is not None else []
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
        self._adopt(table, values, [p[0] for p in ordered], [p[1] for p in ordered], None)
        self._size = len(trie) if trie is not None else 0  # the DomainTrie's own count of entries

    @classmethod
    def packed(cls, table: TableBuilder, values: list[T | None], here: list[int], below: list[int],
               merge: Callable[[T, T], T] | None) -> PackedTrie[T]:
        """The trie of a built table. ``here[p]``/``below[p]`` index ``values`` for value pair p (0: None);
        ``merge(own, inherited)`` makes the value a name gets from its own entry and an ancestor's."""
        trie = cls()  # (an empty table of 8 slots, replaced at once: mypyc has no cls.__new__)
        trie._adopt(table, values, here, below, merge)
        return trie

    def _adopt(self, table: TableBuilder, values: list[T | None], here: list[int], below: list[int],
               merge: Callable[[T, T], T] | None) -> None:
        self._keys, self._vix, self._mask, self._size = table._keys, table._values, table._mask, table.size
        self._here = [values[i] for i in here]  # the values themselves: no index to follow on the hot path
        self._below = [values[i] for i in below]
        self._merge = merge
        self._joins: dict[tuple[int, int], T] = {}  # (id(own), id(inherited)) -> their merge
        self._hot = (self._keys, self._vix, self._mask, self._here, self._below)  # one load instead of five

    def __len__(self) -> int:
        """Number of nodes with values (entries)."""
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes held by the table arrays (the values are shared with the policy)."""
        return 8 * len(self._keys) + self._vix.itemsize * len(self._vix)  # (keys: 8-byte i64s)

    def _slot(self, h: i64) -> i64:
        """The slot holding ``h``, or the empty slot where it would go (linear probing)."""
        keys = self._keys
        mask: i64 = self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k == h or not k:
                return i
            i = (i + 1) & mask

    def _join(self, own: T, inherited: T) -> T:
        """The value a name gets from its own entry ``own`` under an ancestor's below-value ``inherited``."""
        key = (id(own), id(inherited))  # both stay alive: in the pair lists, or as values of this memo
        joined = self._joins.get(key)
        if joined is None:
            joined = self._joins[key] = self._merge(own, inherited)  # type: ignore[misc]
        return joined

    def lookup(self, labels: list[bytes]) -> T | None:
        """The value of the most specific entry covering the name: the hot path."""
        keys, vix, m, here, below = self._hot
        mask: i64 = m  # (i64: compiled, the probe loop is C arithmetic on the key table's C array)
        best = None
        h: i64 = ROOT
        for i in range(len(labels) - 1, -1, -1):
            h = hash((h, labels[i]))
            j = h & mask
            while True:
                k = keys[j]
                if k == h:
                    break
                if not k:
                    return best
                j = (j + 1) & mask
            value = (below if i else here)[vix[j]]
            if value is not None:
                best = value if best is None or self._merge is None else self._join(value, best)
        return best

    def along(self, labels: list[bytes]) -> list[tuple[int, T]]:
        """Every value that applies to the name, least specific first, as (labels in the entry, value)."""
        found: list[tuple[int, T]] = []
        best = None
        h: i64 = ROOT
        last = len(labels) - 1
        for i in range(last, -1, -1):
            h = hash((h, labels[i]))
            slot = self._slot(h)
            if self._keys[slot] != h:
                break
            value = (self._here if i == 0 else self._below)[self._vix[slot]]
            if value is not None:
                best = value if best is None or self._merge is None else self._join(value, best)
                found.append((last - i + 1, best))
        return found

    def get(self, labels: list[bytes], match: Match) -> T | None:
        """The value stored for exactly this entry (no inheritance from parents)."""
        h: i64 = ROOT
        for label in reversed(labels):
            h = hash((h, label))
        slot = self._slot(h)
        if self._keys[slot] != h:
            return None
        return (self._below if match == "below" else self._here)[self._vix[slot]]


def _keep(old: int, new: int) -> int:
    return new
