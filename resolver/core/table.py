"""The build side of ``PackedTrie``: a flat hash table filled straight from lists of names, in bulk.

A node of the trie is one slot of an open-addressing table (linear probing), keyed by the hash of its path from
the root, ``hash((parent's key, label))``: the same chain the lookup computes label by label. ``keys`` holds the
key (0: an empty slot), ``values`` at the same slot the index of the node's (here, below) value pair, or 0 for
a node that is only the ancestor of entries. A few bytes a slot, at most 2/3 of the slots used, instead of a
dict and a bytes object per label; a list is never held as a dict trie first.

``keys`` is a ``vec[i64]`` from ``librt`` (mypyc's runtime library), not an ``array``: compiled, a probe reads it
as a C array, with no int object made per read, which makes a big list's inserts much cheaper; interpreted, both
cost the same (tests/load/RESULTS.md has the numbers).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection, Sequence
from itertools import compress, repeat
from operator import eq
from typing import Final

from librt.vecs import vec
from mypy_extensions import i64

ROOT: Final = 1  # the key of the root. A node whose key is 0 (1 in 2**64) reads as an empty slot: the lookup finds it
# as if present without values, so its subtree is still found.
# The table doubles before it is more than 2/3 full: every walk ends with a probe for a name that is not there,
# and that probe's length grows fast with the load (a fuller table was measurably slower).
_LOAD_NUM: Final = 2
_LOAD_DEN: Final = 3
_NOT_SEPARATORS: Final = bytes(sorted(set(range(256)) - set(b".\n")))
_WIDER: Final = {"B": "H", "H": "I", "I": "L"}  # value-index typecodes, widened as a policy needs more value pairs

Combine = Callable[[int, int], int]
"""(pair already on a node, pair of an entry added to it) -> the pair of both: how a builder merges claims."""


def chains(names: Sequence[str], tops: dict[bytes, int] | None = None) -> tuple[list[int], set[int]]:
    """The key of each name's node, and the keys of all their ancestors (deduplicated), computed in bulk.

    Names are lowercase ASCII without a trailing dot. Names with the same number of labels are one join and one
    split, and each level of their chains one ``map(hash, zip(parents, labels))``: the work per name stays in C.
    The names are told apart by their dots, read off the joined text in one pass (``str.count`` per name, and
    grouping by ``int.__eq__``, cost as much as the rest of this).

    ``tops`` (top label -> key) is the builder's memo of the top-level nodes already in its table: their keys are
    looked up rather than hashed again, and they are not returned as ancestors again; the new ones are added.
    """
    if not names:
        return [], set()
    joined = "\n".join(names).encode("ascii")
    shapes = joined.translate(None, _NOT_SEPARATORS).split(b"\n")  # each name's dots: b"", b".", b"..", …
    kinds = set(shapes)
    known = {} if tops is None else tops
    entries: list[int] = []
    ancestors: set[int] = set()
    for dots in sorted(kinds, reverse=True):  # one-label names last: a top label they are is an ancestor first
        count = len(dots)
        if len(kinds) == 1:
            labels = joined.replace(b"\n", b".").split(b".")
        else:
            labels = ".".join(compress(names, map(eq, shapes, repeat(dots)))).encode("ascii").split(b".")
        width = count + 1
        top = labels[count::width]
        try:
            keys = list(map(known.__getitem__, top))
        except KeyError:  # a few top labels new to this table: each hashed once
            fresh = {label: hash((ROOT, label)) for label in set(top) if label not in known}
            known.update(fresh)
            if count:  # (a name of one label is its own node: an entry, not an ancestor)
                ancestors.update(fresh.values())
            keys = list(map(known.__getitem__, top))
        if not count:
            entries += keys
            continue
        for level in range(count - 1, 0, -1):
            keys = list(map(hash, zip(keys, labels[level::width], strict=True)))
            ancestors.update(keys)
        entries += map(hash, zip(keys, labels[::width], strict=True))
    return entries, ancestors


def zeros(n: int) -> vec[i64]:
    """An all-empty key table of ``n`` slots."""
    return vec[i64](repeat(0, n), capacity=n)


class TableBuilder:
    """Fills the table as names stream in; the table is all that grows (``PackedTrie.packed`` serves it).

    The table doubles, re-placing every key, before it gets more than 2/3 full; ``reserve`` lets a caller who can
    project the final size grow it early, while there are few keys to re-place.
    """

    __slots__ = ("_keys", "_mask", "_tops", "_values", "nodes", "size")

    def __init__(self, expected: int = 0) -> None:
        self._keys = zeros(8)
        self._values = array("B", [0]) * 8
        self._mask = 7
        self._tops: dict[bytes, int] = {}  # top label -> key, for the top-level nodes in the table (see chains)
        self.nodes = 0  # occupied slots
        self.size = 0  # nodes with values: the entries
        self.reserve(expected)

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def reserve(self, nodes: int, pairs: int = 0) -> None:
        """Make room for ``nodes`` more nodes, and for value pairs numbered up to ``pairs``."""
        capacity = self._mask + 1
        while (self.nodes + nodes) * _LOAD_DEN > capacity * _LOAD_NUM:
            capacity *= 2
        if capacity != self._mask + 1:
            self._rehash(capacity)
        while pairs >= 1 << 8 * self._values.itemsize:
            self._widen()

    def _widen(self) -> array[int]:
        """Value indices one size up: a policy whose claims combine in more ways than the current size holds."""
        self._values = array(_WIDER[self._values.typecode], self._values)
        return self._values

    def _rehash(self, capacity: int) -> None:
        old_keys, old_values = self._keys, self._values
        keys = zeros(capacity)
        values = array(old_values.typecode, [0]) * capacity  # (not from bytes(n): a second, transient copy)
        mask: i64 = capacity - 1
        for i in range(len(old_keys)):
            k = old_keys[i]
            if k:
                j = k & mask
                while keys[j]:
                    j = (j + 1) & mask
                keys[j] = k
                values[j] = old_values[i]
        self._keys, self._values, self._mask = keys, values, mask

    def add(self, names: Sequence[str], value: int, combine: Combine) -> None:
        """Insert each name's node with value pair ``value`` (``combine``d with a pair it already has), and each
        missing ancestor."""
        entries, ancestors = chains(names, self._tops)
        self.reserve(len(entries) + len(ancestors), value)
        self.put(ancestors, 0, combine)
        self.put(entries, value, combine)

    def put(self, keys: Collection[int], value: int, combine: Combine) -> None:
        """Insert nodes by key: the one loop in Python per node, so it is kept to a few operations. (Placing the
        keys whose home slot is free with C-level ``map`` passes instead was slower.)"""
        table = self._keys
        mask: i64 = self._mask
        found = 0
        h: i64
        if not value:  # ancestors: most are there already, and the rest have no value to set
            for h in keys:
                j = h & mask
                k = table[j]
                while k:
                    if k == h:
                        found += 1
                        break
                    j = (j + 1) & mask
                    k = table[j]
                else:
                    table[j] = h
            self.nodes += len(keys) - found
            return
        values = self._values
        top = (1 << 8 * values.itemsize) - 1
        promoted = 0
        for h in keys:
            j = h & mask
            k = table[j]
            while k:
                if k == h:
                    found += 1
                    old = values[j]
                    if not old:
                        values[j] = value
                        promoted += 1
                    elif old != value:
                        new = combine(old, value)
                        if new > top:
                            values = self._widen()
                            top = (1 << 8 * values.itemsize) - 1
                        values[j] = new
                    break
                j = (j + 1) & mask
                k = table[j]
            else:
                table[j] = h
                values[j] = value
        added = len(keys) - found
        self.nodes += added
        self.size += added + promoted
