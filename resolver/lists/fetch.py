"""Download a URL list to its cache file: the last good copy, which the policy is built from.

A failed download, a body that is not a text list, one in which no line parses, or one that is not the content
pinned by ``sha256`` leaves the last good copy in place: a list server's bad day must never unblock everything.
An https list stays https: a redirect to plain http is refused unless the list is ``insecure``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from resolver.config.policy import ListSource
from resolver.errors import ConfigError
from resolver.lists.reader import MAX_LIST_BYTES
from resolver.lists.stream import ListStream

if TYPE_CHECKING:
    import urllib.request

FETCH_TIMEOUT = 30.0


def fetch_list(source: ListSource, target: Path) -> bool:
    """Download a URL list to ``target`` (atomically); True when the content changed."""
    import urllib.error  # here, not at the top: only URL lists need it, and every start-up would pay for it

    url = str(source.url)
    try:
        with _opener(source.insecure).open(url, timeout=FETCH_TIMEOUT) as response:
            body = response.read(MAX_LIST_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ConfigError(url, f"download failed: {getattr(err, 'reason', err)}") from None
    if source.sha256 is not None:
        got = hashlib.sha256(body).hexdigest()
        if got != source.sha256:
            raise ConfigError(url, f"sha256 mismatch: expected {source.sha256}, got {got}; keeping the old copy")
    # Parsed as a list file is (the reader's size, NUL and UTF-8 checks, then the parsers), and dropped.
    stream = ListStream(None, source.format, url, MAX_LIST_BYTES, data=body,  # type: ignore[arg-type]
                        allowlist=source.allowlist)
    for _ in stream.runs():
        pass
    if not stream.count:
        skipped = len(stream.skipped) + stream.unkept
        raise ConfigError(url, f"no usable entries ({skipped} lines skipped); keeping the old copy")
    return _store(body, target)


def needs_fetch(source: ListSource, cache_dir: Path) -> bool:
    """True for a URL list with no last copy on disk, or with one that is not the content its ``sha256`` pins
    (the pin was changed for a new release of the list): fetch it before building, or the build fails on the
    old copy. A path list is never fetched."""
    if source.url is None:
        return False
    cached = source.cache_path(cache_dir)
    if not cached.exists():
        return True
    if source.sha256 is None:
        return False
    digest = hashlib.sha256()
    try:
        with cached.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError:
        return True
    return digest.hexdigest() != source.sha256


def _opener(insecure: bool) -> urllib.request.OpenerDirector:
    """urllib's opener (certificates checked against the system's store), but following a redirect only to
    https unless the list is ``insecure``: a redirect to http would hand the list to anyone on the path."""
    import urllib.error
    import urllib.request
    from http.client import HTTPMessage
    from typing import IO

    class HttpsOnly(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                             headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
            if not insecure and not newurl.startswith("https://"):
                raise urllib.error.URLError(f"redirected to {newurl!r}, which is not https")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(HttpsOnly)


def _store(body: bytes, target: Path) -> bool:
    """Write ``body`` to ``target`` through a partial file, so a reader sees the old copy or the new one. The old
    copy stays beside it (a hard link, so ``target`` never goes missing) until ``restore_previous`` or the next
    download: a policy built from the new copy may still be refused."""
    try:
        if target.exists() and target.read_bytes() == body:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial, previous = target.with_suffix(".part"), _previous(target)
        partial.write_bytes(body)
        previous.unlink(missing_ok=True)
        if target.exists():
            os.link(target, previous)
        partial.replace(target)
    except OSError as err:
        raise ConfigError(str(target), f"cannot store the list: {err.strerror or err}") from None
    return True


def restore_previous(target: Path) -> bool:
    """Put back the copy the last download replaced (its policy was refused), so a restart does not build from
    the copy a reload refused. False when there is none (the list was never fetched before)."""
    try:
        _previous(target).replace(target)
    except OSError:
        return False
    return True


def _previous(target: Path) -> Path:
    return target.with_suffix(".prev")
