"""The recvmmsg/sendmmsg extension (resolver/net/_mmsg.c) on real loopback sockets: what arrives, who it came
from (as text, as recvfrom says it), answers back to each sender's port, and the bad cases (a datagram longer than
a slot, a bad position, a reply that is not bytes, an unusable address) refused without a crash.

Skipped in the pure-Python build (RESOLVER_PURE=1, or no C compiler at install), where the listener reads with
recvfrom instead; the integration tests cover both."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from resolver.net import mmsg
from tests.support.resolverproc import ipv6_loopback_available

_mmsg = pytest.importorskip("resolver.net._mmsg", reason="the C extension is not built (pure-Python install)")


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A dual-stack listening socket, as resolver/net/sockets.py makes for ``[::]``."""
    family = socket.AF_INET6 if ipv6_loopback_available() else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def client(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(2)
    return sock


def receive(batch: mmsg.Batch, count: int) -> list[tuple[bytes, str]]:
    """The next batch once ``count`` datagrams have arrived (loopback delivers at once, but not in the same call)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        got = batch.recv()
        if got:
            assert len(got) == count, got
            return got
        time.sleep(0.01)
    raise AssertionError("nothing arrived")


def make(sock: socket.socket, size: int = 8, slot: int = 512) -> mmsg.Batch:
    made: mmsg.Batch = _mmsg.Batch(sock.fileno(), size, slot)
    return made


def test_the_listener_gets_a_batch_in_this_build(server: socket.socket) -> None:
    assert mmsg.batch(server.fileno()) is not None


def test_nothing_waiting_is_an_empty_batch(server: socket.socket) -> None:
    assert make(server).recv() == []


def test_datagrams_come_with_their_senders_address_and_replies_go_back_to_each_port(server: socket.socket) -> None:
    port = server.getsockname()[1]
    batch = make(server)
    one, two = client(), client()
    with one, two:
        for n in range(3):
            one.sendto(b"one %d" % n, ("127.0.0.1", port))
        two.sendto(b"two", ("127.0.0.1", port))
        got = receive(batch, 4)
        mapped = "::ffff:127.0.0.1" if server.family == socket.AF_INET6 else "127.0.0.1"
        assert got == [(b"one 0", mapped), (b"one 1", mapped), (b"one 2", mapped), (b"two", mapped)]
        for position, (data, _) in enumerate(got):
            batch.reply(position, b"re " + data)
        assert batch.flush() == 0
        assert [one.recv(100) for _ in range(3)] == [b"re one 0", b"re one 1", b"re one 2"]
        assert two.recv(100) == b"re two"


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 on loopback")
def test_an_ipv6_sender_is_named_as_recvfrom_names_it(server: socket.socket) -> None:
    port = server.getsockname()[1]
    batch = make(server)
    with client(socket.AF_INET6) as six:
        six.sendto(b"hello", ("::1", port))
        assert receive(batch, 1) == [(b"hello", "::1")]
        batch.reply(0, b"back")
        assert batch.flush() == 0
        assert six.recvfrom(100) == (b"back", ("::1", port, 0, 0))


def test_more_than_a_batch_waiting_is_read_over_several_calls(server: socket.socket) -> None:
    port = server.getsockname()[1]
    batch = make(server, size=4)
    with client() as one:
        for n in range(10):
            one.sendto(b"%d" % n, ("127.0.0.1", port))
        time.sleep(0.05)
        seen = [data for _ in range(3) for data, _ in batch.recv()]
        assert seen == [b"%d" % n for n in range(10)]
        assert batch.recv() == []


def test_an_answer_after_the_batch_moved_on_goes_to_the_saved_peer(server: socket.socket) -> None:
    port = server.getsockname()[1]
    batch = make(server)
    with client() as early, client() as late:
        early.sendto(b"forwarded", ("127.0.0.1", port))
        receive(batch, 1)
        peer = batch.peer(0)
        late.sendto(b"next", ("127.0.0.1", port))
        receive(batch, 1)  # the slot the first datagram was in now holds another sender's address
        assert batch.send_to(peer, b"answer") is True
        assert early.recv(100) == b"answer"


def test_a_datagram_longer_than_a_slot_is_dropped_and_counted_and_the_rest_kept(server: socket.socket) -> None:
    port = server.getsockname()[1]
    batch = make(server, slot=512)
    with client() as one:
        one.sendto(b"before", ("127.0.0.1", port))
        one.sendto(b"x" * 513, ("127.0.0.1", port))
        one.sendto(b"after", ("127.0.0.1", port))
        time.sleep(0.05)
        got = batch.recv()
        assert [data for data, _ in got] == [b"before", b"after"]
        assert batch.truncated == 1
        batch.reply(1, b"to after")  # positions are in the list returned, not counting the dropped one
        assert batch.flush() == 0
        assert one.recv(100) == b"to after"


def test_bad_calls_raise_and_leave_the_batch_usable(server: socket.socket) -> None:
    port = server.getsockname()[1]
    batch = make(server)
    with client() as one:
        one.sendto(b"q", ("127.0.0.1", port))
        receive(batch, 1)
        with pytest.raises(IndexError):
            batch.reply(1, b"no such datagram")
        with pytest.raises(IndexError):
            batch.peer(-1)
        with pytest.raises(TypeError):
            batch.reply(0, "not bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            batch.send_to(b"", b"data")
        batch.reply(0, b"fine")
        assert batch.flush() == 0
        assert one.recv(100) == b"fine"


def test_an_unusable_address_is_refused_not_raised(server: socket.socket) -> None:
    batch = make(server)
    unix = socket.AF_UNIX.to_bytes(2, "little") + b"/nonexistent\0"  # not an address a UDP socket can send to
    assert batch.send_to(unix, b"data") is False


def test_a_batch_without_its_buffers_or_with_bad_sizes_is_refused(server: socket.socket) -> None:
    bare = _mmsg.Batch.__new__(_mmsg.Batch)
    with pytest.raises(RuntimeError):
        bare.recv()
    with pytest.raises(ValueError):
        _mmsg.Batch(server.fileno(), 0)
    with pytest.raises(ValueError):
        _mmsg.Batch(server.fileno(), 8, 100_000)
