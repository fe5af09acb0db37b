"""Stream a list file into the policy as it is built: the bulk path of ``resolver serve`` and reloads.

The file is read in blocks of whole lines by ``resolver.lists.reader`` (the checks and messages of a whole-file
read) and each block parsed with the parts ``resolver.lists.formats`` uses (the same validation, the same skip
reasons and line numbers); what they accept is handed on chunk by chunk as runs of names that
share a match and an action, and never kept. The entries are counted, the skipped lines kept for ``resolver
check``, the content hashed for the policy version. A list read this way is one block of text at a time in
memory, not a million entries; ``ParsedList.entries`` of it reads the file again, the slow way, only if someone
(``resolver explain``) iterates them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, get_args

from resolver.errors import ConfigError
from resolver.lists.collect import Collector
from resolver.lists.entries import Action, Format, ListEntry, Match, ParsedList, SkippedLine
from resolver.lists.fastpath import SHAPES, chunks
from resolver.lists.formats import parse_file
from resolver.lists.parsers import DETECT_CHARS, PARSERS, detect_format
from resolver.lists.reader import MAX_LIST_BYTES, ListReader

BLOCK_BYTES = 1 << 18  # read at a time: big enough for the C-level passes to pay; a few copies of a block are
# in flight (bytes, text, chunks), which a reload adds to its peak
BATCH_NAMES = 1024  # small runs are joined up to this many names: the builder pays per call, and a much
# bigger batch no longer stays in the CPU cache while it is consumed


class ListStream:
    """One list file, parsed while its runs are consumed (by ``build_policy``); a ``BulkList``.

    ``path`` None stands for a URL list never fetched: no entries, and ``note`` says why; or, with ``data``, for
    a list in memory (a download being checked). ``allowlist``: the list names what to let through (see
    ``Collector``). ``sha256``: the content's pinned hash, checked once the whole content has been read, so a list
    that is not the one pinned fails the build (the policy in force stays) however far it got.
    """

    def __init__(self, path: Path | None, fmt: Format | Literal["auto"], source: str,
                 max_bytes: int = MAX_LIST_BYTES, note: SkippedLine | None = None, data: bytes | None = None,
                 *, allowlist: bool = False, sha256: str | None = None) -> None:
        if fmt != "auto" and fmt not in get_args(Format):
            raise ConfigError(source, f"unknown list format {fmt!r}")
        self.path, self.fmt, self.source, self.max_bytes, self._data = path, fmt, source, max_bytes, data
        self.allowlist, self.sha256 = allowlist, sha256
        self.format: Format = "domains" if fmt == "auto" else fmt
        self.count = 0  # entries accepted
        self.allow_names: list[str] = []  # as ParsedList.allow_names
        self.blocking = 0  # as ParsedList.blocking
        self.suffixes = 0  # entries skipped as public suffixes, and the first of them
        self.first_suffix: SkippedLine | None = None
        self.skipped: list[SkippedLine] = [note] if note is not None else []
        self.unkept = 0  # skipped lines past the first MAX_SKIPPED, only counted
        self._hash = hashlib.blake2b(fmt.encode(), digest_size=16)
        self._pinned = hashlib.sha256() if sha256 is not None else None
        self._size = 0  # of the file, when it is a regular one
        self._rate = 0.0  # entries per byte so far (lines per byte before the first block is parsed)

    def digest(self) -> str:
        return self._hash.hexdigest()

    def projected(self) -> int:
        return max(self.count, int(self._rate * self._size))

    def parsed(self) -> ParsedList:
        """What ``resolver check`` and ``explain`` read, once the runs are consumed."""
        entries: Collection[ListEntry] = () if self.path is None else \
            _Reread(self.path, self.fmt, self.count, self.allowlist)
        return ParsedList(self.source, self.format, entries, tuple(self.skipped), self.unkept,
                          tuple(self.allow_names), self.blocking)

    def runs(self) -> Iterator[tuple[Match, Action, list[str]]]:
        if self._data is not None:
            yield from self._parse(io.BytesIO(self._data), ListReader(self.source, self.max_bytes))
            return
        if self.path is None:
            self._hash.update(b"missing")
            return
        reader = ListReader(str(self.path), self.max_bytes)
        with reader.open(self.path) as handle:
            self._size = reader.size
            yield from self._parse(handle, reader)

    def _parse(self, handle: BinaryIO, reader: ListReader) -> Iterator[tuple[Match, Action, list[str]]]:
        out = Collector(lines=False, allowlist=self.allowlist)
        offset, line = 0, 1
        kind: tuple[Match, Action] | None = None
        batch: list[str] = []  # consecutive runs of one kind, joined: the builder's passes pay per call
        parse, shapes = PARSERS[self.format], SHAPES[self.format]
        # The first block holds what detect_format reads, in any UTF-8, so it sees what parse_text shows it.
        for block in reader.blocks(handle, max(BLOCK_BYTES, 4 * DETECT_CHARS), BLOCK_BYTES):
            self._hash.update(block)
            if self._pinned is not None:
                self._pinned.update(block)
            text = reader.decode(block)
            if not offset:
                text = text.removeprefix("\ufeff")
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            if not offset:
                self._rate = (block.count(b"\n") + 1) / len(block)  # until a whole block has been parsed
                if self.fmt == "auto":
                    self.format = detect_format(text[:DETECT_CHARS].split("\n"))
                    parse, shapes = PARSERS[self.format], SHAPES[self.format]
            offset += len(block)
            text = text[:-1] if text.endswith("\n") else text  # the block's last newline ends its last line
            following = line + 1  # an empty text is one empty line
            for after in chunks(text, parse, shapes, out, line):
                following = after
                for match, action, names in out.take():
                    self.count += len(names)
                    if kind == (match, action) and len(batch) < BATCH_NAMES:
                        batch += names
                        continue
                    if kind is not None:
                        yield (*kind, batch)
                    kind, batch = (match, action), names
            line = following
            self._rate = self.count / offset
        if kind is not None:
            yield (*kind, batch)
        self.skipped += out.skipped
        self.unkept += out.unkept
        self.allow_names, self.blocking = out.allow_names, out.blocking
        self.suffixes, self.first_suffix = out.suffixes, out.first_suffix
        self._check_pin(reader.where)

    def _check_pin(self, where: str) -> None:
        if self._pinned is None or self._pinned.hexdigest() == self.sha256:
            return
        copy = f" (the last copy of {self.source})" if where != self.source else ""
        raise ConfigError(where, f"sha256 mismatch{copy}: expected {self.sha256}, got {self._pinned.hexdigest()}")


class _Reread(Collection[ListEntry]):
    """The entries of a streamed list: counted as it was read, and parsed again only if iterated."""

    def __init__(self, path: Path, fmt: Format | Literal["auto"], count: int, allowlist: bool) -> None:
        self.path, self.fmt, self.count, self.allowlist = path, fmt, count, allowlist

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[ListEntry]:
        return iter(parse_file(self.path, self.fmt, allowlist=self.allowlist).entries)

    def __contains__(self, item: object) -> bool:
        return any(entry == item for entry in self)
