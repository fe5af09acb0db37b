"""A wall-clock alarm around one piece of work, for the hostile-input tests and the fuzz target: a loop in the
code under test ends as a ``Hang`` instead of stalling the run."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

HANG_SECONDS = 2.0  # far beyond what one parse of a 64 KiB packet or a few-KB list may take


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` in the code under test can swallow it."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def ring(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
