"""Where a study lives: an embedded journal file, or a database that several machines share.

- Default: Optuna's ``JournalStorage`` with a file backend, ``DIR/study.journal``. Worker
  processes on one machine (or on machines sharing the directory over NFS) append to it
  under a file lock, so they can run at the same time.
- ``postgresql://user:password@host/db`` (or any database URL Optuna supports): workers on
  several machines join the same study. SQLite is accepted for a single worker only
  (parallel writers get "database is locked").

Passwords in URLs are never written to files or logs: everything that shows a storage
goes through :func:`mask_url`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from edgetrain.errors import EdgeTrainError, MissingExtraError

__all__ = [
    "JOURNAL_FILE",
    "has_secret",
    "is_database_url",
    "mask_text",
    "mask_url",
    "open_storage",
    "storage_label",
]

log = logging.getLogger(__name__)

JOURNAL_FILE = "study.journal"
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
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = journal_path(storage, sweep_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        # an open(O_EXCL) lock file: works on local disks and NFSv3+; a lock left by a
        # killed process is broken after the grace period
        lock = JournalFileOpenLock(str(path), grace_period=30)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
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
