"""``analyze``: a study's tables, its Pareto front and what drives energy and the metric.

The tables rank by the study's validation metric (:func:`~edgetrain.sweep.study.study_metric`:
its metric objective, else the task's best metric) in its direction: validation accuracy
(higher is better) for classification, ``val_rmse`` (lower is better) for regression. Its
*target* name is ``accuracy`` for ``val_acc`` and the column otherwise (``val_rmse``).

Writes ``DIR/analysis/`` (file names and columns are a contract; ``edgetrain.report``
reads them):

- ``trials.csv``: every trial (see :func:`edgetrain.sweep.study.trial_columns`, then
  ``param_<name>``).
- ``top_<target>.csv`` (``top_accuracy.csv``, ``top_val_rmse.csv``), ``top_energy.csv``
  and, for a metric where higher is better, ``top_efficiency.csv``: the best ``k``
  completed trials by the metric, by lowest energy, by the metric per kJ
  (:data:`TOP_COLUMNS` with the metric's columns, then ``param_<name>``).
- ``pareto.csv``: the non-dominated trials in (best metric, min energy), by energy,
  with a ``knee`` column (same columns as the top tables plus ``knee``).
- ``importance.csv``: one row per (target, parameter) (:data:`IMPORTANCE_COLUMNS`).
- ``best_values.csv``: per parameter, its best value for each target.
- ``summary.json`` (``metric``: the column, its direction, target and table) and
  ``results.xlsx`` (one sheet per table).

Energy, never power, ranks trials; average power is shown beside it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.contract import SWEEP_ANALYSIS_TABLES
from edgetrain.errors import EdgeTrainError, MissingExtraError
from edgetrain.safefs import dumps_strict
from edgetrain.sweep._optuna import quiet_optuna
from edgetrain.sweep.objectives import Objective, efficiency_column, parse_objective
from edgetrain.sweep.relevance import (
    best_groups,
    fanova_importances,
    knee_index,
    kruskal_effect,
    pareto_front,
)
from edgetrain.sweep.space import SearchSpace
from edgetrain.sweep.study import count_trials, load_study, study_metric, trials_frame

__all__ = [
    "BEST_VALUE_COLUMNS",
    "IMPORTANCE_COLUMNS",
    "TOP_COLUMNS",
    "Analysis",
    "analyze",
    "analyze_study",
    "targets",
    "top_columns",
]

log = logging.getLogger(__name__)

#: The columns of the top tables of a sweep ranked by accuracy (:func:`top_columns`).
TOP_COLUMNS = (
    "rank",
    "number",
    "val_acc",
    "energy_j",
    "avg_power_w",
    "efficiency_acc_per_kj",
    "time_s",
    "energy_source",
    "quantized_val_acc",
    "quantized_bytes",
    "model_bytes",
    "concurrent_trials",
    "run_dir",
)
IMPORTANCE_COLUMNS = (
    "target",
    "parameter",
    "rank",
    "fanova_importance",
    "kruskal_h",
    "kruskal_p",
    "epsilon_sq",
    "eta_sq_h",
    "n_groups",
    "n_trials",
    "best_value",
    "best_group",
    "best_group_mean",
    "best_group_n",
)
BEST_VALUE_COLUMNS = ("parameter", "best_for_accuracy", "best_for_energy", "best_for_efficiency")
#: The tables of a sweep ranked by accuracy (any sweep's: ``Analysis.tables``, in order).
SHEETS = SWEEP_ANALYSIS_TABLES
ACCURACY = parse_objective("accuracy")


def targets(metric: Objective) -> dict[str, tuple[str, str]]:
    """Target name -> (column, max or min): the metric, energy and, when higher is better,
    the metric per kJ (``accuracy, energy, efficiency`` for accuracy)."""
    out = {metric.target: (metric.column, metric.mode), "energy": ("energy_j", "min")}
    per_kj = efficiency_column(metric.column, metric.mode)
    if per_kj is not None:
        out["efficiency"] = (per_kj, "max")
    return out


def top_columns(metric: Objective, columns: Any = ()) -> list[str]:
    """The columns of a top table: :data:`TOP_COLUMNS` for accuracy; for another metric its
    column and its per-kJ column in their place, the accuracy columns left out unless the
    trials table (``columns``) has them."""
    if metric.column == "val_acc":
        return list(TOP_COLUMNS)
    per_kj = efficiency_column(metric.column, metric.mode)
    mapped = {"val_acc": metric.column, "efficiency_acc_per_kj": per_kj}
    out = [mapped.get(c, c) for c in TOP_COLUMNS]
    return [c for c in out if c is not None and (c in ("rank", metric.column) or c in columns)]


@dataclass
class Analysis:
    """Everything ``analyze`` computed; ``tables`` maps sheet name to table."""

    study_name: str
    space: SearchSpace
    tables: dict[str, pd.DataFrame]
    summary: dict[str, Any]
    knee_number: int | None
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    metric: Objective = ACCURACY

    def target_of(self, pick: str) -> str:
        """The target a pick or target name means: ``metric`` (or the metric's column) is
        the study's metric (``accuracy`` for val_acc).

        Raises:
            EdgeTrainError: a target this study has no table for (accuracy of a regression).
        """
        if pick in ("metric", self.metric.column, self.metric.target):
            return self.metric.target
        if pick in targets(self.metric):
            return pick
        raise EdgeTrainError(
            f"this study ranks by {self.metric.column} ({'higher' if self.metric.mode == 'max' else 'lower'} "
            f"is better) and has no {pick} table; pick from knee, metric, energy"
            + (", efficiency" if "efficiency" in targets(self.metric) else "")
        )

    def best_number(self, pick: str) -> int | None:
        """The trial number chosen by ``pick``: knee, metric (or accuracy), energy or
        efficiency."""
        if pick == "knee":
            return self.knee_number
        top = self.tables[f"top_{self.target_of(pick)}"]
        return None if top.empty else int(top["number"].iloc[0])

    def best_values(self, target: str) -> dict[str, Any]:
        """Each parameter's best value for ``target`` (greenscreen's per-parameter pick)."""
        table = self.tables["best_values"]
        column = f"best_for_{self.target_of(target)}"
        return {
            row["parameter"]: row[column]
            for _, row in table.iterrows()
            if row[column] is not None
            and not (isinstance(row[column], float) and math.isnan(row[column]))
        }


def _param_columns(space: SearchSpace) -> list[str]:
    return [f"param_{n}" for n in space.params]


def _top(
    done: pd.DataFrame,
    by: str,
    ascending: bool,
    k: int,
    space: SearchSpace,
    metric: Objective = ACCURACY,
) -> pd.DataFrame:
    ok = done.dropna(subset=[by])
    # ties are broken by energy (less is better), or by the metric when ranking by energy
    if by == "energy_j":
        tie, tie_ascending = metric.column, metric.mode == "min"
    else:
        tie, tie_ascending = "energy_j", True
    ranked = ok.sort_values([by, tie], ascending=[ascending, tie_ascending], na_position="last")
    ranked = ranked.head(k).copy()
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    columns = top_columns(metric, done.columns)
    return ranked[[*columns, *_param_columns(space)]].reset_index(drop=True)


def _importance(
    study: Any, done: pd.DataFrame, space: SearchSpace, metric: Objective = ACCURACY
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from optuna.trial import TrialState

    by_number = {
        t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    trials = [by_number[n] for n in done["number"] if n in by_number]
    done = done[done["number"].isin(by_number)]
    dists = space.distributions()
    rows: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {n: {"parameter": n} for n in space.params}
    for target, (column, goal) in targets(metric).items():
        values = done[column].astype(float) if column in done else pd.Series(dtype=float)
        wanted = [None if pd.isna(v) else float(v) for v in values]
        with quiet_optuna():
            fanova = fanova_importances(trials, dists, wanted, seed=space.seed)
        part = []
        for name in space.params:
            column_values = done[f"param_{name}"]
            row: dict[str, Any] = {"target": target, "parameter": name}
            row["fanova_importance"] = fanova.get(name, math.nan)
            kind = space.params[name].kind
            row.update(kruskal_effect(column_values, values, kind))
            group = best_groups(column_values, values, goal, kind)
            if group is not None:
                row.update(
                    best_value=group.value,
                    best_group=group.label,
                    best_group_mean=group.mean,
                    best_group_n=group.n,
                )
                best[name][f"best_for_{target}"] = group.value
            part.append(row)
        part.sort(key=lambda r: (-_num(r["fanova_importance"]), -_num(r.get("epsilon_sq"))))
        for i, row in enumerate(part, 1):
            row["rank"] = i
        rows += part
    importance = pd.DataFrame(rows, columns=list(IMPORTANCE_COLUMNS))
    best_columns = ["parameter", *(f"best_for_{t}" for t in targets(metric))]
    best_values = pd.DataFrame(list(best.values()), columns=best_columns)
    return importance, best_values


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else -math.inf


def analyze_study(
    study: Any, space: SearchSpace, *, top_k: int = 10, metric: Objective | None = None
) -> Analysis:
    """Compute every table of a study (nothing written).

    Args:
        study: the Optuna study.
        space: its search space.
        top_k: rows of the top tables.
        metric: the validation metric to rank by (default: the study's, see
            :func:`~edgetrain.sweep.study.study_metric`).
    """
    if top_k < 1:
        raise EdgeTrainError(f"--top must be >= 1, got {top_k}")
    metric = metric or study_metric(study, space)
    goals = targets(metric)
    frame = trials_frame(study, space, metric)
    per_kj = goals.get("efficiency", ("",))[0]
    if per_kj and per_kj != "efficiency_acc_per_kj":  # any metric per kJ, from the table
        value = pd.to_numeric(frame[metric.column], errors="coerce")
        energy = pd.to_numeric(frame["energy_j"], errors="coerce")
        frame[per_kj] = value / (energy.where(energy > 0) / 1000.0)
    done = frame[frame["state"] == "complete"].copy()
    for column in {*(c for c, _ in goals.values()), "avg_power_w", "time_s"}:
        done[column] = pd.to_numeric(done[column], errors="coerce")
    front = pareto_front(done, metric.column, metric.mode)
    knee = knee_index(front, metric.column, metric.mode)
    pareto = front.copy()
    pareto.insert(0, "rank", range(1, len(pareto) + 1))
    pareto["knee"] = pareto.index == knee if knee is not None else False
    knee_number = int(front.loc[knee, "number"]) if knee is not None else None
    columns = top_columns(metric, done.columns)
    pareto = pareto[[*columns, *_param_columns(space), "knee"]].reset_index(drop=True)
    importance, best_values = _importance(study, done, space, metric)
    tables = {"trials": frame}
    for target, (column, goal) in goals.items():
        tables[f"top_{target}"] = _top(done, column, goal == "min", top_k, space, metric)
    tables.update(pareto=pareto, importance=importance, best_values=best_values)
    counts = count_trials(study)
    sources = sorted({str(s) for s in done["energy_source"].dropna()})
    concurrent = pd.to_numeric(frame["concurrent_trials"], errors="coerce").max()
    target = metric.target
    summary = {
        "study": study.study_name,
        "objectives": list(space.objectives),
        "metric": {
            "column": metric.column,
            "mode": metric.mode,
            "target": target,
            "table": f"top_{target}",
            "efficiency": goals.get("efficiency", (None,))[0],
        },
        "sampler": space.sampler,
        "seed": space.seed,
        "vary_data": space.vary_data,
        "trials": {
            "complete": counts.complete,
            "failed": counts.failed,
            "lost_or_interrupted": counts.not_counted,
            "running": counts.running,
        },
        "energy_sources": sources,
        "energy_estimated": any(s.startswith("estimated") for s in sources),
        "max_concurrent_trials": None if pd.isna(concurrent) else int(concurrent),
        "knee_trial": knee_number,
        f"best_{target}_trial": _first(tables[f"top_{target}"]),
        "lowest_energy_trial": _first(tables["top_energy"]),
    }
    if "top_efficiency" in tables:
        summary["best_efficiency_trial"] = _first(tables["top_efficiency"])
    summary["top_energy_driver"] = _top_param(importance, "energy")
    summary[f"top_{target}_driver"] = _top_param(importance, target)
    return Analysis(study.study_name, space, tables, summary, knee_number, metric=metric)


def _first(table: pd.DataFrame) -> int | None:
    return None if table.empty else int(table["number"].iloc[0])


def _top_param(importance: pd.DataFrame, target: str) -> str | None:
    part = importance[(importance["target"] == target) & importance["fanova_importance"].notna()]
    return None if part.empty else str(part.sort_values("rank")["parameter"].iloc[0])


def write_analysis(analysis: Analysis, out_dir: Path) -> list[Path]:
    """Write the CSV tables, summary.json and results.xlsx into ``out_dir``."""
    from edgetrain.safefs import atomic_write_text, claim_dir

    claim_dir(out_dir, "report", reuse=True, what="analysis directory")
    files = []
    for stale in out_dir.glob("top_*.csv"):  # a table another metric left behind
        if stale.stem not in analysis.tables:
            stale.unlink()
    for name in analysis.tables:
        path = out_dir / f"{name}.csv"
        atomic_write_text(path, analysis.tables[name].to_csv(index=False))
        files.append(path)
    path = out_dir / "summary.json"
    atomic_write_text(path, dumps_strict(analysis.summary))
    files.append(path)
    files.append(_write_xlsx(analysis, out_dir / "results.xlsx"))
    analysis.out_dir = out_dir
    analysis.files = files
    return files


def _write_xlsx(analysis: Analysis, path: Path) -> Path:
    try:
        import openpyxl  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("openpyxl", "sweep", "results.xlsx") from exc
    tmp = path.with_name(f".{path.name}.tmp")
    with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
        for name, table in analysis.tables.items():
            table.to_excel(writer, sheet_name=name[:31], index=False)
        summary = pd.DataFrame(
            [
                (k, json.dumps(v) if isinstance(v, list | dict) else v)
                for k, v in analysis.summary.items()
            ],
            columns=["key", "value"],
        )
        summary.to_excel(writer, sheet_name="summary", index=False)
    tmp.replace(path)
    return path


def analyze(
    sweep_dir: str | Path | None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    top_k: int = 10,
    out: str | Path | None = None,
) -> Analysis:
    """Analyse a sweep and write ``DIR/analysis/``.

    Args:
        sweep_dir: the sweep directory (None for a database study analysed elsewhere; then
            ``out`` or ``./analysis-<study>`` receives the tables).
        storage: database URL when the study is in a database.
        study_name: the study (default from DIR/sweep.json).
        top_k: rows of the top tables.
        out: where the tables go (default ``DIR/analysis``).
    """
    directory = Path(sweep_dir) if sweep_dir is not None else None
    study, space = load_study(directory, storage=storage, study_name=study_name)
    analysis = analyze_study(study, space, top_k=top_k)
    if out is not None:
        target = Path(out)
    elif directory is not None:
        target = directory / "analysis"
    else:
        target = Path(f"analysis-{study.study_name}")
    write_analysis(analysis, target)
    return analysis
