"""What a sweep optimises: a validation metric, training energy, or accuracy per kilojoule.

Objectives are named in the space file (``objectives:``) or with ``--objectives``:

- ``accuracy``: validation accuracy (``val_acc``), higher is better;
- any validation metric with its direction: ``val_rmse:min``, ``val_r2:max``,
  ``val_perplexity:min`` (a built-in metric may leave the direction out: ``val_rmse``);
- ``metric``: the task's own best metric (``val_acc:max`` for classification,
  ``val_rmse:min`` for regression, ``val_loss:min`` for language modelling);
- ``energy``: training energy (J), lower is better;
- ``efficiency``: validation accuracy per kilojoule (classification).

The default is the task's best metric and energy. Optuna needs each objective's direction
when the study is made, before any trial ran, so the task is read from the base config
(``task``, or the built-in data set's own task); a trial's ``summary.json`` then says which
metrics it recorded, and a trial without the objective's metric fails with a message that
names them.

Energy, never power: a slow low-power run can use several times the energy of a fast
high-power one (greenscreen's batch 4 drew less power than batch 128 but used about 8x
the energy per epoch). Metrics are always *validation* metrics; test data is read only by
the final training's report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgetrain.contract import DEFAULT_DIRECTIONS
from edgetrain.errors import EdgeTrainError, suggest

__all__ = [
    "ALLOWED_OBJECTIVES",
    "DATA_TASKS",
    "DEFAULT_OBJECTIVES",
    "DIRECTIONS",
    "METRIC_OF",
    "TASK_METRICS",
    "Objective",
    "check_objectives",
    "default_objectives",
    "directions",
    "efficiency_acc_per_kj",
    "efficiency_column",
    "needs_energy",
    "objective_values",
    "parse_objective",
    "quality_objective",
    "resolve_objectives",
    "sweep_metric",
    "task_of_config",
]

#: objective -> Optuna direction (the named objectives; a metric objective has its own)
DIRECTIONS = {"accuracy": "maximize", "energy": "minimize", "efficiency": "maximize"}
#: objective -> the trial metric (user attribute and table column) it reads
METRIC_OF = {"accuracy": "val_acc", "energy": "energy_j", "efficiency": "efficiency_acc_per_kj"}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy", "energy")
#: the combinations a study may have; ``metric`` stands for any validation metric
ALLOWED_OBJECTIVES: tuple[tuple[str, ...], ...] = (
    ("accuracy", "energy"),
    ("efficiency",),
    ("accuracy",),
    ("energy",),
)
#: the best metric and its direction of each built-in task (``edgetrain.tasks``)
TASK_METRICS: dict[str, tuple[str, str]] = {
    "classification": ("val_acc", "max"),
    "regression": ("val_rmse", "min"),
    "language_modeling": ("val_loss", "min"),
    "model_loss": ("val_loss", "min"),
}
#: the task of each built-in data set that is not classification (``zoo`` DataInfo.task)
DATA_TASKS: dict[str, str] = {"diabetes": "regression", "pycorpus": "language_modeling"}
_MODES = {"max": "max", "min": "min", "maximize": "max", "minimize": "min"}
_NAMED = ("accuracy", "energy", "efficiency", "metric")


@dataclass(frozen=True)
class Objective:
    """One objective of a study.

    Attributes:
        name: as stored with the study: ``accuracy``, ``energy``, ``efficiency`` or
            ``<column>:<max|min>`` (``val_rmse:min``).
        column: the trial metric it reads (``val_acc``, ``energy_j``, ``val_rmse``).
        mode: ``max`` or ``min``.
    """

    name: str
    column: str
    mode: str

    @property
    def direction(self) -> str:
        """The Optuna direction: ``maximize`` or ``minimize``."""
        return "maximize" if self.mode == "max" else "minimize"

    @property
    def kind(self) -> str:
        """``energy``, ``efficiency`` or ``metric`` (a validation metric, accuracy too)."""
        return self.name if self.name in ("energy", "efficiency") else "metric"

    @property
    def target(self) -> str:
        """The name of its analysis tables and importance target: ``accuracy`` for
        ``val_acc``, else the column (``top_val_rmse.csv``, ``best_for_val_rmse``)."""
        if self.kind != "metric":
            return self.name
        return "accuracy" if self.column == "val_acc" else self.column


def _metric_objective(column: str, mode: str | None, text: str) -> Objective:
    """A validation-metric objective; ``val_acc:max`` is ``accuracy``."""
    if column.startswith("test_"):
        raise EdgeTrainError(
            f"objectives: '{text}' reads test data; a sweep optimises validation metrics "
            f"(use {'val_' + column.removeprefix('test_')}); test data is for `sweep final`"
        )
    if not column.startswith("val_"):
        column = f"val_{column}"
    name = column.removeprefix("val_")
    if mode is None:
        if name not in DEFAULT_DIRECTIONS:
            raise EdgeTrainError(
                f"objectives: give the direction of '{text}': {column}:max or {column}:min"
            )
        mode = DEFAULT_DIRECTIONS[name]
    if column == "val_acc" and mode == "max":
        return Objective("accuracy", "val_acc", "max")
    return Objective(f"{column}:{mode}", column, mode)


def parse_objective(text: str) -> Objective:
    """An objective from its name: ``accuracy``, ``energy``, ``efficiency`` or a
    validation metric with its direction (``val_rmse:min``; ``val_rmse`` for a built-in).

    Raises:
        EdgeTrainError: an unknown name, a bad direction or a test metric.
    """
    text = str(text).strip()
    if text in ("energy", "energy_j", "energy_j:min"):
        return Objective("energy", "energy_j", "min")
    if text in ("efficiency", "efficiency_acc_per_kj", "efficiency_acc_per_kj:max"):
        return Objective("efficiency", "efficiency_acc_per_kj", "max")
    if text == "accuracy":
        return Objective("accuracy", "val_acc", "max")
    column, sep, mode = text.partition(":")
    column = column.strip()
    if sep:
        if mode.strip().lower() not in _MODES:
            raise EdgeTrainError(
                f"objectives: '{text}' must end in :max or :min, got ':{mode.strip()}'"
            )
        return _metric_objective(column, _MODES[mode.strip().lower()], text)
    if column.startswith(("val_", "test_")) or column in DEFAULT_DIRECTIONS:
        return _metric_objective(column, None, text)
    raise EdgeTrainError(
        f"objectives: unknown objective '{text}'; choose from {list(_NAMED)} or a validation "
        f"metric with its direction (val_rmse:min){suggest(text, _NAMED)}"
    )


def task_of_config(base: Mapping[str, Any]) -> str | None:
    """The task a training config trains, when it can be told without loading data:
    ``task``, else the built-in data set's own; None for a user's data set (``auto``)."""
    task = base.get("task") or "auto"
    if task != "auto":
        return str(task)
    data = str(base.get("data") or "").lower()
    if ":" in data:
        return None  # a user's loader: its DataInfo says, once loaded
    return DATA_TASKS.get(data, "classification")


def _task_objective(base: Mapping[str, Any] | None) -> Objective:
    """The task's best metric as an objective (``accuracy`` when the task is unknown)."""
    task = task_of_config(base or {})
    column, mode = TASK_METRICS.get(task or "classification", ("val_acc", "max"))
    return _metric_objective(column, mode, column)


def default_objectives(base: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The task's best metric and energy: ``(accuracy, energy)`` for classification,
    ``(val_rmse:min, energy)`` for regression."""
    return (_task_objective(base).name, "energy")


def resolve_objectives(
    value: str | Sequence[str] | None, base: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Validate objectives (None: the default), ``metric`` turned into the task's best metric.

    Raises:
        EdgeTrainError: an unknown name or an unsupported combination.
    """
    if value is None:
        return default_objectives(base)
    names = [value] if isinstance(value, str) else list(value)
    names = [
        _task_objective(base).name if str(n).strip() == "metric" else str(n).strip()
        for n in names
        if str(n).strip()
    ]
    return check_objectives(names)


def check_objectives(value: str | Sequence[str]) -> tuple[str, ...]:
    """Validate objective names; ``[energy, accuracy]`` is put in the canonical order
    (the metric first, then energy).

    Raises:
        EdgeTrainError: an unknown name or an unsupported combination.
    """
    names = [value] if isinstance(value, str) else list(value)
    parsed = [parse_objective(n) for n in names if str(n).strip()]
    kinds = sorted(o.kind for o in parsed)
    metric = [o for o in parsed if o.kind == "metric"]
    for allowed in (("energy", "metric"), ("efficiency",), ("metric",), ("energy",)):
        if kinds == sorted(allowed):
            ordered = metric + [o for o in parsed if o.kind != "metric"]
            return tuple(o.name for o in ordered)
    shown = [list(a) for a in ALLOWED_OBJECTIVES]
    raise EdgeTrainError(
        f"objectives must be one of {shown} (accuracy: or any validation metric such as "
        f"val_rmse:min), got {[o.name for o in parsed] or names}"
    )


def needs_energy(objectives: Sequence[str]) -> bool:
    """Whether a trial without an energy figure cannot be scored."""
    return any(parse_objective(o).kind in ("energy", "efficiency") for o in objectives)


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna study directions for ``objectives``."""
    return [parse_objective(o).direction for o in objectives]


def quality_objective(objectives: Sequence[str]) -> Objective | None:
    """The validation-metric objective of a study (None for energy or efficiency only)."""
    return next((o for o in map(parse_objective, objectives) if o.kind == "metric"), None)


def sweep_metric(
    objectives: Sequence[str],
    base: Mapping[str, Any] | None = None,
    recorded: Sequence[tuple[str, str]] = (),
) -> Objective:
    """The validation metric a sweep's tables rank by: its metric objective; accuracy for
    an efficiency study; else the task's best metric as the trials recorded it
    (``recorded``: their ``(best_metric, best_mode)``, the most common wins) or as the base
    config implies."""
    objective = quality_objective(objectives)
    if objective is not None:
        return objective
    if any(parse_objective(o).kind == "efficiency" for o in objectives):
        return parse_objective("accuracy")
    pairs = [(str(c), str(m)) for c, m in recorded if c and m in ("max", "min")]
    if pairs:
        column, mode = max(dict.fromkeys(pairs), key=pairs.count)
        return _metric_objective(column, mode, column)
    return _task_objective(base)


def efficiency_column(column: str, mode: str) -> str | None:
    """The trial column of a metric per kilojoule: ``efficiency_acc_per_kj`` for ``val_acc``;
    None for a metric where lower is better (a loss per kJ means nothing)."""
    if mode != "max":
        return None
    return f"efficiency_{column.removeprefix('val_')}_per_kj"


def efficiency_acc_per_kj(val_acc: float | None, energy_j: float | None) -> float | None:
    """Validation accuracy (or any metric where higher is better) per kilojoule of training
    energy (None when either is missing)."""
    if val_acc is None or energy_j is None or not energy_j > 0:
        return None
    return float(val_acc) / (float(energy_j) / 1000.0)


def _recorded(metrics: Mapping[str, Any]) -> str:
    names = [k for k, v in metrics.items() if k.startswith("val_") and v is not None]
    return ", ".join(sorted(names)) or "none"


def objective_values(metrics: Mapping[str, Any], objectives: Sequence[str]) -> list[float]:
    """The values to report to Optuna, in objective order.

    Raises:
        EdgeTrainError: a metric is missing or not finite; the message says why, so the
            trial is recorded as failed with it.
    """
    values = []
    for objective in map(parse_objective, objectives):
        key = objective.column
        value = metrics.get(key)
        if value is None or not math.isfinite(float(value)):
            if objective.kind in ("energy", "efficiency") and metrics.get("energy_j") is None:
                raise EdgeTrainError(
                    f"objective '{objective.name}' needs the training energy, but the run "
                    "recorded none (energy_j empty in summary.json: the monitor was off or no "
                    "sensor or estimate was available)"
                )
            if value is None and objective.kind != "energy":
                task = metrics.get("task")
                best = metrics.get("best_metric")
                hint = (
                    f"; its task ({task}) decides by {best}: set objectives: "
                    f"[{best}:{metrics.get('best_mode') or 'min'}, energy]"
                    if best and best != key
                    else ""
                )
                raise EdgeTrainError(
                    f"objective '{objective.name}' needs {key}, which the run did not record "
                    f"(its validation metrics: {_recorded(metrics)}){hint}"
                )
            raise EdgeTrainError(f"objective '{objective.name}' needs {key}, got {value!r}")
        values.append(float(value))
    return values
