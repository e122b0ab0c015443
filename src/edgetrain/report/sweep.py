"""The sweep report: reads ``DIR/analysis/`` (from ``edgetrain sweep analyze``) and the trials.

The analysis tables are the input: parameter importance needs Optuna's fANOVA, which the
report does not run (it reads files only), so a sweep without ``analysis/`` is refused
with the command that makes it. Every analysis file but ``trials.csv`` may be missing;
the tables and figures made from it are then left out.

The directory is read by :mod:`.sweep_data`, its tables made by :mod:`.sweep_stats` and
drawn by :mod:`.sweep_figures`; this module lays out the pages and re-exports the names
of the other three that it has always offered.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.report import figures as fig
from edgetrain.report import sweep_figures as sfig
from edgetrain.report.correlation import MIN_POINTS
from edgetrain.report.epoch_tables import energy_per_epoch, training_curves
from edgetrain.report.labels import estimated_note
from edgetrain.report.pdf import assemble, drawn_figures, save_pdf, save_pngs
from edgetrain.report.reportkind import ReportKind
from edgetrain.report.rundir import is_sweep_directory, load_run
from edgetrain.report.sweep_data import ANALYSIS_TABLES, Sweep, analysis_tables, load_sweep
from edgetrain.report.sweep_stats import (
    TOP_DISPLAY,
    TOP_TITLES,
    best_trial,
    best_trial_reason,
    best_trials,
    completed_table,
    failed_trials,
    importance_bars,
    metric_words,
    parameter_effects,
    parameter_groups,
    parameter_kinds,
    pareto_front,
    pareto_points,
    sweep_overview,
    top_table,
    top_titles,
    trial_counts,
)
from edgetrain.report.textpages import (
    LANDSCAPE,
    PORTRAIT,
    TABLE_FONT_SIZE,
    Section,
    frame_sections,
    key_value_lines,
    page_width_chars,
    table_pages,
    text_pages,
)
from edgetrain.report.xlsx import with_numbers, write_xlsx
from edgetrain.safefs import claim_dir

__all__ = [
    "ANALYSIS_TABLES",
    "ANSWER_HEADING",
    "SWEEP_FIGURES",
    "SWEEP_KIND",
    "TOP_DISPLAY",
    "TOP_TITLES",
    "Sweep",
    "best_trial",
    "best_trials",
    "failed_trials",
    "importance_bars",
    "load_sweep",
    "parameter_effects",
    "parameter_groups",
    "parameter_kinds",
    "pareto_front",
    "pareto_points",
    "sweep_figure_names",
    "sweep_overview",
    "top_table",
    "trial_counts",
    "write_sweep_report",
]

logger = logging.getLogger(__name__)

#: The figures of a sweep ranked by accuracy (any sweep's: :func:`sweep_figure_names`).
SWEEP_FIGURES = (
    "sweep_pareto",
    "sweep_importance",
    "sweep_energy_by_parameter",
    "sweep_accuracy_by_parameter",
    "best_trial_curves",
    "best_trial_energy",
)


def sweep_figure_names(sweep: Sweep) -> tuple[str, ...]:
    """The figures of a sweep, in report order: the metric's distribution figure is
    ``sweep_<target>_by_parameter`` (``sweep_accuracy_by_parameter``)."""
    target = sweep.metric.target
    return tuple(
        f"sweep_{target}_by_parameter" if name == "sweep_accuracy_by_parameter" else name
        for name in SWEEP_FIGURES
    )


def _targets(sweep: Sweep) -> list[str]:
    objectives = [str(o) for o in sweep.summary.get("objectives") or []]
    efficiency = "efficiency" in objectives and sweep.metric.efficiency
    return ["energy", sweep.metric.target] + (["efficiency"] if efficiency else [])


def sweep_figures(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The figures that have data, by name, in report order."""
    sources = sweep.energy_sources
    metric = sweep.metric
    drawn: dict[str, Any] = {
        "sweep_pareto": sfig.pareto_figure(
            tables["pareto_points"], sweep.name, sources, metric.column, metric.mode
        ),
        "sweep_importance": sfig.importance_figure(
            {t: tables[f"importance_{t}"] for t in _targets(sweep)},
            sweep.name,
            metric_words(metric)[2],
            len(tables["pareto_points"]),
        ),
        "sweep_energy_by_parameter": sfig.effects_figure(
            tables["parameter_effects"], "energy_j", sweep.name, sources
        ),
        f"sweep_{metric.target}_by_parameter": sfig.effects_figure(
            tables["parameter_effects"], metric.column, sweep.name, sources
        ),
    }
    number, run_dir = best_trial(sweep)
    if run_dir is not None:
        run = load_run(run_dir)
        label = f"{sweep.name}, trial {number} ({best_trial_reason(sweep)})"
        drawn["best_trial_curves"] = fig.training_curves_figure(training_curves(run), label)
        drawn["best_trial_energy"] = fig.energy_figure(energy_per_epoch(run), label)
    elif number is not None:
        logger.info("trial %s: run directory not found; its curves are left out", number)
    return drawn_figures(drawn, sweep_figure_names(sweep), sweep.path)


def sweep_tables(sweep: Sweep) -> dict[str, pd.DataFrame]:
    """Every table of the sweep report, by name."""
    effects = parameter_effects(sweep)
    tables = {
        "overview": sweep_overview(sweep),
        "pareto_points": pareto_points(sweep),
        "parameter_effects": effects,
        "parameter_groups": parameter_groups(effects),
        "failed": failed_trials(sweep),
    }
    for target in dict.fromkeys(("energy", sweep.metric.target, "efficiency")):
        tables[f"importance_{target}"] = importance_bars(sweep, target)
    for name in top_titles(sweep.metric):
        tables[name] = top_table(sweep, name)
    return tables


def _short(value: Any) -> Any:
    """A number written as text ('0.0022852451802558636') shortened to 4 digits for the PDF."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number) or number == int(number):
        return value
    return f"{number:.4g}"


def _for_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns with their numbers shortened (the workbook keeps every digit)."""
    shown = frame.copy()
    for column in shown.columns:
        if not pd.api.types.is_numeric_dtype(shown[column]):
            shown[column] = shown[column].map(_short)
    return shown


#: The heading of the sweep report's first section: the best trials.
ANSWER_HEADING = "Best trials"


def _front_sections(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> list[Section]:
    """Page 1: the best trials (the answer) and the Pareto front, then the study."""
    width = page_width_chars(PORTRAIT)
    note = estimated_note(sweep.energy_sources)
    best = best_trials(sweep)
    merged: dict[int, tuple[list[str], str]] = {}
    for label, number, text in best.itertuples(index=False):
        merged.setdefault(int(number), ([], text))[0].append(label)
    pairs = [(" = ".join(labels), text) for labels, text in merged.values()]
    lines = key_value_lines(pairs, width, max_key=16)  # merged labels take their own line
    sections = [Section(f"{ANSWER_HEADING}{note}", lines or ["(none)"])]
    front = pareto_front(sweep)
    if not front.empty:
        count = f"{len(front)} trial{'s' if len(front) != 1 else ''}"
        heading = f"Pareto front: no trial is both better and cheaper ({count})"
        sections += frame_sections(_for_text(front), heading, width)
    overview = sweep_overview(sweep, picks=False)
    pairs = list(zip(overview["key"], overview["value"], strict=True))
    done = len(tables["pareto_points"])
    if done < MIN_POINTS:
        pairs.append(
            (
                "scatter plots",
                f"none: {done} completed trials, fewer than {MIN_POINTS}; the Pareto front "
                "is the table above, numeric parameters are shown as ranked trials",
            )
        )
    sections.append(Section("Study", key_value_lines(pairs, width)))
    if sweep.problems:
        sections.append(Section("Notes on the input files", [f"- {p}" for p in sweep.problems]))
    values = sweep.tables["best_values"]
    if not values.empty:
        shown = _for_text(values).rename(columns=lambda c: c.removeprefix("best_for_"))
        sections += frame_sections(shown, "Best value of each parameter, per target", width)
    failed = tables["failed"]
    if not failed.empty:
        sections += frame_sections(failed, "Trials that did not complete", width, 60)
    return sections


def _table_sections(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    note = estimated_note(sweep.energy_sources)
    sections = []
    for name, title in top_titles(sweep.metric).items():
        top = tables[name]
        count = f"Top {len(top)} trials" if len(top) else "Top trials"
        heading = f"{count}: {title}{note}"
        sections += frame_sections(_for_text(top), heading, width)
    return sections


def _appendix_sections(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    sections = []
    importance = sweep.tables["importance"]
    if not importance.empty:
        keep = [
            c
            for c in (
                "target",
                "parameter",
                "rank",
                "fanova_importance",
                "epsilon_sq",
                "kruskal_p",
                "n_groups",
                "n_trials",
                "best_value",
            )
            if c in importance.columns
        ]
        sections += frame_sections(_for_text(importance[keep]), "Parameter importance", width)
    note = estimated_note(sweep.energy_sources)
    trials = _for_text(completed_table(sweep))
    sections += frame_sections(trials, f"All completed trials{note}", width, 300)
    return sections


def write_sweep_report(sweep: Sweep, out: Path) -> list[str]:
    """Write PNGs, ``report.pdf`` and ``report.xlsx`` for a sweep into ``out``.

    Returns:
        The title of every PDF page, in order.
    """
    claim_dir(out, "report", reuse=True, what="report directory")
    tables = sweep_tables(sweep)
    drawn = sweep_figures(sweep, tables)
    save_pngs(drawn, sweep_figure_names(sweep), out)
    title = f"Sweep report: {sweep.name}"
    intro = [f"sweep directory: {sweep.path.resolve()}", f"analysis: {sweep.analysis_dir}"]
    front = text_pages(_front_sections(sweep, tables), title, intro=intro)
    tops = table_pages(_table_sections(sweep, tables), f"Top trials: {sweep.name}")
    back = table_pages(_appendix_sections(sweep, tables), f"Tables: {sweep.name}")
    pages, names = assemble(("title", front), drawn, ("top trials", tops), ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain sweep report: {sweep.name}")
    sheets = {
        "overview": tables["overview"],
        **{name: sweep.tables[name] for name in analysis_tables(sweep.metric)},
        "pareto_points": tables["pareto_points"],
        "parameter_effects": tables["parameter_effects"],
        "parameter_groups": tables["parameter_groups"],
    }
    write_xlsx({name: with_numbers(frame) for name, frame in sheets.items()}, out / "report.xlsx")
    return names


def report_sweep_directory(path: Path, out: Path) -> list[str]:
    """Read the sweep directory ``path`` (or its analysis) and write its report into ``out``."""
    return write_sweep_report(load_sweep(path), out)


SWEEP_KIND = ReportKind(
    name="sweep",
    description="a sweep directory (sweep.json, space.yaml or analysis/trials.csv)",
    detect=is_sweep_directory,
    write=report_sweep_directory,
)
