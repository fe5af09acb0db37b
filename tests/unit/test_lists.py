"""Tests for resolver.lists.formats: every format and rule form, every skip reason with its line, hostile files.

Results are compared as plain tuples so a failure shows exactly which entry or skip differs.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest

from resolver.errors import ConfigError
from resolver.lists import fastpath, parsers
from resolver.lists import formats as lists
from resolver.lists.collect import Collector
from resolver.lists.formats import (
    ListEntry,
    ParsedList,
    SkippedLine,
    detect_format,
    normalise_name,
    parse_file,
    parse_text,
)

DATA = Path(__file__).parent.parent / "data" / "lists"

Entry = tuple[str, str, str, int]  # domain, match, action, line
Skip = tuple[int, str]  # line, reason


def entries(result: ParsedList) -> list[Entry]:
    return [(e.domain, e.match, e.action, e.line) for e in result.entries]


def skips(result: ParsedList) -> list[Skip]:
    return [(s.line, s.reason) for s in result.skipped]


def parse(text: str, fmt: lists.Format | str = "auto", allowlist: bool = False) -> tuple[list[Entry], list[Skip]]:
    result = parse_text(text, "test", fmt, allowlist=allowlist)  # type: ignore[arg-type]
    return entries(result), skips(result)


def parse_slow(text: str, fmt: lists.Format, monkeypatch: pytest.MonkeyPatch, allowlist: bool = False) -> ParsedList:
    """Parse with the chunk fast path switched off, so every line goes through the line parsers."""
    with monkeypatch.context() as m:
        m.setattr(fastpath, "fast", lambda *args: 0)
        return parse_text(text, "test", fmt, allowlist=allowlist)


# --- names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.com", "example.com"),
        ("Ads.Example.COM.", "ads.example.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("a-b.c_d.example", "a-b.c_d.example"),
        ("com", "com"),  # a single label is a valid name; the list parsers refuse it as a TLD
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de.", "xn--bcher-kva.de"),
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),  # 253 chars
    ],
)
def test_normalise_name_accepts(name: str, expected: str) -> None:
    assert normalise_name(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty name"),
        (".", "empty name"),
        ("a..com", "empty label"),
        (".a.com", "empty label"),
        ("a.com..", "empty label"),
        ("a" * 64 + ".com", "label longer than 63"),
        (".".join(["a" * 63] * 4), "name longer than 253"),
        ("exa mple.com", "invalid character ' '"),
        ("ex*.com", "invalid character '*'"),
        ("example.com/path", "invalid character '/'"),
        ("1.2.3.4", "an IP address, not a name"),
        ("xn--é.com", "cannot IDNA-encode label: Label starts with ACE prefix"),
        ("é" * 70 + ".com", "cannot IDNA-encode label: label empty or too long"),
    ],
)
def test_normalise_name_rejects(name: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        normalise_name(name)
    assert str(info.value) == reason


# --- hosts -------------------------------------------------------------------------------------------------


def test_hosts_names_comments_and_local_aliases() -> None:
    text = (
        "# comment\n"  # 1
        "! hostlist-compiler header\n"  # 2
        "0.0.0.0 ads.example.com\n"  # 3
        "127.0.0.1\tTracker.Example.NET.   # trailing comment\n"  # 4
        "0.0.0.0 one.example two.example#no space before the comment\n"  # 5
        ":: v6.example\n"  # 6
        "fe80::1%lo0 scoped.example\n"  # 7
        "127.0.0.1 localhost localhost.localdomain local broadcasthost\n"  # 8: silent
        "::1 ip6-localhost ip6-loopback\n"  # 9: silent
        "ff02::1 ip6-allnodes\n"  # 10: silent
        "0.0.0.0 0.0.0.0\n"  # 11: silent
        "0.0.0.0 LOCALHOST ip6-not-local.example\n"  # 12
        "\n"  # 13
    )
    assert parse(text, "hosts") == (
        [
            ("ads.example.com", "subtree", "block", 3),
            ("tracker.example.net", "subtree", "block", 4),
            ("one.example", "subtree", "block", 5),
            ("two.example", "subtree", "block", 5),
            ("v6.example", "subtree", "block", 6),
            ("scoped.example", "subtree", "block", 7),
            ("ip6-not-local.example", "subtree", "block", 12),
        ],
        [],
    )


def test_hosts_skip_reasons() -> None:
    text = (
        "0.0.0.0 ok.example\n"
        "ads.example.com\n"
        "0.0.0.0\n"
        "0.0.0.0 com\n"
        "0.0.0.0 bad_name!.example\n"
        "999.1.1.1 ads.example\n"
        "0.0.0.0 " + "a" * 64 + ".example\n"
    )
    assert parse(text, "hosts") == (
        [("ok.example", "subtree", "block", 1)],
        [
            (2, "not a hosts line: first field is not an IP address"),
            (3, "hosts line without a name"),
            (4, "refusing to block a top-level domain"),
            (5, "invalid name: invalid character '!'"),
            (6, "not a hosts line: first field is not an IP address"),
            (7, "invalid name: label longer than 63"),
        ],
    )


# --- domains and wildcard ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["domains", "wildcard"])
def test_domains_and_wildcard(fmt: lists.Format) -> None:
    text = (
        "# Title: test\n"  # 1
        "ads.example.com\n"  # 2
        "*.tracker.example\n"  # 3
        "  Mixed.Case.Example.  # comment\n"  # 4
        "! other comment\n"  # 5
        "0.0.0.0 hosts.example\n"  # 6
        "net\n"  # 7
        "*.org\n"  # 8
        "*.*.x.example\n"  # 9
    )
    assert parse(text, fmt) == (
        [
            ("ads.example.com", "subtree", "block", 2),
            ("tracker.example", "below", "block", 3),
            ("mixed.case.example", "subtree", "block", 4),
        ],
        [
            (6, "expected one name per line"),
            (7, "refusing to block a top-level domain"),
            (8, "refusing to block a top-level domain"),
            (9, "invalid name: invalid character '*'"),
        ],
    )


# --- adblock -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("||ads.example^", ("ads.example", "subtree", "block")),
        ("|ads.example^", ("ads.example", "exact", "block")),
        ("@@||ads.example^", ("ads.example", "subtree", "allow")),
        ("@@|ads.example^", ("ads.example", "exact", "allow")),
        ("||*.ads.example^", ("ads.example", "below", "block")),
        ("@@||*.ads.example^", ("ads.example", "below", "allow")),
        ("||ads.example", ("ads.example", "subtree", "block")),
        ("||ads.example^|", ("ads.example", "subtree", "block")),
        ("||ADS.Example^", ("ads.example", "subtree", "block")),
        ("||ads.example^$important", ("ads.example", "subtree", "block")),
        ("@@||ads.example^$important", ("ads.example", "subtree", "allow")),
        ("ads.example", ("ads.example", "subtree", "block")),
        ("ads.example^", ("ads.example", "subtree", "block")),
        ("0.0.0.0 ads.example", ("ads.example", "subtree", "block")),
        (".ads.example^", ("ads.example", "below", "block")),
        ("||bücher.example^", ("xn--bcher-kva.example", "subtree", "block")),
    ],
)
def test_adblock_rules(rule: str, expected: tuple[str, str, str]) -> None:
    """Each form's name and match; an allow rule (`@@`) allows only in an allow list, and is skipped elsewhere."""
    allowlist = expected[2] == "allow"
    assert parse(f"[Adblock Plus]\n{rule}\n", "adblock", allowlist) == ([(*expected, 2)], [])
    if allowlist:
        assert parse(f"[Adblock Plus]\n{rule}\n", "adblock") == ([], [(2, "allow rule outside an allow list")])


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("||ads.example^$badfilter", "unsupported modifier: $badfilter"),
        ("||ads.example^$denyallow=a.example|b.example", "unsupported modifier: $denyallow"),
        ("||ads.example^$dnsrewrite=1.2.3.4", "unsupported modifier: $dnsrewrite"),
        ("||ads.example^$client=192.168.0.1", "unsupported modifier: $client"),
        ("||ads.example^$ctag=device_tv", "unsupported modifier: $ctag"),
        ("||ads.example^$dnstype=AAAA", "unsupported modifier: $dnstype"),
        ("||ads.example^$important,badfilter", "unsupported modifier: $badfilter"),
        ("/^ad[sx]\\.example$/", "regex rules are not supported"),
        ("/banner/$important", "regex rules are not supported"),
        ("||p16-*.x.example^", "wildcards inside a name are not supported"),
        ("||ads.*.example^", "wildcards inside a name are not supported"),
        ("|*.ads.example^", "wildcards inside a name are not supported"),
        ("||ads.", "open-ended patterns are not supported"),
        ("example.com##.banner", "cosmetic rules are not supported"),
        ("example.com#@#.banner", "cosmetic rules are not supported"),
        ("||com^", "refusing to block a top-level domain"),
        ("@@||com^", "refusing to allow a top-level domain"),
        ("||1.2.3.4^", "invalid name: an IP address, not a name"),
        ("||ads.example/path^", "invalid name: invalid character '/'"),
        ("||^", "invalid name: empty name"),
        ("some text here", "unrecognised rule"),
    ],
)
def test_adblock_skips(rule: str, reason: str) -> None:
    allowlist = rule.startswith("@@")  # (an allow rule is read for its name only in an allow list)
    ok = ("ok.example", "subtree", "allow" if allowlist else "block", 1)
    assert parse(f"||ok.example^\n{rule}\n", "adblock", allowlist) == ([ok], [(2, reason)])


def test_adblock_comments_and_headers_are_not_skips() -> None:
    text = "[Adblock Plus 2.0]\n! Title: x\n# also a comment\n##.generic-cosmetic\n\n   \n||ads.example^\n"
    assert parse(text, "adblock") == ([("ads.example", "subtree", "block", 7)], [])


# --- rpz ---------------------------------------------------------------------------------------------------

RPZ_ZONE = """\
$TTL 3600
$ORIGIN rpz.example.
@ IN SOA ns.example. admin.example. (
        2024010101 ; serial
        3600 600 86400 300 )
  IN NS ns.example.
; a comment
ads.example CNAME .
*.ads.example 300 IN CNAME .
nodata.example IN 300 CNAME *.
pass.example CNAME rpz-passthru.
abs.example.rpz.example. CNAME .
*.abs.example.rpz.example. CNAME .
local.example A 127.0.0.1
local6.example AAAA ::1
walled.example CNAME walled-garden.example.
drop.example CNAME rpz-drop.
32.1.0.0.127.rpz-ip CNAME .
ns.bad.example.rpz-nsdname CNAME .
outside.example. CNAME .
rpz.example. CNAME .
Upper.Example cname .
\tCNAME .
lonely
$INCLUDE other.zone
"""


def test_rpz_zone() -> None:
    assert parse(RPZ_ZONE, "rpz") == (
        [
            ("ads.example", "exact", "nxdomain", 8),
            ("ads.example", "below", "nxdomain", 9),
            ("nodata.example", "exact", "nodata", 10),
            ("abs.example", "exact", "nxdomain", 12),
            ("abs.example", "below", "nxdomain", 13),
            ("upper.example", "exact", "nxdomain", 22),
            ("upper.example", "exact", "nxdomain", 23),  # blank owner: the previous record's
        ],
        [
            (11, "allow rule outside an allow list"),  # rpz-passthru. in a list that blocks
            (14, "local-data answers are not supported"),
            (15, "local-data answers are not supported"),
            (16, "local-data answers are not supported"),
            (17, "CNAME rpz-drop. is not supported"),
            (18, "rpz-ip triggers are not supported"),
            (19, "rpz-nsdname triggers are not supported"),
            (20, "owner is outside $ORIGIN"),
            (21, "owner is the zone apex"),
            (24, "incomplete record"),
            (25, "$INCLUDE is not supported"),
        ],
    )


def test_rpz_without_origin_takes_owners_as_names() -> None:
    text = "ads.example. CNAME .\n*.ads.example CNAME .\ncom CNAME .\n"
    assert parse(text, "rpz") == (
        [("ads.example", "exact", "nxdomain", 1), ("ads.example", "below", "nxdomain", 2)],
        [(3, "refusing to block a top-level domain")],
    )


def test_rpz_relative_origin_appends_to_the_previous_one() -> None:
    text = "$ORIGIN example.\n$ORIGIN rpz\nads.test.rpz.example. CNAME .\n"
    assert parse(text, "rpz") == ([("ads.test", "exact", "nxdomain", 3)], [])


# --- format detection --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "fmt"),
    [
        ("adguard-dns-filter.txt", "adblock"),
        ("hagezi-light-adblock.txt", "adblock"),
        ("danpollock-hosts.txt", "hosts"),
        ("stevenblack-hosts.txt", "hosts"),
        ("hagezi-light-domains.txt", "domains"),
        ("hagezi-light-rpz.txt", "rpz"),
        ("hagezi-light-wildcard.txt", "wildcard"),
    ],
)
def test_detect_format_on_real_lists(fixture: str, fmt: str) -> None:
    path = DATA / fixture
    assert detect_format(path.read_text().splitlines()) == fmt
    assert parse_file(path).format == fmt


@pytest.mark.parametrize(
    ("lines", "fmt"),
    [
        (["$ORIGIN rpz.example."], "rpz"),
        (["ads.example IN CNAME ."], "rpz"),
        (["# c", "@@||ads.example^"], "adblock"),
        (["[Adblock Plus 2.0]"], "adblock"),
        (["ads.example", "|ads.example^"], "adblock"),
        (["0.0.0.0 ads.example", "||ads.example^"], "adblock"),
        (["2001:db8::1 ads.example"], "hosts"),
        (["0.0.0.0 cname"], "hosts"),  # an IP first: not an RPZ record
        (["ads.example", "*.ads.example"], "wildcard"),
        (["; c", "# c", "! c", "ads.example"], "domains"),
        ([], "domains"),
        (["\ufeff0.0.0.0 ads.example"], "hosts"),
    ],
)
def test_detect_format(lines: list[str], fmt: str) -> None:
    assert detect_format(lines) == fmt


def test_detect_format_reads_only_the_head() -> None:
    lines = ["ads.example"] * parsers.DETECT_LINES + ["||late.example^"]
    assert detect_format(lines) == "domains"


# --- the real samples --------------------------------------------------------------------------------------


def test_adguard_sample() -> None:
    result = parse_file(DATA / "adguard-dns-filter.txt")
    assert result.source == str(DATA / "adguard-dns-filter.txt")
    assert entries(result)[:2] == [
        ("humiliatedaboveboardwho.com", "subtree", "block", 10),
        ("egmoytcwvwfnc.website", "subtree", "block", 11),
    ]
    assert entries(result)[-4:] == [
        ("hestherchiffer.com", "subtree", "block", 29),
        ("direct-specific.com", "subtree", "block", 30),
        ("bbelements.com", "below", "block", 34),
        ("adsrvmedia.adk2.co", "subtree", "block", 35),
    ]
    assert len(result.entries) == 23
    assert result.skipped == (
        SkippedLine(31, "wildcards inside a name are not supported", "||ad-host-backup-*.aliyuncs.com^"),
        SkippedLine(32, "regex rules are not supported", "/^139\\.45\\.197\\.2(4[0-9]|5[0-4]):/"),
        SkippedLine(33, "open-ended patterns are not supported", "||fxhpaoxqyajvmdg."),
        SkippedLine(36, "unsupported modifier: $badfilter", "||tn.porngo.xxx^$badfilter"),
    )


def test_danpollock_sample_strips_trailing_comments() -> None:
    result = parse_file(DATA / "danpollock-hosts.txt")
    assert result.skipped == ()
    assert entries(result)[-4:] == [
        ("counters.auctiva.com", "subtree", "block", 31),
        ("counters.honesty.com", "subtree", "block", 32),
        ("quantserve.com", "subtree", "block", 33),
        ("t.signauxdeux.com", "subtree", "block", 34),
    ]
    assert ("media.fastclick.net", "subtree", "block", 14) in entries(result)


@pytest.mark.parametrize(
    ("fixture", "first", "count"),
    [
        ("stevenblack-hosts.txt", ("ad-assets.futurecdn.net", "subtree", "block", 10), 31),
        ("hagezi-light-adblock.txt", ("0.0-02.net", "subtree", "block", 14), 27),
        ("hagezi-light-domains.txt", ("0-0-0checkmate.com", "subtree", "block", 13), 28),
        ("hagezi-light-wildcard.txt", ("0.0-02.net", "below", "block", 13), 28),
        ("hagezi-light-rpz.txt", ("smetrics.abbott", "exact", "nxdomain", 17), 24),
    ],
)
def test_samples(fixture: str, first: Entry, count: int) -> None:
    result = parse_file(DATA / fixture)
    assert result.skipped == ()
    assert entries(result)[0] == first
    assert len(result.entries) == count


def test_rpz_sample_pairs_exact_and_below() -> None:
    assert entries(parse_file(DATA / "hagezi-light-rpz.txt"))[2:4] == [
        ("ify.ac", "exact", "nxdomain", 19),
        ("ify.ac", "below", "nxdomain", 20),
    ]


# --- encodings and line endings ----------------------------------------------------------------------------


def test_crlf_and_bom() -> None:
    text = "\ufeff# header\r\n0.0.0.0 a.example\r\n0.0.0.0 b.example # c\r\nbad line\r\n"
    assert parse(text) == (
        [("a.example", "subtree", "block", 2), ("b.example", "subtree", "block", 3)],
        [(4, "not a hosts line: first field is not an IP address")],
    )
    assert parse_text(text, "t").skipped[0].text == "bad line"


def test_bom_and_crlf_through_parse_file(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbf||a.example^\r\n||b.example^\r\n")
    result = parse_file(path)
    assert (result.format, entries(result)) == (
        "adblock",
        [("a.example", "subtree", "block", 1), ("b.example", "subtree", "block", 2)],
    )


def test_idn_in_every_format() -> None:
    assert parse("0.0.0.0 bücher.example\n", "hosts")[0] == [("xn--bcher-kva.example", "subtree", "block", 1)]
    assert parse("*.bücher.example\n", "wildcard")[0] == [("xn--bcher-kva.example", "below", "block", 1)]
    assert parse("Bücher.example CNAME .\n", "rpz")[0] == [("xn--bcher-kva.example", "exact", "nxdomain", 1)]


# --- hostile input -----------------------------------------------------------------------------------------


def test_long_line_is_skipped_and_cut() -> None:
    long = "0.0.0.0 " + "a" * 5000 + ".example"
    result = parse_text(f"0.0.0.0 ok.example\n{long}\n0.0.0.0 after.example\n", "t", "hosts")
    assert entries(result) == [("ok.example", "subtree", "block", 1), ("after.example", "subtree", "block", 3)]
    assert result.skipped == (SkippedLine(2, "line too long", long[:200]),)


@pytest.mark.parametrize("fmt", ["hosts", "domains", "adblock", "rpz"])
def test_long_line_in_every_format(fmt: lists.Format) -> None:
    assert parse("x" * 4097 + "\n", fmt) == ([], [(1, "line too long")])


def test_file_with_nul(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(b"0.0.0.0 a.example\n\x00\x01\x02")
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert (info.value.where, info.value.reason) == (str(path), "not a text list: contains NUL bytes")


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("0.0.0.0 a.example\n0.0.0.0 caf\xe9.example\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        parse_file(path)
    assert info.value.reason == "not UTF-8 text at byte 29"  # 18 bytes in line 1, then "0.0.0.0 caf"


def test_file_over_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("a.example\n" * 100)
    with pytest.raises(ConfigError) as info:
        parse_file(path, max_bytes=999)
    assert info.value.reason == "larger than 999 bytes"
    assert len(parse_file(path, max_bytes=1000).entries) == 100


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_file(tmp_path / "nope.txt")
    assert (info.value.where, info.value.reason) == (str(tmp_path / "nope.txt"), "No such file or directory")
    with pytest.raises(ConfigError) as info:
        parse_file(tmp_path)
    assert info.value.reason == "Is a directory"


def test_empty_text_and_unknown_format() -> None:
    assert parse_text("", "empty") == ParsedList("empty", "domains", (), ())
    with pytest.raises(ConfigError, match="unknown list format 'csv'"):
        parse_text("a.example\n", "x", "csv")  # type: ignore[arg-type]


def test_skipped_text_is_cut_to_200_chars() -> None:
    line = "||" + "a" * 300 + "*.example^"
    assert parse_text(line, "t").skipped == (SkippedLine(1, "wildcards inside a name are not supported", line[:200]),)


def test_entries_are_frozen_values() -> None:
    entry = parse_text("||a.example^\n", "t").entries[0]
    assert entry == ListEntry("a.example", "subtree", "block", 1)
    assert hash(entry) == hash(ListEntry("a.example", "subtree", "block", 1))
    with pytest.raises(AttributeError):
        entry.domain = "b.example"  # type: ignore[misc]


def test_gc_is_restored() -> None:
    assert gc.isenabled()
    parse_text("||a.example^\n", "t")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_text("||a.example^\n", "t")
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- the chunk fast path must agree with the line parsers --------------------------------------------------

_ODD = [
    "", "# comment", "! comment", "localhost", "LOCALHOST.localdomain", "com", "1.2.3.4", "a..b.example",
    "-lead.example", "trail-.example", "x" * 64 + ".example", "bücher.example", "UPPER.Example",
    "ex ample.example", "*.wild.example", "*.*.x.example", "a*b.example", "dot.example.", ".lead.example",
    "tab\tsep.example", "ends.with1", "_srv.example", "ip6-localhost", "0.0.0.0", "x.rpz-ip", "@", "x" * 4100,
    ".".join(["a" * 63] * 4), ".".join(["a" * 63] * 3) + "." + "b" * 61, "a" * 63 + ".example", "x!.example",
    "co.uk", "Github.IO", "s3.amazonaws.com", "x.ck", "www.ck", "a.www.ck", "kobe.jp", "city.kobe.jp", "x.kobe.jp",
]  # fmt: skip  (the last: public suffixes, and names beside them that are not)
_SHAPED = {
    "hosts": ("0.0.0.0 {}", "127.0.0.1 {}", "{}", ":: {}", "0.0.0.0 {} # c", "0.0.0.0 {} x.example"),
    "domains": ("{}", "*.{}", "{} # c", " {}"),
    "wildcard": ("*.{}", "{}"),
    "adblock": ("||{}^", "@@||{}^", "||*.{}^", "|{}^", "||{}", "{}", "||{}^$important", "||{}^$client=x"),
    "rpz": ("{} CNAME .", "*.{} CNAME .", "{} IN CNAME *.", "{}. CNAME .", "{} A 1.2.3.4", "\tCNAME .", "$ORIGIN {}."),
}  # fmt: skip


def _random_list(rng: random.Random, fmt: str, lines: int) -> str:
    out = []
    for i in range(lines):
        if rng.random() < 0.97:
            name = f"host{i}.zone{rng.randrange(50)}.example"
            template = _SHAPED[fmt][0 if rng.random() < 0.9 else 1]
        else:
            name, template = rng.choice(_ODD), rng.choice(_SHAPED[fmt])
        out.append(template.format(name))
    return "\n".join(out) + rng.choice(["", "\n", "\n\n"])


@pytest.mark.parametrize("allowlist", [False, True], ids=["blocklist", "allowlist"])
@pytest.mark.parametrize("fmt", ["hosts", "domains", "wildcard", "adblock", "rpz"])
@pytest.mark.parametrize("seed", range(4))
def test_fast_path_agrees_with_line_parsers(fmt: lists.Format, seed: int, allowlist: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    text = _random_list(random.Random(seed), fmt, 6000)  # several chunks, odd lines in most of them
    assert parse_text(text, "test", fmt, allowlist=allowlist) == parse_slow(text, fmt, monkeypatch, allowlist)


@pytest.mark.parametrize("allowlist", [False, True], ids=["blocklist", "allowlist"])
@pytest.mark.parametrize("fmt", ["hosts", "domains", "wildcard", "adblock", "rpz"])
def test_fast_path_agrees_on_odd_lines_alone(fmt: lists.Format, allowlist: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    text = "\n".join(template.format(odd) for odd in _ODD for template in _SHAPED[fmt])
    assert parse_text(text, "test", fmt, allowlist=allowlist) == parse_slow(text, fmt, monkeypatch, allowlist)


@pytest.mark.parametrize("allowlist", [False, True], ids=["blocklist", "allowlist"])
@pytest.mark.parametrize("fmt", ["hosts", "domains", "wildcard", "adblock", "rpz"])
def test_fast_path_refuses_each_odd_line_in_a_clean_chunk(fmt: lists.Format, allowlist: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clean = "\n".join(_SHAPED[fmt][0].format(f"host{i}.example") for i in range(50))
    for odd in _ODD:
        for template in _SHAPED[fmt]:
            line = template.format(odd)
            for text in (f"{line}\n{clean}", f"{clean}\n{line}\n{clean}", f"{clean}\n{line}"):
                fast = parse_text(text, "test", fmt, allowlist=allowlist)
                assert fast == parse_slow(text, fmt, monkeypatch, allowlist), line


def test_fast_path_takes_clean_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard the speed: a clean list must not fall back to the line parser chunk by chunk."""
    slow_lines = 0
    parse_hosts = parsers.PARSERS["hosts"]

    def counting(chunk: list[str], first: int, out: Collector) -> None:
        nonlocal slow_lines
        slow_lines += len(chunk)
        parse_hosts(chunk, first, out)

    monkeypatch.setitem(parsers.PARSERS, "hosts", counting)
    text = "# header\n" + "".join(f"0.0.0.0 ads{i}.example.com\n" for i in range(20000))
    result = parse_text(text, "t")
    assert len(result.entries) == 20000
    assert result.entries[-1] == ListEntry("ads19999.example.com", "subtree", "block", 20001)
    assert slow_lines < 100
