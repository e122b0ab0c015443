"""Tasks: what a batch means, the one seam between the loop and a user's problem.

Built in: ``classification`` (default for the built-in image data), ``regression``,
``language_modeling`` and ``model_loss`` (the model returns its own loss). A user passes
``task=`` (a name or a :class:`Task`), ``loss=`` (a criterion or ``loss(output, batch)``)
and ``metrics=`` (names or torchmetrics objects). See docs/design.md, "Tasks".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.tasks.base import Metrics, Task, call_model, logits_of, metrics_to
from edgetrain.tasks.batch import apply_tensors, batch_size, first_tensor, move_batch, slice_batch
from edgetrain.tasks.builtin import (
    ClassificationTask,
    LanguageModelingTask,
    LossFunctionTask,
    ModelLossTask,
    RegressionTask,
    SupervisedTask,
    has_model_loss,
)
from edgetrain.tasks.metrics import METRIC_NAMES, build_metric, metric_direction

__all__ = [
    "METRIC_NAMES",
    "TASKS",
    "ClassificationTask",
    "LanguageModelingTask",
    "LossFunctionTask",
    "Metrics",
    "ModelLossTask",
    "RegressionTask",
    "SupervisedTask",
    "Task",
    "apply_tensors",
    "batch_size",
    "build_metric",
    "call_model",
    "first_tensor",
    "infer_task",
    "logits_of",
    "make_task",
    "metric_direction",
    "metrics_to",
    "move_batch",
    "slice_batch",
]

log = logging.getLogger(__name__)

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "regression": RegressionTask,
    "language_modeling": LanguageModelingTask,
    "model_loss": ModelLossTask,
}


def make_task(
    task: str | Task | None = None,
    *,
    loss: Callable[..., torch.Tensor] | None = None,
    metrics: Sequence[Any] | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    augmentation: str = "none",
    mix_alpha: float = 0.2,
) -> Task:
    """The task a run trains: a :class:`Task` as given, a user's ``loss``, or a name.

    Raises:
        EdgeTrainError: an unknown task name or option.
    """
    if isinstance(task, Task):
        if loss is not None or metrics is not None:
            raise EdgeTrainError("give either task= (a Task object) or loss=/metrics=, not both")
        return task
    common: dict[str, Any] = {"augmentation": augmentation, "mix_alpha": mix_alpha}
    if loss is not None:
        if not callable(loss):
            raise EdgeTrainError(f"loss= must be a criterion or a callable, got {loss!r}")
        return LossFunctionTask(loss, metrics=metrics, **common, **dict(options or {}))
    name = task or "classification"
    if name not in TASKS:
        raise EdgeTrainError(
            f"unknown task {name!r}; known: {', '.join(TASKS)}{suggest(name, TASKS)}"
        )
    try:
        return TASKS[name](metrics=metrics, **common, **dict(options or {}))
    except TypeError as exc:
        raise EdgeTrainError(f"task {name}: {exc}") from None


def infer_task(model: nn.Module, batch: Any) -> str:
    """The task a batch and a model imply when none was named: ``model_loss`` for a dict
    batch whose model returns a loss, ``regression`` for float targets, else
    ``classification``."""
    if isinstance(batch, Mapping):
        was = model.training
        try:
            model.eval()
            with torch.no_grad():
                out = call_model(model, slice_batch(batch, 0, 1))
        except Exception as exc:
            raise EdgeTrainError(
                f"cannot tell what to do with dict batches (keys {', '.join(map(str, batch))}): "
                f"calling the model with them failed ({type(exc).__name__}: {exc}); "
                "pass task= or loss="
            ) from None
        finally:
            model.train(was)
        if has_model_loss(out):
            return "model_loss"
        raise EdgeTrainError(
            "the model returns no loss for dict batches; pass task= (e.g. 'classification' "
            "with 'x'/'y' keys) or loss="
        )
    target = batch[1] if isinstance(batch, tuple | list) and len(batch) >= 2 else None
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        log.info("float targets: training a regression (MSE); pass task= to change it")
        return "regression"
    return "classification"
