"""Composition root: config -> policy -> pipeline -> transports, metrics, reload; and the shutdown order.

Start-up binds every listener before saying ``resolver ready``, so a supervisor (or a test) can wait on that
line. Shutdown: close listeners, let in-flight upstream queries finish for a bounded time, then cancel them.
"""

from __future__ import annotations

import _socket
import asyncio
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
from resolver.errors import ConfigError, ListenError
from resolver.lists.load import Loaded
from resolver.net.encrypted import EncryptedListeners, proxied_tcp
from resolver.net.forwarder import Forwarder
from resolver.net.limits import ConnectionTable, Gate, open_fds
from resolver.net.listeners import TcpListener, UdpListener
from resolver.net.peers import Route
from resolver.net.sockets import bind_tcp, bind_udp, reason
from resolver.net.upstream import UpstreamPool
from resolver.ops.link import SnapshotSender, WorkerLink
from resolver.ops.metrics import MetricsServer
from resolver.ops.querylog import QueryLog
from resolver.ops.reload import Reloader
from resolver.ops.snapshot import Snapshot, take
from resolver.ops.systemd import Notifier
from resolver.tasks import TaskSet

log = logging.getLogger("resolver")

DRAIN_SECONDS = 5.0
PROBE_SECONDS = 10.0  # upstream health probe interval
MONITOR_LOG_SECONDS = 60
GC_YOUNG = 10_000  # tracked objects allocated (net) between young-generation collections


def _worker_log(config: QueryLogConfig, worker: int) -> QueryLogConfig:
    """One query log file per worker (queries.w0.jsonl, …): rotation needs a single writer per file."""
    if config.path is None:
        return config
    return replace(config, path=config.path.with_name(f"{config.path.stem}.w{worker}{config.path.suffix}"))


class Server:
    def __init__(self, config_factory: Callable[[], Config], config: Config, loaded: Loaded,
                 link: WorkerLink | None = None) -> None:
        self.link = link  # one of --workers N: share ports, report to the supervisor, share one cache
        worker = self.worker = None if link is None else link.index
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
                                      config.upstream_strategy, config.upstream_ca,
                                      avoid_ports=frozenset(e.port for e in config.listen))
        self.route: Route | None = None  # with peer workers: a miss goes to its name's owner (net/peers.py)
        if link is not None and link.peer_fds:
            peers = {i: socket.socket(fileno=fd) for i, fd in link.peer_fds.items()}
            self.route = Route(self.upstreams, self.pipeline, link.index, link.count, peers, config.query_timeout)
        self.forwarder = Forwarder(self.pipeline, self.route or self.upstreams)
        self.tasks = TaskSet()  # reloads: drained on shutdown
        self.background = TaskSet()  # endless loops (watchers, refreshers): cancelled
        self.closers: list[Callable[[], None]] = []
        self.servers: list[asyncio.Server] = []
        self.bound: list[str] = []
        self.pipeline.access = AccessList(config.access)
        tcp = config.tcp
        self.gate = Gate(ConnectionTable(tcp.max_connections, tcp.max_per_client, tcp.max_per_network),
                         self.pipeline.access)
        self.tcp = TcpListener(self.pipeline, self.forwarder, tcp, self.gate)
        self.encrypted = EncryptedListeners(config, self.pipeline, self.forwarder, self.gate)  # DoT, DoH if set
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
        self.systemd = Notifier.from_env() if worker is None else Notifier()  # a worker's supervisor speaks

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        gc.collect()
        gc.freeze()  # the policy and the code loaded so far live for good: later collections skip them
        # With the default 700, the young generation is collected every few dozen forwarded queries, and each time
        # the hundreds of questions in flight survive and are promoted, to be walked again by the older
        # collections, a large share of a forwarded query's CPU (tests/load/RESULTS.md).
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        proxied = proxied_tcp(self.config, self.tcp)  # PROXY v2 from trusted balancers
        for i, endpoint in enumerate(self.config.listen):
            tcp, port = self._listen(endpoint, i)
            server = await loop.create_server(proxied or self.tcp.protocol, sock=tcp, backlog=1024)
            self.servers.append(server)
            self.bound.append(str(Endpoint(endpoint.host, port)))
        await self.encrypted.start(self.worker is not None)
        self.servers += self.encrypted.servers
        if self.config.metrics is not None:
            metrics = MetricsServer(self.snapshot, self.ready)
            m = self.config.metrics
            try:
                self.servers.append(await asyncio.start_server(metrics.handle, m.host, m.port, reuse_address=True))
            except OSError as err:
                raise ListenError(f"cannot listen on {m} (metrics): {reason(err)}") from None
        if self.querylog is not None:  # (after binding: a bind error must not leave its thread behind)
            self.querylog.start()
        for signame in ("SIGTERM", "SIGINT"):
            loop.add_signal_handler(getattr(signal, signame), self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.tasks.spawn(self._reload("SIGHUP")))
        self.background.spawn(self.reloader.watch())
        if self.encrypted.contexts is not None:
            self.background.spawn(self.encrypted.contexts.watch())  # certificate rotation
        self.background.spawn(self._report_monitored())
        self.background.spawn(self._probe_upstreams())
        self.background.spawn(self.systemd.watchdog())
        for source in self.config.policy.lists:
            if source.url is not None:
                self.background.spawn(self._refresh(source))
        if self.link is not None:
            on_peer = None if self.route is None else self.route.peer_state
            sender = SnapshotSender(self.link.snapshot_fd, self.link.control_fd, on_peer)
            self.background.spawn(sender.run(self.snapshot))
        what = "resolver ready" if self.worker is None else f"worker {self.worker} ready"
        if self.encrypted.bound:
            log.info("encrypted dns: %s", ", ".join(self.encrypted.bound))
        log.info("%s: dns %s (udp+tcp), upstreams %s, metrics %s, policy %s, build %s", what,
                 " ".join(self.bound), " ".join(str(e) for e in self.upstreams.endpoints),
                 self.config.metrics or "off", self.pipeline.policy.version, build())

    def _listen(self, endpoint: Endpoint, index: int) -> tuple[socket.socket, int]:
        """UDP and TCP on ``endpoint``; port 0 takes one free port for both. A worker's UDP socket is the one its
        supervisor bound for it (its place in the reuseport group steers queries to it: net/steer.py)."""
        shared = self.worker is not None
        if self.link is not None and index < len(self.link.udp_fds):
            udp = _socket.socket(fileno=self.link.udp_fds[index])
        else:
            udp = bind_udp(endpoint, shared, self.config.listen)
        port: int = udp.getsockname()[1]
        try:
            tcp = bind_tcp(Endpoint(endpoint.host, port), shared, self.config.listen)
        except ListenError:
            udp.close()
            raise
        self.closers.append(UdpListener(udp, self.pipeline, self.forwarder).close)
        return tcp, port

    async def _reload(self, why: str) -> None:
        self.systemd.reloading()
        await self.reloader.reload(why)
        self.systemd.ready(f"policy {self.pipeline.policy.version}")

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

    def snapshot(self) -> Snapshot:
        querylog = None if self.querylog is None else (self.querylog.written, self.querylog.dropped)
        return take(stats=self.stats, cache=self.cache, policy=self.pipeline.policy, reloads=self.reloader.stats,
                    upstreams=self.upstreams.upstream_stats, loop_now=self.loop_time(), tcp_rejected=self.gate.rejected,
                    querylog=querylog, ready=self.ready(), started=self.started, worker=self.worker or 0,
                    tcp_connections=self.gate.table.open, open_fds=open_fds())

    def ready(self) -> bool:
        """Listening, not shutting down, a policy loaded. Not upstream health: with every upstream down, serve-stale
        still answers, so no replica may leave its load balancer for it (/readyz?verbose shows the upstreams)."""
        return bool(self.servers) and not self.stopping.is_set()

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
        self.systemd.ready(f"dns {' '.join(self.bound)}, policy {self.pipeline.policy.version}")
        await self.stopping.wait()
        self.systemd.stopping()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting TCP, answer what is in flight (UDP stays open meanwhile), then close and cancel."""
        inflight = self.pipeline.inflight
        log.info("shutting down: draining %d in-flight queries", len(inflight))
        for server in self.servers:
            server.close()
        self.background.cancel()
        drained = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while (inflight or self.tasks) and asyncio.get_running_loop().time() < drained:
            await asyncio.sleep(0.02)  # forwards run on callbacks, not tasks: nothing to wait on but the table
        for close in self.closers:
            close()
        self.tasks.cancel()
        if self.route is not None:
            self.route.close()
        self.upstreams.close()
        if self.querylog is not None:
            self.querylog.close()
        log.info("stopped")
