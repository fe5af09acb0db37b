"""The query log: JSON lines in a size-bounded, rotated file, written by a thread that never holds up answers.

The pipeline appends a plain tuple to a bounded deque (one C call); the writer thread turns batches into JSON
and writes them. When the queue is full, or the disk is full or slow, lines are dropped and counted - never
queries. Who tried to reach TikTok is what an audit asks for, so ``only_blocked`` keeps just those.

A hashed client is a pseudonym: an HMAC of its address keyed with the salt, so one phone is one pseudonym wherever
the same salt is used (every worker of a run, and every run when the salt is configured). Each line names its
salt by an id (``salt``), so an analyst knows which pseudonyms can be compared. During a rotation the previous salt
is configured too and each line also carries the phone's pseudonym under it (``client_previous``), which links
the old pseudonyms to the new. A pseudonym is only as private as the salt: the addresses a VPN hands out are few,
so whoever knows the salt can hash them all and read the pseudonyms back.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from resolver.config.model import QueryLogConfig
from resolver.core.pipeline import QueryRecord
from resolver.core.stats import OUTCOMES, QTYPE_INDEX, QTYPES

log = logging.getLogger("resolver.ops.querylog")
_TYPES = {code: QTYPES[index] for code, index in QTYPE_INDEX.items()}  # the metrics label names
RUN_SALT_ENV = "RESOLVER_QUERY_LOG_RUN_SALT"  # the supervisor's one random salt, handed to its workers


def salt_id(salt: bytes) -> str:
    """A short name for a salt, written in each line. Derived from the salt, so it cannot be set wrong, and as
    one-way as the pseudonyms themselves."""
    return hmac.new(salt, b"resolver query log salt id", hashlib.sha256).hexdigest()[:8]


def run_salt_env(config: QueryLogConfig) -> dict[str, str]:
    """Supervisor side: with hashed clients and no configured salt, one random salt for this run, passed to every
    worker (in its environment), so one phone has one pseudonym in all of their files."""
    if config.path is None or config.client != "hashed" or config.salt:
        return {}
    return {RUN_SALT_ENV: secrets.token_hex(16)}


def with_run_salt(config: QueryLogConfig, environ: Mapping[str, str]) -> QueryLogConfig:
    """Worker side: the supervisor's run salt, unless a salt is configured."""
    salt = environ.get(RUN_SALT_ENV, "")
    return replace(config, salt=salt) if salt and not config.salt else config


def _name(qname: bytes) -> str:
    labels = []
    pos = 0
    while pos < len(qname) and qname[pos]:
        length = qname[pos]
        labels.append(qname[pos + 1 : pos + 1 + length].decode("ascii", "backslashreplace"))
        pos += 1 + length
    return ".".join(labels) + "."


def _pseudonym(salt: bytes, client: str) -> str:
    return hmac.new(salt, client.encode(), hashlib.sha256).hexdigest()[:16]


class QueryLog:
    def __init__(self, config: QueryLogConfig) -> None:
        assert config.path is not None
        self.config = config
        self.path = config.path
        self.queue: deque[QueryRecord] = deque()
        self.written = 0
        self.dropped = 0  # lines lost to a full queue or a failed write
        self.rotations = 0
        # Without a configured salt (and no supervisor's run salt), pseudonyms last as long as this process.
        self._salt = (config.salt or secrets.token_hex(16)).encode()
        self._previous = config.previous_salt.encode() if config.previous_salt else None
        self.salt_id = salt_id(self._salt)
        self.previous_id = salt_id(self._previous) if self._previous is not None else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="querylog", daemon=True)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def append(self, record: QueryRecord) -> None:
        """The pipeline's sink: O(1), no I/O, never blocks."""
        if len(self.queue) >= self.config.queue:
            self.dropped += 1
            return
        self.queue.append(record)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _client(self, line: dict[str, object], client: str) -> None:
        mode = self.config.client
        if mode != "hashed":
            line["client"] = client if mode == "full" else None
            return
        line["client"] = _pseudonym(self._salt, client)
        line["salt"] = self.salt_id
        if self._previous is not None:
            line["client_previous"] = _pseudonym(self._previous, client)
            line["salt_previous"] = self.previous_id

    def format(self, record: QueryRecord) -> str:
        when, client, group, qname, qtype, outcome, platform, rule, seconds = record
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z",
        }
        self._client(line, client)
        line |= {
            "group": group,
            "name": _name(qname),
            "type": _TYPES.get(qtype, str(qtype)),
            "outcome": OUTCOMES[outcome],
            "platform": platform or None,
            "rule": rule or None,
            "latency_ms": round(seconds * 1000, 3),
        }
        return json.dumps(line, separators=(",", ":"))

    def _run(self) -> None:
        handle = None
        while not self._stop.is_set() or self.queue:
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            batch = []
            while self.queue:
                batch.append(self.queue.popleft())
            if not batch:
                continue
            try:
                if handle is None:
                    handle = open(self.path, "ab")  # noqa: SIM115 (kept open across batches)
                size = handle.tell()
                chunk: list[bytes] = []
                for record in batch:
                    line = (self.format(record) + "\n").encode()
                    if size + len(line) > self.config.max_bytes and size > 0:
                        handle.write(b"".join(chunk))
                        handle.close()
                        handle = None
                        self._rotate()
                        handle = open(self.path, "ab")  # noqa: SIM115
                        chunk, size = [], 0
                    chunk.append(line)
                    size += len(line)
                handle.write(b"".join(chunk))
                handle.flush()
                self.written += len(batch)
            except OSError as err:
                # Disk full, read-only, gone: the lines are lost (and counted); answering goes on regardless.
                if self.dropped == 0 or self.dropped % 10_000 < len(batch):
                    log.error("query log write failed, dropping lines: %s", err)
                self.dropped += len(batch)
                if handle is not None:
                    with contextlib.suppress(OSError):
                        handle.close()
                    handle = None
        if handle is not None:
            handle.close()

    def _rotate(self) -> None:
        """queries.log -> .1 -> .2 … ; the oldest beyond ``backups`` is deleted. Bounded on disk by
        (backups + 1) * max_bytes."""
        backups = self.config.backups
        for i in range(backups - 1, 0, -1):
            older = Path(f"{self.path}.{i}")
            if older.exists():
                os.replace(older, f"{self.path}.{i + 1}")
        if backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.remove(self.path)
        self.rotations += 1
