"""systemd's service notifications (sd_notify): READY, RELOADING, STOPPING and the watchdog.

A ``Type=notify`` unit is "started" only when the service says ``READY=1``, so ``systemctl start`` (and every unit
ordered after this one) waits until every listener is bound, not merely until the process exists. With
``WatchdogSec=`` systemd kills and restarts a service that stops sending ``WATCHDOG=1``: sending it from the event
loop means a loop stuck in a busy callback is caught, which a thread could not tell.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by ``NOTIFY_SOCKET`` (a path, or
``@name`` for an abstract socket), so no library is needed. Outside systemd the variable is unset and every call
does nothing. The variables are taken out of the environment, as ``sd_notify(unset_environment=1)`` does, so
worker processes never speak for the service: only the process systemd started (``NotifyAccess=main``) does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, MutableMapping
from typing import TypeVar

log = logging.getLogger("resolver.ops.systemd")
T = TypeVar("T")


def socket_address(value: str) -> str | None:
    """``NOTIFY_SOCKET`` -> the address to send to: a path, or an abstract name (``@x`` -> ``\\0x``); None if the
    value is neither."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises. None
    when there is no watchdog, or it is meant for another process (``WATCHDOG_PID``)."""
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != own_pid):
        return None
    return int(usec) / 2e6


class Notifier:
    """Sends the notifications of one service; does nothing when systemd did not ask for them."""

    def __init__(self, address: str | None = None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_seconds = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd set up for this process, taking its variables out of ``environ``."""
        raw = environ.pop("NOTIFY_SOCKET", "")
        usec, pid = environ.pop("WATCHDOG_USEC", None), environ.pop("WATCHDOG_PID", None)
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name; not notifying systemd", raw)
        return cls(address, watchdog_interval(usec, pid, os.getpid()))

    def send(self, *lines: str) -> None:
        """One notification. A failure is logged once and never stops the server: serving matters more."""
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as err:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), err)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC: systemd >= 253 matches a reload's RELOADING=1 with the READY=1 that ends it by this.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: draining in-flight queries")

    async def watchdog(self) -> None:
        """Ping the watchdog from the event loop for as long as the loop runs (a task; cancelled at shutdown)."""
        if self.watchdog_seconds is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_seconds)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watching(self, main: Awaitable[T]) -> T:
        """Await ``main`` with the watchdog pinged meanwhile (the supervisor of ``--workers N``)."""
        pinger = asyncio.ensure_future(self.watchdog())
        try:
            return await main
        finally:
            pinger.cancel()
