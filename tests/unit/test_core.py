"""The pure core, table-driven, with a fake clock: wire parsing, trie, policy, cache and pipeline.

Replies are checked by parsing them with dnspython, an independent implementation.
"""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver.core import cache as cache_mod
from resolver.core import stats as stats_mod
from resolver.core import wire
from resolver.core.builder import build_policy
from resolver.core.cache import Cache, CacheLimits
from resolver.core.pipeline import Pipeline
from resolver.core.policy import (
    ALLOW,
    BLOCK,
    PASS,
    Bypass,
    GroupSpec,
    ListInput,
    Platform,
    Policy,
    PolicySpec,
    SinkholeSpec,
)
from resolver.core.stats import BLOCKED, CACHED, ERROR, FORWARDED, STALE, TCP, UDP, Stats
from resolver.errors import ConfigError, WireFormatError
from tests.support.domaintrie import DomainTrie

CORE = Path(__file__).resolve().parents[2] / "resolver" / "core"


def make_query(name: str, rtype: str = "A", *, edns: bool = True, do: bool = False, rd: bool = True,
               payload: int = 1232) -> bytes:
    if edns:
        msg = dns.message.make_query(name, rtype, use_edns=0, want_dnssec=do, payload=payload)
    else:
        msg = dns.message.make_query(name, rtype, use_edns=False)
    if not rd:
        msg.flags &= ~dns.flags.RD
    return msg.to_wire()


def platform(pid: str, category: str, *domains: str) -> Platform:
    return Platform(pid, pid.title(), category, "Owner", domains, f"/lists/{pid}.yaml")


PLATFORMS = [
    platform("tiktok", "social", "tiktok.com", "tiktokv.com"),
    platform("facebook", "social", "facebook.com", "fbcdn.net"),
    platform("whatsapp", "messaging", "whatsapp.com", "fbcdn.net"),
    platform("travel", "travel", "travel.example", "api.tiktok.com"),
]


def policy(block: tuple[str, ...] = ("social", "messaging"), allow: tuple[str, ...] = (),
           allow_domains: tuple[str, ...] = (), mode: str = "null", lists: list[ListInput] | None = None,
           ipv4: tuple[str, ...] = (), ipv6: tuple[str, ...] = ()) -> Policy:
    spec = PolicySpec(groups=(GroupSpec("default", block, allow),), allow_domains=allow_domains,
                      sinkhole=SinkholeSpec(mode, ipv4, ipv6, 7), bypass=Bypass(doh_servers=False))
    return build_policy(PLATFORMS, lists or [], spec)


def labels(name: str) -> list[bytes]:
    return name.lower().encode().split(b".")


# ---------------------------------------------------------------------------------------------------- the core is pure


def test_core_imports_no_io_modules() -> None:
    forbidden = {"asyncio", "socket", "ssl", "prometheus_client", "time", "selectors", "threading", "os"}
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


# ------------------------------------------------------------------------------------------------------------- wire


def test_parse_query_reads_header_question_and_edns() -> None:
    data = make_query("WwW.TikTok.COM", "AAAA", do=True, payload=4096)
    q = wire.parse_query(data)
    assert q.id == struct.unpack("!H", data[:2])[0]
    assert q.labels == [b"www", b"tiktok", b"com"]
    assert q.qname == b"\x03www\x06tiktok\x03com\x00"
    assert q.question[:-4] == b"\x03WwW\x06TikTok\x03COM\x00"  # original case kept for the echo
    assert (q.qtype, q.qclass) == (28, 1)
    assert (q.edns, q.udp_size, q.do) == (True, 4096, True)
    assert q.name == "www.tiktok.com."


def test_parse_query_without_edns() -> None:
    q = wire.parse_query(make_query("example.test", edns=False))
    assert (q.edns, q.udp_size, q.do) == (False, 512, False)


def _header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x12\x34\x01",
        _header(qd=5),
        _header(qd=0),
        _header() + b"\x03www",  # name runs off the end
        _header() + b"\xc0\x0c\x00\x01\x00\x01",  # compression pointer in the question (a loop to itself)
        _header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label of 64
        _header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
        _header() + b"\x03www\x00\x00",  # question truncated
        _header(ar=1) + b"\x03www\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x04",  # OPT truncated
        _header(ar=2) + b"\x00\x00\x01\x00\x01" + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,  # two OPTs
        _header(an=3, ar=1) + b"\x00\x00\x01\x00\x01",  # counts lying
    ],
)
def test_malformed_queries_raise_wire_format_error(packet: bytes) -> None:
    with pytest.raises(WireFormatError):
        wire.parse_query(packet)


def test_unknown_edns_version_is_badvers() -> None:
    msg = dns.message.make_query("example.test", "A", use_edns=1)
    with pytest.raises(wire.EdnsVersionError) as info:
        wire.parse_query(msg.to_wire())
    reply = dns.message.from_wire(wire.badvers_reply(info.value))
    assert reply.id == msg.id
    assert reply.rcode() == dns.rcode.BADVERS


def test_reply_possible_refuses_short_and_response_packets() -> None:
    assert not wire.reply_possible(b"\x00" * 11)
    assert not wire.reply_possible(_header(flags=0x8000))
    assert wire.reply_possible(_header())


def test_error_reply_echoes_id_and_rd() -> None:
    reply = dns.message.from_wire(wire.error_reply(_header(qd=5), wire.FORMERR), question_only=True)
    assert reply.id == 0x1234
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RD


def test_truncated_reply_sets_tc_and_keeps_question() -> None:
    q = wire.parse_query(make_query("big.example.test", "TXT", edns=False))
    reply = dns.message.from_wire(wire.truncated(q))
    assert reply.flags & dns.flags.TC
    assert str(reply.question[0].name) == "big.example.test."
    assert not reply.answer


# ------------------------------------------------------------------------------------------------------------- trie


def test_trie_most_specific_entry_wins() -> None:
    trie: DomainTrie[str] = DomainTrie()
    trie.insert(labels("tiktok.com"), "subtree", "block")
    trie.insert(labels("help.tiktok.com"), "subtree", "allow")
    trie.insert(labels("exact.example"), "exact", "exact")
    trie.insert(labels("wild.example"), "below", "wild")
    cases = {
        "tiktok.com": "block",
        "a.b.tiktok.com": "block",
        "help.tiktok.com": "allow",
        "x.help.tiktok.com": "allow",
        "nottiktok.com": None,
        "com": None,
        "exact.example": "exact",
        "a.exact.example": None,
        "wild.example": None,
        "a.wild.example": "wild",
    }
    for name, expected in cases.items():
        assert trie.lookup(labels(name)) == expected, name
    assert len(trie) == 4
    assert sorted((b".".join(lab).decode(), m, v) for lab, m, v in trie.items()) == [
        ("exact.example", "exact", "exact"),
        ("help.tiktok.com", "subtree", "allow"),
        ("tiktok.com", "subtree", "block"),
        ("wild.example", "below", "wild"),
    ]


def test_trie_along_lists_every_covering_entry() -> None:
    trie: DomainTrie[str] = DomainTrie()
    trie.insert(labels("tiktok.com"), "subtree", "a")
    trie.insert(labels("www.tiktok.com"), "subtree", "b")
    assert trie.along(labels("x.www.tiktok.com")) == [(2, "a"), (3, "b")]


# ----------------------------------------------------------------------------------------------------------- policy


def test_policy_blocks_categories_and_subdomains() -> None:
    p = policy()
    for name, platform_id in [("www.tiktok.com", "tiktok"), ("TIKTOKV.com", "tiktok"), ("m.facebook.com", "facebook"),
                              ("web.whatsapp.com", "whatsapp")]:
        verdict = p.lookup(labels(name))
        assert verdict is not None and verdict.action == BLOCK and verdict.label == platform_id, name
    assert p.lookup(labels("example.test")) is None
    assert p.lookup(labels("nottiktok.com")) is None


def test_unblocked_platform_below_a_blocked_one_decides_nothing() -> None:
    # api.tiktok.com is also claimed by "travel", which this policy does not block: TikTok's block still applies.
    verdict = policy().lookup(labels("api.tiktok.com"))
    assert verdict is not None and verdict.action == BLOCK and verdict.label == "tiktok"
    # ... but an allowed platform does decide.
    verdict = policy(allow=("travel",)).lookup(labels("api.tiktok.com"))
    assert verdict is not None and verdict.action == ALLOW
    assert policy().lookup(labels("travel.example")).action == PASS  # type: ignore[union-attr]


def test_shared_domain_is_reachable_when_one_owner_is_allowed() -> None:
    assert policy().lookup(labels("scontent.fbcdn.net")).action == BLOCK  # type: ignore[union-attr]
    assert policy(allow=("whatsapp",)).lookup(labels("scontent.fbcdn.net")).action == ALLOW  # type: ignore[union-attr]
    assert policy(allow=("whatsapp",)).lookup(labels("facebook.com")).action == BLOCK  # type: ignore[union-attr]


def test_allow_domain_below_blocked_domain() -> None:
    p = policy(allow_domains=("help.tiktok.com",))
    assert p.lookup(labels("a.help.tiktok.com")).action == ALLOW  # type: ignore[union-attr]
    assert p.lookup(labels("www.tiktok.com")).action == BLOCK  # type: ignore[union-attr]


def test_block_by_platform_id_only() -> None:
    p = policy(block=("tiktok",))
    assert p.lookup(labels("tiktok.com")).action == BLOCK  # type: ignore[union-attr]
    assert p.lookup(labels("facebook.com")).action == PASS  # type: ignore[union-attr]


def test_unknown_block_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        policy(block=("social", "tiktokk"))
    assert "policy.block[1]" in str(info.value) and "tiktokk" in str(info.value)


def test_list_rules_and_precedence() -> None:
    ads = ListInput("/l/ads.txt", [("ads.example", "subtree", "block"), ("ok.ads.example", "subtree", "allow"),
                                   ("gone.example", "exact", "nxdomain"), ("tiktok.com", "subtree", "allow")], "ads")
    p = policy(lists=[ads])
    assert p.lookup(labels("x.ads.example")).label == "list:ads"  # type: ignore[union-attr]
    assert p.lookup(labels("x.ok.ads.example")).action == ALLOW  # type: ignore[union-attr]
    assert p.lookup(labels("gone.example")).mode == "nxdomain"  # type: ignore[union-attr]
    assert p.lookup(labels("a.gone.example")) is None
    assert p.lookup(labels("tiktok.com")).action == ALLOW  # type: ignore[union-attr]


def test_policy_version_is_a_content_hash() -> None:
    assert policy().version == policy().version
    assert policy().version != policy(block=("tiktok",)).version


# ------------------------------------------------------------------------------------------------- sinkhole replies


@pytest.mark.parametrize(
    ("mode", "rtype", "rcode", "answers", "soa"),
    [
        ("null", "A", "NOERROR", ["0.0.0.0"], False),
        ("null", "AAAA", "NOERROR", ["::"], False),
        ("null", "HTTPS", "NOERROR", [], True),
        ("null", "MX", "NOERROR", [], True),
        ("nxdomain", "A", "NXDOMAIN", [], True),
        ("refused", "AAAA", "REFUSED", [], False),
        ("address", "A", "NOERROR", ["192.0.2.99", "192.0.2.98"], False),
        ("address", "AAAA", "NOERROR", ["2001:db8::99"], False),
        ("address", "MX", "NOERROR", [], True),
    ],
)
def test_blocked_reply(mode: str, rtype: str, rcode: str, answers: list[str], soa: bool) -> None:
    p = policy(mode=mode, ipv4=("192.0.2.99", "192.0.2.98"), ipv6=("2001:db8::99",))
    for edns in (True, False):
        data = make_query("Www.TikTok.com", rtype, edns=edns, rd=False)
        q = wire.parse_query(data)
        verdict = p.lookup(q.labels)
        assert verdict is not None
        reply = dns.message.from_wire(p.blocked_reply(q, verdict))
        assert reply.id == q.id
        assert dns.rcode.to_text(reply.rcode()) == rcode
        assert str(reply.question[0].name) == "Www.TikTok.com."
        assert not reply.flags & dns.flags.RD and reply.flags & dns.flags.QR and reply.flags & dns.flags.RA
        got = [rd.to_text() for rrset in reply.answer for rd in rrset]
        assert got == answers
        assert all(rrset.ttl == 7 for rrset in reply.answer + reply.authority)
        assert bool(reply.authority) == soa
        if edns:
            ede = [o for o in reply.options if o.otype == dns.edns.EDE]
            assert len(ede) == 1 and ede[0].code == 15 and ede[0].text == "blocked: Tiktok (tiktok)"
        else:
            assert reply.edns < 0


# ------------------------------------------------------------------------------------------------------------ cache


def upstream_reply(query_wire: bytes, *, answers: list[tuple[str, int, str]] = (), rcode: int = 0,  # type: ignore[assignment]
                   soa: tuple[int, int] | None = None, qid: int | None = None) -> bytes:
    q = dns.message.from_wire(query_wire)
    r = dns.message.make_response(q)
    if qid is not None:
        r.id = qid
    r.set_rcode(rcode)
    for rtype, ttl, value in answers:
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", rtype, value))
    if soa is not None:
        r.authority.append(dns.rrset.from_text("example.test.", soa[0], "IN", "SOA",
                                               f"ns.example.test. h.example.test. 1 2 3 4 {soa[1]}"))
    return r.to_wire(max_size=65535)


def test_prepare_and_render_age_ttls_and_swap_opt() -> None:
    q = wire.parse_query(make_query("www.example.test", edns=True))
    up = wire.upstream_query(q, 999)
    reply = upstream_reply(up, answers=[("A", 300, "192.0.2.1"), ("A", 200, "192.0.2.2")])
    assert wire.is_response(reply, 999, q)
    assert not wire.is_response(reply, 998, q)
    other = wire.parse_query(make_query("www.other.test"))
    assert not wire.is_response(reply, 999, other)
    assert not wire.is_response(reply[:2] + bytes((reply[2] & 0x7F,)) + reply[3:], 999, q)  # QR clear: a query
    assert not wire.is_response(reply[:2] + bytes((reply[2] | 0x28,)) + reply[3:], 999, q)  # opcode 5 (UPDATE)
    assert not wire.is_response(reply[:12], 999, q)  # no question
    entry = cache_mod.prepare(reply, q, 1000.0, CacheLimits())
    assert entry.ttl == 200 and entry.ar == 0  # upstream OPT dropped
    for edns in (True, False):
        client = wire.parse_query(make_query("WWW.example.test", edns=edns))
        out = dns.message.from_wire(cache_mod.render(entry, client, 1050.9))
        assert out.id == client.id
        assert str(out.question[0].name) == "WWW.example.test."
        assert sorted(rd.to_text() for rd in out.answer[0]) == ["192.0.2.1", "192.0.2.2"]
        assert out.answer[0].ttl == 150  # dnspython keeps the smallest TTL of the set: 200 - 50
        assert (out.edns >= 0) == edns


@pytest.mark.parametrize(
    ("rcode", "answers", "soa", "expected_ttl"),
    [
        (dns.rcode.NXDOMAIN, [], (300, 60), 60),  # RFC 2308: min(SOA TTL, SOA minimum)
        (dns.rcode.NOERROR, [], (30, 600), 30),  # NODATA
        (dns.rcode.NXDOMAIN, [], None, 0),  # no SOA: not cached
        (dns.rcode.SERVFAIL, [], None, 0),
        (dns.rcode.NOERROR, [("A", 0, "192.0.2.1")], None, 0),
        (dns.rcode.NOERROR, [("A", 999999, "192.0.2.1")], None, 86400),  # capped at max_ttl
        (dns.rcode.NXDOMAIN, [], (99999, 99999), 3600),  # capped at negative_max_ttl
    ],
)
def test_cache_ttl_rules(rcode: int, answers: list[tuple[str, int, str]], soa: tuple[int, int] | None,
                         expected_ttl: int) -> None:
    q = wire.parse_query(make_query("x.example.test"))
    entry = cache_mod.prepare(upstream_reply(wire.upstream_query(q, 1), answers=answers, rcode=rcode, soa=soa), q,
                              0.0, CacheLimits())
    assert entry.ttl == expected_ttl


def test_cache_is_lru_bounded_and_expires() -> None:
    c = Cache(CacheLimits(max_entries=2, stale_max_age=0))
    q = wire.parse_query(make_query("x.example.test"))
    entry = cache_mod.prepare(upstream_reply(wire.upstream_query(q, 1), answers=[("A", 10, "192.0.2.1")]), q, 0.0,
                              CacheLimits())
    c.put(b"a", entry)
    c.put(b"b", entry)
    assert c.get(b"a", 1.0) is entry  # a is now most recent
    c.put(b"c", entry)
    assert c.get(b"b", 1.0) is None and c.evictions == 1
    assert c.get(b"a", 9.9) is entry
    assert c.get(b"a", 10.0) is None  # expired at stored + ttl
    assert len(c) == 1


def test_serve_stale_window_and_prefetch_trigger() -> None:
    limits = CacheLimits(stale_max_age=100, stale_ttl=30, prefetch_fraction=0.1, prefetch_min_hits=2)
    c = Cache(limits)
    q = wire.parse_query(make_query("x.example.test"))
    entry = cache_mod.prepare(upstream_reply(wire.upstream_query(q, 1), answers=[("A", 100, "192.0.2.1")]), q, 0.0,
                              limits)
    c.put(b"k", entry)
    assert c.get(b"k", 50.0) is entry and not c.wants_prefetch(entry, 50.0)  # one hit, half the TTL left
    assert c.get(b"k", 91.0) is entry and c.wants_prefetch(entry, 91.0)  # popular and 9% left: refresh once
    assert not c.wants_prefetch(entry, 92.0)
    assert c.get_stale(b"k", 99.0) is None  # not expired yet: nothing stale to serve
    assert c.get(b"k", 100.0) is None and c.get_stale(b"k", 150.0) is entry
    stale = dns.message.from_wire(cache_mod.render(entry, q, 150.0, stale_ttl=30))
    assert stale.answer[0].ttl == 30
    assert [(o.code, o.otype) for o in stale.options] == [(3, dns.edns.EDE)]
    assert c.get_stale(b"k", 200.0) is None and c.get(b"k", 200.0) is None and len(c) == 0  # past the window


def test_pipeline_serves_stale_when_upstreams_fail() -> None:
    clock = Clock()
    stats = Stats()
    pipe = Pipeline(policy(), Cache(CacheLimits()), stats, clock, lambda: 1e9)
    pending = pipe.on_query(make_query("www.example.test"), UDP, "127.0.0.1")
    assert isinstance(pending, wire.Query)
    pipe.on_reply(pending, upstream_reply(wire.upstream_query(pending, 7), answers=[("A", 60, "192.0.2.1")], qid=7))
    clock.now += 600  # long expired
    again = pipe.on_query(make_query("www.example.test"), UDP, "127.0.0.1")
    assert isinstance(again, wire.Query)  # expired: asks upstream first
    reply = dns.message.from_wire(pipe.on_failure(again))
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].to_text() == "192.0.2.1"
    assert reply.answer[0].ttl == 30
    assert stats.count(UDP, STALE) == 1
    nothing = pipe.on_query(make_query("never.example.test"), UDP, "127.0.0.1")
    assert isinstance(nothing, wire.Query)
    assert dns.message.from_wire(pipe.on_failure(nothing)).rcode() == dns.rcode.SERVFAIL


def test_cache_key_separates_type_and_do_but_not_case() -> None:
    k = wire.parse_query(make_query("A.example.test")).cache_key
    assert k == wire.parse_query(make_query("a.EXAMPLE.test")).cache_key
    assert k != wire.parse_query(make_query("a.example.test", "AAAA")).cache_key
    assert k != wire.parse_query(make_query("a.example.test", do=True)).cache_key


# --------------------------------------------------------------------------------------------------------- pipeline


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outcome_indices_name_their_outcomes() -> None:
    """The indices are written out (Final, for the compiled path): each must still be its name's place in OUTCOMES,
    or a count would reach /metrics and the query log under another outcome's label."""
    for index, name in enumerate(stats_mod.OUTCOMES):
        assert getattr(stats_mod, name.upper()) == index


def test_pipeline_block_forward_cache_and_counts() -> None:
    clock = Clock()
    stats = Stats()
    pipe = Pipeline(policy(), Cache(CacheLimits()), stats, clock, lambda: 1e9)
    blocked = pipe.on_query(make_query("www.tiktok.com"), UDP, "127.0.0.1")
    assert isinstance(blocked, bytes)
    assert dns.message.from_wire(blocked).answer[0][0].to_text() == "0.0.0.0"
    assert stats.blocked == {("tiktok", "default"): 1}

    data = make_query("www.example.test")
    pending = pipe.on_query(data, UDP, "127.0.0.1")
    assert isinstance(pending, wire.Query)
    answer = pipe.on_reply(pending, upstream_reply(wire.upstream_query(pending, 7), answers=[("A", 60, "192.0.2.1")],
                                                   qid=7))
    assert dns.message.from_wire(answer).answer[0][0].to_text() == "192.0.2.1"
    clock.now += 10
    cached = pipe.on_query(make_query("WWW.example.test"), TCP, "127.0.0.1")
    assert isinstance(cached, bytes)
    assert dns.message.from_wire(cached).answer[0].ttl == 50
    assert (stats.count(UDP, BLOCKED), stats.count(UDP, FORWARDED), stats.count(TCP, CACHED)) == (1, 1, 1)

    failed = pipe.on_query(make_query("down.example.test"), UDP, "127.0.0.1")
    assert isinstance(failed, wire.Query)
    assert dns.message.from_wire(pipe.on_failure(failed)).rcode() == dns.rcode.SERVFAIL
    assert stats.count(UDP, ERROR) == 1


def test_pipeline_checks_policy_before_cache() -> None:
    clock = Clock()
    pipe = Pipeline(policy(block=("facebook",)), Cache(CacheLimits()), Stats(), clock, lambda: 1e9)
    pending = pipe.on_query(make_query("www.tiktok.com"), UDP, "127.0.0.1")
    assert isinstance(pending, wire.Query)
    pipe.on_reply(pending, upstream_reply(wire.upstream_query(pending, 7), answers=[("A", 60, "192.0.2.1")], qid=7))
    assert isinstance(pipe.on_query(make_query("www.tiktok.com"), UDP, "127.0.0.1"), bytes)  # cached
    pipe.policy = policy(block=("tiktok",))  # a reload
    reply = pipe.on_query(make_query("www.tiktok.com"), UDP, "127.0.0.1")
    assert isinstance(reply, bytes)
    assert dns.message.from_wire(reply).answer[0][0].to_text() == "0.0.0.0"


def test_a_repeated_packet_is_answered_as_its_own_query() -> None:
    """The parse memo: the same question under new IDs gets answers carrying each one's own ID and case, and a
    reload decides a remembered packet by the new policy."""
    pipe = Pipeline(policy(block=("facebook",)), Cache(CacheLimits()), Stats(), Clock(), lambda: 1e9)
    first = make_query("WwW.TikTok.com")
    for qid in (1, 2, 0xFFFF):
        packet = struct.pack("!H", qid) + first[2:]
        pending = pipe.on_query(packet, UDP, "127.0.0.1")
        assert isinstance(pending, wire.Query) and pending.id == qid and pending.question == packet[12:-11]
    pipe.swap(policy(block=("tiktok",)))
    reply = pipe.on_query(b"\x12\x34" + first[2:], UDP, "127.0.0.1")
    assert isinstance(reply, bytes)
    message = dns.message.from_wire(reply)
    assert message.id == 0x1234 and message.answer[0][0].to_text() == "0.0.0.0"
    assert message.question[0].name.to_text() == "WwW.TikTok.com."


def test_the_parse_memo_is_bounded_and_stops_filling_under_a_flood_of_new_names() -> None:
    from resolver.core.pipeline import MEMO_PAUSE, PARSE_MEMO

    pipe = Pipeline(policy(), Cache(CacheLimits()), Stats(), Clock(), lambda: 1e9)
    for i in range(PARSE_MEMO):
        pipe.on_query(make_query(f"n{i}.example.test"), UDP, "127.0.0.1")
    assert len(pipe._parsed) == PARSE_MEMO
    pipe.on_query(make_query("one-more.example.test"), UDP, "127.0.0.1")
    assert len(pipe._parsed) == 0  # full, and it served no hits: emptied, and paused
    for i in range(MEMO_PAUSE):
        pending = pipe.on_query(make_query(f"m{i}.tiktok.com"), UDP, "127.0.0.1")
        assert isinstance(pending, bytes)  # still decided one by one while the memo rests
    assert len(pipe._parsed) == 0
    pipe.on_query(make_query("again.example.test"), UDP, "127.0.0.1")
    assert len(pipe._parsed) == 1


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"\x01\x02\x03", None),  # no header: dropped
        (_header(flags=0x8100) + b"\x00\x00\x01\x00\x01", None),  # a response: dropped
        (_header(qd=2), dns.rcode.FORMERR),
        (_header(flags=0x2900) + b"\x00\x00\x06\x00\x01", dns.rcode.NOTIMP),  # opcode UPDATE
        (_header(qd=0), dns.rcode.FORMERR),  # a QUERY without its question
        (_header(qd=0, flags=0x2000), dns.rcode.NOTIMP),  # NOTIFY, header only: not ours to judge (RFC 8906)
        (_header(qd=0, an=1, flags=0x1000), dns.rcode.NOTIMP),  # STATUS, counts lying
        (_header() + b"\x07version\x04bind\x00\x00\x10\x00\x03", dns.rcode.REFUSED),  # CHAOS class
    ],
)
def test_pipeline_bad_input(packet: bytes, expected: int | None) -> None:
    stats = Stats()
    pipe = Pipeline(policy(), Cache(CacheLimits()), stats, Clock(), lambda: 1e9)
    out = pipe.on_query(packet, UDP, "127.0.0.1")
    if expected is None:
        assert out is None and stats.malformed == 1
    else:
        assert isinstance(out, bytes)
        reply = dns.message.from_wire(out, question_only=True)
        assert reply.rcode() == expected and reply.id == 0x1234


def test_pipeline_truncates_for_small_udp_buffers() -> None:
    pipe = Pipeline(policy(), Cache(CacheLimits()), Stats(), Clock(), lambda: 1e9)
    big = [("TXT", 60, f'"{i}{"x" * 200}"') for i in range(10)]
    for edns, payload, truncated in [(False, 512, True), (True, 1232, True), (True, 4096, True), (True, 512, True)]:
        data = make_query("big.example.test", "TXT", edns=edns, payload=payload)
        pending = pipe.on_query(data, UDP, "127.0.0.1")
        if isinstance(pending, wire.Query):
            out = pipe.on_reply(pending, upstream_reply(wire.upstream_query(pending, 3), answers=big, qid=3))
        else:
            assert isinstance(pending, bytes)
            out = pending
        assert bool(dns.message.from_wire(out).flags & dns.flags.TC) == truncated
    tcp = pipe.on_query(make_query("big.example.test", "TXT"), TCP, "127.0.0.1")
    assert isinstance(tcp, bytes) and len(dns.message.from_wire(tcp).answer[0]) == 10


def test_packed_trie_answers_exactly_like_the_dict_trie() -> None:
    import random

    from resolver.core.trie import PackedTrie
    from tests.support.domaintrie import pack

    rng = random.Random(5)
    words = ["a", "b", "cdn", "www", "tiktok", "example", "co", "uk", "com", "x1", "deep"]
    trie: DomainTrie[str] = DomainTrie()
    entries = []
    for i in range(3000):
        name = [rng.choice(words).encode() for _ in range(rng.randint(1, 5))]
        match = rng.choice(["exact", "subtree", "below"])
        trie.insert(name, match, f"v{i % 37}")  # type: ignore[arg-type]
        entries.append((name, match))
    packed = pack(trie)
    assert len(packed) == len(trie)
    for _ in range(20000):
        name = [rng.choice(words).encode() for _ in range(rng.randint(1, 7))]
        assert packed.lookup(name) == trie.lookup(name), name
        assert packed.along(name) == trie.along(name), name
    for name, match in entries:
        assert packed.get(name, match) == trie.get(name, match)  # type: ignore[arg-type]
    assert packed.lookup([b"not", b"there"]) is None and packed.along([b"nothere"]) == []
    assert pack(DomainTrie()).lookup([b"com"]) is None and PackedTrie().lookup([b"com"]) is None


def test_render_ages_ttls_once_per_second() -> None:
    q = wire.parse_query(make_query("www.example.test"))
    entry = cache_mod.prepare(upstream_reply(wire.upstream_query(q, 1), answers=[("A", 300, "192.0.2.1")]), q,
                              1000.0, CacheLimits())
    times = [1000.2, 1010.1, 1010.9, 1011.0, 1000.5, 1400.0]
    ttls = [dns.message.from_wire(cache_mod.render(entry, q, now)).answer[0].ttl for now in times]
    assert ttls == [300, 290, 290, 289, 300, 0]


# ------------------------------------------------------------------------------------------ what reaches phones


def chatty_reply(query_wire: bytes, *, rcode: int = 0, answers: list[tuple[str, int, str]] = (),  # type: ignore[assignment]
                 authority: list[tuple[str, str, int, str]] = (), glue: bool = True, ad: bool = True) -> bytes:  # type: ignore[assignment]
    """An upstream reply as many recursive servers send it: AD, extra authority records, glue in additional."""
    q = dns.message.from_wire(query_wire)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if ad:
        r.flags |= dns.flags.AD
    for rtype, ttl, value in answers:
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", rtype, value))
    for owner, rtype, ttl, value in authority:
        r.authority.append(dns.rrset.from_text(owner, ttl, "IN", rtype, value))
    if glue:
        r.additional.append(dns.rrset.from_text("ns1.example.test.", 86400, "IN", "A", "192.0.2.53"))
    return r.to_wire(max_size=65535)


NS_RECORD = ("example.test.", "NS", 86400, "ns1.example.test.")
SOA_RECORD = ("example.test.", "SOA", 2**31 - 1, "ns1.example.test. h.example.test. 1 2 3 4 99999")


def _entry_and_reply(reply: bytes, name: str = "x.example.test", rtype: str = "A", *, do: bool = False,
                     limits: CacheLimits | None = None) -> tuple[cache_mod.Entry, dns.message.Message]:
    q = wire.parse_query(make_query(name, rtype, do=do))
    entry = cache_mod.prepare(reply, q, 0.0, limits or CacheLimits(max_ttl=3600))
    return entry, dns.message.from_wire(cache_mod.render(entry, q, 0.0))


def test_positive_answer_is_minimal_and_capped_from_the_first_render() -> None:
    q = wire.parse_query(make_query("x.example.test"))
    up = chatty_reply(wire.upstream_query(q, 1), answers=[("A", 2**31 - 1, "192.0.2.1")], authority=[NS_RECORD])
    entry, out = _entry_and_reply(up)
    assert (entry.an, entry.ns, entry.ar) == (1, 0, 0) and entry.ttl == 3600
    assert not out.authority and not out.additional and out.answer[0].ttl == 3600


@pytest.mark.parametrize(("rcode", "rtype"), [(dns.rcode.NXDOMAIN, "A"), (dns.rcode.NOERROR, "TXT")])
def test_negative_answer_keeps_its_soa_capped_at_the_negative_ttl(rcode: int, rtype: str) -> None:
    q = wire.parse_query(make_query("x.example.test", rtype))
    up = chatty_reply(wire.upstream_query(q, 1), rcode=rcode, authority=[NS_RECORD, SOA_RECORD])
    entry, out = _entry_and_reply(up, rtype=rtype, limits=CacheLimits(max_ttl=3600, negative_max_ttl=600))
    assert [r.rdtype for r in out.authority] == [dns.rdatatype.SOA] and not out.additional
    assert out.authority[0].ttl == 600 == entry.ttl and out.rcode() == rcode


def test_dnssec_proofs_stay_signatures_over_ns_go() -> None:
    q = wire.parse_query(make_query("x.example.test", do=True))
    sig = "{} 13 2 3600 20300101000000 20200101000000 12345 example.test. AAAA"
    up = chatty_reply(wire.upstream_query(q, 1), answers=[("A", 300, "192.0.2.1")], authority=[
        NS_RECORD, ("example.test.", "RRSIG", 3600, sig.format("NS")),
        ("a.example.test.", "NSEC", 3600, "z.example.test. A RRSIG NSEC"),
        ("a.example.test.", "RRSIG", 3600, sig.format("NSEC"))])
    _, out = _entry_and_reply(up, do=True)
    assert [(r.rdtype, r.covers) for r in out.authority] == [
        (dns.rdatatype.NSEC, dns.rdatatype.NONE), (dns.rdatatype.RRSIG, dns.rdatatype.NSEC)]


def test_a_kept_record_compressed_against_a_dropped_one_is_written_out_in_full() -> None:
    """The SOA's owner, other.test., and its MNAME, ns.other.test., are first written inside the NS record's data,
    so dnspython compresses them to pointers there: once the NS record is dropped, the SOA must carry its names in
    full (the pointers would aim at the wrong bytes), and a NSEC after it, compressed against the SOA, too."""
    q = wire.parse_query(make_query("x.example.test", do=True))
    up = chatty_reply(wire.upstream_query(q, 1), rcode=dns.rcode.NXDOMAIN, authority=[
        ("example.test.", "NS", 300, "ns.other.test."),
        ("other.test.", "SOA", 300, "ns.other.test. Host.Other.test. 1 2 3 4 60"),
        ("a.other.test.", "NSEC", 300, "z.other.test. A NSEC")])
    records = cache_mod._walk(up, 12 + len(q.question), 0, 3, 2)
    gap = records[0][0]  # the NS record, dropped
    assert cache_mod._points_into(up, records[1], gap) and cache_mod._points_into(up, records[2], gap)
    entry, out = _entry_and_reply(up, do=True)
    assert [(str(r.name), r.rdtype) for r in out.authority] == [
        ("other.test.", dns.rdatatype.SOA), ("a.other.test.", dns.rdatatype.NSEC)]
    soa = out.authority[0][0]
    assert (str(soa.mname), soa.rname.to_text().lower(), soa.minimum) == ("ns.other.test.", "host.other.test.", 60)
    assert str(out.authority[1][0].next) == "z.other.test." and not out.additional
    q2 = wire.parse_query(make_query("x.example.test", do=True))
    aged = dns.message.from_wire(cache_mod.render(entry, q2, 30.0))
    assert [r.ttl for r in aged.authority] == [30, 270], "the TTLs are found where the records were moved to"


def test_pointer_target() -> None:
    data = b"\x00" * 12 + b"\x03www\x07example\x00" + b"\x03cdn\xc0\x10" + b"\x03bad\xc0"
    assert wire.pointer_target(data, 12) == -1
    assert wire.pointer_target(data, 25) == 0x10
    assert wire.pointer_target(data, 31) == len(data)  # cut short: as if it pointed past everything


def test_a_ttl_with_the_top_bit_set_counts_as_zero() -> None:
    q = wire.parse_query(make_query("x.example.test"))
    up = chatty_reply(wire.upstream_query(q, 1), answers=[("A", 300, "192.0.2.1")], glue=False)
    at = up.index(b"\x00\x00\x01\x2c")  # the answer's TTL, 300
    entry, out = _entry_and_reply(up[:at] + b"\x80\x00\x01\x2c" + up[at + 4:])
    assert entry.ttl == 0 and out.answer[0].ttl == 0


@pytest.mark.parametrize(("ad", "do", "kept"), [(False, False, False), (True, False, True), (False, True, True)])
def test_ad_only_for_a_client_that_asked_with_ad_or_do(ad: bool, do: bool, kept: bool) -> None:
    q = wire.parse_query(make_query("x.example.test", do=do))
    entry = cache_mod.prepare(chatty_reply(wire.upstream_query(q, 1), answers=[("A", 300, "192.0.2.1")]), q, 0.0,
                              CacheLimits())
    msg = dns.message.make_query("x.example.test", "A", use_edns=0, want_dnssec=do)
    if ad:
        msg.flags |= dns.flags.AD
    out = dns.message.from_wire(cache_mod.render(entry, wire.parse_query(msg.to_wire()), 10.0))
    assert bool(out.flags & dns.flags.AD) == kept


# --------------------------------------------------------------------------------------------- the cache's bytes


def _txt_entry(name: str, size: int, ttl: int = 300) -> tuple[bytes, cache_mod.Entry]:
    q = wire.parse_query(make_query(name, "TXT"))
    chunks = " ".join(f'"{"x" * 250}"' for _ in range(size // 251 + 1))
    entry = cache_mod.prepare(upstream_reply(wire.upstream_query(q, 1), answers=[("TXT", ttl, chunks)]), q, 0.0,
                              CacheLimits())
    return q.cache_key, entry


def test_cache_is_bounded_in_bytes_lru_first() -> None:
    limits = CacheLimits(max_bytes=64 * 1024, max_answer_bytes=16 * 1024)
    c = Cache(limits)
    stored = []
    for i in range(40):
        key, entry = _txt_entry(f"n{i}.example.test", 4000)
        c.put(key, entry)
        stored.append(key)
        assert c.bytes <= limits.max_bytes
        assert c.bytes == sum(e.size + len(k) for k, e in c._entries.items())
    assert c.evictions > 0 and len(c) < 40
    assert c.get(stored[-1], 1.0) is not None and c.get(stored[0], 1.0) is None  # the oldest went first
    key, entry = _txt_entry("n39.example.test", 4000)
    c.put(key, entry)  # the same key again: replaced, not counted twice
    assert c.bytes == sum(e.size + len(k) for k, e in c._entries.items())


def test_an_answer_over_max_answer_bytes_is_not_cached() -> None:
    c = Cache(CacheLimits(max_answer_bytes=16 * 1024))
    key, entry = _txt_entry("big.example.test", 20_000)
    assert len(entry.body) > 16 * 1024
    c.put(key, entry)
    assert len(c) == 0 and c.bytes == 0
    key, entry = _txt_entry("fits.example.test", 10_000)
    c.put(key, entry)
    assert len(c) == 1 and c.bytes == entry.size + len(key) > 10_000 + cache_mod.ENTRY_OVERHEAD


def test_entries_dropped_after_the_stale_window_give_their_bytes_back() -> None:
    c = Cache(CacheLimits(stale_max_age=0))
    key, entry = _txt_entry("x.example.test", 1000, ttl=10)
    c.put(key, entry)
    assert c.bytes > 0 and c.get(key, 20.0) is None and c.bytes == 0 and len(c) == 0


def test_render_keeps_one_copy_of_the_body() -> None:
    _, entry = _txt_entry("x.example.test", 1000)
    q = wire.parse_query(make_query("x.example.test", "TXT"))
    first = cache_mod.render(entry, q, 5.0)
    assert entry.held == 5 and first.endswith(entry.body + cache_mod._OPT_PLAIN)
    assert dns.message.from_wire(cache_mod.render(entry, q, 0.0)).answer[0].ttl == 300  # aged from the originals
