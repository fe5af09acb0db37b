"""The policy snapshot: for a name and a client, blocked, allowed, monitored or just forwarded.

Built once per (re)load from platforms, lists, groups and exemptions, then never mutated (apart from lazily
filled reply tails, the client->group memo and the trie's merged verdicts, all pure functions of the snapshot): a
reload builds a new one and swaps it in with one assignment, so the hot path never locks.

Which claim on a name decides it, and why in that order, is the table in ``resolver.core.order``: the builder
walks it to make each Verdict, and ``resolver explain`` walks it to show the steps.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from resolver.core import wire
from resolver.core.trie import Match, PackedTrie
from resolver.core.wire import ECHO_MASK, HEADER, QR, RA, Query

PASS: Final = 0
ALLOW: Final = 1
BLOCK: Final = 2
MONITOR: Final = 3
ACTION_NAMES: Final = {PASS: "forwarded", ALLOW: "allowed", BLOCK: "blocked", MONITOR: "monitored"}
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_GROUP: Final = "default"
_MEMO_LIMIT: Final = 65536


@dataclass(frozen=True, slots=True)
class Platform:
    id: str
    name: str
    category: str
    owner: str
    domains: tuple[str, ...]
    source: str  # the file it was read from
    notes: str = ""
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """Where an entry comes from. One object per source (platform, list file, config key), shared by its entries."""

    kind: str  # "platform" | "list" | "allow_domains" | "special"
    action: str  # "block" | "allow" | "nxdomain" | "nodata"
    source: str  # file path, or the config key
    platform: Platform | None = None
    list_name: str = ""
    groups: frozenset[str] | None = None  # allow_domains of one group; None: every group
    text: str = ""  # for special names: what it defends against

    @property
    def label(self) -> str:
        """Bounded metrics label: the platform id, ``list:NAME`` or ``bypass``."""
        if self.platform is not None:
            return self.platform.id
        if self.kind == "special":
            return "bypass"
        return "list:" + self.list_name if self.list_name else self.kind


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    block: frozenset[str]  # platform ids
    allow: frozenset[str]  # platform ids (always-allowed ones included)
    monitor: frozenset[str]  # platform ids
    lists_allowed: frozenset[str] = frozenset()  # list names this group does not apply
    lists_monitored: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    client_ids: frozenset[str] = frozenset()


def utc_text(moment: float) -> str:
    """A Unix time as operators read and write it in configs: ISO 8601, UTC, to the second."""
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exemption_state(now: float, starts: float, expires: float) -> str:
    """pending before ``starts``, active until ``expires`` (exclusive), expired after."""
    return "pending" if now < starts else "expired" if now >= expires else "active"


@dataclass(frozen=True, slots=True)
class Exemption:
    """An approved, time-limited exception: these platforms are reachable for these clients."""

    platforms: frozenset[str]
    approved_by: str
    reason: str
    reference: str
    starts: float  # Unix time, inclusive
    expires: float  # Unix time, exclusive
    clients: frozenset[str] = frozenset()  # canonical address text
    networks: tuple[IPNetwork, ...] = ()
    groups: frozenset[str] = frozenset()
    client_ids: frozenset[str] = frozenset()
    where: str = ""

    def state(self, now: float) -> str:
        return exemption_state(now, self.starts, self.expires)

    def who(self) -> list[str]:
        """Whom it covers, as ``resolver exemptions`` and ``resolver diff`` print it."""
        return [*sorted(self.clients), *(str(n) for n in self.networks), *(f"group:{g}" for g in sorted(self.groups)),
                *(f"id:{c}" for c in sorted(self.client_ids))]

    def covers(self, client: str, group: str, client_id: str | None) -> bool:
        if client in self.clients or group in self.groups or (client_id is not None and client_id in self.client_ids):
            return True
        if self.networks:
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                return False
            return any(address in network for network in self.networks)
        return False


@dataclass(eq=False, slots=True)
class Verdict:
    """What happens to names under one trie entry for one group; interned, so shared by many entries."""

    action: int
    rule: Rule | None  # the rule that decided; None for PASS
    rules: tuple[Rule, ...]  # every rule that claims the entry
    reason: str
    group: str = DEFAULT_GROUP
    label: str = ""
    mode: str = ""  # sinkhole mode for BLOCK
    ede: bytes = b""
    protective: bool = False  # an allow that shields everything below it
    exemptions: tuple[Exemption, ...] = ()  # exemptions that may lift this block
    key: tuple[str, str] = ("", "")  # (label, group) for the blocked/monitored counters
    tails: dict[int, tuple[int, int, int, int, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SinkholeSpec:
    mode: str = "null"
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ttl: int = 10


class BulkList(Protocol):
    """A list read while the policy is built, so it is never held as entries: runs of names that share a match
    and an action, in the file's order."""

    def runs(self) -> Iterator[tuple[Match, str, Sequence[str]]]: ...

    def projected(self) -> int:
        """How many entries the whole list will have, judged from what has been read so far."""

    def digest(self) -> str:
        """Of the list's content, for the policy version: known once the runs are read."""


@dataclass(frozen=True, slots=True)
class ListInput:
    """One list as the policy needs it: entries as (domain, match, action), or ``bulk``."""

    source: str
    entries: Iterable[tuple[str, Match, str]] = ()
    name: str = ""
    digest: str = ""  # of the list's content, for the policy version; empty: hashed entry by entry
    bulk: BulkList | None = None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A group as configured: names of categories, platforms or lists, still to be resolved."""

    name: str
    block: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    monitor: tuple[str, ...] = ()
    allow_domains: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    client_ids: tuple[str, ...] = ()
    where: str = "policy"


@dataclass(frozen=True, slots=True)
class Bypass:
    firefox_canary: bool = True
    private_relay: bool = True
    ddr: bool = True
    doh_servers: bool = True
    cname_cloaking: bool = True


@dataclass(frozen=True, slots=True)
class PolicySpec:
    groups: tuple[GroupSpec, ...] = (GroupSpec(DEFAULT_GROUP, ("social", "messaging")),)
    always_allow: tuple[str, ...] | None = None  # None: whichever of maps, news, transport exist
    allow_domains: tuple[str, ...] = ()
    exemptions: tuple[Exemption, ...] = ()
    bypass: Bypass = Bypass()
    sinkhole: SinkholeSpec = SinkholeSpec()
    where: str = "policy"


SPECIAL_NAMES: tuple[tuple[str, Match, str, str, str], ...] = (
    # (name, match, reply, switch, why)
    ("use-application-dns.net", "exact", "nxdomain", "firefox_canary",
     "Firefox DoH canary: NXDOMAIN tells Firefox to keep using this resolver"),
    ("mask.icloud.com", "exact", "nxdomain", "private_relay", "Apple iCloud Private Relay would bypass the filter"),
    ("mask-h2.icloud.com", "exact", "nxdomain", "private_relay", "Apple iCloud Private Relay would bypass the filter"),
    ("mask-canary.icloud.com", "exact", "nxdomain", "private_relay",
     "Apple iCloud Private Relay would bypass the filter"),
    ("resolver.arpa", "subtree", "nodata", "ddr",
     "DDR (RFC 9462): no designated encrypted resolver, so phones cannot upgrade past this one"),
)
DEFAULT_ALWAYS_ALLOW: Final = ("maps", "news", "transport")
DOH_CATEGORY: Final = "doh-bypass"


class Policy:
    def __init__(
        self, trie: PackedTrie[tuple[Verdict, ...]], platforms: dict[str, Platform], groups: tuple[Group, ...],
        exemptions: tuple[Exemption, ...], spec: PolicySpec, version: str, lists: dict[str, str],
    ) -> None:
        self.trie = trie
        self.platforms = platforms
        self.groups = groups
        self.exemptions = exemptions
        self.spec = spec
        self.sinkhole = spec.sinkhole
        self.cname_cloaking = spec.bypass.cname_cloaking
        self.version = version
        self.lists = lists  # name -> source
        self.by_network = sorted(
            ((network, i) for i, g in enumerate(groups) for network in g.networks), key=lambda x: -x[0].prefixlen)
        self.by_client_id = {cid: i for i, g in enumerate(groups) for cid in g.client_ids}
        self.grouped = bool(self.by_network or self.by_client_id)
        self._memo: dict[str, int] = {}

    def group_of(self, client: str, client_id: str | None = None) -> int:
        """Index of the client's group: a client id first, then the most specific network, else ``default``."""
        if client_id is not None:
            index = self.by_client_id.get(client_id)
            if index is not None:
                return index
        index = self._memo.get(client)
        if index is None:
            index = 0
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                address = None
            if address is not None:
                for network, i in self.by_network:
                    if address.version == network.version and address in network:
                        index = i
                        break
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[client] = index
        return index

    def lookup(self, labels: list[bytes], group: int = 0) -> Verdict | None:
        verdicts = self.trie.lookup(labels)
        return None if verdicts is None else verdicts[group]

    def exemption_for(self, verdict: Verdict, client: str, client_id: str | None, now: float) -> Exemption | None:
        """The active exemption that lifts ``verdict`` for this client, if any."""
        for exemption in verdict.exemptions:
            if exemption.starts <= now < exemption.expires and exemption.covers(client, verdict.group, client_id):
                return exemption
        return None

    def blocked_reply(self, query: Query, verdict: Verdict) -> bytes:
        """The sinkhole answer, built from a cached tail: only the header and question are per query."""
        qtype = query.qtype
        key = (1 if qtype == wire.TYPE_A else 2 if qtype == wire.TYPE_AAAA else 0) * 4 + (
            2 if query.edns else 0) + (1 if query.do else 0)
        tail = verdict.tails.get(key)
        if tail is None:
            tail = verdict.tails[key] = _tail(self.sinkhole, verdict, qtype, query.edns, query.do)
        rcode, an, ns, ar, body = tail
        return HEADER.pack(query.id, QR | RA | (query.flags & ECHO_MASK) | rcode, 1, an, ns, ar) + query.question + body


_SOA_NAMES: Final = wire.encode_name("resolver.invalid") + wire.encode_name("blocked.resolver.invalid")
_SOA_TIMERS: Final = struct.Struct("!IIIII")  # serial, refresh, retry, expire, minimum


def _tail(spec: SinkholeSpec, verdict: Verdict, qtype: int, edns: bool, do: bool) -> tuple[int, int, int, int, bytes]:
    ttl = spec.ttl
    mode = verdict.mode or spec.mode
    records: list[bytes] = []
    rcode = wire.NOERROR
    if mode == "refused":
        rcode = wire.REFUSED
    elif mode == "nxdomain":
        rcode = wire.NXDOMAIN
    elif mode in ("null", "address") and qtype == wire.TYPE_A:
        addresses = ("0.0.0.0",) if mode == "null" else spec.ipv4
        records = [wire.rr(wire.TYPE_A, ttl, ipaddress.ip_address(a).packed) for a in addresses]
    elif mode in ("null", "address") and qtype == wire.TYPE_AAAA:
        addresses = ("::",) if mode == "null" else spec.ipv6
        records = [wire.rr(wire.TYPE_AAAA, ttl, ipaddress.ip_address(a).packed) for a in addresses]
    authority = []
    if not records and rcode != wire.REFUSED:
        # A SOA lets the phone cache the negative answer for the sinkhole TTL (RFC 2308 section 5).
        authority = [wire.rr(wire.TYPE_SOA, ttl, _SOA_NAMES + _SOA_TIMERS.pack(1, 3600, 600, 86400, ttl))]
    opt = wire.opt_record(do, verdict.ede) if edns else b""
    body = b"".join(records) + b"".join(authority) + opt
    return rcode, len(records), len(authority), 1 if opt else 0, body
