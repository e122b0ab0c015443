"""Run a grid of configurations and write where each one's training time went.

For each configuration ``k`` the benchmark trains a normal run in ``DIR/runs/<k>/`` with
a :class:`~edgetrain.bench.timing.BatchTimer` and, at the start of training (after the
data set was opened and preprocessing statistics were read, before epoch 1), measures the
data files' page-cache residency and evicts them when asked. Rows go to
``DIR/batches.csv``, ``DIR/epochs.csv`` and ``DIR/summary.csv`` as they are made;
``DIR/device.json`` records the device settings and the benchmark's own settings;
``DIR/breakdown.png`` shows stall, copy and compute per configuration.

A data set held in memory (digits, synthetic, cifar10) does no file I/O, so by default it
is exported once to ``DIR/data`` (one .npy file per sample, exact) and the ``folder``
data set over that directory is benchmarked instead; ``export=False`` keeps it in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.bench.cache import METHODS, Eviction, Residency, evict, residency
from edgetrain.bench.device import device_settings
from edgetrain.bench.export import export_samples
from edgetrain.bench.grid import GridAxis, GridPoint, apply_settings, expand_grid, parse_grid
from edgetrain.bench.plot import PLOT_FILE, breakdown_table, draw_breakdown
from edgetrain.bench.summary import (
    EPOCH_COST_COLUMNS,
    summarize_epochs,
    summary_columns,
)
from edgetrain.bench.timing import BATCH_COLUMNS, EPOCH_TIMING_COLUMNS, BatchTimer, EpochTiming
from edgetrain.config import TrainConfig, config_to_dict, load_config, read_yaml, validate_config
from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.safefs import DirLock, claim_dir, dumps_strict, refuse_dangerous
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.rundir import CsvLog, atomic_write_text

__all__ = [
    "BENCH_FILES",
    "DEFAULT_EPOCHS",
    "DEFAULT_WARMUP_EPOCHS",
    "BenchResult",
    "load_bench_config",
    "run_bench",
]

log = logging.getLogger(__name__)

#: The study's protocol: 6 epochs, the first one (start-up costs) left out.
DEFAULT_EPOCHS = 6
DEFAULT_WARMUP_EPOCHS = 1
BENCH_FILES = ("batches.csv", "epochs.csv", "summary.csv", "device.json", PLOT_FILE, "runs")
_SECTION_KEYS = ("epochs", "warmup_epochs", "grid", "drop_cache", "cache_method", "export")


@dataclass(frozen=True)
class BenchResult:
    """What :func:`run_bench` wrote.

    Attributes:
        out: the bench directory.
        summary: summary.csv as a DataFrame (one row per configuration).
        epochs: epochs.csv as a DataFrame.
        grid_keys: the keys the grid varies.
        device: what device.json holds.
        plot: the breakdown PNG.
        notes: things the user should know (data exported, combinations skipped).
    """

    out: Path
    summary: pd.DataFrame
    epochs: pd.DataFrame
    grid_keys: list[str]
    device: dict[str, Any]
    plot: Path
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _DataPlan:
    """What one configuration's data set becomes: settings to apply and files to evict."""

    settings: dict[str, Any]
    files: tuple[Path, ...]
    data_path: Path | None
    note: str = ""


class _PageCache(Callback):
    """Residency (and eviction) when training starts, residency again when it ends."""

    name = "bench-page-cache"

    def __init__(
        self, files: Sequence[Path], drop: bool, method: str, drop_path: Path | None
    ) -> None:
        self.files, self.drop, self.method, self.drop_path = list(files), drop, method, drop_path
        self.eviction: Eviction | None = None
        self.before: Residency | None = None
        self.end: Residency | None = None

    def on_fit_start(self, state: TrainState) -> None:
        if self.drop and self.files:
            self.eviction = evict(self.files, method=self.method, drop_caches_path=self.drop_path)
            self.before = self.eviction.before
        else:
            self.before = residency(self.files) if self.files else None

    def on_fit_end(self, state: TrainState) -> None:
        self.end = residency(self.files) if self.files else None

    def columns(self) -> dict[str, Any]:
        ev = self.eviction
        method = ev.method if ev is not None else "kept"
        if not self.files:
            method = "none (in memory)"
        return {
            "cache_method": method,
            "resident_before_frac": _frac(self.before),
            "resident_after_frac": _frac(ev.after) if ev is not None else _frac(self.before),
            "resident_end_frac": _frac(self.end),
        }


def _frac(res: Residency | None) -> float | None:
    return res.fraction if res is not None else None


def load_bench_config(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
) -> tuple[TrainConfig, dict[str, Any]]:
    """The training config and the ``bench:`` section of a YAML file or mapping.

    ``bench:`` may hold ``epochs``, ``warmup_epochs``, ``grid`` (key -> list of values),
    ``drop_cache``, ``cache_method`` and ``export``; everything else is a training key.
    """
    if isinstance(config, TrainConfig):
        return load_config(config_to_dict(config), overrides=overrides), {}
    data = dict(config) if isinstance(config, Mapping) else read_yaml(config)
    section = data.pop("bench", None) or {}
    if not isinstance(section, Mapping):
        raise EdgeTrainError(f"bench must be a mapping of bench settings, got {section!r}")
    for key in section:
        if key not in _SECTION_KEYS:
            raise EdgeTrainError(
                f"unknown key 'bench.{key}'{suggest(str(key), _SECTION_KEYS)}; "
                f"bench accepts: {', '.join(_SECTION_KEYS)}"
            )
    grid = section.get("grid")
    if grid is not None and not isinstance(grid, Mapping):
        raise EdgeTrainError(f"bench.grid must map config keys to lists of values, got {grid!r}")
    return load_config(data, overrides=overrides), dict(section)


def _int_setting(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EdgeTrainError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _prepare_out(out: Path, overwrite: bool) -> DirLock:
    """Claim ``out`` as a bench directory (see docs/design.md, "Files and safety") and lock it.

    Earlier results are removed only with ``overwrite`` and only from a directory edgetrain
    marked as a bench directory.
    """
    if out.exists() and not out.is_dir():
        raise EdgeTrainError(f"bench directory {out} exists and is not a directory")
    present = [name for name in BENCH_FILES if out.is_dir() and (out / name).exists()]
    if present and not overwrite:
        raise EdgeTrainError(
            f"bench directory {out} already holds results ({', '.join(present)}); "
            "use --overwrite to replace them or choose another --out"
        )
    lock = DirLock(out, "bench directory")
    claim_dir(out, "bench", reuse=True, what="bench directory", lock=lock)
    try:
        if present:
            refuse_dangerous(out, "bench directory")
        for name in present:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def _data_key(cfg: TrainConfig) -> str:
    return json.dumps(
        [cfg.data, str(cfg.data_path), cfg.image_size, cfg.channels, cfg.data_args, cfg.seed],
        sort_keys=True,
        default=str,
    )


def _plan_data(
    cfg: TrainConfig, out: Path, export: bool, overwrite: bool, exported: int
) -> _DataPlan:
    """Open the configured data set once; export it when it is held in memory."""
    from edgetrain.zoo import load_dataset

    common = {"image_size": cfg.image_size, "channels": cfg.channels, "seed": cfg.seed}
    dataset, info = load_dataset(cfg.data, data_path=cfg.data_path, **common, **cfg.data_args)
    if info.files:
        return _DataPlan({}, info.files, cfg.data_path)
    if not export:
        return _DataPlan(
            {}, (), cfg.data_path, f"data set '{cfg.data}' is held in memory: no file I/O"
        )
    if info.task != "classification":  # the folder export is for image classes
        return _DataPlan(
            {},
            (),
            cfg.data_path,
            f"data set '{cfg.data}' ({info.task}) is held in memory and not exported: no file I/O",
        )
    target = out / ("data" if exported == 0 else f"data-{exported + 1}")
    spec = {"data": cfg.data, "data_path": cfg.data_path, "data_args": cfg.data_args, **common}
    result = export_samples(
        dataset, info.num_classes, target, fmt="npy", spec=spec, overwrite=overwrite
    )
    _, folder = load_dataset("folder", data_path=target, **common)
    how = "reused the export in" if result.reused else f"exported {result.files} samples to"
    note = (
        f"data set '{cfg.data}' is held in memory (no file I/O); {how} {target} "
        "(one .npy file per sample) and benchmarked the folder data set there"
    )
    settings = {"data": "folder", "data_path": str(target), "data_args": {}}
    return _DataPlan(settings, folder.files, target, note)


def _grid_table(grid: Sequence[str] | Mapping[str, Any]) -> tuple[list[str], Mapping[str, Any]]:
    if isinstance(grid, Mapping):
        return [], grid
    if isinstance(grid, str):
        return [grid], {}
    return list(grid), {}


def _epoch_row(
    k: int, point: GridPoint, warmup_epochs: int, timing: EpochTiming, metrics: dict[str, Any]
) -> dict[str, Any]:
    row: dict[str, Any] = {"config": k, **point.settings, "warmup": timing.epoch <= warmup_epochs}
    row.update(timing.row())
    row["epoch_time_s"] = metrics.get("time_s")
    for column in EPOCH_COST_COLUMNS[1:]:
        row[column] = metrics.get(column)
    return row


def _fmt_s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _done_line(k: int, total: int, label: str, summary: dict[str, Any], took_s: float) -> str:
    if summary["status"] != "completed":
        return f"[{k + 1}/{total}] {label}: {summary['status']}: {summary.get('note')}"
    cache = summary["cache_method"]
    before, after = summary.get("resident_before_frac"), summary.get("resident_after_frac")
    if before is not None and after is not None:
        cache += f" (resident {before:.0%} -> {after:.0%})"
    return (
        f"[{k + 1}/{total}] {label}: done in {took_s:.0f} s; per measured epoch "
        f"stall {_fmt_s(summary.get('stall_s_mean'))}, copy {_fmt_s(summary.get('copy_s_mean'))}, "
        f"compute {_fmt_s(summary.get('compute_s_mean'))}; page cache {cache}"
    )


@dataclass(frozen=True)
class _Options:
    """The benchmark's own settings, resolved (argument, then bench: section, then default)."""

    epochs: int
    warmup_epochs: int
    drop_cache: bool
    cache_method: str
    export: bool
    drop_caches_path: Path | None


def _options(section: Mapping[str, Any], given: Mapping[str, Any]) -> _Options:
    def pick(name: str, default: Any) -> Any:
        return given[name] if given.get(name) is not None else section.get(name, default)

    epochs = _int_setting("epochs", pick("epochs", DEFAULT_EPOCHS), 1)
    warmup_epochs = _int_setting("warmup_epochs", pick("warmup_epochs", DEFAULT_WARMUP_EPOCHS), 0)
    if warmup_epochs >= epochs:
        raise EdgeTrainError(
            f"warmup_epochs must be < epochs so that at least one epoch is measured, "
            f"got warmup_epochs={warmup_epochs} with epochs={epochs}"
        )
    method = pick("cache_method", "auto")
    if method not in METHODS:
        raise EdgeTrainError(
            f"cache_method must be one of {', '.join(METHODS)}, got {method!r}"
            f"{suggest(str(method), METHODS)}"
        )
    drop_path = given.get("drop_caches_path")
    return _Options(
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        drop_cache=bool(pick("drop_cache", False)),
        cache_method=method,
        export=bool(pick("export", True)),
        drop_caches_path=Path(drop_path) if drop_path else None,
    )


def _default_out(config: Any) -> Path:
    name = Path(str(config)).stem if isinstance(config, str | Path) else "bench"
    return Path("bench") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _plan_all(
    points: Sequence[tuple[GridPoint, TrainConfig]], out: Path, export: bool, overwrite: bool
) -> dict[str, _DataPlan]:
    """One data plan per distinct data set of the grid (exports numbered data, data-2, ...)."""
    plans: dict[str, _DataPlan] = {}
    for _, cfg in points:
        key = _data_key(cfg)
        if key not in plans:
            exported = sum(1 for p in plans.values() if p.settings)
            plans[key] = _plan_data(cfg, out, export, overwrite, exported)
    return plans


def _device_record(
    config: Any, axes: Sequence[GridAxis], opts: _Options, paths: Iterable[str], notes: list[str]
) -> dict[str, Any]:
    device = device_settings(sorted(set(paths)))
    device["bench"] = {
        "config": str(config) if isinstance(config, str | Path) else None,
        "grid": {axis.key: list(axis.values) for axis in axes},
        "epochs": opts.epochs,
        "warmup_epochs": opts.warmup_epochs,
        "drop_cache": opts.drop_cache,
        "cache_method": opts.cache_method,
        "export": opts.export,
        "notes": notes,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return device


class _Logs:
    """batches.csv, epochs.csv and summary.csv, each row flushed as it is written."""

    def __init__(self, out: Path, grid_keys: Sequence[str]) -> None:
        self.epoch_columns = [
            "config",
            *grid_keys,
            "warmup",
            *EPOCH_TIMING_COLUMNS,
            *EPOCH_COST_COLUMNS,
        ]
        self.batches = CsvLog(out / "batches.csv", ["config", *BATCH_COLUMNS])
        self.epochs = CsvLog(out / "epochs.csv", self.epoch_columns)
        self.summary = CsvLog(out / "summary.csv", summary_columns(grid_keys))
        self.epoch_rows: list[dict[str, Any]] = []
        self.summary_rows: list[dict[str, Any]] = []

    def epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)
        self.epoch_rows.append(row)

    def add_summary(self, row: dict[str, Any]) -> None:
        self.summary.append(row)
        self.summary_rows.append(row)

    def close(self) -> None:
        for csv_log in (self.batches, self.epochs, self.summary):
            csv_log.close()


def run_bench(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    grid: Sequence[str] | Mapping[str, Any] = (),
    *,
    epochs: int | None = None,
    warmup_epochs: int | None = None,
    drop_cache: bool | None = None,
    cache_method: str | None = None,
    export: bool | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    overrides: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
    drop_caches_path: str | Path | None = None,
) -> BenchResult:
    """Train every configuration of a grid and record where the training time went.

    Settings left as None come from the config's ``bench:`` section, then the defaults
    (6 epochs, 1 warm-up epoch, no cache eviction, method ``auto``, export on).

    Args:
        config: a YAML path, mapping or :class:`TrainConfig` (the grid's base).
        grid: ``key=v1,v2`` specs, or a mapping key -> values.
        epochs: epochs per configuration.
        warmup_epochs: leading epochs left out of the summary (shown apart).
        drop_cache: evict the data files from the page cache before each configuration.
        cache_method: ``auto``, ``drop_caches`` or ``fadvise`` (see ``edgetrain.bench.cache``).
        export: export an in-memory data set to ``out/data`` and benchmark it from files.
        out: the bench directory (default ``bench/<config name>-<time>``).
        overwrite: replace earlier results in ``out`` (an identical export is kept).
        overrides: ``key=value`` strings applied to the base config.
        progress: called with a line per configuration (start and result).
        drop_caches_path: the drop_caches file (default: the kernel's; tests point it
            elsewhere).

    Raises:
        EdgeTrainError: bad settings, grid or config; every configuration failing.
    """
    say = progress or (lambda line: log.info("%s", line))
    base, section = load_bench_config(config, overrides)
    given = {
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "drop_cache": drop_cache,
        "cache_method": cache_method,
        "export": export,
        "drop_caches_path": drop_caches_path,
    }
    opts = _options(section, given)
    specs, table = _grid_table(grid)
    axes = parse_grid(specs, {**(section.get("grid") or {}), **table})
    base = validate_config(apply_settings(config_to_dict(base), {"epochs": opts.epochs}))
    points, skipped = expand_grid(base, axes)
    if not points:
        raise EdgeTrainError(f"no valid configuration in the grid; first problem: {skipped[0][1]}")
    grid_keys = [axis.key for axis in axes]
    out = Path(out) if out is not None else _default_out(config)
    lock = _prepare_out(out, overwrite)
    try:
        plans = _plan_all(points, out, opts.export, overwrite)
        notes = [
            f"configuration {GridPoint(p.settings).label()} skipped: {why}" for p, why in skipped
        ]
        notes += [plan.note for plan in plans.values() if plan.note]
        for note in notes:
            say(note)
        paths = [str(p.data_path) for p in plans.values() if p.data_path is not None]
        device = _device_record(config, axes, opts, paths, notes)
        atomic_write_text(out / "device.json", dumps_strict(device))

        logs = _Logs(out, grid_keys)
        try:
            for k, (point, cfg) in enumerate(points):
                extra = f" ({'; '.join(point.notes)})" if point.notes else ""
                say(
                    f"[{k + 1}/{len(points)}] {point.label()}: training {opts.epochs} epochs{extra}"
                )
                started = time.perf_counter()
                summary = _run_one(k, point, cfg, plans[_data_key(cfg)], out, opts, logs)
                logs.add_summary(summary)
                took_s = time.perf_counter() - started
                say(_done_line(k, len(points), point.label(), summary, took_s))
            for point, why in skipped:
                logs.add_summary({"status": "skipped", "note": why, **point.settings})
        finally:
            logs.close()

        summary_frame = pd.DataFrame(logs.summary_rows, columns=summary_columns(grid_keys))
        if not (summary_frame["status"] == "completed").any():
            raise EdgeTrainError(
                f"every configuration failed; first problem: {summary_frame['note'].iloc[0]}"
            )
        plot = draw_breakdown(breakdown_table(summary_frame, grid_keys), out / PLOT_FILE)
        return BenchResult(
            out=out,
            summary=summary_frame,
            epochs=pd.DataFrame(logs.epoch_rows, columns=logs.epoch_columns),
            grid_keys=grid_keys,
            device=device,
            plot=plot,
            notes=notes,
        )
    finally:
        lock.release()


def _run_one(
    k: int,
    point: GridPoint,
    cfg: TrainConfig,
    plan: _DataPlan,
    out: Path,
    opts: _Options,
    logs: _Logs,
) -> dict[str, Any]:
    """Train configuration ``k``; returns its summary row."""
    from edgetrain.train import train

    run_dir = out / "runs" / str(k)
    settings = {**plan.settings, "out": str(run_dir)}
    cfg = validate_config(apply_settings(config_to_dict(cfg), settings))
    cache = _PageCache(plan.files, opts.drop_cache, opts.cache_method, opts.drop_caches_path)
    rows: list[dict[str, Any]] = []

    def epoch_done(timing: EpochTiming, metrics: dict[str, Any]) -> None:
        row = _epoch_row(k, point, opts.warmup_epochs, timing, metrics)
        rows.append(row)
        logs.epoch(row)

    timer = BatchTimer(
        on_batch=lambda record: logs.batches.append({"config": k, **record.row()}),
        on_epoch=epoch_done,
    )
    base = {
        "config": k,
        **point.settings,
        "data_path": str(plan.data_path) if plan.data_path is not None else None,
        "run_dir": str(run_dir),
    }
    notes = list(point.notes)
    try:
        train(cfg, callbacks=[cache, timer], overwrite=True, progress=False)
    except EdgeTrainError as exc:
        log.warning("configuration %d (%s) failed: %s", k, point.label(), exc)
        return {
            **base,
            "status": "failed",
            "note": "; ".join([*notes, str(exc)]),
            **cache.columns(),
        }
    if cache.eviction is not None and cache.eviction.note:
        notes.append(cache.eviction.note)
    summary = summarize_epochs(pd.DataFrame(rows), opts.warmup_epochs)
    return {
        **base,
        "status": "completed",
        "note": "; ".join(notes) or None,
        **summary,
        **cache.columns(),
    }
