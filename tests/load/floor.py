#!/usr/bin/env python3
"""The per-datagram floor of a Python UDP server: a canned answer (the C ceiling's, canned.c) from a uvloop reader
callback, doing no DNS work at all, read and answered four ways. What is left of the resolver's CPU per query above
this floor is the pipeline's; what the floor costs above the C ceiling is the event loop's and the socket calls'.

    python3 tests/load/floor.py --listen 127.0.0.1:5300 --mode recvfrom|recvmmsg|mmsg|protocol

- protocol: asyncio's DatagramProtocol (datagram_received, transport.sendto): the stock way
- recvfrom: the pure-Python listener's loop (add_reader; recvfrom and sendto per datagram, up to 64 a wake-up)
- recvmmsg: resolver/net/_mmsg.c's Batch.recv (one recvmmsg a wake-up), then a send_to per datagram
- mmsg: Batch.recv, then Batch.reply per datagram and one Batch.flush (sendmmsg): the compiled listener's way

The extension is imported from the tree on PYTHONPATH (built by setup.py); it serves 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any

ANSWER = bytes([0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 192, 0, 2, 1])  # canned.c's
BATCH = 64


def canned(query: bytes) -> bytes | None:
    """canned.c's answer: the question echoed with QR, RA, one A record; None for anything but one question."""
    n = len(query)
    if n < 12 or query[2] & 0x80 or query[4] != 0 or query[5] != 1:
        return None
    pos = 12
    while pos < n and query[pos] != 0 and query[pos] < 64:
        pos += 1 + query[pos]
    if pos >= n or query[pos] != 0 or pos + 5 > n:
        return None
    pos += 5
    return query[:2] + bytes([query[2] | 0x80, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]) + query[12:pos] + ANSWER


def reader(sock: socket.socket, mode: str) -> Any:
    if mode == "recvfrom":
        recvfrom, sendto = sock.recvfrom, sock.sendto

        def readable() -> None:
            for _ in range(BATCH):
                try:
                    data, addr = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                reply = canned(data)
                if reply is not None:
                    with contextlib.suppress(OSError):
                        sendto(reply, addr)
        return readable

    from resolver.net import _mmsg

    batch = _mmsg.Batch(sock.fileno(), BATCH, 4096)
    if mode == "recvmmsg":
        def readable_recv() -> None:
            for position, (data, _host) in enumerate(batch.recv()):
                reply = canned(data)
                if reply is not None:
                    batch.send_to(batch.peer(position), reply)
        return readable_recv

    def readable_mmsg() -> None:
        for position, (data, _host) in enumerate(batch.recv()):
            reply = canned(data)
            if reply is not None:
                batch.reply(position, reply)
        batch.flush()
    return readable_mmsg


class Protocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = canned(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def serve(host: str, port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if mode == "protocol":
        await loop.create_datagram_endpoint(Protocol, local_addr=(host, port))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), reader(sock, mode))
    print(f"floor ready: {host}:{port} ({mode})", file=sys.stderr, flush=True)
    await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--mode", choices=("protocol", "recvfrom", "recvmmsg", "mmsg"), default="recvfrom")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    if not host.startswith("127."):
        raise SystemExit("loopback only")
    import uvloop

    uvloop.run(serve(host, int(port), args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
