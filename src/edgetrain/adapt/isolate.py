"""Probe steps in a forked copy of the process, so that what they leave behind is not kept.

On CPU a memory budget bounds the process's resident memory, and probe steps leave some
of it behind for good: oneDNN keeps the kernels it compiled for every batch size and
mode a probe ran (its primitive cache has no public call to empty it), about 1 MiB per
size on vgg11, and a lever set probed but not chosen (recomputation, a codec) leaves its
own. Measured on vgg11 with a 64 MiB budget: 12 MiB more at the same micro-batch than a
run that never probed, enough to halve the micro-batch the controller could choose.

:func:`run_forked` runs a probing function in a ``fork()`` of the process and returns
its result (pickled through a pipe); the child exits and everything it touched goes with
it. The child starts from the parent's memory, so its meter (the RSS high-water mark of
``/proc/self``, against the same baseline) measures what the same steps would have cost
in the parent, once one difference is removed: a child's page tables start without the
parent's file-backed pages (library code, ~130 MiB of a 430 MiB PyTorch process), which
come back as it touches them and would count as growth. So the parent lists its resident
file pages before the fork (``/proc/self/maps`` and ``/proc/self/pagemap``, about 20 ms)
and the child maps them first (about 90 ms): its RSS then equals the parent's, page for
page, and a step measures the same in both (checked: 433 vs 433 MiB, high-water mark 436
vs 436). And the child runs as many threads as the parent: GNU OpenMP's thread pool does
not survive ``fork()`` (a parallel region in the child would wait for threads that do not
exist), so the parent pauses it first (``omp_pause_resource_all``, OpenMP 5.0: its threads
exit, the next parallel region starts new ones, in either process). Threads matter: each
allocates from its own heap arena, and a one-thread child measured 1.7 to 4.6 MiB less
than the same logical batch on two threads in the parent. Where no such libgomp is loaded
the child runs one thread (safe, and measures a little less: the controller's
whole-batch check in the process remains the last word).

Where fork is unsafe or unavailable (not Linux, CUDA initialised) or the child fails for
any reason, the function runs in this process instead, as before: a genuine error then
surfaces with its own traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import traceback
import warnings
from array import array
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["can_fork", "resident_file_pages", "run_forked"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def can_fork() -> bool:
    """Whether probes can run in a forked copy: Linux, and no CUDA context (which a
    child cannot use)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and not _cuda_initialized()


def _cuda_initialized() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())


def _die_with_parent() -> None:
    """The child is killed when the parent dies (SIGKILL, a crash): no orphan probes."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def resident_file_pages(
    maps: str = "/proc/self/maps", pagemap: str = "/proc/self/pagemap"
) -> list[int]:
    """Addresses of the pages of readable file mappings that are resident in this
    process (devices excepted); [] where the files cannot be read."""
    page = os.sysconf("SC_PAGE_SIZE")
    found: list[int] = []
    try:
        with open(maps) as lines, open(pagemap, "rb") as entries:
            for line in lines:
                fields = line.split(None, 5)
                if len(fields) < 6 or not fields[1].startswith("r"):
                    continue
                path = fields[5].strip()
                if not path.startswith("/") or path.startswith("/dev/"):
                    continue
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                entries.seek(lo // page * 8)
                present = array("Q")
                present.frombytes(entries.read((hi - lo) // page * 8))
                found.extend(lo + i * page for i, e in enumerate(present) if e >> 63)
    except (OSError, ValueError):
        return []
    return found


def _map_pages(addresses: list[int]) -> None:
    """Read one byte of each page: the child maps what the parent had resident."""
    for address in addresses:
        ctypes.string_at(address, 1)


_GOMPS: list[ctypes.CDLL] | None = None
_OMP_PAUSE_HARD = 2


def _libgomps() -> list[ctypes.CDLL]:
    """Every GNU OpenMP library this process has loaded (torch's, and others': scikit-learn
    brings its own), or [] if one of them cannot pause (each keeps its own thread pool)."""
    global _GOMPS
    if _GOMPS is None:
        try:
            with open("/proc/self/maps") as maps:
                paths = {
                    line.split(None, 5)[5].strip()
                    for line in maps
                    if "libgomp" in line and len(line.split(None, 5)) == 6
                }
        except OSError:
            paths = set()
        libs = []
        for path in sorted(paths):
            try:
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            except OSError:
                libs = []
                break
            if not hasattr(lib, "omp_pause_resource_all"):
                libs = []
                break
            libs.append(lib)
        _GOMPS = libs
    return _GOMPS


def _pause_openmp() -> bool:
    """Stop the pool threads of every GNU OpenMP loaded (restarted on the next parallel
    region), so that a forked child can run parallel regions; False where that is not
    possible (the child then runs one thread)."""
    libs = _libgomps()
    if not libs:
        return False
    try:
        return all(int(lib.omp_pause_resource_all(_OMP_PAUSE_HARD)) == 0 for lib in libs)
    except Exception:
        return False


def _child(fn: Callable[[], T], write_fd: int, pages: list[int], threads: bool) -> None:
    """Run ``fn`` and send ``("ok", result)`` or ``("error", text)``; never returns.
    ``threads``: the parent's OpenMP pool was paused, so the child may use threads."""
    code = 0
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)  # not the run's handlers (checkpoints)
        _die_with_parent()
        # silent: a lock another thread of the parent held at the fork (a progress bar's
        # console) is never released here, so nothing may write through one
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the child exits)
        if not threads:
            torch.set_num_threads(1)  # before any parallel region (see the module doc)
        _map_pages(pages)
        try:
            payload = pickle.dumps(("ok", fn()), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            code = 1
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    with os.fdopen(fd, "rb") as src:
        while chunk := src.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def run_forked(fn: Callable[[], T], *, what: str = "probe steps") -> T:
    """``fn()``, run in a forked child when :func:`can_fork` (else, or if the child
    fails, in this process). ``fn`` must return a picklable value; what it changes in the
    child's memory (the model, its own objects) is not seen here, by design."""
    if not can_fork():
        return fn()
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        with contextlib.suppress(Exception):
            stream.flush()
    pages = resident_file_pages()
    threads = _pause_openmp()
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        log.info("%s run in this process: fork failed (%s)", what, exc)
        return fn()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(fn, write_fd, pages, threads)
    os.close(write_fd)
    reaped = False
    try:
        data = _read_all(read_fd)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        if not reaped:  # interrupted while the child runs: it goes too
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    try:  # our own child's bytes, through a pipe only it could write
        kind, value = pickle.loads(data) if data else ("error", "no result")
    except Exception as exc:  # a result that does not unpickle
        kind, value = "error", f"unreadable result ({exc})"
    if kind == "ok" and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return value
    if os.WIFSIGNALED(status):
        value = f"killed by signal {os.WTERMSIG(status)}"
    log.info("%s run in this process: the forked copy failed: %s", what, str(value).strip())
    return fn()
