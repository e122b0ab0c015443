"""Human names, units and cell formatting for run-directory columns.

Units live in the column names (``_bytes``, ``_s``, ``_j``, ``_w``, ``_pct``); this module
turns a column into an axis label and a scale factor, and a value into a short string.
Metric columns (``train_<m>``, ``val_<m>``, ``test_<m>``, ``best_val_<m>``) get their
metric's name ("val RMSE", "test perplexity"); only accuracy-like metrics are fractions
(shown as a fraction or in percent).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import pandas as pd

from edgetrain.units import format_bytes

__all__ = [
    "PERFORMANCE_WORDS",
    "axis_label",
    "bytes_unit",
    "energy_source_text",
    "energy_sources_in",
    "estimated_note",
    "finite_number",
    "format_value",
    "is_accuracy",
    "is_estimated",
    "is_performance",
    "mean_std_text",
    "metric_name",
    "metric_of",
    "pretty_name",
    "quality_text",
    "time_unit",
]

MIB = 1024**2
GIB = 1024**3
PERFORMANCE_WORDS = ("loss", "acc")
#: The splits a metric column starts with (``val_rmse``), and prefixes before them.
SPLITS = ("train", "val", "test")
_METRIC_PREFIXES = ("best_", "final_", "trial_", "quantized_")
#: Human names of the built-in metrics (others: underscores become spaces).
METRIC_NAMES = {
    "loss": "loss",
    "acc": "accuracy",
    "accuracy": "accuracy",
    "token_acc": "token accuracy",
    "token_accuracy": "token accuracy",
    "mae": "MAE",
    "mse": "MSE",
    "rmse": "RMSE",
    "r2": "R²",
    "perplexity": "perplexity",
}

_NAMES = {
    "epoch": "epoch",
    "time_s": "time",
    "train_loss": "train loss",
    "val_loss": "val loss",
    "train_acc": "train accuracy",
    "val_acc": "val accuracy",
    "test_acc": "test accuracy",
    "best_val_acc": "best val accuracy",
    "efficiency_acc_per_kj": "efficiency",
    "lr": "learning rate",
    "batch_size": "batch size",
    "micro_batch_size": "micro-batch size",
    "accum_steps": "accumulation steps",
    "samples_per_s": "throughput",
    "energy_j": "energy",
    "avg_power_w": "avg power",
    "peak_rss_bytes": "peak RSS",
    "peak_device_mem_bytes": "peak device memory",
    "activation_bytes": "activation memory",
    "param_sparsity": "parameter sparsity",
    "trainable_frac": "trainable fraction",
    "cpu_pct": "CPU",
    "ram_used_bytes": "RAM used",
    "proc_rss_bytes": "process RSS",
    "gpu_util_pct": "GPU util",
    "gpu_mem_bytes": "GPU memory",
    "gpu_power_w": "GPU power",
    "cpu_power_w": "CPU power",
    "board_power_w": "board power",
    "memory_score": "memory score",
    "accuracy_score": "accuracy score",
    "priority_batch_size": "priority: batch size",
    "priority_learning_rate": "priority: learning rate",
    "energy_per_sample_j": "energy per sample",
    "samples": "samples",
}
_SUFFIXES = (
    ("_per_s", "/s"),
    ("_bytes", "bytes"),
    ("_pct", "%"),
    ("_s", "s"),
    ("_j", "J"),
    ("_w", "W"),
)
_UNITLESS = {
    "batch_size": "samples",
    "micro_batch_size": "samples",
    "samples_per_s": "samples/s",
    "efficiency_acc_per_kj": "accuracy/kJ",
    "samples": "samples",
    "accum_steps": "steps",
    "param_sparsity": "fraction",
    "trainable_frac": "fraction",
    "memory_score": "0..1",
    "accuracy_score": "0..1",
}


def _strip_prefix(column: str) -> tuple[str, str]:
    for prefix in ("mean_", "max_", "min_"):
        if column.startswith(prefix):
            return prefix[:-1] + " ", column[len(prefix) :]
    return "", column


def metric_of(column: str) -> tuple[str, str, str] | None:
    """A metric column's parts: 'best_val_rmse' -> ('best ', 'val', 'rmse'); None when
    the column is not ``[best_|final_|trial_|quantized_]<train|val|test>_<metric>``.

    Columns whose rest names a unit (``train_time_s``) are not metrics.
    """
    lead = ""
    for prefix in _METRIC_PREFIXES:
        if column.startswith(prefix):
            lead, column = prefix[:-1] + " ", column[len(prefix) :]
            break
    split, _, metric = column.partition("_")
    if split not in SPLITS or not metric:
        return None
    if metric not in METRIC_NAMES and (
        metric.endswith(tuple(suffix for suffix, _ in _SUFFIXES)) or metric == "time"
    ):
        return None
    return lead, split, metric


def metric_name(metric: str) -> str:
    """The human name of a metric: 'rmse' -> 'RMSE', 'token_acc' -> 'token accuracy'."""
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def is_accuracy(column: str) -> bool:
    """Whether a column (or a bare metric name) is accuracy-like: a fraction of hits,
    shown as a fraction or in percent ('val_acc', 'test_token_acc', 'best_val_acc')."""
    parts = metric_of(column)
    metric = parts[2] if parts is not None else column
    return metric in ("acc", "accuracy") or metric.endswith(("_acc", "_accuracy"))


def quality_text(column: str, value: Any) -> str:
    """'val RMSE 0.6802' or 'val accuracy 0.93': a metric's name and its value."""
    return f"{pretty_name(column)} {format_value(column, value)}"


def pretty_name(column: str) -> str:
    """A readable name without the unit: 'peak_rss_bytes' -> 'peak RSS', 'val_rmse' ->
    'val RMSE'."""
    prefix, base = _strip_prefix(column)
    if base in _NAMES:
        return prefix + _NAMES[base]
    parts = metric_of(base)
    if parts is not None and parts[2] in METRIC_NAMES:
        lead, split, metric = parts
        return f"{prefix}{lead}{split} {metric_name(metric)}"
    for suffix, _ in _SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    return prefix + base.replace("_", " ")


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit for plotting bytes: GiB from 1 GiB up, else MiB."""
    if max_bytes is not None and math.isfinite(max_bytes) and abs(max_bytes) >= GIB:
        return float(GIB), "GiB"
    return float(MIB), "MiB"


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Divisor and unit for a time axis: s below 10 min, min below 3 h, else h."""
    if max_seconds is None or not math.isfinite(max_seconds) or max_seconds < 600:
        return 1.0, "s"
    if max_seconds < 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def unit_of(column: str, values: Iterable[float] = ()) -> tuple[float, str]:
    """Divisor and unit string of a column, choosing MiB/GiB and fraction/% from the data."""
    _, base = _strip_prefix(column)
    if base in _UNITLESS:
        return 1.0, _UNITLESS[base]
    if is_accuracy(base) or (metric_of(base) is None and "acc" in base):
        finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        return 1.0, "%" if finite and max(finite) > 1.0 else "fraction"
    if metric_of(base) is not None:
        return 1.0, ""  # losses, errors, R², perplexity: in the data's own units
    if base.endswith("_bytes"):
        finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v))]
        return bytes_unit(max(finite) if finite else 0.0)
    for suffix, unit in _SUFFIXES:
        if base.endswith(suffix):
            return 1.0, unit
    return 1.0, ""


def axis_label(column: str, values: Iterable[float] = ()) -> tuple[float, str]:
    """Divisor and axis label with unit: ('peak_rss_bytes', data) -> (2**20, 'peak RSS (MiB)')."""
    divisor, unit = unit_of(column, list(values))
    name = pretty_name(column)
    return divisor, f"{name} ({unit})" if unit else name


def is_performance(column: str) -> bool:
    """Whether a column measures model quality: a loss, an accuracy or any other metric
    (``train_<m>``, ``val_<m>``, ``test_<m>``)."""
    words = column.split("_")
    return metric_of(column) is not None or any(word in words for word in PERFORMANCE_WORDS)


def finite_number(value: Any) -> float | None:
    """A cell or JSON value as a finite float; None for words, booleans, None, NaN and inf."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_value(column: str, value: Any) -> str:
    """Short display string for one cell; bytes in binary units, empty cells as '-'."""
    if value is None or value is pd.NA:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "-"
        if column.endswith("_bytes"):
            return format_bytes(number)
        if number == int(number) and abs(number) < 1e15 and not column.endswith("_pct"):
            return f"{int(number)}"
        if column.endswith(("_pct", "_w")):
            return f"{number:.1f}"
        if column.endswith("_s") and not column.endswith("_per_s"):
            return f"{number:.3g}" if abs(number) < 10 else f"{number:,.1f}"
        if column.endswith("_j"):
            return f"{number:.4g}" if abs(number) < 10 else f"{number:,.1f}"
        return f"{number:.4g}"
    return str(value)


def is_estimated(sources: Iterable[Any]) -> bool:
    """Whether any energy source is an estimate (``estimated:...``)."""
    return any(str(s).startswith("estimated") for s in sources if s is not None)


def energy_sources_in(frame: pd.DataFrame) -> list[str]:
    """The distinct values of a table's ``energy_source`` column, sorted ([] without one)."""
    column = frame.get("energy_source", pd.Series(dtype=object))
    return sorted({str(s) for s in column.dropna()})


def estimated_note(sources: Iterable[Any]) -> str:
    """' (energy estimated, not measured)' for a heading when any source is an estimate."""
    return " (energy estimated, not measured)" if is_estimated(sources) else ""


def energy_source_text(sources: Iterable[Any]) -> str:
    """'estimated:cpu-tdp (an estimate, not a measurement)' or 'measured:nvml'."""
    names = sorted({str(s) for s in sources if s is not None and str(s) not in ("", "nan")})
    if not names:
        return "unknown (no energy recorded)"
    text = ", ".join(names)
    return text + " (an estimate, not a measurement)" if is_estimated(names) else text


def mean_std_text(column: str, mean: Any, std: Any) -> str:
    """'0.93 ± 0.02' in the column's format; the mean alone when there is no std."""
    text = format_value(column, mean)
    if text == "-" or std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {format_value(column, std)}"
