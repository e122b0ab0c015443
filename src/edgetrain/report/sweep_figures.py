"""Drawing the sweep report: Pareto front, parameter importance, per-parameter distributions.

The sweep's metric is read from the tables' columns: validation accuracy (``val_acc``) or
any other (``val_rmse``), named and scaled by :mod:`edgetrain.report.labels`.

Each function takes a table from :mod:`edgetrain.report.sweep_stats` and returns a Figure,
or None when the table is empty. :func:`set_value_axis`, :func:`spans_decade` and
:func:`log_limits` live in :mod:`edgetrain.report.plotting` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from edgetrain.report.correlation import MIN_POINTS, correlation, correlation_text
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
    log_limits,
    new_figure,
    set_limits,
    set_value_axis,
    spans_decade,
)

__all__ = [
    "effects_figure",
    "importance_figure",
    "log_limits",
    "pareto_figure",
    "set_value_axis",
    "spans_decade",
]

_LABEL_POINTS = 40  # trials annotated with their number up to this many
_MIN_BOX = 5  # a value with fewer trials gets its points and median, not a box
_MAX_TICK_CHARS = 16


def _energy_label(sources: Sequence[str], what: str = "energy per trial") -> str:
    return f"{what} (J, estimated)" if is_estimated(sources) else f"{what} (J)"


_NOT_METRIC = frozenset({"number", "energy_j", "avg_power_w", "time_s", "on_front", "knee"})


def _metric_label(column: str, values: np.ndarray) -> str:
    """'val accuracy (fraction)', 'val accuracy (%)', 'val RMSE'."""
    return axis_label(column, finite_values(values))[1]


def _metric_column(points: pd.DataFrame) -> str:
    """The metric column of a table of trials (``val_acc`` when it has one)."""
    if "val_acc" in points.columns:
        return "val_acc"
    names = [c for c in points.columns if c not in _NOT_METRIC and not c.startswith("eff")]
    return next((c for c in names if c.startswith("val_")), "val_acc")


def _metric_word(column: str) -> str:
    """'accuracy' for val_acc, else the metric's name ('val RMSE')."""
    return "accuracy" if column == "val_acc" else pretty_name(column)


def pareto_figure(
    points: pd.DataFrame,
    title: str,
    sources: Sequence[str],
    metric: str | None = None,
    mode: str | None = None,
) -> Figure | None:
    """The metric (accuracy, RMSE, ...) against energy for every completed trial; the
    Pareto front and knee marked; n and Spearman r in the subtitle.

    Drawn only with :data:`~edgetrain.report.correlation.MIN_POINTS` completed trials
    (with fewer, the report lists the front as a table).

    Args:
        points: :func:`~edgetrain.report.sweep_stats.pareto_points`.
        title: The figure title's start.
        sources: The energy sources (an estimate is labelled).
        metric: The metric column (default: the table's ``val_`` column).
        mode: ``max`` or ``min``: said on the axis of a metric other than accuracy.
    """
    if len(points) < MIN_POINTS:
        return None
    metric = metric or _metric_column(points)
    word = _metric_word(metric)
    figure = new_figure(f"{title}: {word} vs energy, Pareto front")
    add_note(figure, "energy source: " + energy_source_text(sources))
    ax = figure.subplots()
    energy = points["energy_j"].to_numpy(dtype=float)
    accuracy = points[metric].to_numpy(dtype=float)
    front = points["on_front"].to_numpy(dtype=bool)
    knee = points["knee"].to_numpy(dtype=bool)
    ax.scatter(
        energy[~front],
        accuracy[~front],
        s=36,
        color="0.55",
        zorder=2,
        label="trial (dominated)",
    )
    if front.any():
        ax.plot(
            energy[front],
            accuracy[front],
            "-o",
            color="tab:blue",
            ms=7,
            lw=1.5,
            zorder=3,
            label="Pareto front (no trial is both "
            + ("more accurate" if metric == "val_acc" else "better")
            + " and cheaper)",
        )
    if knee.any():
        ax.scatter(
            energy[knee],
            accuracy[knee],
            marker="*",
            s=320,
            color="tab:red",
            edgecolor="black",
            zorder=4,
            label="knee of the front",
        )
    if len(points) <= _LABEL_POINTS:
        for number, x, y in zip(points["number"], energy, accuracy, strict=True):
            ax.annotate(
                f"{int(number)}", (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8
            )
    set_value_axis(ax, energy, axis="x")
    set_limits(ax, accuracy, floor=0.0)
    ax.set_xlabel(_energy_label(sources) + (", log scale" if spans_decade(energy) else ""))
    label = _metric_label(metric, accuracy)
    if mode is not None and not is_accuracy(metric):
        label += " (higher is better)" if mode == "max" else " (lower is better)"
    ax.set_ylabel(label)
    n, r = correlation(energy, accuracy, "spearman")
    ax.set_title(
        "each point is a completed trial, labelled with its number; "
        f"energy against {pretty_name(metric)}: {correlation_text(n, r, 'spearman')}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    # the front runs to the lower right when higher is better, to the upper right when lower is
    ax.legend(fontsize=9, loc="lower right" if is_accuracy(metric) else "best", framealpha=0.85)
    return figure


_TARGET_TITLES = {
    "energy": "what drives energy",
    "accuracy": "what drives accuracy",
    "efficiency": "what drives efficiency (acc/kJ)",
}


def importance_figure(
    bars: dict[str, pd.DataFrame], title: str, per_kj: str = "acc/kJ", trials: int | None = None
) -> Figure | None:
    """Per target: fANOVA importance and Kruskal-Wallis ε² of each parameter (0..1 bars).

    ``per_kj``: the unit of the efficiency target (the sweep's metric per kJ); ``trials``:
    how many completed trials the importance comes from (said in the title).
    """
    panels = {target: table for target, table in bars.items() if not table.empty}
    if not panels:
        return None
    over = f" (from n = {trials} completed trials)" if trials is not None else ""
    figure = new_figure(f"{title}: parameter importance{over}")
    add_note(
        figure,
        "fANOVA: share of the target's variance explained by the parameter; "
        "ε²: Kruskal-Wallis effect size of the parameter's groups (both 0..1)",
    )
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (target, table) in zip(axes, panels.items(), strict=True):
        table = table.iloc[::-1]  # most important at the top
        y = np.arange(len(table))
        fanova = table["fanova_importance"].to_numpy(dtype=float)
        epsilon = table["epsilon_sq"].to_numpy(dtype=float)
        ax.barh(y + 0.2, np.nan_to_num(fanova), height=0.4, color="tab:blue", label="fANOVA")
        ax.barh(y - 0.2, np.nan_to_num(epsilon), height=0.4, color="tab:orange", label="ε²")
        top = float(np.nanmax(np.concatenate([fanova, epsilon, [0.05]])))
        for position, value in zip(y, table["best_value"], strict=True):
            if pd.notna(value) and str(value) != "":
                text = str(value)
                number = pd.to_numeric(pd.Series([text]), errors="coerce").iloc[0]
                if pd.notna(number) and number != int(number):
                    text = f"{number:.4g}"
                text = text if len(text) <= 18 else text[:17] + "…"
                ax.annotate(
                    f"best: {text}",
                    (top * 1.04, position),
                    va="center",
                    fontsize=7,
                    color="0.3",
                )
        ax.set_yticks(y, labels=table["parameter"].astype(str).tolist(), fontsize=9)
        ax.set_xlim(0, top * 1.6)
        ax.set_ylim(-0.7, len(table) - 0.3)
        ax.set_xlabel("importance (0..1)")
        ax.set_title(_TARGET_TITLES.get(target, f"what drives {_metric_word(target)}"), fontsize=11)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return figure


def _tick_label(text: str) -> str:
    return text if len(text) <= _MAX_TICK_CHARS else text[: _MAX_TICK_CHARS - 1] + "…"


def _ranked_panel(ax: Axes, part: pd.DataFrame, column: str, what: str) -> None:
    """The trials of a numeric parameter ranked by ``column``, each labelled with its value
    (too few trials to draw the value against the quantity)."""
    ranked = part.sort_values(column, kind="stable")
    positions = np.arange(len(ranked))
    ax.scatter(positions, ranked[column], s=24, color="tab:gray", zorder=3)
    labels = [f"{x:.3g}" if np.isfinite(x) else "-" for x in ranked["x"].to_numpy(dtype=float)]
    ax.set_xticks(positions, labels=labels, rotation=35, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(ranked) - 0.4)
    ax.set_xlabel(f"value, trials ranked by {what}", fontsize=8)


def effects_figure(
    effects: pd.DataFrame, column: str, title: str, sources: Sequence[str]
) -> Figure | None:
    """One panel per parameter: the trials' energy or metric by the parameter's value.

    Categorical parameters get a box per value (a median line below five trials) with the
    trials as points (each value's count under it). Numeric ones get a scatter (log x when
    the values span more than 10x) with n and Spearman r from
    :data:`~edgetrain.report.correlation.MIN_POINTS` trials up, no line fitted; with fewer
    trials, no scatter: the trials ranked by the quantity, each labelled with its value.
    All panels share the y axis.
    """
    if effects.empty or column not in effects.columns or effects[column].notna().sum() == 0:
        return None
    known = effects[effects[column].notna()]
    few = [
        name
        for name, part in known.groupby("parameter", sort=False)
        if part["kind"].iloc[0] == "numeric" and part["x"].notna().sum() < MIN_POINTS
    ]
    params = list(dict.fromkeys(effects["parameter"]))
    count = len(params)
    columns = 5 if count > 8 else 4 if count > 6 else 3 if count > 4 else count
    rows = math.ceil(count / columns)
    energy = column == "energy_j"
    what = "energy" if energy else _metric_word(column)
    figure = new_figure(f"{title}: {what} of the trials by parameter value")
    if energy:
        add_note(figure, "energy source: " + energy_source_text(sources))
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    values = effects[column].to_numpy(dtype=float)
    for ax, name in zip(axes, params, strict=False):
        part = effects[(effects["parameter"] == name) & effects[column].notna()]
        if part.empty:
            ax.set_title(name, fontsize=10)
            continue
        title = name
        if name in few:
            _ranked_panel(ax, part, column, what)
            title = f"{name}\nn = {len(part)}: too few trials for a scatter"
        elif part["kind"].iloc[0] == "numeric":
            x = part["x"].to_numpy(dtype=float)
            ax.scatter(x, part[column], s=24, color="tab:blue", zorder=3)
            set_value_axis(ax, x, axis="x", floor=None)
            ax.tick_params(axis="x", labelsize=7)
            n, r = correlation(x, part[column].to_numpy(dtype=float), "spearman")
            title = f"{name}\n{correlation_text(n, r, 'spearman')}"
        else:
            groups = part.sort_values("order", kind="stable").groupby("value", sort=False)
            labels, data = [], []
            for value, group in groups:
                labels.append(f"{_tick_label(str(value))}\n(n={len(group)})")
                data.append(group[column].to_numpy(dtype=float))
            positions = np.arange(len(data))
            boxed = [i for i, points in enumerate(data) if len(points) >= _MIN_BOX]
            if boxed:
                ax.boxplot(
                    [data[i] for i in boxed],
                    positions=positions[boxed],
                    widths=0.55,
                    showfliers=False,
                    medianprops={"color": "tab:red"},
                )
            for i, points in enumerate(data):
                if i not in boxed and len(points):  # a few points: their median, no box
                    median = float(np.median(points))
                    ax.plot([i - 0.2, i + 0.2], [median, median], color="tab:red", lw=1.5)
            for position, points in zip(positions, data, strict=True):
                offsets = np.linspace(-0.12, 0.12, len(points)) if len(points) > 1 else [0.0]
                ax.scatter(position + np.asarray(offsets), points, s=16, color="tab:blue", zorder=3)
            tilt = sum(len(label.split("\n")[0]) for label in labels) > 22
            ax.set_xticks(
                positions,
                labels=labels,
                rotation=35 if tilt else 0,
                ha="right" if tilt else "center",
                fontsize=7,
            )
            ax.set_xlim(-0.6, len(data) - 0.4)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    for ax in axes[count:]:
        ax.set_visible(False)
    if energy:
        set_value_axis(axes[0], values, axis="y")
        label = _energy_label(sources) + (", log" if spans_decade(values) else "")
    else:
        set_limits(axes[0], values, floor=0.0)
        label = _metric_label(column, values)
    for row in range(rows):
        axes[row * columns].set_ylabel(label, fontsize=9)
    return figure
