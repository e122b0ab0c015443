"""The built-in tasks: classification, regression, language modelling, the model's own loss,
and a user's loss function."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.tasks.augment import MixedBatch, augment_batch
from edgetrain.tasks.base import Metrics, Task, call_model, logits_of
from edgetrain.tasks.metrics import build_metric, metric_direction

__all__ = [
    "ClassificationTask",
    "LanguageModelingTask",
    "LossFunctionTask",
    "ModelLossTask",
    "RegressionTask",
    "SupervisedTask",
]

INPUT_KEYS = ("x", "input", "inputs", "input_ids", "features")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def _pick(batch: Mapping[str, Any], keys: Sequence[str], what: str) -> str:
    for key in keys:
        if key in batch:
            return key
    raise EdgeTrainError(
        f"a dict batch needs its {what} under one of {', '.join(keys)}; got keys "
        f"{', '.join(map(str, batch))}"
    )


class SupervisedTask(Task):
    """Batches ``(inputs, target, ...)`` or dicts with an input and a target key.

    ``inputs`` may be a tensor (``model(x)``), a tuple (``model(*inputs)``) or a dict
    (``model(**inputs)``).
    """

    def __init__(
        self,
        metrics: Sequence[Any] | Mapping[str, Any] | None = None,
        augmentation: str = "none",
        mix_alpha: float = 0.2,
    ) -> None:
        self.augmentation = augmentation
        self.mix_alpha = mix_alpha
        self._user_metrics = _named_metrics(metrics)

    def parts(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping):
            return batch[_pick(batch, INPUT_KEYS, "inputs")], batch[
                _pick(batch, TARGET_KEYS, "target")
            ]
        if isinstance(batch, MixedBatch):
            return batch.x, batch
        if isinstance(batch, tuple | list) and len(batch) >= 2:
            return batch[0], batch[1]
        raise EdgeTrainError(
            f"the {self.name} task needs (inputs, target) batches, got {type(batch).__name__}"
        )

    def inputs(self, batch: Any) -> Any:
        return self.parts(batch)[0]

    def target(self, batch: Any) -> Any:
        return self.parts(batch)[1]

    def augment(self, batch: Any, generator: torch.Generator) -> Any:
        if self.augmentation == "none" or not isinstance(batch, tuple | list):
            return batch
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return batch
        out = augment_batch(x, y, self.augmentation, generator, self.mix_alpha)
        return out if isinstance(out, MixedBatch) else (out, y, *batch[2:])

    # metrics: the task's own plus the user's
    def default_metrics(self) -> dict[str, str]:
        """name -> the spec :func:`build_metric` understands."""
        return {}

    def make_metrics(self, train: bool = False) -> Metrics:
        metrics = {n: build_metric(spec) for n, spec in self.default_metrics().items()}
        for name, spec in self._user_metrics.items():
            metrics[name] = build_metric(spec)
        if train:
            metrics = {n: m for n, m in metrics.items() if n in self.train_metrics}
        return metrics

    def prediction(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return logits_of(output).detach()

    def update_metrics(self, metrics: Metrics, output: Any, batch: Any) -> None:
        if not metrics:
            return
        target = self.target(batch)
        if isinstance(target, MixedBatch):
            target = target.y_a if target.lam >= 0.5 else target.y_b
        pred = self.prediction(output, target)
        for metric in metrics.values():
            metric.update(pred, target)

    def directions(self) -> dict[str, str]:
        out = {"loss": "min"}
        out.update({n: metric_direction(s) for n, s in self.default_metrics().items()})
        out.update({n: metric_direction(s) for n, s in self._user_metrics.items()})
        return out


def _named_metrics(metrics: Sequence[Any] | Mapping[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return dict(metrics)
    named: dict[str, Any] = {}
    for m in metrics:
        if isinstance(m, str):
            named[m.lower()] = m.lower()
        else:
            named[_snake(type(m).__name__)] = m
    return named


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out.replace("multiclass_", "")


class ClassificationTask(SupervisedTask):
    """Cross entropy on integer labels (mixup/cutmix mixed); accuracy."""

    name = "classification"
    best_metric = "val_acc"
    best_mode = "max"
    train_metrics = ("acc",)

    def default_metrics(self) -> dict[str, str]:
        return {"acc": "accuracy"}

    def loss_sum(self, output: Any, batch: Any) -> torch.Tensor:
        out = logits_of(output).float()  # the loss in fp32 even under autocast
        target = self.target(batch)
        if isinstance(target, MixedBatch):
            a = F.cross_entropy(out, target.y_a, reduction="sum")
            b = F.cross_entropy(out, target.y_b, reduction="sum")
            return target.lam * a + (1 - target.lam) * b
        return F.cross_entropy(out, _labels(target), reduction="sum")


def _labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices as int64, which cross entropy needs (int32 labels are common)."""
    return target if target.dtype == torch.int64 or target.is_floating_point() else target.long()


_REGRESSION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
}


class RegressionTask(SupervisedTask):
    """MSE, L1 or Huber on float targets; MAE, RMSE, R². The loss averages over every
    target value (samples x outputs), as ``nn.MSELoss()`` does."""

    name = "regression"
    best_metric = "val_rmse"
    best_mode = "min"

    def __init__(self, loss: str = "mse", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if loss not in _REGRESSION_LOSSES:
            raise EdgeTrainError(
                f"regression loss must be one of {', '.join(_REGRESSION_LOSSES)}, got {loss!r}"
            )
        self.loss = loss

    def default_metrics(self) -> dict[str, str]:
        return {"mae": "mae", "rmse": "rmse", "r2": "r2"}

    def _pred(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        pred = logits_of(output)
        if pred.shape != target.shape and pred.numel() == target.numel():
            pred = pred.reshape(target.shape)  # (N, 1) predictions for (N,) targets
        return pred

    def count(self, batch: Any) -> int:
        return int(self.target(batch).numel())

    def loss_sum(self, output: Any, batch: Any) -> torch.Tensor:
        target = self.target(batch)
        pred = self._pred(output, target).float()
        return _REGRESSION_LOSSES[self.loss](pred, target.float(), reduction="sum")

    def prediction(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        pred = self._pred(output, target).detach().float()
        return pred.reshape(-1) if target.dim() <= 1 else pred

    def update_metrics(self, metrics: Metrics, output: Any, batch: Any) -> None:
        if not metrics:
            return
        target = self.target(batch)
        pred = self.prediction(output, target)
        flat = target.float().reshape(pred.shape)
        for metric in metrics.values():
            metric.update(pred, flat)


class LanguageModelingTask(SupervisedTask):
    """Next-token cross entropy, weighted by tokens, ``ignore_index`` left out;
    perplexity and token accuracy.

    Batches: ``(input_ids, labels)`` with labels already aligned to the logits, a dict with
    ``input_ids`` (and optionally aligned ``labels``), or a tensor of token ids (the model
    sees all but the last token and predicts each next one).
    """

    name = "language_modeling"
    best_metric = "val_loss"
    best_mode = "min"

    def __init__(self, ignore_index: int = -100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def parts(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, torch.Tensor):
            return batch[:, :-1], batch[:, 1:]
        if isinstance(batch, Mapping) and "labels" not in batch and "input_ids" in batch:
            ids = batch["input_ids"]
            rest = {k: v for k, v in batch.items() if k != "input_ids"}
            if "attention_mask" in rest:
                rest["attention_mask"] = rest["attention_mask"][:, :-1]
            return {"input_ids": ids[:, :-1], **rest}, ids[:, 1:]
        if isinstance(batch, Mapping):
            labels = batch["labels"]
            return {k: v for k, v in batch.items() if k != "labels"}, labels
        return super().parts(batch)

    def count(self, batch: Any) -> torch.Tensor:
        return (self.target(batch) != self.ignore_index).sum()

    def loss_sum(self, output: Any, batch: Any) -> torch.Tensor:
        logits = logits_of(output).float()
        target = self.target(batch)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=self.ignore_index,
            reduction="sum",
        )

    def default_metrics(self) -> dict[str, str]:
        return {"perplexity": "perplexity", "token_acc": "token_accuracy"}

    def make_metrics(self, train: bool = False) -> Metrics:
        metrics = super().make_metrics(train)
        for metric in metrics.values():
            if hasattr(metric, "ignore_index"):
                metric.ignore_index = self.ignore_index
        return metrics


class ModelLossTask(Task):
    """The model computes its own loss (Hugging Face convention): a dict batch is passed as
    keyword arguments and the output has ``.loss``, ``["loss"]`` or the loss first.

    The model's loss is a mean; micro-batches are weighted by their samples, which is exact
    when every sample carries the same number of loss terms.
    """

    name = "model_loss"

    def __init__(self, **kwargs: Any) -> None:
        del kwargs  # metrics and augmentation do not apply to a model's own loss

    def forward(self, forward: Callable[..., Any], batch: Any) -> Any:
        return call_model(forward, batch)

    def loss_sum(self, output: Any, batch: Any) -> torch.Tensor:
        return model_loss(output).float() * self.size(batch)

    def make_metrics(self, train: bool = False) -> Metrics:
        return {}


def model_loss(output: Any) -> torch.Tensor:
    """The loss a model returned, or an error saying what came back instead."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, tuple | list) and output:
        loss = output[0]
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise EdgeTrainError(
            f"task model_loss: the model returned a {type(output).__name__} without a scalar "
            "loss (.loss, ['loss'] or first item); pass labels in the batch or give loss="
        )
    return loss


def has_model_loss(output: Any) -> bool:
    try:
        model_loss(output)
    except EdgeTrainError:
        return False
    return True


class LossFunctionTask(SupervisedTask):
    """A user's loss: a criterion (``nn.MSELoss()``: called as ``loss(output, target)``) or
    any callable ``loss(output, batch)``. Its value is a mean over the batch's samples (a
    criterion with ``reduction='sum'`` gives a sum)."""

    name = "custom"

    def __init__(self, loss: Callable[..., torch.Tensor], best: str | None = None, **kw: Any):
        super().__init__(**kw)
        self.loss_fn = loss
        self.criterion = isinstance(loss, nn.Module)
        names = [n for n in self.directions() if n != "loss"]
        metric = best or (names[0] if names else "loss")
        self.best_metric = f"val_{metric}"
        self.best_mode = self.directions().get(metric, "min")

    def forward(self, forward: Callable[..., Any], batch: Any) -> Any:
        if self.criterion:
            return super().forward(forward, batch)
        try:
            inputs = self.inputs(batch)
        except EdgeTrainError:
            inputs = batch
        return call_model(forward, inputs)

    def loss_sum(self, output: Any, batch: Any) -> torch.Tensor:
        if self.criterion:
            target = self.target(batch)
            out = output.float() if isinstance(output, torch.Tensor) else output
            value = self.loss_fn(out, target)
            if getattr(self.loss_fn, "reduction", "mean") == "sum":
                return value.float()
        else:
            value = self.loss_fn(output, batch)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise EdgeTrainError(
                f"loss= must return a scalar tensor, got {type(value).__name__}"
                + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else "")
            )
        return value.float() * self.size(batch)
