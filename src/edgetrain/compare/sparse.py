"""``edgetrain sparse-compare``: a grid of sparse-update trainings and one results table.

For every scheme, budget (budgeted schemes only: ``full``, ``last_k`` and ``bias_only``
run once per seed) and seed, one training run goes to ``OUT/runs/<scheme>-b<budget>-s<seed>/``.
Besides the run directory, each run is measured by two callbacks added here:

- the test split is evaluated after every epoch, and the table reports the task's best
  metric on the test split (``test_acc`` for classification, ``test_rmse`` for
  regression) at the epoch that is best by that metric on the validation split
  (``best_val_acc``, ``best_val_rmse``; the first such epoch; the last epoch when there is
  no validation split). ``summary.json`` only has the final test metrics.
- training memory per step is accounted: parameters + gradients + optimizer state +
  saved-for-backward activations (saved-tensor hooks, each storage once); its peak over
  the run is ``peak_train_bytes``. ``step_time_s`` is the median wall time of a training
  step's compute (forward, backward, optimizer step), the first step excluded;
  ``step_cpu_s`` its median process CPU time (all threads: less disturbed by other
  processes on a shared machine).

``OUT/runs.csv`` has one row per run; ``OUT/results.csv`` and ``OUT/results.xlsx``
(sheets ``results`` and ``runs``) the mean and standard deviation over seeds.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from edgetrain.config import TrainConfig, config_to_dict, load_config
from edgetrain.config.sparse import BUDGETED_SCHEMES, SCHEMES
from edgetrain.errors import EdgeTrainError, MissingExtraError, suggest
from edgetrain.safefs import DirLock, claim_dir
from edgetrain.train import Callback, TrainState, evaluate, prepare_data, train
from edgetrain.train.features.sparse import SparseUpdateCallback

__all__ = [
    "CompareResult",
    "StepCostCallback",
    "TestEveryEpochCallback",
    "parse_budgets",
    "parse_schemes",
    "result_metrics",
    "run_label",
    "sparse_compare",
    "summarize_runs",
]

log = logging.getLogger(__name__)

#: What each run costs, summarised over seeds after its metrics.
COST_METRICS = (
    "updated_params",
    "trainable_frac",
    "peak_train_bytes",
    "step_time_s",
    "step_cpu_s",
    "train_time_s",
)
#: The summarised columns of a classification comparison (any: :func:`result_metrics`).
RESULT_METRICS = ("test_acc", "best_val_acc", *COST_METRICS)


def parse_schemes(text: str) -> list[str]:
    """'velocity,random' -> ['velocity', 'random'] (checked against the known schemes)."""
    schemes = [s.strip() for s in str(text).split(",") if s.strip()]
    if not schemes:
        raise EdgeTrainError(f"--schemes needs at least one of {', '.join(SCHEMES)}, got {text!r}")
    for s in schemes:
        if s not in SCHEMES:
            raise EdgeTrainError(
                f"unknown scheme '{s}' in --schemes; choose from {', '.join(SCHEMES)}"
                f"{suggest(s, SCHEMES)}"
            )
    return list(dict.fromkeys(schemes))


def parse_budgets(text: str) -> list[int | float | str]:
    """'0.1,0.25,300MiB,50000' -> [0.1, 0.25, '300MiB', 50000], validated like the config."""
    from edgetrain.config.sparse import SparseUpdateConfig

    out: list[int | float | str] = []
    for raw in (b.strip() for b in str(text).split(",")):
        if not raw:
            continue
        value: int | float | str
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        try:
            SparseUpdateConfig(scheme="velocity", budget=value)
        except Exception as exc:
            raise EdgeTrainError(
                f"--budgets: {raw!r} is not a budget (a fraction in (0, 1], a number of "
                "parameters or a size such as '300MiB')"
            ) from exc
        out.append(value)
    return out


def run_label(scheme: str, budget: int | float | str | None, seed: int) -> str:
    """Directory name of one run: 'velocity-b0.1-s0', 'full-s0'."""
    part = f"-b{budget}" if budget is not None else ""
    return f"{scheme}{part}-s{seed}"


class TestEveryEpochCallback(Callback):
    """Evaluates the test split after each epoch (kept here, not in metrics.csv): the task's
    best metric on it (``test_key``: ``test_acc`` for classification, ``test_rmse``...)."""

    name = "test_every_epoch"

    def __init__(self, test_set: Dataset | None) -> None:
        self.test_set = test_set
        self.values: list[float | None] = []
        self.test_key = "test_acc"

    @property
    def test_acc(self) -> list[float | None]:
        """The values per epoch (the name of classification's metric, kept for callers)."""
        return self.values

    def on_epoch_end(self, state: TrainState) -> None:
        self.test_key = "test_" + state.task.best_metric.removeprefix("val_")
        if self.test_set is None:
            self.values.append(None)
            return
        self.values.append(
            evaluate(state.model, state.model, self.test_set, state, "test").get(self.test_key)
        )


class StepCostCallback(Callback):
    """Accounts training memory per step and records step compute times.

    Memory = parameters + gradients + optimizer state + saved-for-backward tensors (each
    storage once, parameters excluded), all taken at the end of a step.
    """

    name = "step_cost"

    def __init__(self) -> None:
        self.peak_train_bytes = 0
        self.peak_saved_bytes = 0
        self.step_times_s: list[float] = []
        self.step_cpu_s: list[float] = []  # process CPU time: less disturbed by other processes
        self._cpu0 = 0.0
        self._saved: dict[int, int] = {}
        self._params: set[int] = set()
        self._ctx: Any = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._params:
            self._saved[key] = storage.nbytes()
        return t

    def on_batch_start(self, state: TrainState) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in state.model.parameters()}
        self._saved = {}
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        self._cpu0 = time.process_time()

    def on_batch_end(self, state: TrainState) -> None:
        self.step_cpu_s.append(time.process_time() - self._cpu0)
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
        params = list(state.model.parameters())
        weights = sum(p.numel() * p.element_size() for p in params)
        grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        opt_state = sum(
            v.numel() * v.element_size()
            for s in state.optimizer.state.values()
            for v in s.values()
            if torch.is_tensor(v)
        )
        saved = sum(self._saved.values())
        self.peak_saved_bytes = max(self.peak_saved_bytes, saved)
        self.peak_train_bytes = max(self.peak_train_bytes, weights + grads + opt_state + saved)
        if state.batch_timing is not None:
            self.step_times_s.append(state.batch_timing.compute_s)

    def on_fit_end(self, state: TrainState) -> None:
        if self._ctx is not None:  # interrupted inside a step
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    @property
    def step_time_s(self) -> float | None:
        """Median wall time of a step's compute, the first step excluded."""
        times = self.step_times_s[1:] or self.step_times_s
        return statistics.median(times) if times else None

    @property
    def step_cpu_time_s(self) -> float | None:
        """Median process CPU time of a step (all threads), the first step excluded."""
        times = self.step_cpu_s[1:] or self.step_cpu_s
        return statistics.median(times) if times else None


@dataclass
class CompareResult:
    """What :func:`sparse_compare` wrote."""

    table: pd.DataFrame  # mean and std per scheme and budget
    runs: pd.DataFrame  # one row per run
    out: Path
    csv_path: Path
    xlsx_path: Path | None


def _best_epoch(history: pd.DataFrame, metric: str = "val_acc", mode: str = "max") -> int:
    """0-based index of the first epoch with the best ``metric`` (the last without any)."""
    if metric not in history.columns:
        return len(history) - 1
    val = pd.to_numeric(history[metric], errors="coerce").reset_index(drop=True)
    if val.notna().any():
        return int(val.idxmax() if mode == "max" else val.idxmin())
    return len(history) - 1


def result_metrics(columns: Iterable[str]) -> list[str]:
    """The columns of a runs table summarised over seeds: its test metric, its best
    validation metric (``test_acc, best_val_acc`` for classification), then the costs."""
    columns = list(columns)
    tests = [c for c in columns if c.startswith("test_")]
    best = [c for c in columns if c.startswith("best_val_")]
    return [*tests, *best, *COST_METRICS]


def run_one(
    config: TrainConfig, label: str, out: Path, extra_callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Train one configuration and return its row of measurements."""
    data, _ = prepare_data(config)
    tester = TestEveryEpochCallback(data.test)
    meter = StepCostCallback()
    sparse = SparseUpdateCallback(config.sparse_update, data.train)
    t0 = time.perf_counter()
    result = train(
        config,
        overrides=[f"out={out / 'runs' / label}"],
        callbacks=[sparse, meter, tester, *extra_callbacks],
        overwrite=True,
        progress=False,
    )
    wall_s = time.perf_counter() - t0
    history = result.history
    task = result.summary.get("task") or {}
    metric = str(task.get("best_metric") or "val_acc")
    mode = str(task.get("best_mode") or "max")
    best = _best_epoch(history, metric, mode)
    test_key = "test_" + metric.removeprefix("val_")
    info = result.summary.get("sparse_update") or {}
    total = info.get("total_params")
    updated = info.get("mean_updated_params")
    if updated is None:  # another SparseUpdateCallback did the work: read the run's summary
        total = total or sum(p.numel() for p in result.model.parameters())
        updated = total
    return {
        "scheme": config.sparse_update.scheme,
        "budget": config.sparse_update.budget,
        "seed": config.seed,
        "run": str(result.run_dir),
        "best_epoch": best + 1,
        f"best_{metric}": _float(history[metric].iloc[best]) if metric in history else None,
        test_key: tester.values[best] if best < len(tester.values) else None,
        f"final_{test_key}": (result.summary.get("test") or {}).get(test_key),
        "updated_params": updated,
        "total_params": total,
        "trainable_frac": updated / total if total else None,
        "peak_train_bytes": meter.peak_train_bytes or None,
        "peak_saved_bytes": meter.peak_saved_bytes or None,
        "step_time_s": meter.step_time_s,
        "step_cpu_s": meter.step_cpu_time_s,
        "train_time_s": float(pd.to_numeric(history["time_s"], errors="coerce").sum()),
        "wall_s": wall_s,
    }


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if out != out else out


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per (scheme, budget) of
    :func:`result_metrics`; order kept."""
    rows = []
    keys = pd.Series(
        [
            f"{s}|{'' if pd.isna(b) else b}"
            for s, b in zip(runs["scheme"], runs["budget"], strict=True)
        ],
        index=runs.index,
    )
    for key in dict.fromkeys(keys):
        group = runs[keys == key]
        first = group.iloc[0]
        row: dict[str, Any] = {
            "scheme": first["scheme"],
            "budget": None if pd.isna(first["budget"]) else first["budget"],
            "seeds": len(group),
        }
        for metric in result_metrics(runs.columns):
            column = group[metric] if metric in group else pd.Series(dtype=float)
            values = pd.to_numeric(column, errors="coerce").dropna()
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else None
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


def _write_xlsx(sheets: dict[str, pd.DataFrame], path: Path) -> Path:
    import importlib.util

    if importlib.util.find_spec("openpyxl") is None:
        raise MissingExtraError("openpyxl", "xlsx", "the sparse-compare workbook")
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
        for name, frame in sheets.items():
            frame.to_excel(writer, sheet_name=name, index=False)
    tmp.replace(path)
    return path


def grid(
    schemes: Iterable[str], budgets: Sequence[int | float | str], seeds: Sequence[int]
) -> list[tuple[str, int | float | str | None, int]]:
    """(scheme, budget, seed) for every run; unbudgeted schemes get budget None."""
    out: list[tuple[str, int | float | str | None, int]] = []
    for scheme in schemes:
        if scheme in BUDGETED_SCHEMES:
            if not budgets:
                raise EdgeTrainError(f"scheme '{scheme}' needs --budgets")
            out += [(scheme, b, s) for b in budgets for s in seeds]
        else:
            out += [(scheme, None, s) for s in seeds]
    return out


def sparse_compare(
    config: TrainConfig | str | Path | dict[str, Any] | None,
    *,
    schemes: Sequence[str],
    budgets: Sequence[int | float | str],
    seeds: int = 3,
    out: str | Path | None = None,
    overrides: Iterable[str] = (),
    on_run: Callable[[int, int, str, dict[str, Any] | None], None] | None = None,
) -> CompareResult:
    """Run every (scheme, budget, seed) and write the runs and results tables.

    Args:
        config: the base training config (a file, a mapping or a TrainConfig).
        schemes: sparse_update schemes to compare.
        budgets: budgets for the budgeted schemes (velocity, random, static).
        seeds: number of seeds: the config's seed, seed+1, ...
        out: the comparison directory (default runs/sparse-compare-<time>).
        overrides: ``key=value`` strings applied to the base config.
        on_run: called as ``on_run(index, total, label, row)`` before (row None) and
            after each run.
    """
    if seeds < 1:
        raise EdgeTrainError(f"--seeds must be >= 1, got {seeds}")
    source = config_to_dict(config) if isinstance(config, TrainConfig) else config
    base = load_config(source, overrides=list(overrides))
    if out is None:
        out = Path("runs") / f"sparse-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    # a comparison of edgetrain's own may be run again into the same directory; a folder of
    # the user's is refused (docs/design.md, "Files and safety")
    lock = DirLock(out, "comparison directory")
    claim_dir(out, "sparse-compare", reuse=True, what="comparison directory", lock=lock)
    try:
        plan = grid(schemes, budgets, [base.seed + i for i in range(seeds)])
        rows: list[dict[str, Any]] = []
        runs_csv = out / "runs.csv"
        for index, (scheme, budget, seed) in enumerate(plan):
            label = run_label(scheme, budget, seed)
            if on_run:
                on_run(index, len(plan), label, None)
            sparse = {"scheme": scheme, "budget": budget if scheme in BUDGETED_SCHEMES else None}
            data = config_to_dict(base)
            data["seed"] = seed
            data["sparse_update"] = {**data["sparse_update"], **sparse}
            cfg = load_config(data)
            row = run_one(cfg, label, out)
            rows.append(row)
            pd.DataFrame(rows).to_csv(runs_csv, index=False)  # readable if stopped mid-grid
            if on_run:
                on_run(index, len(plan), label, row)
    finally:
        lock.release()
    runs = pd.DataFrame(rows)
    table = summarize_runs(runs)
    csv_path = out / "results.csv"
    table.to_csv(csv_path, index=False)
    xlsx_path: Path | None
    try:
        xlsx_path = _write_xlsx({"results": table, "runs": runs}, out / "results.xlsx")
    except MissingExtraError as exc:
        log.warning("%s; skipped results.xlsx", exc)
        xlsx_path = None
    return CompareResult(table=table, runs=runs, out=out, csv_path=csv_path, xlsx_path=xlsx_path)
