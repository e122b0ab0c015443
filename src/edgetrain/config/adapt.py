"""``budget.*``, ``adapt.*`` and ``prune.*``: adaptive training inside a memory budget."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgetrain.config.base import Section
from edgetrain.errors import EdgeTrainError
from edgetrain.units import parse_bytes

__all__ = ["AdaptConfig", "AdaptWeights", "BudgetConfig", "PruneConfig"]


class BudgetConfig(Section):
    """Resource budgets.

    ``memory`` bounds the training's own memory (e.g. '1.5GiB', '300MiB' or a number of
    bytes; None = unbounded). On CPU that is the resident memory the process gains
    after fit start plus the model and optimizer tensors that already existed then; on
    CUDA the bytes PyTorch allocates on the device (see ``edgetrain.adapt``).
    """

    memory: int | str | None = None
    # what the memory planner may turn to fit ``memory`` (edgetrain.adapt.planner):
    # micro_batch = only the micro-batch (gradient accumulation keeps the batch); auto =
    # also recomputation, the activation codecs and the optimizer step inside backward,
    # whichever fits with the least measured slowdown (levers the config sets are kept)
    levers: Literal["micro_batch", "auto"] = "auto"
    # levers that change what trains may be chosen by the planner when no exact one fits:
    # lossy activation codecs (bf16, int8) and, when fine-tuning (init_from), a static
    # sparse update of a share of the parameters
    lossy: Literal["forbid", "allow"] = "forbid"

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_size(cls, value: Any) -> Any:
        if value is None:
            return None
        rule = "budget.memory must be a size such as '1.5GiB', '300MiB' or a number of bytes"
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{rule}, got {value!r}")
        if isinstance(value, int | float) and value <= 0:
            raise ValueError(f"budget.memory must be > 0 bytes, got {value!r}")
        try:
            size = parse_bytes(value, name="budget.memory")
        except EdgeTrainError as exc:
            raise ValueError(f"{rule}, got {value!r}") from exc
        if size <= 0:
            raise ValueError(f"budget.memory must be > 0 bytes, got {value!r}")
        return int(value) if isinstance(value, float) else value

    @property
    def memory_bytes(self) -> int | None:
        """``memory`` in bytes, or None."""
        return None if self.memory is None else parse_bytes(self.memory, name="budget.memory")


class AdaptWeights(Section):
    """How much each parameter's score counts when choosing what to adjust (``adapt.weights``)."""

    batch_size: float = Field(0.4, ge=0)  # x memory score
    learning_rate: float = Field(0.6, ge=0)  # x accuracy score

    @model_validator(mode="after")
    def _not_both_zero(self) -> AdaptWeights:
        if self.batch_size == 0 and self.learning_rate == 0:
            raise ValueError(
                "adapt.weights must not both be 0 (got batch_size=0, learning_rate=0); "
                "use adapt.policy: budget to adjust nothing but the micro-batch"
            )
        return self


class AdaptConfig(Section):
    """The controller (``adapt.policy``: none, budget, edgetrain).

    ``budget`` fits the micro-batch to ``budget.memory`` and never changes the effective
    batch; ``edgetrain`` adds EdgeTrain's score-and-priority scheme, once per epoch. Both
    retry a step that ran out of memory with a smaller micro-batch. Memory fractions are
    fractions (0.75), never percent.
    """

    policy: Literal["none", "budget", "edgetrain"] = "none"
    # fraction of the budget kept free when the micro-batch is fitted (model error, noise)
    margin: float = Field(0.1, ge=0, lt=1)
    oom_recovery: bool = True  # retry a step that ran out of memory at a smaller micro-batch
    # edgetrain: priorities = weights x scores; only the top-priority parameter is adjusted
    weights: AdaptWeights = Field(default_factory=AdaptWeights)
    # edgetrain: memory score = measured peak / (budget, else the device's total memory)
    memory_high_frac: float = Field(0.75, gt=0, le=1)  # above: shrink the micro-batch
    memory_low_frac: float = Field(0.5, ge=0, lt=1)  # below: grow the micro-batch, then the batch
    batch_factor: int = Field(2, ge=2)  # micro-batch and batch change by this factor
    # the smallest micro-batch a budget fit or a shrink may choose; auto: 16 for a model
    # with batch-norm (batch statistics of fewer samples cost accuracy), else 1
    min_micro_batch_size: int | Literal["auto"] = "auto"
    # the effective batch may grow up to this (None: never above the configured batch_size)
    max_batch_size: int | None = Field(None, ge=1)
    # edgetrain: the learning rate x lr_factor after `patience` epochs whose validation
    # accuracy did not beat the best before them by more than min_delta
    lr_factor: float = Field(0.5, gt=0, lt=1)
    min_delta: float = Field(0.005, ge=0, le=1)
    patience: int = Field(1, ge=1)
    min_lr: float = Field(1e-6, gt=0)
    max_lr: float | None = Field(None, gt=0)
    # when the effective batch changes by k, the learning rate x k, x sqrt(k) or unchanged
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"

    @model_validator(mode="after")
    def _consistent(self) -> AdaptConfig:
        if self.memory_low_frac >= self.memory_high_frac:
            raise ValueError(
                "adapt.memory_low_frac must be < adapt.memory_high_frac, got "
                f"{self.memory_low_frac} and {self.memory_high_frac}"
            )
        if self.max_lr is not None and self.max_lr < self.min_lr:
            raise ValueError(
                f"adapt.max_lr must be >= adapt.min_lr ({self.min_lr}), got {self.max_lr}"
            )
        return self

    @field_validator("min_micro_batch_size", mode="before")
    @classmethod
    def _min_micro(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError(
            f"adapt.min_micro_batch_size must be 'auto' or an integer >= 1, got {value!r}"
        )

    @property
    def min_micro(self) -> int:
        """``min_micro_batch_size`` as a number (auto: 1 until the controller sees the model)."""
        value = self.min_micro_batch_size
        return value if isinstance(value, int) else 1


class PruneConfig(Section):
    """Global magnitude pruning of conv and linear weights (``ratio`` 0 = off).

    ``start_epoch`` epochs are trained dense first; ``schedule: constant`` then prunes
    ``ratio`` of the weights at once, ``gradual`` raises the sparsity along a cubic curve
    (Zhu and Gupta, 2017) until ``end_epoch`` (None = the last epoch). The pruning is
    made permanent at the end, so model.pt holds plain weights.
    """

    ratio: float = Field(0.0, ge=0, lt=1)
    start_epoch: int = Field(0, ge=0)
    schedule: Literal["constant", "gradual"] = "constant"
    end_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _epochs_in_order(self) -> PruneConfig:
        if self.end_epoch is not None and self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"prune.end_epoch must be > prune.start_epoch ({self.start_epoch}), "
                f"got {self.end_epoch}"
            )
        return self
