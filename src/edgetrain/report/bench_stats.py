"""The tables of the benchmark report: where the training time of each configuration went.

Each function takes a :class:`~edgetrain.report.bench_data.Bench` and returns a
DataFrame. Measured epochs exclude the warm-up epochs, which are shown apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from edgetrain.report.bench_data import Bench, completed_configs
from edgetrain.report.labels import energy_source_text, finite_number, format_value
from edgetrain.report.tables import flatten_mapping

__all__ = [
    "BREAKDOWN_PARTS",
    "WARMUP_METRICS",
    "batch_times",
    "bench_overview",
    "config_labels",
    "configurations_table",
    "device_tables",
    "epoch_series",
    "throughput_energy",
    "time_breakdown",
    "warmup_comparison",
]

BREAKDOWN_PARTS = ("loader_start_s", "stall_s", "copy_s", "compute_s")
WARMUP_METRICS = ("epoch_time_s", "train_wall_s", "loader_start_s", "samples_per_s", "energy_j")


def _settings(row: pd.Series, keys: list[str]) -> str:
    """'num_workers=0 batch_size=16': the grid values of one configuration."""
    return " ".join(f"{k}={format_value(k, row.get(k))}" for k in keys)


def _label(row: pd.Series, keys: list[str]) -> str:
    settings = _settings(row, keys)
    config = format_value("config", row.get("config"))
    return f"{config}: {settings}" if settings else f"config {config}"


def config_labels(bench: Bench) -> dict[float, str]:
    """Configuration number -> '0: num_workers=0 batch_size=16'."""
    return {
        float(row["config"]): _label(row, bench.grid_keys)
        for _, row in bench.summary.iterrows()
        if pd.notna(row.get("config"))
    }


def bench_overview(bench: Bench) -> pd.DataFrame:
    """The title page as rows ``key, value`` (text)."""
    settings = bench.device.get("bench") or {}
    status = bench.summary.get("status", pd.Series(dtype=object)).fillna("unknown")
    counts = ", ".join(f"{n} {s}" for s, n in status.value_counts(sort=False).items())
    grid = settings.get("grid")
    if isinstance(grid, dict) and grid:
        grid_text = "; ".join(
            f"{k} = {', '.join(format_value(k, v) for v in (vs if isinstance(vs, list) else [vs]))}"
            for k, vs in grid.items()
        )
    else:
        grid_text = ", ".join(bench.grid_keys) or "(no grid: one configuration)"
    epochs = settings.get("epochs")
    if epochs is None and "measured_epochs" in bench.summary.columns:
        done = completed_configs(bench.summary)
        if not done.empty:
            epochs = int(done["measured_epochs"].max() + done["warmup_epochs"].max())
    rows = [
        ("directory", str(bench.path.resolve())),
        ("configurations", f"{len(bench.summary)} ({counts})" if len(status) else "0"),
        ("grid", grid_text),
        ("epochs per configuration", format_value("epochs", epochs)),
        (
            "warm-up epochs",
            f"{bench.warmup_epochs} (left out of means and std; shown apart)",
        ),
        ("energy source", energy_source_text(bench.energy_sources)),
    ]
    for key, label in (
        ("drop_cache", "page cache evicted before each configuration"),
        ("cache_method", "eviction method"),
        ("export", "in-memory data exported to files"),
        ("config", "base config"),
        ("started", "started"),
    ):
        if key in settings:
            rows.append((label, format_value(key, settings[key])))
    for note in settings.get("notes") or []:
        rows.append(("note", str(note)))
    return pd.DataFrame(rows, columns=["key", "value"])


def configurations_table(bench: Bench) -> pd.DataFrame:
    """Every configuration: ``config, settings, status, measured, warm-up, page cache, note``."""
    columns = ["config", "settings", "status", "measured_epochs", "warmup_epochs", "page_cache"]
    rows = []
    for _, row in bench.summary.iterrows():
        settings = _settings(row, bench.grid_keys)
        cache = str(row.get("cache_method") or "-") if pd.notna(row.get("cache_method")) else "-"
        before, after = row.get("resident_before_frac"), row.get("resident_after_frac")
        if pd.notna(before) or pd.notna(after):
            cache += f" resident {_pct(before)}→{_pct(after)}"
        rows.append(
            {
                "config": row.get("config"),
                "settings": settings or "(base)",
                "status": row.get("status"),
                "measured_epochs": row.get("measured_epochs"),
                "warmup_epochs": row.get("warmup_epochs"),
                "page_cache": cache,
                "note": row.get("note") if pd.notna(row.get("note")) else "",
            }
        )
    return pd.DataFrame(rows, columns=[*columns, "note"])


def _pct(value: Any) -> str:
    number = finite_number(value)
    return "?" if number is None else f"{100 * number:.0f}%"


def _get(row: pd.Series, column: str) -> float:
    number = finite_number(row.get(column))
    return np.nan if number is None else number


def time_breakdown(bench: Bench) -> pd.DataFrame:
    """Seconds per measured epoch of each part, per completed configuration.

    ``rest_s`` is the epoch time not in the parts (validation, bookkeeping), never
    negative. Parts missing from summary.csv count as 0.

    Returns:
        Columns ``config, label, loader_start_s, stall_s, copy_s, compute_s, rest_s,
        epoch_time_s``, their ``_std`` columns (no ``rest_s_std``) and ``stall_frac``.
    """
    parts = [*BREAKDOWN_PARTS, "epoch_time_s"]
    columns = [
        "config",
        "label",
        *BREAKDOWN_PARTS,
        "rest_s",
        "epoch_time_s",
        *[f"{p}_std" for p in parts],
        "stall_frac",
    ]
    rows = []
    for _, row in completed_configs(bench.summary).iterrows():
        record: dict[str, Any] = {
            "config": row.get("config"),
            "label": _label(row, bench.grid_keys),
        }
        for part in parts:
            mean = _get(row, f"{part}_mean")
            record[part] = 0.0 if np.isnan(mean) and part != "epoch_time_s" else mean
            record[f"{part}_std"] = _get(row, f"{part}_std")
        accounted = sum(record[p] for p in BREAKDOWN_PARTS)
        epoch = record["epoch_time_s"]
        record["rest_s"] = max(epoch - accounted, 0.0) if not np.isnan(epoch) else 0.0
        record["stall_frac"] = _get(row, "stall_frac")
        rows.append(record)
    return pd.DataFrame(rows, columns=columns)


def throughput_energy(bench: Bench) -> pd.DataFrame:
    """Throughput, energy per epoch and per sample, average power, per completed config.

    Energy per sample is each measured epoch's energy over its samples (epochs.csv), then
    mean and std over the epochs; without epochs.csv it is energy per epoch over
    throughput times epoch time.

    Returns:
        Columns ``config, label, samples_per_s, samples_per_s_std, samples_per_epoch,
        energy_j, energy_j_std, energy_per_sample_j, energy_per_sample_j_std,
        avg_power_w, energy_source``.
    """
    columns = [
        "config",
        "label",
        "samples_per_s",
        "samples_per_s_std",
        "samples_per_epoch",
        "energy_j",
        "energy_j_std",
        "energy_per_sample_j",
        "energy_per_sample_j_std",
        "avg_power_w",
        "energy_source",
    ]
    measured = _measured_epochs(bench)
    rows = []
    for _, row in completed_configs(bench.summary).iterrows():
        per_sample, per_sample_std, samples = np.nan, np.nan, np.nan
        epochs = measured[measured["config"] == row.get("config")] if not measured.empty else None
        if epochs is not None and {"energy_j", "samples"} <= set(epochs.columns):
            good = epochs[(epochs["samples"] > 0) & epochs["energy_j"].notna()]
            if not good.empty:
                values = good["energy_j"] / good["samples"]
                per_sample = float(values.mean())
                per_sample_std = float(values.std(ddof=1)) if len(values) > 1 else np.nan
                samples = float(good["samples"].mean())
        if np.isnan(per_sample):
            throughput, time_s = _get(row, "samples_per_s_mean"), _get(row, "epoch_time_s_mean")
            samples = throughput * time_s
            per_sample = _get(row, "energy_j_mean") / samples if samples > 0 else np.nan
        rows.append(
            {
                "config": row.get("config"),
                "label": _label(row, bench.grid_keys),
                "samples_per_s": _get(row, "samples_per_s_mean"),
                "samples_per_s_std": _get(row, "samples_per_s_std"),
                "samples_per_epoch": samples,
                "energy_j": _get(row, "energy_j_mean"),
                "energy_j_std": _get(row, "energy_j_std"),
                "energy_per_sample_j": per_sample,
                "energy_per_sample_j_std": per_sample_std,
                "avg_power_w": _get(row, "avg_power_w_mean"),
                "energy_source": row.get("energy_source"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _measured_epochs(bench: Bench) -> pd.DataFrame:
    epochs = bench.epochs
    if epochs.empty or "epoch" not in epochs.columns:
        return epochs
    return epochs[epochs["epoch"] > bench.warmup_epochs]


def warmup_comparison(bench: Bench) -> pd.DataFrame:
    """Warm-up against measured epochs, per completed configuration and metric.

    Returns:
        Columns ``config, label, metric, warmup, measured, measured_std, ratio``
        (``ratio`` = warm-up / measured mean).
    """
    columns = ["config", "label", "metric", "warmup", "measured", "measured_std", "ratio"]
    rows = []
    for _, row in completed_configs(bench.summary).iterrows():
        for metric in WARMUP_METRICS:
            warm, mean = _get(row, f"warmup_{metric}"), _get(row, f"{metric}_mean")
            if np.isnan(warm) and np.isnan(mean):
                continue
            rows.append(
                {
                    "config": row.get("config"),
                    "label": _label(row, bench.grid_keys),
                    "metric": metric,
                    "warmup": warm,
                    "measured": mean,
                    "measured_std": _get(row, f"{metric}_std"),
                    "ratio": warm / mean if mean and not np.isnan(mean) else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def epoch_series(bench: Bench) -> pd.DataFrame:
    """Per configuration and epoch: ``config, label, epoch, warmup`` and the epoch's costs."""
    wanted = ["epoch_time_s", "train_wall_s", "samples_per_s", "energy_j", "stall_s"]
    epochs = bench.epochs
    if epochs.empty or not {"config", "epoch"} <= set(epochs.columns):
        return pd.DataFrame(columns=["config", "label", "epoch", "warmup", *wanted])
    labels = config_labels(bench)
    table = epochs[["config", "epoch"]].copy()
    table.insert(1, "label", table["config"].map(labels).fillna(table["config"].astype(str)))
    table["warmup"] = table["epoch"] <= bench.warmup_epochs
    for column in wanted:
        table[column] = epochs[column] if column in epochs.columns else np.nan
    return table.reset_index(drop=True)


def batch_times(bench: Bench) -> pd.DataFrame:
    """Per minibatch of the measured epochs: ``config, label, epoch, batch, stall_s,
    copy_s, compute_s``."""
    columns = ["config", "label", "epoch", "batch", "stall_s", "copy_s", "compute_s"]
    batches = bench.batches
    if batches.empty or not {"config", "epoch"} <= set(batches.columns):
        return pd.DataFrame(columns=columns)
    measured = batches[batches["epoch"] > bench.warmup_epochs].copy()
    measured["label"] = measured["config"].map(config_labels(bench))
    for column in columns:
        if column not in measured.columns:
            measured[column] = np.nan
    return measured[columns].reset_index(drop=True)


def device_tables(bench: Bench) -> dict[str, pd.DataFrame]:
    """device.json as ``settings`` (key, value rows) and ``cpus`` (one row per CPU)."""
    device = {k: v for k, v in bench.device.items() if k != "bench"}
    cpu = dict(device.get("cpu") or {}) if isinstance(device.get("cpu"), dict) else {}
    cpus = cpu.pop("cpus", None)
    if "cpu" in device:
        device["cpu"] = cpu
    flat = flatten_mapping(device)
    settings = pd.DataFrame({"key": list(flat), "value": list(flat.values())})
    rows = [c for c in cpus or [] if isinstance(c, dict)]
    cpu_table = pd.DataFrame(rows)
    flat_bench = flatten_mapping(bench.device.get("bench") or {})
    bench_settings = pd.DataFrame({"key": list(flat_bench), "value": list(flat_bench.values())})
    return {"settings": settings, "cpus": cpu_table, "bench": bench_settings}
