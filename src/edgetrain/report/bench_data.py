"""Reading a benchmark directory (the files of ``edgetrain bench``).

``summary.csv`` is required; ``epochs.csv``, ``batches.csv`` and ``device.json`` may be
missing. The tables made from them are in :mod:`.bench_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.errors import EdgeTrainError
from edgetrain.report.labels import energy_sources_in, finite_number
from edgetrain.report.rundir import csv_header, read_csv_rows, read_mapping, require_directory

__all__ = ["Bench", "completed_configs", "load_bench"]

_TEXT = (
    "status",
    "note",
    "energy_source",
    "cache_method",
    "data_path",
    "run_dir",
    "warmup",
)
_SUMMARY_FIXED = ("config", "status", "note")


@dataclass(frozen=True, eq=False)
class Bench:
    """A benchmark directory, read once.

    Attributes:
        path: The bench directory.
        summary: summary.csv, one row per configuration.
        epochs: epochs.csv, one row per epoch of each configuration (may be empty).
        batches: batches.csv, one row per minibatch (may be empty).
        device: device.json ({} when absent).
        grid_keys: The configuration keys the grid varied.
        problems: What was wrong with the files.
    """

    path: Path
    summary: pd.DataFrame
    epochs: pd.DataFrame
    batches: pd.DataFrame
    device: dict[str, Any]
    grid_keys: list[str]
    problems: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def warmup_epochs(self) -> int:
        """Leading epochs left out of the means (device.json, else summary.csv, else 1)."""
        value = finite_number((self.device.get("bench") or {}).get("warmup_epochs"))
        if value is None and "warmup_epochs" in self.summary.columns:
            value = finite_number(self.summary["warmup_epochs"].max())
        return int(value) if value is not None else 1

    @property
    def energy_sources(self) -> list[str]:
        """The energy sources of the completed configurations."""
        return energy_sources_in(completed_configs(self.summary))


def _grid_keys(summary_columns: list[str], device: dict[str, Any]) -> list[str]:
    grid = (device.get("bench") or {}).get("grid")
    if isinstance(grid, dict) and grid:
        return [str(k) for k in grid if str(k) in summary_columns]
    if "measured_epochs" in summary_columns:  # the columns between note and measured_epochs
        end = summary_columns.index("measured_epochs")
        return [c for c in summary_columns[:end] if c not in _SUMMARY_FIXED]
    return []


def load_bench(path: Path | str) -> Bench:
    """Read a benchmark directory.

    Raises:
        EdgeTrainError: if it has no summary.csv.
    """
    path = require_directory(path)
    if not (path / "summary.csv").is_file():
        raise EdgeTrainError(f"{path} is not a benchmark directory (no summary.csv)")
    problems: list[str] = []
    device = read_mapping(path / "device.json", problems)
    keys = _grid_keys(csv_header(path / "summary.csv"), device)
    words = (*_TEXT, *keys)  # grid values as written ('0', 'fp32', '[1, 2]')
    summary = read_csv_rows(path / "summary.csv", ("config", "status"), problems, words=words)
    epochs = read_csv_rows(path / "epochs.csv", (), problems, words=words)
    batches = read_csv_rows(path / "batches.csv", (), problems)
    return Bench(path, summary, epochs, batches, device, keys, tuple(problems))


def completed_configs(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of summary.csv whose configuration completed (all rows without a status)."""
    if "status" not in summary.columns:
        return summary
    return summary[summary["status"] == "completed"]
