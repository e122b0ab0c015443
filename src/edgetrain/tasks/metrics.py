"""Metrics by name, through torchmetrics (exact accumulation over batches and processes).

A metric is given by name (``"mae"``, ``"accuracy"``) or as a torchmetrics object; each
run, split and epoch gets a fresh copy. Its direction (``max``/``min``) comes from the
table below or from the object's ``higher_is_better``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score
from torchmetrics.text import Perplexity

from edgetrain.errors import EdgeTrainError, suggest

__all__ = ["METRIC_NAMES", "TopOneAccuracy", "build_metric", "metric_direction"]


class TopOneAccuracy(MeanMetric):
    """The fraction of predictions whose argmax is the target (entries equal to
    ``ignore_index`` are left out). Works for any number of classes, known or not."""

    higher_is_better = True

    def __init__(self, ignore_index: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("nan_strategy", "disable")  # a NaN check is a host-device sync
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        hit = preds.argmax(dim=-1) == target
        if self.ignore_index is None:
            count = hit.numel()
        else:
            keep = target != self.ignore_index
            hit = hit & keep
            count = keep.sum()  # a tensor: no host-device sync
        # MeanMetric's own state (mean_value: the weighted sum, weight: the count), added to
        # directly: its generic update costs about three times as much per training step
        self.mean_value += hit.sum()
        self.weight += count


def _perplexity() -> Metric:
    return Perplexity(ignore_index=-100)


_FACTORIES: dict[str, tuple[Any, str]] = {
    "accuracy": (TopOneAccuracy, "max"),
    "acc": (TopOneAccuracy, "max"),
    "token_accuracy": (lambda: TopOneAccuracy(ignore_index=-100), "max"),
    "mae": (MeanAbsoluteError, "min"),
    "mse": (MeanSquaredError, "min"),
    "rmse": (lambda: MeanSquaredError(squared=False), "min"),
    "r2": (R2Score, "max"),
    "perplexity": (_perplexity, "min"),
}
METRIC_NAMES = tuple(_FACTORIES)


def build_metric(spec: Any) -> Metric:
    """A fresh metric: from a name, or a copy of a torchmetrics object."""
    if isinstance(spec, Metric):
        return spec.clone()
    name = str(spec).lower()
    if name not in _FACTORIES:
        raise EdgeTrainError(
            f"unknown metric {spec!r}; known: {', '.join(METRIC_NAMES)}{suggest(name, METRIC_NAMES)}"
            " (or pass a torchmetrics object)"
        )
    return _FACTORIES[name][0]()


def metric_direction(spec: Any) -> str:
    """``max`` when a higher value is better, else ``min``."""
    if isinstance(spec, Metric):
        return "max" if getattr(spec, "higher_is_better", False) else "min"
    name = str(spec).lower()
    return _FACTORIES[name][1] if name in _FACTORIES else "min"
