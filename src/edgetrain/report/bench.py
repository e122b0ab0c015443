"""The benchmark report: where the training time of each configuration went.

Reads the files of ``edgetrain bench`` (``summary.csv``, ``epochs.csv``, ``batches.csv``,
``device.json``); summary.csv is required, the others add figures and pages. Measured
epochs exclude the warm-up epochs, which are shown apart.

The directory is read by :mod:`.bench_data`, its tables made by :mod:`.bench_stats` and
drawn by :mod:`.bench_figures`; this module lays out the pages and re-exports the names
of the other three that it has always offered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgetrain.report import bench_figures as bfig
from edgetrain.report.bench_data import Bench, load_bench
from edgetrain.report.bench_stats import (
    BREAKDOWN_PARTS,
    WARMUP_METRICS,
    batch_times,
    bench_overview,
    config_labels,
    configurations_table,
    device_tables,
    epoch_series,
    throughput_energy,
    time_breakdown,
    warmup_comparison,
)
from edgetrain.report.epoch_tables import downsample
from edgetrain.report.labels import estimated_note, mean_std_text
from edgetrain.report.pdf import assemble, drawn_figures, save_pdf, save_pngs
from edgetrain.report.reportkind import ReportKind
from edgetrain.report.rundir import is_bench_directory
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
from edgetrain.report.xlsx import MAX_SHEET_ROWS, with_numbers, write_xlsx
from edgetrain.safefs import claim_dir

__all__ = [
    "BENCH_FIGURES",
    "BENCH_KIND",
    "BREAKDOWN_PARTS",
    "WARMUP_METRICS",
    "Bench",
    "batch_times",
    "bench_overview",
    "config_labels",
    "configurations_table",
    "device_tables",
    "epoch_series",
    "load_bench",
    "throughput_energy",
    "time_breakdown",
    "warmup_comparison",
    "write_bench_report",
]

BENCH_FIGURES = ("bench_breakdown", "bench_throughput", "bench_warmup", "bench_batches")


def bench_tables(bench: Bench) -> dict[str, pd.DataFrame]:
    """Every table of the benchmark report, by name."""
    return {
        "overview": bench_overview(bench),
        "configurations": configurations_table(bench),
        "breakdown": time_breakdown(bench),
        "throughput": throughput_energy(bench),
        "warmup": warmup_comparison(bench),
        "epochs": epoch_series(bench),
        "batches": batch_times(bench),
        **{f"device_{k}": v for k, v in device_tables(bench).items()},
    }


def bench_figures(bench: Bench, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The figures that have data, by name, in report order."""
    name, sources = bench.name, bench.energy_sources
    drawn = {
        "bench_breakdown": bfig.breakdown_figure(tables["breakdown"], name),
        "bench_throughput": bfig.throughput_figure(tables["throughput"], name, sources),
        "bench_warmup": bfig.warmup_figure(
            tables["epochs"], tables["warmup"], name, bench.warmup_epochs
        ),
        "bench_batches": bfig.batches_figure(tables["batches"], name),
    }
    return drawn_figures(drawn, BENCH_FIGURES, bench.path)


def _with_std(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Columns ``name`` and ``name_std`` merged into one 'mean ± std' text column."""
    shown = table.copy()
    for name in names:
        if name not in shown.columns:
            continue
        std = shown.get(f"{name}_std", pd.Series(np.nan, index=shown.index))
        shown[name] = [mean_std_text(name, m, s) for m, s in zip(shown[name], std, strict=True)]
        shown = shown.drop(columns=[f"{name}_std"], errors="ignore")
    return shown


def _front_sections(bench: Bench, tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(PORTRAIT)
    overview = tables["overview"]
    pairs = zip(overview["key"], overview["value"], strict=True)
    sections = opening_sections("Benchmark", pairs, bench.problems, width)
    sections += frame_sections(tables["configurations"], "Configurations", width)
    return sections


def _device_sections(tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(PORTRAIT)
    settings, cpus, bench = tables["device_settings"], tables["device_cpus"], tables["device_bench"]
    if settings.empty and cpus.empty and bench.empty:
        return [Section("Device settings", ["(no device.json)"])]
    sections = []
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in zip(settings["key"], settings["value"], strict=True):
        head, _, rest = str(key).partition(".")
        groups.setdefault(head, []).append((rest or head, str(value)))
    titles = {
        "versions": "Versions",
        "cpu": "CPU frequency scaling",
        "storage": "Storage behind the data",
        "jetson": "Jetson",
        "nvidia": "NVIDIA GPU",
    }
    for head, pairs in groups.items():
        sections.append(Section(titles.get(head, head), key_value_lines(pairs, width)))
        if head == "cpu" and not cpus.empty:
            sections += frame_sections(cpus, "CPUs", width)
    if "cpu" not in groups and not cpus.empty:
        sections += frame_sections(cpus, "CPUs", width)
    if not bench.empty:
        sections.append(
            Section(
                "Benchmark settings",
                key_value_lines(zip(bench["key"], bench["value"], strict=True), width),
            )
        )
    return sections


def _table_sections(bench: Bench, tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    estimated = estimated_note(bench.energy_sources)
    breakdown = _with_std(
        tables["breakdown"].drop(columns=["label"]), [*BREAKDOWN_PARTS, "epoch_time_s"]
    )
    throughput = _with_std(
        tables["throughput"].drop(columns=["label"]),
        ["samples_per_s", "energy_j", "energy_per_sample_j"],
    )
    warmup = tables["warmup"].drop(columns=["label"])
    sections = frame_sections(
        breakdown, "Seconds per measured epoch (mean ± std over the measured epochs)", width
    )
    sections += frame_sections(throughput, f"Throughput and energy per epoch{estimated}", width)
    sections += frame_sections(warmup, "Warm-up epoch(s) against measured epochs", width)
    return sections


def write_bench_report(bench: Bench, out: Path) -> list[str]:
    """Write PNGs, ``report.pdf`` and ``report.xlsx`` for a benchmark into ``out``.

    Returns:
        The title of every PDF page, in order.
    """
    claim_dir(out, "report", reuse=True, what="report directory")
    tables = bench_tables(bench)
    drawn = bench_figures(bench, tables)
    save_pngs(drawn, BENCH_FIGURES, out)
    title = f"Benchmark report: {bench.name}"
    front = text_pages(
        _front_sections(bench, tables), title, intro=[f"bench directory: {bench.path.resolve()}"]
    )
    device = text_pages(_device_sections(tables), f"Device settings: {bench.name}")
    back = table_pages(_table_sections(bench, tables), f"Tables: {bench.name}")
    pages, names = assemble(("title", front), ("device", device), drawn, ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain bench report: {bench.name}")
    bench_rows = tables["device_bench"]
    device_sheet = pd.concat(
        [
            tables["device_settings"],
            pd.DataFrame(
                {
                    "key": [f"bench.{k}" for k in bench_rows["key"]],
                    "value": list(bench_rows["value"]),
                }
            ),
        ],
        ignore_index=True,
    )
    sheets = {
        "overview": tables["overview"],
        "configurations": tables["configurations"],
        "time_breakdown": tables["breakdown"],
        "throughput_energy": tables["throughput"],
        "warmup": tables["warmup"],
        "summary": with_numbers(bench.summary),
        "epochs": with_numbers(bench.epochs),
        "batches": downsample(bench.batches, MAX_SHEET_ROWS),
        "device": device_sheet,
        "cpus": tables["device_cpus"],
    }
    write_xlsx(sheets, out / "report.xlsx")
    return names


def report_bench_directory(path: Path, out: Path) -> list[str]:
    """Read the benchmark directory ``path`` and write its report into ``out``."""
    return write_bench_report(load_bench(path), out)


BENCH_KIND = ReportKind(
    name="bench",
    description="a benchmark directory from `edgetrain bench` (summary.csv with batches.csv)",
    detect=is_bench_directory,
    write=report_bench_directory,
)
