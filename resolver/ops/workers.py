"""``--workers N``: N processes share the DNS ports (SO_REUSEPORT), one supervisor watches them.

The supervisor first claims the listen addresses (``net.sockets.claim``: refused when anyone holds one, held
until it exits), then starts each worker as a fresh ``resolver serve`` process (no fork of a running event loop),
restarts one that dies, forwards SIGHUP (every worker reloads) and SIGTERM (every worker drains, bounded), and
serves the metrics: each worker sends a Snapshot down a pipe every SNAPSHOT_SECONDS, and the supervisor adds them
up, keeping what dead workers had counted so no counter goes backwards.

No orphans, no crash loop. A worker follows its supervisor out: the kernel sends it SIGTERM when the supervisor
dies, even by SIGKILL (``follow_supervisor``), and the snapshot sender notices a closed pipe or a new parent
where that is not available. A worker that exits START_FAILURES times in a row before it ever reported (it could
not start: its error line is above) stops the supervisor instead of being restarted for ever.

``Supervisor`` holds the decisions and ``WorkerProcess`` the plumbing (a process and its pipe), so the decisions
are tested on a fake clock without processes or sockets.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from resolver.config.model import Config, Endpoint
from resolver.errors import ListenError
from resolver.net.sockets import claim, reason
from resolver.ops.metrics import MetricsServer
from resolver.ops.snapshot import Snapshot, merge

log = logging.getLogger("resolver.ops.workers")
_FRAME = struct.Struct("!I")
SNAPSHOT_SECONDS = 1.0
RESTART_BACKOFF = 1.0
STOP_SECONDS = 10.0
START_FAILURES = 3  # exits in a row before a first report: the worker cannot start, restarting will not help
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


class Child(Protocol):
    """A worker process as the supervisor sees it: something to signal, and to kill when it will not stop."""

    def signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """When to act later (the event loop in service, a fake clock in the tests)."""

    def call_later(self, delay: float, callback: Callable[[], None], /) -> Cancellable: ...


@dataclass(slots=True)
class Worker:
    index: int
    child: Child | None = None  # None: not started yet, or dead and waiting for its restart
    latest: Snapshot | None = None
    up: bool = False  # has reported since it was last started
    failed_starts: int = 0  # exits in a row before a first report


class Supervisor:
    """The decisions: when to start, restart, signal and kill workers, when the service is ready, and what the
    metrics add up to. Processes reach it as events (``reported``, ``exited``); it acts on them through a starter
    and a timer, so the tests drive it with fakes and a fake clock. ``run`` wires it to real processes."""

    def __init__(self, count: int, argv: Sequence[str], config: Config, *,
                 start: Callable[[int], Child] | None = None, timers: Timers | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.count = count
        self.argv = list(argv)
        self.config = config
        self.env = dict(env or {})  # added to the workers' environment (the query log's run salt)
        self.start_child = start  # index -> a started worker; by default a real process, made in ``run``
        self.timers = timers
        self.workers = [Worker(i) for i in range(count)]
        self.retired: Snapshot | None = None
        self.restarts = 0
        self.stopping = False
        self.announced = False
        self.done = False
        self.exit_code = 0
        self.on_done: Callable[[], None] = lambda: None
        self._kill_timer: Cancellable | None = None
        self.notify: Callable[[str], None] = lambda line: None  # systemd's READY=1 / STOPPING=1 (ops/systemd.py)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.timers is None:
            self.timers = loop
        if self.start_child is None:
            self.start_child = self._start_process
        encrypted = self.config.encrypted
        # Before anything starts: an address in use is one error line, exit 2.
        held = claim(self.config.listen, encrypted.dot + encrypted.doh)
        try:
            finished = asyncio.Event()
            self.on_done = finished.set
            for signame in ("SIGTERM", "SIGINT"):
                loop.add_signal_handler(getattr(signal, signame), self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.hup)
            servers = []
            if self.config.metrics is not None:
                m = self.config.metrics
                metrics = MetricsServer(self.snapshot, self.ready)
                try:
                    servers.append(await asyncio.start_server(metrics.handle, m.host, m.port, reuse_address=True))
                except OSError as err:
                    raise ListenError(f"cannot listen on {m} (metrics): {reason(err)}") from None
            self.start()
            await finished.wait()
            for server in servers:
                server.close()
        finally:
            for sock in held:
                sock.close()
        return self.exit_code

    def _start_process(self, index: int) -> Child:
        return WorkerProcess(index, self.argv, self.reported, self.exited, self.env)

    def _timers(self) -> Timers:
        if self.timers is None:
            raise RuntimeError("the supervisor has no timers: give it some, or start it with run()")
        return self.timers

    # -- events ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        if self.start_child is None:
            raise RuntimeError("the supervisor has no way to start a worker: give it one, or start it with run()")
        worker.latest = None
        worker.up = False
        worker.child = self.start_child(worker.index)

    def reported(self, index: int, snap: Snapshot) -> None:
        """Worker ``index`` sent a snapshot (it does so only once its listeners are bound)."""
        worker = self.workers[index]
        if worker.child is None:
            return
        worker.latest = snap
        worker.up = True
        worker.failed_starts = 0
        # Once every worker has bound its listeners, the service is up.
        if not self.announced and all(w.latest is not None for w in self.workers):
            self.announced = True
            log.info("resolver ready: dns %s (udp+tcp), %d workers, metrics %s",
                     " ".join(str(e) for e in self.config.listen), self.count, self.config.metrics or "off")
            self.notify("READY=1")

    def exited(self, index: int, status: int | None) -> None:
        """Worker ``index`` is gone. Keep its counts, and start a new one unless we are stopping."""
        worker = self.workers[index]
        worker.child = None
        if worker.latest is not None:
            self.retired = merge([], merge([worker.latest], self.retired))
            worker.latest = None
        if self.stopping:
            self._finish_if_all_gone()
            return
        if not worker.up:
            worker.failed_starts += 1
            if worker.failed_starts >= START_FAILURES:
                log.error("worker %d could not start, %d times in a row (exit status %s; its error is above): "
                          "stopping, since restarting it again would not help", index, worker.failed_starts, status)
                self.exit_code = status if status is not None and status > 0 else 1
                self.stop()
                return
        log.error("worker %d exited (status %s); restarting it in %.0fs", index, status, RESTART_BACKOFF)

        def restart() -> None:
            # A signal sent to the whole process group reaches the workers first: by now we may be stopping.
            if not self.stopping and worker.child is None:
                self.restarts += 1
                self._spawn(worker)

        self._timers().call_later(RESTART_BACKOFF, restart)

    def hup(self) -> None:
        log.info("SIGHUP: every worker reloads")
        for worker in self.workers:
            if worker.child is not None:
                worker.child.signal(signal.SIGHUP)

    def stop(self) -> None:
        """Every worker drains; one still running after STOP_SECONDS is killed."""
        if self.stopping:
            return
        self.stopping = True
        self.notify("STOPPING=1")
        log.info("shutting down %d workers", self.count)
        for worker in self.workers:
            if worker.child is not None:
                worker.child.signal(signal.SIGTERM)
        if not self._finish_if_all_gone():
            self._kill_timer = self._timers().call_later(STOP_SECONDS, self._kill_stragglers)

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            if worker.child is not None:
                log.error("worker %d did not stop in %.0fs; killing it", worker.index, STOP_SECONDS)
                worker.child.kill()

    def _finish_if_all_gone(self) -> bool:
        if any(w.child is not None for w in self.workers):
            return False
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self.done:
            self.done = True
            self.on_done()
        return True

    # -- what the metrics server reads ----------------------------------------------------------------------------

    def ready(self) -> bool:
        return not self.stopping and all(w.latest is not None and w.latest.ready for w in self.workers)

    def snapshot(self) -> Snapshot:
        parts = [w.latest for w in self.workers if w.latest is not None]
        snap = merge(parts, self.retired) if parts or self.retired is not None else None
        if snap is None:
            raise RuntimeError("no worker has reported yet")
        snap.counters["worker_restarts"] = self.restarts
        return snap


class WorkerProcess:
    """The plumbing of one worker: a fresh ``resolver serve --worker INDEX:FD:PID`` process (never a fork of a
    running event loop; PID is ours, for ``follow_supervisor``) and the pipe it sends its snapshots down. The pipe
    closing is how its death is noticed."""

    def __init__(self, index: int, argv: Sequence[str], reported: Callable[[int, Snapshot], None],
                 exited: Callable[[int, int | None], None], env: Mapping[str, str] | None = None) -> None:
        self.index = index
        self.reported = reported
        self.exited = exited
        self.buffer = bytearray()
        read_fd, write_fd = os.pipe()
        args = [sys.executable, "-m", "resolver", *argv, "--worker", f"{index}:{write_fd}:{os.getpid()}"]
        try:
            self.proc = subprocess.Popen(args, pass_fds=(write_fd,), env={**os.environ, **(env or {})})
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.fd = read_fd
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(read_fd, self._readable)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            # The pipe closes as the process exits: this waits only for the kernel to finish the exit.
            self.exited(self.index, self.proc.wait())
            return
        buffer = self.buffer
        buffer += data
        latest: Snapshot | None = None
        while len(buffer) >= 4:
            size = _FRAME.unpack_from(buffer)[0]
            if len(buffer) < 4 + size:
                break
            # The pipe comes from a child we started ourselves, so unpickling it is safe.
            latest = pickle.loads(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
        if latest is not None:
            self.reported(self.index, latest)


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
    """Worker side: a Snapshot every SNAPSHOT_SECONDS down the pipe, skipped (never queued) while the supervisor
    is behind, so a stalled supervisor cannot make a worker's memory grow.

    It is also the fallback for ``follow_supervisor``: the pipe closing or our parent changing means the
    supervisor is gone, and the worker stops as if told to (SIGTERM to itself: drain, then exit)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.parent = os.getppid()
        self.transport: asyncio.WriteTransport | None = None
        self.orphaned = False

    async def run(self, take: Callable[[], Snapshot]) -> None:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self.fd, "wb", buffering=0)
        self.transport, _ = await loop.connect_write_pipe(lambda: _PipeWatch(self._supervisor_gone), pipe)
        while True:
            if os.getppid() != self.parent:
                self._supervisor_gone()
            self.send(take)
            await asyncio.sleep(SNAPSHOT_SECONDS)

    def _supervisor_gone(self) -> None:
        if not self.orphaned:
            self.orphaned = True
            log.error("the supervisor is gone: stopping this worker")
            os.kill(os.getpid(), signal.SIGTERM)

    def send(self, take: Callable[[], Snapshot]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > 1 << 20:
            return
        data = pickle.dumps(take(), protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(_FRAME.pack(len(data)) + data)
