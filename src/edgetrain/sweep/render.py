"""Rich tables for the CLI: a sweep's outcome, its analysis, the final run."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.console import Group
from rich.table import Table

from edgetrain.sweep.analysis import Analysis
from edgetrain.sweep.final import FinalResult
from edgetrain.sweep.objectives import Objective, efficiency_column, parse_objective
from edgetrain.sweep.runner import SweepResult

__all__ = ["render_analysis", "render_final", "render_sweep"]


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render_sweep(result: SweepResult) -> Table:
    """Where the study stands after ``sweep run``."""
    c = result.counts
    table = Table(title=f"study '{result.study_name}'", show_header=False, box=None)
    table.add_row("trials wanted", str(result.target))
    table.add_row("completed", str(c.complete))
    table.add_row("failed", str(c.failed))
    if c.not_counted:
        table.add_row("lost/interrupted/killed/refused (replaced, not counted)", str(c.not_counted))
    if result.recovered:
        table.add_row(
            "recovered from trial directories", ", ".join(str(n) for n in result.recovered)
        )
    if c.running:
        table.add_row("running (other workers)", str(c.running))
    table.add_row("run by this command", f"{len(result.records)} in {result.wall_s:.1f} s")
    table.add_row("storage", result.storage)
    table.add_row("directory", str(result.sweep_dir))
    for r in result.records:
        if r.state != "complete" and r.error:
            table.add_row(f"trial {r.number} {r.state}", r.error)
    return table


def _params_text(row: pd.Series, params: list[str]) -> str:
    return " ".join(f"{p}={_fmt(row[f'param_{p}'])}" for p in params)


def _name(column: str) -> str:
    """'val RMSE', 'val accuracy', 'test perplexity' (report.labels, imported when used)."""
    from edgetrain.report.labels import pretty_name

    return pretty_name(column)


def _per_kj_header(column: str) -> str:
    """'acc/kJ' for accuracy, 'r2/kJ' for another metric."""
    name = column.removeprefix("val_")
    return f"{name}/kJ"


def _trial_table(
    title: str,
    frame: pd.DataFrame,
    params: list[str],
    rows: int = 5,
    metric: Objective | None = None,
) -> Table:
    metric = metric or parse_objective("accuracy")
    per_kj = efficiency_column(metric.column, metric.mode)
    table = Table(title=title, title_justify="left")
    headers = ["trial", metric.column, "energy J", "power W"]
    if per_kj is not None:
        headers.append(_per_kj_header(metric.column))
    for col in headers:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("parameters", overflow="fold")
    for _, r in frame.head(rows).iterrows():
        cells = [
            _fmt(r["number"]),
            _fmt(r.get(metric.column), ".4f"),
            _fmt(r["energy_j"], ".4g"),
            _fmt(r["avg_power_w"], ".3g"),
        ]
        if per_kj is not None:
            cells.append(_fmt(r.get(per_kj), ".4g"))
        table.add_row(*cells, _params_text(r, params))
    return table


def render_analysis(analysis: Analysis) -> Group:
    """Top trials by the metric, energy and efficiency, the Pareto front and the drivers."""
    t = analysis.tables
    params = list(analysis.space.params)
    metric = analysis.metric
    target = metric.target
    if target == "accuracy":
        best_title, what = "best validation accuracy", "accuracy"
    else:
        what = _name(metric.column)
        best_title = f"best {what} ({'highest' if metric.mode == 'max' else 'lowest'})"
    parts: list[Any] = [
        _trial_table(best_title, t[f"top_{target}"], params, metric=metric),
        _trial_table("lowest energy", t["top_energy"], params, metric=metric),
    ]
    if "top_efficiency" in t:
        parts.append(
            _trial_table(f"best {what} per kJ", t["top_efficiency"], params, metric=metric)
        )
    parts.append(
        _trial_table(
            f"Pareto front ({what} vs energy; knee: trial {analysis.knee_number})",
            t["pareto"],
            params,
            rows=10,
            metric=metric,
        )
    )
    imp = Table(
        title=f"what drives energy and {what} (fANOVA importance; Kruskal-Wallis ε²)",
        title_justify="left",
    )
    for col in ("parameter", "energy", "ε²", "best", what, "ε²", "best"):
        imp.add_column(col, overflow="fold")
    frame = t["importance"]

    def row(target: str, name: str) -> pd.Series:
        sel = frame[(frame["target"] == target) & (frame["parameter"] == name)]
        return sel.iloc[0] if len(sel) else pd.Series(dtype=object)

    energy_order = frame[frame["target"] == "energy"].sort_values("rank")["parameter"]
    for name in energy_order:
        e, a = row("energy", name), row(target, name)
        imp.add_row(
            name,
            _fmt(e.get("fanova_importance"), ".2f"),
            _fmt(e.get("epsilon_sq"), ".2f"),
            _fmt(e.get("best_value")),
            _fmt(a.get("fanova_importance"), ".2f"),
            _fmt(a.get("epsilon_sq"), ".2f"),
            _fmt(a.get("best_value")),
        )
    parts.append(imp)
    s = analysis.summary
    notes = [f"energy source: {', '.join(s['energy_sources']) or 'none'}"]
    if s.get("energy_estimated"):
        notes.append("energy is an estimate, not a measurement")
    if (s.get("max_concurrent_trials") or 1) > 1:
        notes.append(
            f"up to {s['max_concurrent_trials']} trials ran at once on a device: each trial's "
            "energy includes the others' load"
        )
    if s.get("vary_data"):
        notes.append("the space varied data keys: trials were validated on different samples")
    parts.append("; ".join(notes))
    if analysis.out_dir is not None:
        parts.append(f"tables: {analysis.out_dir} (results.xlsx and CSV)")
    return Group(*parts)


def render_final(result: FinalResult) -> Table:
    """The final run's test metrics and cost."""
    r = result.report
    table = Table(title=f"final training (pick: {result.pick})", show_header=False, box=None)
    table.add_row(
        "trial", "per-parameter best values" if result.trial is None else str(result.trial)
    )
    for k, v in result.params.items():
        table.add_row(f"  {k}", _fmt(v))
    table.add_row("epochs", _fmt(r.get("epochs")))
    metric = r.get("metric") or "val_acc"
    first = "test_" + metric.removeprefix("val_")
    tests = [k for k in r if k.startswith("test_")]
    tests.sort(key=lambda k: (k != first, k == "test_loss"))  # the sweep's metric first
    for key in tests:
        table.add_row(_name(key), _fmt(r.get(key), ".4f"))
    if r.get(metric) is not None:
        table.add_row(_name(metric).replace("val ", "validation ", 1), _fmt(r[metric], ".4f"))
    table.add_row("energy", f"{_fmt(r.get('energy_j'), '.1f')} J ({r.get('energy_source') or '-'})")
    table.add_row("average power", f"{_fmt(r.get('avg_power_w'), '.1f')} W")
    q = r.get("quantized")
    if q:
        table.add_row("int8 test accuracy", _fmt(q.get("test_acc"), ".4f"))
        table.add_row("model size", f"{q['float_bytes']} B float, {q['quantized_bytes']} B int8")
    table.add_row("run directory", str(result.run_dir))
    return table
