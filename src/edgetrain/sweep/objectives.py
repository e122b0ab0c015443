"""What a sweep optimises: validation accuracy, training energy, or accuracy per kilojoule.

Energy, never power: a slow low-power run can use several times the energy of a fast
high-power one (greenscreen's batch 4 drew less power than batch 128 but used about 8x
the energy per epoch). Accuracy is always *validation* accuracy; test data is read only
by the final training's report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from edgetrain.errors import EdgeTrainError, suggest

__all__ = [
    "ALLOWED_OBJECTIVES",
    "DEFAULT_OBJECTIVES",
    "DIRECTIONS",
    "METRIC_OF",
    "check_objectives",
    "directions",
    "efficiency_acc_per_kj",
    "needs_energy",
    "objective_values",
]

#: objective -> Optuna direction
DIRECTIONS = {"accuracy": "maximize", "energy": "minimize", "efficiency": "maximize"}
#: objective -> the trial metric (user attribute and table column) it reads
METRIC_OF = {"accuracy": "val_acc", "energy": "energy_j", "efficiency": "efficiency_acc_per_kj"}
DEFAULT_OBJECTIVES: tuple[str, ...] = ("accuracy", "energy")
ALLOWED_OBJECTIVES: tuple[tuple[str, ...], ...] = (
    ("accuracy", "energy"),
    ("efficiency",),
    ("accuracy",),
    ("energy",),
)


def check_objectives(value: str | Sequence[str]) -> tuple[str, ...]:
    """Validate objective names; ``[energy, accuracy]`` is put in the canonical order.

    Raises:
        EdgeTrainError: an unknown name or an unsupported combination.
    """
    names = [value] if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    for n in names:
        if n not in DIRECTIONS:
            raise EdgeTrainError(
                f"objectives: unknown objective '{n}'; choose from {list(DIRECTIONS)}"
                f"{suggest(n, DIRECTIONS)}"
            )
    for allowed in ALLOWED_OBJECTIVES:
        if sorted(names) == sorted(allowed):
            return allowed
    raise EdgeTrainError(
        f"objectives must be one of {[list(a) for a in ALLOWED_OBJECTIVES]}, got {names}"
    )


def needs_energy(objectives: Sequence[str]) -> bool:
    """Whether a trial without an energy figure cannot be scored."""
    return any(o in ("energy", "efficiency") for o in objectives)


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna study directions for ``objectives``."""
    return [DIRECTIONS[o] for o in objectives]


def efficiency_acc_per_kj(val_acc: float | None, energy_j: float | None) -> float | None:
    """Validation accuracy per kilojoule of training energy (None when either is missing)."""
    if val_acc is None or energy_j is None or not energy_j > 0:
        return None
    return float(val_acc) / (float(energy_j) / 1000.0)


def objective_values(metrics: Mapping[str, Any], objectives: Sequence[str]) -> list[float]:
    """The values to report to Optuna, in objective order.

    Raises:
        EdgeTrainError: a metric is missing or not finite; the message says why, so the
            trial is recorded as failed with it.
    """
    values = []
    for objective in objectives:
        key = METRIC_OF[objective]
        value = metrics.get(key)
        if value is None or not math.isfinite(float(value)):
            if objective in ("energy", "efficiency") and metrics.get("energy_j") is None:
                raise EdgeTrainError(
                    f"objective '{objective}' needs the training energy, but the run recorded "
                    "none (energy_j empty in summary.json: the monitor was off or no sensor or "
                    "estimate was available)"
                )
            raise EdgeTrainError(f"objective '{objective}' needs {key}, got {value!r}")
        values.append(float(value))
    return values
