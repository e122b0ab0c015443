"""The one training loop: epochs, logical batches, micro-batches, accumulation, validation.

Read it top to bottom: :func:`run_epochs` calls :func:`train_step` for each logical batch
and :func:`evaluate` after each epoch; callbacks see every boundary.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.errors import DivergedError
from edgetrain.tasks import metrics_to
from edgetrain.tasks.augment import augment_generator
from edgetrain.train.callbacks import BatchTiming, Callback, TrainState
from edgetrain.train.data import epoch_loader, eval_loader
from edgetrain.train.optim import autocast, lr_factor, param_dtype

__all__ = ["StepResult", "evaluate", "run_epochs", "train_step"]


@dataclass(frozen=True)
class StepResult:
    """Sums over one logical batch: the loss over ``count`` terms (samples, tokens)."""

    loss_sum: float
    count: float
    samples: int
    skipped: bool = False  # non-finite loss, on_nonfinite=skip: no optimizer step was taken


def train_step(
    state: TrainState,
    forward: Callable[..., Any],
    batch: Any,
    scaler: torch.amp.GradScaler,
) -> StepResult:
    """One optimizer step over a logical batch, split into micro-batches.

    The task gives each micro-batch's loss as a sum; it is divided by the whole logical
    batch's count (samples or tokens, known before the forward pass), so the accumulated
    gradient equals the whole batch's mean-loss gradient whatever the split (up to
    floating-point rounding).
    """
    cfg, task = state.config, state.task
    if cfg.augmentation != "none":
        batch = task.augment(batch, augment_generator(cfg.seed, state.epoch, state.batch_in_epoch))
    n = task.size(batch)
    micro = max(1, min(state.micro_batch_size, n))
    optimizer = state.optimizer
    # optimizer in backward: without accumulation, hooks step each parameter in backward;
    # with accumulation (SGD with momentum), they fold each micro-batch's gradients into
    # the momentum buffers and the weights step after the last (edgetrain.memory.fold)
    fold = state.fold if state.step_in_backward and micro < n else None
    in_backward = state.step_in_backward and (micro >= n or fold is not None)
    if fold is not None:
        fold.begin()
    state.in_optimizer_step = False
    optimizer.zero_grad(set_to_none=True)
    total = task.count(batch)
    if isinstance(total, torch.Tensor):
        total = total.clamp(min=1)  # a batch whose every target is ignored
    loss_total = torch.zeros((), dtype=torch.float64, device=state.device)
    for lo in range(0, n, micro):
        part = batch if micro >= n else task.split(batch, lo, min(lo + micro, n))
        with autocast(cfg.precision, state.device):
            out = task.forward(forward, part)
        loss = task.loss_sum(out, part)
        state.in_optimizer_step = in_backward  # the hooks step parameters during backward
        scaler.scale(loss / total).backward()
        # folded momentum cannot be taken back: an error from here on is inside the step
        state.in_optimizer_step = fold is not None
        loss_total += loss.detach().double()
        task.update_metrics(state.train_metrics, out, part)
    # one host-device sync per logical batch, not per micro-batch
    if isinstance(total, torch.Tensor):
        loss_value, count = torch.stack([loss_total, total.double()]).tolist()
    else:
        loss_value, count = float(loss_total.item()), float(total)
    if not math.isfinite(loss_value):
        policy = cfg.on_nonfinite
        if policy == "stop":
            raise DivergedError(state.epoch + 1, state.step + 1, loss_value)
        if policy == "skip":
            optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_value, count, n, skipped=True)
    if in_backward:
        if fold is not None:
            fold.finish()  # the weights step from the folded momentum
        state.in_optimizer_step = False
        return StepResult(loss_value, count, n)  # stepped during backward
    state.in_optimizer_step = True  # stays set if the step raises
    if cfg.grad_clip_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    state.in_optimizer_step = False
    return StepResult(loss_value, count, n)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    forward: Callable[..., Any],
    dataset: Dataset | DataLoader,
    state: TrainState,
    prefix: str = "val",
) -> dict[str, float | None]:
    """The task's mean loss and metrics over a whole split, in eval mode:
    ``{prefix}_loss`` and ``{prefix}_<metric>``."""
    cfg, task = state.config, state.task
    was_training = model.training
    model.eval()
    metrics = metrics_to(task.make_metrics(), state.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=state.device)
    count = torch.zeros((), dtype=torch.float64, device=state.device)
    loader = eval_loader(
        dataset,
        batch_size=max(state.batch_size, 256),
        pin_memory=state.device.type == "cuda",
        collate_fn=state.collate_fn,
    )
    chunk = state.eval_micro_batch_size
    try:
        for batch in loader:
            batch = task.to_device(batch, state.device, param_dtype(cfg.precision))
            n = task.size(batch)
            step = chunk or n
            for lo in range(0, n, step):  # under a budget, in chunks (exact in eval mode)
                part = task.split(batch, lo, min(lo + step, n)) if step < n else batch
                with autocast(cfg.precision, state.device):
                    out = task.forward(forward, part)
                loss_sum += task.loss_sum(out, part).double()
                count += task.count(part)
                task.update_metrics(metrics, out, part)
    finally:
        model.train(was_training)
    total = float(count.item())
    result: dict[str, float | None] = {
        f"{prefix}_loss": float(loss_sum.item()) / total if total else math.nan
    }
    result.update({f"{prefix}_{k}": v for k, v in compute_metrics(metrics).items()})
    return result


def compute_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Each metric's value as a float (None when it has no data, e.g. R² of one sample)."""
    out: dict[str, float | None] = {}
    for name, metric in metrics.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "compute called before update" and the like
                value = float(metric.compute())
        except (RuntimeError, ValueError, ZeroDivisionError):
            value = None
        out[name] = value if value is None or math.isfinite(value) else None
    return out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_with_recovery(
    state: TrainState,
    forward: Callable[..., Any],
    batch: Any,
    scaler: torch.amp.GradScaler,
    callbacks: Callback,
) -> StepResult:
    """:func:`train_step`, retried on out-of-memory while a callback can shrink the step.

    The retry starts the same logical batch from zero gradients with the same augmentation,
    so no sample is lost or counted twice in the update.
    """
    while True:
        try:
            return train_step(state, forward, batch, scaler)  # ends with a host-device sync
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
    forward: Callable[..., Any],
    train_set: Dataset | DataLoader,
    val_set: Dataset | DataLoader | None,
    callbacks: Callback,
    scaler: torch.amp.GradScaler,
    start_epoch: int = 0,
) -> None:
    """Train from ``start_epoch`` to ``config.epochs``; each epoch ends with a metrics row."""
    cfg, model, task = state.config, state.model, state.task
    dtype = param_dtype(cfg.precision)
    for epoch in range(start_epoch, cfg.epochs):
        state.epoch, state.batch_in_epoch, state.samples_seen_epoch = epoch, 0, 0
        # dropout and other global randomness depend only on (seed, epoch): resume replays it
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        if state.scheduler is None:  # a user's scheduler sets the learning rate itself
            lr = state.base_lr * lr_factor(cfg, epoch)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
        state.epoch_row = {}
        state.train_metrics = metrics_to(task.make_metrics(train=True), state.device)
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
            collate_fn=state.collate_fn,
        )
        state.batches_per_epoch = _length(loader)
        loss_sum, loss_count, seen = 0.0, 0.0, 0
        t0 = time.perf_counter()
        batches = iter(loader)
        while True:
            t_wait = time.perf_counter()
            try:
                batch = next(batches)  # blocks while the DataLoader fetches and collates
            except StopIteration:
                break
            t_fetched = time.perf_counter()
            callbacks.on_batch_start(state)
            t_copy = time.perf_counter()
            batch = task.to_device(batch, state.device, dtype)
            if state.sync_timing:
                _synchronize(state.device)  # so asynchronous copies are not counted as compute
            t_copied = time.perf_counter()
            result = _step_with_recovery(state, forward, batch, scaler, callbacks)
            del batch  # the next batch's copy should not wait for this one's memory
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
                loss_count += result.count
            seen += result.samples
            state.samples_seen_epoch = seen
            state.last_loss = result.loss_sum / max(1.0, result.count)
            state.step += 1
            state.batch_in_epoch += 1
            callbacks.on_batch_end(state)
            if cfg.max_batches_per_epoch and state.batch_in_epoch >= cfg.max_batches_per_epoch:
                break
        train_time_s = time.perf_counter() - t0
        train_metrics = compute_metrics(state.train_metrics)
        state.epoch_row.update(
            epoch=epoch + 1,
            time_s=time.perf_counter() - t0,
            train_loss=loss_sum / loss_count if loss_count else math.nan,
            **{f"train_{name}": value for name, value in train_metrics.items()},
        )
        if val_set is not None:
            state.epoch_row.update(evaluate(model, forward, val_set, state))
        state.epoch_row.update(
            time_s=time.perf_counter() - t0,
            lr=state.optimizer.param_groups[0]["lr"],
            batch_size=state.batch_size,
            micro_batch_size=min(state.micro_batch_size, state.batch_size),
            accum_steps=state.accum_steps,
            samples_per_s=seen / train_time_s if train_time_s > 0 else None,
        )
        if state.scheduler is not None:
            state.scheduler.step()
        callbacks.on_epoch_end(state)
        state.history.append(dict(state.epoch_row))
        if state.stop_training:
            break


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an iterable-style data set
        return None
