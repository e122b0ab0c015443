"""The run report, written into ``RUN/report/``: tables, figures, PDF pages and workbook.

Page 1 leads with the answer: the key figures and the learning curve
(:mod:`.keyfigures`). Then the figures of the features that were on (:mod:`.features`:
energy and resources from the monitor, the memory budget and its controller, activation
compression, sparse updates, pruning) and per-epoch correlations when there are enough
epochs (:mod:`.correlation`); then the tables; last an appendix with every total, the
features' summaries, the environment and the full configuration.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from edgetrain.errors import EdgeTrainError
from edgetrain.report import figures as fig
from edgetrain.report import sparse_selection as sel
from edgetrain.report import tables as tab
from edgetrain.report.correlation import MIN_POINTS
from edgetrain.report.features import (
    FEATURE_TITLES,
    active_features,
    controller_decisions,
    feature_summary,
    prune_decisions,
)
from edgetrain.report.keyfigures import curve_panels, key_figures, key_figures_figure
from edgetrain.report.labels import finite_number, format_value
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
    page_width_chars,
    table_pages,
    text_pages,
)
from edgetrain.report.xlsx import MAX_SHEET_ROWS, write_xlsx
from edgetrain.safefs import claim_dir
from edgetrain.units import format_bytes

__all__ = [
    "APPENDIX_TITLE",
    "FIGURE_NAMES",
    "RUN_KIND",
    "appendix_sections",
    "plot_resources",
    "run_figures",
    "run_tables",
    "table_sections",
    "write_run_report",
]

logger = logging.getLogger(__name__)

PLOT_MAX_ROWS = 20_000  # monitor samples drawn per series; peaks in the tables use all
DECISION_ROWS_IN_PDF = 200
_LONG_VALUE = 300  # appendix values longer than this are cut (the workbook has them whole)
#: Every figure a run report may have, in page order (those without data are left out).
FIGURE_NAMES = (
    "key_figures",
    "training_curves",
    "energy",
    "resources",
    "controller",
    "activation",
    "sparse_update",
    "pruning",
    "correlation",
    "correlation_pairs",
)
#: The start of the appendix pages' title.
APPENDIX_TITLE = "Appendix: totals, configuration and environment"


def run_tables(run: Run) -> dict[str, pd.DataFrame]:
    """Every table of a run report, by name (empty tables included).

    Per-epoch correlations need :data:`~edgetrain.report.correlation.MIN_POINTS` epochs;
    with fewer, ``correlation`` and ``strongest_pairs`` are empty.
    """
    correlation = tab.correlation_matrix(run, min_epochs=MIN_POINTS)
    totals = tab.run_totals(run)
    selection = sel.selection_table(run)
    return {
        "key_figures": key_figures(run, totals, active_features(run)),
        "totals": tab.totals_table(run),
        "metrics": tab.metrics_table(run),
        "curves": tab.training_curves(run),
        "energy": tab.energy_per_epoch(run),
        "resources": tab.resource_usage(run),
        "boundaries": tab.epoch_boundaries(run),
        "resource_summary": tab.resource_summary(run),
        "adapt_memory": tab.adapt_memory(run),
        "controller": tab.controller_table(run),
        "decisions": tab.decisions_table(run),
        "controller_decisions": controller_decisions(run),
        "prune_decisions": prune_decisions(run),
        "sparse_selection": selection,
        "sparse_layers": sel.selection_layers(selection),
        "per_epoch": tab.epoch_numeric_table(run),
        "correlation": correlation,
        "strongest_pairs": tab.strongest_pairs(correlation),
        "activation": tab.activation_table(run),
        "config": tab.config_table(run),
        "environment": tab.environment_table(run),
        "sensors": tab.sensors_table(run),
    }


def _intro(run: Run) -> list[str]:
    return [
        f"run directory: {run.path.resolve()}",
        f"report made: {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
    ]


def _columns(table: pd.DataFrame, *names: str) -> pd.DataFrame:
    """``epoch`` and those of ``names`` that ``table`` has (an empty table without them)."""
    present = [n for n in names if n in table.columns and table[n].notna().any()]
    return table[["epoch", *present]] if present else pd.DataFrame(columns=["epoch"])


def _activation_note(run: Run) -> str:
    section = feature_summary(run, "activations")
    mode = section.get("mode") or run.config.get("activations")
    note = f"activations saved for backward: {mode}" if mode else ""
    raw, stored = (finite_number(section.get(k)) for k in ("peak_raw_bytes", "peak_stored_bytes"))
    if raw and stored is not None:
        note += f"; peak {format_bytes(stored)} stored of {format_bytes(raw)} raw"
        note += f" ({stored / raw:.0%})"
    return note


def _sparse_note(run: Run) -> str:
    section = feature_summary(run, "sparse_update")
    config = run.config.get("sparse_update")
    config = config if isinstance(config, dict) else {}
    scheme = section.get("scheme") or config.get("scheme")
    parts = [f"scheme {scheme}"] if scheme else []
    given, limit, kind = config.get("budget"), section.get("budget"), section.get("budget_kind")
    if limit is not None:
        text = format_bytes(limit) if kind == "bytes" else f"{format_value('', limit)} parameters"
        parts.append(f"budget {given} ({text})" if given is not None else f"budget {text}")
    elif given is not None:
        parts.append(f"budget {given}")
    mean = finite_number(section.get("mean_trainable_frac"))
    if mean is not None:
        parts.append(f"{mean:.1%} of the parameters updated per epoch on average")
    return "; ".join(parts)


def _prune_note(run: Run) -> tuple[float | None, str]:
    section = feature_summary(run, "prune")
    config = run.config.get("prune")
    config = config if isinstance(config, dict) else {}
    target = finite_number(section.get("ratio", config.get("ratio")))
    parts = []
    if section.get("schedule") or config.get("schedule"):
        parts.append(f"schedule {section.get('schedule') or config.get('schedule')}")
    final = finite_number(section.get("param_sparsity"))
    if final is not None:
        parts.append(f"final sparsity {final:.3f}")
    return target, "; ".join(parts)


def run_figures(
    run: Run, tables: dict[str, pd.DataFrame], features: list[str] | None = None
) -> dict[str, Figure]:
    """The figures that have data, by name, in report order; the features' figures only
    for the features that were on."""
    name = run.name
    features = active_features(run) if features is None else features
    metric, mode = run.best_metric
    curves = tables["curves"]
    best_epoch = finite_number(tab.run_totals(run).get("best_epoch"))
    drawn: dict[str, Figure | None] = {
        "key_figures": key_figures_figure(
            tables["key_figures"],
            curves,
            f"Training report: {name}",
            metric=metric,
            mode=mode,
            best_epoch=best_epoch,
            intro=_intro(run),
        ),
    }
    shown = {c for panel in curve_panels(curves, metric) for c in panel}
    if any(set(panel) - shown for panel in fig.metric_panels(curves)):
        drawn["training_curves"] = fig.training_curves_figure(curves, name)
    drawn["energy"] = fig.energy_figure(tables["energy"], name)
    if "monitor" in features:
        usage = tab.downsample(tables["resources"], PLOT_MAX_ROWS)
        drawn["resources"] = fig.resources_figure(usage, tables["boundaries"], name)
    if "adapt" in features:
        drawn["controller"] = fig.controller_figure(
            tables["controller"], tables["controller_decisions"], name, tables["adapt_memory"]
        )
    if "activations" in features:
        activation = _columns(tables["activation"], "activation_bytes")
        drawn["activation"] = fig.activation_figure(activation, name, _activation_note(run))
    if "sparse_update" in features:
        trainable = _columns(run.metrics, "trainable_frac")
        drawn["sparse_update"] = sel.selection_figure(
            tables["sparse_selection"], trainable, name, _sparse_note(run)
        )
    if "prune" in features:
        target, note = _prune_note(run)
        sparsity = _columns(run.metrics, "param_sparsity")
        drawn["pruning"] = fig.prune_figure(sparsity, name, target, note)
    epochs = len(tables["per_epoch"])
    drawn["correlation"] = fig.correlation_figure(tables["correlation"], name, epochs)
    drawn["correlation_pairs"] = fig.pairs_figure(
        tables["per_epoch"], tab.strongest_pairs(tables["correlation"], n=None), name
    )
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


def _cut(value: str) -> str:
    return value if len(value) <= _LONG_VALUE else value[: _LONG_VALUE - 1] + "…"


def _summary_value(key: str, value: str) -> str:
    """A flattened summary.json value for the appendix: sizes in binary units as well."""
    number = finite_number(value)
    if key.endswith("_bytes") and number is not None:
        return f"{format_bytes(number)} ({value})"
    return _cut(value)


def appendix_sections(
    run: Run, tables: dict[str, pd.DataFrame], features: list[str] | None = None
) -> list[Section]:
    """The appendix: every total, the notes on the input files, the summary.json sections
    of the features that were on, the environment, the sensors and the full configuration."""
    features = active_features(run) if features is None else features
    width = page_width_chars(PORTRAIT)
    totals = tables["totals"]
    sections = [
        Section(
            "All totals",
            key_value_lines(zip(totals["quantity"], totals["text"], strict=True), width),
        )
    ]
    if run.problems:
        sections.append(Section("Notes on the input files", [f"- {p}" for p in run.problems]))
    for feature in features:
        section = feature_summary(run, feature)
        if not section:
            continue
        flat = tab.flatten_mapping(section)
        lines = key_value_lines(((k, _summary_value(k, v)) for k, v in flat.items()), width)
        heading = f"{FEATURE_TITLES[feature].capitalize()} (summary.json: {feature})"
        sections.append(Section(heading, lines))
    environment = tables["environment"]
    if not environment.empty:
        values = [_cut(v) for v in environment["value"]]
        pairs = zip(environment["key"], values, strict=True)
        sections.append(Section("Environment", key_value_lines(pairs, width)))
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


def table_sections(
    tables: dict[str, pd.DataFrame], features: list[str] | None = None
) -> list[Section]:
    """The tables after the figures, as landscape text sections: the metrics, energy, and
    the tables of the features that were on (all features when ``features`` is None)."""
    features = list(FEATURE_TITLES) if features is None else features
    width = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    sections = []
    if not tables["metrics"].empty:
        sections += frame_sections(tables["metrics"], "Metrics per epoch (metrics.csv)", width)
    if not tables["energy"].empty:
        sections += frame_sections(tables["energy"], "Energy and time per epoch", width)
    if "monitor" in features and not tables["resource_summary"].empty:
        summary = _summary_for_text(tables["resource_summary"])
        sections += frame_sections(summary, "Resource usage (resources.csv)", width)
    if "adapt" in features:
        if not tables["adapt_memory"].empty:
            sections += frame_sections(
                tables["adapt_memory"], "Memory against the budget per epoch (adapt.csv)", width
            )
        if not tables["controller"].empty:
            sections += frame_sections(tables["controller"], "Controller per epoch", width)
        if not tables["controller_decisions"].empty:
            sections += frame_sections(
                tables["controller_decisions"],
                "Controller decisions (decisions.csv)",
                width,
                DECISION_ROWS_IN_PDF,
            )
    if "sparse_update" in features and not tables["sparse_layers"].empty:
        sections += frame_sections(
            tables["sparse_layers"], "Sparse updates per layer (sparse_update.csv)", width
        )
    if "prune" in features and not tables["prune_decisions"].empty:
        sections += frame_sections(
            tables["prune_decisions"], "Pruning steps (decisions.csv)", width
        )
    if not tables["strongest_pairs"].empty:
        pairs = tables["strongest_pairs"][["cost", "performance", "r"]].copy()
        pairs["r"] = [f"{r:+.3f}" for r in pairs["r"]]
        n = len(tables["per_epoch"])
        sections += frame_sections(
            pairs, f"Strongest cost/performance correlations (Pearson r, n = {n} epochs)", width
        )
    return sections


def _sheets(tables: dict[str, pd.DataFrame], features: list[str]) -> dict[str, Any]:
    """The workbook: the same sheets for every run (empty ones say so), plus the tables
    of sparse updates and of the memory budget when those were on."""
    resources = tables["resources"]
    if len(resources) > MAX_SHEET_ROWS:
        logger.info("resources sheet thinned from %d to %d rows", len(resources), MAX_SHEET_ROWS)
        resources = tab.downsample(resources, MAX_SHEET_ROWS)
    correlation = tables["correlation"]
    sheets = {
        "key_figures": tables["key_figures"],
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
    if "adapt" in features and not tables["adapt_memory"].empty:
        sheets["adapt"] = tables["adapt_memory"]
    if "sparse_update" in features and not tables["sparse_selection"].empty:
        sheets["sparse_update"] = tables["sparse_selection"]
    return sheets


def write_run_report(run: Run, out: Path) -> list[str]:
    """Write PNGs, ``report.pdf`` and ``report.xlsx`` for a loaded run into ``out``.

    Pages: the key figures with the learning curve; the figures of the run and of the
    features that were on; the tables; the appendix.

    Returns:
        The name of every PDF page, in order: figure names (``key_figures`` first), then
        ``tables 1``, ..., ``appendix 1``, ....
    """
    claim_dir(out, "report", reuse=True, what="report directory")
    features = active_features(run)
    tables = run_tables(run)
    drawn = run_figures(run, tables, features)
    save_pngs(drawn, FIGURE_NAMES, out)

    title = f"Training report: {run.name}"
    back = table_pages(table_sections(tables, features), f"Tables: {run.name}")
    appendix = text_pages(
        appendix_sections(run, tables, features),
        f"{APPENDIX_TITLE}: {run.name}",
        intro=_intro(run),
    )
    pages, names = assemble(drawn, ("tables", back), ("appendix", appendix))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain report: {run.name}")
    write_xlsx(_sheets(tables, features), out / "report.xlsx")
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
