"""The pure parts of sd_notify: what NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID mean."""

from __future__ import annotations

import pytest

from resolver.ops.systemd import Notifier, socket_address, watchdog_interval


@pytest.mark.parametrize(("value", "address"), [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@abstract-name", "\0abstract-name"),
    ("@", None),
    ("relative/path", None),
])
def test_socket_address(value: str, address: str | None) -> None:
    assert socket_address(value) == address


@pytest.mark.parametrize(("usec", "pid", "seconds"), [
    ("30000000", None, 15.0),  # half the timeout, as sd_watchdog_enabled(3) advises
    ("30000000", "42", 15.0),
    ("30000000", "43", None),  # meant for another process
    ("0", None, None),
    ("", None, None),
    (None, None, None),
    ("soon", None, None),
])
def test_watchdog_interval(usec: str | None, pid: str | None, seconds: float | None) -> None:
    assert watchdog_interval(usec, pid, 42) == seconds


def test_from_env_takes_the_variables_out_so_children_do_not_notify() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "PATH": "/bin"}
    notifier = Notifier.from_env(env)
    assert (notifier.address, notifier.watchdog_seconds) == ("\0x", 0.5)
    assert env == {"PATH": "/bin"}


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert notifier.address is None and notifier.watchdog_seconds is None
    notifier.ready("x")  # no socket, no error
