"""Composition root: config -> policy -> pipeline -> transports, metrics, reload; and the shutdown order.

Start-up binds every listener before saying ``resolver ready``, so a supervisor (or a test) can wait on that
line. Shutdown: close listeners, let in-flight upstream queries finish for a bounded time, then cancel them.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from resolver import build
from resolver.config.loader import system_nameservers
from resolver.config.model import Config, Endpoint, QueryLogConfig
from resolver.config.policy import ListSource
from resolver.core.access import AccessList, RateLimiter
from resolver.core.cache import Cache
from resolver.core.pipeline import Pipeline
from resolver.core.stats import Stats
from resolver.core.wire import Query
from resolver.errors import ConfigError
from resolver.lists.load import Loaded
from resolver.net.listeners import TcpListener, UdpListener
from resolver.net.upstream import UpstreamPool
from resolver.ops.metrics import MetricsServer
from resolver.ops.querylog import QueryLog
from resolver.ops.reload import Reloader
from resolver.ops.snapshot import take
from resolver.ops.workers import SnapshotSender
from resolver.tasks import TaskSet

log = logging.getLogger("resolver")

# Distinct questions that may wait on upstreams at once; past it new misses get SERVFAIL at once.
MAX_INFLIGHT = 10_000
DRAIN_SECONDS = 5.0
PROBE_SECONDS = 10.0  # upstream health probe interval
READY_WITHIN = 30.0  # /readyz wants a good upstream reply at most this old
MONITOR_LOG_SECONDS = 60
UDP_RCVBUF = 4 << 20
GC_YOUNG = 10_000  # tracked objects allocated (net) between young-generation collections


def _worker_log(config: QueryLogConfig, worker: int) -> QueryLogConfig:
    """One query log file per worker (queries.w0.jsonl, …): rotation needs a single writer per file."""
    if config.path is None:
        return config
    return replace(config, path=config.path.with_name(f"{config.path.stem}.w{worker}{config.path.suffix}"))


class Server:
    def __init__(self, config_factory: Callable[[], Config], config: Config, loaded: Loaded,
                 worker: int | None = None, snapshot_fd: int | None = None) -> None:
        self.worker = worker  # index when one of --workers N: share ports, report to the supervisor
        self.snapshot_fd = snapshot_fd
        if worker is not None:
            config = replace(config, metrics=None, query_log=_worker_log(config.query_log, worker))
        self.config_factory = config_factory  # re-reads the file and applies the flags again, for reloads
        self.config = config
        self.stats = Stats()
        self.cache = Cache(config.cache)
        self.pipeline = Pipeline(loaded.policy, self.cache, self.stats, time.monotonic, time.time)
        upstreams = config.upstreams or system_nameservers()
        if not upstreams:
            raise ConfigError("/etc/resolv.conf", "no nameserver lines; give upstreams in the config or --upstream")
        looped = set(upstreams) & set(config.listen)
        if looped:
            # resolv.conf pointing at ourselves is the classic way to build a query loop that melts the box.
            raise ConfigError(config.source, f"upstream {looped.pop()} is one of our own listen addresses")
        self.upstreams = UpstreamPool(upstreams, config.upstream_timeout, config.query_timeout, self.stats,
                                      config.upstream_strategy, config.upstream_ca)
        self.tcp = TcpListener(self.pipeline, self, config.tcp.idle_timeout, config.tcp.max_connections,
                               config.tcp.max_per_client)
        self.inflight: dict[bytes, list[tuple[Query, Callable[[bytes], None] | None]]] = {}
        self.tasks = TaskSet()  # reloads: drained on shutdown
        self.background = TaskSet()  # endless loops (watchers, refreshers): cancelled
        self.closers: list[Callable[[], None]] = []
        self.servers: list[asyncio.Server] = []
        self.bound: list[str] = []
        self.pipeline.access = AccessList(config.access)
        self.pipeline.prefetch = self.prefetch
        if config.rate_limit.qps > 0:
            self.pipeline.limiter = RateLimiter(config.rate_limit)
        self.reloader = Reloader(config_factory, config, self.pipeline, loaded)
        self.querylog: QueryLog | None = None
        if self.config.query_log.path is not None:
            self.querylog = QueryLog(self.config.query_log)
            self.pipeline.querylog = self.querylog.append
            self.pipeline.log_only_blocked = self.config.query_log.only_blocked
        self.stopping = asyncio.Event()
        self.started = time.time()

    # -- forwarding -----------------------------------------------------------------------------------------------

    def prefetch(self, query: Query) -> None:
        """Refresh a popular cache entry before it expires; nobody waits for the answer."""
        if query.cache_key not in self.inflight and len(self.inflight) < MAX_INFLIGHT // 2:
            self.forward(query, None)

    def forward(self, query: Query, respond: Callable[[bytes], None] | None) -> None:
        """Send a cache miss upstream; identical misses in flight share one upstream query."""
        key = query.cache_key
        waiters = self.inflight.get(key)
        if waiters is not None:
            waiters.append((query, respond))
            return
        if len(self.inflight) >= MAX_INFLIGHT:
            if respond is not None:
                respond(self.pipeline.on_shed(query))
            return
        self.inflight[key] = [(query, respond)]
        self.upstreams.resolve(query, self._answer)

    def _answer(self, query: Query, reply: bytes | None) -> None:
        """Hand the upstream reply to ``query`` (None: none came in time, SERVFAIL) and every query that waited on
        the same answer."""
        for waiting, respond in self.inflight.pop(query.cache_key, ()):
            try:
                if respond is None:  # a prefetch
                    if reply is not None:
                        self.pipeline.store(waiting, reply)
                else:
                    respond(self.pipeline.on_reply(waiting, reply) if reply is not None
                            else self.pipeline.on_failure(waiting))
            except Exception:  # a bug: one bad reply must not take the other waiters down with it
                log.exception("internal error answering %s", waiting.name)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        gc.collect()
        gc.freeze()  # the policy and the code loaded so far live for good: later collections skip them
        # With the default 700, the young generation is collected every few dozen forwarded queries, and each time
        # the hundreds of questions in flight survive and are promoted, to be walked again by the older
        # collections: a third of a forwarded query's CPU (W3: 113 -> 75 µs per query at 10,000).
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        if self.querylog is not None:
            self.querylog.start()
        for endpoint in self.config.listen:
            port = await self._bind_udp(endpoint)
            server = await asyncio.start_server(self.tcp.handle, endpoint.host, port, reuse_address=True,
                                                reuse_port=self.worker is not None, backlog=1024)
            self.servers.append(server)
            self.bound.append(str(Endpoint(endpoint.host, port)))
        if self.config.metrics is not None:
            metrics = MetricsServer(lambda: take(self), self.ready)
            m = self.config.metrics
            self.servers.append(await asyncio.start_server(metrics.handle, m.host, m.port, reuse_address=True))
        for signame in ("SIGTERM", "SIGINT"):
            loop.add_signal_handler(getattr(signal, signame), self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.tasks.spawn(self._reload("SIGHUP")))
        self.background.spawn(self.reloader.watch())
        self.background.spawn(self._report_monitored())
        self.background.spawn(self._probe_upstreams())
        for source in self.config.policy.lists:
            if source.url is not None:
                self.background.spawn(self._refresh(source))
        if self.snapshot_fd is not None:
            sender = SnapshotSender(self.snapshot_fd)
            self.background.spawn(sender.run(lambda: take(self)))
        what = "resolver ready" if self.worker is None else f"worker {self.worker} ready"
        log.info("%s: dns %s (udp+tcp), upstreams %s, metrics %s, policy %s, build %s", what,
                 " ".join(self.bound), " ".join(str(e) for e in self.upstreams.endpoints),
                 self.config.metrics or "off", self.pipeline.policy.version, build())

    async def _bind_udp(self, endpoint: Endpoint) -> int:
        family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
        sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            if self.worker is not None:  # the workers share the port; the kernel spreads clients over them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # A burst (a thousand phones waking at a shift change, a stalled core) must queue, not be dropped by
            # the kernel: ask for a deep receive buffer (the kernel caps it at net.core.rmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            sock.bind((endpoint.host, endpoint.port))
        except OSError:
            sock.close()
            raise
        self.closers.append(UdpListener(sock, self.pipeline, self).close)
        port: int = sock.getsockname()[1]
        return port

    async def _reload(self, why: str) -> None:
        await self.reloader.reload(why)

    async def _refresh(self, source: ListSource) -> None:
        # A copy fetched at start-up (or by a previous run) is not fetched again before its refresh is due.
        try:
            age = time.time() - source.cache_path(self.config.policy.list_cache_dir).stat().st_mtime
        except OSError:
            age = source.refresh
        await asyncio.sleep(max(0.0, source.refresh - age))
        await self.reloader.refresh(source)

    async def _probe_upstreams(self) -> None:
        while True:
            await self.upstreams.probe()
            await asyncio.sleep(PROBE_SECONDS)

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def ready(self) -> bool:
        """Listening, not shutting down, a policy loaded, and at least one upstream answering."""
        return bool(self.servers) and not self.stopping.is_set() and self.upstreams.healthy(READY_WITHIN)

    async def _report_monitored(self) -> None:
        """Monitor mode is "logged as would-be blocks": one summary line a minute, never a line per query."""
        last: dict[tuple[str, str], int] = {}
        while True:
            await asyncio.sleep(MONITOR_LOG_SECONDS)
            now = dict(self.stats.monitored)
            delta = {k: v - last.get(k, 0) for k, v in now.items() if v != last.get(k, 0)}
            if delta:
                log.info("monitor mode, would-be blocks in the last %ds: %s", MONITOR_LOG_SECONDS,
                         ", ".join(f"{p}/{g}={n}" for (p, g), n in sorted(delta.items())))
            last = now

    async def run(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting TCP, answer what is in flight (UDP stays open meanwhile), then close and cancel."""
        log.info("shutting down: draining %d in-flight queries", len(self.inflight))
        for server in self.servers:
            server.close()
        self.background.cancel()
        drained = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while (self.inflight or self.tasks) and asyncio.get_running_loop().time() < drained:
            await asyncio.sleep(0.02)  # forwards run on callbacks, not tasks: nothing to wait on but the table
        for close in self.closers:
            close()
        self.tasks.cancel()
        self.upstreams.close()
        if self.querylog is not None:
            self.querylog.close()
        log.info("stopped")
