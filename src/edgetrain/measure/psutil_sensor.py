"""System and process-tree sensor: CPU utilisation, RAM in use, the training process's memory."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from edgetrain.measure import proctree
from edgetrain.measure.sensor import MACHINE_BUSY_KEY, PROC_CPU_KEY, EnergyChannel, SensorStatus

__all__ = ["CpuUtilisation", "PsutilSensor"]

logger = logging.getLogger(__name__)


class CpuUtilisation:
    """System-wide CPU utilisation (0-100, all cores) since the previous call.

    Each instance keeps its own previous reading; ``psutil.cpu_percent(interval=None)`` keeps
    one per thread, so two sensors calling it from the sampler thread would steal each
    other's interval. Busy time follows psutil: everything except idle and iowait.
    """

    def __init__(self) -> None:
        self._last = proctree.cpu_total_idle()
        self._last_pct = 0.0

    def percent(self) -> float:
        """Utilisation since the previous call; the previous value if no time has passed."""
        now = proctree.cpu_total_idle()
        total = now[0] - self._last[0]
        busy = total - (now[1] - self._last[1])
        self._last = now
        if total > 0:
            self._last_pct = min(100.0, max(0.0, 100.0 * busy / total))
        return self._last_pct


class PsutilSensor:
    """CPU utilisation, system RAM in use, and the memory of a process and its children.

    Values:
        ``cpu_pct``: system-wide utilisation over all cores since the previous read.
        ``ram_used_bytes``: system RAM in use, ``total - available`` (what a new
            allocation could not get without swapping), not psutil's narrower ``used``.
        ``proc_rss_bytes``: sum of RSS over the process and all its descendants (DataLoader
            workers). Shared pages (e.g. copy-on-write data sets) count once per process,
            so this over-states what a tree with workers holds (1.9x PSS was seen with
            DataLoader workers); it is a safe upper view, read at every sample.
        ``proc_pss_bytes``: sum of PSS over the tree (Linux ``smaps_rollup``): each shared
            page is split between the processes sharing it, so the sum is what the tree
            holds. Read with USS, at the same rare cadence.
        ``proc_hwm_bytes``: the main process's RSS high-water mark (Linux ``VmHWM``): its
            true peak since it started, including peaks between samples.
        ``proc_uss_bytes``: sum of USS (unique pages) over the tree. Reading it makes the
            kernel walk page tables (7 ms for a 360 MB process, 10 ms for 600 MB on the dev
            VM) while holding the process's memory-map lock, so it is read at most every
            ``uss_min_interval_s`` and rarely enough to cost under ``uss_cpu_budget`` of one
            core (0.2%: every 5 s up to ~1 GB, every 20 s at ~2 GB); samples in between leave
            it out.

    Internal values (not columns): ``proc_cpu_s``, the tree's cumulative CPU time, and
    ``cpu_busy_s``, the machine's; the monitor attributes CPU energy by their ratio.

    Args:
        pid: Process to follow; default: this process.
        uss: Read USS at all.
        uss_min_interval_s: Shortest time between USS reads.
        uss_cpu_budget: Largest fraction of one core that USS reads may use.
        clock: Monotonic clock in seconds (injectable for tests).
        proc_root: Where ``<pid>/smaps_rollup`` files are read (a fake tree in tests).
    """

    name = "psutil"

    def __init__(
        self,
        pid: int | None = None,
        *,
        uss: bool = True,
        uss_min_interval_s: float = 5.0,
        uss_cpu_budget: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        proc_root: str | Path = "/proc",
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._cpu = CpuUtilisation()
        self._proc_root = Path(proc_root)
        # USS and PSS come from /proc/<pid>/smaps_rollup (Linux); USS from the task API
        # (macOS, Windows)
        self._uss = uss and bool(psutil.LINUX or psutil.MACOS or psutil.WINDOWS)
        self._pss = self._uss and bool(psutil.LINUX)
        self._uss_min_interval_s = uss_min_interval_s
        self._uss_cpu_budget = uss_cpu_budget
        self._clock = clock
        self._next_uss_s = float("-inf")
        self._has_hwm = proctree.hwm_bytes(os.getpid()) is not None
        columns = ["cpu_pct", "ram_used_bytes", "proc_rss_bytes"]
        if self._uss:
            columns.append("proc_uss_bytes")
        if self._pss:
            columns.append("proc_pss_bytes")
        if self._has_hwm:
            columns.append("proc_hwm_bytes")
        self._columns = tuple(columns)
        self._status = SensorStatus(
            self.name,
            True,
            f"CPU, RAM and memory of process {self.pid} and its children"
            + ("" if self._uss else " (USS not available on this platform)"),
            None,
        )

    @property
    def status(self) -> SensorStatus:
        """Always available where psutil imports."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """Value names, see the class docstring."""
        return self._columns

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """No energy."""
        return ()

    def read(self) -> dict[str, float]:
        """Read system and process-tree values; process values are left out once it exits."""
        out = {
            "cpu_pct": self._cpu.percent(),
            "ram_used_bytes": float(proctree.ram_used_bytes()),
        }
        busy = proctree.cpu_busy_s()
        if busy is not None:
            out[MACHINE_BUSY_KEY] = busy
        pids = proctree.tree_pids(self.pid)
        if not pids:
            return out  # the process is gone (a finished command): system values only
        rss = [proctree.rss_bytes(p) for p in pids]
        out["proc_rss_bytes"] = float(sum(r for r in rss if r is not None))
        cpu = [proctree.proc_cpu_s(p) for p in pids]
        if cpu[0] is not None:  # the root is readable (a zombie too, until reaped)
            out[PROC_CPU_KEY] = float(sum(c for c in cpu if c is not None))
        if self._has_hwm:
            hwm = proctree.hwm_bytes(self.pid)
            if hwm is not None:
                out["proc_hwm_bytes"] = float(hwm)
        if self._uss and self._clock() >= self._next_uss_s:
            start = self._clock()
            out.update(self._private_memory(pids))
            cost_s = self._clock() - start
            self._next_uss_s = start + max(self._uss_min_interval_s, cost_s / self._uss_cpu_budget)
        return out

    def _private_memory(self, pids: list[int]) -> dict[str, float]:
        """Summed USS and PSS of the tree: smaps_rollup where readable, else psutil's USS."""
        uss: list[int] = []
        pss: list[int] = []
        for p in pids:
            rollup = proctree.smaps_rollup(p, self._proc_root) if self._pss else None
            if rollup is not None:
                uss.append(rollup.uss)
                pss.append(rollup.pss)
                continue
            u = proctree.uss_bytes(p)
            if u is not None:
                uss.append(u)
        out: dict[str, float] = {}
        if uss:
            out["proc_uss_bytes"] = float(sum(uss))
        if pss:
            out["proc_pss_bytes"] = float(sum(pss))
        return out

    def close(self) -> None:
        """Nothing to release."""
