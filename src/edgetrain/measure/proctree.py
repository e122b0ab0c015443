"""Cheap reads for the sampler: /proc fast paths on Linux, psutil elsewhere.

psutil's ``Process.children(recursive=True)`` scans every process on the machine (1.3-1.5 ms
with 70 processes on the 2-core dev VM); reading ``/proc/<pid>/task/<tid>/children`` walks
only the tree (about 0.1 ms). ``/proc/<pid>/statm`` gives RSS in one small read. For the
system, ``psutil.cpu_times()`` and ``psutil.virtual_memory()`` parse all of ``/proc/stat`` and
``/proc/meminfo`` into named tuples (about 250 and 120 us from the sampler thread); reading
only the fields needed costs a fraction of that, and each file read is also a point where
the sampler hands the GIL back and forth with the training loop.

CPU times for the process-attributed energy come from ``/proc/<pid>/stat`` (user and
system time, and that of reaped children, so a DataLoader worker's time is not lost when
it exits) and ``/proc/stat``. Memory shared between the processes of a tree (a forked
worker's copy-on-write pages) counts once per process in summed RSS; PSS from
``/proc/<pid>/smaps_rollup`` splits each shared page between its sharers, so PSS sums
over a tree without double counting.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "SmapsRollup",
    "cpu_busy_s",
    "cpu_total_idle",
    "hwm_bytes",
    "proc_cpu_s",
    "ram_used_bytes",
    "rss_bytes",
    "smaps_rollup",
    "tree_pids",
    "uss_bytes",
]

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAS_PROC_CHILDREN = sys.platform.startswith("linux") and os.path.exists(
    f"/proc/{os.getpid()}/task/{os.getpid()}/children"
)
_HAS_STATM = sys.platform.startswith("linux") and os.path.exists(f"/proc/{os.getpid()}/statm")
_IS_LINUX = sys.platform.startswith("linux")


def cpu_total_idle() -> tuple[float, float]:
    """Cumulative CPU time of all cores, total and idle (idle + iowait), in any one unit.

    Only differences are meaningful. Guest time is left out of the total: Linux already
    counts it in user and nice (as psutil does).
    """
    if _IS_LINUX:
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()
            if fields and fields[0] == b"cpu" and len(fields) >= 5:
                values = [float(v) for v in fields[1:9]]  # user..steal; guest fields follow
                return sum(values), values[3] + (values[4] if len(values) > 4 else 0.0)
        except (OSError, ValueError):
            pass
    times = psutil.cpu_times()._asdict()
    total = sum(times.values()) - times.get("guest", 0.0) - times.get("guest_nice", 0.0)
    return total, times.get("idle", 0.0) + times.get("iowait", 0.0)


def cpu_busy_s() -> float | None:
    """Cumulative busy CPU time of the machine, all cores, in seconds.

    Busy is user, nice, system, irq and softirq: idle and iowait are not, nor steal (time a
    hypervisor gave to other guests), so that shares of it add up to what ran here.
    """
    if _IS_LINUX:
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()
            if fields and fields[0] == b"cpu" and len(fields) >= 8:
                user, nice, system, _, _, irq, softirq = (float(v) for v in fields[1:8])
                return (user + nice + system + irq + softirq) / _CLK_TCK
        except (OSError, ValueError):
            pass
    try:
        times = psutil.cpu_times()._asdict()
    except (OSError, AttributeError):
        return None
    return sum(times.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq"))


def proc_cpu_s(pid: int) -> float | None:
    """CPU time of one process, user and system, reaped children included, in seconds.

    None when the process is gone. Summed over a tree the result only moves forwards as
    children exit and are reaped (their time moves to the parent's children fields).
    """
    if _HAS_STATM:  # Linux with /proc
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                text = f.read()
            fields = text[text.rindex(b")") + 2 :].split()
            return sum(int(v) for v in fields[11:15]) / _CLK_TCK
        except (OSError, ValueError, IndexError):
            return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system + t.children_user + t.children_system)


def ram_used_bytes() -> int:
    """System RAM in use: ``total - available`` (Linux ``MemAvailable``, else psutil's)."""
    if _IS_LINUX:
        total = available = None
        try:
            with open("/proc/meminfo", "rb") as f:
                for line in f:
                    if line.startswith(b"MemTotal:"):
                        total = int(line.split()[1]) * 1024
                    elif line.startswith(b"MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            total = None
        if total is not None and available is not None:
            return total - available
    vm = psutil.virtual_memory()
    return int(vm.total - vm.available)


def tree_pids(pid: int) -> list[int]:
    """The pid and all its descendants (empty when the process is gone)."""
    if not _HAS_PROC_CHILDREN:
        try:
            proc = psutil.Process(pid)
            return [pid, *(c.pid for c in proc.children(recursive=True))]
        except psutil.Error:
            return []
    if not os.path.exists(f"/proc/{pid}"):
        return []
    found = [pid]
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    text = f.read()
            except OSError:
                continue
            for child in text.split():
                child_pid = int(child)
                found.append(child_pid)
                stack.append(child_pid)
    return found


def rss_bytes(pid: int) -> int | None:
    """Resident set size of one process, or None when it is gone."""
    if _HAS_STATM:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                fields = f.read().split()
            return int(fields[1]) * _PAGE_BYTES
        except (OSError, IndexError, ValueError):
            return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def hwm_bytes(pid: int) -> int | None:
    """The process's RSS high-water mark (Linux ``VmHWM``), or None where not available."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None


def uss_bytes(pid: int) -> int | None:
    """Unique set size (memory freed if the process exited), or None where not available.

    Expensive: the kernel walks the page tables (about 10 ms for a 600 MB process).
    """
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except (psutil.Error, AttributeError, OSError):
        return None


@dataclass(frozen=True)
class SmapsRollup:
    """One process's memory from ``smaps_rollup``, in bytes."""

    rss: int
    pss: int
    uss: int


def smaps_rollup(pid: int, proc_root: str | Path = "/proc") -> SmapsRollup | None:
    """RSS, PSS and USS of one process from ``/proc/<pid>/smaps_rollup`` (Linux 4.14+).

    Expensive like :func:`uss_bytes` (the kernel walks the page tables). None when the
    file is missing or unreadable (the process is gone, an older kernel, another OS).
    """
    fields: dict[bytes, int] = {}
    try:
        with open(Path(proc_root) / str(pid) / "smaps_rollup", "rb") as f:
            for line in f:
                key, _, rest = line.partition(b":")
                if key in (b"Rss", b"Pss", b"Private_Clean", b"Private_Dirty", b"Private_Hugetlb"):
                    fields.setdefault(key, int(rest.split()[0]) * 1024)  # kB
    except (OSError, ValueError, IndexError):
        return None
    if b"Pss" not in fields:
        return None
    uss = sum(fields.get(k, 0) for k in (b"Private_Clean", b"Private_Dirty", b"Private_Hugetlb"))
    return SmapsRollup(rss=fields.get(b"Rss", 0), pss=fields[b"Pss"], uss=uss)
