"""PROXY protocol version 2 (HAProxy's spec): a load balancer in front of us says who the client really is.

Sans-IO: ``sniff`` takes the first bytes of a connection and says whether a header is there, whether more bytes
are needed to tell, and where the client's own bytes begin. Only a trusted peer (``proxy_protocol.trusted``) is
believed; a header from anyone else closes the connection, since it is an attempt to choose one's own address.
A trusted peer may also connect without a header (a health check), and is then the client itself.

``ProxyTcp`` puts this in front of the plain TCP listener: it reads a trusted balancer's header, then hands the
connection to the listener with the header's address as the client.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, Protocol, cast

from resolver.core.client import canonical_client
from resolver.core.policy import IPNetwork

if TYPE_CHECKING:
    from resolver.net.limits import Gate

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_SIZE: Final = 16  # signature, version/command, family/protocol, length
MAX_HEADER: Final = HEADER_SIZE + 1024  # addresses and TLVs; a balancer sends far less
_LOCAL: Final = 0x20  # version 2, LOCAL: the balancer's own connection (health check)
_PROXY: Final = 0x21  # version 2, PROXY: relayed for a client
_INET: Final = 0x1  # address families, the high nibble of byte 13
_INET6: Final = 0x2

NEED_MORE: Final = "more"  # not enough bytes yet to tell
NONE: Final = "none"  # no header: the bytes are the client's
HEADER: Final = "header"  # a header, ``size`` bytes long
INVALID: Final = "invalid"  # starts like a header but is not a valid one: close


class Sniffed:
    __slots__ = ("client", "kind", "size")

    def __init__(self, kind: str, size: int = 0, client: str | None = None) -> None:
        self.kind = kind
        self.size = size  # header bytes to skip
        self.client = client  # the header's source address; None for LOCAL or a family we do not route by


def sniff(data: bytes) -> Sniffed:
    """What the first bytes of a connection are."""
    head = data[:len(SIGNATURE)]
    if SIGNATURE[:len(head)] != head:
        return Sniffed(NONE)
    if len(data) < HEADER_SIZE:
        return Sniffed(NEED_MORE)
    command, family, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    size = HEADER_SIZE + length
    if command not in (_LOCAL, _PROXY) or size > MAX_HEADER:
        return Sniffed(INVALID)
    if len(data) < size:
        return Sniffed(NEED_MORE)
    if command == _LOCAL:
        return Sniffed(HEADER, size)
    body = data[HEADER_SIZE:size]
    kind = family >> 4
    try:
        if kind == _INET and length >= 12:
            return Sniffed(HEADER, size, str(ipaddress.IPv4Address(body[:4])))
        if kind == _INET6 and length >= 36:
            return Sniffed(HEADER, size, canonical_client(str(ipaddress.IPv6Address(body[:16]))))
    except ValueError:
        return Sniffed(INVALID)
    if kind in (_INET, _INET6):
        return Sniffed(INVALID)  # too short for its own family
    return Sniffed(HEADER, size)  # UNSPEC or UNIX: nothing to route by; the peer stands for the client


def header(client: str, port: int, server: str, server_port: int) -> bytes:
    """A PROXY v2 header for a TCP connection from ``client`` (what a balancer sends; for tests and tools)."""
    src, dst = ipaddress.ip_address(client), ipaddress.ip_address(server)
    if src.version != dst.version:
        raise ValueError("a PROXY v2 header's addresses are of one family")
    family = _INET if src.version == 4 else _INET6
    body = src.packed + dst.packed + port.to_bytes(2, "big") + server_port.to_bytes(2, "big")
    return SIGNATURE + bytes((_PROXY, family << 4 | 0x1)) + len(body).to_bytes(2, "big") + body


def trusted(peer: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address.version == n.version and address in n for n in networks)


class StreamListener(Protocol):
    """What ``ProxyTcp`` needs of the plain TCP listener (``listeners.TcpListener``)."""

    gate: Gate

    def admit(self, transport: asyncio.BaseTransport) -> str | None: ...

    def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> Awaitable[None]: ...

    def serve_proxied(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      client: str) -> Awaitable[None]: ...


class ProxyTcp(asyncio.Protocol):
    """The first protocol of a plain TCP connection when ``proxy_protocol`` is on.

    A trusted balancer's connection is sniffed for a header, then served as the client the header names (admitted
    then, as that phone). Anyone else is admitted at accept, as without PROXY support, so untrusted peers never
    hold a socket outside the connection table; a header from them closes the connection. A connection that says
    nothing for ``timeout`` seconds before its first bytes is closed."""

    def __init__(self, listener: StreamListener, networks: tuple[IPNetwork, ...], timeout: float) -> None:
        self.listener = listener
        self.networks = networks
        self.timeout = timeout
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.admitted: str | None = None  # an untrusted peer's slot, taken at accept
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.peer = canonical_client(peer[0]) if peer else ""
        if not trusted(self.peer, self.networks):
            self.admitted = self.listener.admit(transport)
            if self.admitted is None:
                transport.close()
                return
        self.timer = asyncio.get_running_loop().call_later(self.timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        found = sniff(self.buffer)
        if found.kind == NEED_MORE:
            return
        assert self.transport is not None
        if found.kind == INVALID or (found.kind == HEADER and self.admitted is not None):
            self._stop()
            self.transport.abort()
            return
        self._hand_over(found.client or self.peer, self.buffer[found.size:])

    def _hand_over(self, client: str, rest: bytes) -> None:
        self._stop()
        transport = self.transport
        assert transport is not None
        admitted, listener = self.admitted, self.listener
        self.admitted = None  # the listener gives the slot back from here on

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
            if admitted is not None:
                return listener.serve(reader, writer, admitted)
            return listener.serve_proxied(reader, writer, client)

        reader = asyncio.StreamReader(limit=2**16)
        stream = asyncio.StreamReaderProtocol(reader, connected)
        transport.set_protocol(stream)
        stream.connection_made(transport)
        if rest:
            stream.data_received(rest)

    def eof_received(self) -> bool | None:
        self._stop()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        if self.admitted is not None:  # closed before it was handed over
            self.listener.gate.release(self.admitted)
            self.admitted = None

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
