"""The per-epoch and over-time tables of a run: curves, energy, resources, controller.

Each function takes a :class:`~edgetrain.report.rundir.Run` and returns a DataFrame
(empty when the run has no such data), so tests check the data and figures only draw.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from edgetrain.report.features import controller_decisions
from edgetrain.report.labels import format_value, is_performance, unit_of
from edgetrain.report.rundir import Run

__all__ = [
    "activation_table",
    "adapt_memory",
    "controller_table",
    "correlation_matrix",
    "curve_columns",
    "decisions_table",
    "downsample",
    "energy_per_epoch",
    "epoch_boundaries",
    "epoch_numeric_table",
    "metrics_table",
    "resource_summary",
    "resource_usage",
    "strongest_pairs",
    "training_curves",
]

#: The curves of a classification run; any run's are :func:`curve_columns`.
CURVE_COLUMNS = ("train_loss", "val_loss", "train_acc", "val_acc", "lr")
CONTROL_COLUMNS = ("batch_size", "micro_batch_size", "accum_steps", "lr")
SCORE_COLUMNS = ("memory_score", "accuracy_score", "priority_batch_size", "priority_learning_rate")
ACTIVATION_COLUMNS = ("activation_bytes", "trainable_frac", "param_sparsity")
# Cumulative counters and time stamps are not per-epoch quantities.
_NOT_PER_EPOCH = frozenset({"t_s", "epoch", "energy_j"})


def _present(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> list[str]:
    """The columns of ``columns`` that exist in ``frame`` and hold at least one value."""
    return [c for c in columns if c in frame.columns and frame[c].notna().any()]


def _numeric_columns(frame: pd.DataFrame) -> list[str]:
    return [
        c
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()
    ]


def downsample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """Every k-th row so that at most ``max_rows`` remain (the last row is always kept)."""
    if max_rows <= 0 or len(frame) <= max_rows:
        return frame
    step = math.ceil(len(frame) / max_rows)
    keep = np.arange(0, len(frame), step)
    if keep[-1] != len(frame) - 1:
        keep = np.append(keep[: max_rows - 1], len(frame) - 1)
    return frame.iloc[keep].reset_index(drop=True)


def metrics_table(run: Run) -> pd.DataFrame:
    """The per-epoch metrics without the columns of features that were off."""
    metrics = run.metrics
    return metrics[["epoch", *_present(metrics, [c for c in metrics.columns if c != "epoch"])]]


def curve_columns(run: Run) -> list[str]:
    """The learning-curve columns of a run: losses, its task's metrics (train before val,
    ``train_acc, val_acc`` for classification), then the learning rate."""
    quality = run.quality_columns
    ordered = [c for c in quality if c.startswith("train_")] + [
        c for c in quality if c.startswith("val_")
    ]
    return ["train_loss", "val_loss", *ordered, "lr"]


def training_curves(run: Run) -> pd.DataFrame:
    """Per epoch: losses, the task's metrics and learning rate (columns with data only)."""
    columns = _present(run.metrics, curve_columns(run))
    if not columns:
        return pd.DataFrame(columns=["epoch"])
    return run.metrics[["epoch", *columns]].reset_index(drop=True)


def resource_usage(run: Run, max_rows: int | None = None) -> pd.DataFrame:
    """Monitor samples over time: ``t_s``, ``epoch`` and every numeric column with data.

    Args:
        run: The run.
        max_rows: Keep at most this many rows (every k-th sample); None keeps all.
    """
    resources = run.resources
    if "t_s" not in resources.columns or resources["t_s"].notna().sum() == 0:
        return pd.DataFrame(columns=["t_s", "epoch"])
    resources = resources[resources["t_s"].notna()]
    others = [c for c in _numeric_columns(resources) if c not in ("t_s", "epoch")]
    table = resources[["t_s", "epoch", *others]].reset_index(drop=True)
    return downsample(table, max_rows) if max_rows else table


def epoch_boundaries(run: Run) -> pd.DataFrame:
    """The time each epoch starts: the first monitor sample tagged with that epoch.

    Returns:
        Columns ``epoch`` and ``start_t_s``, in the order the epochs were sampled.
    """
    resources = run.resources
    if not {"t_s", "epoch"} <= set(resources.columns):
        return pd.DataFrame({"epoch": pd.Series(dtype=float), "start_t_s": pd.Series(dtype=float)})
    tagged = resources[resources["epoch"].notna() & resources["t_s"].notna()]
    firsts = tagged.drop_duplicates("epoch", keep="first")
    return pd.DataFrame(
        {"epoch": firsts["epoch"].to_numpy(), "start_t_s": firsts["t_s"].to_numpy()}
    )


def _energy_from_resources(run: Run) -> pd.Series:
    """Per-epoch energy from the cumulative ``energy_j`` counter in resources.csv."""
    resources = run.resources
    if not {"epoch", "energy_j"} <= set(resources.columns):
        return pd.Series(dtype=float)
    tagged = resources[resources["epoch"].notna() & resources["energy_j"].notna()]
    if tagged.empty:
        return pd.Series(dtype=float)
    ends = tagged.groupby("epoch", sort=False)["energy_j"].last()
    start = float(tagged["energy_j"].iloc[0])
    previous = np.concatenate([[start], ends.to_numpy()[:-1]])
    return pd.Series(ends.to_numpy() - previous, index=ends.index)


def energy_per_epoch(run: Run) -> pd.DataFrame:
    """Time and energy of each epoch, with energy per sample when samples are known.

    Energy comes from metrics.csv; when that column is empty it is taken from the
    cumulative counter in resources.csv. Samples per epoch are ``samples_per_s * time_s``.

    Returns:
        Columns ``epoch, time_s, energy_j, energy_source, avg_power_w, samples_per_s,
        samples, energy_per_sample_j`` (those with data), or an empty table.
    """
    metrics = run.metrics
    if metrics.empty:
        return pd.DataFrame(columns=["epoch"])
    table = metrics[["epoch"]].copy()
    for name in ("time_s", "energy_j", "energy_source", "avg_power_w", "samples_per_s"):
        table[name] = metrics[name] if name in metrics.columns else np.nan
    if table["energy_j"].isna().all():
        from_resources = _energy_from_resources(run)
        if not from_resources.empty:
            table["energy_j"] = table["epoch"].map(from_resources)
            source = run.summary.get("energy_source") or "unknown"
            table["energy_source"] = f"{source} (resources.csv)"
    if table["avg_power_w"].isna().all() and table["energy_j"].notna().any():
        table["avg_power_w"] = table["energy_j"] / table["time_s"]
    table["samples"] = (table["samples_per_s"] * table["time_s"]).round()
    table["energy_per_sample_j"] = table["energy_j"] / table["samples"].where(table["samples"] > 0)
    columns = _present(table, list(table.columns))
    if not {"time_s", "energy_j"} & set(columns):
        return pd.DataFrame(columns=["epoch"])
    return table[columns].reset_index(drop=True)


def decisions_table(run: Run) -> pd.DataFrame:
    """The controller's decisions (empty when the run did not adapt)."""
    return run.decisions.reset_index(drop=True)


def _changes(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decisions that changed a parameter."""
    if decisions.empty or "parameter" not in decisions.columns:
        return decisions.iloc[0:0]
    changed = decisions["parameter"].notna()
    if {"old", "new"} <= set(decisions.columns):
        changed &= decisions["old"].astype(str) != decisions["new"].astype(str)
    return decisions[changed]


def controller_table(run: Run) -> pd.DataFrame:
    """Per epoch: scores, priorities, batch size, micro-batch, accumulation, lr and changes.

    Pruning's decisions are not the controller's and are left out. Scores and priorities are the last decision of the epoch; ``changes`` counts the
    parameter changes and ``decisions`` spells them out ("batch_size 64→32").

    Returns:
        The table, or an empty one when the run has no decisions and a fixed batch size.
    """
    metrics, decisions = run.metrics, controller_decisions(run)
    varies = any(
        metrics[c].dropna().nunique() > 1 for c in ("batch_size", "micro_batch_size", "accum_steps")
    )
    if decisions.empty and not varies:
        return pd.DataFrame(columns=["epoch"])
    table = metrics[["epoch", *_present(metrics, CONTROL_COLUMNS)]].set_index("epoch")
    if not decisions.empty and decisions["epoch"].notna().any():
        by_epoch = decisions[decisions["epoch"].notna()].groupby("epoch")
        scores = by_epoch[[c for c in SCORE_COLUMNS if c in decisions.columns]].last()
        table = table.join(scores, how="outer")
        texts: dict[float, list[str]] = {}
        for row in _changes(decisions).itertuples(index=False):
            old, new = getattr(row, "old", None), getattr(row, "new", None)
            change = f"{row.parameter} {format_value('', old)}→{format_value('', new)}"
            texts.setdefault(row.epoch, []).append(change)
        table["changes"] = [len(texts.get(epoch, [])) for epoch in table.index]
        table["decisions"] = ["; ".join(texts.get(epoch, [])) for epoch in table.index]
    table = table.reset_index()
    return table[["epoch", *_present(table, [c for c in table.columns if c != "epoch"])]]


def epoch_numeric_table(run: Run) -> pd.DataFrame:
    """Per-epoch numbers: every numeric metrics column plus resource means (peaks for bytes).

    Resource columns are named ``mean_<column>`` or, for bytes, ``max_<column>``.
    """
    metrics = run.metrics
    if metrics.empty:
        return pd.DataFrame(columns=["epoch"])
    numeric = [c for c in _numeric_columns(metrics) if c != "epoch"]
    table = metrics[["epoch", *numeric]].set_index("epoch")
    resources = run.resources
    if "epoch" in resources.columns and resources["epoch"].notna().any():
        tagged = resources[resources["epoch"].notna()]
        for name in _numeric_columns(tagged):
            if name in _NOT_PER_EPOCH:
                continue
            grouped = tagged.groupby("epoch")[name]
            if name.endswith("_bytes"):
                table[f"max_{name}"] = grouped.max().reindex(table.index)
            else:
                table[f"mean_{name}"] = grouped.mean().reindex(table.index)
    return table.reset_index()


def correlation_matrix(run: Run, min_epochs: int = 3) -> pd.DataFrame:
    """Pearson correlation between per-epoch quantities.

    Constant and nearly empty columns (fewer than ``min_epochs`` values) are dropped, and
    so is ``epoch`` itself. Empty when fewer than two columns remain.
    """
    table = epoch_numeric_table(run).drop(columns="epoch")
    keep = [
        c
        for c in table.columns
        if table[c].notna().sum() >= min_epochs and table[c].dropna().nunique() > 1
    ]
    if len(keep) < 2:
        return pd.DataFrame()
    return table[keep].corr(min_periods=min_epochs)


def strongest_pairs(corr: pd.DataFrame, n: int | None = 10) -> pd.DataFrame:
    """The ``n`` strongest correlations between a cost column and a performance column.

    Performance columns are losses and the task's metrics (accuracy, RMSE, perplexity...);
    every other column (time, energy, memory, throughput, knobs) is a cost.

    Returns:
        Columns ``cost, performance, r, abs_r``, strongest first (all pairs if n is None).
    """
    columns = ["cost", "performance", "r", "abs_r"]
    if corr.empty:
        return pd.DataFrame(columns=columns)
    performance = [c for c in corr.columns if is_performance(c)]
    costs = [c for c in corr.columns if not is_performance(c)]
    rows = [
        (cost, perf, float(corr.loc[cost, perf]), abs(float(corr.loc[cost, perf])))
        for cost in costs
        for perf in performance
        if pd.notna(corr.loc[cost, perf])
    ]
    pairs = pd.DataFrame(rows, columns=columns)
    pairs = pairs.sort_values("abs_r", ascending=False, kind="stable")
    return (pairs if n is None else pairs.head(n)).reset_index(drop=True)


def resource_summary(run: Run) -> pd.DataFrame:
    """Min, mean and max of each monitored quantity (cumulative counters excluded)."""
    usage = resource_usage(run)
    rows = []
    for name in usage.columns:
        if name in _NOT_PER_EPOCH:
            continue
        values = usage[name].dropna()
        rows.append(
            {
                "column": name,
                "unit": unit_of(name, values)[1] if not name.endswith("_bytes") else "bytes",
                "samples": len(values),
                "min": values.min(),
                "mean": values.mean(),
                "max": values.max(),
            }
        )
    return pd.DataFrame(rows, columns=["column", "unit", "samples", "min", "mean", "max"])


def activation_table(run: Run) -> pd.DataFrame:
    """Per epoch: activation memory, trainable fraction and parameter sparsity (when present)."""
    columns = _present(run.metrics, ACTIVATION_COLUMNS)
    if not columns:
        return pd.DataFrame(columns=["epoch"])
    return run.metrics[["epoch", *columns]].reset_index(drop=True)


ADAPT_MEMORY_COLUMNS = (
    "budget_bytes",
    "peak_bytes",
    "train_peak_bytes",
    "predicted_peak_bytes",
    "micro_batch_size",
    "accum_steps",
)


def adapt_memory(run: Run) -> pd.DataFrame:
    """Per epoch: the memory budget, the measured peaks, the controller's prediction and the
    micro-batch (adapt.csv, its last row of each epoch).

    Returns:
        Columns ``epoch`` and those of ``budget_bytes, peak_bytes, train_peak_bytes,
        predicted_peak_bytes, micro_batch_size, accum_steps`` with data; empty without
        adapt.csv.
    """
    adapt = run.adapt
    if adapt.empty or "epoch" not in adapt.columns or not adapt["epoch"].notna().any():
        return pd.DataFrame(columns=["epoch"])
    rows = adapt[adapt["epoch"].notna()].drop_duplicates("epoch", keep="last")
    columns = _present(rows, ADAPT_MEMORY_COLUMNS)
    table = rows[["epoch", *columns]].sort_values("epoch", kind="stable")
    return table.reset_index(drop=True)
