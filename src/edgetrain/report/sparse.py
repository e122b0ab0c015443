"""The sparse-update comparison report (a directory made by ``edgetrain sparse-compare``).

Reads ``results.csv`` (mean and std over seeds per scheme and budget), ``runs.csv`` (one
row per run) and, for the energy each run took, ``runs/<label>/summary.json``. Without
results.csv (a comparison stopped mid-grid) the means are computed from runs.csv.

``budget`` is written as given (see :mod:`.sparse_budget`, whose names are re-exported
here); the figures are drawn by :mod:`.sparse_figures`.

The comparison's metric is its task's best metric on the test split (``test_acc`` for
classification, ``test_rmse`` for regression, ``test_loss`` for language modelling), at
the epoch that is best on the validation split (``best_val_<m>``); names and directions
come from the columns and the runs' summary.json.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgetrain.contract import direction
from edgetrain.errors import EdgeTrainError
from edgetrain.report import sparse_figures as sfig
from edgetrain.report.labels import (
    energy_source_text,
    energy_sources_in,
    estimated_note,
    is_accuracy,
    is_estimated,
    mean_std_text,
    pretty_name,
)
from edgetrain.report.pdf import assemble, drawn_figures, save_pdf, save_pngs
from edgetrain.report.reportkind import ReportKind
from edgetrain.report.rundir import (
    is_sparse_compare_directory,
    read_csv_rows,
    read_mapping,
    require_directory,
)
from edgetrain.report.sparse_budget import BudgetAxis, budget_axis, parse_budget
from edgetrain.report.textpages import (
    LANDSCAPE,
    PORTRAIT,
    TABLE_FONT_SIZE,
    frame_sections,
    opening_sections,
    page_width_chars,
    table_pages,
    text_pages,
)
from edgetrain.report.xlsx import write_xlsx
from edgetrain.safefs import claim_dir

__all__ = [
    "RESULT_METRICS",
    "SPARSE_FIGURES",
    "SPARSE_KIND",
    "BudgetAxis",
    "SparseCompare",
    "SparseMetric",
    "budget_axis",
    "load_sparse_compare",
    "parse_budget",
    "result_metrics",
    "sparse_figure_names",
    "sparse_overview",
    "sparse_results",
    "summarize_runs",
    "write_sparse_report",
]

logger = logging.getLogger(__name__)

COST_METRICS = (
    "updated_params",
    "trainable_frac",
    "peak_train_bytes",
    "step_time_s",
    "step_cpu_s",
    "train_time_s",
    "energy_j",
)
#: The summarised columns of a classification comparison (any: :func:`result_metrics`).
RESULT_METRICS = ("test_acc", "best_val_acc", *COST_METRICS)
#: The figures of a classification comparison (any: :func:`sparse_figure_names`).
SPARSE_FIGURES = ("sparse_accuracy", "sparse_costs")
GLANCE_COLUMNS = ("scheme", "budget", "seeds", "test_acc", "trainable_frac", "energy_j")


def result_metrics(columns: Any) -> list[str]:
    """The metrics summarised over seeds: the test metric and the best validation metric
    among ``columns`` (``test_acc, best_val_acc`` for classification; ``_mean`` columns of
    a results table count too), then the costs."""
    names = [str(c).removesuffix("_mean") for c in columns if not str(c).endswith("_std")]
    tests = [c for c in dict.fromkeys(names) if c.startswith("test_")]
    best = [c for c in dict.fromkeys(names) if c.startswith("best_val_")]
    return [*tests, *best, *COST_METRICS]


_WORDS = ("scheme", "budget", "run", "energy_source")


@dataclass(frozen=True)
class SparseMetric:
    """The metric a comparison reports.

    Attributes:
        test: the test column (``test_acc``, ``test_rmse``).
        best: the validation column of the best epoch (``best_val_acc``).
        mode: ``max`` when higher is better, else ``min``.
    """

    test: str = "test_acc"
    best: str = "best_val_acc"
    mode: str = "max"

    @property
    def is_accuracy(self) -> bool:
        """Whether the metric is accuracy-like (a fraction)."""
        return is_accuracy(self.test)


@dataclass(frozen=True, eq=False)
class SparseCompare:
    """A sparse-update comparison directory, read once.

    Attributes:
        path: The comparison directory.
        results: Mean and std per (scheme, budget): results.csv, or computed from runs.csv;
            ``energy_j_mean/_std`` added from the runs' summary.json files.
        runs: One row per run (runs.csv) with ``energy_j`` and ``energy_source`` added.
        results_source: 'results.csv' or 'runs.csv' (where the means come from).
        problems: What was wrong with the files.
        task: The ``task`` section of a run's summary.json (directions of the metrics).
    """

    path: Path
    results: pd.DataFrame
    runs: pd.DataFrame
    results_source: str
    problems: tuple[str, ...] = field(default=())
    task: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> SparseMetric:
        """The test metric of the comparison and its direction (``test_acc`` when the
        tables name none)."""
        columns = [*self.results.columns, *self.runs.columns]
        metrics = result_metrics(columns)
        test = next((c for c in metrics if c.startswith("test_")), "test_acc")
        name = test.removeprefix("test_")
        best = next((c for c in metrics if c.startswith("best_val_")), f"best_val_{name}")
        mode = direction(f"val_{name}", {"task": self.task})
        return SparseMetric(test, best, mode)

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def energy_sources(self) -> list[str]:
        """The energy sources of the runs."""
        return energy_sources_in(self.runs)


def _group_keys(frame: pd.DataFrame) -> pd.Series:
    budget = frame["budget"] if "budget" in frame.columns else pd.Series(None, index=frame.index)
    return pd.Series(
        [f"{s}|{'' if pd.isna(b) else b}" for s, b in zip(frame["scheme"], budget, strict=True)],
        index=frame.index,
    )


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds per (scheme, budget), in the runs' order.

    Returns:
        Columns ``scheme, budget, seeds`` and ``<metric>_mean, <metric>_std`` for each of
        :func:`result_metrics` that the runs have.
    """
    metrics = [m for m in result_metrics(runs.columns) if m in runs.columns]
    columns = ["scheme", "budget", "seeds", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    if runs.empty or "scheme" not in runs.columns:
        return pd.DataFrame(columns=columns)
    keys = _group_keys(runs)
    rows = []
    for key in dict.fromkeys(keys):
        group = runs[keys == key]
        first = group.iloc[0]
        row: dict[str, Any] = {
            "scheme": first["scheme"],
            "budget": first.get("budget") if pd.notna(first.get("budget")) else None,
            "seeds": len(group),
        }
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _run_directory(root: Path, written: Any) -> Path | None:
    if written is None or (isinstance(written, float) and math.isnan(written)):
        return None
    path = Path(str(written))
    for candidate in (path, root / path, root / "runs" / path.name):
        if (candidate / "summary.json").is_file():
            return candidate
    return None


def _add_energy(
    root: Path, runs: pd.DataFrame, problems: list[str], task: dict[str, Any] | None = None
) -> pd.DataFrame:
    """``energy_j`` and ``energy_source`` of each run from its summary.json (NaN when absent);
    the first ``task`` section found goes into ``task``."""
    runs = runs.copy()
    energy, sources, missing = [], [], 0
    for written in runs.get("run", pd.Series([None] * len(runs))):
        directory = _run_directory(root, written)
        summary = read_mapping(directory / "summary.json", problems) if directory else {}
        if task is not None and not task and isinstance(summary.get("task"), dict):
            task.update(summary["task"])
        value = summary.get("total_energy_j")
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        missing += not ok
        energy.append(float(value) if ok else np.nan)
        sources.append(summary.get("energy_source") if ok else None)
    if "energy_j" not in runs.columns:
        runs["energy_j"] = energy
    if "energy_source" not in runs.columns:
        runs["energy_source"] = sources
    if missing and missing < len(runs):
        problems.append(f"{missing} run(s) have no summary.json with energy; left out of energy")
    return runs


def load_sparse_compare(path: Path | str) -> SparseCompare:
    """Read a sparse-update comparison directory.

    Raises:
        EdgeTrainError: if it has neither results.csv nor runs.csv.
    """
    path = require_directory(path)
    if not ((path / "results.csv").is_file() or (path / "runs.csv").is_file()):
        raise EdgeTrainError(
            f"{path} is not a sparse-update comparison (no results.csv or runs.csv)"
        )
    problems: list[str] = []
    task: dict[str, Any] = {}
    runs = read_csv_rows(path / "runs.csv", (), problems, words=_WORDS)
    if not runs.empty and "scheme" in runs.columns:
        runs = _add_energy(path, runs, problems, task)
    results = read_csv_rows(path / "results.csv", (), problems, words=_WORDS)
    source = "results.csv"
    if results.empty or "scheme" not in results.columns:
        results, source = summarize_runs(runs), "runs.csv"
        if not results.empty:
            problems.append("no results.csv (stopped mid-grid?): means computed from runs.csv")
    elif not runs.empty and "energy_j" in runs.columns and "energy_j_mean" not in results:
        energy = summarize_runs(runs[["scheme", "budget", "energy_j"]])
        keys = _group_keys(energy)
        by_key = {k: row for k, (_, row) in zip(keys, energy.iterrows(), strict=True)}
        result_keys = _group_keys(results)
        for stat in ("mean", "std"):
            results[f"energy_j_{stat}"] = [
                by_key[k][f"energy_j_{stat}"] if k in by_key else np.nan for k in result_keys
            ]
    if results.empty:
        raise EdgeTrainError(f"{path}: results.csv and runs.csv hold no runs yet")
    return SparseCompare(path, results, runs, source, tuple(problems), task)


# -- tables -------------------------------------------------------------------------------


def sparse_results(sc: SparseCompare) -> pd.DataFrame:
    """The results with the budget parsed: ``scheme, budget, budget_value, budget_kind,
    seeds`` then ``<metric>_mean, <metric>_std`` for the metrics present."""
    results = sc.results.drop(columns=["budget_value", "budget_kind"], errors="ignore")
    if "budget" not in results.columns:
        results["budget"] = None
    parsed = [parse_budget(b) for b in results["budget"]]
    results.insert(2, "budget_value", [value for value, _ in parsed])
    results.insert(3, "budget_kind", [kind for _, kind in parsed])
    return results.reset_index(drop=True)


def sparse_overview(sc: SparseCompare) -> pd.DataFrame:
    """The title page as rows ``key, value`` (text)."""
    results = sparse_results(sc)
    schemes = list(dict.fromkeys(results["scheme"].astype(str)))
    budgets = list(dict.fromkeys(str(b) for b in results["budget"] if pd.notna(b)))
    seeds = results["seeds"].dropna().astype(int) if "seeds" in results.columns else []
    seed_text = (
        "-"
        if len(seeds) == 0
        else str(seeds.iloc[0])
        if seeds.nunique() == 1
        else f"{seeds.min()} to {seeds.max()}"
    )
    rows = [
        ("directory", str(sc.path.resolve())),
        ("schemes", ", ".join(schemes)),
        ("budgets", ", ".join(budgets) or "(none: only unbudgeted schemes)"),
        ("seeds per configuration", seed_text),
        ("configurations", str(len(results))),
        ("runs", str(len(sc.runs)) if not sc.runs.empty else "(no runs.csv)"),
        ("means from", sc.results_source),
        ("energy source", energy_source_text(sc.energy_sources)),
        _metric_note(sc.metric),
        ("updated parameters", "mean number of parameters updated per step"),
        (
            "peak training memory",
            "parameters + gradients + optimizer state + saved activations, peak over steps",
        ),
        ("step time", "median compute time of a training step, the first step excluded"),
        ("energy", "total energy of the run (its summary.json)"),
    ]
    return pd.DataFrame(rows, columns=["key", "value"])


def _metric_note(metric: SparseMetric) -> tuple[str, str]:
    """The overview's line on the metric: 'test accuracy: at the epoch with ...'."""
    if metric.test == "test_acc":
        return "test accuracy", "at the epoch with the best validation accuracy (first such epoch)"
    best = pretty_name(metric.best.removeprefix("best_"))
    way = "highest" if metric.mode == "max" else "lowest"
    return pretty_name(metric.test), f"at the epoch with the best {best} ({way}; first such epoch)"


def sparse_figure_names(sc: SparseCompare) -> tuple[str, str]:
    """The figures: ``sparse_accuracy`` (``sparse_<test metric>`` for another metric) and
    ``sparse_costs``."""
    metric = sc.metric
    first = "sparse_accuracy" if metric.test == "test_acc" else f"sparse_{metric.test}"
    return first, "sparse_costs"


def _results_text(results: pd.DataFrame) -> pd.DataFrame:
    """Results for the PDF: one 'mean ± std' column per metric."""
    shown = results[["scheme", "budget", "seeds"]].copy()
    shown["budget"] = shown["budget"].map(lambda b: "-" if pd.isna(b) else str(b))
    for metric in result_metrics(results.columns):
        if f"{metric}_mean" not in results.columns or results[f"{metric}_mean"].isna().all():
            continue
        std = results.get(f"{metric}_std", pd.Series(np.nan, index=results.index))
        shown[metric] = [
            mean_std_text(metric, m, s) for m, s in zip(results[f"{metric}_mean"], std, strict=True)
        ]
    return shown


# -- the report ---------------------------------------------------------------------------


def write_sparse_report(sc: SparseCompare, out: Path) -> list[str]:
    """Write PNGs, ``report.pdf`` and ``report.xlsx`` for a comparison into ``out``.

    Returns:
        The title of every PDF page, in order.
    """
    claim_dir(out, "report", reuse=True, what="report directory")
    results = sparse_results(sc)
    axis = budget_axis(results)
    sources = sc.energy_sources
    names = sparse_figure_names(sc)
    drawn = {
        names[0]: sfig.accuracy_figure(results, sc.runs, axis, sc.name, sc.metric.mode),
        names[1]: sfig.costs_figure(results, axis, sc.name, sources),
    }
    figures = drawn_figures(drawn, names, sc.path)
    save_pngs(figures, names, out)

    overview = sparse_overview(sc)
    width = page_width_chars(PORTRAIT)
    pairs = zip(overview["key"], overview["value"], strict=True)
    sections = opening_sections("Comparison", pairs, sc.problems, width)
    glance = _results_text(results)
    wanted = [sc.metric.test if c == "test_acc" else c for c in GLANCE_COLUMNS]
    glance = glance[[c for c in wanted if c in glance.columns]]
    note = " (energy estimated)" if is_estimated(sources) else ""
    sections += frame_sections(glance, f"Results at a glance: mean ± std over seeds{note}", width)
    title = f"Sparse-update comparison: {sc.name}"
    front = text_pages(sections, title, intro=[f"directory: {sc.path.resolve()}"])
    wide = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    back_sections = frame_sections(
        _results_text(results),
        f"Mean ± std over seeds per scheme and budget{estimated_note(sources)}",
        wide,
    )
    if not sc.runs.empty:
        runs = sc.runs.drop(columns=["run"], errors="ignore")
        back_sections += frame_sections(runs, "Every run (runs.csv)", wide, 400)
    back = table_pages(back_sections, f"Tables: {sc.name}")
    pages, names = assemble(("title", front), figures, ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain sparse-compare: {sc.name}")
    write_xlsx({"overview": overview, "results": results, "runs": sc.runs}, out / "report.xlsx")
    return names


def report_sparse_directory(path: Path, out: Path) -> list[str]:
    """Read the sparse-update comparison ``path`` and write its report into ``out``."""
    return write_sparse_report(load_sparse_compare(path), out)


SPARSE_KIND = ReportKind(
    name="sparse-compare",
    description=(
        "a sparse-update comparison from `edgetrain sparse-compare` "
        "(results.csv or runs.csv with a scheme column)"
    ),
    detect=is_sparse_compare_directory,
    write=report_sparse_directory,
)
