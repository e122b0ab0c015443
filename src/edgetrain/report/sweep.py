"""The sweep report: reads ``DIR/analysis/`` (from ``edgetrain sweep analyze``) and the trials.

The analysis tables are the input: parameter importance needs Optuna's fANOVA, which the
report does not run (it reads files only), so a sweep without ``analysis/`` is refused
with the command that makes it. Every analysis file but ``trials.csv`` may be missing;
the tables and figures made from it are then left out.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgetrain.errors import EdgeTrainError
from edgetrain.report import figures as fig
from edgetrain.report import sweep_figures as sfig
from edgetrain.report import tables as tab
from edgetrain.report.labels import energy_source_text, format_value, is_estimated
from edgetrain.report.pdf import assemble, save_pdf, save_pngs
from edgetrain.report.rundir import (
    _csv_header,
    _read_mapping,
    is_run_directory,
    is_sweep_analysis,
    load_run,
    read_csv_rows,
    require_directory,
)
from edgetrain.report.textpages import (
    LANDSCAPE,
    PORTRAIT,
    TABLE_FONT_SIZE,
    Section,
    frame_sections,
    opening_sections,
    page_width_chars,
    text_pages,
)
from edgetrain.report.xlsx import with_numbers, write_xlsx

__all__ = [
    "SWEEP_FIGURES",
    "Sweep",
    "best_trial",
    "failed_trials",
    "importance_bars",
    "load_sweep",
    "parameter_effects",
    "parameter_groups",
    "parameter_kinds",
    "pareto_points",
    "sweep_overview",
    "top_table",
    "write_sweep_report",
]

logger = logging.getLogger(__name__)

ANALYSIS_TABLES = (
    "trials",
    "top_accuracy",
    "top_energy",
    "top_efficiency",
    "pareto",
    "importance",
    "best_values",
)
TOP_TITLES = {
    "top_accuracy": "highest validation accuracy",
    "top_energy": "lowest energy",
    "top_efficiency": "highest efficiency (accuracy per kJ)",
}
TOP_DISPLAY = (
    "rank",
    "number",
    "val_acc",
    "energy_j",
    "avg_power_w",
    "efficiency_acc_per_kj",
    "time_s",
)
_TEXT = (
    "state",
    "fail_reason",
    "error",
    "energy_source",
    "host",
    "run_dir",
    "knee",
    "target",
    "parameter",
    "best_value",
    "best_group",
    "best_for_accuracy",
    "best_for_energy",
    "best_for_efficiency",
)
SWEEP_FIGURES = (
    "sweep_pareto",
    "sweep_importance",
    "sweep_energy_by_parameter",
    "sweep_accuracy_by_parameter",
    "best_trial_curves",
    "best_trial_energy",
)
_NUMERIC_MIN_VALUES = 5  # a parameter without a space.yaml entry: fewer distinct values = choices


@dataclass(frozen=True, eq=False)
class Sweep:
    """A sweep directory and its analysis tables, read once.

    Attributes:
        path: The sweep directory (trial run directories are relative to it).
        analysis_dir: Where the analysis tables were read.
        info: ``sweep.json`` ({} when absent).
        space: ``space.yaml`` ({} when absent).
        summary: ``analysis/summary.json`` ({} when absent).
        tables: The analysis CSV files by name (``trials``, ``top_accuracy``, ...).
        trial_dirs: How many ``trials/<n>/`` directories exist.
        problems: What was wrong with the files.
    """

    path: Path
    analysis_dir: Path
    info: dict[str, Any]
    space: dict[str, Any]
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    trial_dirs: int = 0
    problems: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """The study name (the directory name when no file names it)."""
        return str(self.summary.get("study") or self.info.get("study") or self.path.name)

    @property
    def params(self) -> list[str]:
        """The swept parameters, in space order."""
        space_params = self.space.get("params")
        if isinstance(space_params, dict) and space_params:
            return [str(name) for name in space_params]
        columns = self.tables["trials"].columns
        return [c.removeprefix("param_") for c in columns if c.startswith("param_")]

    @property
    def energy_sources(self) -> list[str]:
        """The energy sources of the completed trials."""
        sources = self.summary.get("energy_sources")
        if isinstance(sources, list) and sources:
            return [str(s) for s in sources]
        trials = self.tables["trials"]
        done = trials[trials["state"] == "complete"] if "state" in trials else trials
        column = done.get("energy_source", pd.Series(dtype=object))
        return sorted({str(s) for s in column.dropna()})


def load_sweep(path: Path | str) -> Sweep:
    """Read a sweep directory (or the analysis directory itself).

    Raises:
        EdgeTrainError: if the directory has no analysis tables (run
            ``edgetrain sweep analyze DIR`` first).
    """
    path = require_directory(path)
    if is_sweep_analysis(path):
        analysis = path
        root = path.parent if _has_sweep_files(path.parent) else path
    else:
        analysis, root = path / "analysis", path
        if not (analysis / "trials.csv").is_file():
            raise EdgeTrainError(
                f"{path} is a sweep directory without analysis tables (analysis/trials.csv); "
                f"run `edgetrain sweep analyze {path}` first, then the report"
            )
    problems: list[str] = []
    trials_header = _csv_header(analysis / "trials.csv")
    params = [c for c in trials_header if c.startswith("param_")]
    words = (*_TEXT, *params)  # parameter values stay as written: '64', 'adam', '[0.8, 0.2]'
    tables = {
        name: read_csv_rows(analysis / f"{name}.csv", (), problems, words=words)
        for name in ANALYSIS_TABLES
    }
    trial_root = root / "trials"
    trial_dirs = (
        sum(1 for child in trial_root.iterdir() if child.is_dir()) if trial_root.is_dir() else 0
    )
    info = _read_mapping(root / "sweep.json", problems)
    space = _read_mapping(root / "space.yaml", problems)
    summary = _read_mapping(analysis / "summary.json", problems)
    analysed = len(tables["trials"])
    if trial_dirs > analysed:
        problems.append(
            f"trials/ holds {trial_dirs} trial directories but the analysis covers {analysed} "
            f"trials; run `edgetrain sweep analyze {root}` again for the newer ones"
        )
    return Sweep(root, analysis, info, space, summary, tables, trial_dirs, tuple(problems))


def _has_sweep_files(path: Path) -> bool:
    return any((path / name).exists() for name in ("sweep.json", "space.yaml", "trials"))


# -- tables -------------------------------------------------------------------------------


def _completed(sweep: Sweep) -> pd.DataFrame:
    trials = sweep.tables["trials"]
    if trials.empty or "state" not in trials.columns:
        return trials
    return trials[trials["state"] == "complete"]


def trial_counts(sweep: Sweep) -> dict[str, int]:
    """Completed, failed, lost or interrupted, and running trials (summary.json first)."""
    counts = sweep.summary.get("trials")
    if isinstance(counts, dict) and counts:
        return {str(k): int(v) for k, v in counts.items() if tab._number(v) is not None}
    states = sweep.tables["trials"].get("state", pd.Series(dtype=object))
    reasons = sweep.tables["trials"].get("fail_reason", pd.Series(dtype=object))
    failed = states == "failed"
    not_counted = failed & reasons.isin(["lost", "interrupted"])
    return {
        "complete": int((states == "complete").sum()),
        "failed": int((failed & ~not_counted).sum()),
        "lost_or_interrupted": int(not_counted.sum()),
        "running": int((states == "running").sum()),
    }


def _trial_line(sweep: Sweep, number: Any) -> str:
    """'trial 4: val acc 0.9304, energy 12.36 J, 75.28 acc/kJ'."""
    if number is None or tab._number(number) is None:
        return "-"
    trials = sweep.tables["trials"]
    row = trials[trials["number"] == float(number)]
    if row.empty:
        return f"trial {int(float(number))}"
    row = row.iloc[0]
    estimated = " (est.)" if is_estimated([row.get("energy_source")]) else ""
    return (
        f"trial {int(row['number'])}: val acc {format_value('val_acc', row.get('val_acc'))}, "
        f"energy {format_value('energy_j', row.get('energy_j'))} J{estimated}, "
        f"avg power {format_value('avg_power_w', row.get('avg_power_w'))} W, "
        f"{format_value('efficiency', row.get('efficiency_acc_per_kj'))} acc/kJ"
    )


def sweep_overview(sweep: Sweep) -> pd.DataFrame:
    """The title page as rows ``key, value`` (text)."""
    summary, space = sweep.summary, sweep.space
    counts = trial_counts(sweep)
    objectives = summary.get("objectives") or space.get("objectives") or []
    rows = [
        ("study", sweep.name),
        ("directory", str(sweep.path.resolve())),
        ("objectives", ", ".join(map(str, objectives)) or "-"),
        ("sampler", str(summary.get("sampler") or space.get("sampler") or "-")),
        ("seed", format_value("seed", summary.get("seed", space.get("seed")))),
        ("parameters", ", ".join(sweep.params) or "-"),
        ("trials completed", str(counts.get("complete", 0))),
        ("trials failed", str(counts.get("failed", 0))),
    ]
    if counts.get("lost_or_interrupted"):
        rows.append(("lost or interrupted (re-queued)", str(counts["lost_or_interrupted"])))
    if counts.get("running"):
        rows.append(("running when analysed", str(counts["running"])))
    rows.append(("trial directories", str(sweep.trial_dirs)))
    rows.append(("energy source", energy_source_text(sweep.energy_sources)))
    concurrent = tab._number(summary.get("max_concurrent_trials"))
    if concurrent is not None and concurrent > 1:
        rows.append(
            (
                "concurrent trials",
                f"up to {int(concurrent)} at a time: a trial's energy includes the others'",
            )
        )
    if summary.get("vary_data") or space.get("vary_data"):
        rows.append(("data", "the space varies data keys: trials saw different validation data"))
    for key, label in (
        ("best_accuracy_trial", "best accuracy"),
        ("lowest_energy_trial", "lowest energy"),
        ("best_efficiency_trial", "best efficiency"),
        ("knee_trial", "Pareto knee"),
    ):
        number = summary.get(key)
        if number is None and key != "knee_trial":
            table = {
                "best_accuracy_trial": "top_accuracy",
                "lowest_energy_trial": "top_energy",
                "best_efficiency_trial": "top_efficiency",
            }[key]
            top = sweep.tables[table]
            number = None if top.empty else top["number"].iloc[0]
        rows.append((label, _trial_line(sweep, number)))
    for key, label in (
        ("top_energy_driver", "top energy driver"),
        ("top_accuracy_driver", "top accuracy driver"),
    ):
        if summary.get(key):
            rows.append((label, str(summary[key])))
    return pd.DataFrame(rows, columns=["key", "value"])


def _param_display(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    present = [c for c in columns if c in frame.columns]
    params = [c for c in frame.columns if c.startswith("param_")]
    shown = frame[[*present, *params]].rename(columns={c: c.removeprefix("param_") for c in params})
    return shown.reset_index(drop=True)


def top_table(sweep: Sweep, name: str) -> pd.DataFrame:
    """A top-k table for display: rank, trial, accuracy, energy, avg power, acc/kJ, time, params."""
    table = sweep.tables[name]
    if table.empty:
        return pd.DataFrame(columns=list(TOP_DISPLAY))
    return _param_display(table, TOP_DISPLAY)


def _knee_flags(pareto: pd.DataFrame) -> pd.Series:
    if "knee" not in pareto.columns:
        return pd.Series(False, index=pareto.index)
    return pareto["knee"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))


def pareto_points(sweep: Sweep) -> pd.DataFrame:
    """Every completed trial with accuracy and energy; ``on_front`` and ``knee`` flags.

    Returns:
        Columns ``number, val_acc, energy_j, avg_power_w, efficiency_acc_per_kj, time_s,
        on_front, knee``, sorted by energy.
    """
    columns = ["number", "val_acc", "energy_j", "avg_power_w", "efficiency_acc_per_kj", "time_s"]
    done = _completed(sweep)
    present = [c for c in columns if c in done.columns]
    if done.empty or not {"val_acc", "energy_j"} <= set(present):
        return pd.DataFrame(columns=[*columns, "on_front", "knee"])
    points = done[present].dropna(subset=["val_acc", "energy_j"]).copy()
    pareto = sweep.tables["pareto"]
    if not pareto.empty and "number" in pareto.columns:
        front = set(pareto["number"].dropna().astype(int))
        knees = set(pareto.loc[_knee_flags(pareto), "number"].dropna().astype(int))
    else:
        front, knees = _front_numbers(points), set()
        knee = sweep.summary.get("knee_trial")
        if tab._number(knee) is not None:
            knees = {int(knee)}
    numbers = points["number"].astype(int)
    points["on_front"] = numbers.isin(front)
    points["knee"] = numbers.isin(knees)
    return points.sort_values(["energy_j", "number"], kind="stable").reset_index(drop=True)


def _front_numbers(points: pd.DataFrame) -> set[int]:
    """Non-dominated trials in (max accuracy, min energy), when pareto.csv is absent."""
    front = set()
    values = points[["number", "val_acc", "energy_j"]].to_numpy(dtype=float)
    for number, acc, energy in values:
        dominated = (
            (values[:, 1] >= acc)
            & (values[:, 2] <= energy)
            & ((values[:, 1] > acc) | (values[:, 2] < energy))
        )
        if not dominated.any():
            front.add(int(number))
    return front


def importance_bars(sweep: Sweep, target: str) -> pd.DataFrame:
    """One target's parameter importance, most important first.

    Returns:
        Columns ``parameter, rank, fanova_importance, epsilon_sq, kruskal_p, best_value``.
    """
    columns = ["parameter", "rank", "fanova_importance", "epsilon_sq", "kruskal_p", "best_value"]
    importance = sweep.tables["importance"]
    if importance.empty or "target" not in importance.columns:
        return pd.DataFrame(columns=columns)
    part = importance[importance["target"] == target]
    for column in columns:
        if column not in part.columns:
            part = part.assign(**{column: np.nan})
    part = part[columns]
    if part[["fanova_importance", "epsilon_sq"]].isna().all().all():
        return pd.DataFrame(columns=columns)
    return part.sort_values("rank", kind="stable").reset_index(drop=True)


def _choice_text(value: Any) -> str:
    """A parameter value as trials.csv writes it: lists as JSON, integral floats as ints."""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if value is None:
        return ""
    return _normalise(str(value))


def _normalise(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number == int(number) and "e" not in text.lower():
        return str(int(number))
    return text


def parameter_kinds(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Per parameter: ``kind`` (categorical or numeric), ``log`` and ``choices`` (as text).

    Taken from space.yaml; without it a parameter whose values are all numbers and take at
    least five distinct values is numeric.
    """
    spec_of = sweep.space.get("params") if isinstance(sweep.space.get("params"), dict) else {}
    trials = sweep.tables["trials"]
    kinds: dict[str, dict[str, Any]] = {}
    for name in sweep.params:
        spec = spec_of.get(name) if isinstance(spec_of.get(name), dict) else None
        if spec is not None and "choices" in spec:
            choices = [_choice_text(c) for c in spec.get("choices") or []]
            kinds[name] = {"kind": "categorical", "log": False, "choices": choices}
            continue
        if spec is not None and ("low" in spec or "high" in spec):
            kinds[name] = {"kind": "numeric", "log": bool(spec.get("log")), "choices": []}
            continue
        values = trials.get(f"param_{name}", pd.Series(dtype=object)).dropna()
        numbers = pd.to_numeric(values, errors="coerce")
        numeric = len(values) and numbers.notna().all() and numbers.nunique() >= _NUMERIC_MIN_VALUES
        if numeric:
            positive = numbers[numbers > 0]
            log = len(positive) == len(numbers) and positive.max() / positive.min() > 100
            kinds[name] = {"kind": "numeric", "log": bool(log), "choices": []}
        else:
            kinds[name] = {"kind": "categorical", "log": False, "choices": []}
    return kinds


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as an array (NaN when absent), free of the frame's index."""
    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def parameter_effects(sweep: Sweep) -> pd.DataFrame:
    """Long table of completed trials per parameter, for the distribution figures.

    Returns:
        Columns ``parameter, kind, value, x, order, number, val_acc, energy_j``: ``value``
        is the text of the value, ``x`` its number (numeric parameters), ``order`` the
        position of a categorical value among the space's choices.
    """
    columns = ["parameter", "kind", "value", "x", "order", "number", "val_acc", "energy_j"]
    done = _completed(sweep)
    if done.empty:
        return pd.DataFrame(columns=columns)
    kinds = parameter_kinds(sweep)
    parts = []
    for name, spec in kinds.items():
        column = f"param_{name}"
        if column not in done.columns:
            continue
        raw = done[column]
        part = pd.DataFrame(
            {
                "parameter": name,
                "kind": spec["kind"],
                "value": [_normalise(str(v)) if pd.notna(v) else "(none)" for v in raw],
                "x": _column(done, column) if spec["kind"] == "numeric" else np.nan,
                "number": done["number"].to_numpy(),
                "val_acc": _column(done, "val_acc"),
                "energy_j": _column(done, "energy_j"),
            }
        )
        if spec["kind"] == "categorical":
            order = {choice: i for i, choice in enumerate(spec["choices"])}
            seen = sorted(set(part["value"]) - set(order), key=str)
            order.update({value: len(order) + i for i, value in enumerate(seen)})
            part["order"] = part["value"].map(order).astype(float)
        else:
            part["order"] = np.nan
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def parameter_groups(effects: pd.DataFrame) -> pd.DataFrame:
    """Per categorical parameter value: trials, median and mean energy and accuracy.

    Returns:
        Columns ``parameter, value, trials, energy_j_median, energy_j_mean,
        val_acc_median, val_acc_mean`` in choice order.
    """
    columns = [
        "parameter",
        "value",
        "trials",
        "energy_j_median",
        "energy_j_mean",
        "val_acc_median",
        "val_acc_mean",
    ]
    categorical = effects[effects["kind"] == "categorical"] if not effects.empty else effects
    if categorical.empty:
        return pd.DataFrame(columns=columns)
    grouped = categorical.groupby(["parameter", "order", "value"], sort=False)
    table = grouped.agg(
        trials=("number", "size"),
        energy_j_median=("energy_j", "median"),
        energy_j_mean=("energy_j", "mean"),
        val_acc_median=("val_acc", "median"),
        val_acc_mean=("val_acc", "mean"),
    ).reset_index()
    params = list(dict.fromkeys(categorical["parameter"]))
    table["position"] = table["parameter"].map({p: i for i, p in enumerate(params)})
    table = table.sort_values(["position", "order"], kind="stable")
    return table[columns].reset_index(drop=True)


def best_trial(sweep: Sweep) -> tuple[int | None, Path | None]:
    """The most efficient completed trial (highest accuracy per kJ) and its run directory.

    Returns:
        (number, run directory); the directory is None when it is not on this machine.
    """
    top = sweep.tables["top_efficiency"]
    number = None
    if not top.empty and top["number"].notna().any():
        number = int(top["number"].dropna().iloc[0])
    else:
        done = _completed(sweep)
        if "efficiency_acc_per_kj" in done.columns and done["efficiency_acc_per_kj"].notna().any():
            number = int(done.loc[done["efficiency_acc_per_kj"].idxmax(), "number"])
    if number is None:
        return None, None
    trials = sweep.tables["trials"]
    candidates = [sweep.path / "trials" / str(number)]
    if "run_dir" in trials.columns:
        written = trials.loc[trials["number"] == number, "run_dir"].dropna()
        if not written.empty:
            run_dir = Path(str(written.iloc[0]))
            candidates.insert(0, run_dir if run_dir.is_absolute() else sweep.path / run_dir)
    for candidate in candidates:
        if candidate.is_dir() and is_run_directory(candidate):
            return number, candidate
    return number, None


def failed_trials(sweep: Sweep) -> pd.DataFrame:
    """Trials that did not complete: ``number, state, fail_reason, error``."""
    columns = ["number", "state", "fail_reason", "error"]
    trials = sweep.tables["trials"]
    if trials.empty or "state" not in trials.columns:
        return pd.DataFrame(columns=columns)
    failed = trials[trials["state"] != "complete"]
    return failed[[c for c in columns if c in failed.columns]].reset_index(drop=True)


# -- the report ---------------------------------------------------------------------------


def _targets(sweep: Sweep) -> list[str]:
    objectives = [str(o) for o in sweep.summary.get("objectives") or []]
    return ["energy", "accuracy"] + (["efficiency"] if "efficiency" in objectives else [])


def sweep_figures(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The figures that have data, by name, in report order."""
    sources = sweep.energy_sources
    drawn: dict[str, Any] = {
        "sweep_pareto": sfig.pareto_figure(tables["pareto_points"], sweep.name, sources),
        "sweep_importance": sfig.importance_figure(
            {t: tables[f"importance_{t}"] for t in _targets(sweep)}, sweep.name
        ),
        "sweep_energy_by_parameter": sfig.effects_figure(
            tables["parameter_effects"], "energy_j", sweep.name, sources
        ),
        "sweep_accuracy_by_parameter": sfig.effects_figure(
            tables["parameter_effects"], "val_acc", sweep.name, sources
        ),
    }
    number, run_dir = best_trial(sweep)
    if run_dir is not None:
        run = load_run(run_dir)
        label = f"{sweep.name}, trial {number} (most efficient)"
        drawn["best_trial_curves"] = fig.training_curves_figure(tab.training_curves(run), label)
        drawn["best_trial_energy"] = fig.energy_figure(tab.energy_per_epoch(run), label)
    elif number is not None:
        logger.info("trial %s: run directory not found; its curves are left out", number)
    skipped = [name for name in SWEEP_FIGURES if drawn.get(name) is None]
    if skipped:
        logger.info("%s: no data for figure(s) %s; skipped", sweep.path, ", ".join(skipped))
    return {name: drawn[name] for name in SWEEP_FIGURES if drawn.get(name) is not None}


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
    for target in ("energy", "accuracy", "efficiency"):
        tables[f"importance_{target}"] = importance_bars(sweep, target)
    for name in TOP_TITLES:
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


def _front_sections(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(PORTRAIT)
    overview = tables["overview"]
    pairs = zip(overview["key"], overview["value"], strict=True)
    sections = opening_sections("Study", pairs, sweep.problems, width)
    best = sweep.tables["best_values"]
    if not best.empty:
        shown = _for_text(best).rename(columns=lambda c: c.removeprefix("best_for_"))
        sections += frame_sections(shown, "Best value of each parameter, per target", width)
    failed = tables["failed"]
    if not failed.empty:
        sections += frame_sections(failed, "Trials that did not complete", width, 60)
    return sections


def _table_sections(sweep: Sweep, tables: dict[str, pd.DataFrame]) -> list[Section]:
    width = page_width_chars(LANDSCAPE, TABLE_FONT_SIZE)
    estimated = is_estimated(sweep.energy_sources)
    note = " (energy estimated, not measured)" if estimated else ""
    sections = []
    for name, title in TOP_TITLES.items():
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
    trials = _param_display(
        _completed(sweep),
        ("number", "val_acc", "energy_j", "avg_power_w", "efficiency_acc_per_kj", "time_s"),
    )
    note = " (energy estimated, not measured)" if is_estimated(sweep.energy_sources) else ""
    sections += frame_sections(_for_text(trials), f"All completed trials{note}", width, 300)
    return sections


def write_sweep_report(sweep: Sweep, out: Path) -> list[str]:
    """Write PNGs, ``report.pdf`` and ``report.xlsx`` for a sweep into ``out``.

    Returns:
        The title of every PDF page, in order.
    """
    out.mkdir(parents=True, exist_ok=True)
    tables = sweep_tables(sweep)
    drawn = sweep_figures(sweep, tables)
    save_pngs(drawn, SWEEP_FIGURES, out)
    title = f"Sweep report: {sweep.name}"
    intro = [f"sweep directory: {sweep.path.resolve()}", f"analysis: {sweep.analysis_dir}"]
    front = text_pages(_front_sections(sweep, tables), title, intro=intro)
    tops = text_pages(
        _table_sections(sweep, tables),
        f"Top trials: {sweep.name}",
        size=LANDSCAPE,
        font_size=TABLE_FONT_SIZE,
    )
    back = text_pages(
        _appendix_sections(sweep, tables),
        f"Tables: {sweep.name}",
        size=LANDSCAPE,
        font_size=TABLE_FONT_SIZE,
    )
    pages, names = assemble(("title", front), ("top trials", tops), drawn, ("tables", back))
    save_pdf(pages, out / "report.pdf", title=title, footer=f"edgetrain sweep report: {sweep.name}")
    sheets = {
        "overview": tables["overview"],
        **{name: sweep.tables[name] for name in ANALYSIS_TABLES},
        "pareto_points": tables["pareto_points"],
        "parameter_effects": tables["parameter_effects"],
        "parameter_groups": tables["parameter_groups"],
    }
    write_xlsx({name: with_numbers(frame) for name, frame in sheets.items()}, out / "report.xlsx")
    return names
