"""Drawing: one function per figure, each taking the tables from :mod:`.tables`.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state, Agg
rendering). A function returns None when its data are absent, so no empty plot is made.
Every axis names its unit, and limits come from the data with a margin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import MaxNLocator

from edgetrain.report.labels import axis_label, pretty_name, time_unit

__all__ = [
    "PAGE_SIZE",
    "activation_figure",
    "controller_figure",
    "correlation_figure",
    "energy_figure",
    "overlay_figure",
    "pairs_figure",
    "resources_figure",
    "totals_figure",
    "training_curves_figure",
]

logger = logging.getLogger(__name__)

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches: PNGs and PDF pages share it
_SERIES_STYLE = {"train": "-", "val": "--"}
_DECISION_COLOR = "tab:red"
_FOOT = 0.035  # fraction of the page height kept free at the bottom
_RUN_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "P")]


def _figure(title: str) -> Figure:
    figure = Figure(figsize=PAGE_SIZE)
    # The bottom strip stays free for the PDF footer and notes such as the energy source.
    figure.set_layout_engine(ConstrainedLayoutEngine(rect=(0, _FOOT, 1, 1 - _FOOT)))
    figure.suptitle(title, fontsize=14, fontweight="bold")
    return figure


def _note(figure: Figure, text: str) -> None:
    """A line in the free bottom strip, left-aligned (the footer sits on the right)."""
    figure.text(0.01, 0.006, text, ha="left", va="bottom", fontsize=9)


def _finite(values: Sequence[float] | pd.Series | np.ndarray) -> np.ndarray:
    array = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return array[np.isfinite(array)]


def _set_ylim(ax: Axes, values: np.ndarray, *, floor: float | None = None) -> None:
    """Limits from the data with a 6% margin, so that no legal value sits on the frame.

    Args:
        ax: The axes.
        values: Every value drawn on the axes (already scaled).
        floor: A bound the margin must not cross when the data do not (e.g. 0 for a
            fraction, so that an accuracy of 0.02 does not show a negative axis).
    """
    values = _finite(values)
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    span = high - low
    margin = 0.06 * span if span > 0 else max(abs(high) * 0.1, 0.05)
    bottom, top = low - margin, high + margin
    if floor is not None and low >= floor:
        bottom = max(bottom, floor - 0.02 * (top - floor))
    ax.set_ylim(bottom, top)


def _set_unit_ylim(ax: Axes, values: np.ndarray, *, fraction: bool = False) -> None:
    """Accuracy, fractions and scores: all of 0..1 (or 0..100 %) visible, widened for outliers.

    ``fraction``: the values are fractions even above 1 (a memory score over the budget),
    never percentages.
    """
    values = _finite(values)
    top = 100.0 if values.size and values.max() > 1.0 and not fraction else 1.0
    low = min(0.0, float(values.min())) if values.size else 0.0
    high = max(top, float(values.max())) if values.size else top
    margin = 0.04 * (high - low)
    ax.set_ylim(low - margin, high + margin)


def _epoch_axis(ax: Axes) -> None:
    """Label the x axis 'epoch' with whole-number ticks (every epoch when there are few)."""
    ax.set_xlabel("epoch")
    low, high = ax.get_xlim()
    if high - low <= 21:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=21, steps=[1, 2, 5, 10]))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _legend(ax: Axes) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=9, loc="best", framealpha=0.8)


def _outside_legend(ax: Axes) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def training_curves_figure(curves: pd.DataFrame, title: str) -> Figure | None:
    """Loss and accuracy per epoch (train solid, val dashed); lr when it changes."""
    losses = [c for c in ("train_loss", "val_loss") if c in curves.columns]
    accs = [c for c in ("train_acc", "val_acc") if c in curves.columns]
    show_lr = "lr" in curves.columns and curves["lr"].dropna().nunique() > 1
    panels = [group for group in (losses, accs, ["lr"] if show_lr else []) if group]
    if curves.empty or not (losses or accs):
        return None
    figure = _figure(f"{title}: training curves")
    ratios = [1.0 if group == ["lr"] else 2.0 for group in panels]
    axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=ratios)[0]
    for ax, columns in zip(axes, panels, strict=True):
        drawn = []
        for column in columns:
            values = curves[column].to_numpy(dtype=float)
            style = _SERIES_STYLE.get(column.split("_")[0], "-")
            ax.plot(curves["epoch"], values, style, marker="o", ms=4, label=pretty_name(column))
            drawn.append(values)
        values = np.concatenate(drawn)
        if columns is losses:
            _set_ylim(ax, values, floor=0.0)
            label = "loss"
        elif columns is accs:
            _set_unit_ylim(ax, values)
            label = "accuracy (%)" if _finite(values).max(initial=0) > 1 else "accuracy (fraction)"
        else:
            finite = _finite(values)
            if finite.size and finite.min() > 0 and np.ptp(np.log10(finite)) > 1:
                ax.set_yscale("log")
            else:
                _set_ylim(ax, np.append(values, 0.0), floor=0.0)
            label = "learning rate"
        ax.set_ylabel(label)
        _epoch_axis(ax)
        _legend(ax)
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
    figure = _figure(f"{title}: resources over time")
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
        _set_ylim(ax, data.ravel() / scale, floor=0.0)
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
    sources = sorted({str(s) for s in energy.get("energy_source", pd.Series()).dropna()})
    estimated = any(s.startswith("estimated") for s in sources)
    figure = _figure(f"{title}: energy and time per epoch")
    if sources:
        _note(figure, "energy source: " + ", ".join(sources))
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
        _set_ylim(ax, np.append(values, 0.0), floor=0.0)
        _epoch_axis(ax)
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


def controller_figure(
    controller: pd.DataFrame, decisions: pd.DataFrame, title: str
) -> Figure | None:
    """Batch size, micro-batch, accumulation and lr per epoch; controller scores per decision.

    Every epoch where the controller changed a parameter gets a red line and a label.
    """
    if controller.empty:
        return None
    sizes = [c for c in ("batch_size", "micro_batch_size") if c in controller.columns]
    scores = [
        c
        for c in ("memory_score", "accuracy_score", "priority_batch_size", "priority_learning_rate")
        if c in decisions.columns and decisions[c].notna().any()
    ]
    panels = [
        p
        for p, ok in (("sizes", sizes), ("lr", "lr" in controller.columns), ("scores", scores))
        if ok
    ]
    if not panels:
        return None
    figure = _figure(f"{title}: adaptation controller")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    epochs = controller["epoch"].to_numpy(dtype=float)
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "sizes":
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
            _set_ylim(ax, np.concatenate(drawn), floor=0.0)
            ax.set_ylabel("batch size (samples)")
            if "accum_steps" in controller.columns:
                twin = ax.twinx()
                steps = controller["accum_steps"].to_numpy(dtype=float)
                twin.plot(
                    epochs,
                    steps,
                    color="tab:gray",
                    ls="--",
                    marker="s",
                    ms=3,
                    drawstyle="steps-mid",
                    label="accumulation steps",
                )
                _set_ylim(twin, np.append(steps, 0.0), floor=0.0)
                twin.set_ylabel("accumulation (steps)")
                twin.yaxis.set_major_locator(MaxNLocator(integer=True))
                handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
                ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0))
            else:
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
            finite = _finite(values)
            if finite.size and finite.min() > 0 and np.ptp(np.log10(finite)) > 1:
                ax.set_yscale("log")
            else:
                _set_ylim(ax, np.append(values, 0.0), floor=0.0)
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
            _set_unit_ylim(ax, np.concatenate(drawn), fraction=True)
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
        legend.append(f"{number}: epoch {int(row['epoch'])} {row.get('decisions', '')}")
    if legend:
        shown = legend[:6] + (
            [f"… {len(legend) - 6} more in the tables"] if len(legend) > 6 else []
        )
        _note(figure, "changes (red lines):  " + "   ".join(shown))
    _epoch_axis(axes[-1])
    return figure


def correlation_figure(corr: pd.DataFrame, title: str) -> Figure | None:
    """Heatmap of the per-epoch correlation matrix (Pearson r, -1..1)."""
    if corr.empty:
        return None
    size = len(corr)
    figure = _figure(f"{title}: correlation between per-epoch quantities")
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
    one quantity against train and val accuracy.
    """
    if pairs.empty or per_epoch.empty:
        return None
    shown = pairs.drop_duplicates("cost").head(limit)
    figure = _figure(f"{title}: strongest cost/performance correlations")
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
            f"{pretty_name(row.performance)} vs {pretty_name(row.cost)}: r = {row.r:+.2f}",
            fontsize=10,
        )
        _set_ylim(ax, y)  # zoomed on the data: the point here is the relation, not the level
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


def activation_figure(activation: pd.DataFrame, title: str) -> Figure | None:
    """Activation memory (MiB/GiB) and trainable fraction / parameter sparsity per epoch."""
    memory = [c for c in ("activation_bytes",) if c in activation.columns]
    fractions = [c for c in ("trainable_frac", "param_sparsity") if c in activation.columns]
    panels = [group for group in (memory, fractions) if group]
    if activation.empty or not panels:
        return None
    figure = _figure(f"{title}: activation memory and trainable parameters")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, columns in zip(axes, panels, strict=True):
        data = activation[columns].to_numpy(dtype=float)
        scale, label = axis_label(columns[0], data.ravel())
        for column in columns:
            values = activation[column].to_numpy(dtype=float) / scale
            if column == "activation_bytes":
                ax.bar(
                    activation["epoch"],
                    values,
                    width=0.7,
                    color="tab:cyan",
                    label=pretty_name(column),
                )
            else:
                ax.plot(activation["epoch"], values, marker="o", ms=4, label=pretty_name(column))
        if columns is fractions:
            label = "fraction of parameters (0..1)"
            _set_unit_ylim(ax, data.ravel())
        else:
            _set_ylim(ax, np.append(data.ravel() / scale, 0.0), floor=0.0)
        ax.set_ylabel(label)
        _epoch_axis(ax)
        _legend(ax)
    return figure


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
    figure = _figure(title)
    axes = figure.subplots(1, len(present), squeeze=False)[0]
    for ax, column in zip(axes, present, strict=True):
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
            _set_unit_ylim(ax, values / scale)
        else:
            floor = 0.0 if column.endswith(("_j", "_s", "_bytes")) else None
            _set_ylim(ax, values / scale, floor=floor)
        ax.set_ylabel(label)
        note = notes.get(column)
        ax.set_title(label.split(" (")[0] + (f"\n({note})" if note else ""), fontsize=11)
        _epoch_axis(ax)
        _legend(ax)
    return figure


def is_fraction(column: str) -> bool:
    """Whether a column is an accuracy or a fraction (never negative)."""
    return "acc" in column or column.endswith(("_frac", "sparsity"))


def totals_figure(totals: pd.DataFrame, title: str) -> Figure | None:
    """One bar per run: total energy (hatched when estimated), wall time, best val accuracy."""
    panels = [
        (column, label)
        for column, label in (
            ("total_energy_j", "total energy (J)"),
            ("wall_time_s", "wall time (s)"),
            ("best_val_acc", "best val accuracy"),
        )
        if column in totals.columns and totals[column].notna().any()
    ]
    if totals.empty or not panels:
        return None
    figure = _figure(title)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    runs = totals["run"].astype(str).tolist()
    sources = totals.get("energy_source", pd.Series([None] * len(totals)))
    estimated = [str(s).startswith("estimated") for s in sources]
    if any(estimated):
        _note(
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
        if column == "best_val_acc":
            label += " (%)" if np.nanmax(values) > 1 else " (fraction)"
        bars = ax.bar(range(len(runs)), np.nan_to_num(values), color="tab:blue", width=0.6)
        if column == "total_energy_j":
            for bar, est in zip(bars, estimated, strict=True):
                if est:
                    bar.set_hatch("//")
                    bar.set_facecolor("tab:orange")
        for x, value in enumerate(values):
            if np.isfinite(value):
                text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
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
        if column == "best_val_acc":
            _set_unit_ylim(ax, values)
        else:
            _set_ylim(ax, np.append(values * 1.05, 0.0), floor=0.0)
        ax.grid(True, axis="y", alpha=0.3)
    return figure
