"""systemd: the real server notifies a real unix datagram socket given as NOTIFY_SOCKET (READY once it answers,
WATCHDOG while it runs, RELOADING/READY around a SIGHUP reload, STOPPING at SIGTERM), and the shipped unit passes
``systemd-analyze verify``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.resolverproc import REPO_ROOT, ResolverFactory, ResolverProcess, addresses

UNIT = REPO_ROOT / "deploy" / "systemd" / "resolver.service"
WATCHDOG_USEC = 200_000  # pings every 0.1 s: a few arrive within any wait below


class NotifySocket:
    """What systemd listens on: a datagram socket that also learns each sender's pid (SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.env = "@" + address[1:] if address.startswith("\0") else address

    def receive(self, timeout: float = 10.0) -> tuple[int, list[str]]:
        """(sender pid, the message's lines) of the next message; TimeoutError when none comes."""
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("iII", cdata)[0] for level, kind, cdata in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return pid, data.decode().split("\n")

    def until(self, line: str, seen: list[tuple[int, list[str]]], timeout: float = 10.0) -> list[str]:
        """Read messages (kept in ``seen``) until one holds ``line``; that message."""
        deadline = time.monotonic() + timeout
        while True:
            pid, lines = self.receive(max(0.01, deadline - time.monotonic()))
            seen.append((pid, lines))
            if line in lines:
                return lines

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["abstract", "path"])
def notify(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    address = f"\0resolver-test-{os.getpid()}-{time.monotonic_ns()}" if request.param == "abstract" \
        else str(tmp_path / "notify")
    sock = NotifySocket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", sock.env)  # the started server's environment is a copy of ours
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    yield sock
    sock.close()


def _pid(server: ResolverProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_watchdog_and_stopping_reach_the_notify_socket(
        resolver_factory: ResolverFactory, notify: NotifySocket, workers: int) -> None:
    server = resolver_factory(None, workers=workers)
    seen: list[tuple[int, list[str]]] = []
    notify.until("READY=1", seen)
    # Ready means answering: a phone asking now gets its answer.
    assert addresses(server.query("www.tiktok.com"), "A") == ["0.0.0.0"]
    for _ in range(3):  # the watchdog keeps being fed while the server runs
        notify.until("WATCHDOG=1", seen)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    notify.until("STOPPING=1", seen)
    assert server.proc.wait(30) == 0  # (not stop(): a second SIGTERM while draining may end it at once)
    server.stop()
    # Only the process systemd started speaks for the service: never a worker (NotifyAccess=main).
    assert {pid for pid, _ in seen} == {_pid(server)}
    ready = [lines for _, lines in seen if "READY=1" in lines]
    assert len(ready) == 1, seen


def test_a_sighup_reload_is_bracketed_by_reloading_and_ready(
        resolver_factory: ResolverFactory, notify: NotifySocket) -> None:
    server = resolver_factory({"policy": {"block": ["social"]}})
    seen: list[tuple[int, list[str]]] = []
    notify.until("READY=1", seen)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    reloading = notify.until("RELOADING=1", seen)
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
    after = notify.until("READY=1", seen)
    assert any(line.startswith("STATUS=policy ") for line in after)
    assert server.wait_stderr("policy reloaded (SIGHUP)")


def test_without_notify_socket_the_server_sends_nothing_and_serves(resolver_factory: ResolverFactory,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    server = resolver_factory(None)
    assert addresses(server.query("www.tiktok.com"), "A") == ["0.0.0.0"]
    assert "systemd" not in server.stderr_text()


# ------------------------------------------------------------------------------------------------- the unit file

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze missing: apt-get install systemd")
def test_the_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at a stand-in at the unit's path in a copy.
    resolver_bin = shutil.which("resolver") or str(Path(sys.executable).parent / "resolver")
    text = UNIT.read_text().replace("/opt/resolver/bin/resolver", resolver_bin)
    unit = tmp_path / "resolver.service"
    unit.write_text(text)
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    # Every complaint is a problem, even those verify only warns about.
    assert [line for line in result.stderr.splitlines() if "resolver.service" in line] == []


def test_the_unit_keeps_its_hardening() -> None:
    """What the README promises about the unit, read from the unit itself."""
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["Type"] == "notify"
    assert int(settings["WatchdogSec"].rstrip("s")) > 0
    assert settings["DynamicUser"] == "yes"
    assert settings["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert int(settings["LimitNOFILE"]) >= 4096
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--workers" not in settings["ExecStart"]  # the worker count follows the CPUs the unit may use
