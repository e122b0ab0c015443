"""Per-configuration summary: mean and standard deviation over the measured epochs.

The first ``warmup_epochs`` epochs (1-based epoch numbers ``<= warmup_epochs``) pay
start-up costs (a cold page cache, worker start, allocator growth): they are left out of
the mean and standard deviation and shown apart as ``warmup_<metric>`` (their mean).
Standard deviations are sample standard deviations (ddof=1), empty for one epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

__all__ = [
    "EPOCH_COST_COLUMNS",
    "SUMMARY_METRICS",
    "summarize_epochs",
    "summary_columns",
    "summary_table",
]

#: Columns of epochs.csv taken from the loop's metrics row (metrics.csv names, time_s renamed).
EPOCH_COST_COLUMNS: tuple[str, ...] = (
    "epoch_time_s",
    "samples_per_s",
    "energy_j",
    "energy_source",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_device_mem_bytes",
)
SUMMARY_METRICS: tuple[str, ...] = (
    "stall_s",
    "wait_s",
    "copy_s",
    "compute_s",
    "train_wall_s",
    "loader_start_s",
    "epoch_time_s",
    "samples_per_s",
    "energy_j",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_device_mem_bytes",
)
_TAIL: tuple[str, ...] = (
    "stall_frac",
    "accounted_frac_mean",
    "energy_source",
    "cache_method",
    "resident_before_frac",
    "resident_after_frac",
    "resident_end_frac",
    "data_path",
    "run_dir",
)


def summary_columns(grid_keys: Sequence[str]) -> list[str]:
    """summary.csv columns for a grid over ``grid_keys``."""
    cols = ["config", "status", "note", *grid_keys, "measured_epochs", "warmup_epochs"]
    for metric in SUMMARY_METRICS:
        cols += [f"{metric}_mean", f"{metric}_std"]
    cols += [f"warmup_{metric}" for metric in SUMMARY_METRICS]
    return cols + list(_TAIL)


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").dropna()


def _mean(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


def summarize_epochs(epochs: pd.DataFrame, warmup_epochs: int) -> dict[str, Any]:
    """Summarise one configuration's epochs (rows of epochs.csv).

    Args:
        epochs: one row per epoch with ``epoch`` (1-based) and the metric columns.
        warmup_epochs: epochs ``<= warmup_epochs`` are warm-up.

    Returns:
        ``measured_epochs``, ``warmup_epochs``, ``<metric>_mean``, ``<metric>_std``,
        ``warmup_<metric>``, ``stall_frac`` (mean stall over mean stall + copy + compute),
        ``accounted_frac_mean`` and ``energy_source``; None where there is no value.
    """
    epoch = pd.to_numeric(epochs["epoch"], errors="coerce")
    measured = epochs[epoch > warmup_epochs]
    warm = epochs[epoch <= warmup_epochs]
    out: dict[str, Any] = {"measured_epochs": len(measured), "warmup_epochs": len(warm)}
    for metric in SUMMARY_METRICS:
        values = _numbers(measured, metric)
        out[f"{metric}_mean"] = _mean(values)
        out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        out[f"warmup_{metric}"] = _mean(_numbers(warm, metric))
    parts = [out[f"{m}_mean"] for m in ("stall_s", "copy_s", "compute_s")]
    total = sum(p for p in parts if p is not None)
    out["stall_frac"] = parts[0] / total if parts[0] is not None and total > 0 else None
    out["accounted_frac_mean"] = _mean(_numbers(measured, "accounted_frac"))
    sources = measured["energy_source"].dropna() if "energy_source" in measured else []
    out["energy_source"] = "+".join(sorted({str(s) for s in sources if str(s)})) or None
    return out


def _value(row: pd.Series, column: str) -> float | None:
    value = row.get(column)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _mean_std(row: pd.Series, metric: str, spec: str) -> str:
    mean = _value(row, f"{metric}_mean")
    if mean is None:
        return "-"
    std = _value(row, f"{metric}_std")
    return f"{mean:{spec}}" + (f"±{std:{spec}}" if std is not None else "")


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f}%"


def summary_table(summary: pd.DataFrame, grid_keys: Sequence[str], title: str = "") -> Table:
    """A rich table: per configuration, seconds per measured epoch (mean ± std) and more.

    Columns: stall, copy and compute seconds per epoch; stall as a share of the three;
    ``start s``: building the DataLoader and starting its workers, per epoch (before the
    first batch is asked for; not in any batch's stall); samples/s; energy; the warm-up
    epoch's training time; page-cache method and residency before -> after eviction.
    """
    sources = sorted({str(s) for s in summary.get("energy_source", pd.Series()).dropna() if s})
    caption = f"energy: {', '.join(sources)}" if sources else "energy: not measured"
    if any(s.startswith("estimated") for s in sources):
        caption += " (an estimate, not a measurement)"
    table = Table(title=title or None, caption=caption, show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("configuration")
    for name in ("stall s", "copy s", "compute s"):
        table.add_column(name, justify="right")
    table.add_column("stall", justify="right")
    table.add_column("start s", justify="right")
    table.add_column("samples/s", justify="right")
    table.add_column("energy J", justify="right")
    table.add_column("warm-up s", justify="right")
    table.add_column("page cache")
    for _, row in summary.iterrows():
        settings = (
            " ".join(f"{k}={'-' if pd.isna(row.get(k)) else row.get(k)}" for k in grid_keys)
            or "base"
        )
        if row.get("status") != "completed":
            table.add_row(
                str(row.get("config", "")), settings, Text(str(row.get("status")), style="yellow")
            )
            continue
        cache = str(row.get("cache_method") or "-")
        before, after = _value(row, "resident_before_frac"), _value(row, "resident_after_frac")
        if before is not None or after is not None:
            cache += f" {_pct(before)}→{_pct(after)}"
        warm = _value(row, "warmup_train_wall_s")
        start = _value(row, "loader_start_s_mean")
        table.add_row(
            str(row.get("config")),
            settings,
            _mean_std(row, "stall_s", ".2f"),
            _mean_std(row, "copy_s", ".3f"),
            _mean_std(row, "compute_s", ".2f"),
            _pct(_value(row, "stall_frac")),
            "-" if start is None else f"{start:.2f}",
            _mean_std(row, "samples_per_s", ".1f"),
            _mean_std(row, "energy_j", ".1f"),
            "-" if warm is None else f"{warm:.2f}",
            cache,
        )
    return table
