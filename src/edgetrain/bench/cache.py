"""The page cache: evict a data set's files and measure how much of them is resident.

Eviction (:func:`evict`) has two methods:

* ``fadvise`` (the default; ``auto`` means the same): per file, ``fsync`` then
  ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``. Only the bench's own files leave the
  cache; no root needed (dirty pages are written first so that they can go).
* ``drop_caches``, only when asked for by name: ``os.sync()`` then ``1`` written to
  ``/proc/sys/vm/drop_caches``. This empties the page cache of the whole machine, which
  slows down everyone else on a shared machine; it needs root and a writable /proc/sys,
  and fails softly (a note, no eviction) without them.

Residency (:func:`residency`) maps each file and asks ``mincore(2)`` through ctypes; mapping
a file does not read it, so measuring does not change what is measured. Where that is
impossible (not Linux/BSD/macOS) it is ``None``: unknown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["DROP_CACHES", "Eviction", "Residency", "evict", "evict_files", "residency"]

log = logging.getLogger(__name__)

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
#: ``auto`` is the polite default: the per-file method. The machine-wide ``drop_caches``
#: is never chosen automatically.
METHODS = ("auto", "drop_caches", "fadvise")


@dataclass(frozen=True)
class Residency:
    """How much of a set of files is in the page cache.

    Attributes:
        resident_bytes: bytes in resident pages (whole pages, capped at each file's size).
        total_bytes: size of all files measured.
        files: number of files measured.
    """

    resident_bytes: int
    total_bytes: int
    files: int

    @property
    def fraction(self) -> float | None:
        """Resident share of the bytes, or None for no bytes."""
        return self.resident_bytes / self.total_bytes if self.total_bytes else None


@dataclass(frozen=True)
class Eviction:
    """What :func:`evict` did.

    Attributes:
        method: ``fadvise``, ``drop_caches`` or ``none``.
        files: number of files it was asked to evict.
        failed: files the per-file method could not open or advise.
        before: residency before (None: unknown).
        after: residency after (None: unknown).
        note: why a method was not used, or empty.
    """

    method: str
    files: int
    failed: int
    before: Residency | None
    after: Residency | None
    note: str = ""


class _Libc:
    """mmap, mincore and munmap from the C library, with argument types set."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.mmap = lib.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self.munmap = lib.munmap
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.mincore = lib.mincore
        self.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.page_bytes = mmap.PAGESIZE


@lru_cache(maxsize=1)
def _libc() -> _Libc | None:
    try:
        return _Libc()
    except (OSError, AttributeError) as exc:  # no C library with mincore (Windows)
        log.debug("mincore unavailable: %s", exc)
        return None


_MAP_FAILED = ctypes.c_void_p(-1).value


def _resident_bytes(libc: _Libc, path: Path) -> tuple[int, int] | None:
    """(resident, size) of one file, or None if it cannot be measured."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            return None
        try:
            pages = (size + libc.page_bytes - 1) // libc.page_bytes
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            resident = sum(b & 1 for b in bytes(vec))
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    last = size - (pages - 1) * libc.page_bytes  # the last page is partly beyond the file
    full = resident * libc.page_bytes
    if vec[pages - 1] & 1:
        full -= libc.page_bytes - last
    return full, size


def residency(files: Iterable[str | Path]) -> Residency | None:
    """How much of ``files`` is in the page cache, or None where that cannot be known."""
    libc = _libc()
    if libc is None:
        return None
    resident = total = count = 0
    for path in files:
        measured = _resident_bytes(libc, Path(path))
        if measured is None:
            continue
        resident += measured[0]
        total += measured[1]
        count += 1
    return Residency(resident, total, count)


def evict_files(files: Iterable[str | Path]) -> tuple[int, int]:
    """``fsync`` + ``posix_fadvise(DONTNEED)`` on each file; returns (advised, failed)."""
    advise: Any = getattr(os, "posix_fadvise", None)
    if advise is None:
        raise OSError("posix_fadvise is not available on this platform")
    done = failed = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            log.warning("cannot open %s to evict it from the page cache: %s", path, exc)
            failed += 1
            continue
        try:
            os.fsync(fd)  # dirty pages cannot be dropped: write them first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            done += 1
        except OSError as exc:
            log.warning("cannot evict %s from the page cache: %s", path, exc)
            failed += 1
        finally:
            os.close(fd)
    return done, failed


def _drop_caches(path: Path) -> str:
    """Write '1' to drop_caches; returns '' on success, else why not."""
    try:
        os.sync()
        with open(path, "w") as fh:
            fh.write("1\n")
    except OSError as exc:
        return f"{path} not writable ({exc.strerror or exc}); needs root and a writable /proc/sys"
    return ""


def evict(
    files: Sequence[str | Path],
    *,
    method: str = "auto",
    drop_caches_path: str | Path | None = None,
) -> Eviction:
    """Evict ``files`` from the page cache and report residency before and after.

    Args:
        files: the data set's files.
        method: ``auto`` or ``fadvise`` (only these files, per file: the default) or
            ``drop_caches`` (the whole machine's page cache; only when asked for, as it
            slows down every other user of the machine; fails softly without root).
        drop_caches_path: the drop_caches file (default ``DROP_CACHES``; tests point it
            elsewhere). Only ``drop_caches`` writes it.

    Returns:
        What was done; never raises for a missing permission or platform feature.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    files = list(files)
    before = residency(files)
    used = ""
    note = ""
    failed = 0
    if method == "drop_caches":
        note = _drop_caches(Path(drop_caches_path) if drop_caches_path else DROP_CACHES)
        used = "" if note else "drop_caches"
    else:
        try:
            _, failed = evict_files(files)
            used = "fadvise"
        except OSError as exc:
            note = str(exc)
    result = Eviction(
        method=used or "none",
        files=len(files),
        failed=failed,
        before=before,
        after=residency(files) if used else None,
        note=note,
    )
    log.info("page cache: %s on %d files (%s)", result.method, len(files), result.note or "ok")
    return result
