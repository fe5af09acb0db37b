"""Run the real resolver as a subprocess on loopback and talk to it like a client would.

``ResolverProcess`` writes the config, picks free ports, starts ``python -m resolver serve`` and waits for the
``resolver ready`` line on stderr (a condition with a deadline, never a sleep). The query helpers use dnspython
and plain sockets, independent of anything in ``resolver/``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import yaml

from tests.support.authserver import format_address, recv_exact

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_MARK = "resolver ready"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


def free_port(host: str = "127.0.0.1", *, udp: bool = True) -> int:
    """A port free for TCP (and UDP, when ``udp``) on ``host`` at the time of the call."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            u = socket.socket(family, socket.SOCK_DGRAM)
            try:
                u.bind((host, port))
            except OSError:
                continue
            finally:
                u.close()
            return port
        finally:
            tcp.close()
    raise RuntimeError(f"no free port on {host}")


def ipv6_loopback_available() -> bool:
    """Whether ::1 can be bound here (containers sometimes run without IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m resolver ARGS`` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "resolver", *args],
        cwd=REPO_ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _only_loopback_upstreams(config: dict[str, Any] | None, upstreams: Sequence[str], extra: Sequence[str]) -> None:
    """Tests only ever talk to loopback: a server with no upstream would forward to /etc/resolv.conf (and probe
    it), so refuse to start one, and refuse any upstream that is not on 127.0.0.0/8 or ::1."""
    given = list(upstreams) + [extra[i + 1] for i, a in enumerate(extra[:-1]) if a == "--upstream"]
    if not given and config is not None:
        given = [str(u) for u in config.get("upstreams") or []]
    if not given:
        raise ValueError("a test resolver needs a loopback upstream (it would use /etc/resolv.conf)")
    for upstream in given:
        host = upstream.split("://")[-1].split("#")[0]
        host = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host.count(":") == 1 \
            else host
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test upstream {upstream} is not on loopback")


class ResolverProcess:
    """The real server, started on free loopback ports with the given config and upstreams."""

    def __init__(
        self,
        config: dict[str, Any] | None,
        extra_args: Sequence[str],
        tmp_path: Path,
        *,
        upstreams: Sequence[str] = (),
        metrics: bool = False,
        listen_host: str = "127.0.0.1",
        port: int | None = None,
        workers: int | None = 1,
        preexec_fn: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.preexec_fn = preexec_fn  # run in the child before exec: e.g. lower its open-file limit
        self.env = {**_child_env(), **(env or {})}
        self.config = config
        self.tmp_path = tmp_path
        self.host = listen_host
        self.port = port if port is not None else free_port(listen_host)
        self.metrics_port: int | None = free_port("127.0.0.1", udp=False) if metrics else None
        self.config_path: Path | None = None
        args = [sys.executable, "-m", "resolver", "serve"]
        if config is not None:
            self.config_path = write_config(tmp_path / f"resolver-{self.port}.yaml", config)
            args += ["-c", str(self.config_path)]
        args += ["--listen", format_address(listen_host, self.port)]
        for upstream in upstreams:
            args += ["--upstream", upstream]
        if self.metrics_port is not None:
            args += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
        args += list(extra_args)
        if workers is not None and not any(a == "--workers" or a.startswith("--workers=") for a in extra_args):
            # One process unless a test asks for more (or for the server's default, workers=None): with several,
            # a repeated question may land on another worker's cache (SO_REUSEPORT spreads by source port),
            # which tests of one cache must not depend on.
            args += ["--workers", str(workers)]
        _only_loopback_upstreams(config, upstreams, extra_args)
        self.args = args
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> ResolverProcess:
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=self.preexec_fn,
        )
        self._reader = threading.Thread(target=self._read_stderr, name="resolver-stderr", daemon=True)
        self._reader.start()
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._eof or any(READY_MARK in line for line in self._lines), READY_TIMEOUT
            )
            became_ready = any(READY_MARK in line for line in self._lines)
        if not became_ready:
            self.stop()
            why = "exited early" if ready else f"did not print {READY_MARK!r} within {READY_TIMEOUT:.0f}s"
            raise RuntimeError(
                f"resolver {why} (exit code {self.proc.returncode})\n"
                f"command: {' '.join(self.args)}\n--- stderr ---\n{self.stderr_text()}"
            )
        if self.metrics_port is not None:
            self._wait_metrics()
        return self

    def _wait_metrics(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=1):
                    return
            except OSError as exc:
                last = exc
                # Wait for a stderr line or process exit (a condition with a short deadline), not a bare sleep.
                with self._cond:
                    self._cond.wait(0.05)
                if self.proc is not None and self.proc.poll() is not None:
                    break
        raise RuntimeError(f"metrics port {self.metrics_port} never accepted: {last}\n{self.stderr_text()}")

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stop(self) -> int | None:
        """SIGTERM, wait up to 5 s, then SIGKILL; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_stderr(self, text: str, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in line for line in self._lines), timeout)

    def stderr_lines(self, text: str) -> list[str]:
        """The stderr lines so far that contain ``text``."""
        with self._cond:
            return [line for line in self._lines if text in line]

    def wait_stderr_count(self, text: str, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` stderr lines contain ``text`` (e.g. the n-th ``policy reloaded``)."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(text in line for line in self._lines) >= count, timeout)

    # ---------------------------------------------------------------- talking to it

    def query(self, name: str, rtype: str = "A", **kwargs: Any) -> dns.message.Message:
        return query(self.port, name, rtype, host=self.host, **kwargs)

    def metrics_text(self) -> str:
        assert self.metrics_port is not None, "started without metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            body: bytes = resp.read()
            return body.decode()

    def __repr__(self) -> str:
        return f"ResolverProcess(port={self.port}, args={self.args!r})"


class ResolverFactory:
    """Starts resolvers on demand and stops every one of them at teardown."""

    def __init__(self, tmp_path: Path, default_upstreams: Sequence[str]) -> None:
        self.tmp_path = tmp_path
        self.default_upstreams = list(default_upstreams)
        self.started: list[ResolverProcess] = []
        self._shared: dict[str, ResolverProcess] = {}

    def __call__(
        self,
        config: dict[str, Any] | None = None,
        extra_args: Iterable[str] = (),
        *,
        upstreams: Sequence[str] | None = None,
        metrics: bool = False,
        listen_host: str = "127.0.0.1",
        port: int | None = None,
        workers: int | None = 1,
        preexec_fn: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ResolverProcess:
        proc = ResolverProcess(
            config,
            list(extra_args),
            self.tmp_path,
            upstreams=self.default_upstreams if upstreams is None else upstreams,
            metrics=metrics,
            listen_host=listen_host,
            port=port,
            workers=workers,
            preexec_fn=preexec_fn,
            env=env,
        )
        self.started.append(proc)
        return proc.start()

    def shared(
        self,
        config: dict[str, Any] | None = None,
        extra_args: Iterable[str] = (),
        *,
        upstreams: Sequence[str] | None = None,
        metrics: bool = False,
        listen_host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ) -> ResolverProcess:
        """Like calling the factory, but reuse the server already started with the same arguments."""
        extra = list(extra_args)
        key = yaml.safe_dump([config, extra, upstreams, metrics, listen_host, dict(env or {})], sort_keys=True)
        proc = self._shared.get(key)
        if proc is None or not proc.alive():
            proc = self(config, extra, upstreams=upstreams, metrics=metrics, listen_host=listen_host, env=env)
            self._shared[key] = proc
        return proc

    def close(self) -> None:
        self._shared.clear()
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


# -------------------------------------------------------------------- client helpers


def make_query(
    name: str, rtype: str = "A", *, edns: bool = True, payload: int = 1232, rd: bool = True
) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, use_edns=0 if edns else False, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def query(
    port: int,
    name: str,
    rtype: str = "A",
    *,
    tcp: bool = False,
    edns: bool = True,
    payload: int = 1232,
    rd: bool = True,
    timeout: float = 3.0,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> dns.message.Message:
    """Ask the resolver at ``host:port`` with dnspython; the reply must match the query's ID and question.

    ``source`` sends from that local address, so the server sees another client: all of 127.0.0.0/8 is local on
    Linux, so ``source="127.0.0.2"`` makes a second client without any network set-up.
    """
    q = make_query(name, rtype, edns=edns, payload=payload, rd=rd)
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout, source=source)
    return dns.query.udp(q, host, port=port, timeout=timeout, raise_on_truncation=False, source=source)


def udp_exchange(port: int, payload: bytes, *, timeout: float = 3.0, host: str = "127.0.0.1") -> bytes | None:
    """Send raw bytes over UDP and return the first datagram back, or None if none came within ``timeout``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp_connect(port: int, *, timeout: float = 5.0, host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    return s


def tcp_send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("!H", len(payload)) + payload)


def tcp_recv(sock: socket.socket) -> bytes | None:
    """One length-prefixed message, or None when the server closed the connection."""
    head = recv_exact(sock, 2)
    if head is None:
        return None
    return recv_exact(sock, struct.unpack("!H", head)[0])


def addresses(msg: dns.message.Message, rtype: str) -> list[str]:
    """The rdata (as text) of every ``rtype`` record in the answer section."""
    want = dns.rdatatype.from_text(rtype)
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == want for rd in rrset)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Re-check ``predicate`` until it holds or ``timeout`` passes; for state only observable by polling."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)


def answer_ttls(msg: dns.message.Message) -> list[int]:
    return [rrset.ttl for rrset in msg.answer]
