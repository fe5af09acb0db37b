"""Parse third-party blocklists (hosts, plain domains, AdBlock DNS rules, wildcard lists, RPZ) into entries.

Pure: text in, ``ParsedList`` out (``parse_file`` only adds the read). Lists come from strangers on the
internet, so a line we cannot use is never fatal: it becomes a ``SkippedLine`` with a short reason and its
line number, which ``resolver check`` shows. Only a file that is not a text list at all raises ``ConfigError``.
Lists run to a million lines and are parsed at start-up and on every reload, so the per-line path uses str
methods only; regexes, ``ipaddress`` and the IDNA codec are reached only for the rare line that needs them.
"""

from __future__ import annotations

import ipaddress
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from encodings.idna import ToASCII
from itertools import compress, repeat
from operator import attrgetter, not_
from typing import Literal, NamedTuple, get_args

from resolver.errors import ConfigError

__all__ = [
    "Action", "Format", "ListEntry", "Match", "ParsedList", "SkippedLine",
    "detect_format", "normalise_name", "parse_file", "parse_text",
]

Match = Literal["exact", "subtree", "below"]
"""exact: only the name; subtree: the name and every name below it; below: only names strictly below it."""
Action = Literal["block", "allow", "nxdomain", "nodata"]
Format = Literal["hosts", "domains", "adblock", "rpz", "wildcard"]

MAX_LINE = 4096
"""Longer lines are skipped: no real rule is that long, and a cap bounds the work one hostile line can cause."""
DETECT_LINES = 200
TEXT_CUT = 200
_CHUNK = 128  # lines per attempt at the fast path: small enough that one odd line costs little

# Names a stock /etc/hosts maps to itself; hosts-format blocklists copy them, so skipping them is not news.
_HOSTS_LOCAL = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "0.0.0.0"})
_COMMON_IPS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "::0"})  # avoids ipaddress on the common lines
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
    reason: str  # short and bounded: never contains the name itself, so it can be counted
    text: str  # the offending line, cut to TEXT_CUT chars


@dataclass(frozen=True, slots=True)
class ParsedList:
    source: str
    format: Format
    entries: tuple[ListEntry, ...]
    skipped: tuple[SkippedLine, ...]


def normalise_name(name: str) -> str:
    """Return ``name`` lowercased, without one trailing dot, IDNA-encoded; raise ``ValueError(reason)``.

    The result is what the policy trie compares against query names, so every list spells a name one way.
    """
    n = name.lower().removesuffix(".")
    if not n.isascii():
        n = ".".join(_idna_label(label) for label in n.split("."))
    if not n:
        raise ValueError("empty name")
    if len(n) > 253:
        raise ValueError("name longer than 253")
    if not n.replace("-", "").replace("_", "").replace(".", "").isalnum():
        bad = next((c for c in n if not (c.isalnum() or c in "-_.")), None)
        if bad is not None:  # None: the name is all punctuation, which the label rules allow
            raise ValueError(f"invalid character {bad!r}")
    if len(n) > 63 or ".." in n or n[0] == ".":  # only then can a label be empty or too long
        for label in n.split("."):
            if not label:
                raise ValueError("empty label")
            if len(label) > 63:
                raise ValueError("label longer than 63")
    if n.rpartition(".")[2].isdigit():  # no TLD is numeric (RFC 3696 s2): this is an IP address
        raise ValueError("an IP address, not a name")
    return n


def _idna_label(label: str) -> str:
    if label.isascii():
        return label
    try:
        return ToASCII(label).decode("ascii")
    except UnicodeError as e:
        raise ValueError(f"cannot IDNA-encode label: {e}") from e


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
    """The line most of a format's file consists of, e.g. ``||name^``; see ``_fast``."""

    prefix: str
    suffix: str
    match: Match
    action: Action
    wild: bool = False  # `*.name` lines may be mixed in and mean "below" (RPZ files alternate the two)


_SHAPES: dict[str, tuple[_Shape, ...]] = {
    "hosts": (_Shape("0.0.0.0 ", "", "subtree", "block"), _Shape("127.0.0.1 ", "", "subtree", "block")),
    "domains": (_Shape("*.", "", "below", "block"), _Shape("", "", "subtree", "block")),
    "adblock": (_Shape("||", "^", "subtree", "block"), _Shape("@@||", "^", "subtree", "allow")),
    "rpz": (_Shape("", " CNAME .", "exact", "nxdomain", wild=True),),
}
_SHAPES["wildcard"] = _SHAPES["domains"]


class _Out:
    """Collects the results of one parse, and the RPZ parser state that must carry from chunk to chunk.

    Entries are kept as columns per (match, action) and built in bulk by ``entries``: building a million
    frozen dataclasses one ``__init__`` at a time would take most of the start-up budget on its own.
    """

    __slots__ = ("columns", "origin", "owner", "pending", "skipped")

    def __init__(self) -> None:
        self.columns: dict[tuple[Match, Action], tuple[list[str], list[int]]] = {}
        self.skipped: list[SkippedLine] = []
        self.origin = ""  # RPZ $ORIGIN with its trailing dot; "" when there is none
        self.owner = ""  # owner of the last record, for records that begin with blank space
        self.pending: tuple[int, str, list[str]] | None = None  # an RPZ record still inside `( … )`

    def skip(self, line: int, reason: str, text: str) -> None:
        self.skipped.append(SkippedLine(line, reason, text.strip()[:TEXT_CUT]))

    def column(self, match: Match, action: Action) -> tuple[list[str], list[int]]:
        col = self.columns.get((match, action))
        if col is None:
            col = self.columns[match, action] = ([], [])
        return col

    def add(self, name: str, match: Match, action: Action, line: int, text: str) -> None:
        """Validate one name the slow way and keep it, or record why not."""
        try:
            domain = normalise_name(name)
        except ValueError as e:
            self.skip(line, f"invalid name: {e}", text)
            return
        if "." not in domain:  # one stray `com` line must not black-hole (or open) a whole TLD
            verb = "allow" if action == "allow" else "block"
            self.skip(line, f"refusing to {verb} a top-level domain", text)
            return
        names, nums = self.column(match, action)
        names.append(domain)
        nums.append(line)

    def entries(self) -> tuple[ListEntry, ...]:
        """Build every entry with C-level ``map`` calls; slot descriptors bypass the frozen ``__setattr__``."""
        built: list[ListEntry] = []
        for (match, action), (names, nums) in self.columns.items():
            made = list(map(_object_new, repeat(ListEntry, len(names))))
            for setter, values in zip(_SETTERS, (names, repeat(match), repeat(action), nums), strict=True):
                deque(map(setter, made, values), maxlen=0)
            built += made
        if len(self.columns) > 1:
            built.sort(key=_BY_LINE)  # each column is in line order already; this merges them
        return tuple(built)


_object_new = object.__new__
_SETTERS = tuple(ListEntry.__dict__[field].__set__ for field in ("domain", "match", "action", "line"))
_BY_LINE = attrgetter("line")


def _fast(out: _Out, chunk: list[str], lo: int, shapes: tuple[_Shape, ...]) -> bool:
    """Take a chunk in which every line is ``prefix + plain name + suffix`` with a few C-level passes over
    the joined text instead of a Python loop per line; return False to send it to the line parser.

    Only names the line parser would accept unchanged (apart from case) pass ``_plain``, so both paths give
    the same entries; the gain is about 10x on the clean lines that make up nearly all of a real list.
    """
    joined = "\n".join(chunk)
    shape = next((s for s in shapes if joined.startswith(s.prefix)), None)
    if shape is None or not joined.endswith(shape.suffix):
        return False
    sep = f"{shape.suffix}\n{shape.prefix}"
    if joined.count(sep) != len(chunk) - 1:  # then every newline sits between a suffix and a prefix
        return False
    body = joined[len(shape.prefix) : len(joined) - len(shape.suffix)]
    if sep != "\n":
        body = body.replace(sep, "\n")
    nums = range(lo + 1, lo + len(chunk) + 1)
    parts: list[tuple[str, Sequence[int], Match]] = [(body, nums, shape.match)]
    if shape.wild and "*" in body:
        star = list(map(str.startswith, body.split("\n"), repeat("*.")))
        names = ("\n" + body).replace("\n*.", "\n")[1:].split("\n")
        parts = [
            ("\n".join(compress(names, star)), list(compress(nums, star)), "below"),
            ("\n".join(compress(names, map(not_, star))), list(compress(nums, map(not_, star))), shape.match),
        ]
    checked = [(_plain(text), n, match) for text, n, match in parts if n]
    for plain, n, match in checked:
        if plain is None:
            return False
    for plain, n, match in checked:
        col = out.column(match, shape.action)
        col[0].extend(plain or ())
        col[1].extend(n)
    out.owner = chunk[-1].partition(" ")[0]
    return True


def _plain(body: str) -> list[str] | None:
    """Split newline-joined names, lowercased, or return None unless every one is plain: ASCII, valid
    characters and label lengths, no empty label, at least two labels, not numeric, not a hosts alias."""
    if not body.isascii():
        return None
    low = body.lower()
    if low.encode().translate(None, _NAME_BYTES) or not low or low[0] in ".\n" or low[-1] in _BAD_LAST:
        return None
    if ".." in low or "\n\n" in low or "\n." in low or ".\n" in low or any(d in low for d in _DIGIT_ENDS):
        return None
    names = low.split("\n")
    longest = max(map(len, names))
    if longest > 63 and (longest > 253 or max(map(len, low.replace("\n", ".").split("."))) > 63):
        return None
    if not all(map(str.__contains__, names, repeat("."))) or not _HOSTS_LOCAL.isdisjoint(names):
        return None
    return names


_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_.\n"
_BAD_LAST = ".\n0123456789"
_DIGIT_ENDS = tuple(f"{d}\n" for d in "0123456789")


def _hosts_names(parts: list[str], n: int, raw: str, out: _Out) -> None:
    """Add the names of a hosts line whose first field is already known to be an IP address."""
    if len(parts) == 1:
        out.skip(n, "hosts line without a name", raw)
    for name in parts[1:]:
        low = name.lower()
        if low in _HOSTS_LOCAL or (low.startswith("ip6-") and "." not in low):
            continue
        out.add(low, "subtree", "block", n, raw)


def _parse_hosts(lines: list[str], lo: int, out: _Out) -> None:
    for n, raw in enumerate(lines, lo + 1):
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


def _parse_domains(lines: list[str], lo: int, out: _Out) -> None:
    """Domains and wildcard lists share a parser: `*.d` is below d, a bare `d` is d and its subtree."""
    for n, raw in enumerate(lines, lo + 1):
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


def _parse_adblock(lines: list[str], lo: int, out: _Out) -> None:
    """AdBlock DNS syntax as AdGuard Home and hostlist-compiler write it; see the module tests for each form."""
    for n, raw in enumerate(lines, lo + 1):
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
            if "##" in s or "#@#" in s or "#?#" in s or "#$#" in s or "#%#" in s:
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
        elif s.startswith("."):  # `.d^` matches a dot before d: the names strictly below d
            match, s = "below", s[1:]
        elif " " in s or "\t" in s:
            parts = s.split()
            if _is_ip(parts[0]):
                _hosts_names(parts, n, raw, out)
            else:
                out.skip(n, "unrecognised rule", raw)
            continue
        if s.endswith("^|"):
            s = s[:-2]
        elif s.endswith(("^", "|")):
            s = s[:-1]
        if s.startswith("*.") and match == "subtree":
            match, s = "below", s[2:]
        if "*" in s:
            out.skip(n, "wildcards inside a name are not supported", raw)
        elif s.endswith("."):  # `||ads.` matches ads.<any TLD>: a pattern, not a name
            out.skip(n, "open-ended patterns are not supported", raw)
        else:
            out.add(s, match, action, n, raw)


def _rpz_records(lines: list[str], lo: int, out: _Out) -> Iterable[tuple[int, str, list[str]]]:
    """Yield (line, raw, fields) per zone-file record, joining `( … )` continuations; a first field of ''
    stands for the owner of the previous record (the line began with blank space)."""
    for n, raw in enumerate(lines, lo + 1):
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
            continue
        if not fields:
            continue
        if raw[0] in " \t":
            fields.insert(0, "")
        if "(" in s and ")" not in s:
            out.pending = (n, raw, fields)
            continue
        yield n, raw, fields


def _parse_rpz(lines: list[str], lo: int, out: _Out) -> None:
    """RPZ (draft-vixie-dnsop-dns-rpz) QNAME triggers only; RPZ-IP and NSDNAME triggers and local data are
    skipped because our policy can only answer NXDOMAIN, NODATA, the sinkhole or pass."""
    for n, raw, fields in _rpz_records(lines, lo, out):
        first = fields[0]
        if first.startswith("$"):
            directive = first.upper()
            if directive == "$ORIGIN" and len(fields) > 1:
                o = fields[1].lower()
                o = o if o.endswith(".") else f"{o}.{out.origin or '.'}".replace("..", ".")
                out.origin = "" if o == "." else o
            elif directive != "$TTL":
                out.skip(n, f"{directive} is not supported", raw)
            continue
        owner = out.owner = first or out.owner
        i = 1
        while i < len(fields) and (fields[i][0].isdigit() or fields[i].upper() in _DNS_CLASSES):
            i += 1
        if i >= len(fields):
            out.skip(n, "incomplete record", raw)
            continue
        rtype = fields[i].upper()
        if rtype in ("SOA", "NS"):
            continue
        target = fields[i + 1].lower() if i + 1 < len(fields) else ""
        action = _RPZ_ACTIONS.get(target) if rtype == "CNAME" else None
        if action is None:
            reason = f"CNAME {target} is not supported" if target.startswith("rpz-") else ""
            out.skip(n, reason or "local-data answers are not supported", raw)
            continue
        name, origin = owner.lower(), out.origin
        if name.endswith(".") and origin:
            if not name.endswith("." + origin):
                out.skip(n, "owner is outside $ORIGIN" if name != origin else "owner is the zone apex", raw)
                continue
            name = name[: -len(origin) - 1]
        elif name == "@":
            out.skip(n, "owner is the zone apex", raw)
            continue
        if "rpz-" in name and name.rpartition(".")[2] in _RPZ_TRIGGERS:
            out.skip(n, f"{name.rpartition('.')[2]} triggers are not supported", raw)
        elif name.startswith("*."):
            out.add(name[2:], "below", action, n, raw)
        else:
            out.add(name, "exact", action, n, raw)


_PARSERS: dict[str, Callable[[list[str], int, _Out], None]] = {
    "hosts": _parse_hosts, "domains": _parse_domains, "wildcard": _parse_domains,
    "adblock": _parse_adblock, "rpz": _parse_rpz,
}


def detect_format(lines: Iterable[str]) -> Format:
    """Guess the format from the first DETECT_LINES lines that are not blank or comments.

    Strongest evidence wins: RPZ, then AdBlock (its parser also takes hosts and plain lines), then hosts,
    then wildcard (whose parser also takes plain names), else plain domains.
    """
    seen: set[Format] = set()
    counted = 0
    for raw in lines:
        s = raw.strip().lstrip("\ufeff")
        if not s or s[0] in "#!;":
            continue
        fields = s.split()
        if s[0] == "$":
            if s[1:].upper().startswith(("TTL", "ORIGIN")):
                return "rpz"
        elif any(f.upper() in ("SOA", "CNAME") for f in fields[1:5]) and not _is_ip(fields[0]):
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


def parse_text(text: str, source: str, fmt: Format | Literal["auto"] = "auto") -> ParsedList:
    """Parse a whole list; ``source`` only labels the result. Line numbers count ``\\n`` like an editor."""
    text = text.removeprefix("\ufeff")
    lines = (text.replace("\r\n", "\n") if "\r" in text else text).split("\n")
    if fmt == "auto":
        fmt = detect_format(lines)
    elif fmt not in get_args(Format):
        raise ConfigError(source, f"unknown list format {fmt!r}")
    out, parse, shapes = _Out(), _PARSERS[fmt], _SHAPES[fmt]
    for lo in range(0, len(lines), _CHUNK):
        chunk = lines[lo : lo + _CHUNK]
        if out.pending is not None or not _fast(out, chunk, lo, shapes):
            parse(chunk, lo, out)
    return ParsedList(source, fmt, out.entries(), tuple(out.skipped))


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
