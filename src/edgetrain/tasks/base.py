"""The Task seam: the one place that knows what a batch means (docs/design.md, "Tasks").

The loop, the budget controller's probes, the sparse-update probe and ``edgetrain memory``
ask a :class:`Task` to move a batch, split it into micro-batches, run the model, give the
loss as a *sum* and a *count* (so accumulation over micro-batches of unequal size is
exact) and update the metrics. Nothing else in edgetrain assumes ``(x, y)``, integer
labels, argmax or accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.tasks.batch import batch_size, move_batch, slice_batch

__all__ = ["Metrics", "Task", "call_model", "logits_of"]

Metrics = dict[str, Any]  # metric name (without the train_/val_ prefix) -> torchmetrics Metric


def call_model(forward: Callable[..., Any], inputs: Any) -> Any:
    """Call the model the way ``inputs`` asks: ``f(**dict)``, ``f(*tuple)`` or ``f(x)``."""
    if isinstance(inputs, Mapping):
        return forward(**inputs)
    if isinstance(inputs, tuple | list):
        return forward(*inputs)
    return forward(inputs)


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output: the tensor itself, ``.logits``,
    ``["logits"]`` or the first item of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, tuple | list) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise EdgeTrainError(
            f"the model returned a {type(output).__name__}; expected a tensor or an output "
            "with .logits (pass task=... or loss=... to say how to read it)"
        )
    return logits


class Task:
    """What a batch means. Subclass it (or pass ``loss=``/``metrics=`` to ``fit``).

    Attributes:
        name: the task's name, recorded in the run directory.
        best_metric: the metrics.csv column that decides "best" (e.g. ``val_acc``).
        best_mode: ``max`` or ``min``.
        train_metrics: metric names also measured on training batches (cheap ones).
    """

    name: ClassVar[str] = "task"
    best_metric: str = "val_loss"
    best_mode: str = "min"
    train_metrics: tuple[str, ...] = ()

    # -- batches -------------------------------------------------------------------------------
    def to_device(self, batch: Any, device: torch.device, float_dtype: torch.dtype) -> Any:
        """The batch on the device; floating tensors in the parameters' dtype."""
        return move_batch(batch, device, float_dtype)

    def size(self, batch: Any) -> int:
        """Samples in the batch (micro-batches split along this)."""
        return batch_size(batch)

    def split(self, batch: Any, lo: int, hi: int) -> Any:
        """Samples ``lo:hi`` of the batch."""
        return slice_batch(batch, lo, hi)

    def augment(self, batch: Any, generator: torch.Generator) -> Any:
        """The batch after training-time augmentation (default: unchanged)."""
        del generator
        return batch

    # -- the model -----------------------------------------------------------------------------
    def inputs(self, batch: Any) -> Any:
        """What the model is called with (see :func:`call_model`)."""
        return batch

    def forward(self, forward: Callable[..., Any], batch: Any) -> Any:
        return call_model(forward, self.inputs(batch))

    def count(self, batch: Any) -> int | torch.Tensor:
        """How many terms the loss of ``batch`` averages over (samples, tokens), known
        before the forward pass: micro-batch losses are divided by the logical batch's."""
        return self.size(batch)

    def loss_sum(self, output: Any, batch: Any) -> torch.Tensor:
        """The loss summed over the batch's terms, in float32 (a scalar tensor)."""
        raise NotImplementedError

    # -- metrics -------------------------------------------------------------------------------
    def make_metrics(self, train: bool = False) -> Metrics:
        """Fresh metric objects (torchmetrics); for training only ``train_metrics``."""
        del train
        return {}

    def update_metrics(self, metrics: Metrics, output: Any, batch: Any) -> None:
        """Feed one batch's detached output to the metrics."""
        del metrics, output, batch

    def directions(self) -> dict[str, str]:
        """``max`` or ``min`` for every metric name this task reports (loss included)."""
        return {"loss": "min"}

    def describe(self) -> dict[str, Any]:
        """What the run directory records about the task (summary.json ``task``)."""
        metrics = {"train_loss": "min", "val_loss": "min"}
        for name, mode in self.directions().items():
            if name in self.train_metrics:
                metrics[f"train_{name}"] = mode
            metrics[f"val_{name}"] = mode
        return {
            "name": self.name,
            "best_metric": self.best_metric,
            "best_mode": self.best_mode,
            "metrics": metrics,
        }

    def metric_names(self) -> tuple[list[str], list[str]]:
        """The metric names (without prefixes) for training rows and for evaluation."""
        names = [n for n in self.directions() if n != "loss"]
        return [n for n in names if n in self.train_metrics], names


def metrics_to(metrics: Metrics, device: torch.device) -> Metrics:
    """Metrics on the device the outputs are on."""
    return {name: m.to(device) if isinstance(m, nn.Module) else m for name, m in metrics.items()}
