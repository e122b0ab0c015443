"""Safe file-system operations: owned directories, one writer per directory, atomic writes.

Three rules (docs/design.md, "Files and safety"):

- **Ownership.** Every directory edgetrain creates (a run, a sweep, a bench output, a
  report, an export) holds a marker file, ``.edgetrain.json``, naming its kind, the
  edgetrain version and the command that made it. ``--overwrite`` clears only a marked
  directory of a compatible kind, never ``/``, the home directory, the working directory
  or one of its parents, and never follows a symbolic link out of the target.
- **One writer.** A process that writes a directory holds an exclusive ``flock`` on
  ``.edgetrain.lock`` inside it for as long as it writes. The kernel drops the lock when the
  process dies, so a lock left by a killed process is taken over at once; a live holder
  is named in the error (process id and host).
- **Atomic, strict files.** Whole files are written to a temporary file and renamed over
  the old one (no ``.tmp`` left behind on failure); JSON is strict (non-finite numbers are
  written as ``null``, never as ``NaN``). A stop signal that arrives while a file is
  being written (through :func:`interrupt`, edgetrain's SIGTERM/SIGINT handlers) takes
  effect when the write is done (:func:`interrupts_deferred`): raised inside
  ``torch.save``, it broke the zip writer and the run ended with an internal error. OS errors become one-line
  :class:`~edgetrain.errors.EdgeTrainError` messages naming the path and the reason.

This module imports no torch: the reports and the CLI use it too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError

__all__ = [
    "LOCK_NAME",
    "MARKER_NAME",
    "DirLock",
    "atomic_write_bytes",
    "atomic_write_text",
    "claim_dir",
    "clear_dir",
    "dumps_strict",
    "fsync_dir",
    "interrupt",
    "interrupts_deferred",
    "is_owned",
    "mark_dir",
    "os_error_message",
    "read_marker",
    "refuse_dangerous",
    "user_errors",
    "write_json",
]

MARKER_NAME = ".edgetrain.json"
LOCK_NAME = ".edgetrain.lock"
# the files edgetrain keeps in a directory of its own that are not results
BOOKKEEPING = frozenset({MARKER_NAME, LOCK_NAME})

# errno -> what the user is told (the path comes first)
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "it already exists",
    errno.ENOTEMPTY: "the directory is not empty",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
}


def os_error_message(exc: OSError, action: str = "cannot write") -> str:
    """``cannot write PATH: no space left on the device (ENOSPC)``: one line, path first."""
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()
    suffix = f" ({code})" if code else ""
    return f"{action} {where}: {reason}{suffix}" if where else f"{action}: {reason}{suffix}"


@contextlib.contextmanager
def user_errors(action: str = "cannot write") -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into a one-line :class:`EdgeTrainError`."""
    try:
        yield
    except OSError as exc:
        raise EdgeTrainError(os_error_message(exc, action)) from exc


# -- atomic writes -----------------------------------------------------------------------------
def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (a rename, a new file) durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# writes in progress (interrupts_deferred) and the stop signals that arrived meanwhile
_writing = 0
_pending: list[int] = []


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Around a file write: :func:`interrupt` (a signal handler's) waits until the write is
    done, then raises ``KeyboardInterrupt`` as it would have."""
    global _writing
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1
        if not _writing and _pending:
            _pending.clear()
            raise KeyboardInterrupt


def interrupt() -> None:
    """For a stop signal's handler: raise ``KeyboardInterrupt`` now, or after the file
    write in progress (:func:`interrupts_deferred`)."""
    if _writing:
        _pending.append(1)
        return
    raise KeyboardInterrupt


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_dir: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    A kill leaves either the old file or the new one; a failure (disk full, read-only file
    system) leaves the old file and no temporary file. ``sync_dir`` also makes the rename
    durable across a power cut (fsync of the directory).
    """
    path = Path(path)
    with interrupts_deferred():  # a stop signal: after the rename
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, sync_dir: bool = False) -> None:
    """Write text atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(), sync_dir=sync_dir)


def _finite_copy(value: Any, where: str, found: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found.append(f"{where or 'value'}={value}")
        return None
    if isinstance(value, dict):
        return {
            k: _finite_copy(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_finite_copy(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def dumps_strict(data: Any, *, note_key: str | None = "nonfinite") -> str:
    """Strict JSON (RFC 8259): NaN and infinities become ``null``.

    When ``data`` is a mapping and ``note_key`` is set, the replaced values are listed
    under ``note_key`` (e.g. ``["final.train_loss=nan"]``) so the ``null`` is explained.
    """
    # numpy/torch scalars first, so a NaN inside one is caught too
    plain = json.loads(json.dumps(data, default=_json_default, allow_nan=True))
    found: list[str] = []
    clean = _finite_copy(plain, "", found)
    if found and note_key and isinstance(clean, dict):
        clean[note_key] = found
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    """Write strict JSON atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, dumps_strict(data))
    return path


# -- ownership ---------------------------------------------------------------------------------
_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^\s:/@]*:)[^\s@]*@")
_QUERY_SECRET = re.compile(
    r"((?:password|passwd|pass|pwd|secret|token|sslpassword)=)[^&\s]*", re.IGNORECASE
)


def _command_line() -> str:
    """The command that made a directory, secrets (a database password) masked."""
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = _URL_PASSWORD.sub(r"\1***@", " ".join(argv))
    return _QUERY_SECRET.sub(r"\1***", text)[:500]


def mark_dir(path: str | Path, kind: str) -> None:
    """Write the ownership marker of ``path`` (a directory edgetrain created)."""
    from edgetrain import __version__

    marker = {
        "kind": kind,
        "edgetrain": __version__,
        "command": _command_line(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(Path(path) / MARKER_NAME, json.dumps(marker, indent=2) + "\n")


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of ``path``, or None when it has none (or an unreadable one)."""
    marker = Path(path) / MARKER_NAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def is_owned(path: str | Path, kinds: tuple[str, ...] | None = None) -> bool:
    """Whether ``path`` carries edgetrain's marker (of one of ``kinds`` when given)."""
    marker = read_marker(path)
    return marker is not None and (kinds is None or marker["kind"] in kinds)


def refuse_dangerous(path: str | Path, what: str = "directory") -> Path:
    """Raise unless ``path`` is safe to clear: not a symlink, not /, home, cwd or its parent.

    Returns the resolved path.
    """
    given = Path(path)
    if given.is_symlink():
        raise EdgeTrainError(
            f"refusing to clear {what} {given}: it is a symbolic link "
            f"(to {os.readlink(given)}); edgetrain never follows a link out of its directory"
        )
    target = given.resolve()
    cwd = Path.cwd().resolve()
    protected = {Path(target.anchor), Path.home().resolve(), cwd, *cwd.parents}
    if target in protected:
        raise EdgeTrainError(
            f"refusing to clear {what} {given}: it is the root, the home directory, the "
            "working directory or one of its parents"
        )
    return target


def clear_dir(path: str | Path, kinds: tuple[str, ...], what: str = "directory") -> None:
    """Remove everything in an owned directory except its marker and lock.

    Raises:
        EdgeTrainError: ``path`` is not marked with one of ``kinds``, or it is a dangerous
            place (see :func:`refuse_dangerous`).
    """
    target = refuse_dangerous(path, what)
    marker = read_marker(target)
    if marker is None:
        raise EdgeTrainError(
            f"refusing to clear {what} {path}: edgetrain did not create it (no {MARKER_NAME} "
            "marker); remove it yourself or choose another directory"
        )
    if marker["kind"] not in kinds:
        raise EdgeTrainError(
            f"refusing to clear {what} {path}: it is an edgetrain {marker['kind']} directory, "
            f"not a {' or '.join(kinds)} directory"
        )
    for child in target.iterdir():
        if child.name in BOOKKEEPING:
            continue
        # a link is removed as a link; rmtree does not follow links inside the tree
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _meaningful(path: Path) -> list[Path]:
    """Entries other than edgetrain's own bookkeeping: the marker, the lock, and a marker
    another process is writing right now (``..edgetrain.json.*.tmp``: two sweep workers
    that start together claim one directory)."""
    return [
        c
        for c in path.iterdir()
        if c.name not in BOOKKEEPING and not c.name.startswith(f".{MARKER_NAME}.")
    ]


def claim_dir(
    path: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    reuse: bool = False,
    what: str | None = None,
    compatible: tuple[str, ...] = (),
    hint: str = "choose another directory or use --overwrite",
    lock: DirLock | None = None,
) -> Path:
    """Make ``path`` a directory of ``kind`` that edgetrain may write.

    - missing or empty: created and marked;
    - non-empty and ``reuse``: accepted when it is marked with ``kind`` (or ``compatible``),
      or unmarked inside a marked directory;
    - non-empty and ``overwrite``: cleared when it is marked with ``kind`` (or
      ``compatible``) and not a dangerous place;
    - otherwise refused with a one-line error.

    ``lock`` (a :class:`DirLock` on ``path``) is taken once the directory is known to be
    edgetrain's and before anything in it is removed, so a directory another process is
    writing is never cleared.
    """
    what = what or f"{kind} directory"
    kinds = (kind, *compatible)
    p = Path(path)
    with user_errors(f"cannot create {what}"):
        if p.exists() and not p.is_dir():
            raise EdgeTrainError(f"{what} {p} exists and is not a directory")
        if p.is_dir() and _meaningful(p):
            marker = read_marker(p)
            # an unmarked folder inside an edgetrain directory (a report of a run written
            # before markers existed) is edgetrain's too
            ours = marker["kind"] in kinds if marker is not None else is_owned(p.resolve().parent)
            if reuse and ours:
                if lock is not None:
                    lock.acquire()
                return p
            if not overwrite:
                if marker is None:
                    raise EdgeTrainError(
                        f"{what} {p} is not empty and edgetrain did not create it; "
                        "choose another directory"
                    )
                raise EdgeTrainError(f"{what} {p} already exists; {hint}")
            refuse_dangerous(p, what)
            if lock is not None and is_owned(p, kinds):
                lock.acquire()
            clear_dir(p, kinds, what)
        else:
            p.mkdir(parents=True, exist_ok=True)
        if lock is not None:
            lock.acquire()
        if read_marker(p) is None or read_marker(p)["kind"] != kind:  # type: ignore[index]
            mark_dir(p, kind)
    return p


# -- one writer per directory --------------------------------------------------------------------
class DirLock:
    """An exclusive lock on a directory for as long as one process writes it.

    Uses ``flock`` on ``DIR/.edgetrain.lock``: the kernel releases it when the holder
    exits or is killed, so a stale lock never blocks. The file records who holds it.
    """

    def __init__(self, directory: str | Path, what: str = "directory") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    def acquire(self) -> DirLock:
        """Take the lock or raise :class:`EdgeTrainError` naming the process that holds it."""
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, but say so once
            return self
        with user_errors(f"cannot lock {self.what}"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise EdgeTrainError(os_error_message(exc, f"cannot lock {self.what}")) from exc
            pid, host = [*holder, "?", "?"][:2]
            raise EdgeTrainError(
                f"{self.what} {self.directory} is in use by process {pid} on {host}; "
                "wait for it to finish or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @staticmethod
    def is_free(directory: str | Path) -> bool:
        """True when no live process holds ``directory``'s lock (a reader's check)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return True
        try:
            fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
