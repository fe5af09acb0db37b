"""``--workers N``: N processes share the DNS ports (SO_REUSEPORT), one supervisor watches them.

The supervisor first claims the listen addresses (``net.sockets.claim``: refused when anyone holds one, held
until it exits), then starts each worker as a fresh ``resolver serve`` process (no fork of a running event loop),
restarts one that dies, forwards SIGHUP (every worker reloads) and SIGTERM (every worker drains, bounded), and
serves the metrics: each worker sends a Snapshot down a pipe every second and at once when a scrape asks for it
(so a scrape counts every query answered before it), and the supervisor adds them up, keeping what dead workers
had counted so no counter goes backwards.

One cache for all of them: the supervisor binds the UDP sockets and hands them out (``ops/fabric.py``), so the
kernel gives each query to the worker that owns its name (``net/steer.py``), and a worker asks a name's owner
for what comes to it over TCP, DoT or DoH (``net/peers.py``).

No orphans, no crash loop. A worker follows its supervisor out: the kernel sends it SIGTERM when the supervisor
dies, even by SIGKILL (``follow_supervisor``), and the snapshot sender notices a closed pipe or a new parent
where that is not available. A worker that exits START_FAILURES times in a row before it ever reported (it could
not start: its error line is above) stops the supervisor instead of being restarted for ever.

A worker alive but stuck (its event loop blocked, the process stopped) would keep its share of the names and
answer none of them. Every worker reports at least once a second, from its event loop; one silent for
SILENT_SECONDS is treated as dead for the steering and by its peers, so its names are answered by the others at
once, and it is back as soon as it reports again. One silent for HANG_SECONDS is killed and restarted.

``Supervisor`` holds the decisions and ``WorkerProcess`` (``ops/workerproc.py``) the plumbing, so the decisions
are tested on a fake clock without processes or sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from resolver import build
from resolver.config.model import Config, Endpoint
from resolver.errors import ListenError
from resolver.net.sockets import claim, reason
from resolver.ops.fabric import Fabric
from resolver.ops.link import PEER_DOWN, PEER_UP, SNAPSHOT
from resolver.ops.link import SnapshotSender as SnapshotSender
from resolver.ops.link import follow_supervisor as follow_supervisor
from resolver.ops.metrics import MetricsServer, NoSnapshotYet
from resolver.ops.snapshot import Snapshot, merge
from resolver.ops.workerproc import WorkerProcess

log = logging.getLogger("resolver.ops.workers")
RESTART_BACKOFF = 1.0
STOP_SECONDS = 10.0
START_FAILURES = 3  # exits in a row before a first report: the worker cannot start, restarting will not help
SCRAPE_WAIT = 1.0  # how long a scrape waits for every worker's fresh snapshot before it makes do with the last
# A worker reports every SNAPSHOT_SECONDS (ops/link.py). Silence this long means its loop is not running: a reload's
# build runs beside the loop, not in it, so no healthy worker is ever this quiet.
SILENT_SECONDS = 3.0
HANG_SECONDS = 20.0  # silent this long: stuck for good, killed (below systemd's WatchdogSec, which sees only us)
CHECK_SECONDS = 1.0


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
    """A worker process as the supervisor sees it: something to signal, to tell things over its control pipe
    (``ops/link.py``), and to kill when it will not stop."""

    def signal(self, signum: int) -> None: ...

    def tell(self, kind: bytes, number: int) -> None: ...

    def kill(self) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """When to act later (the event loop in service, a fake clock in the tests)."""

    def call_later(self, delay: float, callback: Callable[[], None], /) -> Cancellable: ...

    def time(self) -> float: ...


@dataclass(slots=True)
class Worker:
    index: int
    child: Child | None = None  # None: not started yet, or dead and waiting for its restart
    latest: Snapshot | None = None
    up: bool = False  # has reported since it was last started
    failed_starts: int = 0  # exits in a row before a first report
    scrape: int = 0  # the last scrape it answered
    heard: float = 0.0  # when it last reported (the supervisor's clock)
    silent: bool = False  # up, but has not reported for SILENT_SECONDS: its names go to the others meanwhile


class Supervisor:
    """The decisions: when to start, restart, signal and kill workers, when the service is ready, and what the
    metrics add up to. Processes reach it as events (``reported``, ``exited``); it acts on them through a starter
    and a timer, so the tests drive it with fakes and a fake clock. ``run`` wires it to real processes."""

    def __init__(self, count: int, argv: Sequence[str], config: Config, *,
                 start: Callable[[int], Child] | None = None, timers: Timers | None = None,
                 env: Mapping[str, str] | None = None, chosen: str = "--workers") -> None:
        self.count = count
        self.chosen = chosen  # where the count came from, for the log
        self.fabric: Fabric | None = None  # the sockets held for the workers (``run``)
        self.scrapes = 0
        self._scrape_waits: list[tuple[int, asyncio.Future[None]]] = []
        self.argv = list(argv)
        self.config = config
        self.env = dict(env or {})  # added to the workers' environment (the query log's run salt)
        self.start_child = start  # index -> a started worker; by default a real process, made in ``run``
        self.timers = timers
        self.workers = [Worker(i) for i in range(count)]
        self._last_check = 0.0
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
            log.info("starting %d workers (%s)", self.count, self.chosen)
            self.fabric = Fabric(self.config.listen, self.count)
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
                    servers.append(await asyncio.start_server(self._scraped(metrics), m.host, m.port,
                                                              reuse_address=True))
                except OSError as err:
                    raise ListenError(f"cannot listen on {m} (metrics): {reason(err)}") from None
            self.start()
            await finished.wait()
            for server in servers:
                server.close()
        finally:
            for sock in held:
                sock.close()
            if self.fabric is not None:
                self.fabric.close()
        return self.exit_code

    def _scraped(self, metrics: MetricsServer) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                             Coroutine[Any, Any, None]]:
        """Serve a metrics connection. The workers are asked for fresh counts only once its request has been read
        and shows counts: an empty connection or a /healthz probe must not cost every worker a snapshot."""
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await metrics.handle(reader, writer, refresh=self.fresh)

        return handle

    def _start_process(self, index: int) -> Child:
        return WorkerProcess(index, self.argv, self.reported, self.exited, self.env, self.fabric)

    def _timers(self) -> Timers:
        if self.timers is None:
            raise RuntimeError("the supervisor has no timers: give it some, or start it with run()")
        return self.timers

    # -- events ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        self._last_check = self._timers().time()
        self._timers().call_later(CHECK_SECONDS, self._check_silence)

    def _spawn(self, worker: Worker) -> None:
        if self.start_child is None:
            raise RuntimeError("the supervisor has no way to start a worker: give it one, or start it with run()")
        worker.latest = None
        worker.up = worker.silent = False
        worker.scrape = self.scrapes
        worker.child = self.start_child(worker.index)
        for other in self.workers:  # the peers it must not ask until they are back
            if other.child is None and other is not worker:
                worker.child.tell(PEER_DOWN, other.index)

    def reported(self, index: int, snap: Snapshot, scrape: int = 0) -> None:
        """Worker ``index`` sent a snapshot (it does so only once its listeners are bound); ``scrape``: the
        scrape it answers, 0 for a periodic one."""
        worker = self.workers[index]
        if worker.child is None:
            return
        worker.latest = snap
        worker.scrape = max(worker.scrape, scrape)
        worker.heard = self._timers().time()
        if worker.silent:
            log.warning("worker %d reports again: its names are its own again", index)
        if not worker.up or worker.silent:
            worker.up, worker.silent = True, False
            self._tell_peers(index, PEER_UP)
            self._steer()
        worker.failed_starts = 0
        self._scrape_answered()
        # Once every worker has bound its listeners, the service is up.
        if not self.announced and all(w.latest is not None for w in self.workers):
            self.announced = True
            log.info("resolver ready: dns %s (udp+tcp), %d workers, metrics %s, build %s",
                     " ".join(str(e) for e in self.config.listen), self.count, self.config.metrics or "off", build())
            self.notify("READY=1")

    def exited(self, index: int, status: int | None) -> None:
        """Worker ``index`` is gone. Keep its counts, and start a new one unless we are stopping."""
        worker = self.workers[index]
        worker.child = None
        if worker.latest is not None:
            self.retired = merge([], merge([worker.latest], self.retired))
            worker.latest = None
        was_up, was_silent = worker.up, worker.silent
        worker.up = worker.silent = False
        self._scrape_answered()
        if self.stopping:
            self._finish_if_all_gone()
            return
        # Until it is back, its peers ask the upstream for its names, and its UDP share goes to a live worker.
        if not was_silent:  # a silent one's peers have been told already
            self._tell_peers(index, PEER_DOWN)
            self._steer()
        if not was_up:
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

    def _steer(self) -> None:
        """Give the UDP shares of the workers not answering now (starting, dead or silent) to live ones."""
        if self.fabric is not None:
            self.fabric.dead(w.index for w in self.workers if not w.up or w.silent)

    def _check_silence(self) -> None:
        """Every CHECK_SECONDS: a worker that has gone quiet loses its names to the others, then its life."""
        if self.stopping:
            return
        now = self._timers().time()
        # If this check itself comes late, our own loop was stalled, and the workers' reports wait unread in
        # their pipes: that silence is ours, so nobody is blamed for it.
        stalled = now - self._last_check > 2 * CHECK_SECONDS
        self._last_check = now
        for worker in self.workers:
            if worker.child is None or not worker.up:
                continue  # starting (a first report can take as long as the policy takes to load) or gone
            quiet = now - worker.heard
            if stalled:
                worker.heard = now
            elif quiet >= HANG_SECONDS:
                log.error("worker %d has not reported for %.0fs: it is stuck; killing it (it will be restarted)",
                          worker.index, HANG_SECONDS)
                worker.child.kill()
                worker.heard = now  # killed once; its exit brings the restart
            elif quiet >= SILENT_SECONDS and not worker.silent:
                worker.silent = True
                self._tell_peers(worker.index, PEER_DOWN)
                self._steer()
                log.warning("worker %d has not reported for %.0fs: its names go to the other workers until it "
                            "does", worker.index, SILENT_SECONDS)
        self._timers().call_later(CHECK_SECONDS, self._check_silence)

    def _tell_peers(self, index: int, kind: bytes) -> None:
        for other in self.workers:
            if other.child is not None and other.index != index:
                other.child.tell(kind, index)

    # -- exact scrapes --------------------------------------------------------------------------------------------

    async def fresh(self) -> None:
        """Ask every running worker for a snapshot now and wait (at most SCRAPE_WAIT) for them all, so a scrape
        counts every query answered before it. A worker that does not answer in time is counted as last
        reported."""
        self.scrapes += 1
        number = self.scrapes
        for worker in self.workers:
            if worker.child is not None and worker.up:
                worker.child.tell(SNAPSHOT, number)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._scrape_waits.append((number, waiter))
        self._scrape_answered()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), SCRAPE_WAIT)
        self._scrape_waits = [(n, w) for n, w in self._scrape_waits if w is not waiter]

    def _scrape_answered(self) -> None:
        for number, waiter in self._scrape_waits:
            # A silent worker is not waited for: it would only make every scrape wait the whole SCRAPE_WAIT.
            if not waiter.done() and all(w.scrape >= number for w in self.workers
                                         if w.child is not None and w.up and not w.silent):
                waiter.set_result(None)

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
            raise NoSnapshotYet("no worker has reported yet")
        snap.counters["worker_restarts"] = self.restarts
        return snap
