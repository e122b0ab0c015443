"""Several runs side by side: overlaid curves, one totals row per run, config differences."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from edgetrain.errors import EdgeTrainError
from edgetrain.report import compare_figures as cfig
from edgetrain.report import tables as tab
from edgetrain.report.labels import format_value, is_accuracy, pretty_name
from edgetrain.report.pdf import assemble, drawn_figures, save_pdf, save_pngs
from edgetrain.report.reportkind import ReportKind
from edgetrain.report.rundir import Run, is_run_directory, load_run, require_directory
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
from edgetrain.report.xlsx import write_xlsx
from edgetrain.safefs import claim_dir

__all__ = [
    "ANSWER_HEADING",
    "COMPARE_KIND",
    "best_runs",
    "compare_columns",
    "compare_curves",
    "compare_metric",
    "compare_runs",
    "compare_totals",
    "config_differences",
    "run_children",
    "run_labels",
]

logger = logging.getLogger(__name__)

#: The curves of classification runs; any runs' are :func:`compare_columns`.
CURVE_COLUMNS = ("train_loss", "val_loss", "train_acc", "val_acc", "time_s", "energy_j")
COMPARE_FIGURES = ("comparison_totals", "comparison_curves", "comparison_energy")
#: The heading of the comparison's first section: which run is best, by what.
ANSWER_HEADING = "Which run is best"


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Directory names, made unique: 'a/run' and 'b/run', then 'run (2)' if still equal."""
    names = [Path(p).name for p in paths]
    counts = Counter(names)
    labels = [
        f"{Path(p).parent.name}/{name}" if counts[name] > 1 else name
        for p, name in zip(paths, names, strict=True)
    ]
    seen: Counter[str] = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def run_children(path: Path | str) -> list[Path]:
    """The run directories directly inside ``path``, sorted by name."""
    path = require_directory(path)
    return [child for child in sorted(path.iterdir()) if child.is_dir() and is_run_directory(child)]


def compare_columns(runs: Sequence[Run]) -> list[str]:
    """The per-epoch columns compared: losses, the runs' metrics, time and energy."""
    quality = [c for run in runs for c in run.quality_columns]
    ordered = [c for c in quality if c.startswith("train_")] + [
        c for c in quality if c.startswith("val_")
    ]
    return ["train_loss", "val_loss", *dict.fromkeys(ordered), "time_s", "energy_j"]


def compare_metric(runs: Sequence[Run]) -> str:
    """The metric the runs are compared by: their tasks' best metric (the most common one;
    ``val_acc`` for classification runs)."""
    metrics = [run.best_metric[0] for run in runs]
    return max(dict.fromkeys(metrics), key=metrics.count) if metrics else "val_acc"


def compare_curves(runs: Sequence[Run], labels: Sequence[str]) -> pd.DataFrame:
    """Long table ``run, epoch, <curve columns>``: one row per run and epoch."""
    parts = []
    columns = compare_columns(runs)
    for run, label in zip(runs, labels, strict=True):
        part = run.metrics[["epoch", *[c for c in columns if c in run.metrics.columns]]].copy()
        energy = tab.energy_per_epoch(run)  # falls back to resources.csv when metrics lack energy
        if "energy_j" in energy.columns:
            part["energy_j"] = energy["energy_j"].to_numpy()
        part.insert(0, "run", label)
        parts.append(part)
    curves = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "epoch"])
    )
    keep = ["run", "epoch", *[c for c in columns if c in curves and curves[c].notna().any()]]
    return curves[keep]


def compare_totals(runs: Sequence[Run], labels: Sequence[str]) -> pd.DataFrame:
    """One row per run with the values of :func:`~edgetrain.report.tables.run_totals`."""
    rows = [{"run": label, **tab.run_totals(run)} for run, label in zip(runs, labels, strict=True)]
    return pd.DataFrame(rows)


def config_differences(runs: Sequence[Run], labels: Sequence[str]) -> pd.DataFrame:
    """Configuration keys whose values differ between runs: ``key`` and one column per run."""
    flats = [tab.flatten_mapping(run.config) for run in runs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = [
        {
            "key": key,
            **{label: flat.get(key, "(absent)") for label, flat in zip(labels, flats, strict=True)},
        }
        for key in keys
        if len({flat.get(key, "(absent)") for flat in flats}) > 1
    ]
    return pd.DataFrame(rows, columns=["key", *labels])


def _ranking(
    totals: pd.DataFrame, column: str, mode: str, text: Callable[[pd.Series], str]
) -> tuple[str, str] | None:
    """(best run, 'run: value; then run value, ...') by ``column``, or None without data."""
    known = totals[totals[column].notna()] if column in totals.columns else totals.iloc[0:0]
    if known.empty:
        return None
    ranked = known.sort_values(column, ascending=mode != "max", kind="stable")
    rows = list(ranked.iterrows())
    first = rows[0][1]
    line = f"{first['run']}: {text(first)}"
    if len(rows) > 1:
        line += "; then " + ", ".join(f"{row['run']} {text(row)}" for _, row in rows[1:])
    missing = len(totals) - len(known)
    if missing:
        line += f" ({missing} run(s) without it)"
    return str(first["run"]), line


def best_runs(totals: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The answer of a comparison: the best run by the runs' metric (best epoch), by the
    test metric, by energy and by time, each with the others in order.

    Args:
        totals: :func:`compare_totals`.
        metric: The metric the runs are compared by (``val_acc``).
        mode: Its direction (``max`` or ``min``).

    Returns:
        Rows ``best_by, run, text``.
    """
    rows = []
    better = "" if is_accuracy(metric) else f" ({'highest' if mode == 'max' else 'lowest'})"

    def best_text(row: pd.Series) -> str:
        epoch = row.get("best_epoch")
        at = f" at epoch {epoch:.0f}" if pd.notna(epoch) else ""
        return f"{format_value(metric, row[f'best_{metric}'])}{at}"

    picks: list[tuple[str, str, str, Callable[[pd.Series], str]]] = [
        (f"best {pretty_name(metric)}{better}", f"best_{metric}", mode, best_text)
    ]
    name = metric.split("_", 1)[1] if "_" in metric else metric
    test = f"test_{name}"
    if test in totals.columns and test != f"best_{metric}":
        picks.append(
            (
                f"{pretty_name(test)}{better}",
                test,
                mode,
                lambda row: format_value(test, row[test]),
            )
        )

    def energy_text(row: pd.Series) -> str:
        estimated = str(row.get("energy_source") or "").startswith("estimated")
        return f"{row['total_energy_j']:,.1f} J" + (" (est.)" if estimated else "")

    picks.append(("lowest energy", "total_energy_j", "min", energy_text))
    picks.append(
        (
            "shortest wall time",
            "wall_time_s",
            "min",
            lambda row: tab.total_text("wall_time_s", row["wall_time_s"]),
        )
    )
    for label, column, direction, text in picks:
        ranked = _ranking(totals, column, direction, text)
        if ranked is not None:
            rows.append({"best_by": label, "run": ranked[0], "text": ranked[1]})
    sources = {str(s) for s in totals.get("energy_source", pd.Series(dtype=object)).dropna()}
    if len(sources) > 1:
        rows.append(
            {
                "best_by": "energy caution",
                "run": "",
                "text": "the runs' energy comes from different sources ("
                + ", ".join(sorted(sources))
                + "): compare it with care",
            }
        )
    return pd.DataFrame(rows, columns=["best_by", "run", "text"])


def _totals_by_quantity(
    totals: pd.DataFrame, directions: dict[str, str] | None = None
) -> pd.DataFrame:
    """Totals turned sideways for reading: one row per quantity, one column per run."""
    rows = []
    for key, label, _ in tab.total_rows(totals.columns, directions):
        if key not in totals.columns or totals[key].isna().all():
            continue
        row = {"quantity": label}
        for run, value, source in zip(
            totals["run"], totals[key], totals["energy_source"], strict=True
        ):
            text = tab.total_text(key, value) if pd.notna(value) else "-"
            if pd.notna(value) and key in tab.ENERGY_KEYS and str(source).startswith("estimated"):
                text += " (est.)"
            row[str(run)] = text
        rows.append(row)
    return pd.DataFrame(rows, columns=["quantity", *totals["run"].astype(str)])


def compare_runs(paths: Sequence[Path | str], out: Path | str | None = None) -> Path:
    """Compare runs: PNGs, ``report.pdf`` and ``report.xlsx`` in one directory.

    Args:
        paths: Two or more run directories.
        out: Where to write; default ``<first run's parent>/comparison/``.

    Returns:
        The output directory.

    Raises:
        EdgeTrainError: if fewer than two runs are given or one is not a run directory.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise EdgeTrainError(f"comparing runs needs at least 2 run directories, got {len(paths)}")
    runs = [load_run(p) for p in paths]
    labels = run_labels(paths)
    out = Path(out) if out is not None else paths[0].resolve().parent / "comparison"
    try:
        _write_comparison(runs, labels, out)
    except OSError as exc:
        raise EdgeTrainError(f"cannot write the comparison into {out}: {exc}") from exc
    return out


def _write_comparison(runs: list[Run], labels: list[str], out: Path) -> None:
    """Write the comparison's PNGs, PDF and workbook into ``out``."""
    claim_dir(out, "report", reuse=True, what="report directory")

    curves = compare_curves(runs, labels)
    totals = compare_totals(runs, labels)
    differences = config_differences(runs, labels)
    metric = compare_metric(runs)
    directions = {c: run.direction(c) for run in runs for c in run.metrics.columns}
    quality = [c for c in curves.columns if c.startswith("val_") and c not in (metric, "val_loss")]
    shown = [metric, *quality, "train_loss"]
    what = pretty_name(metric).removeprefix("val " if is_accuracy(metric) else "")
    curves_title = (
        f"Comparison: {what} and loss per epoch"
        if metric != "val_loss"
        else "Comparison: losses and metrics per epoch"
    )
    estimated = [
        label
        for label, source in zip(labels, totals["energy_source"], strict=True)
        if str(source).startswith("estimated")
    ]
    drawn = {
        "comparison_curves": cfig.overlay_figure(curves, shown, curves_title),
        "comparison_energy": cfig.overlay_figure(
            curves,
            ["energy_j", "time_s"],
            "Comparison: energy and time per epoch",
            notes={"energy_j": f"estimated for: {', '.join(estimated)}"} if estimated else None,
        ),
        "comparison_totals": cfig.totals_figure(
            totals, "Comparison: totals per run", metric, directions.get(metric, "min")
        ),
    }
    figures = drawn_figures(drawn, COMPARE_FIGURES, out)
    save_pngs(figures, COMPARE_FIGURES, out)

    width = page_width_chars(PORTRAIT)
    runs_lines = key_value_lines(
        [(label, f"{run.path.resolve()}") for label, run in zip(labels, runs, strict=True)], width
    )
    answer = best_runs(totals, metric, directions.get(metric, "min"))
    pairs = zip(answer["best_by"], answer["text"], strict=True)
    front_sections = [Section(ANSWER_HEADING, key_value_lines(pairs, width) or ["(no totals)"])]
    front_sections += frame_sections(_totals_by_quantity(totals, directions), "Totals", width)
    front_sections += (
        frame_sections(differences, "Configuration differences", width)
        if not differences.empty
        else [Section("Configuration differences", ["(the configurations are identical)"])]
    )
    front_sections.append(Section("Runs", runs_lines))
    title = f"Comparison of {len(runs)} runs"
    front = text_pages(front_sections, title, intro=[f"output: {out.resolve()}"])
    back = table_pages(
        frame_sections(curves, "Per-epoch values", page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)),
        "Tables: comparison",
    )
    pages, _ = assemble(("title", front), figures, ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer="edgetrain comparison")
    write_xlsx(
        {
            "best": answer,
            "totals": totals,
            "curves": curves,
            "config_differences": differences,
        },
        out / "report.xlsx",
    )


def holds_runs(path: Path) -> bool:
    """Whether ``path`` holds two or more run directories (then they are compared)."""
    return len(run_children(path)) >= 2


def report_runs_directory(path: Path, out: Path) -> Path:
    """Compare the run directories inside ``path``; the report goes into ``out``."""
    return compare_runs(run_children(path), out=out)


COMPARE_KIND = ReportKind(
    name="compare",
    description="a directory holding two or more run directories (compared side by side)",
    detect=holds_runs,
    write=report_runs_directory,
    out_dir="comparison",
)
