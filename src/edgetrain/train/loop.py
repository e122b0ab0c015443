"""The one training loop: epochs, logical batches, micro-batches, accumulation, validation.

Read it top to bottom: :func:`run_epochs` calls :func:`train_step` for each logical batch
and :func:`evaluate` after each epoch; callbacks see every boundary.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.errors import DivergedError
from edgetrain.train.augment import MixedBatch, augment_batch, augment_generator
from edgetrain.train.callbacks import BatchTiming, Callback, TrainState
from edgetrain.train.data import epoch_loader, eval_loader
from edgetrain.train.optim import autocast, lr_factor, param_dtype

__all__ = ["StepResult", "evaluate", "run_epochs", "train_step"]


@dataclass(frozen=True)
class StepResult:
    """Sums over one logical batch (divide by ``samples`` for means)."""

    loss_sum: float
    correct: int
    samples: int
    skipped: bool = False  # non-finite loss, on_nonfinite=skip: no optimizer step was taken


def _loss_sum(
    out: torch.Tensor, target: torch.Tensor | MixedBatch, lo: int, hi: int
) -> torch.Tensor:
    out = out.float()  # the loss in fp32 even under autocast
    if isinstance(target, MixedBatch):
        a = F.cross_entropy(out, target.y_a[lo:hi], reduction="sum")
        b = F.cross_entropy(out, target.y_b[lo:hi], reduction="sum")
        return target.lam * a + (1 - target.lam) * b
    return F.cross_entropy(out, target[lo:hi], reduction="sum")


def train_step(
    state: TrainState,
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    scaler: torch.amp.GradScaler,
) -> StepResult:
    """One optimizer step over a logical batch, split into micro-batches.

    Each micro-batch's summed loss is divided by the size of the whole logical batch, so
    the accumulated gradient equals the whole batch's mean-loss gradient whatever the split
    (up to floating-point rounding).
    """
    cfg = state.config
    gen = augment_generator(cfg.seed, state.epoch, state.batch_in_epoch)
    aug = augment_batch(x, y, cfg.augmentation, gen, cfg.mix_alpha)
    inputs = aug.x if isinstance(aug, MixedBatch) else aug
    target: torch.Tensor | MixedBatch = aug if isinstance(aug, MixedBatch) else y
    n = inputs.shape[0]
    micro = max(1, min(state.micro_batch_size, n))
    optimizer = state.optimizer
    state.in_optimizer_step = False
    optimizer.zero_grad(set_to_none=True)
    loss_total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    correct = torch.zeros((), dtype=torch.long, device=inputs.device)
    for lo in range(0, n, micro):
        hi = min(lo + micro, n)
        with autocast(cfg.precision, state.device):
            out = forward(inputs[lo:hi])
        loss = _loss_sum(out, target, lo, hi)
        scaler.scale(loss / n).backward()
        loss_total += loss.detach().double()
        correct += (out.detach().argmax(dim=1) == y[lo:hi]).sum()
    # .item() is a host-device sync point: once per logical batch, not per micro-batch
    loss_value = float(loss_total.item())
    if not math.isfinite(loss_value):
        policy = cfg.on_nonfinite
        if policy == "stop":
            raise DivergedError(state.epoch + 1, state.step + 1, loss_value)
        if policy == "skip":
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_value, int(correct.item()), n, skipped=True)
    state.in_optimizer_step = True  # stays set if the step raises
    scaler.step(optimizer)
    scaler.update()
    state.in_optimizer_step = False
    return StepResult(loss_value, int(correct.item()), n)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    state: TrainState,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode."""
    cfg = state.config
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    loader = eval_loader(
        dataset, batch_size=max(state.batch_size, 256), pin_memory=state.device.type == "cuda"
    )
    try:
        for x, y in loader:
            x, y = _to_device(x, y, state)
            with autocast(cfg.precision, state.device):
                out = forward(x)
            loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
            correct += int((out.argmax(dim=1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return (loss_sum / total, correct / total) if total else (math.nan, math.nan)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(
    x: torch.Tensor, y: torch.Tensor, state: TrainState
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = param_dtype(state.config.precision)
    non_blocking = state.device.type == "cuda"
    return x.to(state.device, dtype, non_blocking=non_blocking), y.to(
        state.device, non_blocking=non_blocking
    )


def _step_with_recovery(
    state: TrainState,
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    scaler: torch.amp.GradScaler,
    callbacks: Callback,
) -> StepResult:
    """:func:`train_step`, retried on out-of-memory while a callback can shrink the step.

    The retry starts the same logical batch from zero gradients with the same augmentation,
    so no sample is lost or counted twice in the update.
    """
    while True:
        try:
            return train_step(state, forward, x, y, scaler)  # ends with a host-device sync
        except torch.OutOfMemoryError as exc:
            state.optimizer.zero_grad(set_to_none=True)
            # the failed pass's activations live on in the traceback's frames: free them
            # before the cache is emptied, a callback measures memory or the step is retried
            # (the traceback itself, with file and line of every frame, is kept)
            traceback.clear_frames(exc.__traceback__)
            if state.device.type == "cuda":
                torch.cuda.empty_cache()
            if not callbacks.on_oom(state, exc):
                raise


def run_epochs(
    state: TrainState,
    forward: Callable[[torch.Tensor], torch.Tensor],
    train_set: Dataset,
    val_set: Dataset | None,
    callbacks: Callback,
    scaler: torch.amp.GradScaler,
    start_epoch: int = 0,
) -> None:
    """Train from ``start_epoch`` to ``config.epochs``; each epoch ends with a metrics row."""
    cfg, model = state.config, state.model
    for epoch in range(start_epoch, cfg.epochs):
        state.epoch, state.batch_in_epoch, state.samples_seen_epoch = epoch, 0, 0
        # dropout and other global randomness depend only on (seed, epoch): resume replays it
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        lr = state.base_lr * lr_factor(cfg, epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        state.epoch_row = {}
        callbacks.on_epoch_start(state)
        model.train()
        loader: DataLoader = epoch_loader(
            train_set,
            batch_size=state.batch_size,
            seed=cfg.seed,
            epoch=epoch,
            num_workers=cfg.num_workers,
            prefetch_factor=cfg.prefetch_factor,
            pin_memory=state.device.type == "cuda",
        )
        loss_sum, correct, seen, loss_seen = 0.0, 0, 0, 0
        t0 = time.perf_counter()
        batches = iter(loader)
        while True:
            t_wait = time.perf_counter()
            try:
                x, y = next(batches)  # blocks while the DataLoader fetches and collates
            except StopIteration:
                break
            t_fetched = time.perf_counter()
            callbacks.on_batch_start(state)
            t_copy = time.perf_counter()
            x, y = _to_device(x, y, state)
            if state.sync_timing:
                _synchronize(state.device)  # so asynchronous copies are not counted as compute
            t_copied = time.perf_counter()
            result = _step_with_recovery(state, forward, x, y, scaler, callbacks)
            state.batch_timing = BatchTiming(
                wait_s=t_fetched - t_wait,
                copy_s=t_copied - t_copy,
                compute_s=time.perf_counter() - t_copied,
                samples=result.samples,
            )
            if result.skipped:
                state.skipped_steps += 1
            else:
                loss_sum += result.loss_sum
                loss_seen += result.samples
            correct += result.correct
            seen += result.samples
            state.samples_seen_epoch = seen
            state.last_loss = result.loss_sum / max(1, result.samples)
            state.step += 1
            state.batch_in_epoch += 1
            callbacks.on_batch_end(state)
            if cfg.max_batches_per_epoch and state.batch_in_epoch >= cfg.max_batches_per_epoch:
                break
        train_time_s = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, forward, val_set, state) if val_set else (None, None)
        state.epoch_row.update(
            epoch=epoch + 1,
            time_s=time.perf_counter() - t0,
            train_loss=loss_sum / loss_seen if loss_seen else math.nan,
            train_acc=correct / max(1, seen),
            val_loss=val_loss,
            val_acc=val_acc,
            lr=state.optimizer.param_groups[0]["lr"],
            batch_size=state.batch_size,
            micro_batch_size=min(state.micro_batch_size, state.batch_size),
            accum_steps=state.accum_steps,
            samples_per_s=seen / train_time_s if train_time_s > 0 else None,
        )
        callbacks.on_epoch_end(state)
        state.history.append(dict(state.epoch_row))
        if state.stop_training:
            break
