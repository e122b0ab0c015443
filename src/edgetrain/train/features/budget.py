"""The adaptive controller and pruning inside the training loop.

:class:`AdaptiveCallback` keeps training inside ``budget.memory``: before the first epoch
it probes a few steps, fits a memory model and picks the largest micro-batch that fits
with ``adapt.margin`` to spare (the effective batch is kept by gradient accumulation);
during training it shrinks the micro-batch when a step runs out of memory (the loop
retries the same logical batch) or when the measured peak passes the budget; after each
epoch the configured policy (:mod:`edgetrain.adapt.policies`) decides. Every decision
goes to ``RUN/decisions.csv``, the memory of each epoch to ``RUN/adapt.csv`` and the
totals to ``summary.json`` (``adapt``).

The callback only measures and applies: the decisions are
:class:`~edgetrain.adapt.controller.BudgetController`'s, which needs no model.

:class:`PruneCallback` (:mod:`edgetrain.train.features.prune`) prunes conv and linear
weights by global magnitude.

Use :func:`adapt_callbacks` for the callbacks a config asks for, in their order.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.data import DataLoader, Dataset

from edgetrain.adapt import (
    BudgetController,
    BudgetDecision,
    BudgetFit,
    BudgetState,
    MemoryMeter,
    MemoryModel,
    Probe,
    Settings,
    fit_memory_model,
    make_meter,
    measure_logical_batch,
    probe_batch,
)
from edgetrain.config import AdaptConfig, TrainConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.memory import unique_bytes
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.features.prune import PruneCallback
from edgetrain.train.optim import autocast
from edgetrain.train.rundir import DECISIONS_COLUMNS
from edgetrain.units import format_bytes

__all__ = ["ADAPT_COLUMNS", "AdaptiveCallback", "PruneCallback", "adapt_callbacks"]

log = logging.getLogger(__name__)

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
    train_data: Dataset | DataLoader | None = None,
    val_data: Dataset | DataLoader | None = None,
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


def _settings(state: TrainState) -> Settings:
    return Settings(state.batch_size, state.micro_batch_size, state.base_lr)


class AdaptiveCallback(Callback):
    """Keeps training inside ``budget.memory`` and applies ``adapt.policy`` (see module doc).

    Args:
        config: the run's config (``budget``, ``adapt``); None = the config of the run it
            is added to (read at fit start).
        probe_data: training samples for the probe steps (needed with a budget): a
            Dataset (batched with the run's ``collate_fn``) or a DataLoader (its data set
            and ``collate_fn``). The run's task reads the probe batch.
        has_validation: whether the run has a validation split (``edgetrain`` needs one);
            None = unknown.
        meter: the memory meter (default: by device, see :mod:`edgetrain.adapt.meters`).

    Only one instance acts on a run. ``decisions`` keeps this process's decision rows;
    ``controller`` makes them (its ``state`` is what checkpoints hold).
    """

    name = "adapt"
    unique = True

    def __init__(
        self,
        config: TrainConfig | None = None,
        probe_data: Dataset | DataLoader | None = None,
        *,
        has_validation: bool | None = None,
        meter: MemoryMeter | None = None,
    ) -> None:
        self.config = config
        self.controller = BudgetController(
            config.adapt if config is not None else AdaptConfig(policy="budget"),
            config.budget.memory_bytes if config is not None else None,
        )
        self.probe_data = probe_data
        self.has_validation = has_validation
        self.meter = meter
        self.active = False
        self.decisions: list[dict[str, Any]] = []
        # this process only
        self._norm_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._summary: dict[str, Any] = {}

    # the controller's state, by its old names
    @property
    def fitted(self) -> bool:
        return self.controller.state.fitted

    @property
    def memory(self) -> MemoryModel | None:
        return self.controller.state.memory

    @property
    def probes(self) -> list[Probe]:
        return self.controller.state.probes

    # -- applying the controller's decisions -----------------------------------------------
    def _act(self, state: TrainState, outcome: BudgetDecision | None) -> None:
        """Apply ``outcome``'s settings to the loop, and log it."""
        if outcome is None:
            return
        new = outcome.settings
        if new is not None:
            state.batch_size, state.micro_batch_size = new.batch_size, new.micro_batch_size
            if new.lr != state.base_lr:
                state.base_lr = new.lr  # the loop sets the optimizer's rate from it next epoch
            if self.controller.chunks_evaluation:
                # evaluation runs in chunks of the micro-batch: it fits where training does
                state.eval_micro_batch_size = state.micro_batch_size
        if outcome.level is not None:
            log.log(outcome.level, "%s", outcome.decision.reason)
        if not outcome.logged:
            return
        for row in outcome.rows(state.step):
            self.decisions.append(row)
            if state.run is not None:
                state.run.log("decisions.csv", DECISIONS_COLUMNS).append(row)
        decision = outcome.decision
        for change in decision.changes:
            log.info(
                "adapt (%s): %s %s -> %s: %s",
                decision.policy,
                change.parameter,
                change.old,
                change.new,
                change.reason,
            )

    def _record_summary(self, state: TrainState) -> None:
        meter, ctl = self.meter, self.controller
        source = getattr(meter, "source", None)
        self._summary = {
            "policy": ctl.cfg.policy,
            "budget_bytes": ctl.budget_bytes,
            "memory_source": source,
            "memory_definition": MEMORY_DEFINITION.get(str(source)),
            "baseline_rss_bytes": getattr(meter, "baseline_rss_bytes", None),
            **ctl.summary(state.micro_batch_size),
            "micro_batch_size": state.micro_batch_size,
            "batch_size": state.batch_size,
            "accum_steps": state.accum_steps,
            "base_lr": state.base_lr,
        }

    # -- fit start -------------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        self.active = True
        if self.config is None:  # added by hand: the run's settings, at least policy budget
            adapt = state.config.adapt
            if adapt.policy == "none":
                adapt = adapt.model_copy(update={"policy": "budget"})
            budget = state.config.budget.memory_bytes
            self.controller = BudgetController(adapt, budget, self.controller.state)
        ctl = self.controller
        ctl.require_validation(self.has_validation)
        if self.meter is None:
            self.meter = make_meter(state.device)
        self.meter.start(_resident_tensor_bytes(state.model, state.optimizer))
        ctl.device_total_bytes = self.meter.capacity_bytes()
        resumed = bool(state.history)
        if resumed and state.run is not None:
            done = len(state.history)
            state.run.truncate_log(
                "adapt.csv", lambda r: r.get("epoch", "") != "" and int(r["epoch"]) <= done
            )
        if ctl.budget_bytes is not None:
            state.eval_micro_batch_size = state.micro_batch_size
            if not ctl.state.fitted:
                self._fit_budget(state)
            else:
                self._act(state, ctl.resumed(_settings(state), epoch=len(state.history)))
        self.meter.reset_peak()
        self._record_summary(state)

    def _fit_budget(self, state: TrainState) -> None:
        if self.probe_data is None:
            raise EdgeTrainError(
                "budget.memory needs training samples to probe the memory per micro-batch: "
                "pass probe_data to AdaptiveCallback (adapt_callbacks(config, train_data))"
            )
        dtype = next(state.model.parameters()).dtype
        batch = probe_batch(self.probe_data, state.batch_size, state.collate_fn)
        batch = state.task.to_device(batch, state.device, dtype)
        try:
            outcome = self._fit_and_verify(state, batch)
        finally:
            del batch
        self._act(state, outcome)

    def _fit_and_verify(self, state: TrainState, batch: Any) -> BudgetDecision:
        """Probe, then let the controller choose, measuring whole logical batches."""
        return self.controller.fit_budget(
            self._probe(state, batch),
            _settings(state),
            epoch=len(state.history),
            measure=lambda micro: self._measure_logical_batch(state, batch, micro),
        )

    def _probe(self, state: TrainState, batch: Any) -> BudgetFit:
        """Probe steps before training: the memory model (see :mod:`edgetrain.adapt.probe`)."""
        ctl = self.controller
        budget, min_micro = ctl.require_budget(), ctl.min_micro(state.batch_size)
        try:
            return fit_memory_model(
                state.model,
                state.optimizer,
                state.task,
                batch,
                meter=self.meter,
                limit_bytes=ctl.limit_bytes,
                start=min_micro,
                autocast=lambda: autocast(state.config.precision, state.device),
            )
        except torch.OutOfMemoryError as exc:
            raise EdgeTrainError(
                f"budget.memory {format_bytes(budget)}: a step at micro-batch {min_micro} runs "
                f"out of device memory ({exc})"
            ) from exc

    def _measure_logical_batch(self, state: TrainState, batch: Any, micro: int) -> int | None:
        """The peak of one whole logical batch at ``micro``; -1 if it ran out of memory."""
        static = self.controller.state.static
        if self.meter is None or static is None:
            raise RuntimeError("a logical batch is measured after the meter and the probes")
        try:
            probe = measure_logical_batch(
                state.model,
                state.optimizer,
                state.task,
                batch,
                micro,
                static=static,
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

    # -- inside epochs ---------------------------------------------------------------------
    def on_epoch_start(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        # the peak since the last epoch ended: checkpoint writes and other work
        self.controller.epoch_started(state.epoch + 1, self.meter.peak_bytes())
        self.meter.reset_peak()

    def on_batch_start(self, state: TrainState) -> None:
        if not self.active or not self.controller.cfg.oom_recovery:
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
        if not self.active or self.meter is None or self.controller.budget_bytes is None:
            return
        peak = self.meter.peak_bytes()  # reading /proc/self/status: tens of microseconds
        outcome = self.controller.step_measured(
            _settings(state), epoch=state.epoch + 1, peak_bytes=peak
        )
        if outcome is None:
            return
        self._act(state, outcome)
        self.meter.reset_peak()  # measure the new micro-batch from here
        self._record_summary(state)

    def on_oom(self, state: TrainState, error: BaseException) -> bool:
        if not self.active or not self.controller.cfg.oom_recovery:
            return False
        in_step = state.in_optimizer_step or _in_optimizer_step(error)
        if not in_step:
            with torch.no_grad():
                for buf, saved in self._norm_buffers:
                    buf.copy_(saved)
        outcome = self.controller.out_of_memory(
            _settings(state), epoch=state.epoch + 1, in_optimizer_step=in_step
        )
        self._act(state, outcome)
        if not outcome.changed:
            return False
        if self.meter is not None:
            self.meter.reset_peak()
        self._record_summary(state)
        return True

    def summary(self) -> dict[str, Any]:
        return {"adapt": self._summary} if self._summary else {}

    # -- epoch end -------------------------------------------------------------------------
    def on_epoch_end(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        ctl, row = self.controller, state.epoch_row
        peak = self.meter.peak_bytes()  # training steps since the window opened + evaluation
        val_accs = tuple(r.get("val_acc") for r in state.history)
        outcome = ctl.epoch_ended(
            _settings(state),
            epoch=state.epoch + 1,
            peak_bytes=peak,
            train_size=state.train_size,
            configured_batch_size=state.config.batch_size,
            val_accs=(*val_accs, row.get("val_acc")),
        )
        self._act(state, outcome)
        if state.run is not None:
            micro = row.get("micro_batch_size")
            state.run.log("adapt.csv", ADAPT_COLUMNS).append(
                {
                    "epoch": state.epoch + 1,
                    "step": state.step,
                    "micro_batch_size": micro,
                    "accum_steps": row.get("accum_steps"),
                    "budget_bytes": ctl.budget_bytes,
                    "predicted_peak_bytes": ctl.predict_bytes(int(micro)) if micro else None,
                    "train_peak_bytes": ctl.train_peak_bytes,
                    "peak_bytes": peak,
                    "baseline_rss_bytes": getattr(self.meter, "baseline_rss_bytes", None),
                    "source": self.meter.source,
                }
            )
        self._record_summary(state)
        self.meter.reset_peak()  # from here: checkpoint and the other callbacks

    def on_fit_end(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        self.controller.fit_ended(self.meter.peak_bytes())
        self._record_summary(state)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.controller.state.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.state = BudgetState.from_dict(state)
