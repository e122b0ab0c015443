"""The training configuration: one validated object, every default in one place.

YAML files and ``--set key=value`` overrides only load into :class:`TrainConfig`;
nothing else in edgetrain defines a default for these keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgetrain.config.adapt import AdaptConfig, BudgetConfig, PruneConfig
from edgetrain.config.base import SEED_MAX, Section
from edgetrain.config.early_stop import EarlyStopConfig
from edgetrain.config.log import LogConfig
from edgetrain.config.sparse import SparseUpdateConfig

__all__ = ["MonitorConfig", "TrainConfig"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LR_SCHEDULES = ("constant", "exponential", "polynomial", "cosine")
PREPROCESSING = ("none", "standardize", "minmax", "robust")
AUGMENTATIONS = ("none", "flip", "crop", "flip_crop", "mixup", "cutmix")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
DEVICES = ("auto", "cpu", "cuda")
#: Pixels per side: built-in models take any size >= 1; larger than this is a mistake
#: that would only fail deep in training (out of memory while resizing).
IMAGE_SIZE_MAX = 4096
CHANNELS = (1, 3)


class MonitorConfig(Section):
    """Resource and energy monitor (``monitor.*``)."""

    enabled: bool = True
    # 0.2 s: five samples per second catch a 1 s NVML power average with margin and cost
    # well under 1% of a training step on a 2-core CPU (benchmarks/monitor_overhead.py).
    interval_s: float = Field(0.2, gt=0, le=60)
    # CPU power used for the estimate when no sensor measures CPU energy; None = the
    # documented default of edgetrain.measure.
    cpu_tdp_w: float | None = Field(None, gt=0)
    # GPUs whose energy is measured, written like CUDA_VISIBLE_DEVICES (NVML indices,
    # GPU-/MIG- UUIDs, comma-separated) or "all"; None = CUDA_VISIBLE_DEVICES, else the
    # GPUs this process uses, else every GPU (edgetrain.measure.NvmlSensor).
    devices: str | None = None

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_text(cls, value: Any) -> Any:
        """Accept ``0``, ``[0, 1]`` and ``"0,1"`` alike (YAML reads a lone index as an int)."""
        if isinstance(value, bool):
            return value  # refused by the str type
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list | tuple) and all(
            isinstance(v, int | str) and not isinstance(v, bool) for v in value
        ):
            return ",".join(str(v) for v in value)
        return value


class TrainConfig(Section):
    """Everything a training run needs. Every field has exactly one default, here."""

    # what to train, on what
    model: str = "cnn"
    model_args: dict[str, Any] = Field(default_factory=dict)
    data: str = "digits"
    data_path: Path | None = None
    data_args: dict[str, Any] = Field(default_factory=dict)
    image_size: int | None = Field(None, ge=1, le=IMAGE_SIZE_MAX)
    channels: int | None = None  # 1 or 3 (1 -> 3 repeats, 3 -> 1 averages)
    split: list[float] = Field(default_factory=lambda: [0.8, 0.1, 0.1])

    # how
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "exponential", "polynomial", "cosine"] = "constant"
    lr_gamma: float = Field(0.9, gt=0, le=1)
    lr_power: float = Field(1.0, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    preprocessing: Literal["none", "standardize", "minmax", "robust"] = "standardize"
    augmentation: Literal["none", "flip", "crop", "flip_crop", "mixup", "cutmix"] = "none"
    mix_alpha: float = Field(0.2, gt=0)
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = "fp32"
    compile: bool = False
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int | None = Field(None, ge=1)
    max_batches_per_epoch: int | None = Field(None, ge=1)
    # a non-finite training loss: stop (status "diverged", exit 3), skip the step, or continue
    on_nonfinite: Literal["stop", "skip", "continue"] = "stop"
    grad_clip_norm: float | None = Field(None, gt=0)  # clip the gradient norm before each step
    # step each parameter as its gradient is ready, freeing it; with accumulation, SGD with
    # momentum folds each micro-batch's gradients into its momentum (edgetrain.memory.fold)
    optimizer_in_backward: bool = False
    # the dtype optimizer state (momentum, Adam's moments) is kept in between steps: bf16
    # halves it (each parameter's state cast up for its step, rounded back stochastically)
    optimizer_state: Literal["fp32", "bf16"] = "fp32"
    # what a batch means (edgetrain.tasks); auto: the data set's own (classification for images)
    task: Literal["auto", "classification", "regression", "language_modeling", "model_loss"] = (
        "auto"
    )
    task_args: dict[str, Any] = Field(default_factory=dict)  # e.g. {loss: huber}, {ignore_index: 0}

    # where
    out: Path | None = None
    # a run directory (or a .pt file: model.pt, checkpoints/best.pt) whose weights
    # initialise the model; of a run directory, init_from_which picks model.pt (final),
    # checkpoints/best.pt (best) or checkpoints/last.pt (last)
    init_from: Path | None = None
    init_from_which: Literal["final", "best", "last"] = "final"
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    sparse_update: SparseUpdateConfig = Field(default_factory=SparseUpdateConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    log: LogConfig = Field(default_factory=LogConfig)  # TensorBoard and MLflow loggers
    # saved-activation handling: off (no hooks), none (measured, not compressed), or a codec
    activations: Literal["off", "none", "lossless", "bf16", "fp16", "int8", "int4", "int2"] = "off"
    # recompute blocks in backward instead of keeping their activations (torch.utils.checkpoint):
    # none | all | auto | every_<k> | [module names]
    recompute: str | list[str] = "none"
    # the CPU allocator (glibc malloc) of the training process: keep it as it is, or release
    # freed blocks >= 128 KiB to the OS (mallopt) so RSS follows the live tensors; auto =
    # release on CPU when memory matters (budget.memory, activations, recompute,
    # optimizer_in_backward). Recorded in env.json (edgetrain.memory.allocator)
    cpu_allocator: Literal["auto", "keep", "release"] = "auto"

    @field_validator("activations", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @field_validator("recompute", mode="before")
    @classmethod
    def _recompute_spec(cls, value: object) -> object:
        if value is False or value is None:
            return "none"  # YAML reads a bare `off`/`no` as false
        if value is True:
            return "all"
        if isinstance(value, str):
            if value in ("none", "all", "auto") or re.fullmatch(r"every_[1-9][0-9]*", value):
                return value
            raise ValueError(
                "recompute must be none, all, auto, every_<k> or a list of module names, "
                f"got {value!r}"
            )
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return value
        raise ValueError(f"recompute's module names must be a non-empty list, got {value!r}")

    @field_validator("channels")
    @classmethod
    def _channels_one_or_three(cls, value: int | None) -> int | None:
        if value is not None and value not in CHANNELS:
            raise ValueError(f"channels must be 1 or 3, got {value}")
        return value

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: list[float]) -> list[float]:
        # items are already finite numbers (Section: allow_inf_nan=False, no booleans)
        if len(value) != 3:
            raise ValueError(f"split must be three fractions [train, val, test], got {list(value)}")
        if any(not 0 <= f <= 1 for f in value):
            raise ValueError(f"split fractions must each be in [0, 1], got {list(value)}")
        if value[0] <= 0:
            raise ValueError(f"split needs a training fraction > 0, got {list(value)}")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1, got {list(value)} (sum {sum(value):g})"
            )
        return value

    @model_validator(mode="after")
    def _micro_batch_fits(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size must be <= batch_size ({self.batch_size}), "
                f"got {self.micro_batch_size}"
            )
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise ValueError(
                "prefetch_factor needs num_workers >= 1 (it is the number of batches each worker "
                f"loads ahead), got prefetch_factor={self.prefetch_factor} with num_workers=0"
            )
        return self
