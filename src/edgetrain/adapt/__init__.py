"""Adaptive training inside a memory budget: a memory model, meters and pure policies.

A building block: it acts on a model, an optimizer and observations, and knows nothing
about files or the CLI (``edgetrain.train.features.budget`` puts it into the loop)::

    batch = task.to_device(probe_batch(train_data, batch_size), device, dtype)
    fit = edgetrain.adapt.fit_memory_model(model, opt, task, batch, meter=make_meter(device),
                                           limit_bytes=0.9 * budget)
    fit.memory.largest_micro_batch(0.9 * budget, upper=batch_size)

    decision = edgetrain.adapt.decide(observation, config.adapt)  # pure
    decision.rows()  # decisions.csv rows

:class:`BudgetController` makes every decision of the training callback from numbers
alone. The meters and probes need torch and load on first use, so the controller, the
policies and the memory model import without it.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from edgetrain.adapt.controller import (
    BudgetController,
    BudgetDecision,
    ControllerError,
    Settings,
)
from edgetrain.adapt.measurements import BudgetFit, Probe, StaticBytes
from edgetrain.adapt.memory_model import MemoryModel, merge_points
from edgetrain.adapt.policies import (
    POLICIES,
    Change,
    Decision,
    EpochObservation,
    budget_policy,
    decide,
    edgetrain_policy,
    fit_to_budget,
    keep_unbatched_overrun,
    none_policy,
    shrink_after_oom,
    shrink_after_overrun,
)
from edgetrain.adapt.scores import (
    accuracy_score,
    clamp_lr,
    memory_score,
    priorities,
    scale_lr,
    stagnant_epochs,
)
from edgetrain.adapt.state import BudgetState, StateFormatError

if TYPE_CHECKING:
    from edgetrain.adapt.meters import (
        CudaMemoryMeter,
        MemoryMeter,
        ProcessMemoryMeter,
        make_meter,
        release_free_memory,
    )
    from edgetrain.adapt.probe import (
        accounted_model,
        fit_memory_model,
        measure_logical_batch,
        probe_batch,
        probe_step,
        static_bytes,
    )

logging.getLogger(__name__).addHandler(logging.NullHandler())

# names that need torch, by the module that defines them (imported on first use)
_TORCH_EXPORTS = {
    "CudaMemoryMeter": "meters",
    "MemoryMeter": "meters",
    "ProcessMemoryMeter": "meters",
    "make_meter": "meters",
    "release_free_memory": "meters",
    "accounted_model": "probe",
    "fit_memory_model": "probe",
    "measure_logical_batch": "probe",
    "probe_batch": "probe",
    "probe_step": "probe",
    "static_bytes": "probe",
}


def __getattr__(name: str) -> Any:
    module = _TORCH_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetrain.adapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgetrain.adapt.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "POLICIES",
    "BudgetController",
    "BudgetDecision",
    "BudgetFit",
    "BudgetState",
    "Change",
    "ControllerError",
    "CudaMemoryMeter",
    "Decision",
    "EpochObservation",
    "MemoryMeter",
    "MemoryModel",
    "Probe",
    "ProcessMemoryMeter",
    "Settings",
    "StateFormatError",
    "StaticBytes",
    "accounted_model",
    "accuracy_score",
    "budget_policy",
    "clamp_lr",
    "decide",
    "edgetrain_policy",
    "fit_memory_model",
    "fit_to_budget",
    "keep_unbatched_overrun",
    "make_meter",
    "measure_logical_batch",
    "memory_score",
    "merge_points",
    "none_policy",
    "priorities",
    "probe_batch",
    "probe_step",
    "release_free_memory",
    "scale_lr",
    "shrink_after_oom",
    "shrink_after_overrun",
    "stagnant_epochs",
    "static_bytes",
]
