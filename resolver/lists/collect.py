"""What one parse collects: accepted names in columns, skipped lines, and the RPZ state carried between chunks.

The line parsers and the fast path both write here, so both paths keep and refuse names the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import groupby, repeat
from operator import attrgetter, itemgetter

from resolver.lists.entries import (
    MAX_ALLOW_NAMES,
    MAX_SKIPPED,
    TEXT_CUT,
    Action,
    ListEntry,
    Match,
    SkippedLine,
    normalise_name,
)
from resolver.lists.suffixes import REASON as PUBLIC_SUFFIX
from resolver.lists.suffixes import is_public_suffix

OUTSIDE_ALLOWLIST = "allow rule outside an allow list"


class Collector:
    """What one parse collects, plus the RPZ state that carries from chunk to chunk.

    Entries are kept as columns per (match, action) and built in bulk by ``entries``, or taken chunk by chunk
    as runs of names by ``take``; then (``lines`` false) the fast path does not keep their line numbers.

    Which list it is decides what an entry may do. In an allow list (``allowlist``) every entry allows, whatever
    its rule says: the list names what to let through. In any other list an allow rule (``@@||x^``,
    ``rpz-passthru.``) is skipped: a list fetched to block must not be able to lift a ban. ``allow_names`` keeps
    the names allowed (the first MAX_ALLOW_NAMES) and ``blocking`` counts the rest, in line order on both paths.
    """

    __slots__ = ("allow_names", "allowlist", "blocking", "columns", "first_suffix", "lines", "origin", "owner",
                 "pending", "skipped", "suffixes", "unkept")

    def __init__(self, lines: bool = True, allowlist: bool = False) -> None:
        self.lines = lines
        self.allowlist = allowlist
        self.allow_names: list[str] = []
        self.blocking = 0  # entries whose action is not "allow"
        self.suffixes = 0  # entries skipped as public suffixes, and the first, kept even past MAX_SKIPPED
        self.first_suffix: SkippedLine | None = None
        self.columns: dict[tuple[Match, Action], tuple[list[str], list[int]]] = {}
        self.skipped: list[SkippedLine] = []
        self.unkept = 0
        self.origin = ""  # RPZ $ORIGIN with its trailing dot; "" when there is none
        self.owner = ""  # owner of the last record, for records that begin with blank space
        self.pending: tuple[int, str, list[str]] | None = None  # an RPZ record still inside `( … )`

    def skip(self, line: int, reason: str, text: str) -> None:
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append(SkippedLine(line, reason, text.strip()[:TEXT_CUT]))
        else:
            self.unkept += 1

    def column(self, match: Match, action: Action) -> tuple[list[str], list[int]]:
        col = self.columns.get((match, action))
        if col is None:
            col = self.columns[match, action] = ([], [])
        return col

    def counted(self, action: Action, names: list[str]) -> Action:
        """Count a run of accepted names, in line order, and return the action they take in this list."""
        if self.allowlist or action == "allow":
            room = MAX_ALLOW_NAMES - len(self.allow_names)
            if room > 0:
                self.allow_names += names[:room] if len(names) > room else names
            return "allow"
        self.blocking += len(names)
        return action

    def extend(self, match: Match, action: Action, names: Iterable[str], nums: Iterable[int]) -> None:
        """Keep names already counted (``counted``) and checked: the fast path's."""
        col = self.column(match, action)
        col[0].extend(names)
        if self.lines:
            col[1].extend(nums)

    def add(self, name: str, match: Match, action: Action, line: int, text: str) -> None:
        """Validate one name the slow way and keep it, or record why not."""
        if self.allowlist:
            action = "allow"
        elif action == "allow":
            self.skip(line, OUTSIDE_ALLOWLIST, text)
            return
        try:
            domain = normalise_name(name)
        except ValueError as e:
            self.skip(line, f"invalid name: {e}", text)
            return
        if "." not in domain:  # one stray `com` line must not black-hole (or open) a whole TLD
            self.skip(line, f"refusing to {'allow' if action == 'allow' else 'block'} a top-level domain", text)
            return
        if is_public_suffix(domain):
            self.skip(line, PUBLIC_SUFFIX, text)
            self.suffixes += 1
            if self.first_suffix is None:
                self.first_suffix = SkippedLine(line, PUBLIC_SUFFIX, text.strip()[:TEXT_CUT])
            return
        self.counted(action, [domain])
        names, nums = self.column(match, action)
        names.append(domain)
        nums.append(line)

    def take(self) -> list[tuple[Match, Action, list[str]]]:
        """The names collected since the last call, as runs that share a match and an action, in line order
        where it matters: the claims on one name keep the order of its lines when their actions differ."""
        columns, self.columns = self.columns, {}
        if len({action for _, action in columns}) < 2:  # one rule: the order of its names changes nothing
            return [(match, action, names) for (match, action), (names, _) in columns.items()]
        ordered = sorted((n, match, action, name) for (match, action), (names, nums) in columns.items()
                         for name, n in zip(names, nums, strict=True))  # (only line parsers mix actions)
        return [(match, action, [item[3] for item in run])
                for (match, action), run in groupby(ordered, key=itemgetter(1, 2))]

    def entries(self) -> tuple[ListEntry, ...]:
        """Build all entries with C-level ``map`` calls: slot descriptors skip the frozen ``__init__``, whose
        per-entry cost is most of the start-up budget for a list of a million entries."""
        built: list[ListEntry] = []
        for (match, action), (names, nums) in self.columns.items():
            made = list(map(_object_new, repeat(ListEntry, len(names))))
            values: tuple[Iterable[object], ...] = (names, repeat(match), repeat(action), nums)
            for setter, column in zip(_SETTERS, values, strict=True):
                deque(map(setter, made, column), maxlen=0)
            built += made
        if len(self.columns) > 1:
            built.sort(key=attrgetter("line"))  # each column is in line order already: this merges them
        return tuple(built)


_object_new = object.__new__
_SETTERS = tuple(ListEntry.__dict__[field].__set__ for field in ("domain", "match", "action", "line"))
