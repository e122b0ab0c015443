"""Drawing the run report: one function per figure, each taking the tables from :mod:`.tables`.

A function returns None when its data are absent, so no empty plot is made. Every axis
names its unit. The helpers that all figure modules share are in :mod:`.plotting`; the
comparison of several runs is drawn by :mod:`.compare_figures` (re-exported here).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edgetrain.report.compare_figures import is_fraction, overlay_figure, totals_figure
from edgetrain.report.correlation import MIN_POINTS, correlation_text
from edgetrain.report.labels import (
    axis_label,
    bytes_unit,
    energy_sources_in,
    is_accuracy,
    metric_name,
    metric_of,
    pretty_name,
    time_unit,
)
from edgetrain.report.plotting import (
    PAGE_SIZE,
    add_legend,
    add_note,
    epoch_axis,
    finite_values,
    new_figure,
    set_limits,
    set_unit_ylim,
)

__all__ = [
    "PAGE_SIZE",
    "activation_figure",
    "controller_figure",
    "correlation_figure",
    "energy_figure",
    "is_fraction",
    "metric_panels",
    "overlay_figure",
    "pairs_figure",
    "prune_figure",
    "resources_figure",
    "totals_figure",
    "training_curves_figure",
]

logger = logging.getLogger(__name__)

_SERIES_STYLE = {"train": "-", "val": "--"}
_DECISION_COLOR = "tab:red"


def _outside_legend(ax: Axes) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _lr_axis(ax: Axes, values: np.ndarray) -> None:
    """A learning-rate axis: log scale when the rate spans more than a decade, else from 0."""
    finite = finite_values(values)
    if finite.size and finite.min() > 0 and np.ptp(np.log10(finite)) > 1:
        ax.set_yscale("log")
    else:
        set_limits(ax, np.append(values, 0.0), floor=0.0)


def metric_panels(curves: pd.DataFrame) -> list[list[str]]:
    """The curve columns grouped into panels: losses, then one panel per metric (its train
    and val columns together), then the learning rate when it changes."""
    losses = [c for c in ("train_loss", "val_loss") if c in curves.columns]
    groups: dict[str, list[str]] = {}
    for column in curves.columns:
        parts = metric_of(column)
        if parts is None or parts[2] == "loss" or parts[0]:
            continue
        groups.setdefault(parts[2], []).append(column)
    show_lr = "lr" in curves.columns and curves["lr"].dropna().nunique() > 1
    return [g for g in (losses, *groups.values(), ["lr"] if show_lr else []) if g]


def _metric_ylabel(column: str, values: np.ndarray) -> str:
    """'accuracy (fraction)', 'accuracy (%)', 'RMSE', 'perplexity': a metric panel's label."""
    parts = metric_of(column)
    name = metric_name(parts[2]) if parts is not None else pretty_name(column)
    if is_accuracy(column):
        return f"{name} (%)" if finite_values(values).max(initial=0) > 1 else f"{name} (fraction)"
    return name


def training_curves_figure(curves: pd.DataFrame, title: str) -> Figure | None:
    """Loss and the task's metrics per epoch (train solid, val dashed), one panel per
    metric (accuracy, RMSE, perplexity, ...); lr when it changes."""
    panels = metric_panels(curves)
    if curves.empty or not [p for p in panels if p != ["lr"]]:
        return None
    figure = new_figure(f"{title}: training curves")
    if len(panels) <= 3:
        ratios = [1.0 if group == ["lr"] else 2.0 for group in panels]
        axes = list(figure.subplots(1, len(panels), squeeze=False, width_ratios=ratios)[0])
    else:
        columns = math.ceil(len(panels) / 2)
        axes = list(figure.subplots(2, columns, squeeze=False).ravel())
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
    for ax, columns in zip(axes, panels, strict=False):
        drawn = []
        for column in columns:
            values = curves[column].to_numpy(dtype=float)
            style = _SERIES_STYLE.get(column.split("_")[0], "-")
            ax.plot(curves["epoch"], values, style, marker="o", ms=4, label=pretty_name(column))
            drawn.append(values)
        values = np.concatenate(drawn)
        if columns == ["lr"]:
            _lr_axis(ax, values)
            label = "learning rate"
        elif all(c.endswith("_loss") for c in columns):
            set_limits(ax, values, floor=0.0)
            label = "loss"
        elif is_accuracy(columns[0]):
            set_unit_ylim(ax, values)
            label = _metric_ylabel(columns[0], values)
        else:
            set_limits(ax, values, floor=0.0 if finite_values(values).min(initial=0) >= 0 else None)
            label = _metric_ylabel(columns[0], values)
        ax.set_ylabel(label)
        epoch_axis(ax)
        add_legend(ax)
    return figure


def _resource_groups(usage: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Panels of the resources figure: utilisation, memory, power (by unit suffix)."""
    columns = [c for c in usage.columns if c not in ("t_s", "epoch")]
    groups = [
        ("utilisation", [c for c in columns if c.endswith("_pct")]),
        ("memory", [c for c in columns if c.endswith("_bytes")]),
        ("power", [c for c in columns if c.endswith("_w")]),
    ]
    if not groups[2][1] and "energy_j" in columns:
        groups.append(("energy", ["energy_j"]))
    skipped = [c for c in columns if not any(c in group for _, group in groups)]
    if skipped:
        logger.debug("resources figure: no panel for columns %s", skipped)
    return [(name, group) for name, group in groups if group]


def resources_figure(usage: pd.DataFrame, boundaries: pd.DataFrame, title: str) -> Figure | None:
    """CPU/GPU utilisation, memory and power over time, with a line where each epoch starts."""
    groups = _resource_groups(usage)
    if usage.empty or not groups:
        return None
    divisor, unit = time_unit(float(usage["t_s"].max()))
    time = usage["t_s"].to_numpy(dtype=float) / divisor
    figure = new_figure(f"{title}: resources over time")
    axes = figure.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, columns) in zip(axes, groups, strict=True):
        data = usage[columns].to_numpy(dtype=float)
        scale, label = axis_label(columns[0], data.ravel())
        if name == "memory":
            label = f"memory ({label.rsplit('(', 1)[1]}"
        elif name == "utilisation":
            label = "utilisation (%)"
        elif name == "power":
            label = "power (W)"
        for column in columns:
            ax.plot(
                time, usage[column].to_numpy(dtype=float) / scale, lw=1.2, label=pretty_name(column)
            )
        set_limits(ax, data.ravel() / scale, floor=0.0)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        for start in boundaries["start_t_s"]:
            ax.axvline(start / divisor, color="0.45", ls=":", lw=1)
        _outside_legend(ax)
    axes[-1].set_xlabel(f"time since start ({unit})")
    axes[0].set_xlim(time.min(), time.max() if time.max() > time.min() else time.min() + 1)
    if not boundaries.empty:
        top = axes[0].secondary_xaxis("top")
        every = max(1, math.ceil(len(boundaries) / 25))
        shown = boundaries.iloc[::every]
        top.set_xticks(
            (shown["start_t_s"] / divisor).tolist(),
            labels=[f"{int(e)}" for e in shown["epoch"]],
            fontsize=8,
        )
        top.set_xlabel("epoch starts (dotted lines)", fontsize=9)
    return figure


def energy_figure(energy: pd.DataFrame, title: str) -> Figure | None:
    """Bars per epoch: energy (J), time (s) and energy per sample (mJ) when known.

    Estimated energy (source ``estimated:...``) is labelled as such on every axis.
    """
    panels = [c for c in ("energy_j", "time_s", "energy_per_sample_j") if c in energy.columns]
    if energy.empty or not panels:
        return None
    sources = energy_sources_in(energy)
    estimated = any(s.startswith("estimated") for s in sources)
    figure = new_figure(f"{title}: energy and time per epoch")
    if sources:
        add_note(figure, "energy source: " + ", ".join(sources))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    styles = {
        "energy_j": ("energy", "J", 1.0, "tab:orange"),
        "time_s": ("time", "s", 1.0, "tab:blue"),
        "energy_per_sample_j": ("energy per sample", "mJ", 1000.0, "tab:green"),
    }
    for ax, column in zip(axes, panels, strict=True):
        name, unit, factor, color = styles[column]
        is_estimate = estimated and column != "time_s"
        values = energy[column].to_numpy(dtype=float) * factor
        ax.bar(energy["epoch"], values, color=color, width=0.7, hatch="//" if is_estimate else None)
        ax.set_ylabel(f"{name} ({unit}, estimated)" if is_estimate else f"{name} ({unit})")
        ax.set_title(f"{name} (estimate)" if is_estimate else name)
        set_limits(ax, np.append(values, 0.0), floor=0.0)
        epoch_axis(ax)
    return figure


def _decision_positions(decisions: pd.DataFrame) -> np.ndarray:
    """x of each decision: its epoch, spread within ±0.3 when one epoch has several."""
    epochs = decisions["epoch"].to_numpy(dtype=float)
    positions = epochs.copy()
    for epoch in np.unique(epochs[np.isfinite(epochs)]):
        index = np.flatnonzero(epochs == epoch)
        if len(index) > 1:
            positions[index] = epoch + np.linspace(-0.3, 0.3, len(index))
    return positions


_LR_PARAMETERS = frozenset({"lr", "learning_rate"})


def _controller_changed_lr(decisions: pd.DataFrame) -> bool:
    """Whether a decision changed the learning rate (else lr is the schedule's)."""
    if decisions.empty or "parameter" not in decisions.columns:
        return False
    return bool(decisions["parameter"].astype(str).isin(_LR_PARAMETERS).any())


def _memory_panel(ax: Axes, memory: pd.DataFrame) -> None:
    """Measured and predicted peak memory per epoch against the budget (a red line)."""
    columns = [c for c in ("peak_bytes", "train_peak_bytes", "predicted_peak_bytes") if c in memory]
    drawn = [memory[c].to_numpy(dtype=float) for c in columns]
    budget = memory["budget_bytes"].to_numpy(dtype=float) if "budget_bytes" in memory else None
    everything = np.concatenate([*drawn, budget if budget is not None else []])
    scale, unit = bytes_unit(float(np.nanmax(np.abs(everything))) if everything.size else 0.0)
    names = {
        "peak_bytes": "peak (measured)",
        "train_peak_bytes": "peak of the training steps",
        "predicted_peak_bytes": "predicted by the controller",
    }
    styles = {"peak_bytes": "-", "train_peak_bytes": "-.", "predicted_peak_bytes": ":"}
    epochs = memory["epoch"].to_numpy(dtype=float)
    for column, values in zip(columns, drawn, strict=True):
        ax.plot(epochs, values / scale, styles[column], marker="o", ms=3, label=names[column])
    if budget is not None:
        ax.plot(epochs, budget / scale, color=_DECISION_COLOR, lw=1.5, label="budget")
    set_limits(ax, np.append(everything / scale, 0.0), floor=0.0)
    ax.set_ylabel(f"memory ({unit})")
    _outside_legend(ax)


def _accumulation_labels(ax: Axes, epochs: np.ndarray, controller: pd.DataFrame) -> None:
    """'x2 accumulated' beside the micro-batch line where the accumulation steps change."""
    steps = controller["accum_steps"].to_numpy(dtype=float)
    micro = controller["micro_batch_size"].to_numpy(dtype=float)
    previous = math.nan
    for epoch, step, size in zip(epochs, steps, micro, strict=True):
        if not (np.isfinite(step) and np.isfinite(size)) or step == previous:
            continue
        previous = step
        ax.annotate(
            f"x{step:.0f} accumulated",
            (epoch, size),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=8,
            color="tab:orange",
        )


def controller_figure(
    controller: pd.DataFrame,
    decisions: pd.DataFrame,
    title: str,
    memory: pd.DataFrame | None = None,
) -> Figure | None:
    """Memory against the budget, batch size, micro-batch and accumulation per epoch; lr
    when the controller changed it; controller scores per decision.

    Every epoch where the controller changed a parameter gets a red line and a label.

    Args:
        controller: :func:`~edgetrain.report.tables.controller_table`.
        decisions: The controller's decisions.
        title: The figure title's start.
        memory: :func:`~edgetrain.report.tables.adapt_memory` (optional).
    """
    memory = memory if memory is not None else pd.DataFrame()
    has_memory = len(memory.columns) > 1 and not memory.empty
    if controller.empty and not has_memory:
        return None
    sizes = [c for c in ("batch_size", "micro_batch_size") if c in controller.columns]
    scores = [
        c
        for c in ("memory_score", "accuracy_score", "priority_batch_size", "priority_learning_rate")
        if c in decisions.columns and decisions[c].notna().any()
    ]
    show_lr = "lr" in controller.columns and _controller_changed_lr(decisions)
    panels = [
        p
        for p, ok in (
            ("memory", has_memory),
            ("sizes", sizes),
            ("lr", show_lr),
            ("scores", scores),
        )
        if ok
    ]
    if not panels:
        return None
    figure = new_figure(f"{title}: memory budget and adaptation controller")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    epochs = controller["epoch"].to_numpy(dtype=float) if "epoch" in controller else []
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "memory":
            _memory_panel(ax, memory)
        elif panel == "sizes":
            drawn = [controller[c].to_numpy(dtype=float) for c in sizes]
            for column, values in zip(sizes, drawn, strict=True):
                ax.plot(
                    epochs,
                    values,
                    marker="o",
                    ms=4,
                    drawstyle="steps-mid",
                    label=pretty_name(column),
                )
            set_limits(ax, np.append(np.concatenate(drawn), 0.0), floor=0.0)
            ax.set_ylabel("batch size (samples)")
            if "accum_steps" in controller.columns and "micro_batch_size" in sizes:
                _accumulation_labels(ax, epochs, controller)
            _outside_legend(ax)
        elif panel == "lr":
            values = controller["lr"].to_numpy(dtype=float)
            ax.plot(
                epochs,
                values,
                marker="o",
                ms=4,
                drawstyle="steps-mid",
                color="tab:purple",
                label="learning rate",
            )
            _lr_axis(ax, values)
            ax.set_ylabel("learning rate")
            _outside_legend(ax)
        else:
            x = _decision_positions(decisions)
            drawn = []
            for column in scores:
                values = decisions[column].to_numpy(dtype=float)
                ax.plot(x, values, marker="o", ms=4, lw=1, label=pretty_name(column))
                drawn.append(values)
            if "memory_score" in scores:
                ax.axhline(
                    1.0, color=_DECISION_COLOR, ls=":", lw=1, label="memory = budget (or device)"
                )
            set_unit_ylim(ax, np.concatenate(drawn), fraction=True)
            ax.set_ylabel("score (0..1)")
            _outside_legend(ax)
        ax.grid(True, alpha=0.3)
    changes = (
        controller["changes"]
        if "changes" in controller.columns
        else pd.Series(0, index=controller.index)
    )
    legend = []
    for number, (_, row) in enumerate(controller[changes > 0].iterrows(), start=1):
        for ax in axes:
            ax.axvline(row["epoch"], color=_DECISION_COLOR, ls="--", lw=1, alpha=0.7)
        axes[0].annotate(
            str(number),
            xy=(row["epoch"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            ha="left",
            fontsize=9,
            fontweight="bold",
            color=_DECISION_COLOR,
        )
        when = f"epoch {int(row['epoch'])}" if row["epoch"] >= 1 else "before epoch 1"
        legend.append(f"{number}: {when} {row.get('decisions', '')}")
    if legend:
        shown = legend[:6] + (
            [f"… {len(legend) - 6} more in the tables"] if len(legend) > 6 else []
        )
        add_note(figure, "changes (red lines):  " + "   ".join(shown))
    epoch_axis(axes[-1])
    return figure


def correlation_figure(corr: pd.DataFrame, title: str, n: int | None = None) -> Figure | None:
    """Heatmap of the per-epoch correlation matrix (Pearson r, -1..1) over ``n`` epochs.

    Drawn only from :data:`~edgetrain.report.correlation.MIN_POINTS` epochs up (when ``n``
    is given).
    """
    if corr.empty or (n is not None and n < MIN_POINTS):
        return None
    size = len(corr)
    over = f" (Pearson r, n = {n} epochs)" if n is not None else " (Pearson r)"
    figure = new_figure(f"{title}: correlation between per-epoch quantities{over}")
    ax = figure.subplots()
    image = ax.imshow(corr.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
    names = [pretty_name(c) for c in corr.columns]
    fontsize = 9 if size <= 12 else 7 if size <= 20 else 5
    ax.set_xticks(range(size), labels=names, rotation=40, ha="right", fontsize=fontsize)
    ax.set_yticks(range(size), labels=names, fontsize=fontsize)
    if size <= 12:  # beyond that the numbers get too small to read; the colours remain
        for (i, j), value in np.ndenumerate(corr.to_numpy(dtype=float)):
            if np.isfinite(value):
                color = "white" if abs(value) > 0.6 else "black"
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize - 1,
                    color=color,
                )
    figure.colorbar(image, ax=ax, label="Pearson r", shrink=0.8)
    return figure


def pairs_figure(
    per_epoch: pd.DataFrame, pairs: pd.DataFrame, title: str, limit: int = 4
) -> Figure | None:
    """Scatter plots of the strongest cost/performance pairs, one point per epoch.

    Each cost column appears once (its strongest pair), so the panels do not repeat
    one quantity against the train and val values of one metric. A pair is drawn only
    with :data:`~edgetrain.report.correlation.MIN_POINTS` epochs where both are known;
    each panel names n and Pearson r. No line is fitted.
    """
    if pairs.empty or per_epoch.empty:
        return None
    counts = [
        int((per_epoch[c].notna() & per_epoch[p].notna()).sum())
        if c in per_epoch and p in per_epoch
        else 0
        for c, p in zip(pairs["cost"], pairs["performance"], strict=True)
    ]
    pairs = pairs.assign(n=counts)
    pairs = pairs[pairs["n"] >= MIN_POINTS]
    if pairs.empty:
        return None
    shown = pairs.drop_duplicates("cost").head(limit)
    figure = new_figure(f"{title}: strongest cost/performance correlations (one point per epoch)")
    columns = 2 if len(shown) > 1 else 1
    axes = figure.subplots(math.ceil(len(shown) / columns), columns, squeeze=False).ravel()
    points = None
    for ax, row in zip(axes, shown.itertuples(index=False), strict=False):
        x_all = per_epoch[row.cost].to_numpy(dtype=float)
        y_all = per_epoch[row.performance].to_numpy(dtype=float)
        x_scale, x_label = axis_label(row.cost, x_all)
        _, y_label = axis_label(row.performance, y_all)
        ok = np.isfinite(x_all) & np.isfinite(y_all)
        x, y, epochs = x_all[ok] / x_scale, y_all[ok], per_epoch["epoch"].to_numpy()[ok]
        points = ax.scatter(x, y, c=epochs, cmap="viridis", s=36, zorder=3)
        if len(epochs) <= 30:
            for xi, yi, epoch in zip(x, y, epochs, strict=True):
                ax.annotate(
                    f"{int(epoch)}", (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7
                )
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(
            f"{pretty_name(row.performance)} vs {pretty_name(row.cost)}\n"
            + correlation_text(int(row.n), float(row.r), "pearson"),
            fontsize=10,
        )
        set_limits(ax, y)  # zoomed on the data: the point here is the relation, not the level
        if x.size:
            span = float(np.ptp(x))
            pad = 0.08 * span if span > 0 else max(abs(float(x.max())) * 0.1, 0.05)
            ax.set_xlim(x.min() - pad, x.max() + pad)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    if points is not None:
        bar = figure.colorbar(points, ax=list(axes[: len(shown)]), label="epoch", shrink=0.6)
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def activation_figure(activation: pd.DataFrame, title: str, note: str = "") -> Figure | None:
    """Activation memory (MiB/GiB) per epoch: what was saved for backward, after compression.

    Args:
        activation: ``epoch, activation_bytes`` (other columns are not drawn).
        title: The figure title's start.
        note: A line under the figure (the codec, raw against stored).
    """
    if activation.empty or "activation_bytes" not in activation.columns:
        return None
    values = activation["activation_bytes"].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    figure = new_figure(f"{title}: activation memory saved for backward")
    if note:
        add_note(figure, note)
    ax = figure.subplots()
    scale, label = axis_label("activation_bytes", values)
    ax.bar(activation["epoch"], values / scale, width=0.7, color="tab:cyan")
    set_limits(ax, np.append(values / scale, 0.0), floor=0.0)
    ax.set_ylabel(f"peak stored activations ({label.rsplit('(', 1)[1]}")
    epoch_axis(ax)
    return figure


def prune_figure(
    sparsity: pd.DataFrame, title: str, target: float | None = None, note: str = ""
) -> Figure | None:
    """Parameter sparsity per epoch (zeros among conv and linear weights), with the target.

    Args:
        sparsity: ``epoch, param_sparsity``.
        title: The figure title's start.
        target: The pruning ratio aimed at (a dashed line).
        note: A line under the figure (schedule, final sparsity).
    """
    if sparsity.empty or "param_sparsity" not in sparsity.columns:
        return None
    values = sparsity["param_sparsity"].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    figure = new_figure(f"{title}: pruning")
    if note:
        add_note(figure, note)
    ax = figure.subplots()
    ax.plot(sparsity["epoch"], values, marker="o", ms=4, label="parameter sparsity")
    if target is not None:
        ax.axhline(target, color=_DECISION_COLOR, ls="--", lw=1.2, label=f"target {target:g}")
    set_unit_ylim(ax, np.append(values, target if target is not None else np.nan))
    ax.set_ylabel("zero weights (fraction of conv and linear weights, 0..1)")
    epoch_axis(ax)
    add_legend(ax)
    return figure
