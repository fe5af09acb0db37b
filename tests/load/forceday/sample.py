"""What the resolver says about itself during the run: CPU per process (utime+stime from /proc) and the cache and
query counters from its /metrics, every ``interval`` seconds, in a thread of its own."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
COUNTERS = ("resolver_cache_hits_total", "resolver_cache_misses_total", "resolver_rate_limited_queries_total",
            "resolver_upstream_requests_total", "resolver_upstream_timeouts_total")


@dataclass
class Sample:
    t: float  # seconds since the replay started
    cpu: dict[int, float]  # pid -> utime+stime seconds so far
    counters: dict[str, float]
    # /proc/stat "cpuN" -> busy seconds so far (anyone's), and "simulator" -> this process's CPU seconds so far
    cpu_busy: dict[str, float] = field(default_factory=dict)


def process_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_busy() -> dict[str, float]:
    """Busy (user+nice+system+irq+softirq) seconds per CPU since boot, anyone's."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0].startswith("cpu") and parts[0] != "cpu":
            out[parts[0]] = sum(int(parts[i]) for i in (1, 2, 3, 6, 7)) / CLK_TCK
    return out


def scrape(url: str) -> dict[str, float]:
    """The summed value of each of ``COUNTERS`` (every label set) from a Prometheus text page."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


class Sampler:
    def __init__(self, pids: Callable[[], list[int]], metrics_url: str, interval: float = 1.0) -> None:
        self.pids = pids
        self.url = metrics_url
        self.interval = interval
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.take()
        self._thread.start()

    def take(self) -> None:
        cpu = {pid: c for pid in self.pids() if (c := process_cpu(pid)) is not None}
        busy = cpu_busy()
        busy["simulator"] = process_cpu(os.getpid()) or 0.0  # this process: the phones, all their threads
        self.samples.append(Sample(time.monotonic() - self.t0, cpu, scrape(self.url), busy))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.take()

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(timeout=10)
        self.take()
        return self.samples
