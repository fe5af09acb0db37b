"""Fuzz the wire parser, the pipeline, the cache's reply walker and the list parser (not part of the default run).

    python tests/fuzz/fuzz_wire.py -max_total_time=300 /tmp/resolver-fuzz-corpus   # atheris (libFuzzer flags)
    python tests/fuzz/fuzz_wire.py --plain --seconds 300                             # no atheris: random mutation
    python tests/fuzz/fuzz_wire.py --replay crash-1a2b3c...                          # re-run saved inputs

The first byte of an input picks the target, the rest is its data:
  0 client packet -> ``wire.parse_query`` (a Query or WireFormatError) and ``Pipeline.on_query`` over UDP and TCP
    (None, bytes or a Query; bytes parse with dnspython, carry the packet's ID and QR; a packet with QR set gets
    None; a forwarded Query gives an upstream query and a SERVFAIL dnspython can read);
  1 upstream reply -> the data becomes the body of a reply to a fixed query (header counts and flags from the data,
    ID and question right, so it passes ``wire.is_response`` as the upstream path requires); ``cache.prepare``
    returns an Entry or raises WireFormatError, ``cache.render`` works at any age, ``Pipeline.on_reply`` gives a
    readable answer;
  2 ``wire.read_labels`` / ``wire.skip_name`` at an offset taken from the data: a result or WireFormatError;
  3 ``lists.parse_text`` on the data as UTF-8 text, format from the second byte: never raises.
Any other exception, or a broken rule (AssertionError), is a finding; atheris saves the input as ``crash-*``.

``--skip-known`` stops reporting the bugs already known (see tests/fuzz/README.md) so a run can look past them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.name
import dns.rrset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

try:
    import atheris
except ImportError:  # the plain loop below needs nothing but the standard library
    atheris = None

# Under atheris the resolver package is imported with coverage instrumentation, which guides the mutations.
_FUZZING = atheris is not None and "--plain" not in sys.argv and "--replay" not in sys.argv
with atheris.instrument_imports(include=["resolver"]) if _FUZZING else contextlib.nullcontext():
    from resolver.config.model import BUNDLED_BLOCKLISTS
    from resolver.core import cache as cache_mod
    from resolver.core import wire
    from resolver.core.builder import build_policy
    from resolver.core.cache import Cache, CacheLimits, Entry
    from resolver.core.pipeline import Pipeline
    from resolver.core.policy import PolicySpec
    from resolver.core.stats import TCP, UDP, Stats
    from resolver.errors import WireFormatError
    from resolver.lists import formats as lists
    from resolver.lists.platforms import load_platforms
    from tests.support.alarm import no_hang  # (not instrumented: only the resolver package is)

SKIP_KNOWN = False
PIPELINE = Pipeline(build_policy(load_platforms(BUNDLED_BLOCKLISTS), [], PolicySpec()), Cache(CacheLimits()),
                    Stats(), lambda: 1000.0, lambda: 1.8e9)
FORMATS = ("auto", "hosts", "domains", "adblock", "rpz", "wildcard")
# The fixed client query whose upstream replies target 1 builds: EDNS with DO, so render adds an OPT record.
_CLIENT = dns.message.make_query("www.example.test", "A", use_edns=0, want_dnssec=True)
_CLIENT.id = 0x1111
CLIENT_WIRE = _CLIENT.to_wire()
REPLY_QUERY = wire.parse_query(CLIENT_WIRE)
REPLY_QID = 0x4242


class Known(Exception):
    """A finding that matches a bug already reported; raised only to skip the input under --skip-known."""


def known(signature: str) -> None:
    if SKIP_KNOWN:
        raise Known(signature)


# ------------------------------------------------------------------------------------------------------ checks


def check_client_packet(data: bytes) -> None:
    try:
        query: wire.Query | None = wire.parse_query(data)
    except WireFormatError:
        query = None
    if query is not None and len(query.qname) > wire.MAX_NAME:
        known("name-256")  # parse_query accepts a 256-octet question name (its check is off by one)
    for transport in (UDP, TCP):
        malformed = PIPELINE.stats.malformed
        out = PIPELINE.on_query(data, transport, "127.0.0.1")
        assert out is None or isinstance(out, (bytes, wire.Query)), f"on_query returned {type(out)}"
        if len(data) >= 3 and data[2] & 0x80 and out is not None:
            if _edns_version_error(data):
                known("badvers-reflection")  # EdnsVersionError is answered before the QR check
            raise AssertionError(f"answered a packet with QR set: out {_hex(out)}")
        if out is None:
            assert PIPELINE.stats.malformed == malformed + 1, "dropped without counting it as malformed"
        elif isinstance(out, bytes):
            _check_reply(out, data[:2])
            if transport == UDP:
                assert len(out) <= wire.EDNS_UDP_SIZE, f"{len(out)}-byte UDP reply"
        else:
            dns.message.from_wire(wire.upstream_query(out, 7))
            _check_reply(PIPELINE.on_failure(out), data[:2])


def _edns_version_error(data: bytes) -> bool:
    try:
        wire.parse_query(data)
    except wire.EdnsVersionError:
        return True
    except WireFormatError:
        pass
    return False


def _check_reply(out: bytes, qid: bytes) -> None:
    if (out[2] >> 3) & 0x0F:
        # Another opcode (UPDATE, NOTIFY…) gets NOTIMP with its question echoed (FORMERR if unreadable, BADVERS
        # for an EDNS version we lack); dnspython would read that question by the opcode's own rules (an
        # UPDATE's zone must be SOA), which are not ours to meet.
        badvers = out[3] & 0x0F == 0 and out[-11:-8] == b"\x00\x00\x29" and out[-6] == wire.BADVERS >> 4
        assert out[3] & 0x0F in (wire.NOTIMP, wire.FORMERR) or badvers, \
            f"opcode {(out[2] >> 3) & 0x0F} answered with rcode {out[3] & 0x0F}: {_hex(out)}"
    else:
        try:
            dns.message.from_wire(out, question_only=True)
        except dns.name.NameTooLong:
            known("name-256")
            raise
    assert out[:2] == qid, f"reply ID {out[:2].hex()} != query ID {qid.hex()}"
    assert out[2] & 0x80, "reply without QR"


def check_upstream_reply(data: bytes) -> None:
    head = data[:8].ljust(8, b"\x00")
    flags = struct.unpack_from("!H", head)[0] & ~wire.OPCODE_MASK | wire.QR  # a reply to our QUERY
    an, ns, ar = (min(v, 64) for v in struct.unpack_from("!HHH", head, 2))
    reply = struct.pack("!HHHHHH", REPLY_QID, flags, 1, an, ns, ar) + REPLY_QUERY.question + data[8:]
    assert wire.is_response(reply, REPLY_QID, REPLY_QUERY), "the harness built a reply that does not match"
    try:
        entry = cache_mod.prepare(reply, REPLY_QUERY, 1000.0, CacheLimits())
    except WireFormatError:
        entry = None
    if entry is not None:
        assert isinstance(entry, Entry) and entry.ttl >= 0
        for now in (1000.0, 1030.0, 1e9):
            rendered = cache_mod.render(entry, REPLY_QUERY, now)
            assert rendered[:2] == struct.pack("!H", REPLY_QUERY.id)
    query = wire.parse_query(CLIENT_WIRE)  # a fresh one: on_reply reads what the pipeline set on it
    query.transport, query.client, query.received = UDP, "127.0.0.1", 1000.0
    pipe = Pipeline(PIPELINE.policy, Cache(CacheLimits()), Stats(), lambda: 1000.0, lambda: 1.8e9)
    out = pipe.on_reply(query, reply)
    _check_reply(out, struct.pack("!H", query.id))


def check_names(data: bytes) -> None:
    if len(data) < 2:
        return
    pos = data[0] % (len(data) - 1) + 1
    for walk in (wire.read_labels, wire.skip_name):
        with contextlib.suppress(WireFormatError):
            walk(data, pos)


def check_list(data: bytes) -> None:
    fmt = FORMATS[data[0] % len(FORMATS)] if data else "auto"
    text = data[1:].decode("utf-8", "replace")
    parsed = lists.parse_text(text, "fuzz", fmt)  # type: ignore[arg-type]
    for entry in parsed.entries:
        assert lists.normalise_name(entry.domain) == entry.domain and "." in entry.domain, entry


TARGETS: list[Callable[[bytes], None]] = [check_client_packet, check_upstream_reply, check_names, check_list]


def one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(Known):
        TARGETS[data[0] % len(TARGETS)](data[1:])


def _hex(out: object) -> str:
    return out.hex() if isinstance(out, bytes) else repr(out)


# ------------------------------------------------------------------------------------------------------- seeds


def seeds() -> list[bytes]:
    """Valid inputs for every target: queries (plain, EDNS, DO, blocked names), replies, list lines."""
    out: list[bytes] = []
    for name in ("www.example.test", "www.tiktok.com", "m.facebook.com", "use-application-dns.net", "a.b.c.d.e"):
        for rtype in ("A", "AAAA", "TXT", "ANY", "HTTPS"):
            for edns in (False, True):
                out.append(b"\x00" + dns.message.make_query(name, rtype, use_edns=0 if edns else False,
                                                            want_dnssec=edns).to_wire())
    up = dns.message.from_wire(wire.upstream_query(REPLY_QUERY, REPLY_QID))
    for answers in ([("A", "192.0.2.1")], [("CNAME", "cdn.tiktok.com."), ("A", "192.0.2.2")], []):
        reply = dns.message.make_response(up)
        for rtype, value in answers:
            reply.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", rtype, value))
        if not answers:
            reply.set_rcode(3)
            reply.authority.append(dns.rrset.from_text("example.test.", 60, "IN", "SOA", ". . 1 2 3 4 60"))
        wire_reply = reply.to_wire()
        body = wire_reply[12 + len(REPLY_QUERY.question):]
        out.append(b"\x01" + wire_reply[2:4] + wire_reply[6:12] + body)
    out.append(b"\x02\x00\x03www\xc0\x01")
    out.append(b"\x02\x05\x03www\x07example\x04test\x00\xc0\x01")
    for i, text in enumerate(("||ads.example.com^\n@@||ok.example.com^\n", "0.0.0.0 a.example.com\n",
                              "$ORIGIN rpz.\na.example.com CNAME .\n*.b.example.com CNAME *.\n", "*.x.example.org\n")):
        out.append(b"\x03" + bytes([i]) + text.encode())
    return out


# ------------------------------------------------------------------------------------------------- plain mode


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        if op == 0 and len(buf) > 1:
            buf[rng.randrange(1, len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and len(buf) > 1:
            buf[rng.randrange(1, len(buf))] = rng.choice([0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF, rng.randrange(256)])
        elif op == 2:
            del buf[rng.randint(1, max(1, len(buf))):]
        elif op == 3:
            buf += rng.randbytes(rng.randint(1, 32))
        elif op == 4 and len(buf) > 1:
            pos = rng.randrange(1, len(buf))
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 5 and len(buf) > 2:
            pos = rng.randrange(1, len(buf) - 1)
            buf[pos:pos + 2] = struct.pack("!H", 0xC000 | rng.randrange(0x4000))
        elif op == 6 and len(buf) > 2:
            start = rng.randrange(1, len(buf))
            del buf[start:start + rng.randint(1, 16)]
        elif op == 7 and pool:  # splice with another input of the same target
            other = rng.choice(pool)
            cut = rng.randint(1, max(1, len(buf)))
            buf = buf[:cut] + other[rng.randint(1, max(1, len(other))):]
        elif op == 8 and len(buf) > 13 and buf[0] == 0:  # a header count or the flags of a client packet
            struct.pack_into("!H", buf, 1 + rng.choice([2, 4, 6, 8, 10]), rng.choice([0, 1, 2, 0xFFFF]))
    return bytes(buf)


def save(data: bytes, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def plain_loop(seconds: float, seed: int, artifacts: Path, max_len: int) -> int:
    """Mutate seeds (and inputs that reached new outcomes) at random until ``seconds`` pass or something breaks."""
    rng = random.Random(seed)
    corpus = seeds()
    deadline = time.monotonic() + seconds
    runs = 0
    print(f"plain mode: seed {seed}, {seconds:.0f} s, {len(corpus)} seed inputs", file=sys.stderr)
    while time.monotonic() < deadline:
        parent = rng.choice(corpus)
        data = mutate(parent, rng, [c for c in corpus if c[:1] == parent[:1]])[:max_len]
        runs += 1
        try:
            with no_hang(2.0):
                one_input(data)
        except BaseException as err:  # a finding, whatever it is
            path = save(data, artifacts)
            print(f"FINDING after {runs} runs: {type(err).__name__}: {err}\ninput ({len(data)} bytes): {data.hex()}\n"
                  f"saved as {path}", file=sys.stderr)
            return 1
        if runs % 50 == 0 and len(corpus) < 5000:
            corpus.append(data)  # a crude way to go deeper: keep some mutants as parents
    print(f"plain mode: {runs} runs in {seconds:.0f} s, nothing found", file=sys.stderr)
    return 0


def replay(paths: list[str]) -> int:
    status = 0
    for name in paths:
        data = Path(name).read_bytes()
        try:
            with no_hang(10.0):
                one_input(data)
            print(f"{name}: ok")
        except BaseException as err:
            print(f"{name}: {type(err).__name__}: {err}\n  input: {data.hex()}")
            status = 1
    return status


def main() -> int:
    global SKIP_KNOWN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help="random mutation loop, no atheris")
    parser.add_argument("--seconds", type=float, default=60.0, help="plain mode: run time (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="plain mode: random seed")
    parser.add_argument("--artifacts", type=Path, default=Path("."), help="plain mode: where crash-* files go")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--skip-known", action="store_true", help="do not report the bugs in tests/fuzz/README.md")
    parser.add_argument("--write-seeds", type=Path, help="write the seed inputs into this directory and exit")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run these inputs once each and report")
    args, rest = parser.parse_known_args()
    SKIP_KNOWN = args.skip_known
    if args.write_seeds is not None:
        args.write_seeds.mkdir(parents=True, exist_ok=True)
        for data in seeds():
            (args.write_seeds / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
        return 0
    if args.replay:
        return replay(args.replay)
    if args.plain or atheris is None:
        if atheris is None and not args.plain:
            print("atheris is not installed: running the plain random-mutation loop", file=sys.stderr)
        seed = args.seed if args.seed is not None else random.randrange(1 << 32)
        return plain_loop(args.seconds, seed, args.artifacts, args.max_len)
    if not any(a.startswith("-max_total_time") or a.startswith("-runs") for a in rest):
        rest.append("-max_total_time=60")  # bounded by default, like the plain loop
    if not any(a.startswith("-max_len") for a in rest):
        rest.append(f"-max_len={args.max_len}")
    if not any(a.startswith("-timeout") for a in rest):
        rest.append("-timeout=5")
    corpus_dirs = [a for a in rest if not a.startswith("-")]
    for directory in corpus_dirs:  # seed an empty corpus directory
        path = Path(directory)
        if not path.exists() or not any(path.iterdir()):
            path.mkdir(parents=True, exist_ok=True)
            for data in seeds():
                (path / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
    atheris.Setup([sys.argv[0], *rest], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
