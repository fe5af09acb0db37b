"""Parse third-party blocklists (hosts, plain domains, AdBlock DNS rules, wildcard lists, RPZ) into entries.

Pure: text in, ``ParsedList`` out (``parse_file`` only adds the read). Lists come from strangers, so a line
we cannot use is never fatal: it becomes a ``SkippedLine`` with a short reason and its line number, which
``resolver check`` shows. Only a file that is not a text list at all raises ``ConfigError``.

Lists run to a million lines and are parsed at start-up and on every reload, so most of the text never
meets a Python loop: ``_fast`` takes whole chunks of the common line shape (``||name^``, ``0.0.0.0 name``)
with C-level str/bytes passes, and only chunks holding an odd line go through the line parsers.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from encodings.idna import ToASCII
from itertools import compress, groupby, repeat
from operator import attrgetter, itemgetter, not_
from typing import Literal, NamedTuple, get_args

from resolver.errors import ConfigError

__all__ = [
    "Action", "Format", "ListEntry", "Match", "ParsedList", "SkippedLine",
    "detect_format", "normalise_name", "parse_file", "parse_text",
]  # fmt: skip

Match = Literal["exact", "subtree", "below"]
"""exact: only the name; subtree: the name and every name below it; below: only names strictly below it."""
Action = Literal["block", "allow", "nxdomain", "nodata"]
Format = Literal["hosts", "domains", "adblock", "rpz", "wildcard"]

MAX_SKIPPED = 1000  # skipped lines kept with their text; the rest are counted, so a file of junk stays cheap
MAX_LINE = 4096  # longer lines are skipped: no real rule is that long, and it bounds one hostile line's cost
DETECT_LINES = 200
TEXT_CUT = 200
_CHUNK_CHARS = 16384  # about 400 lines per try at the fast path; see _chunks
_SMALL_CHUNK_CHARS = 1024
_DETECT_CHARS = 1 << 16  # detect_format needs a few hundred lines, not the whole list split up

# Names a stock /etc/hosts maps to itself; hosts-format blocklists copy them, so skipping them is not news.
_HOSTS_LOCAL = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "0.0.0.0"})
_COMMON_IPS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "::0"})
_RPZ_TRIGGERS = frozenset({"rpz-ip", "rpz-nsip", "rpz-nsdname", "rpz-client-ip"})
_RPZ_ACTIONS: dict[str, Action] = {".": "nxdomain", "*.": "nodata", "rpz-passthru.": "allow"}
_DNS_CLASSES = frozenset({"IN", "CH", "HS", "CS"})


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
    bad = n.encode().translate(None, _NAME_BYTES)
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


def _is_ip(token: str) -> bool:
    if token in _COMMON_IPS:
        return True
    if not token[0].isdigit() and ":" not in token:  # a name: spare ipaddress its exception
        return False
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


class _Shape(NamedTuple):
    """The line most of a format's file consists of, lowercased: ``prefix + name + suffix``."""

    prefix: str
    suffix: str
    match: Match
    action: Action
    wild: bool = True  # `*.name` lines may be mixed in and mean "below" (RPZ files alternate the two)


_SHAPES: dict[str, tuple[_Shape, ...]] = {
    "hosts": (
        _Shape("0.0.0.0 ", "", "subtree", "block", wild=False),
        _Shape("127.0.0.1 ", "", "subtree", "block", wild=False),
    ),
    "domains": (_Shape("", "", "subtree", "block"),),
    "wildcard": (_Shape("", "", "subtree", "block"),),
    "adblock": (_Shape("||", "^", "subtree", "block"), _Shape("@@||", "^", "subtree", "allow")),
    "rpz": (_Shape("", " cname .", "exact", "nxdomain"),),
}


class _Out:
    """What one parse collects, plus the RPZ state that carries from chunk to chunk.

    Entries are kept as columns per (match, action) and built in bulk by ``entries``, or taken chunk by chunk
    as runs of names by ``take``; then (``lines`` false) the fast path does not keep their line numbers.
    """

    __slots__ = ("columns", "lines", "origin", "owner", "pending", "skipped", "unkept")

    def __init__(self, lines: bool = True) -> None:
        self.lines = lines
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

    def extend(self, match: Match, action: Action, names: Iterable[str], nums: Iterable[int]) -> None:
        col = self.column(match, action)
        col[0].extend(names)
        if self.lines:
            col[1].extend(nums)

    def add(self, name: str, match: Match, action: Action, line: int, text: str) -> None:
        """Validate one name the slow way and keep it, or record why not."""
        try:
            domain = normalise_name(name)
        except ValueError as e:
            self.skip(line, f"invalid name: {e}", text)
            return
        if "." not in domain:  # one stray `com` line must not black-hole (or open) a whole TLD
            self.skip(line, f"refusing to {'allow' if action == 'allow' else 'block'} a top-level domain", text)
            return
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
        """Build all entries with C-level ``map`` calls: slot descriptors skip the frozen ``__init__``, which
        costs 1.6 us an entry here against 0.7 us, most of the start-up budget at a million entries."""
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


def _fast(out: _Out, chunk: str, first: int, shapes: tuple[_Shape, ...]) -> int:
    """Take a chunk in which every line is ``prefix + plain name + suffix`` and return its line count, or 0 to
    send it to the line parser. A few C-level passes over the chunk replace a Python loop per line.

    Only names the line parser would take unchanged (but for case) pass ``_plain``, so both paths give the same
    entries, which the tests check; this one is about ten times faster.
    """
    if len(chunk) > _CHUNK_CHARS + MAX_LINE or any(c in chunk for c in "#!$/\t"):
        return 0  # a line too long to be a rule, or comments, modifiers, regexes, tabs: fail before any work
    low = chunk.lower()
    shape = next((s for s in shapes if low.startswith(s.prefix)), None)
    if shape is None or not low.endswith(shape.suffix) or (shape.suffix and "rpz-" in low):
        return 0  # (RPZ-IP and NSDNAME triggers look like names: the line parser skips them)
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
    if not _plain(joined, count):
        return 0
    nums = range(first, first + count)
    if star is None:
        out.extend(shape.match, shape.action, names, nums)
    else:
        out.extend("below", shape.action, compress(names, star), compress(nums, star))
        unstar = list(map(not_, star))
        out.extend(shape.match, shape.action, compress(names, unstar), compress(nums, unstar))
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


_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_."
_CLASSES = bytes(
    ord("a") if chr(b) in "abcdefghijklmnopqrstuvwxyz-_" else ord("0") if chr(b) in "0123456789" else
    b if chr(b) in ".\n" else ord("!") for b in range(256)
)  # fmt: skip
_LABELS = bytes.maketrans(b"0\n", b"a.")
_NAMES = bytes.maketrans(b"0.", b"aa")


def _hosts_names(parts: list[str], n: int, raw: str, out: _Out) -> None:
    """Add the names of a hosts line whose first field is already known to be an IP address."""
    if len(parts) == 1:
        out.skip(n, "hosts line without a name", raw)
    for name in parts[1:]:
        low = name.lower()
        if low not in _HOSTS_LOCAL and not (low.startswith("ip6-") and "." not in low):
            out.add(low, "subtree", "block", n, raw)


def _parse_hosts(lines: list[str], first: int, out: _Out) -> None:
    for n, raw in enumerate(lines, first):
        if len(raw) > MAX_LINE:
            out.skip(n, "line too long", raw)
            continue
        parts = (raw.partition("#")[0] if "#" in raw else raw).split()
        if not parts or parts[0][0] == "!":
            continue
        if not _is_ip(parts[0]):
            out.skip(n, "not a hosts line: first field is not an IP address", raw)
            continue
        _hosts_names(parts, n, raw, out)


def _parse_domains(lines: list[str], first: int, out: _Out) -> None:
    """Domains and wildcard lists share a parser: `*.d` is below d, a bare `d` is d and its subtree."""
    for n, raw in enumerate(lines, first):
        if len(raw) > MAX_LINE:
            out.skip(n, "line too long", raw)
            continue
        s = (raw.partition("#")[0] if "#" in raw else raw).strip()
        if not s or s[0] == "!":
            continue
        if " " in s or "\t" in s:
            out.skip(n, "expected one name per line", raw)
        elif s.startswith("*."):
            out.add(s[2:], "below", "block", n, raw)
        else:
            out.add(s, "subtree", "block", n, raw)


def _parse_adblock(lines: list[str], first: int, out: _Out) -> None:
    """AdBlock DNS rules as AdGuard Home and hostlist-compiler write them; each form has a test."""
    for n, raw in enumerate(lines, first):
        if len(raw) > MAX_LINE:
            out.skip(n, "line too long", raw)
            continue
        s = raw.strip()
        if not s or s[0] in "!#" or (s[0] == "[" and s[-1] == "]"):
            continue
        if s[0] == "/":
            out.skip(n, "regex rules are not supported", raw)
            continue
        if "#" in s:
            if any(marker in s for marker in ("##", "#@#", "#?#", "#$#", "#%#")):
                out.skip(n, "cosmetic rules are not supported", raw)
                continue
            s = s.partition("#")[0].rstrip()
        action: Action = "block"
        if s.startswith("@@"):
            action, s = "allow", s[2:]
        if "$" in s:
            s, _, modifiers = s.partition("$")
            bad = [m for m in modifiers.split(",") if m.strip() not in ("important", "")]
            if bad:
                out.skip(n, f"unsupported modifier: ${bad[0].partition('=')[0].strip()}", raw)
                continue
        match: Match = "subtree"
        if s.startswith("||"):
            s = s[2:]
        elif s.startswith("|"):
            match, s = "exact", s[1:]
        elif s.startswith("."):  # `.d^` needs a dot before d: the names strictly below d
            match, s = "below", s[1:]
        elif " " in s or "\t" in s:
            parts = s.split()
            if _is_ip(parts[0]):
                _hosts_names(parts, n, raw, out)
            else:
                out.skip(n, "unrecognised rule", raw)
            continue
        s = s[:-2] if s.endswith("^|") else s[:-1] if s.endswith(("^", "|")) else s
        if s.startswith("*.") and match == "subtree":
            match, s = "below", s[2:]
        if "*" in s:
            out.skip(n, "wildcards inside a name are not supported", raw)
        elif s.endswith("."):  # `||ads.` matches ads.<any TLD>: a pattern, not a name
            out.skip(n, "open-ended patterns are not supported", raw)
        else:
            out.add(s, match, action, n, raw)


def _rpz_records(lines: list[str], first: int, out: _Out) -> Iterable[tuple[int, str, list[str]]]:
    """Yield (line, raw, fields) per zone-file record, joining `( … )` continuations; a first field of ''
    stands for the owner of the previous record (the line began with blank space)."""
    for n, raw in enumerate(lines, first):
        if len(raw) > MAX_LINE:
            out.skip(n, "line too long", raw)
            continue
        s = raw.partition(";")[0] if ";" in raw else raw
        fields = s.replace("(", " ").replace(")", " ").split() if "(" in s or ")" in s else s.split()
        if out.pending is not None:
            out.pending[2].extend(fields)
            if ")" in s:
                yield out.pending
                out.pending = None
        elif fields:
            if raw[0] in " \t":
                fields.insert(0, "")
            if "(" in s and ")" not in s:
                out.pending = (n, raw, fields)
            else:
                yield n, raw, fields


def _parse_rpz(lines: list[str], first: int, out: _Out) -> None:
    """RPZ QNAME triggers only: RPZ-IP/NSDNAME triggers and local data are skipped, because our policy can
    only answer NXDOMAIN, NODATA, the sinkhole or pass."""
    for n, raw, fields in _rpz_records(lines, first, out):
        if fields[0].startswith("$"):
            directive = fields[0].upper()
            if directive == "$ORIGIN" and len(fields) > 1:
                o = fields[1].lower()
                o = o if o.endswith(".") else f"{o}.{out.origin}" if out.origin else f"{o}."
                out.origin = "" if o == "." else o
            elif directive != "$TTL":
                out.skip(n, f"{directive} is not supported", raw)
            continue
        owner = out.owner = fields[0] or out.owner
        i = 1
        while i < len(fields) and (fields[i][0].isdigit() or fields[i].upper() in _DNS_CLASSES):
            i += 1  # TTL and class, in either order
        rtype = fields[i].upper() if i < len(fields) else ""
        if rtype in ("SOA", "NS"):
            continue
        target = fields[i + 1].lower() if i + 1 < len(fields) else ""
        action = _RPZ_ACTIONS.get(target) if rtype == "CNAME" else None
        if action is None:
            if not rtype:
                out.skip(n, "incomplete record", raw)
            elif target.startswith("rpz-"):  # rpz-drop., rpz-tcp-only.
                out.skip(n, f"CNAME {target} is not supported", raw)
            else:
                out.skip(n, "local-data answers are not supported", raw)
            continue
        name, origin = owner.lower(), out.origin
        if name == "@" or (origin and name == origin):
            out.skip(n, "owner is the zone apex", raw)
            continue
        if name.endswith(".") and origin:
            if not name.endswith("." + origin):
                out.skip(n, "owner is outside $ORIGIN", raw)
                continue
            name = name[: -len(origin) - 1]
        trigger = name.rpartition(".")[2]
        if trigger in _RPZ_TRIGGERS:
            out.skip(n, f"{trigger} triggers are not supported", raw)
        elif name.startswith("*."):
            out.add(name[2:], "below", action, n, raw)
        else:
            out.add(name, "exact", action, n, raw)


_LineParser = Callable[[list[str], int, _Out], None]  # (lines, number of the first, output)
_PARSERS: dict[str, _LineParser] = {
    "hosts": _parse_hosts, "domains": _parse_domains, "wildcard": _parse_domains,
    "adblock": _parse_adblock, "rpz": _parse_rpz,
}  # fmt: skip


def detect_format(lines: Iterable[str]) -> Format:
    """Guess the format from the first DETECT_LINES lines that are not blank or comments.

    The strongest evidence wins: RPZ, then AdBlock (whose parser also takes hosts and plain lines), then
    hosts, then wildcard (whose parser also takes plain names), else plain domains.
    """
    seen: set[Format] = set()
    counted = 0
    for raw in lines:
        s = raw.strip().lstrip("\ufeff")
        if not s or s[0] in "#!;":
            continue
        fields = s.split()
        if s[0] == "$" and s[1:].upper().startswith(("TTL", "ORIGIN")):
            return "rpz"
        if any(f.upper() in ("SOA", "CNAME") for f in fields[1:5]) and not _is_ip(fields[0]):
            return "rpz"
        if s.startswith(("||", "@@", "|")) or (s[0] == "[" and s[-1] == "]"):
            seen.add("adblock")
        elif _is_ip(fields[0]):
            seen.add("hosts")
        elif s.startswith("*."):
            seen.add("wildcard")
        counted += 1
        if counted >= DETECT_LINES:
            break
    return next((f for f in ("adblock", "hosts", "wildcard") if f in seen), "domains")


_build_lock = threading.Lock()


def parse_text(text: str, source: str, fmt: Format | Literal["auto"] = "auto") -> ParsedList:
    """Parse a whole list; ``source`` only labels the result. Line numbers count ``\\n`` as an editor does.

    The cyclic GC is paused meanwhile: a million new entries would set off repeated full collections
    (+1.3 s measured) though nothing built here forms a cycle. The lock keeps two parses from fighting over
    the GC switch; parsing holds the GIL throughout, so it costs no parallelism.
    """
    text = text.removeprefix("\ufeff")
    text = text.replace("\r\n", "\n") if "\r" in text else text
    if fmt == "auto":
        fmt = detect_format(text[:_DETECT_CHARS].split("\n"))
    elif fmt not in get_args(Format):
        raise ConfigError(source, f"unknown list format {fmt!r}")
    parse, shapes, out = _PARSERS[fmt], _SHAPES[fmt], _Out()
    with _build_lock:
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            deque(_chunks(text, parse, shapes, out), maxlen=0)
            return ParsedList(source, fmt, out.entries(), tuple(out.skipped), out.unkept)
        finally:
            if gc_was_enabled:
                gc.enable()


def _chunks(text: str, parse: _LineParser, shapes: tuple[_Shape, ...], out: _Out, line: int = 1) -> Iterator[int]:
    """Feed ``text`` (lines from number ``line`` on) to ``_fast`` in chunks of whole lines, and what it refuses
    to ``parse``; after each chunk, yield the number of the next line (a caller may ``take`` what it made).

    After a refusal the stretch is retried in small chunks, so one odd line costs a few dozen slow lines,
    and the chunk grows back while the fast path succeeds.
    """
    pos, size, step = 0, len(text), _CHUNK_CHARS
    while pos < size:
        end = text.find("\n", pos + step)
        chunk = text[pos : size if end < 0 else end]
        taken = _fast(out, chunk, line, shapes) if out.pending is None else 0
        if taken:
            step = min(step * 2, _CHUNK_CHARS)
        elif step > _SMALL_CHUNK_CHARS:
            step = _SMALL_CHUNK_CHARS
            continue
        else:
            lines = chunk.split("\n")
            parse(lines, line, out)
            taken = len(lines)
        line += taken
        pos += len(chunk) + 1
        yield line


def parse_file(
    path: str | os.PathLike[str], fmt: Format | Literal["auto"] = "auto", max_bytes: int = 256 * 1024 * 1024
) -> ParsedList:
    """Read and parse a list file; raise ``ConfigError`` when it is unreadable or clearly not a text list.

    Reads at most ``max_bytes + 1`` bytes, so a wrong path (a disk image, /dev/zero) cannot exhaust memory.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(where, e.strerror or str(e)) from e
    if len(data) > max_bytes:
        raise ConfigError(where, f"larger than {max_bytes} bytes")
    if b"\0" in data:
        raise ConfigError(where, "not a text list: contains NUL bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(where, f"not UTF-8 text at byte {e.start}") from e
    return parse_text(text, where, fmt)
