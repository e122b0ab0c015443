"""Crash-safe files: resources.csv appended a flushed row at a time, JSON replaced atomically."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from edgetrain.safefs import write_json

__all__ = ["ResourcesCsv", "resources_columns", "write_json_atomic"]

logger = logging.getLogger(__name__)


def resources_columns(sample_columns: Sequence[str]) -> list[str]:
    """resources.csv header: the monitor's columns with ``epoch`` after ``t_s``."""
    rest = [c for c in sample_columns if c not in ("t_s", "epoch")]
    return ["t_s", "epoch", *rest]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(round(value, 6))
    return str(value).replace(",", ";").replace("\n", " ")


class ResourcesCsv:
    """Appends monitor samples to a CSV file, one flushed row per sample.

    The header is fixed when the file is created; a missing value leaves its cell empty,
    a key outside the header is ignored. Appending to an existing file keeps its header
    (a resumed run), mapping values by name. Usable directly as a monitor listener.

    Args:
        path: The CSV file.
        columns: Header for a new file, e.g. ``resources_columns(monitor.columns)``.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.path.exists() and self.path.stat().st_size > 0
        if existing:
            with open(self.path, encoding="utf-8") as f:
                header = f.readline().strip()
            self.columns = header.split(",") if header else list(columns)
            if self.columns != list(columns):
                logger.info("%s exists with other columns; appending under its header", self.path)
        else:
            self.columns = list(columns)
        self._file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        if not existing:
            self._file.write(",".join(self.columns) + "\n")
            self._file.flush()

    def write(self, sample: Mapping[str, Any], **extra: Any) -> None:
        """Append one row from ``sample`` plus ``extra`` values (e.g. ``epoch=3``)."""
        if self._file.closed:
            return
        row = {**sample, **extra}
        self._file.write(",".join(_cell(row.get(c)) for c in self.columns) + "\n")
        self._file.flush()

    __call__ = write

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> ResourcesCsv:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write strict JSON through a temporary file and a rename (see :mod:`edgetrain.safefs`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
