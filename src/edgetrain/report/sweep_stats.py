"""The tables of the sweep report, made from the analysis tables of a :class:`Sweep`.

Each function takes a :class:`~edgetrain.report.sweep_data.Sweep` and returns a
DataFrame (or a small mapping), empty when the analysis lacks its input. The sweep's
metric (``sweep.metric``: validation accuracy, or any metric with its direction) names
the columns: ``val_acc`` and ``efficiency_acc_per_kj`` for a classification sweep,
``val_rmse`` (and no efficiency) for a regression sweep ranked by RMSE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgetrain.report.labels import (
    energy_source_text,
    finite_number,
    format_value,
    is_estimated,
    pretty_name,
)
from edgetrain.report.rundir import is_run_directory
from edgetrain.report.sweep_data import ACCURACY, Sweep, SweepMetric, completed

__all__ = [
    "TOP_DISPLAY",
    "TOP_TITLES",
    "best_trial",
    "best_trial_reason",
    "best_trials",
    "completed_table",
    "failed_trials",
    "importance_bars",
    "metric_words",
    "parameter_effects",
    "parameter_groups",
    "parameter_kinds",
    "pareto_front",
    "pareto_points",
    "sweep_overview",
    "top_display",
    "top_table",
    "top_titles",
    "trial_counts",
    "trial_display",
]

#: The top tables of a sweep ranked by accuracy and their titles (any sweep's:
#: :func:`top_titles`).
TOP_TITLES = {
    "top_accuracy": "highest validation accuracy",
    "top_energy": "lowest energy",
    "top_efficiency": "highest efficiency (accuracy per kJ)",
}
TOP_DISPLAY = (
    "rank",
    "number",
    "val_acc",
    "energy_j",
    "avg_power_w",
    "efficiency_acc_per_kj",
    "time_s",
)
TRIAL_DISPLAY = ("number", "val_acc", "energy_j", "avg_power_w", "efficiency_acc_per_kj", "time_s")


def metric_words(metric: SweepMetric) -> tuple[str, str, str]:
    """(name, short name, per-kJ unit) of a sweep's metric: ('accuracy', 'val acc',
    'acc/kJ') for accuracy, ('val RMSE', 'val RMSE', '') for RMSE."""
    if metric.is_accuracy:
        return "accuracy", "val acc", "acc/kJ"
    name = pretty_name(metric.column)
    unit = f"{metric.column.removeprefix('val_')}/kJ" if metric.efficiency else ""
    return name, name, unit


def top_titles(metric: SweepMetric = ACCURACY) -> dict[str, str]:
    """The top tables of a sweep ranked by ``metric`` and their titles, in order."""
    if metric.is_accuracy:
        return dict(TOP_TITLES)
    name = metric_words(metric)[0]
    titles = {
        metric.table: f"{'highest' if metric.higher_is_better else 'lowest'} {name}",
        "top_energy": "lowest energy",
    }
    if metric.efficiency:
        titles["top_efficiency"] = f"highest efficiency ({name} per kJ)"
    return titles


def _display(columns: tuple[str, ...], metric: SweepMetric) -> tuple[str, ...]:
    mapped = {"val_acc": metric.column, "efficiency_acc_per_kj": metric.efficiency}
    return tuple(c for c in (mapped.get(c, c) for c in columns) if c)


def top_display(metric: SweepMetric = ACCURACY) -> tuple[str, ...]:
    """The columns of a top table shown in the report (:data:`TOP_DISPLAY` for accuracy)."""
    return _display(TOP_DISPLAY, metric)


def trial_display(metric: SweepMetric = ACCURACY) -> tuple[str, ...]:
    """The columns of a trial shown in the report (:data:`TRIAL_DISPLAY` for accuracy)."""
    return _display(TRIAL_DISPLAY, metric)


_NUMERIC_MIN_VALUES = 5  # a parameter without a space.yaml entry: fewer distinct values = choices


def trial_counts(sweep: Sweep) -> dict[str, int]:
    """Completed, failed, lost or interrupted, and running trials (summary.json first)."""
    counts = sweep.summary.get("trials")
    if isinstance(counts, dict) and counts:
        return {str(k): int(v) for k, v in counts.items() if finite_number(v) is not None}
    states = sweep.tables["trials"].get("state", pd.Series(dtype=object))
    reasons = sweep.tables["trials"].get("fail_reason", pd.Series(dtype=object))
    failed = states == "failed"
    not_counted = failed & reasons.isin(["lost", "interrupted", "refused"])
    return {
        "complete": int((states == "complete").sum()),
        "failed": int((failed & ~not_counted).sum()),
        "lost_or_interrupted": int(not_counted.sum()),
        "running": int((states == "running").sum()),
    }


def _trial_line(sweep: Sweep, number: Any) -> str:
    """'trial 4: val acc 0.9304, energy 12.36 J, 75.28 acc/kJ' (the sweep's metric)."""
    if number is None or finite_number(number) is None:
        return "-"
    trials = sweep.tables["trials"]
    row = trials[trials["number"] == float(number)]
    if row.empty:
        return f"trial {int(float(number))}"
    row = row.iloc[0]
    metric = sweep.metric
    _, short, per_kj = metric_words(metric)
    estimated = " (est.)" if is_estimated([row.get("energy_source")]) else ""
    line = (
        f"trial {int(row['number'])}: {short} "
        f"{format_value(metric.column, row.get(metric.column))}, "
        f"energy {format_value('energy_j', row.get('energy_j'))} J{estimated}, "
        f"avg power {format_value('avg_power_w', row.get('avg_power_w'))} W"
    )
    if metric.efficiency:
        line += f", {format_value('efficiency', row.get(metric.efficiency))} {per_kj}"
    return line


def _picks(sweep: Sweep) -> list[tuple[str, str, str]]:
    """(summary.json key, label, top table) of each trial the report names as best."""
    metric = sweep.metric
    name = metric_words(metric)[0]
    picks = [
        (f"best_{metric.target}_trial", f"best {name}", metric.table),
        ("lowest_energy_trial", "lowest energy", "top_energy"),
    ]
    if metric.efficiency:
        picks.append(("best_efficiency_trial", "best efficiency", "top_efficiency"))
    picks.append(("knee_trial", "Pareto knee", ""))
    return picks


def _pick_number(sweep: Sweep, key: str, table: str) -> Any:
    number = sweep.summary.get(key)
    if number is None and table:
        top = sweep.tables.get(table, pd.DataFrame())
        number = None if top.empty or "number" not in top else top["number"].iloc[0]
    return number


def _params_text(sweep: Sweep, number: Any) -> str:
    """'lr 0.0184, batch_size 64, precision bf16': a trial's parameters."""
    trials = sweep.tables["trials"]
    if finite_number(number) is None or "number" not in trials.columns:
        return ""
    row = trials[trials["number"] == float(number)]
    if row.empty:
        return ""
    row = row.iloc[0]
    parts = []
    for column in (c for c in trials.columns if c.startswith("param_")):
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = str(value)
        number_value = finite_number(text)
        if number_value is not None and number_value != int(number_value):
            text = f"{number_value:.4g}"
        parts.append(f"{column.removeprefix('param_')} {text}")
    return ", ".join(parts)


def best_trials(sweep: Sweep) -> pd.DataFrame:
    """The answer of a sweep: the trial that is best by the metric, by energy, by
    efficiency (when the metric has one) and the Pareto knee, each with its metric, energy
    and parameters.

    Returns:
        Rows ``best_by, number, text`` (text: the trial's line and its parameters); a pick
        the analysis does not name is left out.
    """
    rows = []
    for key, label, table in _picks(sweep):
        number = _pick_number(sweep, key, table)
        if finite_number(number) is None:
            continue
        text = _trial_line(sweep, number)
        params = _params_text(sweep, number)
        rows.append(
            {
                "best_by": label,
                "number": int(float(number)),
                "text": f"{text}; {params}" if params else text,
            }
        )
    return pd.DataFrame(rows, columns=["best_by", "number", "text"])


def pareto_front(sweep: Sweep) -> pd.DataFrame:
    """The trials on the Pareto front (metric against energy), cheapest first, with their
    parameters: ``number, <metric>, energy_j, knee`` then the parameters."""
    points = pareto_points(sweep)
    metric = sweep.metric.column
    columns = ["number", metric, "energy_j", "knee"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    front = points[points["on_front"]]
    trials = sweep.tables["trials"]
    params = [c for c in trials.columns if c.startswith("param_")]
    shown = front[[c for c in columns if c in front.columns]].copy()
    shown["knee"] = shown["knee"].map(lambda k: "knee" if k else "")
    if params and "number" in trials.columns:
        by_number = trials.drop_duplicates("number").set_index("number")[params]
        for column in params:
            shown[column.removeprefix("param_")] = shown["number"].map(by_number[column])
    return shown.reset_index(drop=True)


def sweep_overview(sweep: Sweep, picks: bool = True) -> pd.DataFrame:
    """The title page as rows ``key, value`` (text); ``picks``: with the best trials
    (:func:`best_trials` gives them with their parameters)."""
    summary, space = sweep.summary, sweep.space
    counts = trial_counts(sweep)
    objectives = summary.get("objectives") or space.get("objectives") or []
    rows = [
        ("study", sweep.name),
        ("directory", str(sweep.path.resolve())),
        ("objectives", ", ".join(map(str, objectives)) or "-"),
        ("sampler", str(summary.get("sampler") or space.get("sampler") or "-")),
        ("seed", format_value("seed", summary.get("seed", space.get("seed")))),
        ("parameters", ", ".join(sweep.params) or "-"),
        ("trials completed", str(counts.get("complete", 0))),
        ("trials failed", str(counts.get("failed", 0))),
    ]
    if counts.get("lost_or_interrupted"):
        rows.append(("lost, interrupted or refused (replaced)", str(counts["lost_or_interrupted"])))
    if counts.get("running"):
        rows.append(("running when analysed", str(counts["running"])))
    rows.append(("trial directories", str(sweep.trial_dirs)))
    rows.append(("energy source", energy_source_text(sweep.energy_sources)))
    concurrent = finite_number(summary.get("max_concurrent_trials"))
    if concurrent is not None and concurrent > 1:
        rows.append(
            (
                "concurrent trials",
                f"up to {int(concurrent)} at a time: a trial's energy includes the others'",
            )
        )
    if summary.get("vary_data") or space.get("vary_data"):
        rows.append(("data", "the space varies data keys: trials saw different validation data"))
    metric = sweep.metric
    name = metric_words(metric)[0]
    for key, label, table in _picks(sweep) if picks else []:
        rows.append((label, _trial_line(sweep, _pick_number(sweep, key, table))))
    for key, label in (
        ("top_energy_driver", "top energy driver"),
        (f"top_{metric.target}_driver", f"top {name} driver"),
    ):
        if summary.get(key):
            rows.append((label, str(summary[key])))
    return pd.DataFrame(rows, columns=["key", "value"])


def _param_display(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    present = [c for c in columns if c in frame.columns]
    params = [c for c in frame.columns if c.startswith("param_")]
    shown = frame[[*present, *params]].rename(columns={c: c.removeprefix("param_") for c in params})
    return shown.reset_index(drop=True)


def top_table(sweep: Sweep, name: str) -> pd.DataFrame:
    """A top-k table for display: rank, trial, the metric, energy, avg power, the metric
    per kJ (when it has one), time, params."""
    table = sweep.tables.get(name, pd.DataFrame())
    display = top_display(sweep.metric)
    if table.empty:
        return pd.DataFrame(columns=list(display))
    return _param_display(table, display)


def _knee_flags(pareto: pd.DataFrame) -> pd.Series:
    if "knee" not in pareto.columns:
        return pd.Series(False, index=pareto.index)
    return pareto["knee"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))


def pareto_points(sweep: Sweep) -> pd.DataFrame:
    """Every completed trial with the metric and energy; ``on_front`` and ``knee`` flags.

    Returns:
        Columns ``number, <metric>, energy_j, avg_power_w, <metric per kJ>, time_s,
        on_front, knee`` (``val_acc`` and ``efficiency_acc_per_kj`` for accuracy), sorted
        by energy.
    """
    metric = sweep.metric
    columns = list(trial_display(metric))
    done = completed(sweep.tables["trials"])
    present = [c for c in columns if c in done.columns]
    if done.empty or not {metric.column, "energy_j"} <= set(present):
        return pd.DataFrame(columns=[*columns, "on_front", "knee"])
    points = done[present].dropna(subset=[metric.column, "energy_j"]).copy()
    pareto = sweep.tables["pareto"]
    if not pareto.empty and "number" in pareto.columns:
        front = set(pareto["number"].dropna().astype(int))
        knees = set(pareto.loc[_knee_flags(pareto), "number"].dropna().astype(int))
    else:
        front, knees = _front_numbers(points, metric), set()
        knee = sweep.summary.get("knee_trial")
        if finite_number(knee) is not None:
            knees = {int(knee)}
    numbers = points["number"].astype(int)
    points["on_front"] = numbers.isin(front)
    points["knee"] = numbers.isin(knees)
    return points.sort_values(["energy_j", "number"], kind="stable").reset_index(drop=True)


def _front_numbers(points: pd.DataFrame, metric: SweepMetric = ACCURACY) -> set[int]:
    """Non-dominated trials in (best metric, min energy), when pareto.csv is absent."""
    front = set()
    values = points[["number", metric.column, "energy_j"]].to_numpy(dtype=float)
    if not metric.higher_is_better:
        values[:, 1] = -values[:, 1]  # higher is better from here on
    for number, acc, energy in values:
        dominated = (
            (values[:, 1] >= acc)
            & (values[:, 2] <= energy)
            & ((values[:, 1] > acc) | (values[:, 2] < energy))
        )
        if not dominated.any():
            front.add(int(number))
    return front


def importance_bars(sweep: Sweep, target: str) -> pd.DataFrame:
    """One target's parameter importance, most important first.

    Returns:
        Columns ``parameter, rank, fanova_importance, epsilon_sq, kruskal_p, best_value``.
    """
    columns = ["parameter", "rank", "fanova_importance", "epsilon_sq", "kruskal_p", "best_value"]
    importance = sweep.tables["importance"]
    if importance.empty or "target" not in importance.columns:
        return pd.DataFrame(columns=columns)
    part = importance[importance["target"] == target]
    for column in columns:
        if column not in part.columns:
            part = part.assign(**{column: np.nan})
    part = part[columns]
    if part[["fanova_importance", "epsilon_sq"]].isna().all().all():
        return pd.DataFrame(columns=columns)
    return part.sort_values("rank", kind="stable").reset_index(drop=True)


def _choice_text(value: Any) -> str:
    """A parameter value as trials.csv writes it: lists as JSON, integral floats as ints."""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if value is None:
        return ""
    return _normalise(str(value))


def _normalise(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number == int(number) and "e" not in text.lower():
        return str(int(number))
    return text


def parameter_kinds(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Per parameter: ``kind`` (categorical or numeric), ``log`` and ``choices`` (as text).

    Taken from space.yaml; without it a parameter whose values are all numbers and take at
    least five distinct values is numeric.
    """
    spec_of = sweep.space.get("params") if isinstance(sweep.space.get("params"), dict) else {}
    trials = sweep.tables["trials"]
    kinds: dict[str, dict[str, Any]] = {}
    for name in sweep.params:
        spec = spec_of.get(name) if isinstance(spec_of.get(name), dict) else None
        if spec is not None and "choices" in spec:
            choices = [_choice_text(c) for c in spec.get("choices") or []]
            kinds[name] = {"kind": "categorical", "log": False, "choices": choices}
            continue
        if spec is not None and ("low" in spec or "high" in spec):
            kinds[name] = {"kind": "numeric", "log": bool(spec.get("log")), "choices": []}
            continue
        values = trials.get(f"param_{name}", pd.Series(dtype=object)).dropna()
        numbers = pd.to_numeric(values, errors="coerce")
        numeric = len(values) and numbers.notna().all() and numbers.nunique() >= _NUMERIC_MIN_VALUES
        if numeric:
            positive = numbers[numbers > 0]
            log = len(positive) == len(numbers) and positive.max() / positive.min() > 100
            kinds[name] = {"kind": "numeric", "log": bool(log), "choices": []}
        else:
            kinds[name] = {"kind": "categorical", "log": False, "choices": []}
    return kinds


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as an array (NaN when absent), free of the frame's index."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def parameter_effects(sweep: Sweep) -> pd.DataFrame:
    """Long table of completed trials per parameter, for the distribution figures.

    Returns:
        Columns ``parameter, kind, value, x, order, number, <metric>, energy_j``
        (``val_acc`` for accuracy): ``value`` is the text of the value, ``x`` its number
        (numeric parameters), ``order`` the position of a categorical value among the
        space's choices.
    """
    metric = sweep.metric.column
    columns = ["parameter", "kind", "value", "x", "order", "number", metric, "energy_j"]
    done = completed(sweep.tables["trials"])
    if done.empty:
        return pd.DataFrame(columns=columns)
    kinds = parameter_kinds(sweep)
    parts = []
    for name, spec in kinds.items():
        column = f"param_{name}"
        if column not in done.columns:
            continue
        raw = done[column]
        part = pd.DataFrame(
            {
                "parameter": name,
                "kind": spec["kind"],
                "value": [_normalise(str(v)) if pd.notna(v) else "(none)" for v in raw],
                "x": _column(done, column) if spec["kind"] == "numeric" else np.nan,
                "number": done["number"].to_numpy(),
                metric: _column(done, metric),
                "energy_j": _column(done, "energy_j"),
            }
        )
        if spec["kind"] == "categorical":
            order = {choice: i for i, choice in enumerate(spec["choices"])}
            seen = sorted(set(part["value"]) - set(order), key=str)
            order.update({value: len(order) + i for i, value in enumerate(seen)})
            part["order"] = part["value"].map(order).astype(float)
        else:
            part["order"] = np.nan
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def parameter_groups(effects: pd.DataFrame) -> pd.DataFrame:
    """Per categorical parameter value: trials, median and mean energy and the metric.

    Returns:
        Columns ``parameter, value, trials, energy_j_median, energy_j_mean,
        <metric>_median, <metric>_mean`` (``val_acc_median``...) in choice order.
    """
    fixed = ("parameter", "kind", "value", "x", "order", "number", "energy_j")
    metric = next((c for c in effects.columns if c not in fixed), "val_acc")
    columns = [
        "parameter",
        "value",
        "trials",
        "energy_j_median",
        "energy_j_mean",
        f"{metric}_median",
        f"{metric}_mean",
    ]
    categorical = effects[effects["kind"] == "categorical"] if not effects.empty else effects
    if categorical.empty:
        return pd.DataFrame(columns=columns)
    grouped = categorical.groupby(["parameter", "order", "value"], sort=False)
    table = grouped.agg(
        trials=("number", "size"),
        energy_j_median=("energy_j", "median"),
        energy_j_mean=("energy_j", "mean"),
        **{f"{metric}_median": (metric, "median"), f"{metric}_mean": (metric, "mean")},
    ).reset_index()
    params = list(dict.fromkeys(categorical["parameter"]))
    table["position"] = table["parameter"].map({p: i for i, p in enumerate(params)})
    table = table.sort_values(["position", "order"], kind="stable")
    return table[columns].reset_index(drop=True)


def best_trial_reason(sweep: Sweep) -> str:
    """Why :func:`best_trial` chose its trial: 'most efficient' or 'Pareto knee'."""
    return "most efficient" if sweep.metric.efficiency else "Pareto knee"


def _first_number(table: pd.DataFrame) -> int | None:
    if table.empty or "number" not in table.columns or not table["number"].notna().any():
        return None
    return int(table["number"].dropna().iloc[0])


def best_trial(sweep: Sweep) -> tuple[int | None, Path | None]:
    """The most efficient completed trial (highest metric per kJ) and its run directory; for
    a metric where lower is better (no efficiency), the Pareto knee, else the best trial.

    Returns:
        (number, run directory); the directory is None when it is not on this machine.
    """
    metric = sweep.metric
    number = None
    if metric.efficiency:
        number = _first_number(sweep.tables.get("top_efficiency", pd.DataFrame()))
        done = completed(sweep.tables["trials"])
        column = metric.efficiency
        if number is None and column in done.columns and done[column].notna().any():
            number = int(done.loc[pd.to_numeric(done[column]).idxmax(), "number"])
    else:
        knee = finite_number(sweep.summary.get("knee_trial"))
        pareto = sweep.tables["pareto"]
        if knee is None and not pareto.empty and "knee" in pareto.columns:
            knee = _first_number(pareto[_knee_flags(pareto)])
        number = int(knee) if knee is not None else None
        if number is None:
            number = _first_number(sweep.tables.get(metric.table, pd.DataFrame()))
    if number is None:
        return None, None
    trials = sweep.tables["trials"]
    candidates = [sweep.path / "trials" / str(number)]
    if "run_dir" in trials.columns:
        written = trials.loc[trials["number"] == number, "run_dir"].dropna()
        if not written.empty:
            run_dir = Path(str(written.iloc[0]))
            candidates.insert(0, run_dir if run_dir.is_absolute() else sweep.path / run_dir)
    for candidate in candidates:
        if candidate.is_dir() and is_run_directory(candidate):
            return number, candidate
    return number, None


def failed_trials(sweep: Sweep) -> pd.DataFrame:
    """Trials that did not complete: ``number, state, fail_reason, error``."""
    columns = ["number", "state", "fail_reason", "error"]
    trials = sweep.tables["trials"]
    if trials.empty or "state" not in trials.columns:
        return pd.DataFrame(columns=columns)
    failed = trials[trials["state"] != "complete"]
    return failed[[c for c in columns if c in failed.columns]].reset_index(drop=True)


def completed_table(sweep: Sweep) -> pd.DataFrame:
    """Every completed trial for display: number, the metric, energy, power, the metric per
    kJ (when it has one), time, params."""
    return _param_display(completed(sweep.tables["trials"]), trial_display(sweep.metric))
