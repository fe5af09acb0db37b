"""Download a URL list to its cache file: the last good copy, which the policy is built from.

A failed download, a body that is not a text list, or one in which no line parses leaves the last good copy in
place: a list server's bad day must never unblock everything.
"""

from __future__ import annotations

from pathlib import Path

from resolver.config.policy import ListSource
from resolver.errors import ConfigError
from resolver.lists.reader import MAX_LIST_BYTES
from resolver.lists.stream import ListStream

FETCH_TIMEOUT = 30.0


def fetch_list(source: ListSource, target: Path) -> bool:
    """Download a URL list to ``target`` (atomically); True when the content changed."""
    import urllib.error  # here, not at the top: only URL lists need it, and every start-up would pay for it
    import urllib.request

    url = str(source.url)
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
            body = response.read(MAX_LIST_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ConfigError(url, f"download failed: {getattr(err, 'reason', err)}") from None
    # Parsed as a list file is (the reader's size, NUL and UTF-8 checks, then the parsers), and dropped.
    stream = ListStream(None, source.format, url, MAX_LIST_BYTES, data=body)  # type: ignore[arg-type]
    for _ in stream.runs():
        pass
    if not stream.count:
        skipped = len(stream.skipped) + stream.unkept
        raise ConfigError(url, f"no usable entries ({skipped} lines skipped); keeping the old copy")
    return _store(body, target)


def _store(body: bytes, target: Path) -> bool:
    """Write ``body`` to ``target`` through a partial file, so a reader sees the old copy or the new one."""
    try:
        if target.exists() and target.read_bytes() == body:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(body)
        partial.replace(target)
    except OSError as err:
        raise ConfigError(str(target), f"cannot store the list: {err.strerror or err}") from None
    return True
