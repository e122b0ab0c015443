"""The embedded study storage: Optuna's journal in a file that survives crashes and kills.

``JournalStorage`` (Optuna's) on a file backend of edgetrain's own, written against
Optuna's public :class:`optuna.storages.journal.BaseJournalBackend` interface. The file
format is Optuna's (one JSON record per line), so either can read the other's journal.
Two things differ from Optuna's ``JournalFileBackend``:

- **Lock.** A writer holds an exclusive ``flock`` on ``study.journal.lock`` while it
  appends (a reader holds a shared one while it reads). The kernel releases a ``flock``
  when its holder dies, so a killed worker never makes the others wait; Optuna's lock
  files are broken only after a grace period (30 s). The lock file is never deleted.
- **Torn records.** A record cut short (a crash, a kill or a full disk in the middle of
  a write) is moved, bytes unchanged, to ``study.journal.corrupt`` and the journal is
  truncated to its last complete record, with a warning: when the journal is opened and
  before each append. A bad line in the middle (left by an older writer that appended
  after a torn record) is skipped; a complete record glued to its end is kept.

Every process reads the file the same way, so all agree on the records and their order.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep._optuna import optuna

__all__ = [
    "CORRUPT_SUFFIX",
    "LOCK_SUFFIX",
    "JournalFile",
    "JournalLock",
    "open_journal",
]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
CORRUPT_SUFFIX = ".corrupt"
_RECORD_START = b'{"op_code":'
_WAIT_WARNING_S = 10.0
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def _record(line: bytes) -> dict[str, Any] | None:
    """The journal record in one line, or None when it is not a complete one."""
    try:
        value = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    return value if isinstance(value, dict) and "op_code" in value else None


def _salvage(line: bytes) -> dict[str, Any] | None:
    """A complete record glued to the end of a torn one (an older writer appended after it)."""
    pos = line.find(_RECORD_START, 1)
    while pos != -1:
        found = _record(line[pos:])
        if found is not None:
            return found
        pos = line.find(_RECORD_START, pos + 1)
    return None


def _parse(line: bytes) -> dict[str, Any] | None:
    return _record(line) or _salvage(line)


class JournalLock:
    """An ``flock`` on a side file: exclusive for writers, shared for readers.

    Held through a file descriptor of its own, so threads and processes exclude each
    other alike; the kernel releases it when the holder dies.

    Args:
        path: the lock file (created if missing, never deleted).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def _open(self, shared: bool) -> int | None:
        flags = os.O_CLOEXEC if hasattr(os, "O_CLOEXEC") else 0
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as exc:
            if not shared or exc.errno not in _READ_ONLY:
                raise
        try:  # a read-only sweep directory (e.g. analysed from a copy): lock if we can
            return os.open(self.path, os.O_RDONLY | flags)
        except OSError:
            return None

    def _lock(self, shared: bool) -> int | None:
        import fcntl

        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        t0 = time.monotonic()
        warned = False
        pause = 0.001
        while True:
            fd = self._open(shared)
            if fd is None:
                return None
            try:
                while True:
                    try:
                        fcntl.flock(fd, op | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not warned and time.monotonic() - t0 > _WAIT_WARNING_S:
                            log.warning(
                                "waiting for %s: another live process is writing the study",
                                self.path,
                            )
                            warned = True
                        time.sleep(pause)
                        pause = min(pause * 2, 0.05)
                # the lock must be on the file that is at the path now: a deleted (and
                # re-created) lock file would let two writers in at once
                mine = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    @contextlib.contextmanager
    def hold(self, shared: bool = False) -> Iterator[None]:
        """Hold the lock (shared: a reader; readers without write access may hold none)."""
        fd = self._lock(shared)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # closing the last descriptor releases the flock


def _good_end(fd: int, size: int) -> int:
    """Where the last complete record ends: everything after it is torn or garbage."""
    chunk_size = 1 << 16
    while True:
        start = max(0, size - chunk_size)
        chunk = os.pread(fd, size - start, start)
        end = len(chunk)  # relative to start: the end of the region still to check
        nl = chunk.rfind(b"\n")
        if nl == -1 and start > 0:
            chunk_size *= 4
            continue
        end = nl + 1  # a last line without newline is torn (0 when the chunk has no line)
        while end > 0:
            prev = chunk.rfind(b"\n", 0, end - 1)
            if prev == -1 and start > 0:
                break  # the line may begin before the chunk: read more
            if _parse(chunk[prev + 1 : end]) is not None:
                return start + end
            end = prev + 1
        else:
            return start  # start == 0 here: no complete record at all
        chunk_size *= 4


class JournalFile(optuna.storages.journal.BaseJournalBackend):
    """Optuna journal records in a file, with a kernel lock and torn-record repair.

    Args:
        path: the journal file (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.corrupt_path = self.path + CORRUPT_SUFFIX
        self.lock = JournalLock(self.path + LOCK_SUFFIX)
        self._last = (0, 0)  # (record number, byte offset where it starts)
        self._reported: set[int] = set()
        if not os.path.exists(self.path):
            with open(self.path, "ab"):
                pass
        self._repair_on_open()

    # -- repair ------------------------------------------------------------------------------
    def _repair_on_open(self) -> None:
        try:
            with self.lock.hold():
                fd = os.open(self.path, os.O_RDWR)
                try:
                    self._repair(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            if exc.errno not in _READ_ONLY:
                raise
            log.debug("%s is read-only: not checked for a torn last record", self.path)

    def _repair(self, fd: int) -> bool:
        """Move a torn tail to the side file and truncate (the exclusive lock is held).

        Returns False when the tail could not be saved (it is then left in place).
        """
        size = os.fstat(fd).st_size
        if size == 0:
            return True
        good = _good_end(fd, size)
        if good == size:
            return True
        tail = os.pread(fd, size - good, good)
        if good == 0 and not tail.startswith(_RECORD_START):
            raise EdgeTrainError(
                f"{self.path} is not an Optuna journal (no complete record in its {size} "
                "bytes); give another --storage or --out"
            )
        try:
            with open(self.corrupt_path, "ab") as side:
                side.write(tail if tail.endswith(b"\n") else tail + b"\n")
                side.flush()
                os.fsync(side.fileno())
        except OSError as exc:
            log.warning(
                "%s ends with %d bytes of an incomplete record, which cannot be saved to %s "
                "(%s); they are left in place and skipped",
                self.path,
                len(tail),
                self.corrupt_path,
                exc.strerror or exc,
            )
            return False
        os.ftruncate(fd, good)
        os.fsync(fd)
        log.warning(
            "%s ended with an incomplete record (%d bytes: a crash or a full disk while "
            "writing); moved them to %s and kept the %d bytes of complete records",
            self.path,
            len(tail),
            self.corrupt_path,
            good,
        )
        return True

    # -- BaseJournalBackend ------------------------------------------------------------------
    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """Records from number ``log_number_from`` on (complete ones only)."""
        number, pos = self._last if log_number_from >= self._last[0] else (0, 0)
        with self.lock.hold(shared=True), open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(pos)
            data = fh.read(max(0, size - pos))
        logs = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl == -1:  # no newline: still being written, or torn
                break
            line_pos, line = pos + start, data[start : nl + 1]
            start = nl + 1
            found = _parse(line)
            if found is None:
                if line_pos not in self._reported:
                    self._reported.add(line_pos)
                    log.warning(
                        "%s: skipped a corrupt line of %d bytes at byte %d",
                        self.path,
                        len(line),
                        line_pos,
                    )
                continue
            if number >= log_number_from:
                logs.append(found)
            number += 1
            if number > self._last[0]:
                self._last = (number, pos + start)
        return logs

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append records under the exclusive lock, after repairing a torn tail; fsync."""
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in logs).encode()
        with self.lock.hold():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n" and not self._repair(fd):
                    data = b"\n" + data  # end the torn line: it is skipped, ours is whole
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)  # no torn record of ours
                    raise
            finally:
                os.close(fd)


def open_journal(path: str | Path) -> Any:
    """Optuna's ``JournalStorage`` on :class:`JournalFile` (repairs a torn last record)."""
    return optuna.storages.JournalStorage(JournalFile(path))
