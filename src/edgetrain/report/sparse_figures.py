"""Drawing the sparse-update comparison: the task's metric and costs against the budget.

Budgeted schemes are lines over the budgets (mean ± std over seeds); schemes without a
budget (full, last_k, bias_only) are horizontal lines with a ±std band, so that every
scheme can be read against the same axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from edgetrain.report.labels import (
    axis_label,
    energy_source_text,
    is_accuracy,
    is_estimated,
    pretty_name,
)
from edgetrain.report.plotting import (
    add_note,
    finite_values,
    new_figure,
    set_limits,
    set_value_axis,
    std_or_zero,
)
from edgetrain.report.sparse_budget import BudgetAxis, parse_budget

__all__ = ["accuracy_figure", "costs_figure"]

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _styles(results: pd.DataFrame) -> dict[str, tuple[str, str]]:
    schemes = list(dict.fromkeys(results["scheme"].astype(str)))
    return {
        s: (_COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]) for i, s in enumerate(schemes)
    }


def _accuracy_column(results: pd.DataFrame) -> str | None:
    """The metric drawn: the test metric (``test_acc``, ``test_rmse``), else the best
    validation metric, whichever has data."""
    names = [str(c).removesuffix("_mean") for c in results.columns if str(c).endswith("_mean")]
    tests = [c for c in names if c.startswith("test_")]
    best = [c for c in names if c.startswith("best_val_")]
    for metric in [*tests, *best]:
        if results[f"{metric}_mean"].notna().any():
            return metric
    return None


def _against_budget(
    ax: Axes,
    results: pd.DataFrame,
    metric: str,
    axis: BudgetAxis,
    scale: float,
    styles: dict[str, tuple[str, str]],
) -> np.ndarray:
    """Draw ``metric`` against the budget; returns every value drawn (scaled, with ±std)."""
    x = axis.positions(results)
    mean = results[f"{metric}_mean"].to_numpy(dtype=float) / scale
    std = std_or_zero(results, f"{metric}_std") / scale
    budgeted = np.isfinite(x)
    drawn = [mean - std, mean + std]
    for scheme, (color, marker) in styles.items():
        rows = (results["scheme"].astype(str) == scheme).to_numpy()
        if (rows & budgeted).any():
            index = np.flatnonzero(rows & budgeted)
            index = index[np.argsort(x[index], kind="stable")]
            ax.errorbar(
                x[index],
                mean[index],
                yerr=std[index],
                color=color,
                marker=marker,
                ms=6,
                capsize=4,
                lw=1.6,
                label=scheme,
            )
        for i in np.flatnonzero(rows & ~budgeted):
            if not np.isfinite(mean[i]):
                continue
            ax.axhline(mean[i], color=color, ls="--", lw=1.4, label=f"{scheme} (no budget)")
            if std[i] > 0:
                ax.axhspan(mean[i] - std[i], mean[i] + std[i], color=color, alpha=0.12, lw=0)
    if axis.kind == "category":
        ax.set_xticks(range(len(axis.order)), labels=list(axis.order))
        ax.set_xlim(-0.5, len(axis.order) - 0.5)
    elif budgeted.any():
        set_value_axis(ax, x[budgeted], axis="x")
    ax.set_xlabel(axis.label)
    ax.grid(True, which="both", alpha=0.3)
    return np.concatenate(drawn)


def accuracy_figure(
    results: pd.DataFrame, runs: pd.DataFrame, axis: BudgetAxis, title: str, mode: str = "max"
) -> Figure | None:
    """The task's test metric (accuracy, RMSE, ...) against the budget, and against the
    share of parameters updated (``mode``: whether higher or lower is better)."""
    metric = _accuracy_column(results)
    if results.empty or metric is None:
        return None
    styles = _styles(results)
    what = pretty_name(metric)
    figure = new_figure(f"{title}: {what} against the update budget")
    add_note(figure, "mean ± std over seeds; dashed lines and bands: schemes without a budget")
    frac = "trainable_frac_mean" in results.columns and results["trainable_frac_mean"].notna().any()
    axes = figure.subplots(1, 2 if frac else 1, squeeze=False)[0]
    values = _against_budget(axes[0], results, metric, axis, 1.0, styles)
    if not runs.empty and {metric, "scheme"} <= set(runs.columns) and axis.kind != "category":
        budget = np.array([parse_budget(b)[0] for b in runs.get("budget", [])], dtype=float)
        for scheme, (color, _) in styles.items():
            rows = (runs["scheme"].astype(str) == scheme).to_numpy() & np.isfinite(budget)
            axes[0].scatter(
                budget[rows] / axis.scale,
                runs.loc[rows, metric],
                s=12,
                color=color,
                alpha=0.45,
                zorder=1,
            )
        values = np.concatenate([values, runs[metric].to_numpy(dtype=float)])
    set_limits(axes[0], values, floor=0.0)
    _, label = axis_label(metric, values)
    if not is_accuracy(metric):
        label += " (higher is better)" if mode == "max" else " (lower is better)"
    axes[0].set_ylabel(label)
    axes[0].set_title(f"{what} by budget (small dots: single runs)", fontsize=11)
    axes[0].legend(
        fontsize=8, loc="lower right" if mode == "max" else "upper right", framealpha=0.85
    )
    if frac:
        ax = axes[1]
        x = results["trainable_frac_mean"].to_numpy(dtype=float)
        y = results[f"{metric}_mean"].to_numpy(dtype=float)
        xerr, yerr = (
            std_or_zero(results, "trainable_frac_std"),
            std_or_zero(results, f"{metric}_std"),
        )
        for scheme, (color, marker) in styles.items():
            rows = (results["scheme"].astype(str) == scheme).to_numpy()
            ax.errorbar(
                x[rows],
                y[rows],
                xerr=xerr[rows],
                yerr=yerr[rows],
                fmt=marker,
                color=color,
                ms=7,
                capsize=3,
                label=scheme,
            )
        set_limits(ax, np.concatenate([y - yerr, y + yerr]), floor=0.0)
        low = float(np.nanmin(x - xerr)) if np.isfinite(x).any() else 0.0
        ax.set_xlim(min(0.0, low) - 0.03, max(1.0, float(np.nanmax(x + xerr))) + 0.03)
        ax.set_xlabel("parameters updated per step (fraction of all, 0..1)")
        ax.set_ylabel(label)
        ax.set_title(f"{what} by what was actually updated", fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(
            fontsize=8, loc="lower right" if mode == "max" else "upper right", framealpha=0.85
        )
    return figure


def costs_figure(
    results: pd.DataFrame, axis: BudgetAxis, title: str, sources: Sequence[str]
) -> Figure | None:
    """Peak training memory, step time, training time and energy against the budget."""
    panels = [
        m
        for m in ("peak_train_bytes", "step_time_s", "train_time_s", "energy_j")
        if f"{m}_mean" in results.columns and results[f"{m}_mean"].notna().any()
    ]
    if results.empty or not panels:
        return None
    styles = _styles(results)
    estimated = is_estimated(sources)
    figure = new_figure(f"{title}: memory, time and energy against the update budget")
    note = "mean ± std over seeds; dashed lines and bands: schemes without a budget"
    if "energy_j" in panels:
        note += "; energy source: " + energy_source_text(sources)
    add_note(figure, note)
    columns = 2 if len(panels) > 1 else 1
    rows = int(np.ceil(len(panels) / columns))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, panels, strict=False):
        means = results[f"{metric}_mean"].to_numpy(dtype=float)
        if metric == "peak_train_bytes":
            scale, label = axis_label(metric, finite_values(means))
            label = label.replace("peak train", "peak training memory")
            name = "peak training memory"
        elif metric == "step_time_s":
            scale, label, name = 1e-3, "step compute time (ms)", "training step (median)"
        elif metric == "train_time_s":
            scale, label, name = 1.0, "training time per run (s)", "training time"
        else:
            scale = 1.0
            label = "energy per run (J, estimated)" if estimated else "energy per run (J)"
            name = "energy per run" + (" (estimate)" if estimated else "")
        values = _against_budget(ax, results, metric, axis, scale, styles)
        set_limits(ax, values, floor=0.0)
        ax.set_ylabel(label)
        ax.set_title(name, fontsize=11)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for all panels, beside them
        figure.legend(handles, labels, fontsize=8, loc="outside right upper", frameon=False)
    return figure
