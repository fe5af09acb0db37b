"""The one canonical form of a client's address, read by every consumer: access list, group, exemptions, rate
limit, query log, connection caps.

A dual-stack listener (``[::]``) hears an IPv4 phone as ``::ffff:10.20.8.15``; an IPv6 link-local peer carries a
zone (``fe80::1%eth0``). Left as they are, the same phone would miss its group's IPv4 network and its
exemptions, or be counted as two clients by the rate limit.
"""

from __future__ import annotations

import ipaddress

_MAPPED = "::ffff:"


def canonical_client(address: str) -> str:
    """``address`` with an IPv4-mapped IPv6 address unmapped and any zone stripped; other text unchanged.

    Called once per query on the address the kernel reports (lowercase, ``::ffff:a.b.c.d`` for mapped ones):
    that case is string work only. Addresses from the config come through ``ipaddress`` first, which may print
    a mapped address in hex (``::ffff:a14:80f``): that rarer form is parsed.
    """
    zone = address.find("%")
    if zone >= 0:
        address = address[:zone]
    if not address.startswith(_MAPPED):
        return address
    rest = address[len(_MAPPED):]
    if "." in rest:
        return rest
    try:
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
    except ValueError:
        return address
    return address if mapped is None else str(mapped)
