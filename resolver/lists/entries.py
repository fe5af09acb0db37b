"""What a parsed list is made of: entries, skipped lines, the result of a parse, and names spelled one way.

Every list spells a name the way ``normalise_name`` returns it, because that is what the policy compares query
names against; the line parsers, the fast path and the platform files all go through it (or agree with it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from encodings.idna import ToASCII
from typing import Literal

Match = Literal["exact", "subtree", "below"]
"""exact: only the name; subtree: the name and every name below it; below: only names strictly below it."""
Action = Literal["block", "allow", "nxdomain", "nodata"]
Format = Literal["hosts", "domains", "adblock", "rpz", "wildcard"]

MAX_SKIPPED = 1000  # skipped lines kept with their text; the rest are counted, so a file of junk stays cheap
MAX_LINE = 4096  # longer lines are skipped: no real rule is that long, and it bounds one hostile line's cost
TEXT_CUT = 200
MAX_ALLOW_NAMES = 100_000  # allow names kept per list for the reduction check (all are in the entry count)

_COMMON_IPS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "::0"})
NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_."


@dataclass(frozen=True, slots=True)
class ListEntry:
    domain: str  # lowercase ASCII (IDN as punycode), no trailing dot
    match: Match
    action: Action
    line: int  # 1-based line number in the source


@dataclass(frozen=True, slots=True)
class SkippedLine:
    line: int
    reason: str  # short and bounded (never the name itself), so reasons can be counted
    text: str  # the offending line, cut to TEXT_CUT chars


@dataclass(frozen=True, slots=True)
class ParsedList:
    source: str
    format: Format
    entries: Collection[ListEntry]  # a tuple; for a streamed list, its count, and the file read again if iterated
    skipped: tuple[SkippedLine, ...]  # the first MAX_SKIPPED skipped lines
    unkept: int = 0  # skipped lines past those, only counted
    allow_names: tuple[str, ...] = ()  # the names of its allow entries, in line order (the first MAX_ALLOW_NAMES)
    blocking: int = 0  # entries whose action is not "allow" (block, nxdomain, nodata)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped) + self.unkept


def normalise_name(name: str) -> str:
    """Return ``name`` lowercased, without one trailing dot, IDNA-encoded; raise ``ValueError(reason)``.

    The result is what the policy compares query names against, so every list spells a name one way.
    """
    n = name.lower().removesuffix(".")
    if not n.isascii():
        try:
            n = ".".join(label if label.isascii() else ToASCII(label).decode() for label in n.split("."))
        except UnicodeError as e:
            raise ValueError(f"cannot IDNA-encode label: {e}") from e
    if not n:
        raise ValueError("empty name")
    if len(n) > 253:
        raise ValueError("name longer than 253")
    bad = n.encode().translate(None, NAME_BYTES)
    if bad:
        raise ValueError(f"invalid character {chr(bad[0])!r}")
    for label in n.split(".") if len(n) > 63 or ".." in n or n[0] == "." or n[-1] == "." else ():
        if not label:
            raise ValueError("empty label")
        if len(label) > 63:
            raise ValueError("label longer than 63")
    if n.rpartition(".")[2].isdigit():  # no TLD is numeric (RFC 3696 s2): an IP address
        raise ValueError("an IP address, not a name")
    return n


def is_ip(token: str) -> bool:
    if token in _COMMON_IPS:
        return True
    if not token[0].isdigit() and ":" not in token:  # a name: spare ipaddress its exception
        return False
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True
