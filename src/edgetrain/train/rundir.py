"""The run directory: the contract between layers (docs/design.md, "The run directory").

Every file is written so that a run killed at any moment leaves it readable: CSV rows
are appended and flushed one at a time; JSON, YAML and checkpoints go to a temporary
file that is then renamed over the old one. The directory carries edgetrain's ownership
marker and is locked by the one process that writes it (:mod:`edgetrain.safefs`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edgetrain.contract import (
    CHECKPOINT_FILE,
    DECISIONS_COLUMNS,
    METRICS_COLUMNS,
    RESOURCES_BASE_COLUMNS,
    metrics_columns,
)
from edgetrain.errors import EdgeTrainError
from edgetrain.safefs import (
    DirLock,
    atomic_write_bytes,
    atomic_write_text,
    claim_dir,
    dumps_strict,
    interrupts_deferred,
    mark_dir,
    read_marker,
    user_errors,
)

__all__ = [
    "DECISIONS_COLUMNS",
    "METRICS_COLUMNS",
    "RESOURCES_BASE_COLUMNS",
    "CsvLog",
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_text",
    "metrics_columns",
    "read_csv_rows",
]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read complete rows of a CSV file; a half-written last line is dropped."""
    if not path.exists():
        return [], []
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # killed in the middle of a write
    reader = csv.reader(lines)
    rows = list(reader)
    if not rows:
        return [], []
    header, body = rows[0], rows[1:]
    complete = [dict(zip(header, r, strict=True)) for r in body if len(r) == len(header)]
    return header, complete


class CsvLog:
    """An append-only CSV file with a fixed header; each row is flushed as it is written.

    Thread-safe: the monitor's sampler thread and the training loop may both append.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._lock = threading.Lock()
        new = not path.exists() or path.stat().st_size == 0
        if not new:  # appending (resume): keep the file's own header, e.g. of an older version
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), None)
            if header:
                self.columns = header
        self._fh = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
        if new:
            self._write_line(self.columns)

    def _write_line(self, cells: Iterable[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(list(cells))
        # one write call per row, then flush: a kill leaves at most one partial line
        self._fh.write(buf.getvalue())
        self._fh.flush()

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row; missing columns are left empty, unknown keys are ignored."""
        with self._lock:
            if self._fh.closed:
                return
            self._write_line(_cell(row.get(c)) for c in self.columns)

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()


class RunDir:
    """Writer for one run directory.

    Args:
        path: the directory.
        mode: ``"new"`` (must not exist or be empty), ``"overwrite"`` (cleared first) or
            ``"resume"`` (must hold a checkpoint).
    """

    CHECKPOINT = CHECKPOINT_FILE

    def __init__(self, path: str | Path, mode: str = "new") -> None:
        self.path = Path(path)
        self.lock = DirLock(self.path, "run directory")
        if mode in ("new", "overwrite"):
            claim_dir(
                self.path,
                "run",
                overwrite=mode == "overwrite",
                what="run directory",
                hint="use --resume to continue it or --overwrite to replace it "
                "(overwrite=True in Python)",
                lock=self.lock,
            )
        elif mode == "resume":
            if not (self.path / self.CHECKPOINT).exists():
                raise EdgeTrainError(
                    f"cannot resume {self.path}: no checkpoint at {self.path / self.CHECKPOINT}"
                )
            self.lock.acquire()
            if read_marker(self.path) is None:  # a run written before markers existed
                with user_errors("cannot write run directory"):
                    mark_dir(self.path, "run")
        else:
            raise ValueError(f"unknown RunDir mode {mode!r}")
        with user_errors("cannot write run directory"):
            (self.path / "checkpoints").mkdir(exist_ok=True)
        self._logs: dict[str, CsvLog] = {}

    # -- files -----------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
        return target

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        return self.write_text(name, dumps_strict(dict(data)))

    def read_json(self, name: str) -> dict[str, Any]:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else {}

    def log(self, name: str, columns: Sequence[str]) -> CsvLog:
        """The CSV log ``name`` (opened once; appends to an existing file)."""
        if name not in self._logs:
            self._logs[name] = CsvLog(self.path / name, columns)
        return self._logs[name]

    def truncate_log(
        self, name: str, keep: Callable[[dict[str, str]], bool]
    ) -> list[dict[str, str]]:
        """Rewrite ``name`` keeping complete rows for which ``keep(row)`` holds (for resume)."""
        if name in self._logs:
            self._logs.pop(name).close()
        path = self.path / name
        header, rows = read_csv_rows(path)
        if not header:
            return []
        kept = [r for r in rows if keep(r)]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([r[c] for c in header] for r in kept)
        atomic_write_text(path, buf.getvalue())
        return kept

    def save_checkpoint(self, state: Mapping[str, Any]) -> Path:
        """Write ``checkpoints/last.pt`` atomically; it must hold tensors and plain types only
        (it is read back with ``weights_only=True``)."""
        return save_tensors(self.path / self.CHECKPOINT, state)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_tensors(self.path / self.CHECKPOINT, "checkpoint")

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self.lock.release()


def save_tensors(target: Path, state: Mapping[str, Any]) -> Path:
    """``torch.save`` to a temporary file and a rename; no ``.tmp`` is left on failure."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # a stop signal waits for the write and the rename (raised inside torch.save, it broke
    # the zip writer; raised before the rename, it lost the checkpoint)
    with interrupts_deferred():
        try:
            # straight to the file: through BytesIO held a second copy of the state in memory
            with open(tmp, "wb") as fh:
                torch.save(dict(state), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return target


def load_tensors(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``: a file that needs anything but tensors and plain
    types (a planted pickle, a foreign file) is refused without running any of it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise EdgeTrainError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # UnpicklingError for a forbidden global, RuntimeError, EOF, ...
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise EdgeTrainError(
            f"cannot read {what} {path}: not an edgetrain file of tensors and plain values "
            f"(only weights_only loading is allowed): {first}"
        ) from None
