"""DNS wire format for the hot path: read the header and question, build replies from bytes.

dnslib would parse every record into objects; a blocked or cached answer needs none of that. Everything here
works on ``bytes`` and ``struct`` so the fast path stays a handful of C calls. Names below are RFC 1035 terms.
"""

from __future__ import annotations

import struct
from typing import Final

from resolver.errors import WireFormatError

HEADER: Final = struct.Struct("!HHHHHH")
U16: Final = struct.Struct("!H")
U16X2: Final = struct.Struct("!HH")
RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength
U32: Final = struct.Struct("!I")

QR: Final = 0x8000
OPCODE_MASK: Final = 0x7800
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
AD: Final = 0x0020
CD: Final = 0x0010
# What a reply copies from the query's flags: opcode, RD and CD (RFC 1035 4.1.1, RFC 4035 3.2.2).
ECHO_MASK: Final = OPCODE_MASK | RD | CD

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

TYPE_A: Final = 1
TYPE_NS: Final = 2
TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
TYPE_HINFO: Final = 13
TYPE_MX: Final = 15
TYPE_TXT: Final = 16
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_RRSIG: Final = 46
TYPE_NSEC: Final = 47
TYPE_NSEC3: Final = 50
TYPE_SVCB: Final = 64
TYPE_HTTPS: Final = 65
TYPE_ANY: Final = 255
CLASS_IN: Final = 1

# The UDP payload size we advertise and accept at most: the DNS Flag Day 2020 value, which avoids IP
# fragmentation on every path we care about.
EDNS_UDP_SIZE: Final = 1232
EDE_OPTION: Final = 15
EDE_BLOCKED: Final = 15

MAX_NAME: Final = 255


class Query:
    """The parts of a client query the resolver decides on; everything else in the packet is ignored."""

    __slots__ = (
        "_key",
        "client",
        "client_id",
        "do",
        "edns",
        "flags",
        "group",
        "id",
        "labels",
        "qclass",
        "qname",
        "qtype",
        "question",
        "received",
        "transport",
        "udp_size",
    )

    def __init__(
        self,
        qid: int,
        flags: int,
        question: bytes,
        qname: bytes,
        labels: list[bytes],
        qtype: int,
        qclass: int,
        edns: bool,
        udp_size: int,
        do: bool,
    ) -> None:
        self.id = qid
        self.flags = flags
        self.question = question  # as sent: echoed byte for byte, so 0x20-randomised clients match
        self.qname = qname  # lowercased wire name, e.g. b"\x03www\x06tiktok\x03com\x00"
        self.labels = labels  # lowercased labels, leftmost first
        self.qtype = qtype
        self.qclass = qclass
        self.edns = edns
        self.udp_size = udp_size
        self.do = do
        self.received = 0.0  # clock reading when it arrived, for the latency histogram
        self.transport = 0
        self.client = ""  # source address, as text
        self.client_id: str | None = None  # from transports that carry one (DoH/DoT); None for UDP/TCP
        self.group = 0
        self._key: bytes | None = None

    @property
    def name(self) -> str:
        """The name as text, for logs and the slow path."""
        return ".".join(label.decode("ascii", "backslashreplace") for label in self.labels) + "."

    @property
    def cache_key(self) -> bytes:
        key = self._key
        if key is None:
            # DO and CD change what an upstream returns (signatures, unvalidated data), so they are in the key.
            bits = (1 if self.do else 0) | (2 if self.flags & CD else 0)
            key = self._key = self.qname + self.question[-4:] + bytes((bits,))
        return key

    def again(self, qid: int) -> Query:
        """The same question parsed from a packet that differed only in its ID (see ``Pipeline``'s memo): the
        parsed parts, and the cache key made from them, are shared, which is safe because nothing changes them
        after parsing."""
        query = Query(qid, self.flags, self.question, self.qname, self.labels, self.qtype, self.qclass, self.edns,
                      self.udp_size, self.do)
        query._key = self.cache_key
        return query


def skip_name(data: bytes, pos: int) -> int:
    """Return the offset just past the (possibly compressed) name at ``pos``."""
    n = len(data)
    while True:
        if pos >= n:
            raise WireFormatError("name runs past the end of the message")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise WireFormatError("compression pointer runs past the end")
            return pos + 2
        if length > 63:
            raise WireFormatError("bad label type")
        pos += 1 + length


def pointer_target(data: bytes, pos: int) -> int:
    """Where the name at ``pos`` continues through a compression pointer, or -1 if it is written out in full.
    (A name holds at most one pointer, as its end; the bytes it points at come earlier in the message.)"""
    n = len(data)
    while pos < n:
        length = data[pos]
        if length == 0:
            return -1
        if length & 0xC0 == 0xC0:
            return ((length & 0x3F) << 8) | data[pos + 1] if pos + 1 < n else n
        if length > 63:
            return n
        pos += 1 + length
    return n  # runs past the end: as if it pointed there (callers treat that as "not safe to move")


def parse_query(data: bytes) -> Query:
    """Parse a client query. Callers decide separately (``reply_possible``) whether a failure gets FORMERR."""
    n = len(data)
    if n < 12:
        raise WireFormatError("shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount != 1:
        raise WireFormatError("a query must have exactly one question")
    pos = 12
    bounds: list[int] = []
    while True:
        if pos >= n:
            raise WireFormatError("question name runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            if pos - 12 > MAX_NAME:  # the whole name, root byte included (RFC 1035 3.1)
                raise WireFormatError("question name longer than 255 octets")
            break
        if length > 63:
            # Compression in the question of a query is legal in theory, never seen in practice, and the
            # classic way to smuggle a loop; refuse it.
            raise WireFormatError("compressed or invalid label in question")
        bounds.append(pos + 1 - 12)
        pos += 1 + length
        if pos - 12 > MAX_NAME:
            raise WireFormatError("question name longer than 255 octets")
    if pos + 4 > n:
        raise WireFormatError("question truncated")
    qname = data[12:pos].lower()
    labels = [qname[b : b + qname[b - 1]] for b in bounds]
    qtype, qclass = U16X2.unpack_from(data, pos)
    question = data[12 : pos + 4]
    pos += 4
    edns = False
    udp_size = 512
    do = False
    if arcount:
        if ancount or nscount:
            for _ in range(ancount + nscount):
                pos = _skip_rr(data, pos)
        for _ in range(arcount):
            if data[pos : pos + 3] == b"\x00\x00\x29" and pos + 11 <= n:  # root name, type OPT
                if edns:
                    raise WireFormatError("more than one OPT record")
                _, size, ttl, rdlen = RR_FIXED.unpack_from(data, pos + 1)
                pos += 11 + rdlen
                if pos > n:
                    raise WireFormatError("OPT record truncated")
                if ttl & 0xFF0000:
                    raise EdnsVersionError(qid, flags, question)
                edns = True
                udp_size = size if size > 512 else 512
                do = ttl & 0x8000 != 0
            else:
                pos = _skip_rr(data, pos)
    return Query(qid, flags, question, qname, labels, qtype, qclass, edns, udp_size, do)


class EdnsVersionError(WireFormatError):
    """The query used an EDNS version we do not speak; RFC 6891 says answer BADVERS."""

    def __init__(self, qid: int, flags: int, question: bytes) -> None:
        super().__init__("unsupported EDNS version")
        self.qid = qid
        self.flags = flags
        self.question = question


def read_labels(data: bytes, pos: int) -> list[bytes]:
    """The lowercased labels of the (possibly compressed) name at ``pos``; bounded against pointer loops."""
    return [label.lower() for label in _labels(data, pos)]


def expanded_name(data: bytes, pos: int) -> bytes:
    """The (possibly compressed) name at ``pos`` written out in full, in its own case, as wire bytes."""
    return b"".join(bytes((len(label),)) + label for label in _labels(data, pos)) + b"\x00"


def _labels(data: bytes, pos: int) -> list[bytes]:
    labels: list[bytes] = []
    n = len(data)
    jumps = 0
    total = 0
    while True:
        if pos >= n:
            raise WireFormatError("name runs past the end of the message")
        length = data[pos]
        if length == 0:
            return labels
        if length & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise WireFormatError("compression pointer runs past the end")
            jumps += 1
            if jumps > 32:
                raise WireFormatError("compression pointer loop")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length > 63:
            raise WireFormatError("bad label type")
        total += length + 1
        if total + 1 > MAX_NAME:  # + the root byte
            raise WireFormatError("name longer than 255 octets")
        if pos + 1 + length > n:
            raise WireFormatError("label runs past the end of the message")
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length


def _skip_rr(data: bytes, pos: int) -> int:
    pos = skip_name(data, pos)
    if pos + 10 > len(data):
        raise WireFormatError("record header truncated")
    rdlen = U16.unpack_from(data, pos + 8)[0]
    pos += 10 + rdlen
    if pos > len(data):
        raise WireFormatError("record data truncated")
    return pos


def reply_possible(data: bytes) -> bool:
    """A malformed packet gets FORMERR only if it has a header and is not itself a response (no reflection loops)."""
    return len(data) >= 12 and not data[2] & 0x80


def error_reply(data: bytes, rcode: int) -> bytes:
    """Header-only reply (FORMERR, NOTIMP) to a packet whose question we could not or would not read."""
    qid, flags = U16X2.unpack_from(data)
    return HEADER.pack(qid, QR | RA | (flags & ECHO_MASK) | rcode, 0, 0, 0, 0)


def opt_record(do: bool, options: bytes = b"", ext_rcode: int = 0) -> bytes:
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + RR_FIXED.pack(TYPE_OPT, EDNS_UDP_SIZE, ttl, len(options)) + options


_UPSTREAM_OPT: Final = opt_record(False)
_UPSTREAM_OPT_DO: Final = opt_record(True)


def ede_option(info_code: int, text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!HHH", EDE_OPTION, 2 + len(raw), info_code) + raw


def simple_reply(query: Query, rcode: int, options: bytes = b"") -> bytes:
    """Question-only reply with ``rcode`` (SERVFAIL, REFUSED …), with an OPT record when the query had one."""
    opt = opt_record(query.do, options) if query.edns else b""
    header = HEADER.pack(query.id, QR | RA | (query.flags & ECHO_MASK) | rcode, 1, 0, 0, 1 if opt else 0)
    return header + query.question + opt


def badvers_reply(err: EdnsVersionError) -> bytes:
    # BADVERS is 16: the upper 8 bits go in the OPT record, the lower 4 (zero) in the header.
    header = HEADER.pack(err.qid, QR | RA | (err.flags & ECHO_MASK), 1, 0, 0, 1)
    return header + err.question + opt_record(False, ext_rcode=BADVERS >> 4)


def any_reply(query: Query) -> bytes:
    """RFC 8482: ANY gets one synthesised HINFO record instead of everything (an amplification favourite)."""
    opt = opt_record(query.do) if query.edns else b""
    header = HEADER.pack(query.id, QR | RA | (query.flags & ECHO_MASK), 1, 1, 0, 1 if opt else 0)
    return header + query.question + rr(TYPE_HINFO, 3600, b"\x07RFC8482\x00") + opt


def truncated(query: Query) -> bytes:
    """The reply for an answer too big for the client's UDP buffer: TC set, so it asks again over TCP."""
    opt = opt_record(query.do) if query.edns else b""
    flags = QR | RA | TC | (query.flags & ECHO_MASK)
    return HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0) + query.question + opt


def rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    """A record owned by the question name (compression pointer to offset 12)."""
    return b"\xc0\x0c" + RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def is_response(reply: bytes, qid: int, query: Query) -> bool:
    """Whether ``reply`` answers the query we sent upstream as ``upstream_query(query, qid)``, as dnspython's
    ``Message.is_response`` decides it: the ID, QR set with our opcode (QUERY), and our one question echoed
    (the name compared without case, for upstreams that randomise it). Anything else is forged or stale, and
    must not be taken as the answer."""
    if len(reply) < 12 + len(query.question) or reply[0] << 8 | reply[1] != qid or reply[2] & 0xF8 != 0x80:
        return False
    if reply[4:6] != b"\x00\x01":
        return False
    end = 12 + len(query.qname)
    return reply[12:end].lower() == query.qname and reply[end : end + 4] == query.question[-4:]


def upstream_query(query: Query, qid: int) -> bytes:
    """The query we send upstream: fresh random ID, lowercased name, RD set, our own EDNS with the client's DO."""
    return b"".join((HEADER.pack(qid, RD | (query.flags & CD), 1, 0, 0, 1), query.qname, query.question[-4:],
                     _UPSTREAM_OPT_DO if query.do else _UPSTREAM_OPT))

