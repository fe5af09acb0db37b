"""The servers under test and the upstream: how each is configured, started, and told to reload its blocklist.

All of them listen on 127.0.0.1 only, forward to the same loopback authoritative server (nsd) and block the
same generated domains with the same meaning (the domain and every name below it answer 0.0.0.0 / ::).

Reload support differs, and the table says which method was measured:
- resolver: SIGHUP rebuilds the policy off the event loop and swaps it in; the old one serves meanwhile.
- unbound: SIGHUP re-reads the whole configuration (local-zones included) and drops its cache; it does not
  answer while it reloads.
- dnsmasq: SIGHUP clears the cache and re-reads hosts files only, never ``address=`` lines, so a changed
  blocklist means a restart (its cost is the load time). Pi-hole's FTL, a dnsmasq fork, reads its lists from
  its own database instead.
- naive dnslib: SIGHUP re-reads the list into a new set (a few lines, so the peer has it too).
- canned: no list.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadgen import ANSWER_V4, Data, size_label
from procs import HOST, Proc

# The server on CPU 1, dnsperf and the upstream on CPU 0. For the scale-out run (two workers against one) both
# sides get both CPUs: LOAD_SERVER_CPUS=0,1 LOAD_CLIENT_CPUS=0,1 (taskset -c lists).
SERVER_CPU = os.environ.get("LOAD_SERVER_CPUS", "1")
CLIENT_CPU = os.environ.get("LOAD_CLIENT_CPUS", "0")
HERE = Path(__file__).resolve().parent
DEFAULT_RESOLVER_CONFIG = "# Only the benchmark blocklist decides: no platform is blocked.\npolicy:\n  block: []\n"


@dataclass
class Context:
    out: Path
    data: Data
    auth_port: int
    resolver_src: Path
    resolver_config: str  # YAML text for -c
    workers: int  # HOOK(workers): more than 1 only once `resolver serve --workers` exists


class Server:
    name = ""
    blocks = True
    reload_method = "n/a"

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        raise NotImplementedError

    def reload(self, proc: Proc) -> Callable[[], bool] | None:
        """Ask ``proc`` to reload its list; return a predicate that holds once the reload is done, or None."""
        return None

    def notes(self, ctx: Context) -> list[str]:
        return []

    def _log(self, ctx: Context, size: int) -> Path:
        (ctx.out / "logs").mkdir(exist_ok=True)
        return ctx.out / "logs" / f"{self.name}-{size_label(size)}.log"

    def _conf(self, ctx: Context, name: str, text: str) -> Path:
        (ctx.out / "conf").mkdir(exist_ok=True)
        path = ctx.out / "conf" / name
        path.write_text(text)
        return path


def _log_count(proc: Proc, marker: str) -> int:
    return proc.log_text().count(marker)


def _after_signal(proc: Proc, marker: str, sig: int) -> Callable[[], bool]:
    before = _log_count(proc, marker)
    proc.signal(sig)
    return lambda: _log_count(proc, marker) > before


class Resolver(Server):
    name = "resolver"
    reload_method = "SIGHUP"

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        config = self._conf(ctx, "resolver.yaml", ctx.resolver_config)
        argv = [sys.executable, "-m", "resolver", "serve", "-c", str(config), "--listen", f"{HOST}:{port}",
                "--upstream", f"{HOST}:{ctx.auth_port}", "--blocklist", str(ctx.data.blocklist(size))]
        if workers_supported(ctx):  # always explicit: the server's default is one worker per CPU
            argv += ["--workers", str(ctx.workers)]
        env = dict(os.environ, PYTHONPATH=str(ctx.resolver_src), PYTHONUNBUFFERED="1")
        return Proc(self.name, argv, SERVER_CPU, self._log(ctx, size), cwd=ctx.resolver_src, env=env)

    def reload(self, proc: Proc) -> Callable[[], bool]:
        before = _log_count(proc, "reload refused")
        done = _after_signal(proc, "policy reloaded", signal.SIGHUP)

        def check() -> bool:
            if _log_count(proc, "reload refused") > before:
                raise RuntimeError("resolver refused the reload:\n" + proc.log_text()[-2000:])
            return done()

        return check

    def notes(self, ctx: Context) -> list[str]:
        notes = []
        if ctx.workers > 1:
            if workers_supported(ctx):
                notes.append(f"resolver started with --workers {ctx.workers}")
            else:
                notes.append(f"--workers {ctx.workers} asked for, but `resolver serve` has no --workers yet: ran one")
        return notes


def workers_supported(ctx: Context) -> bool:
    """HOOK(workers): multi-core scale-out is measured once `resolver serve --workers N` exists."""
    env = dict(os.environ, PYTHONPATH=str(ctx.resolver_src))
    help_text = subprocess.run([sys.executable, "-m", "resolver", "serve", "--help"], cwd=ctx.resolver_src, env=env,
                               capture_output=True, text=True, timeout=60).stdout
    return "--workers" in help_text


class Dnsmasq(Server):
    name = "dnsmasq"
    reload_method = "restart (SIGHUP skips address= lines)"

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        config = self._conf(ctx, "dnsmasq.conf", "\n".join([
            f"port={port}",
            f"listen-address={HOST}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            f"server={HOST}#{ctx.auth_port}",
            "cache-size=10000",
            # The default of 150 concurrent forwards would drop W3 queries at dnsperf's outstanding bound; our
            # resolver allows 10,000 distinct misses in flight, so dnsmasq gets room too.
            "dns-forward-max=5000",
            "user=root",
            "pid-file=",
            "log-facility=-",
            f"conf-file={ctx.data.dnsmasq_blocklist(size)}",
            "",
        ]))
        return Proc(self.name, ["dnsmasq", "--keep-in-foreground", f"--conf-file={config}"], SERVER_CPU,
                    self._log(ctx, size))


class Unbound(Server):
    name = "unbound"
    reload_method = "SIGHUP (full re-read)"

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        config = self._conf(ctx, "unbound.conf", "\n".join([
            "server:",
            f"  interface: {HOST}",
            f"  port: {port}",
            "  do-ip6: no",
            "  num-threads: 2",
            "  so-reuseport: yes",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{ctx.out / "conf"}"',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            "  do-daemonize: no",
            '  module-config: "iterator"',  # no validator: the box is offline and the zone is unsigned
            "  do-not-query-localhost: no",
            f"  access-control: {HOST}/32 allow",
            '  local-zone: "test." nodefault',  # test. is a default local zone (RFC 6761); bench.test lives there
            f'  include: "{ctx.data.unbound_blocklist(size)}"',
            "forward-zone:",
            '  name: "."',
            f"  forward-addr: {HOST}@{ctx.auth_port}",
            "remote-control:",
            "  control-enable: no",
            "",
        ]))
        return Proc(self.name, ["unbound", "-d", "-c", str(config)], SERVER_CPU, self._log(ctx, size))

    def reload(self, proc: Proc) -> Callable[[], bool]:
        return _after_signal(proc, "start of service", signal.SIGHUP)


class Naive(Server):
    name = "dnslib"
    reload_method = "SIGHUP (new set)"

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        argv = [sys.executable, str(HERE / "naive_dnslib.py"), "--listen", f"{HOST}:{port}",
                "--upstream", f"{HOST}:{ctx.auth_port}", "--blocklist", str(ctx.data.blocklist(size))]
        return Proc(self.name, argv, SERVER_CPU, self._log(ctx, size), env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def reload(self, proc: Proc) -> Callable[[], bool]:
        return _after_signal(proc, "reloaded", signal.SIGHUP)


class Canned(Server):
    name = "ceiling"
    blocks = False

    def start(self, ctx: Context, size: int, port: int) -> Proc:
        binary = ctx.out / "canned"
        source = HERE / "canned.c"
        if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
        return Proc(self.name, [str(binary), HOST, str(port)], SERVER_CPU, self._log(ctx, size))


SERVERS: dict[str, Server] = {s.name: s for s in (Resolver(), Dnsmasq(), Unbound(), Naive(), Canned())}


def start_upstream(ctx_out: Path, data: Data, port: int) -> Proc:
    """nsd on 127.0.0.1:PORT serving bench.test (wildcard A), pinned with dnsperf on CPU 0."""
    zone = data.zone()
    conf_dir = ctx_out / "conf"
    conf_dir.mkdir(exist_ok=True)
    logs = ctx_out / "logs"
    logs.mkdir(exist_ok=True)
    config = conf_dir / "nsd.conf"
    config.write_text("\n".join([
        "server:",
        f"  ip-address: {HOST}@{port}",
        "  server-count: 1",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{zone.parent}"',
        f'  pidfile: "{conf_dir / "nsd.pid"}"',
        f'  xfrdfile: "{conf_dir / "nsd-xfrd.state"}"',
        f'  zonelistfile: "{conf_dir / "nsd-zone.list"}"',
        '  database: ""',
        "  do-ip6: no",
        "  verbosity: 1",
        "  rrl-ratelimit: 0",  # response rate limiting would throttle the one loopback client
        "  rrl-whitelist-ratelimit: 0",
        "remote-control:",
        "  control-enable: no",
        "zone:",
        '  name: "bench.test"',
        f'  zonefile: "{zone.name}"',
        "",
    ]))
    return Proc("nsd", ["nsd", "-d", "-c", str(config)], CLIENT_CPU, logs / "nsd.log")


def expected_block_answer(server: Server) -> str:
    return "0.0.0.0" if server.blocks else ANSWER_V4


def missing_tools(names: list[str]) -> list[str]:
    tools = {"dnsperf", "taskset", "nsd"}
    for name in names:
        tools.update({"dnsmasq": ["dnsmasq"], "unbound": ["unbound"], "ceiling": ["gcc"]}.get(name, []))
    return sorted(t for t in tools if shutil.which(t) is None)
