"""A trie over reversed domain labels (com -> tiktok -> www); the most specific entry on the path wins.

``PackedTrie`` is what a policy serves from: the trie as one flat hash table (``resolver.core.table`` builds it
from lists of names, without a dict per node). A lookup costs one probe per label of the query, whatever the
size of the list. (The tests keep a plain dict-of-dicts reference, tests/support/domaintrie.py, to check it.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from mypy_extensions import i64

from resolver.core.table import ROOT, TableBuilder

T = TypeVar("T")
Match = Literal["exact", "subtree", "below"]



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

    def __init__(self) -> None:
        """An empty trie; policies are built with ``TableBuilder`` and served through ``packed``."""
        self._adopt(TableBuilder(0), [None], [0], [0], None)

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
