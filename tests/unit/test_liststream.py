"""Streamed list files (``resolver serve`` and reloads): the same entries, skips and errors as ``parse_file``.

The stream reads a file in blocks and hands on runs of names; nothing per entry is kept. Small blocks are forced
here so that every test crosses many block boundaries (lines, CRLF pairs and long lines split across reads).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.config.loader import load_config, with_overrides
from resolver.config.policy import ListSource
from resolver.errors import ConfigError
from resolver.lists import formats as lists
from resolver.lists import stream as liststream
from resolver.lists.fetch import fetch_list
from resolver.lists.formats import parse_file, parse_text
from resolver.lists.load import load_policy
from resolver.lists.stream import ListStream
from resolver.ops.reload import Summary
from tests.support.alarm import no_hang
from tests.unit.test_hostile import FORMATS, LIST_TEXT, SLOWER
from tests.unit.test_lists import _random_list

Item = tuple[str, str, str]  # domain, match, action


NOT_REGULAR = "not a regular file (a pipe, socket or device is never read)"


def stream(path: Path, fmt: str = "auto", **kwargs: object) -> tuple[ListStream, list[Item]]:
    s = ListStream(path, fmt, str(path), **kwargs)  # type: ignore[arg-type]
    items = [(name, match, action) for match, action, names in s.runs() for name in names]
    return s, items


def expected(path: Path, fmt: str = "auto", allowlist: bool = False) -> tuple[lists.ParsedList, list[Item]]:
    parsed = parse_file(path, fmt, allowlist=allowlist)  # type: ignore[arg-type]
    return parsed, [(e.domain, e.match, e.action) for e in parsed.entries]


def same_as_parse_file(path: Path, fmt: str = "auto", allowlist: bool = False) -> ListStream:
    s, items = stream(path, fmt, allowlist=allowlist)
    parsed, entries = expected(path, fmt, allowlist)
    assert Counter(items) == Counter(entries)
    assert (s.count, s.format, tuple(s.skipped)) == (len(entries), parsed.format, parsed.skipped)
    assert claim_order(items) == claim_order(entries)
    streamed = s.parsed()  # what the reduction check reads: the same from both paths
    assert (streamed.allow_names, streamed.blocking) == (parsed.allow_names, parsed.blocking)
    assert parsed.blocking + len(parsed.allow_names) == len(entries)  # (under MAX_ALLOW_NAMES allow entries)
    return s


def claim_order(items: list[Item]) -> dict[str, list[str]]:
    """Per name, its actions in the order they first claim it: the order of its rules in a verdict."""
    order: dict[str, dict[str, None]] = {}
    for name, _, action in items:
        order.setdefault(name, {})[action] = None
    return {name: list(actions) for name, actions in order.items()}


@pytest.fixture(params=[97, 4096, 1 << 20], ids=["97B", "4KB", "1MB"])
def block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(liststream, "BLOCK_BYTES", request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("allowlist", [False, True], ids=["blocklist", "allowlist"])
@pytest.mark.parametrize("fmt", ["hosts", "domains", "wildcard", "adblock", "rpz"])
@pytest.mark.parametrize("seed", range(3))
def test_stream_agrees_with_parse_file(tmp_path: Path, block: int, fmt: lists.Format, seed: int,
                                       allowlist: bool) -> None:
    rng = random.Random(seed)
    text = _random_list(rng, fmt, 3000)
    if seed == 1:
        text = "\ufeff" + text.replace("\n", "\r\n")  # a BOM, and CRLF pairs split across blocks
    path = tmp_path / "list.txt"
    path.write_bytes(text.encode())
    same_as_parse_file(path, fmt, allowlist)
    same_as_parse_file(path, allowlist=allowlist)  # format detected from the first block


def test_real_samples(block: int) -> None:
    for path in sorted((Path(__file__).parent.parent / "data" / "lists").glob("*.txt")):
        same_as_parse_file(path)
        same_as_parse_file(path, allowlist=True)


def test_an_rpz_name_with_two_actions_keeps_their_order(tmp_path: Path, block: int) -> None:
    path = tmp_path / "zone.rpz"
    path.write_text("b.example CNAME *.\na.example CNAME .\nb.example CNAME .\n")
    _, items = stream(path, "rpz")
    assert [i for i in items if i[0] == "b.example"] == [("b.example", "exact", "nodata"),
                                                         ("b.example", "exact", "nxdomain")]


def test_long_lines_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liststream, "BLOCK_BYTES", 1000)
    head = "".join(f"0.0.0.0 h{i}.example\n" for i in range(20000))  # past the first block (what detection reads)
    long = "0.0.0.0 " + "a" * 5000 + ".example"
    path = tmp_path / "hosts.txt"
    path.write_text(f"{head}0.0.0.0 ok.example\n{long}\n0.0.0.0 after.example\n" + "x" * 5000)
    s = same_as_parse_file(path, "hosts")
    assert [(k.line, k.reason) for k in s.skipped] == [(20002, "line too long"), (20004, "line too long")]


def test_errors_name_the_file_and_the_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liststream, "BLOCK_BYTES", 64)
    head = b"a.example\n" * 30000  # 300 kB: past the first block
    cases = {
        head + b"0.0.0.0 caf\xe9.example\n": "not UTF-8 text at byte 300011",
        head + b"b\x00.example\n": "not a text list: contains NUL bytes",
        b"a.example\n" * 20 + b"0.0.0.0 caf\xe9.example\n": "not UTF-8 text at byte 211",
        head: "larger than 299999 bytes",  # a regular file: refused before any parsing
    }
    for data, reason in cases.items():
        path = tmp_path / "bad.txt"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as info:
            stream(path, max_bytes=299999 if "larger" in reason else 10**6)
        assert (info.value.where, info.value.reason) == (str(path), reason)
        if "larger" not in reason:  # the same words as the slow path (which reads the file whole)
            with pytest.raises(ConfigError) as slow:
                parse_file(path)
            assert slow.value.reason == reason


def _write_ignoring_a_reader_gone(path: Path) -> None:
    with contextlib.suppress(BrokenPipeError):
        path.write_bytes(b"a.example\n" * 300)


def test_a_pipe_is_refused_at_once_with_or_without_a_writer(tmp_path: Path) -> None:
    """A FIFO with no writer would block a plain open for ever (a reload holding its lock, a server that cannot
    exit); one with a writer could change under a reload. Neither is a list file."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    for _ in range(2):
        with no_hang(5), pytest.raises(ConfigError) as info:
            stream(path)
        assert info.value.reason == NOT_REGULAR
        with no_hang(5), pytest.raises(ConfigError) as slow:
            parse_file(path)
        assert slow.value.reason == NOT_REGULAR
        writer = threading.Thread(target=_write_ignoring_a_reader_gone, args=(path,), daemon=True)
        writer.start()  # the second time round, someone is writing
    with open(path, "rb"):  # let the writer finish
        pass
    writer.join(5)


def test_special_files_missing_files_and_directories(tmp_path: Path) -> None:
    for path, reason in ((Path("/dev/zero"), NOT_REGULAR),
                         (tmp_path / "missing.txt", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(ConfigError) as info:
            stream(path)
        assert (info.value.where, info.value.reason) == (str(path), reason)
    with pytest.raises(ConfigError, match="unknown list format 'csv'"):
        ListStream(tmp_path / "x.txt", "csv", "x")  # type: ignore[arg-type]


def test_a_url_list_never_fetched_and_a_download_in_memory() -> None:
    s = ListStream(None, "auto", "https://lists.example/a.txt", note=lists.SkippedLine(0, "not fetched yet", ""))
    assert list(s.runs()) == [] and s.parsed() == lists.ParsedList("https://lists.example/a.txt", "domains", (),
                                                                    (lists.SkippedLine(0, "not fetched yet", ""),))
    body = b"\xef\xbb\xbf||a.example^\r\n@@||b.example^\r\n/regex/\r\n"
    s = ListStream(None, "auto", "https://lists.example/b.txt", data=body)
    assert [(m, a, list(n)) for m, a, n in s.runs()] == [("subtree", "block", ["a.example"])]
    assert (s.count, s.format, [k.line for k in s.skipped]) == (1, "adblock", [2, 3])  # @@ only in an allow list
    s = ListStream(None, "auto", "https://lists.example/b.txt", data=body, allowlist=True)
    assert [(m, a, list(n)) for m, a, n in s.runs()] == [("subtree", "allow", ["a.example", "b.example"])]
    assert (s.count, s.format, [k.line for k in s.skipped]) == (2, "adblock", [3])


def test_parsed_counts_and_reads_entries_again_only_when_iterated(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# header\nads.example\n*.wild.example\nbad line here\n")
    s, _ = stream(path)
    parsed = s.parsed()
    assert (parsed.source, parsed.format, len(parsed.entries)) == (str(path), "wildcard", 2)
    assert [(k.line, k.reason) for k in parsed.skipped] == [(4, "expected one name per line")]
    assert list(parsed.entries) == list(parse_file(path).entries)
    assert lists.ListEntry("ads.example", "subtree", "block", 2) in parsed.entries


def test_projection_from_the_first_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liststream, "BLOCK_BYTES", 4096)
    path = tmp_path / "list.txt"
    path.write_text("".join(f"host{i}.example.com\n" for i in range(20000)))
    s = ListStream(path, "domains", str(path))
    runs = s.runs()
    next(runs)
    assert 18000 < s.projected() < 22000  # known before most of the file is read: the table grows early
    for _ in runs:
        pass
    assert s.projected() == s.count == 20000


def test_load_policy_streams_lists_and_check_still_sees_them(tmp_path: Path) -> None:
    listed = tmp_path / "ads.txt"
    listed.write_text("||ads.example^\n||x.ads.example^\n/re/\n@@||ok.ads.example^\n")
    allowed = tmp_path / "ok.txt"
    allowed.write_text("! what ads.txt may not lift itself\n@@||ok.ads.example^\n")
    config_file = tmp_path / "resolver.yaml"
    config_file.write_text(f"policy:\n  block: []\n  lists:\n    - {{path: {allowed}, allowlist: true}}\n")
    loaded = load_policy(with_overrides(load_config(config_file), blocklists=[str(listed)]))
    ok, parsed = loaded.lists
    assert (len(parsed.entries), [(k.line, k.reason) for k in parsed.skipped]) == (
        2, [(3, "regex rules are not supported"), (4, "allow rule outside an allow list")])
    assert (parsed.blocking, parsed.allow_names, ok.blocking, ok.allow_names) == (2, (), 0, ("ok.ads.example",))
    assert [e.line for e in ok.entries if e.domain == "ok.ads.example"] == [2]  # explain's "line N"
    verdict = loaded.policy.lookup(b"a.x.ads.example".split(b"."))
    assert verdict is not None and verdict.label == "list:ads"
    assert loaded.policy.lookup(b"ok.ads.example".split(b".")).reason.startswith("allowed by")  # type: ignore[union-attr]
    assert Summary.of(loaded).lists == {"ok": 1, "ads": 2}
    assert parse_text(listed.read_text(), "x").entries == tuple(parsed.entries)
    assert parse_text(allowed.read_text(), "x", allowlist=True).entries == tuple(ok.entries)


@SLOWER
@given(LIST_TEXT, FORMATS, st.sampled_from([7, 64, 1 << 20]), st.booleans())
def test_stream_agrees_with_parse_text_on_hostile_text(
        tmp_path_factory: pytest.TempPathFactory, text: str, fmt: str, size: int, allowlist: bool) -> None:
    """Any text: the stream refuses it (ConfigError) or yields what parse_text does; never anything else."""
    path = tmp_path_factory.mktemp("hostile") / "list.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    liststream.BLOCK_BYTES, before = size, liststream.BLOCK_BYTES
    try:
        with no_hang():
            try:
                s, items = stream(path, fmt, allowlist=allowlist)
            except ConfigError:
                with pytest.raises(ConfigError):
                    parse_file(path, fmt, allowlist=allowlist)  # type: ignore[arg-type]
                return
    finally:
        liststream.BLOCK_BYTES = before
    parsed = parse_file(path, fmt, allowlist=allowlist)  # type: ignore[arg-type]
    entries = [(e.domain, e.match, e.action) for e in parsed.entries]
    assert Counter(items) == Counter(entries) and claim_order(items) == claim_order(entries)
    assert (s.count, s.format, tuple(s.skipped)) == (len(entries), parsed.format, parsed.skipped)
    assert (s.parsed().allow_names, s.parsed().blocking) == (parsed.allow_names, parsed.blocking)


def test_a_file_of_junk_keeps_only_the_first_skipped_lines(tmp_path: Path) -> None:
    """Bounded: a list that is mostly junk costs a count per bad line past the first MAX_SKIPPED, not an object;
    the total still reaches ``resolver check``."""
    bad = lists.MAX_SKIPPED + 500
    path = tmp_path / "junk.txt"
    path.write_text("good.example\n" + "".join(f"bad_{i}..example\n" for i in range(bad)))
    parsed = lists.parse_file(path, "domains")
    assert len(parsed.skipped) == lists.MAX_SKIPPED and parsed.skipped_count == bad
    assert parsed.skipped[0].line == 2
    stream = liststream.ListStream(path, "domains", str(path))
    assert [names for _, _, names in stream.runs()] == [["good.example"]]
    streamed = stream.parsed()
    assert len(streamed.skipped) == lists.MAX_SKIPPED and streamed.skipped_count == bad


# --- one reader: a whole file, a streamed file and a download give the same refusals ---------------------------

BAD_BODIES = {
    b"a.example\n" * 50 + b"0.0.0.0 caf\xe9.example\n": "not UTF-8 text at byte 511",
    b"a.example\n" * 50 + b"b\x00.example\n": "not a text list: contains NUL bytes",
    b"a.example\n" * 100: "larger than 999 bytes",
}


@pytest.mark.parametrize("body", list(BAD_BODIES), ids=["utf8", "nul", "size"])
def test_one_reader_for_whole_files_streams_and_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          body: bytes) -> None:
    monkeypatch.setattr(liststream, "BLOCK_BYTES", 64)
    path = tmp_path / "bad.txt"
    path.write_bytes(body)
    reasons = []
    for read in (lambda: parse_file(path, max_bytes=999),
                 lambda: stream(path, max_bytes=999),
                 lambda: list(ListStream(None, "auto", str(path), 999, data=body).runs())):
        with pytest.raises(ConfigError) as info:
            read()
        assert info.value.where == str(path)
        reasons.append(info.value.reason)
    assert reasons == [BAD_BODIES[body]] * 3


def test_fetch_stores_a_good_download_and_keeps_the_copy_on_a_bad_one(tmp_path: Path) -> None:
    """``fetch_list`` through a file:// URL (urllib serves it without a socket)."""
    served = tmp_path / "served.txt"
    target = tmp_path / "cache" / "ads.txt"
    source = ListSource("ads", url=served.as_uri())
    served.write_bytes(b"||ads.example^\n")
    assert fetch_list(source, target) is True and target.read_bytes() == b"||ads.example^\n"
    assert fetch_list(source, target) is False  # the same content: nothing to reload
    for body, reason in ((b"# nothing here\n", "no usable entries (0 lines skipped); keeping the old copy"),
                         (b"||a.example^\n\x00", "not a text list: contains NUL bytes")):
        served.write_bytes(body)
        with pytest.raises(ConfigError) as info:
            fetch_list(source, target)
        assert (info.value.where, info.value.reason) == (served.as_uri(), reason)
        assert target.read_bytes() == b"||ads.example^\n"
    served.unlink()
    with pytest.raises(ConfigError, match="download failed"):
        fetch_list(source, target)
