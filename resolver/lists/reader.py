"""The one reader of a list's bytes: a file read whole, a file streamed block by block, or a download in memory.

A list path may be wrong (a disk image, a FIFO, /dev/zero: only a regular file is opened) and a URL may serve
anything, so before any parsing the bytes are checked to be a text list, with one set of messages wherever they
come from: the size cap ("larger than N bytes"), NUL bytes ("not a text list: contains NUL bytes") and UTF-8
("not UTF-8 text at byte N", counted from the start of the file whatever block it falls in).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from resolver.config.files import open_regular
from resolver.errors import ConfigError

MAX_LIST_BYTES = 256 * 1024 * 1024


class ListReader:
    """Reads one list and checks it as it goes; ``where`` (the file or URL) names it in every error.

    ``blocks`` serves both ways of reading: with a first read larger than the cap it yields the whole file as
    one block (``read_text``), with smaller reads it yields blocks of whole lines (``ListStream``).
    """

    def __init__(self, where: str, max_bytes: int = MAX_LIST_BYTES) -> None:
        self.where = where
        self.max_bytes = max_bytes
        self.size = 0  # of the file (known before reading it); 0 for a download
        self._read = 0  # bytes read so far, against the cap
        self._decoded = 0  # bytes decoded so far, so a UTF-8 error names its byte in the file

    def open(self, path: str | os.PathLike[str]) -> BinaryIO:
        """Open a list file (a regular one: ``files.open_regular``); one over the cap is refused before anything is
        read."""
        handle = open_regular(path, self.where)  # the caller closes it (a with block round the reads)
        self.size = os.fstat(handle.fileno()).st_size
        if self.size > self.max_bytes:
            handle.close()
            raise ConfigError(self.where, f"larger than {self.max_bytes} bytes")
        return handle

    def check(self, data: bytes) -> None:
        """Count one read against the cap and refuse NUL bytes. Checked per read, not per block of lines: a binary
        file without newlines is refused at once, not after the cap's worth of one long line."""
        self._read += len(data)
        if self._read > self.max_bytes:
            raise ConfigError(self.where, f"larger than {self.max_bytes} bytes")
        if b"\0" in data:
            raise ConfigError(self.where, "not a text list: contains NUL bytes")

    def decode(self, block: bytes) -> str:
        """The next block as text; blocks must be decoded in order (and end between characters: whole lines)."""
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(self.where, f"not UTF-8 text at byte {self._decoded + err.start}") from None
        self._decoded += len(block)
        return text

    def blocks(self, handle: BinaryIO, first: int, size: int | None = None) -> Iterator[bytes]:
        """The bytes of ``handle`` in blocks of whole lines (each ending with its newline, but the last), read
        ``first`` bytes and then ``size`` (default ``first``) at a time, each read checked. A read is held until
        the next one shows there is more: a file that fits in the first read is one block."""
        pending: list[bytes] = []  # a line longer than a block, in pieces: joined once, not re-copied per read
        held = b""
        step = first
        while data := self._read_some(handle, step):
            step = size or first
            self.check(data)
            held, data = data, held
            if not data:
                continue
            cut = data.rfind(b"\n") + 1
            if not cut:
                pending.append(data)
                continue
            pending.append(data[:cut])
            yield b"".join(pending) if len(pending) > 1 else pending[0]
            pending = [data[cut:]] if cut < len(data) else []
        pending.append(held)
        if any(pending):
            yield b"".join(pending)

    def _read_some(self, handle: BinaryIO, size: int) -> bytes:
        try:
            return handle.read(size)
        except OSError as err:  # EIO, or a path that is a directory on a system that lets it be opened
            raise ConfigError(self.where, err.strerror or str(err)) from None

    def text(self, handle: BinaryIO) -> str:
        """All of ``handle`` as one text, through the same checks: the whole-buffer read."""
        return "".join(map(self.decode, self.blocks(handle, self.max_bytes + 1)))


def read_text(path: str | os.PathLike[str], max_bytes: int = MAX_LIST_BYTES) -> str:
    """A list file as text, read whole; ``ConfigError`` when it is unreadable or clearly not a text list."""
    reader = ListReader(os.fspath(path), max_bytes)
    with reader.open(path) as handle:
        return reader.text(handle)
