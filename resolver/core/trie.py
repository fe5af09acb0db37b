"""A trie over reversed domain labels (com -> tiktok -> www); the most specific entry on the path wins.

Nodes are plain dicts keyed by label bytes. Two int keys, which can never be labels, hold the values: ``HERE``
applies to the node's own name, ``BELOW`` to every name strictly under it. A "subtree" entry sets both. The
lookup is one ``dict.get`` per label of the query, whatever the size of the list.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Match = Literal["exact", "subtree", "below"]

HERE = 0
BELOW = 1


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
            node = node.get(labels[i])  # type: ignore[assignment]
            if node is None:
                break
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


_ROOT = 1
_EMPTY = 0


class PackedTrie(Generic[T]):
    """The frozen form a policy serves from: the same trie, packed into three flat arrays.

    Each node is a slot in an open-addressing hash table keyed by a 64-bit hash of its path from the root
    (``hash((parent, label))``, keyed per process by Python's SipHash, so nobody can aim collisions at it).
    Per node that is 16 bytes (key, HERE index, BELOW index) at a load of at most 2/3, instead of a dict and a
    bytes object per label - a million-entry list fits in tens of megabytes. The walk is still label by label
    from the top and stops at the first missing node, so a lookup costs a few probes whatever the list size.
    Values are interned: the arrays hold indices into one list of distinct values.
    """

    __slots__ = ("_below", "_here", "_keys", "_mask", "_size", "_values")

    def __init__(self, trie: DomainTrie[T]) -> None:
        capacity = 8
        while capacity * 2 < trie._nodes * 3:
            capacity *= 2
        self._mask = capacity - 1
        keys = self._keys = array("q", bytes(8 * capacity))
        here_ix = self._here = array("I", bytes(4 * capacity))
        below_ix = self._below = array("I", bytes(4 * capacity))
        values: list[T | None] = [None]
        self._values = values
        self._size = len(trie)
        index: dict[int, int] = {id(None): 0}
        mask = self._mask
        walk: list[tuple[dict[object, object], int]] = [(trie._root, _ROOT)]
        while walk:
            node, path = walk.pop()
            for key, child in node.items():
                if key.__class__ is not bytes:
                    continue
                h = hash((path, key)) or _ROOT
                slot = h & mask
                while keys[slot] != _EMPTY:
                    slot = (slot + 1) & mask
                keys[slot] = h
                for ix, value in ((here_ix, child.get(HERE)), (below_ix, child.get(BELOW))):  # type: ignore[attr-defined]
                    n = index.get(id(value))
                    if n is None:
                        n = index[id(value)] = len(values)
                        values.append(value)
                    ix[slot] = n
                walk.append((child, h))  # type: ignore[arg-type]

    def _slot(self, h: int) -> int:
        """The slot holding ``h``, or the empty slot where it would go (linear probing)."""
        keys, mask = self._keys, self._mask
        i = h & mask
        while True:
            k = keys[i]
            if k in (h, _EMPTY):
                return i
            i = (i + 1) & mask

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes held by the table arrays (the values are shared with the policy)."""
        return sum(a.itemsize * len(a) for a in (self._keys, self._here, self._below))

    def lookup(self, labels: list[bytes]) -> T | None:
        """The value of the most specific entry covering the name: the hot path."""
        keys, mask = self._keys, self._mask
        best = 0
        h = _ROOT
        for i in range(len(labels) - 1, -1, -1):
            h = hash((h, labels[i])) or _ROOT
            j = h & mask
            while True:
                k = keys[j]
                if k == h:
                    break
                if k == _EMPTY:
                    return self._values[best]
                j = (j + 1) & mask
            value = self._here[j] if i == 0 else self._below[j]
            if value:
                best = value
        return self._values[best]

    def along(self, labels: list[bytes]) -> list[tuple[int, T]]:
        """Every value that applies to the name, least specific first, as (labels in the entry, value)."""
        found: list[tuple[int, T]] = []
        h = _ROOT
        last = len(labels) - 1
        for i in range(last, -1, -1):
            h = hash((h, labels[i])) or _ROOT
            slot = self._slot(h)
            if self._keys[slot] != h:
                break
            value = self._values[self._here[slot] if i == 0 else self._below[slot]]
            if value is not None:
                found.append((last - i + 1, value))
        return found

    def get(self, labels: list[bytes], match: Match) -> T | None:
        """The value stored for exactly this entry (no inheritance from parents)."""
        h = _ROOT
        for label in reversed(labels):
            h = hash((h, label)) or _ROOT
        slot = self._slot(h)
        if self._keys[slot] != h:
            return None
        return self._values[(self._below if match == "below" else self._here)[slot]]
