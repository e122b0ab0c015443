"""Adaptive training inside a memory budget: a memory model, meters and pure policies.

A building block: it acts on a model, an optimizer and observations, and knows nothing
about files or the CLI (``edgetrain.train.adapt_callback`` puts it into the loop)::

    fit = edgetrain.adapt.fit_memory_model(model, opt, x, y, meter=make_meter(device),
                                           limit_bytes=0.9 * budget)
    fit.memory.largest_micro_batch(0.9 * budget, upper=len(x))

    decision = edgetrain.adapt.decide(observation, config.adapt)  # pure
    decision.rows()  # decisions.csv rows
"""

import logging

from edgetrain.adapt.memory_model import MemoryModel, merge_points
from edgetrain.adapt.meters import (
    CudaMemoryMeter,
    MemoryMeter,
    ProcessMemoryMeter,
    make_meter,
    release_free_memory,
)
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
from edgetrain.adapt.probe import (
    BudgetFit,
    Probe,
    StaticBytes,
    accounted_model,
    fit_memory_model,
    measure_logical_batch,
    probe_batch,
    probe_step,
    static_bytes,
)
from edgetrain.adapt.scores import (
    accuracy_score,
    clamp_lr,
    memory_score,
    priorities,
    scale_lr,
    stagnant_epochs,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "POLICIES",
    "BudgetFit",
    "Change",
    "CudaMemoryMeter",
    "Decision",
    "EpochObservation",
    "MemoryMeter",
    "MemoryModel",
    "Probe",
    "ProcessMemoryMeter",
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
