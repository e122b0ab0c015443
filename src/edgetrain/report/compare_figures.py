"""Drawing the comparison of several runs: overlaid per-epoch curves and totals per run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgetrain.report.labels import axis_label, is_accuracy, pretty_name
from edgetrain.report.plotting import (
    add_legend,
    add_note,
    epoch_axis,
    new_figure,
    set_limits,
    set_unit_ylim,
)

__all__ = ["is_fraction", "overlay_figure", "totals_figure"]

_RUN_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "P")]


def overlay_figure(
    curves: pd.DataFrame,
    columns: Sequence[str],
    title: str,
    notes: dict[str, str] | None = None,
) -> Figure | None:
    """Several runs on shared axes: one panel per column, one line per run.

    Args:
        curves: Long table with ``run``, ``epoch`` and the columns.
        columns: The quantities to draw (panels without data are left out).
        title: Figure title.
        notes: Text added to a panel's title, by column (e.g. which runs are estimates).
    """
    notes = notes or {}
    present = [c for c in columns if c in curves.columns and curves[c].notna().any()]
    if curves.empty or not present:
        return None
    figure = new_figure(title)
    if len(present) <= 3:
        axes = list(figure.subplots(1, len(present), squeeze=False)[0])
    else:
        axes = list(figure.subplots(2, math.ceil(len(present) / 2), squeeze=False).ravel())
        for ax in axes[len(present) :]:
            ax.set_visible(False)
    for ax, column in zip(axes, present, strict=False):
        values = curves[column].to_numpy(dtype=float)
        scale, label = axis_label(column, values)
        for number, (run, rows) in enumerate(curves.groupby("run", sort=False)):
            line, marker = _RUN_STYLES[number % len(_RUN_STYLES)]
            ax.plot(
                rows["epoch"],
                rows[column].to_numpy(dtype=float) / scale,
                ls=line,
                marker=marker,
                ms=5,
                lw=1.5,
                alpha=0.85,
                label=str(run),
            )
        if is_fraction(column):
            set_unit_ylim(ax, values / scale)
        else:
            floor = 0.0 if column.endswith(("_j", "_s", "_bytes")) else None
            set_limits(ax, values / scale, floor=floor)
        ax.set_ylabel(label)
        note = notes.get(column)
        ax.set_title(label.split(" (")[0] + (f"\n({note})" if note else ""), fontsize=11)
        epoch_axis(ax)
        add_legend(ax)
    return figure


def is_fraction(column: str) -> bool:
    """Whether a column is an accuracy or a fraction (never negative)."""
    return is_accuracy(column) or column.endswith(("_frac", "sparsity"))


def totals_figure(
    totals: pd.DataFrame, title: str, metric: str = "val_acc", mode: str = "max"
) -> Figure | None:
    """One bar per run: total energy (hatched when estimated), wall time, and the best value
    of the runs' metric (``metric``, better when ``mode`` is max or min); the best run of
    each panel is outlined and labelled 'best'."""
    best = f"best_{metric}"
    best_label = pretty_name(best)
    if not is_accuracy(metric):
        best_label += " (highest)" if mode == "max" else " (lowest)"
    panels = [
        (column, label)
        for column, label in (
            ("total_energy_j", "total energy (J)"),
            ("wall_time_s", "wall time (s)"),
            (best, best_label),
        )
        if column in totals.columns and totals[column].notna().any()
    ]
    if totals.empty or not panels:
        return None
    figure = new_figure(title)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    runs = totals["run"].astype(str).tolist()
    sources = totals.get("energy_source", pd.Series([None] * len(totals)))
    estimated = [str(s).startswith("estimated") for s in sources]
    if any(estimated):
        add_note(
            figure,
            "hatched bars: estimated energy ("
            + ", ".join(
                f"{run}: {source}"
                for run, source, est in zip(runs, sources, estimated, strict=True)
                if est
            )
            + ")",
        )
    for ax, (column, label) in zip(axes, panels, strict=True):
        values = totals[column].to_numpy(dtype=float)
        fraction = column == best and is_accuracy(metric)
        if fraction:
            label += " (%)" if np.nanmax(values) > 1 else " (fraction)"
        bars = ax.bar(range(len(runs)), np.nan_to_num(values), color="tab:blue", width=0.6)
        if column == "total_energy_j":
            for bar, est in zip(bars, estimated, strict=True):
                if est:
                    bar.set_hatch("//")
                    bar.set_facecolor("tab:orange")
        finite = np.isfinite(values)
        best_at = None
        if finite.sum() > 1:
            higher = column == best and mode == "max"
            best_at = int(np.nanargmax(values) if higher else np.nanargmin(values))
            bars[best_at].set_edgecolor("black")
            bars[best_at].set_linewidth(2.0)
        for x, value in enumerate(values):
            if np.isfinite(value):
                text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
                text = f"best: {text}" if x == best_at else text
                ax.annotate(
                    text,
                    (x, value),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        tilt = len(runs) > 3 or max(map(len, runs)) > 14
        ax.set_xticks(
            range(len(runs)),
            labels=runs,
            rotation=30 if tilt else 0,
            ha="right" if tilt else "center",
        )
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0])
        if fraction:
            set_unit_ylim(ax, values)
        elif column == best and np.nanmin(values) < 0:
            set_limits(ax, np.append(values, 0.0))  # R² below zero
        else:
            set_limits(ax, np.append(values * 1.05, 0.0), floor=0.0)
        ax.grid(True, axis="y", alpha=0.3)
    return figure
