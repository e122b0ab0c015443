"""Where a study lives: an embedded journal file, or a database that several machines share.

- Default: Optuna's ``JournalStorage`` with a file backend, ``DIR/study.journal`` (see
  :mod:`edgetrain.sweep.journal`). Worker processes on one machine (or on machines sharing
  the directory over NFS) append to it under a ``flock`` that dies with its holder, so they
  can run at the same time; a record torn by a crash is set aside, not fatal.
- ``postgresql://user:password@host/db`` (or any database URL Optuna supports): workers on
  several machines join the same study. SQLite is accepted for a single worker only
  (parallel writers get "database is locked").

Passwords in URLs are never written to files or logs: everything that shows a storage
goes through :func:`mask_url`.

A database that restarts, or a network that drops for a while, does not end a sweep: the
worker's storage calls go through :class:`StorageRetry`, which retries transient errors
with exponential backoff for ``EDGETRAIN_STORAGE_RETRY_S`` seconds (default 300).
"""

from __future__ import annotations

import errno
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from edgetrain.errors import EdgeTrainError, MissingExtraError

__all__ = [
    "DEFAULT_RETRY_S",
    "JOURNAL_FILE",
    "RETRY_ENV",
    "StorageRetry",
    "StorageUnavailableError",
    "has_secret",
    "is_database_url",
    "mask_text",
    "mask_url",
    "open_storage",
    "retry_patience_s",
    "storage_label",
    "transient_storage_error",
]

log = logging.getLogger(__name__)

JOURNAL_FILE = "study.journal"
RETRY_ENV = "EDGETRAIN_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 300.0
_T = TypeVar("_T")
_MASK = "***"
_SECRET_QUERY_KEYS = ("password", "passwd", "pass", "pwd", "secret", "token", "sslpassword")


def is_database_url(value: str | None) -> bool:
    """True for ``scheme://...`` (a database URL); False for a journal file path."""
    return bool(value) and "://" in str(value)


def mask_url(url: str) -> str:
    """``postgresql://me:s3cret@db/x`` -> ``postgresql://me:***@db/x`` (query secrets too)."""
    if not is_database_url(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^@/]*@", f"//{_MASK}@", url)
    out = url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            out = out.replace(netloc, userinfo.split(":", 1)[0] + ":" + _MASK + "@" + host, 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, _MASK if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
            out = out.replace(parts.query, query, 1)
    return out


def has_secret(url: str | None) -> bool:
    """Whether masking changes the URL (it holds a password or a secret parameter)."""
    return bool(url) and mask_url(str(url)) != str(url)


def _secrets(url: str) -> list[str]:
    found = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k.lower() in _SECRET_QUERY_KEYS and v:
            found.append(v)
    return found


def mask_text(text: str, url: str | None) -> str:
    """Remove ``url``'s password (and the URL itself) from a message, e.g. a driver error."""
    if not url or not is_database_url(url):
        return text
    out = text.replace(url, mask_url(url))
    for secret in _secrets(url):
        out = out.replace(secret, _MASK)
    return out


def storage_label(storage: str | None, sweep_dir: Path | None) -> str:
    """How a storage is shown and recorded: a masked URL or the journal file's path."""
    if is_database_url(storage):
        return mask_url(str(storage))
    return str(journal_path(storage, sweep_dir))


def journal_path(storage: str | None, sweep_dir: Path | None) -> Path:
    """The journal file: ``storage`` itself when given as a path, else ``DIR/study.journal``."""
    if storage:
        return Path(storage)
    if sweep_dir is None:
        raise EdgeTrainError("the embedded study storage needs a sweep directory (--out)")
    return Path(sweep_dir) / JOURNAL_FILE


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _with_postgres_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed (SQLAlchemy 2.1 defaults to psycopg 3).

    Raises:
        MissingExtraError: no PostgreSQL driver at all.
    """
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in ("postgresql", "postgres"):
        return url
    if _installed("psycopg"):
        return f"postgresql+psycopg://{rest}"
    if _installed("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    raise MissingExtraError("psycopg2-binary", "postgres", "a PostgreSQL study storage")


def _rdb_storage(url: str, attempts: int = 6) -> Any:
    """RDBStorage, retried when several workers create the tables of a new database at once."""
    import random
    import time

    from edgetrain.sweep._optuna import optuna

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:
            text = str(exc).lower()
            racing = "already exists" in text or "duplicate key" in text
            if not racing or attempt == attempts - 1:
                raise
            log.debug("another worker is creating the study tables; retrying")
            time.sleep(0.2 + random.random() * 0.5)
    raise AssertionError("unreachable")


def open_storage(storage: str | None, sweep_dir: Path | None) -> Any:
    """Open (creating if needed) an Optuna storage.

    Args:
        storage: a database URL, a journal file path, or None for ``DIR/study.journal``.
        sweep_dir: the sweep directory.

    Raises:
        EdgeTrainError: the database cannot be reached (password masked in the message).
        MissingExtraError: optuna or the database driver is not installed.
    """
    from edgetrain.sweep._optuna import optuna

    if not is_database_url(storage):
        path = journal_path(storage, sweep_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if _installed("fcntl"):
            from edgetrain.sweep.journal import open_journal

            # flock: released by the kernel when a worker dies; torn records repaired
            return open_journal(path)
        from optuna.storages.journal import (  # pragma: no cover - no flock (Windows)
            JournalFileBackend,
            JournalFileOpenLock,
        )

        lock = JournalFileOpenLock(str(path), grace_period=30)  # pragma: no cover
        return optuna.storages.JournalStorage(  # pragma: no cover
            JournalFileBackend(str(path), lock_obj=lock)
        )
    given = str(storage)
    url = _with_postgres_driver(given)

    def clean(text: str) -> str:
        return mask_text(mask_text(text, url), given)

    try:
        return _rdb_storage(url)
    except ImportError as exc:
        raise EdgeTrainError(
            f"cannot open the study storage {mask_url(given)}: missing database driver "
            f"({clean(str(exc))})"
        ) from None
    except Exception as exc:  # sqlalchemy errors: bad URL, refused connection, auth
        lines = clean(str(exc)).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise EdgeTrainError(f"cannot open the study storage {mask_url(given)}: {reason}") from None


# -- retries ------------------------------------------------------------------------------------
#: OS errors that may pass (a network file system, a full disk that is being cleaned).
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EIO",
        "ESTALE",
        "ENOSPC",
        "EDQUOT",
        "EAGAIN",
        "EINTR",
        "ETIMEDOUT",
        "ENOLCK",
        "EBUSY",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "EPIPE",
    )
    if hasattr(errno, name)
)


class StorageUnavailableError(EdgeTrainError):
    """The study storage kept failing for the whole retry patience."""


def retry_patience_s() -> float:
    """Seconds a storage call is retried: ``EDGETRAIN_STORAGE_RETRY_S`` (default 300).

    Raises:
        EdgeTrainError: the variable is not a number >= 0.
    """
    import math
    import os

    raw = os.environ.get(RETRY_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise EdgeTrainError(f"{RETRY_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in seen and len(seen) < 8:
        seen.append(node)
        node = node.__cause__ or node.__context__
    return seen


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - optuna depends on sqlalchemy
        return False
    if isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.DisconnectionError
        | sa_exc.TimeoutError,
    ):
        return True
    return bool(getattr(exc, "connection_invalidated", False))


def transient_storage_error(exc: BaseException) -> BaseException | None:
    """The transient error (a lost connection, a restarting database, an I/O hiccup) at the
    root of ``exc``, or None when retrying cannot help (a finished trial, a bad value)."""
    from edgetrain.sweep._optuna import optuna

    if isinstance(exc, EdgeTrainError | optuna.exceptions.UpdateFinishedTrialError):
        return None
    for node in _chain(exc):
        if _transient_one(node):
            return node
    return None


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


class StorageRetry:
    """Retries storage calls that fail with a transient error, with exponential backoff.

    Each retry is logged on one line (password masked). When the patience is spent the
    call raises :class:`StorageUnavailableError`.

    Args:
        url: the storage as given (its password is masked in messages).
        patience_s: seconds to keep trying one call (default: :func:`retry_patience_s`).
        sleep: how to wait (tests replace it).
        stop: when set (the sweep is stopping), a failing call gives up at once instead
            of waiting for the storage: the trial is left RUNNING, and the next run
            recovers its result or replaces it.
    """

    MAX_DELAY_S = 30.0

    def __init__(
        self,
        url: str | None,
        patience_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
    ) -> None:
        self.url = url
        self.patience_s = retry_patience_s() if patience_s is None else float(patience_s)
        self.sleep = sleep
        self.stop = stop
        self.retries = 0  # all retries made (for tests and reports)

    def describe(self, exc: BaseException) -> str:
        """One line about an error, without the password."""
        text = _one_line(mask_text(str(exc), self.url))
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)``, retried while it fails with a transient error.

        Args:
            what: what the call does, for messages ("telling trial 3").
        """
        deadline = time.monotonic() + self.patience_s
        delay = min(0.5, max(0.01, self.patience_s / 20))
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                cause = transient_storage_error(exc)
                if cause is None:
                    raise
                attempt += 1
                left = deadline - time.monotonic()
                reason = self.describe(cause)
                where = f" {storage_label(self.url, None)}" if self.url else ""
                if left <= 0:
                    raise StorageUnavailableError(
                        f"the study storage{where} failed for {self.patience_s:g} s while "
                        f"{what}: {reason}; raise {RETRY_ENV} to wait longer"
                    ) from None
                if self.stop is not None and self.stop.is_set():
                    raise StorageUnavailableError(
                        f"the study storage{where} failed while {what} as the sweep was "
                        f"stopping: {reason}"
                    ) from None
                pause = min(delay * (0.75 + random.random() / 2), left)
                log.warning(
                    "storage error while %s (attempt %d; retrying in %.1f s, giving up in "
                    "%.0f s): %s",
                    what,
                    attempt,
                    pause,
                    left,
                    reason,
                )
                self.retries += 1
                if self.stop is not None:
                    self.stop.wait(pause)
                else:
                    self.sleep(pause)
                delay = min(delay * 2, self.MAX_DELAY_S)
