"""``--workers N``: N processes share the DNS ports (SO_REUSEPORT), one supervisor watches them.

The supervisor starts each worker as a fresh ``resolver serve`` process (no fork of a running event loop),
restarts one that dies, forwards SIGHUP (every worker reloads) and SIGTERM (every worker drains, bounded), and
serves the metrics: each worker sends a Snapshot a second down a pipe, and the supervisor adds them up, keeping
what dead workers had counted so no counter goes backwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from resolver.config.model import Config, Endpoint
from resolver.ops.metrics import MetricsServer
from resolver.ops.snapshot import Snapshot, merge
from resolver.tasks import TaskSet

log = logging.getLogger("resolver.ops.workers")
_FRAME = struct.Struct("!I")
SNAPSHOT_SECONDS = 1.0
RESTART_BACKOFF = 1.0
STOP_SECONDS = 10.0


def pin_ports(config: Config) -> Config:
    """Workers must all bind the same port: turn port 0 into a concrete free port (free for UDP and TCP)."""
    listen = []
    for endpoint in config.listen:
        if endpoint.port != 0:
            listen.append(endpoint)
            continue
        family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
        for _ in range(50):
            with socket.socket(family, socket.SOCK_DGRAM) as udp, socket.socket(family, socket.SOCK_STREAM) as tcp:
                udp.bind((endpoint.host, 0))
                port = udp.getsockname()[1]
                try:
                    tcp.bind((endpoint.host, port))
                except OSError:
                    continue
            listen.append(Endpoint(endpoint.host, port))
            break
    return replace(config, listen=tuple(listen))


@dataclass(slots=True)
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    latest: Snapshot | None = None
    buffer: bytearray = field(default_factory=bytearray)
    transport: asyncio.ReadTransport | None = None


class _SnapshotReader(asyncio.Protocol):
    def __init__(self, supervisor: Supervisor, worker: Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker

    def data_received(self, data: bytes) -> None:
        buffer = self.worker.buffer
        buffer += data
        while len(buffer) >= 4:
            size = _FRAME.unpack_from(buffer)[0]
            if len(buffer) < 4 + size:
                return
            # The pipe comes from a child we started ourselves, so unpickling it is safe.
            self.worker.latest = pickle.loads(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
        if self.worker.latest is not None:
            self.supervisor.check_ready()

    def connection_lost(self, exc: Exception | None) -> None:
        self.supervisor.lost(self.worker)


class Supervisor:
    def __init__(self, count: int, argv: Sequence[str], config: Config) -> None:
        self.count = count
        self.argv = list(argv)
        self.config = config
        self.workers = [Worker(i) for i in range(count)]
        self.retired: Snapshot | None = None
        self.restarts = 0
        self.stopping = False
        self.announced = False
        self.done = asyncio.Event()
        self.tasks = TaskSet()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signame in ("SIGTERM", "SIGINT"):
            loop.add_signal_handler(getattr(signal, signame), lambda: self.tasks.spawn(self.stop()))
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        servers = []
        if self.config.metrics is not None:
            m = self.config.metrics
            metrics = MetricsServer(self.snapshot, self.ready)
            servers.append(await asyncio.start_server(metrics.handle, m.host, m.port, reuse_address=True))
        for worker in self.workers:
            await self.spawn(worker)
        await self.done.wait()
        for server in servers:
            server.close()
        return 0

    async def spawn(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        args = [sys.executable, "-m", "resolver", *self.argv, "--worker", f"{worker.index}:{write_fd}"]
        worker.proc = subprocess.Popen(args, pass_fds=(write_fd,))
        os.close(write_fd)
        worker.buffer.clear()
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        worker.transport, _ = await loop.connect_read_pipe(lambda: _SnapshotReader(self, worker), pipe)

    def lost(self, worker: Worker) -> None:
        """The worker's pipe closed: it exited. Keep its counts, and start a new one unless we are stopping."""
        if worker.latest is not None:
            self.retired = merge([], merge([worker.latest], self.retired))
            worker.latest = None
        if self.stopping:
            if all(w.latest is None and (w.proc is None or w.proc.poll() is not None) for w in self.workers):
                self.done.set()
            return
        code = worker.proc.wait() if worker.proc is not None else None
        log.error("worker %d exited (status %s); restarting it in %.0fs", worker.index, code, RESTART_BACKOFF)

        def restart() -> None:
            # A signal sent to the whole process group reaches the workers first: by now we may be stopping.
            if not self.stopping:
                self.restarts += 1
                self.tasks.spawn(self.spawn(worker))
            elif all(w.proc is None or w.proc.poll() is not None for w in self.workers):
                self.done.set()

        asyncio.get_running_loop().call_later(RESTART_BACKOFF, restart)

    def check_ready(self) -> None:
        # Every worker reports only after binding its listeners: once all have, the service is up.
        if not self.announced and all(w.latest is not None for w in self.workers):
            self.announced = True
            log.info("resolver ready: dns %s (udp+tcp), %d workers, metrics %s",
                     " ".join(str(e) for e in self.config.listen), self.count, self.config.metrics or "off")

    def ready(self) -> bool:
        return not self.stopping and all(w.latest is not None and w.latest.ready for w in self.workers)

    def snapshot(self) -> Snapshot:
        parts = [w.latest for w in self.workers if w.latest is not None]
        snap = merge(parts, self.retired) if parts or self.retired is not None else None
        if snap is None:
            raise RuntimeError("no worker has reported yet")
        snap.counters["worker_restarts"] = self.restarts
        return snap

    def _forward_hup(self) -> None:
        log.info("SIGHUP: every worker reloads")
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down %d workers", self.count)
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self.workers:
            while worker.proc is not None and worker.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if worker.proc is not None and worker.proc.poll() is None:
                log.error("worker %d did not stop in %.0fs; killing it", worker.index, STOP_SECONDS)
                worker.proc.kill()
                worker.proc.wait()
        self.done.set()


class SnapshotSender:
    """Worker side: a Snapshot a second down the pipe, skipped (never queued) if the supervisor is behind."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.transport: asyncio.WriteTransport | None = None

    async def run(self, take: object) -> None:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self.fd, "wb", buffering=0)
        self.transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
        while True:
            self.send(take)
            await asyncio.sleep(SNAPSHOT_SECONDS)

    def send(self, take: object) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > 1 << 20:
            return
        data = pickle.dumps(take() if callable(take) else take, protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(_FRAME.pack(len(data)) + data)
