"""The adaptive controller and pruning inside the training loop.

:class:`AdaptiveCallback` keeps training inside ``budget.memory``: before the first epoch
it probes a few steps, fits a memory model and picks the largest micro-batch that fits
with ``adapt.margin`` to spare (the effective batch is kept by gradient accumulation);
during training it shrinks the micro-batch when a step runs out of memory (the loop
retries the same logical batch) or when the measured peak passes the budget; after each
epoch the configured policy (:mod:`edgetrain.adapt.policies`) decides. Every decision
goes to ``RUN/decisions.csv``, the memory of each epoch to ``RUN/adapt.csv`` and the
totals to ``summary.json`` (``adapt``).

:class:`PruneCallback` prunes conv and linear weights by global magnitude
(:mod:`edgetrain.prune`) and makes the pruning permanent at the end.

Use :func:`adapt_callbacks` for the callbacks a config asks for, in their order.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import Dataset
from torch.utils.hooks import RemovableHandle

from edgetrain.adapt import (
    Decision,
    EpochObservation,
    MemoryMeter,
    MemoryModel,
    Probe,
    StaticBytes,
    decide,
    fit_memory_model,
    fit_to_budget,
    keep_unbatched_overrun,
    make_meter,
    measure_logical_batch,
    probe_batch,
    shrink_after_oom,
    shrink_after_overrun,
)
from edgetrain.config import AdaptConfig, PruneConfig, TrainConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.memory import unique_bytes
from edgetrain.prune import (
    attach_masks,
    current_masks,
    make_permanent,
    model_sparsity,
    param_sparsity,
    plain_state_dict,
    prunable_modules,
    prune_to,
    target_sparsity,
)
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.optim import autocast
from edgetrain.train.rundir import DECISIONS_COLUMNS
from edgetrain.units import format_bytes

__all__ = ["ADAPT_COLUMNS", "AdaptiveCallback", "PruneCallback", "adapt_callbacks"]

log = logging.getLogger(__name__)
# whole logical batches measured before training to confirm the chosen micro-batch
_VERIFY_TRIES = 3


def _measured(micro: int, measured: int) -> str:
    """How a whole-batch check reads in decisions.csv (``measured`` -1: out of memory)."""
    shown = "ran out of memory" if measured < 0 else f"measured {format_bytes(measured)}"
    return f"a logical batch at {micro} {shown}"


ADAPT_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "micro_batch_size",
    "accum_steps",
    "budget_bytes",
    "predicted_peak_bytes",
    "train_peak_bytes",
    "peak_bytes",
    "baseline_rss_bytes",
    "source",
)

MEMORY_DEFINITION = {
    "cpu:rss-above-baseline": (
        "process RSS high-water mark above the RSS at fit start, plus the model and "
        "optimizer tensors resident at fit start; training steps and evaluation, not "
        "checkpoint writes between epochs (outside_epochs_peak_bytes)"
    ),
    "cuda:max-allocated": "torch.cuda.max_memory_allocated (tensors; no CUDA context, no cache)",
}


def adapt_callbacks(
    config: TrainConfig,
    train_data: Dataset | None = None,
    val_data: Dataset | None = None,
) -> list[Callback]:
    """The pruning and adaptive callbacks ``config`` asks for, in order (prune first).

    Put them after the monitor callback. ``train_data`` is probed to fit the micro-batch
    to ``budget.memory``; ``val_data`` tells whether validation accuracy will exist.
    """
    callbacks: list[Callback] = []
    if config.prune.ratio > 0:
        callbacks.append(PruneCallback(config.prune))
    if config.adapt.policy != "none":
        has_val = None if train_data is None and val_data is None else val_data is not None
        callbacks.append(AdaptiveCallback(config, train_data, has_validation=has_val))
    elif config.budget.memory is not None:
        log.warning(
            "budget.memory is set but adapt.policy is none: the budget is not enforced "
            "(use adapt.policy: budget)"
        )
    return callbacks


def _resident_tensor_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Tensors of the model and optimizer that exist now (parameters, buffers, gradients,
    optimizer state, and tensor attributes such as a pruned layer's masked weight)."""
    tensors: list[torch.Tensor | None] = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters()]
    for module in model.modules():
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return unique_bytes(tensors)


def _in_optimizer_step(error: BaseException) -> bool:
    """True if ``error`` was raised inside an optimizer's step (which may be half done)."""
    tb = error.__traceback__
    while tb is not None:
        if isinstance(tb.tb_frame.f_locals.get("self"), torch.optim.Optimizer):
            return True
        tb = tb.tb_next
    return False


def _max(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return b if a is None else max(a, b)


class AdaptiveCallback(Callback):
    """Keeps training inside ``budget.memory`` and applies ``adapt.policy`` (see module doc).

    Args:
        config: the run's config (``budget``, ``adapt``); None = the config of the run it
            is added to (read at fit start).
        probe_data: training samples for the probe steps (needed with a budget).
        has_validation: whether the run has a validation split (``edgetrain`` needs one);
            None = unknown.
        meter: the memory meter (default: by device, see :mod:`edgetrain.adapt.meters`).

    Only one instance acts on a run. ``decisions`` keeps this process's decision rows.
    """

    name = "adapt"

    def __init__(
        self,
        config: TrainConfig | None = None,
        probe_data: Dataset | None = None,
        *,
        has_validation: bool | None = None,
        meter: MemoryMeter | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.adapt if config is not None else AdaptConfig(policy="budget")
        self.budget_bytes = config.budget.memory_bytes if config is not None else None
        self.probe_data = probe_data
        self.has_validation = has_validation
        self.meter = meter
        self.active = False
        self.decisions: list[dict[str, Any]] = []
        # controller state, checkpointed
        self.memory: MemoryModel | None = None
        self.static: StaticBytes | None = None
        self.probes: list[Probe] = []
        self.calibration: Probe | None = None
        self.overhead_bytes = 0.0  # a logical batch beyond a single pass (calibration)
        self.points: list[tuple[int, float]] = []  # (micro-batch, measured peak) in training
        self.ceiling: int | None = None
        self.fitted = False
        self.violations = 0
        self.oom_retries = 0
        self.last_lr_change_epoch = 0
        self.peak_bytes: int | None = None
        self.probe_peak_bytes: int | None = None
        self.outside_peak_bytes: int | None = None
        # this process only
        self._device_total: int | None = None
        self._train_peak: int | None = None
        self._epoch_open = False
        self._norm_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._eval_chunk: int | None = None
        self._stuck_epoch = -1
        self._delegate: AdaptiveCallback | None = None
        # the last overrun that shrank the micro-batch: (micro-batch, peak), to see whether
        # shrinking lowered the peak at all
        self._last_shrink: tuple[int, int] | None = None
        # the peak reached by memory that shrinking did not lower (None: none seen)
        self._unbatched_peak: int | None = None

    # -- helpers ---------------------------------------------------------------------------
    @property
    def _limit_frac(self) -> float:
        if self.cfg.policy == "edgetrain":
            return min(1 - self.cfg.margin, self.cfg.memory_high_frac)
        return 1 - self.cfg.margin

    def _log(self, state: TrainState, decision: Decision, epoch: int, note: str = "") -> None:
        for row in decision.rows():
            row = {"epoch": epoch, "step": state.step, **row}
            if note:
                row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note
            self.decisions.append(row)
            if state.run is not None:
                state.run.log("decisions.csv", DECISIONS_COLUMNS).append(row)
        for change in decision.changes:
            log.info(
                "adapt (%s): %s %s -> %s: %s",
                decision.policy,
                change.parameter,
                change.old,
                change.new,
                change.reason,
            )

    def _apply(self, state: TrainState, decision: Decision) -> None:
        batch = int(decision.new("batch_size", state.batch_size))
        micro = int(decision.new("micro_batch_size", state.micro_batch_size))
        state.batch_size = batch
        state.micro_batch_size = max(1, min(micro, batch))
        lr = float(decision.new("lr", state.base_lr))
        if lr != state.base_lr:
            state.base_lr = lr  # the loop sets the optimizer's rate from it at the next epoch
            self.last_lr_change_epoch = state.epoch + 1
        if self.budget_bytes is not None or self.oom_retries:
            self._eval_chunk = state.micro_batch_size  # evaluation fits where training does

    def _refit(self) -> None:
        """Recalibrate on the steps measured in training (the probes' slope is kept)."""
        if self.static is None or self.memory is None:
            return
        extra = self.overhead_bytes
        points = [(p.micro_batch_size, p.peak_bytes(self.static) + extra) for p in self.probes]
        self.memory = MemoryModel.envelope(
            points + self.points,
            self.memory.per_sample_bytes,
            static_floor=self.static.total_bytes,
        )

    def _summary(self, state: TrainState) -> None:
        meter = self.meter
        source = getattr(meter, "source", None)
        within = None
        if self.budget_bytes is not None and self.peak_bytes is not None:
            within = self.peak_bytes <= self.budget_bytes
        state.extras.setdefault("summary", {})["adapt"] = {
            "policy": self.cfg.policy,
            "budget_bytes": self.budget_bytes,
            "memory_source": source,
            "memory_definition": MEMORY_DEFINITION.get(str(source)),
            "baseline_rss_bytes": getattr(meter, "baseline_rss_bytes", None),
            "measured_peak_bytes": self.peak_bytes,
            "within_budget": within,
            "probe_peak_bytes": self.probe_peak_bytes,
            "budget_violations": self.violations,
            "oom_retries": self.oom_retries,
            "outside_epochs_peak_bytes": self.outside_peak_bytes,
            "predicted_peak_bytes": (
                self.memory.predict_bytes(state.micro_batch_size) if self.memory else None
            ),
            "memory_model": self.memory.to_dict() if self.memory else None,
            "static": asdict(self.static) if self.static else None,
            "probes": [asdict(p) for p in self.probes],
            "calibration": asdict(self.calibration) if self.calibration else None,
            "micro_batch_size": state.micro_batch_size,
            "batch_size": state.batch_size,
            "accum_steps": state.accum_steps,
            "base_lr": state.base_lr,
        }

    # -- fit start -------------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        other = state.extras.get("adapt_active")
        if other is not None and other is not self:
            log.info("another AdaptiveCallback is active on this run; this one does nothing")
            self._delegate = other  # checkpoints share one key: report the active one's state
            return
        state.extras["adapt_active"] = self
        self.active = True
        if self.config is None:  # added by hand: the run's settings, at least policy budget
            adapt = state.config.adapt
            if adapt.policy == "none":
                adapt = adapt.model_copy(update={"policy": "budget"})
            self.cfg, self.budget_bytes = adapt, state.config.budget.memory_bytes
        if self.cfg.policy == "edgetrain" and self.has_validation is False:
            raise EdgeTrainError(
                "adapt.policy edgetrain decides from validation accuracy, but the run has no "
                "validation data; give it a validation split (split: [0.8, 0.1, 0.1]) or "
                "val_data, or use adapt.policy: budget"
            )
        if self.meter is None:
            self.meter = make_meter(state.device)
        self.meter.start(_resident_tensor_bytes(state.model, state.optimizer))
        self._device_total = self.meter.capacity_bytes()
        resumed = bool(state.history)
        if resumed and state.run is not None:
            done = len(state.history)
            state.run.truncate_log(
                "adapt.csv", lambda r: r.get("epoch", "") != "" and int(r["epoch"]) <= done
            )
        if self.budget_bytes is not None:
            self._eval_chunk = state.micro_batch_size
            if not self.fitted:
                self._fit_budget(state)
            elif self.memory is not None:
                self._check_restored(state)
        self.meter.reset_peak()
        self._summary(state)

    def _fit_budget(self, state: TrainState) -> None:
        if self.probe_data is None:
            raise EdgeTrainError(
                "budget.memory needs training samples to probe the memory per micro-batch: "
                "pass probe_data to AdaptiveCallback (adapt_callbacks(config, train_data))"
            )
        dtype = next(state.model.parameters()).dtype
        x, y = probe_batch(self.probe_data, state.batch_size, state.device, dtype)
        try:
            self._fit_and_verify(state, x, y)
        finally:
            del x, y

    def _fit_and_verify(self, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> None:
        assert self.budget_bytes is not None and self.meter is not None
        budget, cfg, model = self.budget_bytes, self.cfg, state.model
        min_micro = min(cfg.min_micro_batch_size, state.batch_size)
        try:
            fit = fit_memory_model(
                model,
                state.optimizer,
                x,
                y,
                meter=self.meter,
                limit_bytes=self._limit_frac * budget,
                start=min_micro,
                autocast=lambda: autocast(state.config.precision, state.device),
            )
        except torch.OutOfMemoryError as exc:
            raise EdgeTrainError(
                f"budget.memory {format_bytes(budget)}: a step at micro-batch {min_micro} runs "
                f"out of device memory ({exc})"
            ) from exc
        static = fit.static
        if budget < static.total_bytes:
            raise EdgeTrainError(
                f"budget.memory {format_bytes(budget)} ({budget} bytes) is below the static "
                f"bytes {format_bytes(static.total_bytes)} ({static.total_bytes} bytes) the "
                f"model needs before any sample: parameters {format_bytes(static.param_bytes)}, "
                f"buffers {format_bytes(static.buffer_bytes)}, gradients "
                f"{format_bytes(static.grad_bytes)}, optimizer state "
                f"{format_bytes(static.optimizer_state_bytes)}"
            )
        needed = fit.memory.predict_bytes(min_micro)
        if needed > budget:
            raise EdgeTrainError(
                f"budget.memory {format_bytes(budget)} ({budget} bytes) is below the "
                f"{format_bytes(needed)} ({needed} bytes) measured for micro-batch {min_micro} "
                f"(static bytes {format_bytes(static.total_bytes)}, the rest runtime and "
                f"activations); raise it to at least {format_bytes(needed / (1 - cfg.margin))}"
            )
        self.static, self.memory, self.ceiling = static, fit.memory, fit.ceiling
        self.probes = list(fit.probes)
        self.calibration = fit.calibration
        self.overhead_bytes = fit.overhead_bytes
        self.probe_peak_bytes = fit.probe_peak_bytes
        self.fitted = True
        sizes = ", ".join(str(p.micro_batch_size) for p in fit.probes)
        notes = [f"probed micro-batches {sizes}"]
        decision = self._verify(state, x, y, min_micro, fit.verified or min_micro, notes)
        self._apply(state, decision)
        self._log(state, decision, epoch=len(state.history), note="; ".join(notes))

    def _verify(
        self,
        state: TrainState,
        x: torch.Tensor,
        y: torch.Tensor,
        min_micro: int,
        upper: int,
        notes: list[str],
    ) -> Decision:
        """The model's choice, measured as a whole logical batch; above the limit, the next
        smaller choice is measured (up to ``_VERIFY_TRIES`` sizes in all).

        A smaller size that measures no less (by a quarter of what the model expects the
        fewer samples to free) shows that what passes the limit is not the micro-batch's
        (the runtime's memory, noise in the resident size): the larger size is kept if it
        measured within the budget, and shrinking stops.
        """
        assert self.budget_bytes is not None and self.memory is not None
        budget = self.budget_bytes
        limit = self._limit_frac * budget
        decision = self._budget_decision(state, min_micro, upper)
        micro = int(decision.new("micro_batch_size", state.micro_batch_size))
        measured = self._measure_logical_batch(state, x, y, micro)
        for _ in range(_VERIFY_TRIES - 1):
            if measured is None:  # the meter has no reading: the model's choice stands
                return decision
            notes.append(_measured(micro, measured))
            if 0 <= measured <= limit or micro <= min_micro:
                return decision
            smaller_decision = self._budget_decision(state, min_micro, micro - 1)
            smaller = int(smaller_decision.new("micro_batch_size", state.micro_batch_size))
            again = self._measure_logical_batch(state, x, y, smaller)
            expected_drop = self.memory.per_sample_bytes * (micro - smaller)
            no_drop = again is not None and measured - again < 0.25 * expected_drop
            if again is not None and measured >= 0 and again >= 0 and no_drop:
                notes.append(
                    f"{_measured(smaller, again)}, no less: what passes the limit is not the "
                    "micro-batch's"
                )
                return decision if measured <= budget else smaller_decision
            decision, micro, measured = smaller_decision, smaller, again
        if measured is not None:
            notes.append(_measured(micro, measured))
        return decision

    def _budget_decision(self, state: TrainState, min_micro: int, upper: int) -> Decision:
        assert self.memory is not None and self.budget_bytes is not None
        return fit_to_budget(
            self.memory,
            budget_bytes=self.budget_bytes,
            limit_frac=self._limit_frac,
            batch_size=state.batch_size,
            micro_batch_size=state.micro_batch_size,
            min_micro_batch_size=min_micro,
            max_micro_batch_size=max(min_micro, upper),
            policy=self.cfg.policy,
        )

    def _measure_logical_batch(
        self, state: TrainState, x: torch.Tensor, y: torch.Tensor, micro: int
    ) -> int | None:
        """The peak of one whole logical batch at ``micro``; -1 if it ran out of memory."""
        assert self.meter is not None and self.static is not None
        try:
            probe = measure_logical_batch(
                state.model,
                state.optimizer,
                x,
                y,
                micro,
                static=self.static,
                meter=self.meter,
                autocast=lambda: autocast(state.config.precision, state.device),
            )
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return -1
        finally:
            self.meter.reset_peak()
        return probe.measured_bytes

    def _check_restored(self, state: TrainState) -> None:
        """After resume (perhaps with a new budget): shrink if the model says it must."""
        assert self.memory is not None and self.budget_bytes is not None
        if self.memory.predict_bytes(state.micro_batch_size) <= self.budget_bytes:
            return
        decision = fit_to_budget(
            self.memory,
            budget_bytes=self.budget_bytes,
            limit_frac=self._limit_frac,
            batch_size=state.batch_size,
            micro_batch_size=state.micro_batch_size,
            min_micro_batch_size=min(self.cfg.min_micro_batch_size, state.batch_size),
            policy=self.cfg.policy,
        )
        self._apply(state, decision)
        self._log(state, decision, epoch=len(state.history), note="resumed")

    # -- inside epochs ---------------------------------------------------------------------
    def on_epoch_start(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        if not self._epoch_open and state.epoch > 0:
            # checkpoint writes and other work since the last epoch ended
            self.outside_peak_bytes = _max(self.outside_peak_bytes, self.meter.peak_bytes())
        self.meter.reset_peak()
        self._epoch_open = True
        self._train_peak = None

    def on_batch_start(self, state: TrainState) -> None:
        if not self.active or not self.cfg.oom_recovery:
            return
        # a forward that runs out of memory part-way has already updated batch-norm
        # statistics for the earlier micro-batches: keep them to undo (a few KiB)
        self._norm_buffers = [
            (b, b.detach().clone())
            for m in state.model.modules()
            if isinstance(m, _NormBase)
            for b in m.buffers(recurse=False)
        ]

    def on_batch_end(self, state: TrainState) -> None:
        if not self.active or self.meter is None or self.budget_bytes is None:
            return
        peak = self.meter.peak_bytes()  # reading /proc/self/status: tens of microseconds
        self._train_peak = _max(self._train_peak, peak)
        if peak is None or peak <= self.budget_bytes:
            return
        self.violations += 1
        self.peak_bytes = _max(self.peak_bytes, peak)
        micro = state.micro_batch_size
        decision = self._unbatched(peak, micro) or self._shrink(peak, micro)
        if decision.changes or self._stuck_epoch != state.epoch:
            self._log(state, decision, epoch=state.epoch + 1)
        if decision.changes:
            self.ceiling = micro if self.ceiling is None else min(self.ceiling, micro)
            self._last_shrink = (micro, peak)
            self._apply(state, decision)
        else:
            if self._stuck_epoch != state.epoch:
                log.warning("%s", decision.reason)  # once per epoch, not once per step
            self._stuck_epoch = state.epoch
        self.meter.reset_peak()  # measure the new micro-batch from here
        self._summary(state)

    def _shrink(self, peak: int, micro: int) -> Decision:
        assert self.budget_bytes is not None
        self.points.append((micro, float(peak)))
        self._refit()
        return shrink_after_overrun(
            micro_batch_size=micro,
            peak_bytes=peak,
            budget_bytes=self.budget_bytes,
            memory=self.memory,
            limit_frac=self._limit_frac,
            min_micro_batch_size=self.cfg.min_micro_batch_size,
            factor=self.cfg.batch_factor,
            policy=self.cfg.policy,
        )

    def _unbatched(self, peak: int, micro: int) -> Decision | None:
        """A decision to keep the micro-batch when shrinking it does not lower the peak.

        If the last shrink (from m to the current ``micro``) lowered the peak by less than a
        quarter of what the memory model expects m - micro fewer samples to free, the bytes
        over the budget are not the micro-batch's (memory the runtime keeps, or that grew
        outside the step), and halving again would only slow training. Such overruns are
        counted but shrink nothing, until a peak passes theirs by more than the current
        micro-batch could hold (new pressure that may be the batch's).
        """
        assert self.budget_bytes is not None
        slope = self.memory.per_sample_bytes if self.memory is not None else 0.0
        if self._unbatched_peak is None:
            last = self._last_shrink
            if last is None or micro >= last[0] or slope <= 0:
                return None
            expected_drop = slope * (last[0] - micro)
            if last[1] - peak >= 0.25 * expected_drop:
                return None
            self._unbatched_peak = peak
            self._stuck_epoch = -1  # this first decision is always logged
            first = (
                f"shrinking the micro-batch from {last[0]} to {micro} did not lower the peak "
                f"({format_bytes(last[1])} -> {format_bytes(peak)}; expected about "
                f"{format_bytes(expected_drop)} less): "
            )
        elif peak > (self._unbatched_limit(micro) or 0):
            self._unbatched_peak = None  # new pressure: shrinking may help again
            return None
        else:
            self._unbatched_peak = max(self._unbatched_peak, peak)
            first = ""
        return keep_unbatched_overrun(
            micro_batch_size=micro,
            peak_bytes=peak,
            budget_bytes=self.budget_bytes,
            margin=self.cfg.margin,
            why=first,
            policy=self.cfg.policy,
        )

    def _unbatched_limit(self, micro: int) -> int | None:
        """Peaks up to this are the memory that shrinking did not lower (None: not seen):
        the highest such peak, plus what ``micro`` samples could hold on top of it."""
        if self._unbatched_peak is None:
            return None
        slope = self.memory.per_sample_bytes if self.memory is not None else 0.0
        return int(self._unbatched_peak + slope * micro)

    def on_oom(self, state: TrainState, error: BaseException) -> bool:
        if not self.active or not self.cfg.oom_recovery:
            return False
        epoch = state.epoch + 1
        if state.in_optimizer_step or _in_optimizer_step(error):
            reason = (
                "out of memory inside the optimizer step: the step may be half applied, so it "
                "cannot be retried exactly"
            )
            log.error("%s", reason)
            self._log(state, Decision(self.cfg.policy, "micro_batch_size", (), reason), epoch)
            return False
        with torch.no_grad():
            for buf, saved in self._norm_buffers:
                buf.copy_(saved)
        micro = state.micro_batch_size
        decision = shrink_after_oom(
            micro_batch_size=micro,
            min_micro_batch_size=self.cfg.min_micro_batch_size,
            factor=self.cfg.batch_factor,
            policy=self.cfg.policy,
        )
        self._log(state, decision, epoch)
        if not decision.changes:
            return False
        self.oom_retries += 1
        self.ceiling = micro if self.ceiling is None else min(self.ceiling, micro)
        self._apply(state, decision)
        if self.meter is not None:
            self.meter.reset_peak()
        self._summary(state)
        return True

    def wrap_forward(self, forward: Any) -> Any:
        """Under a budget, evaluate in chunks of the micro-batch (exact: eval mode, no grad)."""

        def chunked(x: torch.Tensor) -> torch.Tensor:
            chunk = self._eval_chunk
            if chunk is None or torch.is_grad_enabled() or x.shape[0] <= chunk:
                return forward(x)
            return torch.cat([forward(part) for part in x.split(chunk)])

        return chunked

    # -- epoch end -------------------------------------------------------------------------
    def on_epoch_end(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        peak = self.meter.peak_bytes()  # training steps since the window opened + evaluation
        self._epoch_open = False
        if self._train_peak is not None:
            self.points.append((state.micro_batch_size, float(self._train_peak)))
            self._refit()
        self.peak_bytes = _max(self.peak_bytes, peak)
        val_accs = tuple(r.get("val_acc") for r in state.history)
        obs = EpochObservation(
            epoch=state.epoch + 1,
            batch_size=state.batch_size,
            micro_batch_size=state.micro_batch_size,
            lr=state.base_lr,
            train_size=state.train_size,
            configured_batch_size=state.config.batch_size,
            peak_bytes=peak,
            budget_bytes=self.budget_bytes,
            device_total_bytes=self._device_total,
            val_accs=(*val_accs, state.epoch_row.get("val_acc")),
            epochs_since_lr_change=state.epoch + 1 - self.last_lr_change_epoch,
            memory=self.memory,
            micro_ceiling=self.ceiling,
            unbatched_peak_bytes=self._unbatched_limit(state.micro_batch_size),
        )
        decision = decide(obs, self.cfg)
        self._log(state, decision, epoch=state.epoch + 1)
        self._apply(state, decision)
        if state.run is not None:
            state.run.log("adapt.csv", ADAPT_COLUMNS).append(
                {
                    "epoch": state.epoch + 1,
                    "step": state.step,
                    "micro_batch_size": state.epoch_row.get("micro_batch_size"),
                    "accum_steps": state.epoch_row.get("accum_steps"),
                    "budget_bytes": self.budget_bytes,
                    "predicted_peak_bytes": (
                        self.memory.predict_bytes(int(state.epoch_row["micro_batch_size"]))
                        if self.memory and state.epoch_row.get("micro_batch_size")
                        else None
                    ),
                    "train_peak_bytes": self._train_peak,
                    "peak_bytes": peak,
                    "baseline_rss_bytes": getattr(self.meter, "baseline_rss_bytes", None),
                    "source": self.meter.source,
                }
            )
        self._summary(state)
        self.meter.reset_peak()  # from here: checkpoint and the other callbacks

    def on_fit_end(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        if not self._epoch_open:
            self.outside_peak_bytes = _max(self.outside_peak_bytes, self.meter.peak_bytes())
        self._summary(state)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._delegate is not None:
            return self._delegate.state_dict()
        return {
            "memory": self.memory.to_dict() if self.memory else None,
            "static": asdict(self.static) if self.static else None,
            "probes": [asdict(p) for p in self.probes],
            "calibration": asdict(self.calibration) if self.calibration else None,
            "overhead_bytes": self.overhead_bytes,
            "points": [list(p) for p in self.points],
            "ceiling": self.ceiling,
            "fitted": self.fitted,
            "violations": self.violations,
            "oom_retries": self.oom_retries,
            "last_lr_change_epoch": self.last_lr_change_epoch,
            "peak_bytes": self.peak_bytes,
            "probe_peak_bytes": self.probe_peak_bytes,
            "outside_peak_bytes": self.outside_peak_bytes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = MemoryModel.from_dict(state["memory"]) if state.get("memory") else None
        self.static = StaticBytes(**state["static"]) if state.get("static") else None
        self.probes = [Probe(**p) for p in state.get("probes", [])]
        calibration = state.get("calibration")
        self.calibration = Probe(**calibration) if calibration else None
        self.overhead_bytes = float(state.get("overhead_bytes", 0.0))
        self.points = [(int(m), float(b)) for m, b in state.get("points", [])]
        self.ceiling = state.get("ceiling")
        self.fitted = bool(state.get("fitted", False))
        self.violations = int(state.get("violations", 0))
        self.oom_retries = int(state.get("oom_retries", 0))
        self.last_lr_change_epoch = int(state.get("last_lr_change_epoch", 0))
        self.peak_bytes = state.get("peak_bytes")
        self.probe_peak_bytes = state.get("probe_peak_bytes")
        self.outside_peak_bytes = state.get("outside_peak_bytes")


class PruneCallback(Callback):
    """Global magnitude pruning during training, permanent at the end (see module doc).

    Only one instance acts on a run (a second one does nothing).

    Every conv and linear weight is masked from the start (all ones until pruning
    begins), so the model's memory does not jump when pruning starts. While masks exist,
    ``model.state_dict()`` holds plain weights (orig x mask): checkpoints load into an
    unpruned model, and on resume the masks come back from this callback's state.
    ``metrics.csv`` gets ``param_sparsity`` (zeros among conv and linear weights).
    """

    name = "prune"

    def __init__(self, config: PruneConfig | None = None) -> None:
        self.config = config or PruneConfig()
        self._own_config = config is not None
        self.sparsity = 0.0  # the target applied so far
        self._masks: dict[str, torch.Tensor] | None = None
        self._hooks: list[RemovableHandle] = []
        self._model: nn.Module | None = None
        self._delegate: PruneCallback | None = None

    def _target(self, state: TrainState, epoch: int) -> float:
        cfg = self.config
        return target_sparsity(
            epoch,
            ratio=cfg.ratio,
            start_epoch=cfg.start_epoch,
            schedule=cfg.schedule,
            end_epoch=cfg.end_epoch,
            epochs=state.config.epochs,
        )

    def _prune(self, state: TrainState, epoch: int) -> None:
        target = self._target(state, epoch)
        if target <= self.sparsity:
            return
        old = param_sparsity(state.model)
        count = prune_to(state.model, target)
        self.sparsity = target
        new = param_sparsity(state.model)
        log.info("pruned %d weights before epoch %d: sparsity %.4f", count, epoch + 1, new)
        if state.run is not None:
            state.run.log("decisions.csv", DECISIONS_COLUMNS).append(
                {
                    "epoch": epoch + 1,
                    "step": state.step,
                    "chosen": "prune",
                    "parameter": "param_sparsity",
                    "old": old,
                    "new": new,
                    "reason": (
                        f"global magnitude pruning ({self.config.schedule}): {count} more "
                        f"conv/linear weights set to zero before epoch {epoch + 1}"
                    ),
                }
            )

    def on_fit_start(self, state: TrainState) -> None:
        other = state.extras.get("prune_active")
        if other is not None and other is not self:
            log.info("another PruneCallback is active on this run; this one does nothing")
            self._delegate = other
            return
        state.extras["prune_active"] = self
        if not self._own_config:
            self.config = state.config.prune
        cfg, epochs = self.config, state.config.epochs
        if cfg.ratio <= 0:
            raise EdgeTrainError(f"prune.ratio must be in (0, 1) for pruning, got {cfg.ratio}")
        if cfg.start_epoch >= epochs:
            raise EdgeTrainError(
                f"prune.start_epoch must be < epochs ({epochs}), or pruning never starts; "
                f"got {cfg.start_epoch}"
            )
        if cfg.schedule == "gradual" and cfg.end_epoch is not None and cfg.end_epoch > epochs:
            log.warning(
                "prune.end_epoch %d is after the last epoch (%d): the sparsity reaches %.3f, "
                "not prune.ratio %s",
                cfg.end_epoch,
                epochs,
                self._target(state, epochs - 1),
                cfg.ratio,
            )
        if not prunable_modules(state.model):
            raise EdgeTrainError(
                f"prune.ratio {cfg.ratio}: the model ({type(state.model).__name__}) has no "
                "conv or linear layer to prune"
            )
        self._model = state.model
        attach_masks(state.model, self._masks)
        self._masks = None
        self._hooks = plain_state_dict(state.model)
        self._prune(state, len(state.history))  # the next epoch (0 on a fresh run)

    def on_epoch_start(self, state: TrainState) -> None:
        if self._model is not None:
            self._prune(state, state.epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._model is not None:
            state.epoch_row["param_sparsity"] = param_sparsity(state.model)

    def on_fit_end(self, state: TrainState) -> None:
        if self._model is None:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        layers = make_permanent(state.model)
        self._model = None
        state.extras.setdefault("summary", {})["prune"] = {
            "ratio": self.config.ratio,
            "schedule": self.config.schedule,
            "start_epoch": self.config.start_epoch,
            "param_sparsity": param_sparsity(state.model),
            "model_sparsity": model_sparsity(state.model),
            "layers": layers,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._delegate is not None:
            return self._delegate.state_dict()
        if self._model is None:
            return {}
        return {"sparsity": self.sparsity, "masks": current_masks(self._model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.sparsity = float(state.get("sparsity", 0.0))
        masks = state.get("masks") or {}
        self._masks = dict(masks) if masks else None
        if self._masks is None and self.sparsity > 0:
            log.warning("the checkpoint has no pruning masks; pruning is applied again")
            self.sparsity = 0.0
