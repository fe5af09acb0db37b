"""The line parsers, one per format, and format detection.

Lists come from strangers, so a line we cannot use is never fatal: it becomes a skipped line with a short reason
and its line number, which ``resolver check`` shows. Each parser takes a run of lines and the number of the first,
and writes to a ``Collector``; the fast path (``resolver.lists.fastpath``) sends them only the chunks it refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from resolver.lists.collect import Collector
from resolver.lists.entries import MAX_LINE, Action, Format, Match, is_ip

DETECT_LINES = 200
DETECT_CHARS = 1 << 16  # detect_format needs a few hundred lines, not the whole list split up

# Names a stock /etc/hosts maps to itself; hosts-format blocklists copy them, so skipping them is not news.
_HOSTS_LOCAL = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "0.0.0.0"})
_RPZ_TRIGGERS = frozenset({"rpz-ip", "rpz-nsip", "rpz-nsdname", "rpz-client-ip"})
_RPZ_ACTIONS: dict[str, Action] = {".": "nxdomain", "*.": "nodata", "rpz-passthru.": "allow"}
_DNS_CLASSES = frozenset({"IN", "CH", "HS", "CS"})


def _hosts_names(parts: list[str], n: int, raw: str, out: Collector) -> None:
    """Add the names of a hosts line whose first field is already known to be an IP address."""
    if len(parts) == 1:
        out.skip(n, "hosts line without a name", raw)
    for name in parts[1:]:
        low = name.lower()
        if low not in _HOSTS_LOCAL and not (low.startswith("ip6-") and "." not in low):
            out.add(low, "subtree", "block", n, raw)


def parse_hosts(lines: list[str], first: int, out: Collector) -> None:
    for n, raw in enumerate(lines, first):
        if len(raw) > MAX_LINE:
            out.skip(n, "line too long", raw)
            continue
        parts = (raw.partition("#")[0] if "#" in raw else raw).split()
        if not parts or parts[0][0] == "!":
            continue
        if not is_ip(parts[0]):
            out.skip(n, "not a hosts line: first field is not an IP address", raw)
            continue
        _hosts_names(parts, n, raw, out)


def parse_domains(lines: list[str], first: int, out: Collector) -> None:
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


def parse_adblock(lines: list[str], first: int, out: Collector) -> None:
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
        _adblock_rule(s, action, n, raw, out)


def _adblock_rule(s: str, action: Action, n: int, raw: str, out: Collector) -> None:
    """One rule with comments, the exception marker and modifiers taken off: its anchor says the match."""
    match: Match = "subtree"
    if s.startswith("||"):
        s = s[2:]
    elif s.startswith("|"):
        match, s = "exact", s[1:]
    elif s.startswith("."):  # `.d^` needs a dot before d: the names strictly below d
        match, s = "below", s[1:]
    elif " " in s or "\t" in s:
        parts = s.split()
        if is_ip(parts[0]):
            _hosts_names(parts, n, raw, out)
        else:
            out.skip(n, "unrecognised rule", raw)
        return
    s = s[:-2] if s.endswith("^|") else s[:-1] if s.endswith(("^", "|")) else s
    if s.startswith("*.") and match == "subtree":
        match, s = "below", s[2:]
    if "*" in s:
        out.skip(n, "wildcards inside a name are not supported", raw)
    elif s.endswith("."):  # `||ads.` matches ads.<any TLD>: a pattern, not a name
        out.skip(n, "open-ended patterns are not supported", raw)
    else:
        out.add(s, match, action, n, raw)


def _rpz_records(lines: list[str], first: int, out: Collector) -> Iterable[tuple[int, str, list[str]]]:
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


def parse_rpz(lines: list[str], first: int, out: Collector) -> None:
    """RPZ QNAME triggers only: RPZ-IP/NSDNAME triggers and local data are skipped, because our policy can
    only answer NXDOMAIN, NODATA, the sinkhole or pass."""
    for n, raw, fields in _rpz_records(lines, first, out):
        if fields[0].startswith("$"):
            _rpz_directive(fields, n, raw, out)
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
        _rpz_trigger(owner.lower(), action, n, raw, out)


def _rpz_directive(fields: list[str], n: int, raw: str, out: Collector) -> None:
    directive = fields[0].upper()
    if directive == "$ORIGIN" and len(fields) > 1:
        o = fields[1].lower()
        o = o if o.endswith(".") else f"{o}.{out.origin}" if out.origin else f"{o}."
        out.origin = "" if o == "." else o
    elif directive != "$TTL":
        out.skip(n, f"{directive} is not supported", raw)


def _rpz_trigger(name: str, action: Action, n: int, raw: str, out: Collector) -> None:
    """The owner of a record with a policy action: a QNAME trigger, relative to $ORIGIN."""
    origin = out.origin
    if name == "@" or (origin and name == origin):
        out.skip(n, "owner is the zone apex", raw)
        return
    if name.endswith(".") and origin:
        if not name.endswith("." + origin):
            out.skip(n, "owner is outside $ORIGIN", raw)
            return
        name = name[: -len(origin) - 1]
    trigger = name.rpartition(".")[2]
    if trigger in _RPZ_TRIGGERS:
        out.skip(n, f"{trigger} triggers are not supported", raw)
    elif name.startswith("*."):
        out.add(name[2:], "below", action, n, raw)
    else:
        out.add(name, "exact", action, n, raw)


LineParser = Callable[[list[str], int, Collector], None]  # (lines, number of the first, output)
PARSERS: dict[str, LineParser] = {
    "hosts": parse_hosts, "domains": parse_domains, "wildcard": parse_domains,
    "adblock": parse_adblock, "rpz": parse_rpz,
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
        if any(f.upper() in ("SOA", "CNAME") for f in fields[1:5]) and not is_ip(fields[0]):
            return "rpz"
        if s.startswith(("||", "@@", "|")) or (s[0] == "[" and s[-1] == "]"):
            seen.add("adblock")
        elif is_ip(fields[0]):
            seen.add("hosts")
        elif s.startswith("*."):
            seen.add("wildcard")
        counted += 1
        if counted >= DETECT_LINES:
            break
    return next((f for f in ("adblock", "hosts", "wildcard") if f in seen), "domains")
