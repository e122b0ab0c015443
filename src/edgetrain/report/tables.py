"""The numbers behind every figure and table of a run report, as DataFrames.

Each function takes a :class:`~edgetrain.report.rundir.Run` and returns a DataFrame
(empty when the run has no such data), so tests check the data and figures only draw.
This module holds the run's totals and its settings (config, environment, sensors); the
per-epoch and over-time tables are in :mod:`.epoch_tables` and re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from edgetrain.report.epoch_tables import (
    activation_table,
    adapt_memory,
    controller_table,
    correlation_matrix,
    decisions_table,
    downsample,
    energy_per_epoch,
    epoch_boundaries,
    epoch_numeric_table,
    metrics_table,
    resource_summary,
    resource_usage,
    strongest_pairs,
    training_curves,
)
from edgetrain.report.labels import (
    energy_sources_in,
    finite_number,
    format_value,
    is_accuracy,
    pretty_name,
)
from edgetrain.report.rundir import Run
from edgetrain.safefs import DirLock
from edgetrain.units import format_seconds

__all__ = [
    "activation_table",
    "adapt_memory",
    "config_table",
    "controller_table",
    "correlation_matrix",
    "decisions_table",
    "downsample",
    "energy_per_epoch",
    "environment_table",
    "epoch_boundaries",
    "epoch_numeric_table",
    "flatten_mapping",
    "metrics_table",
    "resource_summary",
    "resource_usage",
    "run_totals",
    "sensors_table",
    "strongest_pairs",
    "total_rows",
    "totals_table",
    "training_curves",
]


def _pick(section: Any, names: tuple[str, ...]) -> float | None:
    """The first numeric value among ``names`` in a summary section (a mapping or a number)."""
    if not isinstance(section, Mapping):
        return finite_number(section)
    for name in names:
        if finite_number(section.get(name)) is not None:
            return finite_number(section.get(name))
    return None


def _column_max(frame: pd.DataFrame, name: str) -> float | None:
    if name not in frame.columns or frame[name].notna().sum() == 0:
        return None
    return float(frame[name].max())


def _max_of(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _aliases(metric: str) -> tuple[str, ...]:
    """Names a summary.json section may give a metric (``val_acc``: also ``acc``, ...)."""
    name = metric.split("_", 1)[1] if "_" in metric else metric
    return (name, "accuracy") if name == "acc" else (name,)


def _best_row(metrics: pd.DataFrame, metric: str, mode: str) -> tuple[float, float] | None:
    """(value, epoch) of the epoch that is best by ``metric`` in metrics.csv, or None."""
    if metric not in metrics.columns or not metrics[metric].notna().any():
        return None
    index = metrics[metric].idxmax() if mode == "max" else metrics[metric].idxmin()
    return float(metrics.loc[index, metric]), float(metrics.loc[index, "epoch"])


def _quality_totals(run: Run) -> dict[str, Any]:
    """The run's metrics in the totals: best and final by the task's metric, the final value
    of every other validation metric, and every test metric of summary.json.

    Keys are ``best_<metric>``, ``best_epoch``, ``final_<val column>``, ``final_train_loss``
    and ``test_<m>`` (``best_val_acc``, ``final_val_acc``, ``test_acc`` for classification).
    """
    summary, metrics = run.summary, run.metrics
    last = metrics.iloc[-1] if not metrics.empty else pd.Series(dtype=object)
    metric, mode = run.best_metric
    best = summary.get("best") or {}
    best_value = _pick(best, (metric, "value", *_aliases(metric)))
    best_epoch = _pick(best, ("epoch",))
    if best_value is None and (row := _best_row(metrics, metric, mode)) is not None:
        best_value, best_epoch = row
    out: dict[str, Any] = {f"best_{metric}": best_value, "best_epoch": best_epoch}
    final = summary.get("final") or {}
    finals = [metric] + [c for c in run.quality_columns if c.startswith("val_") and c != metric]
    for column in finals:
        value = _pick(final, (column, *_aliases(column)))
        out[f"final_{column}"] = value if value is not None else finite_number(last.get(column))
    final_loss = _pick(final, ("train_loss", "loss"))
    out["final_train_loss"] = (
        final_loss if final_loss is not None else finite_number(last.get("train_loss"))
    )
    test = summary.get("test") or {}
    name = metric.split("_", 1)[1] if "_" in metric else metric
    first = f"test_{name}"
    names = (first, *_aliases(metric), *(("val_acc",) if name == "acc" else ()))
    out[first] = _pick(test, names)
    if isinstance(test, Mapping):
        for key in test:
            if str(key).startswith("test_") and key != first:
                out[str(key)] = finite_number(test[key])
    return out


def run_totals(run: Run) -> dict[str, Any]:
    """The headline numbers of a run, from summary.json with fallbacks to the CSV files.

    Returns:
        A flat mapping with ``status, epochs, wall_time_s, total_energy_j, energy_source,
        avg_power_w, samples, energy_per_sample_j, peak_rss_bytes, peak_device_mem_bytes,
        peak_gpu_mem_bytes, peak_activation_bytes``, the metrics of the run's task
        (``best_<metric>, best_epoch, final_<val column>..., final_train_loss,
        test_<m>...``: ``best_val_acc, final_val_acc, test_acc`` for classification) and,
        under a memory budget, ``memory_budget_bytes, budget_peak_bytes,
        budget_violations, micro_batch``; unknown values are None.
    """
    summary, metrics, resources = run.summary, run.metrics, run.resources
    status = summary.get("status") or "unknown (no summary.json)"
    if status == "running" and DirLock.is_free(run.path):
        status = "stopped early (killed or crashed; resume it with --resume)"
    elif status == "diverged" and isinstance(summary.get("diverged"), dict):
        where = summary["diverged"]
        status = (
            f"diverged (non-finite loss at epoch {where.get('epoch')}, step {where.get('step')})"
        )
    epochs = finite_number(summary.get("epochs_completed"))
    if epochs is None:
        epochs = float(len(metrics))

    wall = finite_number(summary.get("total_time_s"))
    if wall is None and metrics["time_s"].notna().any():
        wall = float(metrics["time_s"].sum())
    if wall is None and "t_s" in resources.columns and resources["t_s"].notna().any():
        wall = float(resources["t_s"].max() - resources["t_s"].min())

    energy_table = energy_per_epoch(run)
    energy = finite_number(summary.get("total_energy_j"))
    source = summary.get("energy_source")
    if energy is None and "energy_j" in energy_table.columns:
        energy = float(energy_table["energy_j"].sum())
    if not source and "energy_source" in energy_table.columns:
        source = ", ".join(energy_sources_in(energy_table))
    samples = float(energy_table["samples"].sum()) if "samples" in energy_table.columns else None
    per_sample = None
    if {"samples", "energy_j"} <= set(energy_table.columns):
        both = energy_table[["samples", "energy_j"]].dropna()
        if both["samples"].sum() > 0:  # the epochs where both are known, not the run's total
            per_sample = float(both["energy_j"].sum() / both["samples"].sum())

    return {
        "status": status,
        "epochs": epochs,
        "wall_time_s": wall,
        "total_energy_j": energy,
        "energy_source": source or None,
        "avg_power_w": energy / wall if energy is not None and wall else None,
        "samples": samples or None,
        "energy_per_sample_j": per_sample,
        "peak_rss_bytes": _max_of(
            _column_max(metrics, "peak_rss_bytes"), _column_max(resources, "proc_rss_bytes")
        ),
        "peak_device_mem_bytes": _column_max(metrics, "peak_device_mem_bytes"),
        "peak_gpu_mem_bytes": _column_max(resources, "gpu_mem_bytes"),
        "peak_activation_bytes": _column_max(metrics, "activation_bytes"),
        **_quality_totals(run),
        **_budget_totals(summary.get("adapt")),
    }


def _budget_totals(adapt: Any) -> dict[str, Any]:
    """The memory budget's outcome from summary.json's ``adapt`` (all None without one)."""
    adapt = adapt if isinstance(adapt, dict) else {}
    budget = finite_number(adapt.get("budget_bytes"))
    if budget is None:
        return dict.fromkeys(BUDGET_KEYS)
    micro, accum = (
        finite_number(adapt.get("micro_batch_size")),
        finite_number(adapt.get("accum_steps")),
    )
    return {
        "memory_budget_bytes": budget,
        "budget_peak_bytes": finite_number(adapt.get("measured_peak_bytes")),
        "budget_violations": finite_number(adapt.get("budget_violations")),
        "micro_batch": f"{micro:.0f} x {accum:.0f} accumulated"
        if micro is not None and accum is not None
        else None,
    }


BUDGET_KEYS = ("memory_budget_bytes", "budget_peak_bytes", "budget_violations", "micro_batch")


#: The rows of a classification run's totals, in order (:func:`total_rows` makes them for
#: any task).
TOTAL_ROWS = (
    ("status", "status", ""),
    ("epochs", "epochs completed", ""),
    ("wall_time_s", "wall time", "s"),
    ("total_energy_j", "total energy", "J"),
    ("energy_source", "energy source", ""),
    ("avg_power_w", "average power", "W"),
    ("samples", "training samples", ""),
    ("energy_per_sample_j", "energy per sample", "J"),
    ("peak_rss_bytes", "peak process RSS", "bytes"),
    ("peak_device_mem_bytes", "peak device memory (allocated)", "bytes"),
    ("peak_gpu_mem_bytes", "peak GPU memory (monitor)", "bytes"),
    ("peak_activation_bytes", "peak activation memory", "bytes"),
    ("best_val_acc", "best val accuracy", ""),
    ("best_epoch", "best epoch", ""),
    ("final_val_acc", "final val accuracy", ""),
    ("final_train_loss", "final train loss", ""),
    ("test_acc", "test accuracy", ""),
    ("memory_budget_bytes", "memory budget", "bytes"),
    ("budget_peak_bytes", "training memory peak (budgeted)", "bytes"),
    ("budget_violations", "steps over the budget", ""),
    ("micro_batch", "micro-batch (last)", ""),
)
_HEAD_ROWS = TOTAL_ROWS[:12]
_BUDGET_ROWS = TOTAL_ROWS[-4:]


def _metric_row(key: str, directions: Mapping[str, str]) -> tuple[str, str, str]:
    """(key, label, unit) of a metric total: 'best_val_rmse' -> 'best val RMSE (lowest)'."""
    label = pretty_name(key)
    if key.startswith("best_") and not is_accuracy(key):
        mode = directions.get(key.removeprefix("best_"), "min")
        label += " (highest)" if mode == "max" else " (lowest)"
    return key, label, ""


def total_rows(
    totals: Iterable[str], directions: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """``(key, label, unit)`` of every row of a run's totals, in order, for the keys of
    :func:`run_totals` (any task: 'best val RMSE (lowest)', 'test perplexity').

    Args:
        totals: The keys of one or more runs' totals.
        directions: ``max``/``min`` per metric column, for the label of a ``best_`` row.
    """
    keys = list(dict.fromkeys(totals))
    directions = directions or {}
    fixed = {key for key, _, _ in _HEAD_ROWS + _BUDGET_ROWS}
    best = [k for k in keys if k.startswith("best_") and k != "best_epoch" and k not in fixed]
    finals = [k for k in keys if k.startswith("final_") and k != "final_train_loss"]
    tests = [k for k in keys if k.startswith("test_")]
    tests.sort(key=lambda k: k == "test_loss")  # the task's metric first, the loss last
    rows = list(_HEAD_ROWS)
    rows += [_metric_row(k, directions) for k in best]
    if "best_epoch" in keys:
        rows.append(("best_epoch", "best epoch", ""))
    rows += [_metric_row(k, directions) for k in finals]
    if "final_train_loss" in keys:
        rows.append(("final_train_loss", "final train loss", ""))
    rows += [_metric_row(k, directions) for k in tests]
    return rows + list(_BUDGET_ROWS)


ENERGY_KEYS = frozenset({"total_energy_j", "avg_power_w", "energy_per_sample_j"})


def total_text(key: str, value: Any) -> str:
    """Display string of one value from :func:`run_totals`."""
    if key == "wall_time_s":
        return format_seconds(value) + (f" ({value:,.1f} s)" if value >= 60 else "")
    if key == "total_energy_j":
        return f"{value:,.1f} J ({value / 3600:.3g} Wh)"
    if key == "avg_power_w":
        return f"{value:.1f} W"
    if key == "energy_per_sample_j":
        return f"{value * 1000:.4g} mJ"
    return format_value(key, value)


def totals_table(run: Run) -> pd.DataFrame:
    """The totals as rows ``quantity, value, unit, text`` (unknown quantities left out)."""
    totals = run_totals(run)
    directions = {column: run.direction(column) for column in run.metrics.columns}
    estimated = str(totals.get("energy_source") or "").startswith("estimated")
    rows = [
        {
            "quantity": label,
            "value": totals[key],
            "unit": unit,
            "text": total_text(key, totals[key])
            + (" (estimated)" if estimated and key in ENERGY_KEYS else ""),
        }
        for key, label, unit in total_rows(totals, directions)
        if totals.get(key) is not None
    ]
    return pd.DataFrame(rows, columns=["quantity", "value", "unit", "text"])


def _scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def flatten_mapping(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping to dotted keys with display strings: {'a': {'b': 1}} -> {'a.b': '1'}."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_mapping(value, dotted + "."))
        elif isinstance(value, Mapping):
            flat[dotted] = "{}"
        else:
            flat[dotted] = _scalar_text(value)
    return flat


def config_table(run: Run) -> pd.DataFrame:
    """The resolved configuration as rows ``key, value`` with dotted keys."""
    flat = flatten_mapping(run.config)
    return pd.DataFrame({"key": list(flat), "value": list(flat.values())}, columns=["key", "value"])


def environment_table(run: Run) -> pd.DataFrame:
    """Versions and device from env.json as rows ``key, value`` (sensors apart)."""
    flat = flatten_mapping({k: v for k, v in run.env.items() if k != "sensors"})
    return pd.DataFrame({"key": list(flat), "value": list(flat.values())}, columns=["key", "value"])


def sensors_table(run: Run) -> pd.DataFrame:
    """Each sensor from env.json: ``name, available, source_label, reason``."""
    columns = ["name", "available", "source_label", "reason"]
    sensors = run.env.get("sensors") or []
    if isinstance(sensors, Mapping):  # tolerate {name: {...}} as well as a list
        sensors = [
            {"name": name, **(info if isinstance(info, Mapping) else {})}
            for name, info in sensors.items()
        ]
    rows = [
        {column: sensor.get(column) for column in columns}
        for sensor in sensors
        if isinstance(sensor, Mapping)
    ]
    return pd.DataFrame(rows, columns=columns)
