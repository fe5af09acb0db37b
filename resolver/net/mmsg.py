"""Batched UDP I/O for the listener: the C extension ``_mmsg`` (recvmmsg/sendmmsg) when it was built, else None.

setup.py builds the extension beside the mypyc modules when a C compiler is present (and not with
``RESOLVER_PURE=1``); without it the listener reads with one ``recvfrom`` and answers with one ``sendto`` per
datagram, the same answers at more CPU each.
"""

from __future__ import annotations

from typing import Final, Protocol

# Datagrams read per wake-up before other callbacks (upstream replies, timers) get a turn; the batched and the
# plain reader alike.
BATCH: Final = 64
# The longest query kept (longer ones are dropped and counted as malformed): no DNS client sends one this long.
SLOT: Final = 4096


class Batch(Protocol):
    """One socket's batch: ``recv`` the datagrams waiting, ``reply`` to any of them, ``flush`` the replies in one
    system call; ``peer``/``send_to`` answer one later (after an upstream), when the batch has moved on."""

    truncated: int

    def recv(self) -> list[tuple[bytes, str]]: ...

    def reply(self, position: int, data: bytes, /) -> None: ...

    def flush(self) -> int: ...

    def peer(self, position: int, /) -> bytes: ...

    def send_to(self, peer: bytes, data: bytes, /) -> bool: ...


def batch(fd: int) -> Batch | None:
    """A batch on the non-blocking UDP socket ``fd`` (not owned: the caller closes the socket), or None when the
    extension is not built."""
    try:
        from resolver.net import _mmsg
    except ImportError:
        return None
    made: Batch = _mmsg.Batch(fd, BATCH, SLOT)
    return made
