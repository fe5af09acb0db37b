"""A ban cannot be lifted by a list (issue 14): allow rules only from allow lists, no entry that is a public
suffix, URL lists over https, content pinned by sha256.

Every parse rule is checked on the three ways a list is read: the whole-file parse (``parse_text``, what
``explain`` and ``check`` re-read), the same with the chunk fast path off (the line parsers alone), and the
stream (``ListStream``, the bulk path of ``serve`` and reloads), which must agree line for line.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from publicsuffixlist import PublicSuffixList

from resolver.config.loader import load_config, with_overrides
from resolver.config.policy import ListSource
from resolver.errors import ConfigError
from resolver.lists import collect, fastpath, suffixes
from resolver.lists.entries import MAX_SKIPPED, normalise_name
from resolver.lists.fetch import fetch_list, needs_fetch
from resolver.lists.formats import ParsedList, parse_text
from resolver.lists.load import load_policy
from resolver.lists.stream import ListStream
from resolver.lists.suffixes import covers_any, is_public_suffix
from tests.support.listsite import ListSite

OUTSIDE = "allow rule outside an allow list"
SUFFIX = "public suffix: would cover every name under it"
Entry = tuple[str, str, str, int]
Skip = tuple[int, str]


def read_all_ways(text: str, fmt: str, allowlist: bool, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[list[Entry], list[Skip], ParsedList]:
    """Entries and skips of ``text`` read every way, after checking that the ways agree."""
    whole = parse_text(text, "test", fmt, allowlist=allowlist)  # type: ignore[arg-type]
    with monkeypatch.context() as m:
        m.setattr(fastpath, "fast", lambda *args: 0)
        slow = parse_text(text, "test", fmt, allowlist=allowlist)  # type: ignore[arg-type]
    assert slow == whole
    path = tmp_path / "list.txt"
    path.write_text(text)
    stream = ListStream(path, fmt, "test", allowlist=allowlist)  # type: ignore[arg-type]
    streamed = sorted(((name, match, action) for match, action, names in stream.runs() for name in names))
    assert streamed == sorted((e.domain, e.match, e.action) for e in whole.entries)
    parsed = stream.parsed()
    assert (parsed.skipped, parsed.allow_names, parsed.blocking) == (whole.skipped, whole.allow_names,
                                                                     whole.blocking)
    return ([(e.domain, e.match, e.action, e.line) for e in whole.entries],
            [(s.line, s.reason) for s in whole.skipped], whole)


# --- allow rules only from allow lists ---------------------------------------------------------------------

CASES = [  # format, text, allowlist, entries, skips
    ("adblock", "@@||tiktok.com^\n", False, [], [(1, OUTSIDE)]),
    ("adblock", "||a.example^\n@@||b.example^\n@@|c.example^$important\n@@||*.d.example^\n", False,
     [("a.example", "subtree", "block", 1)], [(2, OUTSIDE), (3, OUTSIDE), (4, OUTSIDE)]),
    ("adblock", "||a.example^\n@@||b.example^\n|c.example^\n||*.d.example^\n0.0.0.0 e.example\n", True,
     [("a.example", "subtree", "allow", 1), ("b.example", "subtree", "allow", 2), ("c.example", "exact", "allow", 3),
      ("d.example", "below", "allow", 4), ("e.example", "subtree", "allow", 5)], []),
    ("hosts", "0.0.0.0 a.example b.example\n127.0.0.1 c.example\n", True,
     [("a.example", "subtree", "allow", 1), ("b.example", "subtree", "allow", 1),
      ("c.example", "subtree", "allow", 2)], []),
    ("domains", "a.example\n", True, [("a.example", "subtree", "allow", 1)], []),
    ("wildcard", "a.example\n*.b.example\n", True,
     [("a.example", "subtree", "allow", 1), ("b.example", "below", "allow", 2)], []),
    ("rpz", "a.example CNAME .\nb.example CNAME *.\nc.example CNAME rpz-passthru.\n*.d.example CNAME .\n", False,
     [("a.example", "exact", "nxdomain", 1), ("b.example", "exact", "nodata", 2),
      ("d.example", "below", "nxdomain", 4)], [(3, OUTSIDE)]),
    ("rpz", "a.example CNAME .\nb.example CNAME *.\nc.example CNAME rpz-passthru.\n*.d.example CNAME .\n", True,
     [("a.example", "exact", "allow", 1), ("b.example", "exact", "allow", 2), ("c.example", "exact", "allow", 3),
      ("d.example", "below", "allow", 4)], []),
    ("adblock", "@@||com^\n", True, [], [(1, "refusing to allow a top-level domain")]),
]


@pytest.mark.parametrize(("fmt", "text", "allowlist", "want", "skips"), CASES)
def test_allow_rules_come_only_from_allow_lists(fmt: str, text: str, allowlist: bool, want: list[Entry],
                                                skips: list[Skip], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_all_ways(text, fmt, allowlist, tmp_path, monkeypatch)[:2] == (want, skips)


def test_skipped_allow_rules_keep_their_line_and_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    *_, parsed = read_all_ways("||a.example^\n  @@||tiktok.com^  \n", "adblock", False, tmp_path, monkeypatch)
    assert [(s.line, s.reason, s.text) for s in parsed.skipped] == [(2, OUTSIDE, "@@||tiktok.com^")]


def test_a_run_of_allow_rules_in_a_list_that_blocks_is_skipped_line_by_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path takes clean chunks of `@@||x^` only for an allow list; elsewhere each line is skipped."""
    text = "".join(f"@@||h{i}.example^\n" for i in range(3000)) + "||last.example^\n"
    entries, skips, parsed = read_all_ways(text, "adblock", False, tmp_path, monkeypatch)
    assert (entries, len(skips), parsed.skipped_count) == ([("last.example", "subtree", "block", 3001)],
                                                          MAX_SKIPPED, 3000)
    entries, skips, parsed = read_all_ways(text, "adblock", True, tmp_path, monkeypatch)
    assert (len(entries), skips, parsed.blocking) == (3001, [], 0)


# --- what the reduction check reads: allow names and the count of blocking entries -------------------------


def test_allow_names_and_blocking_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "z.example CNAME .\n*.y.example CNAME *.\nx.example CNAME rpz-passthru.\n"
    *_, blocking = read_all_ways(text, "rpz", False, tmp_path, monkeypatch)
    assert (blocking.allow_names, blocking.blocking) == ((), 2)
    *_, allowing = read_all_ways(text, "rpz", True, tmp_path, monkeypatch)
    assert (allowing.allow_names, allowing.blocking) == (("z.example", "y.example", "x.example"), 0)


def test_allow_names_keep_the_first_of_a_long_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collect, "MAX_ALLOW_NAMES", 5)
    text = "".join(f"a{i}.example\n" for i in range(3000))
    entries, _, parsed = read_all_ways(text, "domains", True, tmp_path, monkeypatch)
    assert (len(entries), parsed.allow_names) == (3000, tuple(f"a{i}.example" for i in range(5)))


# --- public suffixes ---------------------------------------------------------------------------------------


def test_is_public_suffix_agrees_with_the_package_on_every_rule() -> None:
    """Each rule, a name below it, two below it, and its parent: what the package's own lookup says."""
    package = PublicSuffixList()
    rules = suffixes.rules()
    names = set()
    for rule in rules.exact | rules.wild | rules.exceptions:
        names |= {rule, f"x.{rule}", f"a.x.{rule}", rule.partition(".")[2]}
    names.discard("")
    wrong = sorted(name for name in names if is_public_suffix(name) != package.is_public(name))
    assert not wrong, wrong[:20]
    assert len(rules.exact) > 9000 and rules.wild and rules.exceptions


@pytest.mark.parametrize(("name", "public"), [
    ("com", True), ("co.uk", True), ("github.io", True), ("s3.amazonaws.com", True), ("blogspot.com", True),
    ("x.ck", True), ("www.ck", False), ("a.www.ck", False), ("kobe.jp", True), ("x.kobe.jp", True),
    ("city.kobe.jp", False), ("example.com", False), ("bbc.co.uk", False), ("x.github.io", False),
    (normalise_name("公司.cn"), True), (normalise_name("例子.公司.cn"), False),
])
def test_is_public_suffix(name: str, public: bool) -> None:
    assert is_public_suffix(name) is public
    maybe = public or name in suffixes.rules().exceptions  # (the chunk check says maybe for an exception, and
    # the line's own check tells it apart)
    assert covers_any(["a.example", name, "b.example"]) is maybe


def test_the_list_is_read_from_the_package_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("the public suffix list must not be fetched")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    suffixes.rules.cache_clear()
    assert is_public_suffix("co.uk") and not is_public_suffix("bbc.co.uk")


SUFFIX_CASES = [  # format, text, entries, skips (in a list that blocks)
    ("adblock", "||co.uk^\n@@||github.io^\n||ok.co.uk^\n||*.co.uk^\n|github.io^\n",
     [("ok.co.uk", "subtree", "block", 3)], [(1, SUFFIX), (2, OUTSIDE), (4, SUFFIX), (5, SUFFIX)]),
    ("hosts", "0.0.0.0 s3.amazonaws.com bucket.s3.amazonaws.com\n",
     [("bucket.s3.amazonaws.com", "subtree", "block", 1)], [(1, SUFFIX)]),
    ("domains", "x.ck\nwww.ck\nGitHub.IO.\ncom\n", [("www.ck", "subtree", "block", 2)],
     [(1, SUFFIX), (3, SUFFIX), (4, "refusing to block a top-level domain")]),
    ("wildcard", "*.co.uk\n*.bbc.co.uk\n", [("bbc.co.uk", "below", "block", 2)], [(1, SUFFIX)]),
    ("rpz", "co.uk CNAME .\n*.co.uk CNAME .\nexample.co.uk CNAME *.\n",
     [("example.co.uk", "exact", "nodata", 3)], [(1, SUFFIX), (2, SUFFIX)]),
]


@pytest.mark.parametrize(("fmt", "text", "want", "skips"), SUFFIX_CASES)
def test_public_suffixes_are_skipped_in_every_format(fmt: str, text: str, want: list[Entry], skips: list[Skip],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_all_ways(text, fmt, False, tmp_path, monkeypatch)[:2] == (want, skips)


def test_public_suffixes_are_skipped_in_allow_lists_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries, skips, _ = read_all_ways("@@||github.io^\n@@||me.github.io^\n", "adblock", True, tmp_path, monkeypatch)
    assert (entries, skips) == ([("me.github.io", "subtree", "allow", 2)], [(1, SUFFIX)])


def test_a_public_suffix_in_a_clean_list_costs_its_own_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f"0.0.0.0 host{i}.example.com" for i in range(20000)]
    lines[12345] = "0.0.0.0 co.uk"
    entries, skips, _ = read_all_ways("\n".join(lines) + "\n", "hosts", False, tmp_path, monkeypatch)
    assert (len(entries), skips) == (19999, [(12346, SUFFIX)])


# --- config: allowlist, insecure, sha256 -------------------------------------------------------------------

PIN = hashlib.sha256(b"||ads.example^\n").hexdigest()


def config_error(tmp_path: Path, entry: str) -> tuple[str, str]:
    path = tmp_path / "resolver.yaml"
    path.write_text(f"policy:\n  lists:\n    - {entry}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.where, info.value.reason


@pytest.mark.parametrize(("entry", "key", "reason"), [
    ("{url: 'http://lists.example/a.txt'}", "url",
     "'http://lists.example/a.txt' is plain http: a list must come over https (or set insecure: true to take it "
     "unprotected)"),
    ("{url: 'ftp://lists.example/a.txt'}", "url", "must be an https:// URL, got 'ftp://lists.example/a.txt'"),
    ("{path: a.txt, insecure: true}", "insecure", "only a url list is fetched, so only a url list can be insecure"),
    ("{path: a.txt, allowlist: 'yes'}", "allowlist", "must be true or false, got 'yes'"),
    ("{path: a.txt, sha256: abc}", "sha256", "must be 64 hex digits (a quoted string), got 'abc'"),
    (f"{{path: a.txt, sha256: '{PIN[:-1]}g'}}", "sha256",
     f"must be 64 hex digits (a quoted string), got '{PIN[:-1]}g'"),
    ("{path: a.txt, sha256: 12345}", "sha256", "must be 64 hex digits (a quoted string), got 12345"),
])
def test_list_entry_refusals_name_the_key(tmp_path: Path, entry: str, key: str, reason: str) -> None:
    assert config_error(tmp_path, entry) == (f"{tmp_path / 'resolver.yaml'}: policy.lists[0].{key}", reason)


def test_list_entry_keys(tmp_path: Path) -> None:
    path = tmp_path / "resolver.yaml"
    path.write_text("policy:\n  lists:\n"
                    f"    - {{path: a.txt, allowlist: true, sha256: '{PIN.upper()}'}}\n"
                    "    - {url: 'http://lists.example/b.txt', insecure: true}\n"
                    "    - {url: 'https://lists.example/c.txt'}\n")
    a, b, c = load_config(path).policy.lists
    assert (a.allowlist, a.sha256, a.insecure, a.where) == (True, PIN, False, f"{path}: policy.lists[0]")
    assert (b.allowlist, b.sha256, b.insecure) == (False, None, True)
    assert (c.allowlist, c.sha256, c.insecure) == (False, None, False)


# --- load: pins, public suffixes, insecure lists -----------------------------------------------------------


def load(tmp_path: Path, entries: str, strict: bool = False) -> object:
    path = tmp_path / "resolver.yaml"
    path.write_text(f"policy:\n  block: []\n  list_cache_dir: {tmp_path / 'cache'}\n  lists:\n{entries}")
    return load_policy(load_config(path), strict)


def test_a_path_list_must_match_its_pin(tmp_path: Path) -> None:
    listed = tmp_path / "ads.txt"
    listed.write_bytes(b"||ads.example^\n")
    load(tmp_path, f"    - {{path: {listed}, sha256: '{PIN}'}}\n")
    listed.write_bytes(b"||ads.example^\n@@||tiktok.com^\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"    - {{path: {listed}, sha256: '{PIN}'}}\n")
    got = hashlib.sha256(listed.read_bytes()).hexdigest()
    assert (info.value.where, info.value.reason) == (str(listed), f"sha256 mismatch: expected {PIN}, got {got}")


def test_a_cached_url_copy_must_match_its_pin(tmp_path: Path) -> None:
    url = "https://lists.example/ads.txt"
    cached = ListSource("ads", url=url).cache_path(tmp_path / "cache")
    cached.parent.mkdir()
    cached.write_bytes(b"||other.example^\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"    - {{url: '{url}', sha256: '{PIN}'}}\n")
    assert info.value.where == str(cached)
    assert info.value.reason.startswith(f"sha256 mismatch (the last copy of {url}): expected {PIN}, got ")


def test_public_suffix_entries_are_logged_at_load_and_refused_by_check(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    junk = "".join(f"bad_{i}..example\n" for i in range(MAX_SKIPPED + 10))  # (past the skipped lines kept)
    listed = tmp_path / "ads.txt"
    listed.write_text(f"ok.example\n{junk}co.uk # \x1b[31m\ngithub.io\n")  # (a stranger's bytes, shown escaped)
    with caplog.at_level(logging.WARNING, "resolver"):
        load(tmp_path, f"    - {{path: {listed}}}\n")
    [record] = [r for r in caplog.records if "public suffix" in r.getMessage()]
    line = MAX_SKIPPED + 12
    assert record.getMessage() == (f"list {listed}: 2 entries skipped, each a public suffix that would cover every "
                                   f"name under it (the first at {listed}:{line}: 'co.uk # \\x1b[31m')")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"    - {{path: {listed}}}\n", strict=True)
    assert (info.value.where, info.value.reason) == (f"{listed}:{line}", f"'co.uk # \\x1b[31m': {SUFFIX}")


def test_an_insecure_list_is_logged_at_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "resolver"):
        load(tmp_path, "    - {url: 'http://lists.example/a.txt', insecure: true, name: plain}\n")
    assert [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()] == [
        f"list plain: fetched over plain http ({tmp_path / 'resolver.yaml'}: policy.lists[0].insecure: true): anyone "
        "on the path can change what it blocks"]


def test_blocklist_flag_lists_are_not_allow_lists(tmp_path: Path) -> None:
    listed = tmp_path / "ads.txt"
    listed.write_text("@@||tiktok.com^\n||ads.example^\n")
    config = tmp_path / "resolver.yaml"
    config.write_text("policy:\n  block: []\n")
    [parsed] = load_policy(with_overrides(load_config(config), blocklists=[str(listed)])).lists
    assert ([(s.line, s.reason) for s in parsed.skipped], parsed.allow_names) == ([(1, OUTSIDE)], ())


# --- fetch over https, pinned ------------------------------------------------------------------------------


@pytest.fixture
def https_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListSite]:
    tls = tmp_path / "tls"
    tls.mkdir()
    with ListSite(b"||ads.example^\n", tls) as site:
        assert site.ca is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(site.ca))  # trusted the way the system store is: no patching
        yield site


def test_fetch_keeps_only_the_pinned_content(https_site: ListSite, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "ads.txt"
    source = ListSource("ads", url=https_site.url(), sha256=PIN)
    assert fetch_list(source, target) is True and target.read_bytes() == b"||ads.example^\n"
    https_site.body = b"||ads.example^\n@@||tiktok.com^\n"
    got = hashlib.sha256(https_site.body).hexdigest()
    with pytest.raises(ConfigError) as info:
        fetch_list(source, target)
    assert (info.value.where, info.value.reason) == (
        https_site.url(), f"sha256 mismatch: expected {PIN}, got {got}; keeping the old copy")
    assert target.read_bytes() == b"||ads.example^\n"
    assert https_site.requests == ["/list.txt", "/list.txt"]


def test_fetch_checks_the_certificate(https_site: ListSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    with pytest.raises(ConfigError, match=r"download failed: .*CERTIFICATE_VERIFY_FAILED"):
        fetch_list(ListSource("ads", url=https_site.url()), tmp_path / "ads.txt")
    assert not (tmp_path / "ads.txt").exists()


def test_fetch_refuses_a_redirect_to_plain_http(https_site: ListSite, tmp_path: Path) -> None:
    with ListSite(b"||plain.example^\n") as plain:
        https_site.redirect_to = plain.url()
        target = tmp_path / "ads.txt"
        with pytest.raises(ConfigError) as info:
            fetch_list(ListSource("ads", url=https_site.url("/redirect")), target)
        assert info.value.reason == f"download failed: redirected to {plain.url()!r}, which is not https"
        assert (plain.requests, target.exists()) == ([], False)
        assert fetch_list(ListSource("ads", url=https_site.url("/redirect"), insecure=True), target) is True
        assert (plain.requests, target.read_bytes()) == (["/list.txt"], b"||plain.example^\n")


def test_fetch_of_an_allow_list_counts_its_allow_rules(https_site: ListSite, tmp_path: Path) -> None:
    """A download is checked the way its list is read: `@@` rules are usable entries only in an allow list."""
    https_site.body = b"@@||ok.example^\n"
    with pytest.raises(ConfigError, match=r"no usable entries \(1 lines skipped\)"):
        fetch_list(ListSource("ok", url=https_site.url()), tmp_path / "ok.txt")
    assert fetch_list(ListSource("ok", url=https_site.url(), allowlist=True), tmp_path / "ok.txt") is True


def test_a_url_list_needs_a_fetch_when_its_copy_is_missing_or_not_the_one_pinned(tmp_path: Path) -> None:
    """What start-up and a reload ask before building: a changed pin must bring the new release first."""
    url = "https://lists.example/ads.txt"
    cached = ListSource("ads", url=url).cache_path(tmp_path)
    assert needs_fetch(ListSource("ads", url=url, sha256=PIN), tmp_path)
    cached.write_bytes(b"||ads.example^\n")
    assert not needs_fetch(ListSource("ads", url=url, sha256=PIN), tmp_path)
    assert not needs_fetch(ListSource("ads", url=url), tmp_path)
    assert needs_fetch(ListSource("ads", url=url, sha256="0" * 64), tmp_path)
    assert not needs_fetch(ListSource("ads", path=tmp_path / "ads.txt", sha256="0" * 64), tmp_path)
