"""Upstream answers kept as bytes, ready to be re-sent with a new ID and aged TTLs.

An upstream reply is walked once (``prepare``): what a client should get is decided there (a minimal answer, TTLs
capped) and where each TTL lives is noted; every later use (``render``) is a header pack, a bytes join and, once
a second, a few ``pack_into`` calls. Negative answers are cached for the SOA-derived time of RFC 2308 section 5.
The cache is bounded in entries and in bytes, and keeps no answer too big to be worth its room.
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
    max_ttl: int = 86_400  # also the most any TTL sent to a client says, cached or not
    negative_max_ttl: int = 3_600
    # RFC 8767: when every upstream fails, answer from an expired entry (with stale_ttl) for this long after it
    # expired; 0 turns serve-stale off.
    stale_max_age: int = 86_400
    stale_ttl: int = 30
    # Refresh a popular entry in the background when this fraction of its TTL is left (0: no prefetch).
    prefetch_fraction: float = 0.1
    prefetch_min_hits: int = 3
    # The memory bound: answers' bytes plus ENTRY_OVERHEAD each (and RECORD_OVERHEAD a record), LRU-evicted.
    max_bytes: int = 64 * 1024 * 1024
    # A bigger answer is passed on but never kept: a few of them would crowd out thousands of ordinary ones.
    max_answer_bytes: int = 16 * 1024


# What an entry costs beyond its answer's bytes: the Entry, its key, its lists and the LRU's link, and per record
# the two list slots and numbers that locate and hold its TTL. Charged so that a flood of tiny answers is bounded
# by max_bytes as surely as a few big ones.
ENTRY_OVERHEAD: Final = 512
RECORD_OVERHEAD: Final = 72

# Authority records a phone can use: the SOA that says how long to cache a negative answer (RFC 2308), and the
# DNSSEC denial proofs and signatures a validating client needs (RFC 4035 3.1.3). NS records and glue are how the
# upstream found the answer; a stub only carries their bytes (and a spoofer's best place for extra records).
_KEPT_AUTHORITY: Final = frozenset((wire.TYPE_SOA, wire.TYPE_NSEC, wire.TYPE_NSEC3, wire.TYPE_RRSIG))

# (start, type, offset of the TTL field, end) of one record in an upstream reply
Record = tuple[int, int, int, int]


class Entry:
    """One upstream answer minus header, question and OPT; ``ttl`` 0 means it must not be cached."""

    __slots__ = ("an", "ar", "body", "cnames", "expires", "flags", "held", "hits", "ns", "prefetch_at",
                 "refreshing", "size", "stored", "ttl", "ttl_offsets", "ttls")

    def __init__(
        self, flags: int, counts: tuple[int, int, int], body: bytes, ttl_offsets: list[int], ttls: list[int],
        stored: float, ttl: int, cnames: tuple[list[bytes], ...] = (),
    ) -> None:
        self.flags = flags
        self.an, self.ns, self.ar = counts
        self.body = body  # with its TTLs aged by ``held`` seconds (every TTL is rewritten at each ageing)
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls  # as received, capped: what the TTLs say at ``stored``
        self.stored = stored
        self.ttl = ttl
        self.expires = stored + ttl
        self.cnames = cnames  # CNAME targets in the answer, for the cloaking check
        self.hits = 0
        self.held = 0  # seconds the body's TTLs are aged by: one patch a second, however many answers
        self.prefetch_at = self.expires  # set by Cache.put from the limits
        self.refreshing = False
        self.size = ENTRY_OVERHEAD + len(body) + RECORD_OVERHEAD * len(ttls)  # what it counts against max_bytes

    @property
    def rcode(self) -> int:
        return self.flags & _RCODE_MASK


def prepare(reply: bytes, query: Query, now: float, limits: CacheLimits) -> Entry:
    """Walk a validated upstream reply; raises WireFormatError if any record is malformed.

    What the client will get is decided here, once, not on every cache hit: a minimal answer (the answer section,
    the useful authority records, no additional section: ``_minimal``), every TTL capped at ``max_ttl``, and a
    negative answer's SOA capped at the time we cache it for (RFC 2308 section 3)."""
    _, flags, _, ancount, nscount, arcount = HEADER.unpack_from(reply)
    start = 12 + len(query.question)
    records = _walk(reply, start, ancount, nscount, arcount)
    kept, gap = _minimal(reply, records, ancount, nscount)
    answer_min: int | None = None
    negative: int | None = None
    cnames: list[list[bytes]] = []
    ttls: list[int] = []
    for index in kept:
        _, rtype, at, end = records[index]
        ttl = wire.U32.unpack_from(reply, at)[0]
        ttl = min(0 if ttl & 0x80000000 else ttl, limits.max_ttl)  # RFC 2181 8: the top bit set means zero
        if index < ancount:
            answer_min = ttl if answer_min is None else min(answer_min, ttl)
            if rtype == wire.TYPE_CNAME:
                cnames.append(wire.read_labels(reply, at + 6))
        elif rtype == wire.TYPE_SOA and end - at >= 26:  # (TTL and rdlength, then at least the 20 bytes of timers)
            soa_minimum = wire.U32.unpack_from(reply, end - 4)[0]
            if not ancount:
                ttl = min(ttl, soa_minimum, limits.negative_max_ttl)
            negative = min(ttl, soa_minimum)
        ttls.append(ttl)
    body, offsets = _assemble(reply, records, kept, gap, ttls)
    rcode = flags & _RCODE_MASK
    cache_ttl = 0
    if flags & wire.TC:
        cache_ttl = 0
    elif rcode == wire.NOERROR and answer_min is not None:
        cache_ttl = max(limits.min_ttl, answer_min)
    elif rcode in (wire.NOERROR, wire.NXDOMAIN) and negative is not None:
        cache_ttl = min(limits.negative_max_ttl, negative)
    return Entry(flags & (AD | _RCODE_MASK), (ancount, len(kept) - ancount, 0), body, offsets, ttls, now,
                 cache_ttl, tuple(cnames))


def _walk(reply: bytes, pos: int, ancount: int, nscount: int, arcount: int) -> list[Record]:
    """Every record of the reply, from ``pos`` (just past the question)."""
    records: list[Record] = []
    n = len(reply)
    for index in range(ancount + nscount + arcount):
        start = pos
        pos = wire.skip_name(reply, pos)
        if pos + 10 > n:
            raise WireFormatError("record header truncated")
        rtype, _, _, rdlen = wire.RR_FIXED.unpack_from(reply, pos)
        end = pos + 10 + rdlen
        if end > n:
            raise WireFormatError("record data truncated")
        if rtype == wire.TYPE_OPT and index < ancount + nscount:
            raise WireFormatError("OPT outside the additional section")
        records.append((start, rtype, pos + 4, end))
        pos = end
    return records


def _minimal(reply: bytes, records: list[Record], ancount: int, nscount: int) -> tuple[list[int], int]:
    """The indices of the records a client gets: the answer section, and the authority records it can use
    (``_KEPT_AUTHORITY``, but no signature over NS records); and where the first dropped one starts (-1: none).
    The additional section goes whole: glue, and the upstream's OPT, which describes its link to us, not ours to
    the client (render adds ours)."""
    kept = list(range(ancount))
    gap = -1
    for index in range(ancount, ancount + nscount):
        _, rtype, at, end = records[index]
        if rtype in _KEPT_AUTHORITY and not (rtype == wire.TYPE_RRSIG and end - at >= 8
                                             and wire.U16.unpack_from(reply, at + 6)[0] == wire.TYPE_NS):
            kept.append(index)
        elif gap < 0:
            gap = records[index][0]
    return kept, gap


def _points_into(reply: bytes, record: Record, gap: int) -> bool:
    """Whether the record's owner (or a SOA's names) is compressed against bytes at or after ``gap``."""
    start, rtype, at, end = record
    if wire.pointer_target(reply, start) >= gap:
        return True
    if rtype == wire.TYPE_SOA:
        rname = wire.skip_name(reply, at + 6)  # MNAME, then RNAME
        return rname >= end or wire.pointer_target(reply, at + 6) >= gap or wire.pointer_target(reply, rname) >= gap
    return False


def _written_out(reply: bytes, record: Record) -> tuple[bytes, int]:
    """The record with its names written out in full (no compression pointers), and where its TTL sits in it.
    Only the owner, and a SOA's two names, can be compressed among the kept authority types (RFC 4034 forbids
    it in the DNSSEC records' data)."""
    start, rtype, at, end = record
    owner = wire.expanded_name(reply, start)
    rdata = reply[at + 6 : end]
    if rtype == wire.TYPE_SOA:
        rname = wire.skip_name(reply, at + 6)
        timers = wire.skip_name(reply, rname)
        if end - timers != 20:
            raise WireFormatError("SOA record of the wrong length")
        rdata = wire.expanded_name(reply, at + 6) + wire.expanded_name(reply, rname) + reply[timers:end]
    return owner + reply[at - 4 : at + 4] + wire.U16.pack(len(rdata)) + rdata, len(owner) + 4


def _assemble(reply: bytes, records: list[Record], kept: list[int], gap: int,
              ttls: list[int]) -> tuple[bytes, list[int]]:
    """The kept records' bytes, with their (capped) TTLs written in, and where in them each TTL sits.

    Dropping a record moves what follows it, so a compression pointer into or past the gap would point at the
    wrong bytes. Pointers point backwards: only a kept record after the first dropped one can hold one, and such
    a record is written out in full."""
    chunks: list[bytes] = []
    offsets: list[int] = []
    size = 0
    run_start = run_end = -1
    for index in kept:
        record = records[index]
        record_start, _, at, end = record
        if record_start != run_end or 0 <= gap < record_start:  # a run of consecutive kept records ends
            if run_start >= 0:
                chunks.append(reply[run_start:run_end])
                size += run_end - run_start
            run_start = run_end = -1
            if 0 <= gap < record_start and _points_into(reply, record, gap):
                written, ttl_at = _written_out(reply, record)
                chunks.append(written)
                offsets.append(size + ttl_at)
                size += len(written)
                continue
            run_start = record_start
        offsets.append(size + at - run_start)
        run_end = end
    if run_start >= 0:
        chunks.append(reply[run_start:run_end])
    body = bytearray(b"".join(chunks))
    pack_into = wire.U32.pack_into
    for offset, ttl in zip(offsets, ttls, strict=True):
        pack_into(body, offset, ttl)
    return bytes(body), offsets


def render(entry: Entry, query: Query, now: float, stale_ttl: int | None = None) -> bytes:
    """The client's reply: its ID, flags and question, the cached records with TTLs aged by the time held.

    ``stale_ttl``: an expired entry served because upstreams failed (RFC 8767): every TTL is set to it, and an
    EDNS client is told so with Extended DNS Error 3 "Stale Answer".
    """
    elapsed = int(now - entry.stored)
    if stale_ttl is not None and entry.ttl_offsets:
        body = _patched(entry, lambda ttl: stale_ttl)
    else:
        body = entry.body
        if entry.held != elapsed and entry.ttl_offsets:
            # A popular name is answered many times a second: age its TTLs once per second, not once per answer.
            # The aged copy replaces the body (each ageing rewrites every TTL), so an entry holds one copy.
            body = entry.body = _patched(entry, lambda ttl: ttl - elapsed if ttl > elapsed else 0)
            entry.held = elapsed
    answer_flags = entry.flags
    if answer_flags & AD and not (query.do or query.flags & AD):
        # RFC 6840 5.8: AD only for a client that asked for it (AD or DO); the others cannot use it, and a stub
        # must not be led to trust data it did not validate.
        answer_flags ^= AD
    flags = QR | RA | (query.flags & ECHO_MASK) | answer_flags
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
    """LRU over ``Query.cache_key``, bounded in entries and in bytes (``Entry.size`` plus the key's). Expired
    entries stay (still bounded by the LRU) for ``stale_max_age`` so they can be served stale when every upstream
    is down; past that they are dropped."""

    def __init__(self, limits: CacheLimits) -> None:
        self.limits = limits
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0  # what the entries count against max_bytes
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
                self.bytes -= entry.size + len(key)
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
        limits = self.limits
        size = entry.size + len(key)
        if entry.ttl <= 0 or limits.max_entries <= 0 or len(entry.body) > limits.max_answer_bytes \
                or size > limits.max_bytes:
            return
        if limits.prefetch_fraction > 0:
            entry.prefetch_at = entry.expires - entry.ttl * limits.prefetch_fraction
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size + len(key)
        entries[key] = entry
        self.bytes += size
        while len(entries) > limits.max_entries or self.bytes > limits.max_bytes:
            gone_key, gone = entries.popitem(last=False)
            self.bytes -= gone.size + len(gone_key)
            self.evictions += 1
