"""Optimizers, the learning-rate schedule and numeric precision."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from edgetrain.config import TrainConfig
from edgetrain.errors import EdgeTrainError

__all__ = ["autocast", "build_optimizer", "lr_factor", "make_grad_scaler", "param_dtype"]


def build_optimizer(
    params: Iterator[nn.Parameter] | list, config: TrainConfig
) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` with its lr, momentum and weight decay."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    raise EdgeTrainError(f"unknown optimizer {name!r}")


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of the base learning rate at ``epoch`` (0-based): warm-up, then the schedule.

    Warm-up ramps linearly over ``warmup_epochs``; then ``constant``, ``exponential``
    (``lr_gamma ** t``), ``polynomial`` (``(1 - t/T) ** lr_power``, floored at 1% so the
    last epoch still learns) or ``cosine`` (half a cosine from 1 down to 1%), where t counts
    epochs after warm-up and T is their number.
    """
    warm = config.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    t, total = epoch - warm, max(1, config.epochs - warm)
    floor = 0.01
    if config.lr_schedule == "constant":
        return 1.0
    if config.lr_schedule == "exponential":
        return config.lr_gamma**t
    if config.lr_schedule == "polynomial":
        return max(floor, (1 - t / total) ** config.lr_power)
    if config.lr_schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / total))
    raise EdgeTrainError(f"unknown lr_schedule {config.lr_schedule!r}")


def param_dtype(precision: str) -> torch.dtype:
    """The dtype of parameters and inputs: float64 for fp64, else float32 (autocast does the rest)."""
    return torch.float64 if precision == "fp64" else torch.float32


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (bf16, fp16); a no-op for fp32 and fp64."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, enabled for fp16 only (on CUDA; on CPU fp16 gradients do not underflow
    into the fp32 master weights, and the scaler is still used so the code path is one)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
