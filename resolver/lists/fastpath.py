"""The chunked fast path: whole chunks of a format's common line shape taken with C-level str/bytes passes.

Lists run to a million lines and are parsed at start-up and on every reload, so most of the text never meets a
Python loop: ``fast`` takes whole chunks of the common line shape (``||name^``, ``0.0.0.0 name``), and only
chunks holding an odd line go through the line parsers (``resolver.lists.parsers``). Both paths give the same
entries and skips, which the tests check on random and odd lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import compress, repeat
from operator import not_
from typing import NamedTuple

from resolver.lists.collect import Collector
from resolver.lists.entries import MAX_LINE, Action, Match
from resolver.lists.parsers import LineParser
from resolver.lists.suffixes import covers_any

CHUNK_CHARS = 16384  # a few hundred lines per try at the fast path; see chunks
SMALL_CHUNK_CHARS = 1024


class Shape(NamedTuple):
    """The line most of a format's file consists of, lowercased: ``prefix + name + suffix``."""

    prefix: str
    suffix: str
    match: Match
    action: Action
    wild: bool = True  # `*.name` lines may be mixed in and mean "below" (RPZ files alternate the two)


SHAPES: dict[str, tuple[Shape, ...]] = {
    "hosts": (
        Shape("0.0.0.0 ", "", "subtree", "block", wild=False),
        Shape("127.0.0.1 ", "", "subtree", "block", wild=False),
    ),
    "domains": (Shape("", "", "subtree", "block"),),
    "wildcard": (Shape("", "", "subtree", "block"),),
    "adblock": (Shape("||", "^", "subtree", "block"), Shape("@@||", "^", "subtree", "allow")),
    "rpz": (Shape("", " cname .", "exact", "nxdomain"),),
}


def fast(out: Collector, chunk: str, first: int, shapes: tuple[Shape, ...]) -> int:
    """Take a chunk in which every line is ``prefix + plain name + suffix`` and return its line count, or 0 to
    send it to the line parser. A few C-level passes over the chunk replace a Python loop per line.

    Only names the line parser would take unchanged (but for case) pass ``_plain``, and no public suffix, so both
    paths give the same entries, which the tests check. What the line parser would skip or change because of the
    list (an allow rule outside an allow list) is left to it too.
    """
    if len(chunk) > CHUNK_CHARS + MAX_LINE or any(c in chunk for c in "#!$/\t"):
        return 0  # a line too long to be a rule, or comments, modifiers, regexes, tabs: fail before any work
    low = chunk.lower()
    shape = next((s for s in shapes if low.startswith(s.prefix)), None)
    if shape is None or not low.endswith(shape.suffix) or (shape.suffix and "rpz-" in low):
        return 0  # (RPZ-IP and NSDNAME triggers look like names: the line parser skips them)
    if shape.action == "allow" and not out.allowlist:
        return 0  # the line parser skips each allow rule with its line
    sep = f"{shape.suffix}\n{shape.prefix}"
    body = low[len(shape.prefix) : len(low) - len(shape.suffix)]
    names = body.split(sep)
    count = len(names)  # the chunk's line count, unless a line lacks the shape: _plain checks that
    joined = body if sep == "\n" else "\n".join(names)
    star: list[bool] | None = None
    if shape.wild and "*" in joined:
        star = list(map(str.startswith, joined.split("\n"), repeat("*.")))
        joined = ("\n" + joined).replace("\n*.", "\n")[1:]
        names = joined.split("\n")
    if not _plain(joined, count) or covers_any(names):
        return 0  # (a public suffix: the line parser skips that line and keeps the rest)
    action = out.counted(shape.action, names)
    nums = range(first, first + count)
    if star is None:
        out.extend(shape.match, action, names, nums)
    else:
        out.extend("below", action, compress(names, star), compress(nums, star))
        unstar = list(map(not_, star))
        out.extend(shape.match, action, compress(names, unstar), compress(nums, unstar))
    out.owner = chunk[chunk.rfind("\n") + 1 :].partition(" ")[0]  # for a next record with no owner
    return count


def _plain(joined: str, count: int) -> bool:
    """True if ``joined`` is ``count`` lowercase names, one a line, that ``normalise_name`` returns unchanged
    and that are not TLDs: ASCII, valid characters and lengths, no empty label, a TLD that is not numeric."""
    if not joined.isascii():
        return False
    c = joined.encode().translate(_CLASSES)  # letters, -, _ -> a; digits -> 0; . and \n kept; others -> !
    if b"!" in c or c[:1] in b".\n" or c[-1:] in b".\n0" or (b"0" in c and b"0\n" in c):  # (memchr first)
        return False
    labels = c.translate(_LABELS)  # a label is a run of a; separators are .
    if b".." in labels or b"a" * 64 in labels or b"a" * 254 in c.translate(_NAMES):
        return False
    seps = c.translate(None, b"a0")  # one . or \n per separator: a name without a dot leaves \n\n
    if seps[:1] in b"\n" or seps[-1:] == b"\n" or b"\n\n" in seps or seps.count(b"\n") != count - 1:
        return False  # (the count catches a line without the prefix, which split() left inside a name)
    return "localhost.localdomain" not in joined


_CLASSES = bytes(
    ord("a") if chr(b) in "abcdefghijklmnopqrstuvwxyz-_" else ord("0") if chr(b) in "0123456789" else
    b if chr(b) in ".\n" else ord("!") for b in range(256)
)  # fmt: skip
_LABELS = bytes.maketrans(b"0\n", b"a.")
_NAMES = bytes.maketrans(b"0.", b"aa")


def chunks(text: str, parse: LineParser, shapes: tuple[Shape, ...], out: Collector, line: int = 1) -> Iterator[int]:
    """Feed ``text`` (lines from number ``line`` on) to ``fast`` in chunks of whole lines, and what it refuses
    to ``parse``; after each chunk, yield the number of the next line (a caller may ``take`` what it made).

    After a refusal the stretch is retried in small chunks, so one odd line costs a few dozen slow lines,
    and the chunk grows back while the fast path succeeds.
    """
    pos, size, step = 0, len(text), CHUNK_CHARS
    while pos < size:
        end = text.find("\n", pos + step)
        chunk = text[pos : size if end < 0 else end]
        taken = fast(out, chunk, line, shapes) if out.pending is None else 0
        if taken:
            step = min(step * 2, CHUNK_CHARS)
        elif step > SMALL_CHUNK_CHARS:
            step = SMALL_CHUNK_CHARS
            continue
        else:
            lines = chunk.split("\n")
            parse(lines, line, out)
            taken = len(lines)
        line += taken
        pos += len(chunk) + 1
        yield line
