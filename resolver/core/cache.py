"""Upstream answers kept as bytes, ready to be re-sent with a new ID and aged TTLs.

An upstream reply is walked once (``prepare``) to find where each TTL lives and to drop the upstream's OPT
record; every later use (``render``) is a header pack, a bytes join and a few ``pack_into`` calls. Negative
answers are cached for the SOA-derived time of RFC 2308 section 5.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from resolver.core import wire
from resolver.core.wire import AD, ECHO_MASK, HEADER, QR, RA, Query
from resolver.errors import WireFormatError

_OPT_DO: Final = wire.opt_record(True)
_OPT_PLAIN: Final = wire.opt_record(False)
_RCODE_MASK: Final = 0x000F
_EDE_STALE: Final = wire.ede_option(3, "upstreams unreachable; serving an expired answer")


@dataclass(frozen=True, slots=True)
class CacheLimits:
    max_entries: int = 100_000
    min_ttl: int = 0
    max_ttl: int = 86_400
    negative_max_ttl: int = 3_600
    # RFC 8767: when every upstream fails, answer from an expired entry (with stale_ttl) for this long after it
    # expired; 0 turns serve-stale off.
    stale_max_age: int = 86_400
    stale_ttl: int = 30
    # Refresh a popular entry in the background when this fraction of its TTL is left (0: no prefetch).
    prefetch_fraction: float = 0.1
    prefetch_min_hits: int = 3


class Entry:
    """One upstream answer minus header, question and OPT; ``ttl`` 0 means it must not be cached."""

    __slots__ = ("aged", "an", "ar", "body", "cnames", "expires", "flags", "hits", "ns", "prefetch_at", "refreshing",
                 "stored", "ttl", "ttl_offsets", "ttls")

    def __init__(
        self, flags: int, counts: tuple[int, int, int], body: bytes, ttl_offsets: list[int], ttls: list[int],
        stored: float, ttl: int, cnames: tuple[list[bytes], ...] = (),
    ) -> None:
        self.flags = flags
        self.an, self.ns, self.ar = counts
        self.body = body
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.stored = stored
        self.ttl = ttl
        self.expires = stored + ttl
        self.cnames = cnames  # CNAME targets in the answer, for the cloaking check
        self.hits = 0
        self.aged: tuple[int, bytes] = (0, body)  # (seconds held, body with TTLs aged by that): one patch a second
        self.prefetch_at = self.expires  # set by Cache.put from the limits
        self.refreshing = False

    @property
    def rcode(self) -> int:
        return self.flags & _RCODE_MASK


def prepare(reply: bytes, query: Query, now: float, limits: CacheLimits) -> Entry:
    """Walk a validated upstream reply; raises WireFormatError if any record is malformed."""
    _, flags, _, ancount, nscount, arcount = HEADER.unpack_from(reply)
    start = 12 + len(query.question)
    pos = start
    chunks: list[bytes] = []
    chunk_start = pos
    removed = 0
    offsets: list[int] = []
    ttls: list[int] = []
    answer_min: int | None = None
    negative: int | None = None
    total = ancount + nscount + arcount
    cnames: list[list[bytes]] = []
    kept_ar = arcount
    for index in range(total):
        rr_start = pos
        pos = wire.skip_name(reply, pos)
        if pos + 10 > len(reply):
            raise WireFormatError("record header truncated")
        rtype, _, ttl, rdlen = wire.RR_FIXED.unpack_from(reply, pos)
        rdata_end = pos + 10 + rdlen
        if rdata_end > len(reply):
            raise WireFormatError("record data truncated")
        if rtype == wire.TYPE_OPT:
            if index < ancount + nscount:
                raise WireFormatError("OPT outside the additional section")
            # The upstream's OPT describes its link to us, not ours to the client: drop it, render adds ours.
            chunks.append(reply[chunk_start:rr_start])
            chunk_start = rdata_end
            removed += rdata_end - rr_start
            kept_ar -= 1
        else:
            ttl &= 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set is treated as zero
            offsets.append(pos + 4 - start - removed)
            ttls.append(ttl)
            if index < ancount:
                answer_min = ttl if answer_min is None else min(answer_min, ttl)
                if rtype == wire.TYPE_CNAME:
                    cnames.append(wire.read_labels(reply, pos + 10))
            elif index < ancount + nscount and rtype == wire.TYPE_SOA and rdlen >= 20:
                soa_minimum = wire.U32.unpack_from(reply, rdata_end - 4)[0]
                negative = min(ttl, soa_minimum)
        pos = rdata_end
    chunks.append(reply[chunk_start:pos])
    rcode = flags & _RCODE_MASK
    cache_ttl = 0
    if flags & wire.TC:
        cache_ttl = 0
    elif rcode == wire.NOERROR and answer_min is not None:
        cache_ttl = max(limits.min_ttl, min(limits.max_ttl, answer_min))
    elif rcode in (wire.NOERROR, wire.NXDOMAIN) and negative is not None:
        cache_ttl = min(limits.negative_max_ttl, negative)
    return Entry(flags & (AD | _RCODE_MASK), (ancount, nscount, kept_ar), b"".join(chunks), offsets, ttls, now,
                 cache_ttl, tuple(cnames))


def render(entry: Entry, query: Query, now: float, stale_ttl: int | None = None) -> bytes:
    """The client's reply: its ID, flags and question, the cached records with TTLs aged by the time held.

    ``stale_ttl``: an expired entry served because upstreams failed (RFC 8767): every TTL is set to it, and an
    EDNS client is told so with Extended DNS Error 3 "Stale Answer".
    """
    elapsed = int(now - entry.stored)
    if stale_ttl is not None and entry.ttl_offsets:
        body = _patched(entry, lambda ttl: stale_ttl)
    else:
        held, body = entry.aged
        if held != elapsed and entry.ttl_offsets:
            # A popular name is answered many times a second: age its TTLs once per second, not once per answer.
            body = _patched(entry, lambda ttl: ttl - elapsed if ttl > elapsed else 0)
            entry.aged = (elapsed, body)
    flags = QR | RA | (query.flags & ECHO_MASK) | entry.flags
    if query.edns:
        header = HEADER.pack(query.id, flags, 1, entry.an, entry.ns, entry.ar + 1)
        if stale_ttl is not None:
            return header + query.question + body + wire.opt_record(query.do, _EDE_STALE)
        return header + query.question + body + (_OPT_DO if query.do else _OPT_PLAIN)
    return HEADER.pack(query.id, flags, 1, entry.an, entry.ns, entry.ar) + query.question + body


def _patched(entry: Entry, ttl_for: Callable[[int], int]) -> bytes:
    patched = bytearray(entry.body)
    pack_into = wire.U32.pack_into
    for offset, ttl in zip(entry.ttl_offsets, entry.ttls, strict=True):
        pack_into(patched, offset, ttl_for(ttl))
    return bytes(patched)


class Cache:
    """LRU over ``Query.cache_key``, bounded in entries. Expired entries stay (still bounded by the LRU) for
    ``stale_max_age`` so they can be served stale when every upstream is down; past that they are dropped."""

    def __init__(self, limits: CacheLimits) -> None:
        self.limits = limits
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            if entry.expires + self.limits.stale_max_age <= now:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        entry.hits += 1
        return entry

    def get_stale(self, key: bytes, now: float) -> Entry | None:
        """An expired entry still inside the serve-stale window (RFC 8767), for when upstreams have failed."""
        entry = self._entries.get(key)
        if entry is None or entry.expires > now or entry.expires + self.limits.stale_max_age <= now:
            return None
        return entry

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        """A popular entry close to expiry: refresh it in the background so nobody waits for it (once)."""
        if entry.refreshing or now < entry.prefetch_at or entry.hits < self.limits.prefetch_min_hits:
            return False
        entry.refreshing = True
        return True

    def put(self, key: bytes, entry: Entry) -> None:
        if entry.ttl <= 0 or self.limits.max_entries <= 0:
            return
        if self.limits.prefetch_fraction > 0:
            entry.prefetch_at = entry.expires - entry.ttl * self.limits.prefetch_fraction
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self.limits.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1
