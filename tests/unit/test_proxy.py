"""PROXY protocol v2, sans-IO: what the first bytes of a connection are, fed whole or a byte at a time."""

from __future__ import annotations

import ipaddress

import pytest

from resolver.net.proxy import HEADER, INVALID, NEED_MORE, NONE, SIGNATURE, header, sniff, trusted

V4 = header("10.20.8.15", 40000, "192.0.2.1", 853)
V6 = header("fd00:20:8::5", 40000, "2001:db8::1", 853)
LOCAL = SIGNATURE + b"\x20\x00\x00\x00"
UNSPEC = SIGNATURE + b"\x21\x00\x00\x04abcd"  # PROXY with no address family: the peer stands for the client


@pytest.mark.parametrize(("data", "kind", "size", "client"), [
    (V4 + b"\x16\x03\x01", HEADER, len(V4), "10.20.8.15"),
    (V6, HEADER, len(V6), "fd00:20:8::5"),
    (header("::ffff:10.20.8.15", 1, "::1", 2), HEADER, 52, "10.20.8.15"),  # mapped: the canonical client
    (LOCAL + b"rest", HEADER, len(LOCAL), None),
    (UNSPEC, HEADER, len(UNSPEC), None),
    (b"\x00\x1d\x12\x34", NONE, 0, None),  # a DNS message's length: no header
    (b"\x16\x03\x01\x02\x00", NONE, 0, None),  # a TLS ClientHello
    (b"GET / HTTP/1.1\r\n", NONE, 0, None),
    (b"\r\n\r\n\x00\r\nQUIT\r", NONE, 0, None),  # almost the signature
    (SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), INVALID, 0, None),  # an unknown command
    (SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), INVALID, 0, None),  # version 1 in a v2 header
    (SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), INVALID, 0, None),  # too short for IPv4
    (SIGNATURE + b"\x21\x11\x10\x00", INVALID, 0, None),  # announces more than a balancer sends
])
def test_sniff(data: bytes, kind: str, size: int, client: str | None) -> None:
    found = sniff(data)
    assert (found.kind, found.size, found.client) == (kind, size, client)


@pytest.mark.parametrize("data", [V4, V6, LOCAL])
def test_a_header_in_pieces_needs_more_until_it_is_whole(data: bytes) -> None:
    for cut in range(1, len(data)):
        assert sniff(data[:cut]).kind == NEED_MORE, cut
    assert sniff(data).kind == HEADER


def test_trusted_peers() -> None:
    networks = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64"))
    assert trusted("10.0.0.9", networks) and trusted("fd00::1", networks)
    assert not trusted("10.0.1.9", networks) and not trusted("not an address", networks)
