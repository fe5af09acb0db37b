"""DDR (RFC 9462), advertised: the answer to ``_dns.resolver.arpa SVCB`` that names *this* resolver's DoT and DoH
endpoints, so a phone that asks upgrades to us rather than to a public resolver.

Only with ``ddr.advertise: true`` (and DoT or DoH listening); otherwise the policy's bypass defence answers every
``resolver.arpa`` name with NODATA, as before. The answer is built once, at start-up: per query only the header
and the question are written.
"""

from __future__ import annotations

from typing import Final

from resolver.core import wire
from resolver.core.wire import Query

QNAME: Final = b"\x04_dns\x08resolver\x04arpa\x00"
DOH_PATH: Final = "/dns-query{?dns}"
TTL: Final = 300
_KEY_ALPN: Final = 1  # SvcParamKeys (RFC 9460), written in increasing order
_KEY_PORT: Final = 3
_KEY_DOHPATH: Final = 7  # RFC 9461


def _param(key: int, value: bytes) -> bytes:
    return key.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def svcb(priority: int, target: str, alpn: str, port: int, dohpath: str | None = None) -> bytes:
    """The RDATA of one ServiceMode SVCB record."""
    params = _param(_KEY_ALPN, bytes((len(alpn),)) + alpn.encode()) + _param(_KEY_PORT, port.to_bytes(2, "big"))
    if dohpath is not None:
        params += _param(_KEY_DOHPATH, dohpath.encode())
    return priority.to_bytes(2, "big") + wire.encode_name(target) + params


class Ddr:
    def __init__(self, server_name: str, dot_port: int | None, doh_port: int | None) -> None:
        records = []
        if dot_port is not None:
            records.append(svcb(1, server_name, "dot", dot_port))
        if doh_port is not None:
            records.append(svcb(2, server_name, "h2", doh_port, DOH_PATH))
        self.records = b"".join(wire.rr(wire.TYPE_SVCB, TTL, rdata) for rdata in records)  # owned by the question
        self.count = len(records)

    def reply(self, query: Query) -> bytes | None:
        """The advertisement for ``_dns.resolver.arpa`` SVCB, None for any other question."""
        if query.qtype != wire.TYPE_SVCB or query.qname != QNAME:
            return None
        opt = wire.opt_record(query.do) if query.edns else b""
        flags = wire.QR | wire.RA | (query.flags & wire.ECHO_MASK)
        head = wire.HEADER.pack(query.id, flags, 1, self.count, 0, 1 if opt else 0)
        return head + query.question + self.records + opt
