"""The stream framing (``resolver.net.framing``) on a StreamReader fed by hand: no socket, no real wait.

A timeout of 0 runs out on the loop's next turn, so every timeout case is decided without waiting for anything.
"""

from __future__ import annotations

import asyncio

import pytest

from resolver.net.framing import MAX_MESSAGE, FrameError, frame, read_frame

QUERY = bytes(range(30))


def fed(*chunks: bytes, eof: bool = False) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


def test_frame_puts_the_length_in_front() -> None:
    assert frame(QUERY) == b"\x00\x1e" + QUERY
    assert frame(b"") == b"\x00\x00"
    assert frame(bytes(MAX_MESSAGE))[:2] == b"\xff\xff"


async def test_a_whole_message() -> None:
    assert await read_frame(fed(frame(QUERY)), 1.0) == QUERY


async def test_pipelined_messages_in_one_read_come_out_one_at_a_time() -> None:
    reader = fed(frame(QUERY) + frame(b"second") + frame(b""), eof=True)
    assert [await read_frame(reader, 1.0) for _ in range(4)] == [QUERY, b"second", b"", None]


async def test_a_zero_length_message_is_returned_and_the_stream_stays_in_step() -> None:
    reader = fed(frame(b"") + frame(QUERY))
    assert await read_frame(reader, 1.0) == b""
    assert await read_frame(reader, 1.0) == QUERY


@pytest.mark.parametrize("cut", [1, 2, 3, 20])
async def test_a_message_arriving_in_pieces(cut: int) -> None:
    """The length itself split (cut 1), the body split at its first byte or in the middle."""
    reader = fed()
    reading = asyncio.ensure_future(read_frame(reader, 1.0))
    data = frame(QUERY)
    for piece in (data[:cut], data[cut:-1], data[-1:]):
        await asyncio.sleep(0)  # let the reader take what it has and wait for more
        assert not reading.done()
        reader.feed_data(piece)
    assert await reading == QUERY


async def test_end_of_stream_between_messages_is_none() -> None:
    assert await read_frame(fed(eof=True), 1.0) is None
    reader = fed(frame(QUERY), eof=True)
    assert await read_frame(reader, 1.0) == QUERY
    assert await read_frame(reader, 1.0) is None


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x1e", frame(QUERY)[:-1]], ids=["in-length", "at-body", "in-body"])
async def test_end_of_stream_inside_a_message_is_a_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError, match="ended inside a message"):
        await read_frame(fed(data, eof=True), 1.0)


async def test_a_message_over_the_limit_is_refused_before_its_body_is_read() -> None:
    reader = fed(frame(bytes(513)))
    with pytest.raises(FrameError, match="513-byte message announced"):
        await read_frame(reader, 1.0, limit=512)
    assert await read_frame(fed(frame(bytes(512))), 1.0, limit=512) == bytes(512)


async def test_the_largest_message_the_length_can_announce() -> None:
    assert await read_frame(fed(frame(bytes(MAX_MESSAGE))), 1.0) == bytes(MAX_MESSAGE)


@pytest.mark.parametrize("before", [b"", b"\x00"], ids=["nothing", "half-a-length"])
async def test_a_timeout_before_the_length_consumes_nothing(before: bytes) -> None:
    """The caller may read again: an upstream connection with questions in flight keeps waiting."""
    reader = fed(before)
    with pytest.raises(TimeoutError):
        await read_frame(reader, 0)
    reader.feed_data(frame(QUERY)[len(before):])
    assert await read_frame(reader, 0) == QUERY  # all there now: no wait, so no timeout


async def test_a_timeout_inside_a_message_is_a_frame_error() -> None:
    """Part of the message is gone from the stream: what follows cannot be found, the connection must close."""
    with pytest.raises(FrameError, match="no whole message within"):
        await read_frame(fed(frame(QUERY)[:10]), 0)


async def test_no_timeout_waits_as_long_as_it_takes() -> None:
    reader = fed(b"\x00")
    reading = asyncio.ensure_future(read_frame(reader, None))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not reading.done()
    reader.feed_data(frame(QUERY)[1:])
    assert await reading == QUERY


async def test_a_reset_connection_is_not_a_frame_error() -> None:
    """The connection's own error passes through for the caller's usual handling (it is a ConnectionError too)."""
    reader = fed(b"\x00\x1e")
    reader.set_exception(ConnectionResetError("reset by peer"))
    with pytest.raises(ConnectionResetError):
        await read_frame(reader, 1.0)
    assert issubclass(FrameError, ConnectionError)
