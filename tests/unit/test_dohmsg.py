"""RFC 8484's request rules and the answer's freshness, without HTTP or sockets."""

from __future__ import annotations

import base64

import dns.message
import dns.rrset
import pytest

from resolver.net.dohmsg import HttpError, dns_request, dns_response, smallest_ttl

QUERY = dns.message.make_query("www.example.test", "A").to_wire()
B64 = base64.urlsafe_b64encode(QUERY).decode().rstrip("=")
DNS = b"application/dns-message"


@pytest.mark.parametrize(("method", "path", "ctype", "body", "status"), [
    ("GET", f"/dns-query?dns={B64}", None, b"", None),
    ("GET", f"/dns-query?dns={B64}==", None, b"", None),  # padding taken, though RFC 8484 says to leave it off
    ("POST", "/dns-query", DNS, QUERY, None),
    ("POST", "/dns-query", b"Application/DNS-Message; charset=x", QUERY, None),
    ("GET", "/dns-query?dns=***", None, b"", 400),
    ("GET", "/dns-query", None, b"", 400),
    ("GET", "/dns-query?dns=", None, b"", 400),
    ("GET", f"/dns-query?x=1&dns={B64}", None, b"", None),  # other parameters are ignored
    ("GET", f"/dns-query?dns={B64}%3D", None, b"", None),  # percent-encoded padding
    ("GET", f"/dns-query?dns=+{B64}", None, b"", 400),  # '+' is a space in a query string: not base64url
    ("GET", f"/dns-query?dns={B64}&dns={B64}", None, b"", 400),
    ("GET", "/dns-query?dns=AAAA", None, b"", 400),  # three bytes: no DNS header
    ("POST", "/dns-query", DNS, b"\x00\x01\x80" + QUERY[3:], 400),  # a response, not a query
    ("POST", "/dns-query", b"text/plain", QUERY, 415),
    ("POST", "/dns-query", None, QUERY, 415),
    ("POST", "/dns-query", DNS, QUERY + b"\x00" * 65536, 413),
    ("PUT", "/dns-query", DNS, QUERY, 405),
    ("HEAD", f"/dns-query?dns={B64}", None, b"", 405),
    ("GET", f"/?dns={B64}", None, b"", 404),
    ("GET", f"/dns-query-x?dns={B64}", None, b"", 404),
    ("GET", f"/dns-query/a/b?dns={B64}", None, b"", 404),
    ("GET", f"/dns-query/?dns={B64}", None, b"", 404),
])
def test_requests(method: str, path: str, ctype: bytes | None, body: bytes, status: int | None) -> None:
    result = dns_request(method, path, ctype, body)
    if status is None:
        assert result == (QUERY, None)
    else:
        assert isinstance(result, HttpError) and result.status == status, result


def test_the_path_names_the_client() -> None:
    assert dns_request("GET", f"/dns-query/comms-01?dns={B64}", None, b"") == (QUERY, "comms-01")
    assert dns_request("POST", "/dns-query/team.roads_7", DNS, QUERY) == (QUERY, "team.roads_7")
    refusal = dns_request("PUT", "/dns-query/comms-01", DNS, QUERY)
    assert isinstance(refusal, HttpError) and (b"allow", b"GET, POST") in refusal.response()[1]


def answer(*records: tuple[str, int, str, str], authority: bool = False) -> bytes:
    reply = dns.message.make_response(dns.message.make_query("a.example.test", "A"))
    for name, ttl, rtype, value in records:
        (reply.authority if authority else reply.answer).append(dns.rrset.from_text(name, ttl, "IN", rtype, value))
    return reply.to_wire()


def test_freshness_is_the_smallest_ttl() -> None:
    chain = answer(("a.example.test.", 30, "CNAME", "b.example.test."), ("b.example.test.", 300, "A", "192.0.2.1"))
    assert smallest_ttl(chain) == 30
    soa = answer(("example.test.", 60, "SOA", "ns.example.test. host.example.test. 1 2 3 4 5"), authority=True)
    assert smallest_ttl(soa) == 60
    assert smallest_ttl(answer()) is None
    assert smallest_ttl(chain[:-3]) is None  # cut short: no header value rather than a wrong one
    status, headers, body = dns_response(chain)  # type: ignore[misc]
    assert status == 200 and body == chain and (b"cache-control", b"max-age=30") in headers
    formerr = bytearray(chain)
    formerr[3] = (formerr[3] & 0xF0) | 1
    assert isinstance(dns_response(bytes(formerr)), HttpError)
