"""The one place that turns a query into an answer. No sockets, no event loop: the clock is a parameter.

Order, and why:
1. parse the header and question only: a packet we cannot read is dropped or gets FORMERR (NOTIMP for an opcode
   other than QUERY) here;
   then, with DDR advertised (core/ddr.py), the one question ``_dns.resolver.arpa`` SVCB gets our own DoT/DoH
   endpoints, before the policy, whose bypass defence answers every other ``resolver.arpa`` name with NODATA;
2. policy before cache (the order inside it is in core/policy.py), so a name blocked by a reload is blocked at
   once even if its answer is cached; the client's group is found first, from its address (memoised);
3. cache, so a repeated allowed name never leaves the process;
4. otherwise the query is returned to be forwarded: the transport admits it to the in-flight table
   (core/forwarding.py: identical misses share one upstream query; past the client's quota or the table's bound
   it is shed), and hands the upstream reply back to ``on_reply``; a popular cached entry near its expiry comes
   back as a Prefetch ticket;
5. an answer (fresh or cached) whose CNAME chain passes through a blocked name is blocked (CNAME cloaking).
Every outcome is counted here, once, with its latency.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

from resolver.core import cache as cache_mod
from resolver.core import wire
from resolver.core.access import AccessList, RateLimiter
from resolver.core.cache import Cache, Entry
from resolver.core.client import canonical_client
from resolver.core.ddr import Ddr
from resolver.core.forwarding import SHED, SHED_PENDING, Inflight, Prefetch
from resolver.core.policy import BLOCK, MONITOR, Policy, Verdict
from resolver.core.stats import (
    BLOCKED,
    CACHED,
    ERROR,
    FORWARDED,
    INVALID,
    OTHER_QTYPE,
    QTYPE_INDEX,
    REFUSED,
    SHED_REASONS,
    STALE,
    UDP,
    Stats,
)
from resolver.core.wire import EdnsVersionError, Query
from resolver.errors import WireFormatError

PARSE_MEMO: Final = 4096  # distinct recent packets whose parse and verdicts are kept
MEMO_PAUSE: Final = 8 * PARSE_MEMO  # new packets not remembered after a full memo that served under a quarter of hits
MEMO_PACKET: Final = 512  # bigger packets (rare, TCP) are parsed every time: the memo stays small

# Extended DNS Error 0 "Other" with the reason: a client shed for its own flood can be told so.
_EDE_SHED: Final = tuple(wire.ede_option(0, f"resolver busy ({reason}): try again later") for reason in SHED_REASONS)

# (unix time, client, group, qname wire, qtype, outcome, platform label, rule source, seconds)
QueryRecord = tuple[float, str, str, bytes, int, int, str, str, float]


class Pipeline:
    def __init__(self, policy: Policy, cache: Cache, stats: Stats, clock: Callable[[], float],
                 wallclock: Callable[[], float]) -> None:
        self.policy = policy  # swapped whole by a reload
        self.cache = cache
        self.stats = stats
        self.clock = clock  # monotonic seconds: TTLs and latency
        self.wallclock = wallclock  # Unix time: exemptions start and expire at wall-clock instants
        # The query log's sink (a bounded queue's append, see resolver/ops/querylog.py); None when it is off.
        self.querylog: Callable[[QueryRecord], None] | None = None
        self.log_only_blocked = False
        self.access: AccessList | None = None
        self.limiter: RateLimiter | None = None
        self.inflight = Inflight()  # cache misses waiting on upstreams
        self.ddr: Ddr | None = None  # set when DDR is advertised (ddr.advertise): answers _dns.resolver.arpa SVCB
        # packet minus its ID -> (the query it parsed to, the policy that judged it, that policy's verdicts)
        self._parsed: dict[bytes, tuple[Query, Policy, tuple[Verdict, ...] | None]] = {}
        self._memo_hits = 0  # since the memo was last emptied
        self._memo_paused = 0  # new packets still to go before the memo takes any again

    def swap(self, policy: Policy) -> None:
        """Serve ``policy`` from the next query on (a reload). The memo is emptied with it: it would keep the old
        policy, tables and all, alive until its last entry was replaced."""
        self.policy = policy
        self._parsed.clear()

    def _remember(self, key: bytes, query: Query, policy: Policy, verdicts: tuple[Verdict, ...] | None) -> None:
        """Keep a parse for the next packet like this one. Filling the memo with names that never come back (a
        flood of random names, say) costs more than it saves, mostly in memory the CPU cache no longer holds:
        when a full memo served few hits, stop filling it for a while."""
        if self._memo_paused:
            self._memo_paused -= 1
            return
        parsed = self._parsed
        if len(parsed) >= PARSE_MEMO:
            if self._memo_hits < PARSE_MEMO // 4:
                self._memo_paused = MEMO_PAUSE
            self._memo_hits = 0
            parsed.clear()  # a clear per PARSE_MEMO new packets, not an LRU's bookkeeping per packet
            if self._memo_paused:
                return
        # The query itself is the template: ``again`` copies only what parsing set, never the per-query fields
        # (client, group, …) set on this one.
        parsed[key] = (query, policy, verdicts)

    def on_query(self, data: bytes, transport: int, client: str,
                 client_id: str | None = None) -> bytes | Query | Prefetch | None:
        """What to do with a packet: bytes to send back now, a Query to forward upstream (``inflight.admit`` it
        first), a Prefetch (send its answer now and its question upstream), or None: drop it.

        One function, longer than the others on purpose: it is the per-packet path, and the steps are read in
        order here rather than paid for as calls (the module docstring gives the order and the reasons)."""
        now = self.clock()
        client = canonical_client(client)  # every consumer below reads this one form
        # Who may ask and how fast come first, before any parsing: a flood costs a dict lookup per packet.
        refuse = throttle = False
        access = self.access
        if access is not None and not access.allows(client):
            if access.spec.action == "drop":
                self.stats.acl_dropped += 1
                return None
            refuse = True
        limiter = self.limiter
        # In truncate mode TCP is not limited: that is where the TC answer sends a real (not spoofed) client.
        if limiter is not None and (transport == UDP or limiter.spec.action == "drop") \
                and not limiter.allow(client, now):
            self.stats.rate_limited += 1
            if limiter.spec.action == "drop":
                return None
            throttle = True
        if len(data) > 2 and data[2] & 0x80:  # a response sent to us: answering it would make a reflection loop
            self.stats.malformed += 1
            return None
        # Phones ask the same few hundred questions over and over, byte for byte but for the ID: the parse, and the
        # policy's verdicts for the name while that policy serves, are looked up instead of done again. Only
        # packets that parsed get in, and the memo is bounded.
        parsed = self._parsed
        key = data[2:] if len(data) <= MEMO_PACKET else b""  # (b"" is never a key: no packet parses to it)
        hit = parsed.get(key)
        if hit is not None:
            query = hit[0].again(data[0] << 8 | data[1])
        else:
            try:
                query = wire.parse_query(data)
            except EdnsVersionError as err:
                return self._done(transport, INVALID, now, wire.badvers_reply(err), None)
            except WireFormatError:
                if not wire.reply_possible(data):
                    self.stats.malformed += 1
                    return None
                # An opcode we do not implement gets NOTIMP whatever its shape (RFC 1035 4.1.1, RFC 8906 3.1.4):
                # a NOTIFY or UPDATE need not look like a query. Only a malformed QUERY is FORMERR.
                rcode = wire.NOTIMP if data[2] & 0x78 else wire.FORMERR
                return self._done(transport, INVALID, now, wire.error_reply(data, rcode), None)
        if query.flags & wire.OPCODE_MASK:  # (responses were dropped above, before parsing)
            return self._done(transport, INVALID, now, wire.error_reply(data, wire.NOTIMP), query)
        query.transport = transport
        query.client = client
        query.client_id = client_id
        if refuse or throttle:
            return self._done(transport, REFUSED, now,
                              wire.simple_reply(query, wire.REFUSED) if refuse else wire.truncated(query), query)
        if query.qclass != wire.CLASS_IN:
            return self._done(transport, REFUSED, now, wire.simple_reply(query, wire.REFUSED), query)
        if query.qtype == wire.TYPE_SVCB and self.ddr is not None:  # DDR advertised: our own DoT/DoH, not NODATA
            advert = self.ddr.reply(query)
            if advert is not None:
                return self._done(transport, CACHED, now, advert, query)
        policy = self.policy
        group = query.group = policy.group_of(client, client_id) if policy.grouped else 0
        if hit is not None and hit[1] is policy:
            verdicts = hit[2]
            self._memo_hits += 1
        else:
            verdicts = policy.trie.lookup(query.labels)
            if key:
                self._remember(key, hit[0] if hit is not None else query, policy, verdicts)
        if verdicts is not None:
            verdict = verdicts[group]
            if verdict.action == BLOCK:
                if not verdict.exemptions or not self._exempted(policy, verdict, client, client_id):
                    return self._blocked(policy, verdict, query, transport, now)
            elif verdict.action == MONITOR:
                monitored = self.stats.monitored
                monitored[verdict.key] = monitored.get(verdict.key, 0) + 1
        if query.qtype == wire.TYPE_ANY:
            return self._done(transport, REFUSED, now, wire.any_reply(query), query)
        entry = self.cache.get(query.cache_key, now)
        if entry is not None:
            reply = self._from_entry(entry, query, CACHED, now, now)
            if self.cache.wants_prefetch(entry, now) and self.inflight.admit_prefetch(query):
                return Prefetch(reply, query)
            return reply
        query.received = now
        return query

    def on_reply(self, query: Query, reply: bytes | None) -> bytes:
        """The client's answer from the upstream reply that matched ``query`` (cached on the way), or from the
        cache's stale entry or SERVFAIL when none came in time (None)."""
        if reply is None or reply[3] & 0x0F in (wire.SERVFAIL, wire.REFUSED):
            # Every upstream failed us (the forwarder tries the others first): a stale answer if there is one,
            # else our own SERVFAIL - a REFUSED passed on would tell the phone that *we* refuse it.
            return self.on_failure(query)
        now = self.clock()
        try:
            entry = cache_mod.prepare(reply, query, now, self.cache.limits)
        except WireFormatError:
            return self.on_failure(query)
        self.cache.put(query.cache_key, entry)
        outcome = FORWARDED if entry.flags & 0x0F in (wire.NOERROR, wire.NXDOMAIN) else ERROR  # (the rcode)
        return self._from_entry(entry, query, outcome, query.received, now, finished=now)

    def on_failure(self, query: Query, options: bytes = b"") -> bytes:
        """No upstream answered in time: a stale answer if the cache still has one (RFC 8767), else SERVFAIL (with
        EDNS ``options``) - never silence, so the phone can move on."""
        now = self.clock()
        entry = self.cache.get_stale(query.cache_key, now)
        if entry is not None:
            return self._from_entry(entry, query, STALE, query.received, now, self.cache.limits.stale_ttl)
        return self._done(query.transport, ERROR, query.received,
                          wire.simple_reply(query, wire.SERVFAIL, options), query)

    def store(self, query: Query, reply: bytes | None) -> None:
        """A background refresh (prefetch) came back: cache it; nobody is waiting, nothing is counted. A failed
        or broken refresh leaves the old entry to expire."""
        if reply is not None and reply[3] & 0x0F not in (wire.SERVFAIL, wire.REFUSED):
            with contextlib.suppress(WireFormatError):
                self.cache.put(query.cache_key, cache_mod.prepare(reply, query, self.clock(), self.cache.limits))

    def on_shed(self, query: Query, why: int = SHED_PENDING) -> bytes:
        """Too much work pending (``why``: a shed code of core/forwarding.py): a stale answer, or SERVFAIL with an
        Extended DNS Error that says so, at once rather than queue without bound. A stub takes SERVFAIL as "ask
        again or ask another server", where silence would cost it a timeout and bring the same question back."""
        stats = self.stats
        stats.shed += 1
        stats.shed_by[why - SHED] += 1
        return self.on_failure(query, _EDE_SHED[why - SHED])

    def _exempted(self, policy: Policy, verdict: Verdict, client: str, client_id: str | None) -> bool:
        exemption = policy.exemption_for(verdict, client, client_id, self.wallclock())
        if exemption is None:
            return False
        exempted = self.stats.exempted
        exempted[verdict.key] = exempted.get(verdict.key, 0) + 1
        return True

    def _from_entry(self, entry: Entry, query: Query, outcome: int, started: float, now: float,
                    stale_ttl: int | None = None, finished: float | None = None) -> bytes:
        """The client's answer from a cache entry (fresh, just forwarded or stale), unless its CNAME chain passes
        through a name blocked for this client: the one place CNAME cloaking is checked."""
        policy = self.policy
        if entry.cnames and policy.cname_cloaking:
            cloak = self._cloaked(policy, entry, query.group, query.client, query.client_id)
            if cloak is not None:
                return self._blocked(policy, cloak, query, query.transport, started)
        reply = self._fit(cache_mod.render(entry, query, now, stale_ttl), query, query.transport)
        return self._done(query.transport, outcome, started, reply, query, now=finished)

    def _cloaked(self, policy: Policy, entry: Entry, group: int, client: str, client_id: str | None) -> Verdict | None:
        """The verdict of the first blocked name the answer's CNAME chain passes through, if any."""
        for labels in entry.cnames:
            verdict = policy.lookup(labels, group)
            if verdict is not None and verdict.action == BLOCK and not (
                    verdict.exemptions and self._exempted(policy, verdict, client, client_id)):
                return verdict
        return None

    def _blocked(self, policy: Policy, verdict: Verdict, query: Query, transport: int, started: float) -> bytes:
        blocked = self.stats.blocked
        blocked[verdict.key] = blocked.get(verdict.key, 0) + 1
        reply = self._fit(policy.blocked_reply(query, verdict), query, transport)
        return self._done(transport, BLOCKED, started, reply, query, verdict)

    @staticmethod
    def _fit(reply: bytes, query: Query, transport: int) -> bytes:
        """Over UDP, a reply larger than the client's buffer (capped at 1232) becomes TC so it retries over TCP."""
        if transport == UDP and len(reply) > 512:
            limit = min(query.udp_size, wire.EDNS_UDP_SIZE) if query.edns else 512
            if len(reply) > limit:
                return wire.truncated(query)
        return reply

    def _done(self, transport: int, outcome: int, started: float, reply: bytes, query: Query | None,
              verdict: Verdict | None = None, now: float | None = None) -> bytes:
        elapsed = (self.clock() if now is None else now) - started
        qtype = OTHER_QTYPE if query is None else QTYPE_INDEX.get(query.qtype, OTHER_QTYPE)
        self.stats.observe(transport, qtype, outcome, elapsed)
        log = self.querylog
        if log is not None and query is not None and (outcome == BLOCKED or not self.log_only_blocked):
            rule = None if verdict is None else verdict.rule
            log((self.wallclock(), query.client, self.policy.groups[query.group].name, query.qname, query.qtype,
                 outcome, "" if verdict is None else verdict.label, "" if rule is None else rule.source, elapsed))
        return reply
