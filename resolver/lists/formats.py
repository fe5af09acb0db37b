"""Parse third-party blocklists (hosts, plain domains, AdBlock DNS rules, wildcard lists, RPZ) into entries.

Pure: text in, ``ParsedList`` out (``parse_file`` only adds the read). Lists come from strangers, so a line
we cannot use is never fatal: it becomes a ``SkippedLine`` with a short reason and its line number, which
``resolver check`` shows. Only a file that is not a text list at all raises ``ConfigError``.

This module is the entry point; the parts live beside it: the result types and name spelling in ``entries``,
what a parse collects in ``collect``, the line parsers per format in ``parsers``, the chunked fast path that
takes most of a big list in ``fastpath``. The streaming reader (``stream``) drives the same parts block by block.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import deque
from typing import Literal, get_args

from resolver.errors import ConfigError
from resolver.lists.collect import Collector
from resolver.lists.entries import (
    MAX_SKIPPED,
    TEXT_CUT,
    Action,
    Format,
    ListEntry,
    Match,
    ParsedList,
    SkippedLine,
    normalise_name,
)
from resolver.lists.fastpath import SHAPES, chunks
from resolver.lists.parsers import DETECT_CHARS, PARSERS, detect_format
from resolver.lists.reader import MAX_LIST_BYTES, read_text

__all__ = [
    "MAX_SKIPPED", "TEXT_CUT", "Action", "Format", "ListEntry", "Match", "ParsedList", "SkippedLine",
    "detect_format", "normalise_name", "parse_file", "parse_text",
]  # fmt: skip

_build_lock = threading.Lock()


def parse_text(
    text: str, source: str, fmt: Format | Literal["auto"] = "auto", *, allowlist: bool = False
) -> ParsedList:
    """Parse a whole list; ``source`` only labels the result. Line numbers count ``\\n`` as an editor does.
    ``allowlist``: the list names what to let through (see ``Collector``).

    The cyclic GC is paused meanwhile: a million new entries would set off repeated full collections, though
    nothing built here forms a cycle. The lock keeps two parses from fighting over the GC switch; parsing holds
    the GIL throughout, so it costs no parallelism.
    """
    text = text.removeprefix("\ufeff")
    text = text.replace("\r\n", "\n") if "\r" in text else text
    if fmt == "auto":
        fmt = detect_format(text[:DETECT_CHARS].split("\n"))
    elif fmt not in get_args(Format):
        raise ConfigError(source, f"unknown list format {fmt!r}")
    parse, shapes, out = PARSERS[fmt], SHAPES[fmt], Collector(allowlist=allowlist)
    with _build_lock:
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            deque(chunks(text, parse, shapes, out), maxlen=0)
            return ParsedList(source, fmt, out.entries(), tuple(out.skipped), out.unkept, tuple(out.allow_names),
                              out.blocking)
        finally:
            if gc_was_enabled:
                gc.enable()


def parse_file(
    path: str | os.PathLike[str], fmt: Format | Literal["auto"] = "auto", max_bytes: int = MAX_LIST_BYTES,
    *, allowlist: bool = False,
) -> ParsedList:
    """Read and parse a list file; raise ``ConfigError`` when it is unreadable or clearly not a text list.

    Reads at most ``max_bytes + 1`` bytes, so a wrong path (a disk image, /dev/zero) cannot exhaust memory.
    """
    return parse_text(read_text(path, max_bytes), os.fspath(path), fmt, allowlist=allowlist)
