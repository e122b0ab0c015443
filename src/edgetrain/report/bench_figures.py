"""Drawing the benchmark report: time breakdown, throughput and energy, warm-up, batches.

Configurations are rows (horizontal bars, the first on top), so long labels stay readable.
Each function returns None when its table is empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from edgetrain.report.labels import energy_source_text, is_estimated
from edgetrain.report.plotting import (
    add_note,
    epoch_axis,
    finite_values,
    new_figure,
    set_value_axis,
    std_or_zero,
)

__all__ = ["batches_figure", "breakdown_figure", "throughput_figure", "warmup_figure"]

_PARTS = (
    ("loader_start_s", "loader start (DataLoader and workers)", "0.55", ".."),
    ("stall_s", "data stall (waiting for a batch)", "tab:red", None),
    ("copy_s", "host→device copy", "tab:orange", None),
    ("compute_s", "compute (forward, backward, step)", "tab:blue", None),
    ("rest_s", "rest of the epoch (validation, bookkeeping)", "0.85", None),
)
_LINE_STYLES = ("-", "--", "-.", ":")
# boxplot's `orientation` arrived in matplotlib 3.10, which deprecates `vert`
_HORIZONTAL = (
    {"orientation": "horizontal"}
    if tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)


def _seconds_scale(max_seconds: float) -> tuple[float, str]:
    """Milliseconds below one second, else seconds."""
    return (1000.0, "ms") if max_seconds < 1.0 else (1.0, "s")


def _config_axis(ax: Axes, labels: Sequence[str]) -> None:
    ax.set_yticks(range(len(labels)), labels=list(labels), fontsize=8 if len(labels) < 12 else 6)
    ax.set_ylim(len(labels) - 0.4, -0.6)  # the first configuration on top


def breakdown_figure(breakdown: pd.DataFrame, title: str) -> Figure | None:
    """Stacked bars per configuration: loader start, stall, copy, compute and the rest.

    Error bars (±1 std over the measured epochs) sit at the end of each part.
    """
    if breakdown.empty:
        return None
    parts = [
        p for p in _PARTS if p[0] in breakdown.columns and breakdown[p[0]].fillna(0).gt(0).any()
    ]
    if not parts:
        return None
    totals = breakdown[[p[0] for p in parts]].fillna(0).sum(axis=1).to_numpy(dtype=float)
    scale, unit = _seconds_scale(float(totals.max()))
    figure = new_figure(f"{title}: where a measured epoch's time goes")
    add_note(figure, "bars: mean over the measured epochs (warm-up left out); error bars: ±1 std")
    ax = figure.subplots()
    y = np.arange(len(breakdown))
    left = np.zeros(len(breakdown))
    right_edge = totals * scale
    for column, label, color, hatch in parts:
        values = breakdown[column].fillna(0).to_numpy(dtype=float) * scale
        ax.barh(
            y,
            values,
            left=left,
            height=0.6,
            color=color,
            hatch=hatch,
            label=label,
            edgecolor="white",
        )
        std = std_or_zero(breakdown, f"{column}_std") * scale
        if std.any():
            ax.errorbar(
                left + values,
                y,
                xerr=std,
                fmt="none",
                ecolor="black",
                elinewidth=1,
                capsize=3,
            )
            right_edge = np.maximum(right_edge, left + values + std)
        left = left + values
    for position, (edge, total, frac) in enumerate(
        zip(right_edge, totals, breakdown.get("stall_frac", pd.Series(np.nan)), strict=False)
    ):
        text = f"{total * scale:.3g} {unit}"
        if pd.notna(frac):
            text += f", stall {100 * frac:.0f}% of stall+copy+compute"
        ax.annotate(
            text,
            (edge, position),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    _config_axis(ax, breakdown["label"].astype(str).tolist())
    ax.set_xlim(0, float(right_edge.max()) * 1.45 if right_edge.max() > 0 else 1.0)
    ax.set_xlabel(f"time per measured epoch ({unit})")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return figure


def _bars(
    ax: Axes, labels: list[str], values: np.ndarray, std: np.ndarray, color: str, hatch: str | None
) -> None:
    y = np.arange(len(values))
    ax.barh(y, np.nan_to_num(values), height=0.6, color=color, hatch=hatch, edgecolor="white")
    if np.nan_to_num(std).any():
        ax.errorbar(
            values, y, xerr=np.nan_to_num(std), fmt="none", ecolor="black", elinewidth=1, capsize=3
        )
    edge = np.nan_to_num(values) + np.nan_to_num(std)
    for position, (value, end) in enumerate(zip(values, edge, strict=True)):
        if np.isfinite(value):
            ax.annotate(
                f"{value:.3g}",
                (end, position),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
    top = float(np.nanmax(edge)) if np.isfinite(edge).any() else 0.0
    ax.set_xlim(0, top * 1.25 if top > 0 else 1.0)
    _config_axis(ax, labels)
    ax.grid(True, axis="x", alpha=0.3)


def throughput_figure(table: pd.DataFrame, title: str, sources: Sequence[str]) -> Figure | None:
    """Per configuration: samples per second and energy per sample (mJ), ±1 std."""
    if table.empty:
        return None
    panels = [c for c in ("samples_per_s", "energy_per_sample_j") if table[c].notna().any()]
    if not panels:
        return None
    estimated = is_estimated(sources)
    figure = new_figure(f"{title}: throughput and energy per sample")
    if "energy_per_sample_j" in panels:
        add_note(figure, "energy source: " + energy_source_text(sources))
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    labels = table["label"].astype(str).tolist()
    for ax, column in zip(axes, panels, strict=True):
        if column == "samples_per_s":
            values, std = (
                table[column].to_numpy(dtype=float),
                std_or_zero(table, "samples_per_s_std"),
            )
            _bars(ax, labels, values, std, "tab:blue", None)
            ax.set_xlabel("throughput (samples/s)")
            ax.set_title("throughput (higher is better)", fontsize=11)
        else:
            values = table[column].to_numpy(dtype=float) * 1000
            std = std_or_zero(table, "energy_per_sample_j_std") * 1000
            _bars(ax, labels, values, std, "tab:orange", "//" if estimated else None)
            unit = "mJ, estimated" if estimated else "mJ"
            ax.set_xlabel(f"energy per training sample ({unit})")
            ax.set_title(
                "energy per sample (lower is better" + (", estimate)" if estimated else ")"),
                fontsize=11,
            )
    return figure


def warmup_figure(
    epochs: pd.DataFrame, warmup: pd.DataFrame, title: str, warmup_epochs: int
) -> Figure | None:
    """Epoch time per epoch (warm-up shaded) and warm-up against measured mean per config."""
    has_epochs = not epochs.empty and epochs["epoch_time_s"].notna().any()
    times = warmup[warmup["metric"] == "epoch_time_s"] if not warmup.empty else warmup
    has_bars = not times.empty and times[["warmup", "measured"]].notna().any().any()
    if not (has_epochs or has_bars):
        return None
    figure = new_figure(f"{title}: warm-up against measured epochs")
    axes = figure.subplots(1, int(has_epochs) + int(has_bars), squeeze=False)[0]
    if has_epochs:
        ax = axes[0]
        values = epochs["epoch_time_s"].to_numpy(dtype=float)
        for number, (label, rows) in enumerate(epochs.groupby("label", sort=False)):
            ax.plot(
                rows["epoch"],
                rows["epoch_time_s"],
                ls=_LINE_STYLES[number % len(_LINE_STYLES)],
                marker="o",
                ms=4,
                label=str(label),
            )
        if warmup_epochs > 0:
            ax.axvspan(0.5, warmup_epochs + 0.5, color="0.9", zorder=0, label="warm-up (left out)")
        ax.set_xlim(0.5, float(epochs["epoch"].max()) + 0.5)
        set_value_axis(ax, values, axis="y")
        ax.set_ylabel("epoch time (s)")
        ax.set_title("time of each epoch", fontsize=11)
        epoch_axis(ax)
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    if has_bars:
        ax = axes[-1]
        labels = times["label"].astype(str).tolist()
        warm = times["warmup"].to_numpy(dtype=float)
        mean = times["measured"].to_numpy(dtype=float)
        std = std_or_zero(times, "measured_std")
        y = np.arange(len(times))
        ax.barh(y - 0.2, np.nan_to_num(warm), height=0.4, color="0.6", label="warm-up epoch(s)")
        ax.barh(y + 0.2, np.nan_to_num(mean), height=0.4, color="tab:blue", label="measured mean")
        ax.errorbar(mean, y + 0.2, xerr=std, fmt="none", ecolor="black", capsize=3)
        for position, (w, m) in enumerate(zip(warm, mean, strict=True)):
            if np.isfinite(w) and np.isfinite(m) and m > 0:
                ax.annotate(
                    f"×{w / m:.1f}",
                    (max(w, m + std[position]), position),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
                )
        top = float(np.nanmax(np.concatenate([warm, mean + std])))
        ax.set_xlim(0, top * 1.2 if top > 0 else 1.0)
        _config_axis(ax, labels)
        ax.set_xlabel("epoch time (s); ×: warm-up / measured")
        ax.set_title("warm-up epoch against measured mean (±1 std)", fontsize=11)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return figure


def batches_figure(batches: pd.DataFrame, title: str) -> Figure | None:
    """Per configuration: the spread of stall and compute time per minibatch (measured epochs)."""
    if batches.empty:
        return None
    panels = [c for c in ("stall_s", "compute_s") if batches[c].notna().any()]
    if not panels:
        return None
    figure = new_figure(f"{title}: time per minibatch (measured epochs)")
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    groups = list(batches.groupby("label", sort=False))
    labels = [str(label) for label, _ in groups]
    names = {"stall_s": "data stall", "compute_s": "compute"}
    for ax, column in zip(axes, panels, strict=True):
        scale, unit = _seconds_scale(float(np.nanmax(batches[column].to_numpy(dtype=float))))
        data = [finite_values(rows[column]) * scale for _, rows in groups]
        ax.boxplot(
            data,
            positions=np.arange(len(data)),
            **_HORIZONTAL,
            widths=0.55,
            showfliers=False,
            medianprops={"color": "tab:red"},
        )
        for position, points in enumerate(data):
            offsets = np.linspace(-0.15, 0.15, len(points)) if len(points) > 1 else np.zeros(1)
            ax.scatter(points, position + offsets[: len(points)], s=8, color="tab:blue", alpha=0.6)
        set_value_axis(ax, np.concatenate(data) if data else np.array([]), axis="x")
        _config_axis(ax, labels)
        ax.set_xlabel(f"{names[column]} per minibatch ({unit})")
        ax.set_title(f"{names[column]}: one point per minibatch", fontsize=11)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    return figure
