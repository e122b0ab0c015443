"""Helpers shared by every figure module: pages, notes, axis limits, legends.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state, Agg
rendering) of one page size, so PNGs and PDF pages match. Limits come from the data with
a margin, so that no value sits on the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "PAGE_SIZE",
    "add_legend",
    "add_note",
    "epoch_axis",
    "finite_values",
    "log_limits",
    "new_figure",
    "set_limits",
    "set_unit_ylim",
    "set_value_axis",
    "spans_decade",
    "std_or_zero",
]

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches: PNGs and PDF pages share it
_FOOT = 0.035  # fraction of the page height kept free at the bottom


def new_figure(title: str) -> Figure:
    """An empty page-sized figure with a bold title and the bottom strip kept free."""
    figure = Figure(figsize=PAGE_SIZE)
    # The bottom strip stays free for the PDF footer and notes such as the energy source.
    figure.set_layout_engine(ConstrainedLayoutEngine(rect=(0, _FOOT, 1, 1 - _FOOT)))
    figure.suptitle(title, fontsize=14, fontweight="bold")
    return figure


def add_note(figure: Figure, text: str) -> None:
    """A line in the free bottom strip, left-aligned (the footer sits on the right)."""
    figure.text(0.01, 0.006, text, ha="left", va="bottom", fontsize=9)


def finite_values(values: Sequence[float] | pd.Series | np.ndarray) -> np.ndarray:
    """The finite numbers among ``values`` (words and NaN dropped), as a float array."""
    array = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return array[np.isfinite(array)]


def set_limits(
    ax: Axes, values: np.ndarray, *, floor: float | None = None, axis: str = "y"
) -> None:
    """Limits from the data with a 6% margin, so that no legal value sits on the frame.

    Args:
        ax: The axes.
        values: Every value drawn on the axis (already scaled).
        floor: A bound the margin must not cross when the data do not (e.g. 0 for a
            fraction, so that an accuracy of 0.02 does not show a negative axis).
        axis: "y" or "x".
    """
    values = finite_values(values)
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    span = high - low
    margin = 0.06 * span if span > 0 else max(abs(high) * 0.1, 0.05)
    bottom, top = low - margin, high + margin
    if floor is not None and low >= floor:
        bottom = max(bottom, floor - 0.02 * (top - floor))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(bottom, top)


def set_unit_ylim(ax: Axes, values: np.ndarray, *, fraction: bool = False) -> None:
    """Accuracy, fractions and scores: all of 0..1 (or 0..100 %) visible, widened for outliers.

    ``fraction``: the values are fractions even above 1 (a memory score over the budget),
    never percentages.
    """
    values = finite_values(values)
    top = 100.0 if values.size and values.max() > 1.0 and not fraction else 1.0
    low = min(0.0, float(values.min())) if values.size else 0.0
    high = max(top, float(values.max())) if values.size else top
    margin = 0.04 * (high - low)
    ax.set_ylim(low - margin, high + margin)


def spans_decade(values: Sequence[float] | np.ndarray) -> bool:
    """Whether positive values span more than a factor of 10 (then a log axis reads better)."""
    finite = finite_values(values)
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 10)


def log_limits(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Log-axis limits with a margin of a quarter of the axis' decades on each side."""
    finite = finite_values(values)
    low, high = math.log10(finite.min()), math.log10(finite.max())
    pad = max(0.06 * (high - low), 0.05)
    return 10 ** (low - pad), 10 ** (high + pad)


def set_value_axis(
    ax: Axes, values: np.ndarray, axis: str = "y", floor: float | None = 0.0
) -> None:
    """Log scale when the values span more than 10x, else linear with a margin."""
    finite = finite_values(values)
    if finite.size == 0:
        return
    if spans_decade(finite):
        low, high = log_limits(finite)
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        (ax.set_ylim if axis == "y" else ax.set_xlim)(low, high)
        # plain numbers (20, 50, 100) rather than powers of ten; 1-2-5 steps on short spans
        subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 2.5 else (1.0,)
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_locator(LogLocator(base=10, subs=subs))
        target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        target.set_minor_formatter(NullFormatter())
    else:
        set_limits(ax, finite, floor=floor, axis=axis)


def epoch_axis(ax: Axes) -> None:
    """Label the x axis 'epoch' with whole-number ticks (every epoch when there are few)."""
    ax.set_xlabel("epoch")
    low, high = ax.get_xlim()
    if high - low <= 21:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=21, steps=[1, 2, 5, 10]))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def add_legend(ax: Axes) -> None:
    """A legend inside the axes, where it hides least, when anything is labelled."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=9, loc="best", framealpha=0.8)


def std_or_zero(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A standard-deviation column as an array, 0 where it is empty or absent."""
    if column not in frame.columns:
        return np.zeros(len(frame))
    return np.nan_to_num(frame[column].to_numpy(dtype=float))
