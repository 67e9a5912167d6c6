"""Process resource readings (RSS, CPU), sampled at most every `interval_s` since psutil calls are not free;
the cores this process is given."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessSample:
    rss_bytes: int
    cpu_percent: float
    memory_fraction: float  # rss over the memory budget
    at: float


class ProcessMonitor:
    def __init__(self, budget_bytes: int = 0, interval_s: float = 0.5) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # primes the CPU counter
        self.budget_bytes = budget_bytes or psutil.virtual_memory().total
        self.interval_s = interval_s
        self._last: ProcessSample | None = None
        self.peak_rss_bytes = 0

    def __repr__(self) -> str:
        return f"ProcessMonitor(budget={self.budget_bytes}, peak_rss={self.peak_rss_bytes})"

    def sample(self) -> ProcessSample:
        now = time.monotonic()
        if self._last is None or now - self._last.at >= self.interval_s:
            rss = self._process.memory_info().rss
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self._last = ProcessSample(rss, self._process.cpu_percent(None), rss / self.budget_bytes, now)
        return self._last


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use, not the machine's: its CPU affinity (taskset, systemd CPUAffinity=, a
    container's cpuset), capped by a cgroup v2 CPU quota (systemd CPUQuota=, docker --cpus) rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here (or not readable): the affinity decides
    return max(1, cores)
