"""RFC 8484's rules for one request, with no HTTP library and no socket: what a request asks (the DNS message and
the client id in its path) or the HTTP error it gets, and the response that carries an answer.

Both HTTP versions (``doh.H2Session``, ``doh.H11Session``) read requests through ``dns_request`` and write answers
through ``dns_response``, so HTTP/2 and HTTP/1.1 clients see the same codes for the same mistakes.
"""

from __future__ import annotations

import binascii
import re
import struct
from typing import Final
from urllib.parse import parse_qs, unquote

from resolver.core import wire
from resolver.errors import WireFormatError

PATH: Final = "/dns-query"
MAX_MESSAGE: Final = 65535  # RFC 8484: a DNS message; a bigger body is 413
CONTENT_TYPE: Final = b"application/dns-message"
# A client id, from the path or the TLS server name (``tlsconf.client_id_of``), is made of the characters a DNS
# label or a device id uses (it is also what ``resolver profile`` puts there): nothing a log line or a policy
# could read as something else. Matched whole: a ``$`` would let a trailing newline through.
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_B64URL: Final = bytes.maketrans(b"-_", b"+/")

Headers = list[tuple[bytes, bytes]]


class HttpError:
    """The response to a request that asks no DNS question we can answer."""

    __slots__ = ("headers", "status", "text")

    def __init__(self, status: int, text: str, headers: Headers | None = None) -> None:
        self.status = status
        self.text = text
        self.headers = headers or []

    def response(self) -> tuple[int, Headers, bytes]:
        body = (self.text + "\n").encode()
        return self.status, [(b"content-type", b"text/plain; charset=utf-8"),
                             (b"content-length", str(len(body)).encode()), *self.headers], body


NOT_FOUND: Final = HttpError(404, f"not found: DNS queries go to {PATH} or {PATH}/<client-id>")
NOT_ALLOWED: Final = HttpError(405, "method not allowed: GET ?dns= or POST application/dns-message",
                               [(b"allow", b"GET, POST")])
TOO_LARGE: Final = HttpError(413, f"a DNS message is at most {MAX_MESSAGE} bytes")
UNSUPPORTED: Final = HttpError(415, "the body must be application/dns-message")
BAD_PARAMETER: Final = HttpError(400, "the dns parameter must be a DNS message in base64url")
BAD_MESSAGE: Final = HttpError(400, "not a DNS query")
NOT_ANSWERED: Final = HttpError(403, "not answered for this client (rate limit)")


def route(path: str) -> tuple[str | None, str] | HttpError:
    """(client id or None, query string) for a DoH path, else 404."""
    target, _, query = path.partition("?")
    if target == PATH:
        return None, query
    if not target.startswith(PATH + "/"):
        return NOT_FOUND
    client_id = unquote(target[len(PATH) + 1:])
    if not is_client_id(client_id):
        return NOT_FOUND
    return client_id, query


def is_client_id(text: str) -> bool:
    return _CLIENT_ID.fullmatch(text) is not None


def dns_request(method: str, path: str, content_type: bytes | None,
                body: bytes) -> tuple[bytes, str | None] | HttpError:
    """(the DNS message, the client id) a request carries, or the error it gets. The order of the checks is the
    order an operator reads them: where, how, what."""
    routed = route(path)
    if isinstance(routed, HttpError):
        return routed
    client_id, query = routed
    if method == "GET":
        # What every client sends (``dns=`` alone, nothing escaped) is taken as it is; anything else goes through
        # the query-string parser: the same result, without its cost on each request.
        plain = len(query) > 4 and query.startswith("dns=") and "&" not in query and "%" not in query \
            and "+" not in query
        values = [query[4:]] if plain else parse_qs(query).get("dns")
        if not values or len(values) != 1:
            return BAD_PARAMETER
        message = b64url(values[0])
        if message is None:
            return BAD_PARAMETER
    elif method == "POST":
        if content_type is None or content_type.split(b";")[0].strip().lower() != CONTENT_TYPE:
            return UNSUPPORTED
        if len(body) > MAX_MESSAGE:
            return TOO_LARGE
        message = body
    else:
        return NOT_ALLOWED
    if len(message) < wire.HEADER.size or message[2] & 0x80:  # no header, or a response: not a query at all
        return BAD_MESSAGE
    return message, client_id


def b64url(text: str) -> bytes | None:
    """RFC 4648 base64url without padding (padding is taken too); None for anything else."""
    data = text.encode("ascii", "replace").translate(_B64URL)
    data += b"=" * (-len(data) % 4)
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) <= MAX_MESSAGE else None


def dns_response(answer: bytes) -> tuple[int, Headers, bytes] | HttpError:
    """200 with the answer, its freshness the answer's smallest TTL (RFC 8484 5.1); an answer that says the
    question could not be read (FORMERR) is a 400 instead."""
    if len(answer) >= 4 and answer[3] & 0x0F == wire.FORMERR:
        return BAD_MESSAGE
    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", str(len(answer)).encode())]
    ttl = smallest_ttl(answer)
    if ttl is not None:
        headers.append((b"cache-control", f"max-age={ttl}".encode()))
    return 200, headers, answer


_COUNTS: Final = struct.Struct("!HHHH")


def smallest_ttl(answer: bytes) -> int | None:
    """The smallest TTL of the answer and authority records (a negative answer's SOA), None when there are none
    or the message cannot be walked."""
    try:
        qd, an, ns, _ = _COUNTS.unpack_from(answer, 4)
        pos = wire.HEADER.size
        for _ in range(qd):
            pos = wire.skip_name(answer, pos) + 4
        smallest: int | None = None
        for _ in range(an + ns):
            pos = wire.skip_name(answer, pos)
            _, _, ttl, size = wire.RR_FIXED.unpack_from(answer, pos)
            pos += wire.RR_FIXED.size + size
            if pos > len(answer):
                return None
            smallest = ttl if smallest is None else min(smallest, ttl)
    except (struct.error, WireFormatError):
        return None
    return smallest
