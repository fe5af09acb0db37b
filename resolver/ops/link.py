"""A worker's side of ``--workers N``: what the supervisor hands it, and the pipes it talks to it over.

The supervisor hands each worker (``--worker SPEC``, ``WorkerLink``): its index and the worker count, the pipe
its snapshots go down, a control pipe the supervisor writes to, its UDP socket for each listen address (bound by
the supervisor in worker order, see ``net/steer.py``) and one end of a socket pair to each other worker (see
``net/peers.py``). Descriptors keep their numbers across ``exec`` (``pass_fds``), so the spec names them.

Control messages (``_CONTROL``: kind + one number): ``S`` asks for a snapshot now, tagged with the number (a
scrape waits for it, so it counts every query answered before it); ``D``/``U`` say a peer worker died or is back.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from resolver.ops.snapshot import Snapshot

log = logging.getLogger("resolver.ops.workers")
FRAME = struct.Struct("!II")  # size, the scrape it answers (0: a periodic report)
CONTROL = struct.Struct("!cI")
SNAPSHOT = b"S"
PEER_DOWN = b"D"
PEER_UP = b"U"
SNAPSHOT_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class WorkerLink:
    index: int
    count: int
    supervisor: int  # its pid, for follow_supervisor
    snapshot_fd: int
    control_fd: int = -1
    udp_fds: tuple[int, ...] = ()  # one per listen address, in the config's order; () when the worker binds
    peer_fds: dict[int, int] = field(default_factory=dict)  # other worker's index -> our end of the pair

    def encode(self) -> str:
        peers = ",".join(f"{i}={fd}" for i, fd in sorted(self.peer_fds.items()))
        udp = ",".join(str(fd) for fd in self.udp_fds)
        return f"{self.index}:{self.snapshot_fd}:{self.supervisor}:{self.control_fd}:{self.count}:{udp}:{peers}"

    @classmethod
    def parse(cls, spec: str) -> WorkerLink:
        """The spec ``encode`` made; the first three fields alone are the older INDEX:FD:PID."""
        parts = spec.split(":")
        index, snapshot_fd, supervisor = (int(x) for x in parts[:3])
        if len(parts) < 7:
            return cls(index, 1, supervisor, snapshot_fd)
        udp = tuple(int(fd) for fd in parts[5].split(",") if fd)
        peers = dict((int(i), int(fd)) for i, fd in (item.split("=") for item in parts[6].split(",") if item))
        return cls(index, int(parts[4]), supervisor, snapshot_fd, int(parts[3]), udp, peers)

    def fds(self) -> tuple[int, ...]:
        """Every descriptor the worker must inherit."""
        own = (self.snapshot_fd, self.control_fd) if self.control_fd >= 0 else (self.snapshot_fd,)
        return (*own, *self.udp_fds, *self.peer_fds.values())


def follow_supervisor(supervisor: int) -> bool:
    """Worker side, first thing: ask the kernel for SIGTERM when our parent dies, whatever kills it (SIGKILL, the
    OOM killer), so that no worker outlives its supervisor holding the port with an old policy. False when the
    supervisor is already gone (it died before we asked): the caller exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl (not Linux): SnapshotSender's checks are what is left
    return os.getppid() == supervisor


class _PipeWatch(asyncio.Protocol):
    def __init__(self, lost: Callable[[], None]) -> None:
        self.lost = lost

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:  # the reader went away (None: we closed it ourselves, at shutdown)
            self.lost()


class SnapshotSender:
    """Worker side: a Snapshot every SNAPSHOT_SECONDS down the pipe, and one at once when the supervisor asks (a
    scrape), skipped (never queued) while the supervisor is behind, so a stalled supervisor cannot make a
    worker's memory grow. Peer news from the control pipe goes to ``on_peer``.

    It is also the fallback for ``follow_supervisor``: the pipe closing or our parent changing means the
    supervisor is gone, and the worker stops as if told to (SIGTERM to itself: drain, then exit)."""

    def __init__(self, fd: int, control_fd: int = -1,
                 on_peer: Callable[[int, bool], None] | None = None) -> None:
        self.fd = fd
        self.control_fd = control_fd
        self.on_peer = on_peer
        self.parent = os.getppid()
        self.transport: asyncio.WriteTransport | None = None
        self.orphaned = False
        self.take: Callable[[], Snapshot] | None = None
        self._control = bytearray()

    async def run(self, take: Callable[[], Snapshot]) -> None:
        loop = asyncio.get_running_loop()
        self.take = take
        pipe = os.fdopen(self.fd, "wb", buffering=0)
        self.transport, _ = await loop.connect_write_pipe(lambda: _PipeWatch(self._supervisor_gone), pipe)
        if self.control_fd >= 0:
            os.set_blocking(self.control_fd, False)
            loop.add_reader(self.control_fd, self._control_readable)
        try:
            while True:
                if os.getppid() != self.parent:
                    self._supervisor_gone()
                self.send(take)
                await asyncio.sleep(SNAPSHOT_SECONDS)
        finally:
            if self.control_fd >= 0:
                loop.remove_reader(self.control_fd)

    def _control_readable(self) -> None:
        try:
            data = os.read(self.control_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the supervisor closed it: it is gone
            asyncio.get_running_loop().remove_reader(self.control_fd)
            self._supervisor_gone()
            return
        self._control += data
        while len(self._control) >= CONTROL.size:
            kind, number = CONTROL.unpack_from(self._control)
            del self._control[: CONTROL.size]
            if kind == SNAPSHOT and self.take is not None:
                self.send(self.take, number)
            elif kind in (PEER_DOWN, PEER_UP) and self.on_peer is not None:
                self.on_peer(number, kind == PEER_UP)

    def _supervisor_gone(self) -> None:
        if not self.orphaned:
            self.orphaned = True
            log.error("the supervisor is gone: stopping this worker")
            os.kill(os.getpid(), signal.SIGTERM)

    def send(self, take: Callable[[], Snapshot], scrape: int = 0) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > 1 << 20:
            return
        data = pickle.dumps(take(), protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(FRAME.pack(len(data), scrape) + data)
