"""A trie over reversed domain labels (com -> tiktok -> www); the most specific entry on the path wins.

Nodes are plain dicts keyed by label bytes. Two int keys, which can never be labels, hold the values: ``HERE``
applies to the node's own name, ``BELOW`` to every name strictly under it. A "subtree" entry sets both. The
lookup is one ``dict.get`` per label of the query, whatever the size of the list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Match = Literal["exact", "subtree", "below"]

HERE = 0
BELOW = 1


class DomainTrie(Generic[T]):
    __slots__ = ("_root", "_size")

    def __init__(self) -> None:
        self._root: dict[object, object] = {}
        self._size = 0

    def __len__(self) -> int:
        """Number of (name, match) entries stored."""
        return self._size

    def insert(self, labels: list[bytes], match: Match, value: T) -> T | None:
        """Store ``value`` for ``labels`` (leftmost first); returns the value it replaced, if any."""
        node = self._root
        for label in reversed(labels):
            child = node.get(label)
            if child is None:
                child = {}
                node[label] = child
            node = child  # type: ignore[assignment]
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
        """The value of the most specific entry that covers the name, or None."""
        node = self._root
        best = None
        last = len(labels) - 1
        for i in range(last, -1, -1):
            node = node.get(labels[i])  # type: ignore[assignment]
            if node is None:
                break
            value = node.get(HERE if i == 0 else BELOW)
            if value is not None:
                best = value
        return best  # type: ignore[return-value]

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
        ``BELOW`` value of the nearest ancestor that has one. Used at build time for rules between names, such as
        "an allow shields everything below it"."""
        stack: list[tuple[dict[object, object], object]] = [(self._root, None)]
        while stack:
            node, inherited = stack.pop()
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
