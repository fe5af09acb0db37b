"""Processes the benchmark starts, and what it reads about them from /proc.

Every process is started in a session (and so a process group) of its own, pinned with ``taskset``, and
recorded in ``out/pids`` so that ``run.sh``'s trap can still stop it if the driver itself dies. ``stop_all``
sends SIGTERM to each group, waits, then SIGKILL: nothing the benchmark started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"  # loopback only: every server listens here and every query goes here

_started: list[Proc] = []
_pidfile: Path | None = None


def set_pidfile(path: Path) -> None:
    global _pidfile
    _pidfile = path
    path.write_text("")


class Proc:
    """One started command (its process group), with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], cpu: str | None, log: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        cmd = ["taskset", "-c", cpu, *argv] if cpu is not None else list(argv)
        self.argv = cmd
        self.handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.handle, stderr=subprocess.STDOUT,
                                      cwd=cwd, env=env, start_new_session=True)
        self.pid = self.popen.pid  # taskset execs the command, so this is the server itself
        _started.append(self)
        if _pidfile is not None:
            with _pidfile.open("a") as handle:
                handle.write(f"{self.pid}\n")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def pids(self) -> list[int]:
        """Every live process of the group (the server and any children it forked)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == self.pid:
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def cpu_seconds(self) -> float:
        """utime+stime of the group: /proc/PID/stat counts every thread of a process, live or exited."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / CLK_TCK

    def memory_kib(self, key: str = "VmRSS") -> int:
        """``VmRSS`` or ``VmHWM`` summed over the group, in KiB."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (writing 5 to clear_refs, Linux 4.0+), so a later peak is the reload's."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_TIMEOUT)
        # Children (nsd's server processes) may outlive the leader: the group goes, whatever is left of it.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.pids():
                break
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self.handle.close()
        if self in _started:
            _started.remove(self)


def stop_all() -> None:
    for proc in reversed(list(_started)):
        try:
            proc.stop()
        except Exception as err:  # keep stopping the others
            print(f"warning: stopping {proc.name} (pid {proc.pid}): {err}")
    if _pidfile is not None and _pidfile.exists():
        _pidfile.write_text("")


def cpu_busy_seconds(cpus: str) -> float:
    """Time the CPUs of ``cpus`` (a taskset list such as "1" or "0,1") spent in user and system mode (any
    process, ours or not) since boot, from /proc/stat."""
    wanted = {f"cpu{c.strip()}" for c in cpus.split(",")}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            total += int(fields[1]) + int(fields[2]) + int(fields[3])  # user, nice, system
    return total / CLK_TCK


def free_port() -> int:
    """A port free for both UDP and TCP on the loopback address."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port on loopback")


# ----------------------------------------------------------------------------------------------------- DNS probe


def _query(name: str, qid: int) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.rstrip(".").split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", 1, 1)


def _first_a(reply: bytes, question_len: int) -> str | None:
    """The address of the first answer record, if it is an A record (the probes only ever need that)."""
    if len(reply) < 12 or struct.unpack_from("!H", reply, 6)[0] == 0:
        return None
    pos = 12 + question_len
    if reply[pos] & 0xC0 == 0xC0:
        pos += 2
    else:
        while reply[pos]:
            pos += 1 + reply[pos]
        pos += 1
    rtype, _, _, rdlen = struct.unpack_from("!HHIH", reply, pos)
    if rtype != 1 or rdlen != 4:
        return None
    return socket.inet_ntoa(reply[pos + 10 : pos + 14])


def ask(port: int, name: str, timeout: float = 0.5) -> tuple[int, str | None] | None:
    """One UDP query for ``name`` A; (rcode, first A address) or None when nothing came back."""
    qid = random.randrange(65536)
    packet = _query(name, qid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (HOST, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                return None
            if len(reply) >= 12 and struct.unpack_from("!H", reply)[0] == qid:
                return reply[3] & 0x0F, _first_a(reply, len(packet) - 12)
    return None


def wait_answer(proc: Proc, port: int, name: str, expect: str | None, timeout: float) -> float:
    """Poll until ``name`` gets an answer (with A ``expect``, when given); the time it took since the start."""
    deadline = time.monotonic() + timeout
    last: tuple[int, str | None] | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; log {proc.log}:\n"
                               + proc.log_text()[-2000:])
        last = ask(port, name, timeout=0.1)
        if last is not None and (expect is None or last[1] == expect):
            return time.monotonic() - proc.started
        if last is not None:
            time.sleep(0.01)  # answered, but not yet what we want (list still loading): poll again soon
    raise RuntimeError(f"{proc.name}: no answer {expect or ''} for {name} within {timeout:.0f}s (last {last}); "
                       f"log {proc.log}:\n" + proc.log_text()[-2000:])


def drive(body: Callable[[], int], pidfile: Path, cpus: str) -> int:
    """Run a benchmark driver: its processes recorded in ``pidfile`` (run.sh's trap reads it; LOAD_PIDFILE wins),
    the driver itself on ``cpus`` (off the server's core), and everything it started stopped however it ends."""
    set_pidfile(Path(os.environ.get("LOAD_PIDFILE", pidfile)))
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        stop_all()
