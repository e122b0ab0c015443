"""Reading run directories (the contract in docs/design.md, "The run directory").

Also the file checks that tell the kinds of directory apart (:mod:`.kinds` puts them in
order) and the readers the other kinds share (:func:`read_csv_rows`, :func:`read_mapping`).

Every file may be missing and every optional column may be empty. CSV rows are appended
and flushed one at a time, so a complete row always ends with a newline: a last line
without one, or any row with the wrong number of fields, was cut short and is dropped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from edgetrain.contract import (
    DECISIONS_COLUMNS,
    METRICS_AFTER,
    METRICS_COLUMNS,
    RESOURCES_BASE_COLUMNS,
    TEXT_COLUMNS,
    best_metric,
    direction,
)
from edgetrain.errors import EdgeTrainError

__all__ = [
    "ADAPT_FILE",
    "DECISIONS_COLUMNS",
    "METRICS_COLUMNS",
    "RESOURCES_COLUMNS",
    "SPARSE_UPDATE_FILE",
    "Run",
    "csv_header",
    "is_bench_directory",
    "is_monitor_directory",
    "is_run_directory",
    "is_sparse_compare_directory",
    "is_sweep_analysis",
    "is_sweep_directory",
    "load_monitor",
    "load_run",
    "metrics_contract",
    "read_csv_rows",
    "read_mapping",
    "require_directory",
]

logger = logging.getLogger(__name__)

RESOURCES_COLUMNS = RESOURCES_BASE_COLUMNS
#: Memory against the budget per epoch (written by the budget controller).
ADAPT_FILE = "adapt.csv"
#: Neurons selected per epoch and layer (written by sparse updates).
SPARSE_UPDATE_FILE = "sparse_update.csv"
#: The columns of sparse_update.csv kept as words (layer names may look like numbers).
SPARSE_UPDATE_WORDS = ("scheme", "layer", "kind", "budget_kind", "requires_grad")
_TEXT_COLUMNS = TEXT_COLUMNS
# Columns that may hold numbers or words (a decision's old/new value).
_MIXED_COLUMNS = frozenset({"old", "new"})


@dataclass(frozen=True, eq=False)
class Run:
    """Everything one run directory holds, read once.

    Attributes:
        path: The run directory.
        config: The resolved configuration (``config.yaml``), ``{}`` when absent.
        env: Versions, device and sensors (``env.json``), ``{}`` when absent.
        summary: Status and totals (``summary.json``), ``{}`` when absent.
        metrics: One row per epoch; every contract column present (empty when off).
        resources: One row per monitor sample; empty when absent.
        decisions: One row per decision (controller, pruning); empty when there were none.
        problems: What was wrong with the files (dropped rows, unreadable JSON).
        adapt: Memory against the budget per epoch (``adapt.csv``); empty without a budget.
        sparse_update: Neurons selected per epoch and layer (``sparse_update.csv``); empty
            without sparse updates.
    """

    path: Path
    config: dict[str, Any]
    env: dict[str, Any]
    summary: dict[str, Any]
    metrics: pd.DataFrame
    resources: pd.DataFrame
    decisions: pd.DataFrame
    problems: tuple[str, ...] = field(default=())
    adapt: pd.DataFrame = field(default_factory=pd.DataFrame)
    sparse_update: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def name(self) -> str:
        """The directory name, used as the run's label."""
        return self.path.name

    @property
    def best_metric(self) -> tuple[str, str]:
        """The column that decides "best" and its direction (``val_acc``, ``max`` for runs
        written before tasks), as :func:`edgetrain.contract.best_metric` reads it."""
        return best_metric(self.summary, self.metrics.columns)

    @property
    def quality_columns(self) -> list[str]:
        """The metric columns other than losses that hold data (``val_rmse``, ``val_acc``),
        in file order: what the run's task measures besides its loss."""
        return [
            c
            for c in self.metrics.columns
            if c.startswith(("train_", "val_"))
            and not c.endswith("_loss")
            and self.metrics[c].notna().any()
        ]

    def direction(self, column: str) -> str:
        """``max`` or ``min`` for a metric column of this run (summary.json, else defaults)."""
        return direction(column, self.summary)


def metrics_contract(summary: dict[str, Any]) -> tuple[str, ...]:
    """The metrics.csv columns a run's summary.json promises: its task's metrics, or the
    classification columns of runs written before tasks."""
    recorded = (summary.get("task") or {}).get("metrics") if isinstance(summary, dict) else None
    if not isinstance(recorded, dict) or not recorded:
        return METRICS_COLUMNS
    train = [c for c in recorded if c.startswith("train_") and c != "train_loss"]
    val = [c for c in recorded if c.startswith("val_") and c != "val_loss"]
    return ("epoch", "time_s", "train_loss", *train, "val_loss", *val, *METRICS_AFTER)


def require_directory(path: Path | str) -> Path:
    """Return ``path`` as a Path, or raise if it is not an existing directory."""
    path = Path(path)
    if not path.exists():
        raise EdgeTrainError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise EdgeTrainError(f"{path} is a file, not a run directory")
    return path


def is_sweep_directory(path: Path) -> bool:
    """A sweep: sweep.json, space.yaml, analysis/trials.csv or trials/; or its analysis/."""
    return (
        (path / "sweep.json").is_file()
        or (path / "space.yaml").is_file()
        or (path / "analysis" / "trials.csv").is_file()
        or (path / "trials").is_dir()
        or is_sweep_analysis(path)
    )


def is_sweep_analysis(path: Path) -> bool:
    """The tables of `edgetrain sweep analyze` themselves (trials.csv with pareto.csv)."""
    return (path / "trials.csv").is_file() and (
        (path / "pareto.csv").is_file() or (path / "importance.csv").is_file()
    )


def is_bench_directory(path: Path) -> bool:
    """A benchmark: summary.csv with batches.csv, or a summary.csv with stall columns."""
    summary = path / "summary.csv"
    if not summary.is_file():
        return False
    return (path / "batches.csv").is_file() or "stall_s_mean" in csv_header(summary)


def is_sparse_compare_directory(path: Path) -> bool:
    """A sparse-update comparison: results.csv or runs.csv with a ``scheme`` column."""
    return any("scheme" in csv_header(path / name) for name in ("results.csv", "runs.csv"))


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file ([] when it is missing or unreadable)."""
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            first = next(csv.reader(handle), [])
    except (OSError, csv.Error):
        return []
    return [name.strip() for name in first]


def is_run_directory(path: Path) -> bool:
    """Whether ``path`` holds a run: metrics.csv, or summary.json with config.yaml, or what
    ``edgetrain monitor --out`` wrote (read as a run by :func:`load_monitor`)."""
    return (
        (path / "metrics.csv").is_file()
        or ((path / "summary.json").is_file() and (path / "config.yaml").is_file())
        or is_monitor_directory(path)
    )


def is_monitor_directory(path: Path) -> bool:
    """What ``edgetrain monitor --out DIR -- CMD`` writes: summary.json naming the command
    (and resources.csv, marks.tsv), without a training run's metrics.csv."""
    if (path / "metrics.csv").is_file() or not (path / "summary.json").is_file():
        return False
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and isinstance(summary.get("command"), list)


#: The column of a monitor directory's metrics that names each phase.
PHASE_COLUMN = "phase"


def load_monitor(path: Path | str) -> Run:
    """A monitor directory read as a run: one epoch per phase the command marked with
    ``edgetrain.mark`` (summary.json ``phases``; the whole command when it marked none).

    ``metrics`` has a row per phase (``epoch`` = the phase's number, its label in
    ``phase``, time, energy, average power, peaks); resources.csv samples are tagged with
    their phase in ``epoch``, so the run report's energy and resource figures and tables
    show phases. ``config`` holds the command and the sampling interval, ``env`` the
    sensors, and ``summary`` the monitor's own keys plus a run's totals
    (``total_time_s``, ``total_energy_j``, ``epochs_completed``).

    Raises:
        EdgeTrainError: if the directory does not exist or is not a monitor directory.
    """
    path = require_directory(path)
    if not is_monitor_directory(path):
        raise EdgeTrainError(f"{path} is not an edgetrain monitor directory (no summary.json)")
    problems: list[str] = []
    raw = read_mapping(path / "summary.json", problems)
    phases = [p for p in raw.get("phases") or [] if isinstance(p, dict)]
    if not phases:  # the whole command is one phase
        phases = [
            {
                "index": 1,
                "label": "command",
                "start_s": 0.0,
                "end_s": raw.get("wall_time_s"),
                "time_s": raw.get("wall_time_s"),
                "energy_j": raw.get("energy_j"),
                "avg_power_w": raw.get("avg_power_w"),
                "peak_rss_bytes": raw.get("peak_rss_bytes"),
                "peak_device_mem_bytes": raw.get("peak_device_mem_bytes"),
            }
        ]
    metrics = pd.DataFrame(
        {
            "epoch": [float(p.get("index") or i + 1) for i, p in enumerate(phases)],
            PHASE_COLUMN: [str(p.get("label", "")) for p in phases],
            **{
                name: [_float_or_nan(p.get(name)) for p in phases]
                for name in (
                    "time_s",
                    "energy_j",
                    "avg_power_w",
                    "peak_rss_bytes",
                    "peak_device_mem_bytes",
                )
            },
        }
    )
    metrics["energy_source"] = (
        raw.get("energy_source") if metrics["energy_j"].notna().any() else None
    )
    for name in METRICS_COLUMNS:
        if name not in metrics.columns:
            metrics[name] = float("nan")
    resources = read_csv_rows(path / "resources.csv", RESOURCES_COLUMNS, problems)
    if not resources.empty and "t_s" in resources.columns:
        starts = [_float_or_nan(p.get("start_s")) for p in phases]
        epochs = metrics["epoch"].tolist()
        tag = np.full(len(resources), np.nan)
        for start, epoch in zip(starts, epochs, strict=True):
            if start == start:  # not NaN: samples from this phase's start on are its
                tag[resources["t_s"].to_numpy() >= start] = epoch
        resources["epoch"] = tag
    command = raw.get("command") or []
    summary = {
        **raw,
        "total_time_s": raw.get("wall_time_s"),
        "total_energy_j": raw.get("energy_j"),
        "epochs_completed": len(phases),
    }
    config = {"command": " ".join(str(c) for c in command), "interval_s": raw.get("interval_s")}
    env = {"sensors": raw.get("sensors") or []}
    return Run(
        path,
        config,
        env,
        summary,
        metrics,
        resources,
        _empty(DECISIONS_COLUMNS),
        tuple(problems),
    )


def _float_or_nan(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def load_run(path: Path | str) -> Run:
    """Read a run directory; missing files give empty tables, never an error.

    Raises:
        EdgeTrainError: if the directory does not exist or holds none of the run files.
    """
    path = require_directory(path)
    if not is_run_directory(path):
        raise EdgeTrainError(f"{path} is not a run directory (no metrics.csv)")
    if is_monitor_directory(path):
        return load_monitor(path)
    problems: list[str] = []
    config = read_mapping(path / "config.yaml", problems)
    env = read_mapping(path / "env.json", problems)
    summary = read_mapping(path / "summary.json", problems)
    metrics = read_csv_rows(path / "metrics.csv", metrics_contract(summary), problems)
    metrics = _tidy_metrics(metrics)
    resources = read_csv_rows(path / "resources.csv", RESOURCES_COLUMNS, problems)
    decisions = read_csv_rows(path / "decisions.csv", DECISIONS_COLUMNS, problems)
    if decisions.dropna(how="all").empty:
        decisions = decisions.iloc[0:0]
    adapt = read_csv_rows(path / ADAPT_FILE, (), problems, words=("source",))
    sparse = read_csv_rows(path / SPARSE_UPDATE_FILE, (), problems, words=SPARSE_UPDATE_WORDS)
    return Run(
        path,
        config,
        env,
        summary,
        metrics,
        resources,
        decisions,
        tuple(problems),
        adapt=adapt,
        sparse_update=sparse,
    )


def read_mapping(path: Path, problems: list[str]) -> dict[str, Any]:
    """Read a JSON or YAML mapping; a missing file is {}, a broken one is {} and a problem."""
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        message = f"{path.name} could not be read ({type(exc).__name__}); it was ignored"
        logger.warning("%s: %s", path, message)
        problems.append(message)
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        message = f"{path.name} holds a {type(data).__name__}, not a mapping; it was ignored"
        logger.warning("%s: %s", path, message)
        problems.append(message)
        return {}
    return data


def read_csv_rows(
    path: Path,
    columns: tuple[str, ...] = (),
    problems: list[str] | None = None,
    words: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read a run-directory CSV, dropping rows that were cut short.

    Args:
        path: The CSV file; a missing or empty file gives an empty table.
        columns: Contract columns to add (empty) when the file lacks them.
        problems: Receives one message per kind of dropped or unreadable data.
        words: Further columns kept as written (text), never turned into numbers.

    Returns:
        A DataFrame with numbers as floats, words as strings and empty cells as NaN.
    """
    problems = problems if problems is not None else []
    if not path.is_file():
        return _empty(columns)
    text = path.read_text(encoding="utf-8", errors="replace")
    records: list[list[str]] = []
    try:
        for record in csv.reader(io.StringIO(text, newline="")):
            records.append(record)
    except csv.Error:
        pass  # an unterminated quote at the end: the cut-off record is not in `records`
    records = [record for record in records if record]
    if not records:
        return _empty(columns)
    header = [name.strip() for name in records[0]]
    rows = records[1:]
    dropped = 0
    if rows and not text.endswith(("\n", "\r")):
        rows, dropped = rows[:-1], 1  # the writer was killed mid-line
    good = [row for row in rows if len(row) == len(header)]
    dropped += len(rows) - len(good)
    if dropped:
        message = (
            f"{path.name}: dropped {dropped} incomplete row(s) (the run was probably cut short)"
        )
        logger.warning("%s", message)
        problems.append(message)
    frame = pd.DataFrame(good, columns=header, dtype=object)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    unreadable = 0
    for name in frame.columns:
        raw = frame[name].map(lambda cell: cell.strip() if isinstance(cell, str) else cell)
        raw = raw.where(raw != "", None)
        if name in _TEXT_COLUMNS or name in words:
            frame[name] = raw
            continue
        numbers = pd.to_numeric(raw, errors="coerce").astype(float)
        bad = int(numbers.isna().sum() - raw.isna().sum())
        if bad and name in _MIXED_COLUMNS:
            frame[name] = [n if pd.notna(n) else r for n, r in zip(numbers, raw, strict=True)]
        elif bad and name not in columns and bad == int(raw.notna().sum()):
            frame[name] = raw  # an extra column of words
        else:
            unreadable += bad
            frame[name] = numbers
    if unreadable:
        message = f"{path.name}: {unreadable} cell(s) were not numbers and were left empty"
        logger.warning("%s", message)
        problems.append(message)
    for name in columns:
        if name not in frame.columns:
            frame[name] = None if name in _TEXT_COLUMNS or name in words else float("nan")
    return frame.reset_index(drop=True)


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        {name: pd.Series(dtype=object if name in _TEXT_COLUMNS else float) for name in columns}
    )


def _tidy_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch, in order; a resumed run's repeated epoch keeps its last row."""
    if metrics.empty:
        return metrics
    metrics = metrics[metrics["epoch"].notna()]
    if metrics["epoch"].duplicated().any():
        logger.info("metrics.csv repeats epochs (resumed run?); keeping the last row of each")
        metrics = metrics.drop_duplicates("epoch", keep="last")
    return metrics.sort_values("epoch", kind="stable").reset_index(drop=True)
