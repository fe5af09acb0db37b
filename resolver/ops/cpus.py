"""How many workers by default: the CPUs this process may actually use, not the CPUs the machine has.

Two limits apply and the smaller wins: the CPUs we may be scheduled on (``sched_getaffinity``: taskset, cpuset,
Kubernetes' static CPU manager) and the cgroup's CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us`` in v1: Docker's ``--cpus``, Kubernetes' CPU limit). A container limited to two CPUs on a
64-core node that started 64 workers would have each of them throttled, with 64 caches and 64 policy copies.

The readers take the file system's root as a parameter, so the tests feed them sample trees.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 ``cpu.max`` line allows (``"200000 100000"`` -> 2, ``"150000 100000"`` -> 2), or None
    when it sets no limit (``"max 100000"``) or cannot be read as one."""
    parts = cpu_max.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroup(proc_cgroup: str | None) -> str:
    """Our cgroup v2 path (the ``0::/path`` line of /proc/self/cgroup); "/" inside a cgroup namespace."""
    for line in (proc_cgroup or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return "/"


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> int | None:
    """The tightest CPU quota on the way from our cgroup up to ``root`` (a parent's limit binds its children
    too), v2 first, then v1's cpu controller; None when none is set."""
    found: list[int] = []
    relative = _own_cgroup(proc_cgroup).strip("/")
    here = root / relative if relative else root
    while True:
        text = _read(here / "cpu.max")
        if text is not None:
            cpus = quota_cpus(text)
            if cpus is not None:
                found.append(cpus)
        if here == root or root not in here.parents:
            break
        here = here.parent
    if not found:
        quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            cpus = quota_cpus(f"{quota.strip()} {period.strip()}")
            if cpus is not None:
                found.append(cpus)
    return min(found) if found else None


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """What the default worker count was made from, for the supervisor's log line."""

    affinity: int
    quota: int | None

    @property
    def workers(self) -> int:
        return max(1, min(self.affinity, self.quota) if self.quota is not None else self.affinity)

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup CPU quota {self.quota}"
        return f"{self.affinity} CPUs in our affinity, {quota}"


def cpu_budget(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> CpuBudget:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return CpuBudget(affinity, cgroup_cpus(root, _read(proc_cgroup)))
