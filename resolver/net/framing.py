"""DNS messages on a byte stream (TCP, TLS): each one preceded by its length in two bytes (RFC 1035 4.2.2, RFC 7766).

The one reader and the one writer of that framing, for every stream transport: the TCP listener and the upstream
connections now, the DoT listener later. They move bytes only; whether a message is a usable query or reply is
for the caller to decide, so a zero-length message is returned as ``b""`` like any other.
"""

from __future__ import annotations

import asyncio
from typing import Final

from mypy_extensions import mypyc_attr

# The most a 2-byte length can announce: the default limit takes every message the framing can carry.
MAX_MESSAGE: Final = 0xFFFF


@mypyc_attr(native_class=False)  # compiled, an exception class must be a plain one to derive from OSError
class FrameError(ConnectionError):
    """The stream broke off inside a message (it ended, or time ran out, after the length was read), or announced
    a message over the reader's limit: what follows cannot be read as messages, so the connection must close."""


def frame(message: bytes) -> bytes:
    """``message`` with its length in front, ready to write."""
    return len(message).to_bytes(2, "big") + message


async def read_frame(reader: asyncio.StreamReader, timeout: float | None, limit: int = MAX_MESSAGE) -> bytes | None:
    """The next message on ``reader``, or None when the stream ended cleanly (between two messages).

    ``timeout`` bounds the wait for the whole message, so a peer cannot hold a connection by trickling a message a
    byte at a time. If it runs out before the length has been read, ``TimeoutError`` is raised and nothing has been
    consumed: the caller may read again (a connection with questions in flight keeps waiting). Every other way of
    stopping part-way raises ``FrameError``. Errors of the connection itself (a reset) pass through unchanged.
    """
    head = b""
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readexactly(2)
            size = head[0] << 8 | head[1]
            if size > limit:
                raise FrameError(f"a {size}-byte message announced, over the limit of {limit}")
            return await reader.readexactly(size)
    except asyncio.IncompleteReadError as err:
        if head or err.partial:
            raise FrameError("the stream ended inside a message") from None
        return None
    except TimeoutError:
        if head:
            raise FrameError(f"no whole message within {timeout:.2f}s") from None
        raise
