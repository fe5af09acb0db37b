"""The listening sockets, made here so that every listen address behaves the same over UDP and TCP.

An IPv6 address listens dual-stack on both (``[::]`` hears IPv4 phones too, as ``::ffff:a.b.c.d``, which the
pipeline unmaps): asyncio would make the TCP side IPv6-only, and the UDP side would follow the host's
``net.ipv6.bindv6only``. A socket that cannot be bound is one line naming the address and the reason.
"""

from __future__ import annotations

import _socket
import contextlib
import socket

from resolver.config.model import Endpoint
from resolver.errors import ListenError

# A burst (phones waking at a shift change, a stalled core) must queue, not be dropped by the kernel: a deep
# receive buffer (the kernel caps it at net.core.rmem_max).
UDP_RCVBUF = 4 << 20


def _socket_for(endpoint: Endpoint, kind: int, shared: bool) -> _socket.socket:
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    sock = _socket.socket(family, kind | socket.SOCK_NONBLOCK)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:
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
        raise ListenError(f"cannot listen on {endpoint} ({what}): {err.strerror or err}") from None
    return sock


def bind_udp(endpoint: Endpoint, shared: bool) -> _socket.socket:
    return _socket_for(endpoint, socket.SOCK_DGRAM, shared)


def bind_tcp(endpoint: Endpoint, shared: bool) -> socket.socket:
    """A bound TCP socket (asyncio's start_server listens on it)."""
    raw = _socket_for(endpoint, socket.SOCK_STREAM, shared)
    return socket.socket(fileno=raw.detach())
