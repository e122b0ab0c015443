"""The run report, written into ``RUN/report/``: tables, figures, PDF pages and workbook."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from edgetrain.errors import EdgeTrainError
from edgetrain.report import figures as fig
from edgetrain.report import tables as tab
from edgetrain.report.labels import format_value
from edgetrain.report.pdf import assemble, drawn_figures, save_pdf, save_png, save_pngs
from edgetrain.report.reportkind import REPORT_DIR, ReportKind
from edgetrain.report.rundir import Run, is_run_directory, load_run
from edgetrain.report.textpages import (
    LANDSCAPE,
    PORTRAIT,
    TABLE_FONT_SIZE,
    Section,
    frame_sections,
    key_value_lines,
    opening_sections,
    page_width_chars,
    table_pages,
    text_pages,
)
from edgetrain.report.xlsx import MAX_SHEET_ROWS, write_xlsx
from edgetrain.safefs import claim_dir

__all__ = [
    "FIGURE_NAMES",
    "RUN_KIND",
    "plot_resources",
    "run_figures",
    "run_tables",
    "write_run_report",
]

logger = logging.getLogger(__name__)

PLOT_MAX_ROWS = 20_000  # monitor samples drawn per series; peaks in the tables use all
DECISION_ROWS_IN_PDF = 200
FIGURE_NAMES = (
    "training_curves",
    "resources",
    "energy",
    "controller",
    "correlation",
    "correlation_pairs",
    "activation",
)


def run_tables(run: Run) -> dict[str, pd.DataFrame]:
    """Every table of a run report, by name (empty tables included)."""
    correlation = tab.correlation_matrix(run)
    return {
        "totals": tab.totals_table(run),
        "metrics": tab.metrics_table(run),
        "curves": tab.training_curves(run),
        "energy": tab.energy_per_epoch(run),
        "resources": tab.resource_usage(run),
        "boundaries": tab.epoch_boundaries(run),
        "resource_summary": tab.resource_summary(run),
        "controller": tab.controller_table(run),
        "decisions": tab.decisions_table(run),
        "per_epoch": tab.epoch_numeric_table(run),
        "correlation": correlation,
        "strongest_pairs": tab.strongest_pairs(correlation),
        "activation": tab.activation_table(run),
        "config": tab.config_table(run),
        "environment": tab.environment_table(run),
        "sensors": tab.sensors_table(run),
    }


def run_figures(run: Run, tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """The figures that have data, by name, in report order."""
    name = run.name
    drawn = {
        "training_curves": fig.training_curves_figure(tables["curves"], name),
        "resources": fig.resources_figure(
            tab.downsample(tables["resources"], PLOT_MAX_ROWS), tables["boundaries"], name
        ),
        "energy": fig.energy_figure(tables["energy"], name),
        "controller": fig.controller_figure(tables["controller"], tables["decisions"], name),
        "correlation": fig.correlation_figure(tables["correlation"], name),
        "correlation_pairs": fig.pairs_figure(
            tables["per_epoch"], tab.strongest_pairs(tables["correlation"], n=None), name
        ),
        "activation": fig.activation_figure(tables["activation"], name),
    }
    return drawn_figures(drawn, FIGURE_NAMES, run.path)


def _text(value: object) -> str:
    """A cell as text; empty for None and NaN."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _sensor_pairs(sensors: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = []
    for row in sensors.itertuples(index=False):
        label = f" ({row.source_label})" if _text(row.source_label) else ""
        if row.available is True or str(row.available).lower() == "true":
            pairs.append((str(row.name), f"available{label}"))
        else:
            reason = _text(row.reason) or "no reason given"
            pairs.append((str(row.name), f"not available{label}: {reason}"))
    return pairs


def title_sections(run: Run, tables: dict[str, pd.DataFrame]) -> list[Section]:
    """The first pages: totals, notes, environment, sensors and the configuration."""
    width = page_width_chars(PORTRAIT)
    totals = tables["totals"]
    pairs = zip(totals["quantity"], totals["text"], strict=True)
    sections = opening_sections("Totals", pairs, run.problems, width)
    environment = tables["environment"]
    if not environment.empty:
        values = [v if len(v) <= 300 else v[:299] + "…" for v in environment["value"]]
        sections.append(
            Section(
                "Environment", key_value_lines(zip(environment["key"], values, strict=True), width)
            )
        )
    if not tables["sensors"].empty:
        sections.append(
            Section("Sensors", key_value_lines(_sensor_pairs(tables["sensors"]), width))
        )
    config = tables["config"]
    lines = key_value_lines(zip(config["key"], config["value"], strict=True), width)
    sections.append(Section("Configuration (config.yaml)", lines or ["(no config.yaml)"]))
    return sections


def _summary_for_text(summary: pd.DataFrame) -> pd.DataFrame:
    """Resource summary with min/mean/max written in the column's unit (bytes as MiB/GiB)."""
    display = summary.copy()
    for stat in ("min", "mean", "max"):
        display[stat] = [
            format_value(column, value)
            for column, value in zip(summary["column"], summary[stat], strict=True)
        ]
    return display


def table_sections(tables: dict[str, pd.DataFrame]) -> list[Section]:
    """The tables at the end of the report, as landscape text sections."""
    width = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    sections = frame_sections(tables["metrics"], "Metrics per epoch (metrics.csv)", width)
    if not tables["energy"].empty:
        sections += frame_sections(tables["energy"], "Energy and time per epoch", width)
    if not tables["resource_summary"].empty:
        summary = _summary_for_text(tables["resource_summary"])
        sections += frame_sections(summary, "Resource usage (resources.csv)", width)
    if not tables["controller"].empty:
        sections += frame_sections(tables["controller"], "Controller per epoch", width)
    if not tables["decisions"].empty:
        sections += frame_sections(
            tables["decisions"], "Controller decisions (decisions.csv)", width, DECISION_ROWS_IN_PDF
        )
    if not tables["strongest_pairs"].empty:
        pairs = tables["strongest_pairs"][["cost", "performance", "r"]].copy()
        pairs["r"] = [f"{r:+.3f}" for r in pairs["r"]]
        sections += frame_sections(pairs, "Strongest cost/performance correlations", width)
    return sections


def _intro(run: Run, status: str) -> list[str]:
    return [
        f"run directory: {run.path.resolve()}",
        f"status: {status}",
        f"report made: {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
    ]


def write_run_report(run: Run, out: Path) -> list[str]:
    """Write PNGs, ``report.pdf`` and ``report.xlsx`` for a loaded run into ``out``.

    Returns:
        The title of every PDF page, in order.
    """
    claim_dir(out, "report", reuse=True, what="report directory")
    tables = run_tables(run)
    drawn = run_figures(run, tables)
    save_pngs(drawn, FIGURE_NAMES, out)

    status = str(tab.run_totals(run)["status"])
    title = f"Training report: {run.name}"
    front = text_pages(title_sections(run, tables), title, intro=_intro(run, status))
    back = table_pages(table_sections(tables), f"Tables: {run.name}")
    pages, names = assemble(("title", front), drawn, ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain report: {run.name}")

    resources = tables["resources"]
    if len(resources) > MAX_SHEET_ROWS:
        logger.info("resources sheet thinned from %d to %d rows", len(resources), MAX_SHEET_ROWS)
        resources = tab.downsample(resources, MAX_SHEET_ROWS)
    correlation = tables["correlation"]
    sheets = {
        "totals": tables["totals"],
        "metrics": tables["metrics"],
        "energy": tables["energy"],
        "resources": resources,
        "resource_summary": tables["resource_summary"],
        "controller": tables["controller"],
        # no decisions: a "(no data)" sheet, not the controller's column names
        "decisions": tables["decisions"] if not tables["decisions"].empty else pd.DataFrame(),
        "correlation": correlation.rename_axis("column").reset_index()
        if not correlation.empty
        else correlation,
        "strongest_pairs": tables["strongest_pairs"],
        "config": tables["config"],
        "environment": pd.concat(
            [tables["environment"], tables["sensors"].rename(columns={"name": "sensor"})],
            ignore_index=True,
        )
        if not tables["sensors"].empty
        else tables["environment"],
    }
    write_xlsx(sheets, out / "report.xlsx")
    return names


def plot_resources(path: Path | str) -> Path:
    """Draw only the resources-over-time figure into ``RUN/report/resources.png``.

    Raises:
        EdgeTrainError: if the run has no monitor samples.
    """
    run = load_run(path)
    usage = tab.resource_usage(run, max_rows=PLOT_MAX_ROWS)
    figure = fig.resources_figure(usage, tab.epoch_boundaries(run), run.name)
    if figure is None:
        raise EdgeTrainError(
            f"{run.path} has no resource samples (resources.csv is missing or empty)"
        )
    out = run.path / REPORT_DIR
    try:
        claim_dir(out, "report", reuse=True, what="report directory")
        return save_png(figure, out / "resources.png")
    except OSError as exc:
        raise EdgeTrainError(f"cannot write {out / 'resources.png'}: {exc}") from exc


def report_run_directory(path: Path, out: Path) -> list[str]:
    """Read the run directory ``path`` and write its report into ``out``."""
    return write_run_report(load_run(path), out)


RUN_KIND = ReportKind(
    name="run",
    description="a run directory (metrics.csv, or summary.json with config.yaml)",
    detect=is_run_directory,
    write=report_run_directory,
)
