"""Page 1 of a run report: the key figures and the learning curve, on one page.

The key figures answer what a reader opens a report for: did the run finish (status and
why it stopped), how good is the model (the task's best metric with its epoch, the final
and test metrics), what did it cost (time, energy with its source, peak memory against the
budget) and how was it trained (micro-batch, the features that were on). The task's
metric and its direction come from summary.json ``task`` (:func:`edgetrain.contract.best_metric`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgetrain.report.features import FEATURE_TITLES, feature_summary
from edgetrain.report.labels import (
    finite_number,
    format_value,
    is_accuracy,
    metric_of,
    pretty_name,
)
from edgetrain.report.plotting import (
    PAGE_SIZE,
    add_legend,
    epoch_axis,
    finite_values,
    set_limits,
    set_unit_ylim,
)
from edgetrain.report.rundir import Run
from edgetrain.report.tables import total_text
from edgetrain.units import format_bytes

__all__ = [
    "KEY_FIGURES_TITLE",
    "LEARNING_CURVE_TITLE",
    "curve_panels",
    "key_figures",
    "key_figures_figure",
    "metric_label",
]

KEY_FIGURES_TITLE = "Key figures"
LEARNING_CURVE_TITLE = "Learning curve"
_FONT = 10.0
_LEFT, _RIGHT_X = 0.035, 0.61
_TEXT_END = 0.53  # the key figures end here; the learning curve's labels start after
_CHAR = 0.6 / 72 / PAGE_SIZE[0]  # a character's width at 1 pt, as a fraction of the page
_MAX_LABEL = 26  # longer labels wrap


def metric_label(column: str, mode: str) -> str:
    """'val accuracy', or 'val RMSE (lower is better)' for a metric that is not accuracy."""
    label = pretty_name(column)
    if is_accuracy(column):
        return label
    return f"{label} ({'higher' if mode == 'max' else 'lower'} is better)"


def _stop_reason(summary: Mapping[str, Any]) -> str | None:
    """Why the run ended: summary.json ``stop_reason`` (text or a mapping), else the early
    stopper's reason."""
    reason = summary.get("stop_reason")
    if isinstance(reason, Mapping):
        reason = (
            reason.get("reason")
            or reason.get("message")
            or ", ".join(f"{k} {v}" for k, v in reason.items())
        )
    if not reason:
        early = summary.get("early_stop")
        reason = early.get("reason") if isinstance(early, Mapping) else None
    return str(reason) if reason else None


def _epochs_text(run: Run, totals: Mapping[str, Any]) -> str:
    done = finite_number(totals.get("epochs"))
    planned = finite_number(run.summary.get("epochs"))
    if planned is None:
        planned = finite_number(run.config.get("epochs"))
    if done is None:
        return "-"
    if planned is not None and planned != done:
        return f"{done:.0f} of {planned:.0f} planned"
    return f"{done:.0f}"


def _energy_scope(run: Run) -> str | None:
    """What the energy covers (``machine``, ``process``...), when the run says."""
    scope = run.summary.get("energy_scope")
    if not scope and "energy_scope" in run.metrics.columns:
        known = run.metrics["energy_scope"].dropna()
        scope = known.iloc[-1] if not known.empty else None
    return str(scope) if scope and str(scope) != "none" else None


def _energy_rows(totals: Mapping[str, Any], scope: str | None = None) -> list[tuple[str, str]]:
    energy = finite_number(totals.get("total_energy_j"))
    source = str(totals.get("energy_source") or "")
    if energy is None:
        return [("energy", "not recorded (the resource monitor was off)")]
    text = total_text("total_energy_j", energy)
    power = finite_number(totals.get("avg_power_w"))
    if power is not None:
        text += f", {power:.1f} W on average"
    per_sample = finite_number(totals.get("energy_per_sample_j"))
    if per_sample is not None:
        text += f", {per_sample * 1000:.3g} mJ per sample"
    estimated = source.startswith("estimated")
    if not source:
        label = "source unknown"
    elif estimated:
        label = f"{source}: ESTIMATED, not measured"
    else:
        label = f"{source}: measured"
    if scope:
        label += f" (scope: {scope})"
    return [("energy", text), ("energy source", label)]


def _attribution_rows(run: Run) -> list[tuple[str, str]]:
    """The share of the window the energy covers and the process's attributed part."""
    rows: list[tuple[str, str]] = []
    metrics = run.metrics
    if "energy_coverage" in metrics.columns:
        coverage = metrics["energy_coverage"].dropna()
        if not coverage.empty and float(coverage.min()) < 1.0:
            rows.append(
                (
                    "energy coverage",
                    f"{100 * float(coverage.min()):.0f}% of an epoch at worst (a sensor failed "
                    "or degraded: the figure covers only part of the time)",
                )
            )
        elif not coverage.empty:
            rows.append(("energy coverage", "100% of every epoch"))
    if "energy_process_j" in metrics.columns:
        share = metrics["energy_process_j"].dropna()
        if not share.empty:
            sources = metrics.get("energy_process_source")
            label = ""
            if sources is not None and not sources.dropna().empty:
                label = f" ({sources.dropna().iloc[-1]})"
            rows.append(
                (
                    "energy of this process",
                    f"{float(share.sum()):.1f} J{label}: the job's attributed share of the "
                    "machine figure (its CPU time; the GPUs it holds)",
                )
            )
    return rows


def _memory_rows(run: Run, totals: Mapping[str, Any]) -> list[tuple[str, str]]:
    budget = finite_number(totals.get("memory_budget_bytes"))
    peak = finite_number(totals.get("budget_peak_bytes"))
    rows = []
    if budget is not None:
        adapt = feature_summary(run, "adapt")
        if peak is not None:
            text = f"{format_bytes(peak)} of the {format_bytes(budget)} budget"
            text += f" ({100 * peak / budget:.0f}%)"
        else:
            text = f"budget {format_bytes(budget)} (peak not recorded)"
        violations = finite_number(totals.get("budget_violations"))
        if violations:
            text += f", {violations:.0f} steps over the budget"
        elif violations == 0:
            text += ", no step over it"
        if adapt.get("memory_source"):
            text += f"; measured as {adapt['memory_source']}"
        rows.append(("peak memory", text))
        plan = adapt.get("plan")
        if isinstance(plan, Mapping) and plan.get("describe"):
            text = str(plan["describe"])
            replans = finite_number(plan.get("replans"))
            if replans:
                text += f" ({replans:.0f} re-plan{'s' if replans > 1 else ''} on measured memory)"
            rows.append(("memory plan", text))
    device = finite_number(totals.get("peak_device_mem_bytes"))
    rss = finite_number(totals.get("peak_rss_bytes"))
    others = []
    if device is not None:
        others.append(f"{format_bytes(device)} device memory (allocated)")
    if rss is not None:
        others.append(f"{format_bytes(rss)} process RSS")
    if others:
        rows.append(("peak memory" if budget is None else "peak, whole process", ", ".join(others)))
    return rows


def _batch_text(run: Run, totals: Mapping[str, Any]) -> str | None:
    """'128 x 2 accumulated (batch 256)', or the batch size when it was not split."""
    metrics = run.metrics
    last = metrics.iloc[-1] if not metrics.empty else pd.Series(dtype=object)
    batch = finite_number(last.get("batch_size"))
    micro = finite_number(last.get("micro_batch_size"))
    accum = finite_number(last.get("accum_steps"))
    text = totals.get("micro_batch")
    if text:
        return f"{text}" + (f" (batch {batch:.0f})" if batch is not None else "")
    if micro is not None and batch is not None and micro != batch:
        steps = f" x {accum:.0f} accumulated" if accum is not None else ""
        return f"{micro:.0f}{steps} (batch {batch:.0f})"
    if batch is not None:
        return f"batch {batch:.0f}, not split"
    return None


def _metric_rows(run: Run, totals: Mapping[str, Any]) -> list[tuple[str, str]]:
    metric, mode = run.best_metric
    rows = []
    best = finite_number(totals.get(f"best_{metric}"))
    epoch = finite_number(totals.get("best_epoch"))
    if best is not None:
        where = f" at epoch {epoch:.0f}" if epoch is not None else ""
        better = (
            "" if is_accuracy(metric) else f" ({'higher' if mode == 'max' else 'lower'} is better)"
        )
        rows.append((f"best {pretty_name(metric)}", f"{format_value(metric, best)}{where}{better}"))
    finals = [k for k in totals if k.startswith("final_") and totals[k] is not None]
    for key in finals:
        rows.append((pretty_name(key), format_value(key, totals[key])))
    tests = sorted(
        (k for k in totals if k.startswith("test_") and totals[k] is not None),
        key=lambda k: k == "test_loss",
    )
    for key in tests:
        rows.append((pretty_name(key), format_value(key, totals[key])))
    return rows


def key_figures(run: Run, totals: Mapping[str, Any], features: Sequence[str] = ()) -> pd.DataFrame:
    """The key figures of a run as rows ``item, value`` (text), in page order.

    Args:
        run: The run.
        totals: :func:`edgetrain.report.tables.run_totals` of the run.
        features: The features that were on (:func:`edgetrain.report.features.active_features`).
    """
    rows: list[tuple[str, str]] = [("status", str(totals.get("status") or "unknown"))]
    reason = _stop_reason(run.summary)
    if reason:
        rows.append(("stopped because", reason))
    rows.append(("epochs", _epochs_text(run, totals)))
    rows += _metric_rows(run, totals)
    wall = finite_number(totals.get("wall_time_s"))
    if wall is not None:
        rows.append(("time", total_text("wall_time_s", wall)))
    rows += _energy_rows(totals, _energy_scope(run))
    rows += _attribution_rows(run)
    rows += _memory_rows(run, totals)
    batch = _batch_text(run, totals)
    if batch:
        rows.append(("micro-batch", batch))
    names = [FEATURE_TITLES[f] for f in features if f in FEATURE_TITLES]
    rows.append(("features on", ", ".join(names) if names else "none (plain training)"))
    if run.problems:
        count = len(run.problems)
        rows.append(("notes", f"{count} problem(s) reading the files: see the appendix"))
    return pd.DataFrame(rows, columns=["item", "value"])


def curve_panels(curves: pd.DataFrame, metric: str) -> list[list[str]]:
    """Losses, then the train and val columns of the task's best metric."""
    losses = [c for c in ("train_loss", "val_loss") if c in curves.columns]
    parts = metric_of(metric)
    panels = [losses] if losses else []
    if parts is not None and parts[2] != "loss":
        pair = [f"train_{parts[2]}", f"val_{parts[2]}"]
        pair = [c for c in pair if c in curves.columns and curves[c].notna().any()]
        if pair:
            panels.append(pair)
    return panels


def _draw_curves(
    figure: Figure,
    curves: pd.DataFrame,
    metric: str,
    mode: str,
    best_epoch: float | None,
    box: tuple[float, float, float, float],
) -> list[str]:
    """The learning curve in ``box`` (left, bottom, width, height); returns the panels'
    y labels."""
    panels = curve_panels(curves, metric)
    left, bottom, width, height = box
    gap = 0.09
    each = (height - gap * (len(panels) - 1)) / max(len(panels), 1)
    labels = []
    for number, columns in enumerate(panels):
        y = bottom + (len(panels) - 1 - number) * (each + gap)
        ax = figure.add_axes((left, y, width, each))
        drawn = []
        for column in columns:
            values = curves[column].to_numpy(dtype=float)
            style = "--" if column.startswith("val_") else "-"
            ax.plot(curves["epoch"], values, style, marker="o", ms=3.5, label=pretty_name(column))
            drawn.append(values)
        values = np.concatenate(drawn)
        if best_epoch is not None:
            ax.axvline(
                best_epoch, color="tab:red", ls=":", lw=1.2, label=f"best epoch {best_epoch:.0f}"
            )
        if all(c.endswith("_loss") for c in columns):
            set_limits(ax, values, floor=0.0)
            label = "loss"
        elif is_accuracy(columns[0]):
            set_unit_ylim(ax, values)
            unit = "%" if finite_values(values).max(initial=0) > 1 else "fraction"
            label = f"{pretty_name(columns[0]).split(' ', 1)[1]} ({unit})"
        else:
            floor = 0.0 if finite_values(values).min(initial=0) >= 0 else None
            set_limits(ax, values, floor=floor)
            label = metric_label(columns[-1], mode).split(" ", 1)[1]
        ax.set_ylabel(label)
        epoch_axis(ax)
        add_legend(ax)
        labels.append(label)
    return labels


def key_figures_figure(
    items: pd.DataFrame,
    curves: pd.DataFrame,
    title: str,
    *,
    metric: str,
    mode: str,
    best_epoch: float | None = None,
    intro: Sequence[str] = (),
) -> Figure:
    """Page 1: the key figures on the left, the learning curve on the right.

    Args:
        items: :func:`key_figures`.
        curves: :func:`edgetrain.report.tables.training_curves` (may be empty).
        title: The page title.
        metric: The task's best metric (``val_acc``), drawn under the losses.
        mode: Its direction (``max`` or ``min``).
        best_epoch: Marked on the curves.
        intro: Small lines under the title (directory, date).
    """
    figure = Figure(figsize=PAGE_SIZE)
    figure.text(_LEFT, 0.965, title, fontsize=16, fontweight="bold", va="top")
    y = 0.915
    for line in intro:
        figure.text(_LEFT, y, line, fontsize=8, va="top", color="0.3")
        y -= 0.022
    top = y - 0.02
    heading = {"fontsize": 13, "fontweight": "bold", "va": "top", "color": "#1f3b73"}
    figure.text(_LEFT, top, KEY_FIGURES_TITLE, **heading)
    labels = [textwrap.wrap(str(item), _MAX_LABEL) or [""] for item in items["item"]]
    widest = max((len(part) for parts in labels for part in parts), default=10)
    value_x = _LEFT + (widest + 2) * _CHAR * _FONT
    chars = max(int((_TEXT_END - value_x) / (_CHAR * _FONT * 0.92)), 20)
    lines: list[tuple[str, str]] = []
    for label, value in zip(labels, items["value"], strict=True):
        wrapped = textwrap.wrap(str(value), chars, break_on_hyphens=False) or ["-"]
        rows = max(len(label), len(wrapped))
        label += [""] * (rows - len(label))
        wrapped += [""] * (rows - len(wrapped))
        lines += list(zip(label, wrapped, strict=True))
    room = top - 0.05 - 0.06  # from under the heading to the footer strip
    step = min(_FONT * 1.55 / 72 / PAGE_SIZE[1], room / max(len(lines), 1))
    size = min(_FONT, step * PAGE_SIZE[1] * 72 / 1.55)
    y = top - 0.05
    for label, value in lines:
        if label:
            figure.text(_LEFT, y, label, fontsize=size, va="top", fontweight="bold")
        if value:
            figure.text(value_x, y, value, fontsize=size, va="top")
        y -= step
    figure.text(_RIGHT_X - 0.06, top, LEARNING_CURVE_TITLE, **heading)
    if curves.empty or not curve_panels(curves, metric):
        note = "no per-epoch metrics (metrics.csv): no learning curve"
        figure.text(_RIGHT_X - 0.06, top - 0.05, note, fontsize=_FONT, va="top")
    else:
        _draw_curves(figure, curves, metric, mode, best_epoch, (_RIGHT_X, 0.09, 0.36, top - 0.16))
    return figure
