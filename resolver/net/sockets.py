"""The listening sockets, made here so that every listen address behaves the same over UDP and TCP.

An IPv6 address listens dual-stack on both (``[::]`` hears IPv4 phones too, as ``::ffff:a.b.c.d``, which the
pipeline unmaps): asyncio would make the TCP side IPv6-only, and the UDP side would follow the host's
``net.ipv6.bindv6only``. The exception is an IPv6 address whose port an IPv4 listen address also uses
(``0.0.0.0:53`` with ``[::]:53``, as in deploy/docker.yaml): a dual-stack ``[::]:53`` claims IPv4's port 53 as
well, so one of the two binds would fail; that IPv6 socket hears IPv6 only and the IPv4 socket hears IPv4.

One instance per address. ``--workers`` share a port through SO_REUSEPORT, which would also let a second
``resolver serve`` join silently and answer part of the traffic with its own policy. So whoever binds an address
first (the single process with a plain bind, or the supervisor through ``claim`` before it starts its workers)
finds out whether anyone holds it; only the supervisor's own workers join without asking.

A socket that cannot be bound is one line naming the address and the reason.
"""

from __future__ import annotations

import _socket
import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable

from resolver.config.model import Endpoint
from resolver.core.access import AccessSpec
from resolver.errors import ListenError

# A burst (phones waking at a shift change, a stalled core) must queue, not be dropped by the kernel: a deep
# receive buffer (the kernel caps it at net.core.rmem_max).
UDP_RCVBUF = 4 << 20


def v6_only(endpoint: Endpoint, listen: Iterable[Endpoint]) -> bool:
    """Whether ``endpoint``'s socket must hear IPv6 only: it is IPv6 and an IPv4 listen address has its port.

    Only a wildcard (``[::]``) would actually collide, but a specific IPv6 address never receives IPv4 anyway, so
    the rule needs no special case for it. An IPv4-mapped address (``[::ffff:192.0.2.1]``) is IPv4 in IPv6
    clothing and cannot be bound IPv6-only; port 0 is a different free port on each socket, so it never collides.
    """
    if not endpoint.family_v6 or endpoint.port == 0 or _mapped(endpoint.host):
        return False
    return any(not other.family_v6 and other.port == endpoint.port for other in listen)


def _mapped(host: str) -> bool:
    address = ipaddress.ip_address(host)
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None


def _socket_for(endpoint: Endpoint, kind: int, *, shared: bool, v6only: bool,
                reuse_address: bool = True) -> _socket.socket:
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    sock = _socket.socket(family, kind | socket.SOCK_NONBLOCK)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        if kind == socket.SOCK_STREAM and reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old connections linger
        if shared:  # --workers: the workers share the port; the kernel spreads clients over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((endpoint.host, endpoint.port))
    except OSError as err:
        sock.close()
        what = "udp" if kind == socket.SOCK_DGRAM else "tcp"
        raise ListenError(f"cannot listen on {endpoint} ({what}): {reason(err)}") from None
    return sock


def reason(err: OSError) -> str:
    """The system's words for a failed bind (asyncio rewords them inside a longer sentence)."""
    return os.strerror(err.errno) if err.errno else str(err)


def bind_udp(endpoint: Endpoint, shared: bool, listen: Iterable[Endpoint] = ()) -> _socket.socket:
    """A bound UDP socket; ``listen`` is every configured listen address (it decides IPv6-only, see ``v6_only``)."""
    return _socket_for(endpoint, socket.SOCK_DGRAM, shared=shared, v6only=v6_only(endpoint, listen))


def bind_tcp(endpoint: Endpoint, shared: bool, listen: Iterable[Endpoint] = ()) -> socket.socket:
    """A bound TCP socket (asyncio's start_server listens on it)."""
    raw = _socket_for(endpoint, socket.SOCK_STREAM, shared=shared, v6only=v6_only(endpoint, listen))
    return socket.socket(fileno=raw.detach())


def claim(listen: tuple[Endpoint, ...], streams: tuple[Endpoint, ...] = ()) -> list[socket.socket]:
    """For a supervisor about to start workers that bind with SO_REUSEPORT: refuse any listen address someone
    already holds, over UDP or TCP (``streams``, the DoT and DoH addresses: TCP only), and keep holding them until
    the caller closes what this returns.

    The probe is a plain bind (no SO_REUSEPORT), which the kernel refuses while any socket holds the address,
    a running resolver's workers included. The hold is a bound TCP socket that never listens (so it is given no
    connections), with SO_REUSEPORT so that our workers can still join but without SO_REUSEADDR so that a later
    probe is still refused: another supervisor started while our workers are loading their policy must not find
    the address free. Ports must be concrete (``pin_ports``).
    """
    held: list[socket.socket] = []
    try:
        for endpoint in (*listen, *streams):
            v6only = v6_only(endpoint, listen)
            kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if endpoint in listen else (socket.SOCK_STREAM,)
            for kind in kinds:
                _socket_for(endpoint, kind, shared=False, v6only=v6only).close()
            hold = _socket_for(endpoint, socket.SOCK_STREAM, shared=True, v6only=v6only, reuse_address=False)
            held.append(socket.socket(fileno=hold.detach()))
    except ListenError:
        for sock in held:
            sock.close()
        raise
    return held


def beyond_loopback(listen: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """The listen addresses other hosts can reach: anything but 127.0.0.0/8 and ::1 (a wildcard counts)."""
    return tuple(e for e in listen if not ipaddress.ip_address(e.host).is_loopback)


def access_warning(listen: Iterable[Endpoint], access: AccessSpec) -> str | None:
    """The start-up warning for a resolver reachable from other hosts that still has the default access list,
    which lets every private, CGNAT and link-local address ask: fine on a laptop, too wide for a server."""
    exposed = beyond_loopback(listen)
    if not exposed or access.allow != AccessSpec().allow:
        return None
    return (f"listening on {' '.join(str(e) for e in exposed)} with the default access list, which answers every "
            "private, CGNAT and link-local address: set access.allow to your VPN pools (README, \"Who may ask\")")
