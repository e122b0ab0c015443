"""The benchmark report: where the training time of each configuration went.

Reads the files of ``edgetrain bench`` (``summary.csv``, ``epochs.csv``, ``batches.csv``,
``device.json``); summary.csv is required, the others add figures and pages. Measured
epochs exclude the warm-up epochs, which are shown apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgetrain.errors import EdgeTrainError
from edgetrain.report import bench_figures as bfig
from edgetrain.report import tables as tab
from edgetrain.report.labels import (
    energy_source_text,
    format_value,
    is_estimated,
    mean_std_text,
)
from edgetrain.report.pdf import assemble, save_pdf, save_pngs
from edgetrain.report.rundir import _csv_header, _read_mapping, read_csv_rows, require_directory
from edgetrain.report.textpages import (
    LANDSCAPE,
    PORTRAIT,
    TABLE_FONT_SIZE,
    Section,
    frame_sections,
    key_value_lines,
    opening_sections,
    page_width_chars,
    text_pages,
)
from edgetrain.report.xlsx import MAX_SHEET_ROWS, with_numbers, write_xlsx

__all__ = [
    "BENCH_FIGURES",
    "Bench",
    "batch_times",
    "bench_overview",
    "configurations_table",
    "device_tables",
    "epoch_series",
    "load_bench",
    "throughput_energy",
    "time_breakdown",
    "warmup_comparison",
    "write_bench_report",
]

logger = logging.getLogger(__name__)

BENCH_FIGURES = ("bench_breakdown", "bench_throughput", "bench_warmup", "bench_batches")
BREAKDOWN_PARTS = ("loader_start_s", "stall_s", "copy_s", "compute_s")
WARMUP_METRICS = ("epoch_time_s", "train_wall_s", "loader_start_s", "samples_per_s", "energy_j")
_TEXT = (
    "status",
    "note",
    "energy_source",
    "cache_method",
    "data_path",
    "run_dir",
    "warmup",
)
_SUMMARY_FIXED = ("config", "status", "note")


@dataclass(frozen=True, eq=False)
class Bench:
    """A benchmark directory, read once.

    Attributes:
        path: The bench directory.
        summary: summary.csv, one row per configuration.
        epochs: epochs.csv, one row per epoch of each configuration (may be empty).
        batches: batches.csv, one row per minibatch (may be empty).
        device: device.json ({} when absent).
        grid_keys: The configuration keys the grid varied.
        problems: What was wrong with the files.
    """

    path: Path
    summary: pd.DataFrame
    epochs: pd.DataFrame
    batches: pd.DataFrame
    device: dict[str, Any]
    grid_keys: list[str]
    problems: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def warmup_epochs(self) -> int:
        """Leading epochs left out of the means (device.json, else summary.csv, else 1)."""
        value = tab._number((self.device.get("bench") or {}).get("warmup_epochs"))
        if value is None and "warmup_epochs" in self.summary.columns:
            value = tab._number(self.summary["warmup_epochs"].max())
        return int(value) if value is not None else 1

    @property
    def energy_sources(self) -> list[str]:
        """The energy sources of the completed configurations."""
        column = _done(self.summary).get("energy_source", pd.Series(dtype=object))
        return sorted({str(s) for s in column.dropna()})


def _grid_keys(summary_columns: list[str], device: dict[str, Any]) -> list[str]:
    grid = (device.get("bench") or {}).get("grid")
    if isinstance(grid, dict) and grid:
        return [str(k) for k in grid if str(k) in summary_columns]
    if "measured_epochs" in summary_columns:  # the columns between note and measured_epochs
        end = summary_columns.index("measured_epochs")
        return [c for c in summary_columns[:end] if c not in _SUMMARY_FIXED]
    return []


def load_bench(path: Path | str) -> Bench:
    """Read a benchmark directory.

    Raises:
        EdgeTrainError: if it has no summary.csv.
    """
    path = require_directory(path)
    if not (path / "summary.csv").is_file():
        raise EdgeTrainError(f"{path} is not a benchmark directory (no summary.csv)")
    problems: list[str] = []
    device = _read_mapping(path / "device.json", problems)
    keys = _grid_keys(_csv_header(path / "summary.csv"), device)
    words = (*_TEXT, *keys)  # grid values as written ('0', 'fp32', '[1, 2]')
    summary = read_csv_rows(path / "summary.csv", ("config", "status"), problems, words=words)
    epochs = read_csv_rows(path / "epochs.csv", (), problems, words=words)
    batches = read_csv_rows(path / "batches.csv", (), problems)
    return Bench(path, summary, epochs, batches, device, keys, tuple(problems))


def _done(summary: pd.DataFrame) -> pd.DataFrame:
    if "status" not in summary.columns:
        return summary
    return summary[summary["status"] == "completed"]


def _label(row: pd.Series, keys: list[str]) -> str:
    settings = " ".join(f"{k}={format_value(k, row.get(k))}" for k in keys)
    config = format_value("config", row.get("config"))
    return f"{config}: {settings}" if settings else f"config {config}"


def config_labels(bench: Bench) -> dict[float, str]:
    """Configuration number -> '0: num_workers=0 batch_size=16'."""
    return {
        float(row["config"]): _label(row, bench.grid_keys)
        for _, row in bench.summary.iterrows()
        if pd.notna(row.get("config"))
    }


def bench_overview(bench: Bench) -> pd.DataFrame:
    """The title page as rows ``key, value`` (text)."""
    settings = bench.device.get("bench") or {}
    status = bench.summary.get("status", pd.Series(dtype=object)).fillna("unknown")
    counts = ", ".join(f"{n} {s}" for s, n in status.value_counts(sort=False).items())
    grid = settings.get("grid")
    if isinstance(grid, dict) and grid:
        grid_text = "; ".join(
            f"{k} = {', '.join(format_value(k, v) for v in (vs if isinstance(vs, list) else [vs]))}"
            for k, vs in grid.items()
        )
    else:
        grid_text = ", ".join(bench.grid_keys) or "(no grid: one configuration)"
    epochs = settings.get("epochs")
    if epochs is None and "measured_epochs" in bench.summary.columns:
        done = _done(bench.summary)
        if not done.empty:
            epochs = int(done["measured_epochs"].max() + done["warmup_epochs"].max())
    rows = [
        ("directory", str(bench.path.resolve())),
        ("configurations", f"{len(bench.summary)} ({counts})" if len(status) else "0"),
        ("grid", grid_text),
        ("epochs per configuration", format_value("epochs", epochs)),
        (
            "warm-up epochs",
            f"{bench.warmup_epochs} (left out of means and std; shown apart)",
        ),
        ("energy source", energy_source_text(bench.energy_sources)),
    ]
    for key, label in (
        ("drop_cache", "page cache evicted before each configuration"),
        ("cache_method", "eviction method"),
        ("export", "in-memory data exported to files"),
        ("config", "base config"),
        ("started", "started"),
    ):
        if key in settings:
            rows.append((label, format_value(key, settings[key])))
    for note in settings.get("notes") or []:
        rows.append(("note", str(note)))
    return pd.DataFrame(rows, columns=["key", "value"])


def configurations_table(bench: Bench) -> pd.DataFrame:
    """Every configuration: ``config, settings, status, measured, warm-up, page cache, note``."""
    columns = ["config", "settings", "status", "measured_epochs", "warmup_epochs", "page_cache"]
    rows = []
    for _, row in bench.summary.iterrows():
        settings = " ".join(f"{k}={format_value(k, row.get(k))}" for k in bench.grid_keys)
        cache = str(row.get("cache_method") or "-") if pd.notna(row.get("cache_method")) else "-"
        before, after = row.get("resident_before_frac"), row.get("resident_after_frac")
        if pd.notna(before) or pd.notna(after):
            cache += f" resident {_pct(before)}→{_pct(after)}"
        rows.append(
            {
                "config": row.get("config"),
                "settings": settings or "(base)",
                "status": row.get("status"),
                "measured_epochs": row.get("measured_epochs"),
                "warmup_epochs": row.get("warmup_epochs"),
                "page_cache": cache,
                "note": row.get("note") if pd.notna(row.get("note")) else "",
            }
        )
    return pd.DataFrame(rows, columns=[*columns, "note"])


def _pct(value: Any) -> str:
    number = tab._number(value)
    return "?" if number is None else f"{100 * number:.0f}%"


def _get(row: pd.Series, column: str) -> float:
    number = tab._number(row.get(column))
    return np.nan if number is None else number


def time_breakdown(bench: Bench) -> pd.DataFrame:
    """Seconds per measured epoch of each part, per completed configuration.

    ``rest_s`` is the epoch time not in the parts (validation, bookkeeping), never
    negative. Parts missing from summary.csv count as 0.

    Returns:
        Columns ``config, label, loader_start_s, stall_s, copy_s, compute_s, rest_s,
        epoch_time_s``, their ``_std`` columns (no ``rest_s_std``) and ``stall_frac``.
    """
    parts = [*BREAKDOWN_PARTS, "epoch_time_s"]
    columns = [
        "config",
        "label",
        *BREAKDOWN_PARTS,
        "rest_s",
        "epoch_time_s",
        *[f"{p}_std" for p in parts],
        "stall_frac",
    ]
    rows = []
    for _, row in _done(bench.summary).iterrows():
        record: dict[str, Any] = {
            "config": row.get("config"),
            "label": _label(row, bench.grid_keys),
        }
        for part in parts:
            mean = _get(row, f"{part}_mean")
            record[part] = 0.0 if np.isnan(mean) and part != "epoch_time_s" else mean
            record[f"{part}_std"] = _get(row, f"{part}_std")
        accounted = sum(record[p] for p in BREAKDOWN_PARTS)
        epoch = record["epoch_time_s"]
        record["rest_s"] = max(epoch - accounted, 0.0) if not np.isnan(epoch) else 0.0
        record["stall_frac"] = _get(row, "stall_frac")
        rows.append(record)
    return pd.DataFrame(rows, columns=columns)


def throughput_energy(bench: Bench) -> pd.DataFrame:
    """Throughput, energy per epoch and per sample, average power, per completed config.

    Energy per sample is each measured epoch's energy over its samples (epochs.csv), then
    mean and std over the epochs; without epochs.csv it is energy per epoch over
    throughput times epoch time.

    Returns:
        Columns ``config, label, samples_per_s, samples_per_s_std, samples_per_epoch,
        energy_j, energy_j_std, energy_per_sample_j, energy_per_sample_j_std,
        avg_power_w, energy_source``.
    """
    columns = [
        "config",
        "label",
        "samples_per_s",
        "samples_per_s_std",
        "samples_per_epoch",
        "energy_j",
        "energy_j_std",
        "energy_per_sample_j",
        "energy_per_sample_j_std",
        "avg_power_w",
        "energy_source",
    ]
    measured = _measured_epochs(bench)
    rows = []
    for _, row in _done(bench.summary).iterrows():
        per_sample, per_sample_std, samples = np.nan, np.nan, np.nan
        epochs = measured[measured["config"] == row.get("config")] if not measured.empty else None
        if epochs is not None and {"energy_j", "samples"} <= set(epochs.columns):
            good = epochs[(epochs["samples"] > 0) & epochs["energy_j"].notna()]
            if not good.empty:
                values = good["energy_j"] / good["samples"]
                per_sample = float(values.mean())
                per_sample_std = float(values.std(ddof=1)) if len(values) > 1 else np.nan
                samples = float(good["samples"].mean())
        if np.isnan(per_sample):
            throughput, time_s = _get(row, "samples_per_s_mean"), _get(row, "epoch_time_s_mean")
            samples = throughput * time_s
            per_sample = _get(row, "energy_j_mean") / samples if samples > 0 else np.nan
        rows.append(
            {
                "config": row.get("config"),
                "label": _label(row, bench.grid_keys),
                "samples_per_s": _get(row, "samples_per_s_mean"),
                "samples_per_s_std": _get(row, "samples_per_s_std"),
                "samples_per_epoch": samples,
                "energy_j": _get(row, "energy_j_mean"),
                "energy_j_std": _get(row, "energy_j_std"),
                "energy_per_sample_j": per_sample,
                "energy_per_sample_j_std": per_sample_std,
                "avg_power_w": _get(row, "avg_power_w_mean"),
                "energy_source": row.get("energy_source"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def _measured_epochs(bench: Bench) -> pd.DataFrame:
    epochs = bench.epochs
    if epochs.empty or "epoch" not in epochs.columns:
        return epochs
    return epochs[epochs["epoch"] > bench.warmup_epochs]


def warmup_comparison(bench: Bench) -> pd.DataFrame:
    """Warm-up against measured epochs, per completed configuration and metric.

    Returns:
        Columns ``config, label, metric, warmup, measured, measured_std, ratio``
        (``ratio`` = warm-up / measured mean).
    """
    columns = ["config", "label", "metric", "warmup", "measured", "measured_std", "ratio"]
    rows = []
    for _, row in _done(bench.summary).iterrows():
        for metric in WARMUP_METRICS:
            warm, mean = _get(row, f"warmup_{metric}"), _get(row, f"{metric}_mean")
            if np.isnan(warm) and np.isnan(mean):
                continue
            rows.append(
                {
                    "config": row.get("config"),
                    "label": _label(row, bench.grid_keys),
                    "metric": metric,
                    "warmup": warm,
                    "measured": mean,
                    "measured_std": _get(row, f"{metric}_std"),
                    "ratio": warm / mean if mean and not np.isnan(mean) else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def epoch_series(bench: Bench) -> pd.DataFrame:
    """Per configuration and epoch: ``config, label, epoch, warmup`` and the epoch's costs."""
    wanted = ["epoch_time_s", "train_wall_s", "samples_per_s", "energy_j", "stall_s"]
    epochs = bench.epochs
    if epochs.empty or not {"config", "epoch"} <= set(epochs.columns):
        return pd.DataFrame(columns=["config", "label", "epoch", "warmup", *wanted])
    labels = config_labels(bench)
    table = epochs[["config", "epoch"]].copy()
    table.insert(1, "label", table["config"].map(labels).fillna(table["config"].astype(str)))
    table["warmup"] = table["epoch"] <= bench.warmup_epochs
    for column in wanted:
        table[column] = epochs[column] if column in epochs.columns else np.nan
    return table.reset_index(drop=True)


def batch_times(bench: Bench) -> pd.DataFrame:
    """Per minibatch of the measured epochs: ``config, label, epoch, batch, stall_s,
    copy_s, compute_s``."""
    columns = ["config", "label", "epoch", "batch", "stall_s", "copy_s", "compute_s"]
    batches = bench.batches
    if batches.empty or not {"config", "epoch"} <= set(batches.columns):
        return pd.DataFrame(columns=columns)
    measured = batches[batches["epoch"] > bench.warmup_epochs].copy()
    measured["label"] = measured["config"].map(config_labels(bench))
    for column in columns:
        if column not in measured.columns:
            measured[column] = np.nan
    return measured[columns].reset_index(drop=True)


def device_tables(bench: Bench) -> dict[str, pd.DataFrame]:
    """device.json as ``settings`` (key, value rows) and ``cpus`` (one row per CPU)."""
    device = {k: v for k, v in bench.device.items() if k != "bench"}
    cpu = dict(device.get("cpu") or {}) if isinstance(device.get("cpu"), dict) else {}
    cpus = cpu.pop("cpus", None)
    if "cpu" in device:
        device["cpu"] = cpu
    flat = tab.flatten_mapping(device)
    settings = pd.DataFrame({"key": list(flat), "value": list(flat.values())})
    rows = [c for c in cpus or [] if isinstance(c, dict)]
    cpu_table = pd.DataFrame(rows)
    flat_bench = tab.flatten_mapping(bench.device.get("bench") or {})
    bench_settings = pd.DataFrame({"key": list(flat_bench), "value": list(flat_bench.values())})
    return {"settings": settings, "cpus": cpu_table, "bench": bench_settings}


# -- the report ---------------------------------------------------------------------------


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
    skipped = [key for key, figure in drawn.items() if figure is None]
    if skipped:
        logger.info("%s: no data for figure(s) %s; skipped", bench.path, ", ".join(skipped))
    return {key: figure for key, figure in drawn.items() if figure is not None}


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
    estimated = " (energy estimated, not measured)" if is_estimated(bench.energy_sources) else ""
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
    out.mkdir(parents=True, exist_ok=True)
    tables = bench_tables(bench)
    drawn = bench_figures(bench, tables)
    save_pngs(drawn, BENCH_FIGURES, out)
    title = f"Benchmark report: {bench.name}"
    front = text_pages(
        _front_sections(bench, tables), title, intro=[f"bench directory: {bench.path.resolve()}"]
    )
    device = text_pages(_device_sections(tables), f"Device settings: {bench.name}")
    back = text_pages(
        _table_sections(bench, tables),
        f"Tables: {bench.name}",
        size=LANDSCAPE,
        font_size=TABLE_FONT_SIZE,
    )
    pages, names = assemble(("title", front), ("device", device), drawn, ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain bench report: {bench.name}")
    batches = bench.batches
    if len(batches) > MAX_SHEET_ROWS:
        batches = tab.downsample(batches, MAX_SHEET_ROWS)
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
        "batches": batches,
        "device": device_sheet,
        "cpus": tables["device_cpus"],
    }
    write_xlsx(sheets, out / "report.xlsx")
    return names
