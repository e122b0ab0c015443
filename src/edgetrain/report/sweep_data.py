"""Reading a sweep directory: ``sweep.json``, ``space.yaml`` and ``analysis/``.

The analysis tables (from ``edgetrain sweep analyze``) are the input: parameter
importance needs Optuna's fANOVA, which the report does not run (it reads files only),
so a sweep without ``analysis/`` is refused with the command that makes it. Every
analysis file but ``trials.csv`` may be missing. The tables made from them are in
:mod:`.sweep_stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.errors import EdgeTrainError
from edgetrain.report.labels import energy_sources_in
from edgetrain.report.rundir import (
    csv_header,
    is_sweep_analysis,
    read_csv_rows,
    read_mapping,
    require_directory,
)

__all__ = ["ANALYSIS_TABLES", "Sweep", "completed", "load_sweep"]

ANALYSIS_TABLES = (
    "trials",
    "top_accuracy",
    "top_energy",
    "top_efficiency",
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
    words = (*_TEXT, *params)  # parameter values stay as written: '64', 'adam', '[0.8, 0.2]'
    tables = {
        name: read_csv_rows(analysis / f"{name}.csv", (), problems, words=words)
        for name in ANALYSIS_TABLES
    }
    trial_root = root / "trials"
    trial_dirs = (
        sum(1 for child in trial_root.iterdir() if child.is_dir()) if trial_root.is_dir() else 0
    )
    info = read_mapping(root / "sweep.json", problems)
    space = read_mapping(root / "space.yaml", problems)
    summary = read_mapping(analysis / "summary.json", problems)
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
