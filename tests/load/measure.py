"""dnsperf runs and their numbers, and the facts about the machine that go with a table."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import HOST, Proc, cpu_busy_seconds
from servers import CLIENT_CPU, SERVER_CPU

DNSPERF_TIMEOUT = 2  # seconds before dnsperf counts a query as lost
CLIENTS = 8  # source ports: unbound's two SO_REUSEPORT threads each get a share only with several


@dataclass
class Run:
    """One dnsperf run against one server, with the server's CPU time over it."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    seconds: float = 0.0
    qps: float = 0.0
    avg_ms: float = 0.0
    max_ms: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # user+system time on the server's CPU that was not the server's: noise
    window_s: float = 0.0  # wall time over which the CPU times were taken (dnsperf's start to its exit)
    latencies: list[float] = field(default_factory=list)  # seconds, from -v; only for fixed-rate runs

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    @property
    def cpu_us_per_query(self) -> float:
        return 1e6 * self.cpu_s / self.completed if self.completed else float("nan")

    def percentile_ms(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000.0 * ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]

    @property
    def server_cpu_pct(self) -> float:
        """How busy the server kept its CPU: near 100 means CPU-bound, well below means something else limits."""
        return 100.0 * self.cpu_s / self.seconds if self.seconds else float("nan")

    @property
    def other_cpu_pct(self) -> float:
        """Other processes (of this machine's other users too) on the server's CPU during the run."""
        return max(0.0, 100.0 * self.other_cpu_s / self.window_s) if self.window_s else float("nan")

    @property
    def noerror_pct(self) -> float:
        return 100.0 * self.rcodes.get("NOERROR", 0) / self.completed if self.completed else 0.0


def dnsperf(server: Proc, port: int, datafile: Path, log: Path, *, seconds: float, outstanding: int,
            once: bool = False, rate: int | None = None, verbose: bool = False, extra: tuple[str, ...] = ()) -> Run:
    """Run dnsperf on CPU 0 for at most ``seconds`` (``once``: stop at the end of the file too); ``extra``: more
    arguments (``-m dot``, ``-O num-queries-per-conn=1``: encrypted.py)."""
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(datafile), "-l", f"{seconds:g}",
            "-q", str(outstanding), "-c", str(CLIENTS), "-t", str(DNSPERF_TIMEOUT)]
    if once:
        argv += ["-n", "1"]
    if rate is not None:
        argv += ["-Q", str(rate)]
    if verbose:
        argv += ["-v"]
    argv += extra
    before, busy_before, started = server.cpu_seconds(), cpu_busy_seconds(SERVER_CPU), time.monotonic()
    perf = Proc("dnsperf", argv, CLIENT_CPU, log)
    try:
        code = perf.popen.wait(seconds + 4 * DNSPERF_TIMEOUT + 30)
    finally:
        perf.stop()
    after, busy_after, window = server.cpu_seconds(), cpu_busy_seconds(SERVER_CPU), time.monotonic() - started
    text = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"dnsperf exited {code}: {' '.join(argv)}\n{text[-2000:]}")
    run = parse(text, latencies=verbose)
    run.cpu_s = after - before
    run.other_cpu_s = (busy_after - busy_before) - run.cpu_s
    run.window_s = window
    return run


def parse(text: str, *, latencies: bool = False) -> Run:
    run = Run()

    def number(pattern: str) -> float:
        found = re.search(pattern, text)
        if found is None:
            raise RuntimeError(f"dnsperf output without {pattern!r}:\n{text[-2000:]}")
        return float(found.group(1))

    run.sent = int(number(r"Queries sent:\s+(\d+)"))
    run.completed = int(number(r"Queries completed:\s+(\d+)"))
    run.lost = int(number(r"Queries lost:\s+(\d+)"))
    run.seconds = number(r"Run time \(s\):\s+([\d.]+)")
    run.qps = number(r"Queries per second:\s+([\d.]+)")
    run.avg_ms = 1000 * number(r"Average Latency \(s\):\s+([\d.]+)")
    run.max_ms = 1000 * number(r"Average Latency \(s\):.*max ([\d.]+)")
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        for name, count in re.findall(r"([A-Z]+) (\d+)", codes.group(1)):
            run.rcodes[name] = int(count)
    if latencies:
        for line in text.splitlines():
            if line.startswith("> "):
                parts = line.split()
                if len(parts) == 5 and parts[1] != "T":
                    with contextlib.suppress(ValueError):
                        run.latencies.append(float(parts[4]))
    return run


# ------------------------------------------------------------------------------------------------------- facts


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"? ({err})"
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "?"


def _dnsperf_version() -> str:
    done = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, timeout=30)
    found = re.search(r"Version ([\w.]+)", done.stdout + done.stderr)
    return found.group(1) if found else "?"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _resolver_build(resolver_src: Path) -> str:
    """mypyc or python: which build of the hot path the measured tree runs."""
    return subprocess.run([sys.executable, "-c", "import resolver; print(resolver.build())"], cwd=resolver_src,
                          env=dict(os.environ, PYTHONPATH=str(resolver_src)), capture_output=True,
                          text=True).stdout.strip() or "?"


def machine_facts(resolver_src: Path, described: str = "") -> list[tuple[str, str]]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    uv, dl = _package_version("uvloop"), _package_version("dnslib")
    commit = described or subprocess.run(
        ["git", "-C", str(resolver_src), "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
        text=True).stdout.strip() or "(not a git checkout)"
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", f"{mem_kib / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("Python", sys.version.split()[0]),
        ("uvloop", uv),
        ("dnslib", dl),
        ("resolver", f"{resolver_src} at {commit}"),
        ("resolver build", _resolver_build(resolver_src)),
        ("dnsperf", _dnsperf_version()),
        ("dnsmasq", _first_line(["dnsmasq", "--version"])),
        ("unbound", _first_line(["unbound", "-V"])),
        ("nsd", _first_line(["nsd", "-v"])),
        ("gcc", _first_line(["gcc", "--version"])),
    ]
