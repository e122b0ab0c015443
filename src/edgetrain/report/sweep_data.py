"""Reading a sweep directory: ``sweep.json``, ``space.yaml`` and ``analysis/``.

The analysis tables (from ``edgetrain sweep analyze``) are the input: parameter
importance needs Optuna's fANOVA, which the report does not run (it reads files only),
so a sweep without ``analysis/`` is refused with the command that makes it. Every
analysis file but ``trials.csv`` may be missing. The tables made from them are in
:mod:`.sweep_stats`.

A sweep ranks by one validation metric (:class:`SweepMetric`, from ``summary.json``'s
``metric``): accuracy for classification sweeps and analyses written before tasks, whose
tables are ``top_accuracy``, ``top_energy`` and ``top_efficiency``; another metric's top
table is ``top_<column>`` (``top_val_rmse``) and it has ``top_efficiency`` only when higher
is better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.contract import SWEEP_ANALYSIS_TABLES, direction
from edgetrain.errors import EdgeTrainError
from edgetrain.report.labels import energy_sources_in
from edgetrain.report.rundir import (
    csv_header,
    is_sweep_analysis,
    read_csv_rows,
    read_mapping,
    require_directory,
)

__all__ = [
    "ACCURACY",
    "ANALYSIS_TABLES",
    "Sweep",
    "SweepMetric",
    "analysis_tables",
    "completed",
    "load_sweep",
    "sweep_metric_of",
]

#: The analysis tables of a sweep ranked by accuracy (any sweep's: :func:`analysis_tables`).
ANALYSIS_TABLES = SWEEP_ANALYSIS_TABLES


@dataclass(frozen=True)
class SweepMetric:
    """The validation metric a sweep's analysis ranks by.

    Attributes:
        column: the trials column (``val_acc``, ``val_rmse``).
        mode: ``max`` when higher is better, else ``min``.
        target: its name in the analysis: ``accuracy`` for ``val_acc``, else the column.
        efficiency: the column of the metric per kJ (None when lower is better).
    """

    column: str = "val_acc"
    mode: str = "max"
    target: str = "accuracy"
    efficiency: str | None = "efficiency_acc_per_kj"

    @property
    def table(self) -> str:
        """The name of its top table: ``top_accuracy``, ``top_val_rmse``."""
        return f"top_{self.target}"

    @property
    def is_accuracy(self) -> bool:
        """Whether the sweep ranks by validation accuracy."""
        return self.column == "val_acc"

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher value is better (``mode`` max)."""
        return self.mode == "max"


ACCURACY = SweepMetric()


def sweep_metric_of(summary: dict[str, Any], tables: dict[str, pd.DataFrame]) -> SweepMetric:
    """The metric of an analysis: ``summary.json``'s ``metric``; else accuracy when the
    tables have it (analyses written before tasks); else the metric of a ``top_<column>``
    table (its direction from :func:`edgetrain.contract.direction`)."""
    recorded = summary.get("metric")
    if isinstance(recorded, dict) and recorded.get("column"):
        column = str(recorded["column"])
        mode = "min" if recorded.get("mode") == "min" else "max"
        target = str(recorded.get("target") or ("accuracy" if column == "val_acc" else column))
        efficiency = recorded.get("efficiency")
        return SweepMetric(column, mode, target, str(efficiency) if efficiency else None)
    trials = tables.get("trials", pd.DataFrame())
    if "val_acc" in trials.columns or not tables.get("top_accuracy", pd.DataFrame()).empty:
        return ACCURACY
    for name in tables:
        column = name.removeprefix("top_")
        if name.startswith("top_") and column.startswith("val_"):
            mode = direction(column)
            efficiency = f"efficiency_{column.removeprefix('val_')}_per_kj"
            return SweepMetric(column, mode, column, efficiency if mode == "max" else None)
    return ACCURACY


def analysis_tables(metric: SweepMetric = ACCURACY) -> tuple[str, ...]:
    """The analysis tables of a sweep ranked by ``metric``, in order."""
    efficiency = ("top_efficiency",) if metric.efficiency else ()
    return (
        "trials",
        metric.table,
        "top_energy",
        *efficiency,
        "pareto",
        "importance",
        "best_values",
    )


_TEXT = (
    "state",
    "fail_reason",
    "error",
    "energy_source",
    "host",
    "run_dir",
    "knee",
    "target",
    "parameter",
    "best_value",
    "best_group",
    "best_for_accuracy",
    "best_for_energy",
    "best_for_efficiency",
)


@dataclass(frozen=True, eq=False)
class Sweep:
    """A sweep directory and its analysis tables, read once.

    Attributes:
        path: The sweep directory (trial run directories are relative to it).
        analysis_dir: Where the analysis tables were read.
        info: ``sweep.json`` ({} when absent).
        space: ``space.yaml`` ({} when absent).
        summary: ``analysis/summary.json`` ({} when absent).
        tables: The analysis CSV files by name (``trials``, ``top_accuracy``, ...).
        trial_dirs: How many ``trials/<n>/`` directories exist.
        problems: What was wrong with the files.
    """

    path: Path
    analysis_dir: Path
    info: dict[str, Any]
    space: dict[str, Any]
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    trial_dirs: int = 0
    problems: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """The study name (the directory name when no file names it)."""
        return str(self.summary.get("study") or self.info.get("study") or self.path.name)

    @property
    def params(self) -> list[str]:
        """The swept parameters, in space order."""
        space_params = self.space.get("params")
        if isinstance(space_params, dict) and space_params:
            return [str(name) for name in space_params]
        columns = self.tables["trials"].columns
        return [c.removeprefix("param_") for c in columns if c.startswith("param_")]

    @property
    def metric(self) -> SweepMetric:
        """The validation metric the analysis ranks by (accuracy for older analyses)."""
        return sweep_metric_of(self.summary, self.tables)

    @property
    def energy_sources(self) -> list[str]:
        """The energy sources of the completed trials."""
        sources = self.summary.get("energy_sources")
        if isinstance(sources, list) and sources:
            return [str(s) for s in sources]
        return energy_sources_in(completed(self.tables["trials"]))


def load_sweep(path: Path | str) -> Sweep:
    """Read a sweep directory (or the analysis directory itself).

    Raises:
        EdgeTrainError: if the directory has no analysis tables (run
            ``edgetrain sweep analyze DIR`` first).
    """
    path = require_directory(path)
    if is_sweep_analysis(path):
        analysis = path
        root = path.parent if _has_sweep_files(path.parent) else path
    else:
        analysis, root = path / "analysis", path
        if not (analysis / "trials.csv").is_file():
            raise EdgeTrainError(
                f"{path} is a sweep directory without analysis tables (analysis/trials.csv); "
                f"run `edgetrain sweep analyze {path}` first, then the report"
            )
    problems: list[str] = []
    trials_header = csv_header(analysis / "trials.csv")
    params = [c for c in trials_header if c.startswith("param_")]
    summary = read_mapping(analysis / "summary.json", problems)
    tops = {p.stem: pd.DataFrame() for p in analysis.glob("top_*.csv")}
    metric = sweep_metric_of(summary, {"trials": pd.DataFrame(columns=trials_header), **tops})
    names = list(dict.fromkeys([*analysis_tables(metric), *ANALYSIS_TABLES]))
    if not metric.is_accuracy:  # no accuracy tables for a sweep ranked by another metric
        names = [n for n in names if n in analysis_tables(metric)]
    # parameter values stay as written: '64', 'adam', '[0.8, 0.2]'
    words = (*_TEXT, f"best_for_{metric.target}", *params)
    tables = {
        name: read_csv_rows(analysis / f"{name}.csv", (), problems, words=words) for name in names
    }
    trial_root = root / "trials"
    trial_dirs = (
        sum(1 for child in trial_root.iterdir() if child.is_dir()) if trial_root.is_dir() else 0
    )
    info = read_mapping(root / "sweep.json", problems)
    space = read_mapping(root / "space.yaml", problems)
    analysed = len(tables["trials"])
    if trial_dirs > analysed:
        problems.append(
            f"trials/ holds {trial_dirs} trial directories but the analysis covers {analysed} "
            f"trials; run `edgetrain sweep analyze {root}` again for the newer ones"
        )
    return Sweep(root, analysis, info, space, summary, tables, trial_dirs, tuple(problems))


def _has_sweep_files(path: Path) -> bool:
    return any((path / name).exists() for name in ("sweep.json", "space.yaml", "trials"))


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The completed trials of a trials table (all of them when it has no ``state``)."""
    if trials.empty or "state" not in trials.columns:
        return trials
    return trials[trials["state"] == "complete"]
