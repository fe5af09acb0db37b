"""A worker as a process: ``resolver serve --worker SPEC`` started fresh, and the pipes it reports through.

The supervisor's decisions (``ops/workers.py``) see a worker only as a ``Child`` to signal, tell and kill; this is
the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import resolver
from resolver.ops.fabric import Fabric
from resolver.ops.link import CONTROL, FRAME, WorkerLink
from resolver.ops.snapshot import Snapshot

# A worker runs the resolver package its supervisor imported, never one that happens to sit in the working
# directory (a source checkout's uncompiled copy next to the installed build): -P keeps the working directory
# off sys.path, and the supervisor's own package directory goes first.
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'resolver'; "
         "from resolver.cli import main; sys.exit(main())")


class WorkerProcess:
    """The plumbing of one worker: a fresh ``resolver serve --worker SPEC`` process (never a fork of a running
    event loop; the spec is ``ops/link.WorkerLink``), the pipe it sends its snapshots down and the control pipe we
    write to. The snapshot pipe closing is how its death is noticed."""

    def __init__(self, index: int, argv: Sequence[str], reported: Callable[[int, Snapshot, int], None],
                 exited: Callable[[int, int | None], None], env: Mapping[str, str] | None = None,
                 fabric: Fabric | None = None) -> None:
        self.index = index
        self.reported = reported
        self.exited = exited
        self.buffer = bytearray()
        read_fd, write_fd = os.pipe()
        control_read, self.control = os.pipe()
        if fabric is not None:
            link = fabric.link(index, os.getpid(), write_fd, control_read)
        else:
            link = WorkerLink(index, 1, os.getpid(), write_fd, control_read)
        package_dir = str(Path(resolver.__file__).resolve().parent.parent)
        args = [sys.executable, "-P", "-c", _BOOT, package_dir, *argv, "--worker", link.encode()]
        try:
            self.proc = subprocess.Popen(args, pass_fds=link.fds(), env={**os.environ, **(env or {})})
        except BaseException:
            os.close(read_fd)
            os.close(self.control)
            raise
        finally:
            os.close(write_fd)
            os.close(control_read)
        os.set_blocking(read_fd, False)
        os.set_blocking(self.control, False)
        self.fd = read_fd
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(read_fd, self._readable)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def tell(self, kind: bytes, number: int) -> None:
        if self.control >= 0:
            with contextlib.suppress(OSError):  # full (it is stuck: a scrape makes do) or gone
                os.write(self.control, CONTROL.pack(kind, number))

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
            os.close(self.control)
            self.control = -1
            # The pipe closes as the process exits: this waits only for the kernel to finish the exit.
            self.exited(self.index, self.proc.wait())
            return
        buffer = self.buffer
        buffer += data
        latest: Snapshot | None = None
        scrape = 0
        while len(buffer) >= FRAME.size:
            size, answers = FRAME.unpack_from(buffer)
            if len(buffer) < FRAME.size + size:
                break
            # The pipe comes from a child we started ourselves, so unpickling it is safe.
            latest = pickle.loads(bytes(buffer[FRAME.size : FRAME.size + size]))
            scrape = max(scrape, answers)
            del buffer[: FRAME.size + size]
        if latest is not None:
            self.reported(self.index, latest, scrape)
