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

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

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
from edgetrain.adapt.interface import BudgetUnmetError
from edgetrain.adapt.planner import (
    LeverCost,
    Levers,
    Plan,
    PlanError,
    PlanOption,
    make_plan,
    make_plan_preferring,
    shifted,
    within,
)
from edgetrain.adapt.probe import GradFreeing
from edgetrain.adapt.state import to_plain
from edgetrain.config import AdaptConfig, TrainConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.memory import unique_bytes
from edgetrain.train.callbacks import Callback, Forward, TrainState
from edgetrain.train.features.prune import PruneCallback
from edgetrain.train.optim import autocast
from edgetrain.train.rundir import DECISIONS_COLUMNS
from edgetrain.units import format_bytes

if TYPE_CHECKING:
    from edgetrain.train.features.optim_backward import OptimizerInBackward

__all__ = [
    "ADAPT_COLUMNS",
    "AdaptiveCallback",
    "PruneCallback",
    "adapt_callbacks",
    "fixed_levers",
    "plan_candidates",
    "plan_rows",
]

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

#: before training, how many times a planned lever set that the controller's own probes
#: measure above the budget is replaced by another (each time that set's cost is raised)
MAX_UNMET_REPLANS = 4

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


def fixed_levers(cfg: TrainConfig) -> dict[str, Any]:
    """The memory levers ``cfg`` sets itself (a plan keeps them as they are)."""
    fixed: dict[str, Any] = {}
    if cfg.activations != "off":
        fixed["activations"] = cfg.activations
    if cfg.recompute != "none":
        fixed["recompute"] = cfg.recompute if isinstance(cfg.recompute, str) else "list"
    if cfg.optimizer_in_backward:
        fixed["optimizer_in_backward"] = True
    if cfg.optimizer_state != "fp32":
        fixed["state"] = cfg.optimizer_state
    return fixed


def plan_candidates(cfg: TrainConfig, model: nn.Module, step_in_backward_ok: bool) -> list[Levers]:
    """The lever sets a plan for ``cfg`` considers (none with ``budget.levers:
    micro_batch``); ``step_in_backward_ok``: the optimizer step may move into backward."""
    from edgetrain.adapt.levers import SPARSE_CANDIDATES, candidate_levers

    if cfg.budget.levers != "auto":
        return []
    fixed = fixed_levers(cfg)
    lossy = cfg.budget.lossy == "allow"
    # a static sparse update: only for fine-tuning, only where the config sets none itself
    finetune = cfg.init_from is not None and cfg.sparse_update.scheme == "full"
    return candidate_levers(
        model=model,
        activations=fixed.get("activations"),
        recompute=fixed.get("recompute"),
        optimizer_in_backward=fixed.get("optimizer_in_backward"),
        state=fixed.get("state"),
        # low-precision state steps before any other step hook: not with a sparse update's
        low_state=lossy and cfg.sparse_update.scheme == "full",
        lossy=lossy,
        step_in_backward_ok=step_in_backward_ok,
        sparse=SPARSE_CANDIDATES if lossy and finetune else (),
    )


def plan_rows(plan: Plan, *, epoch: int, step: int, why: str = "") -> list[dict[str, Any]]:
    """decisions.csv rows of a plan: one per option (chosen 'plan' for the one taken)."""
    return [_plan_row(o, plan, epoch=epoch, step=step, why=why) for o in plan.options]


def _plan_row(
    option: PlanOption, plan: Plan, *, epoch: int, step: int, why: str = ""
) -> dict[str, Any]:
    """A decisions.csv row for one option of a plan."""
    taken = option.levers == plan.levers
    if option.fits:
        time = f"{option.time_ratio:.2f}x" if math.isfinite(option.time_ratio) else "n/a"
        if not option.time_measured:
            time += " (time not probed)"
        text = (
            f"micro-batch {option.micro_batch_size} x {option.accum_steps}, predicted peak "
            f"{format_bytes(option.predicted_peak_bytes)} of {format_bytes(plan.budget_bytes)}, "
            f"saves {format_bytes(option.saved_bytes)}, time {time}"
        )
        if not option.saves:
            text += " (saves under 2% at its micro-batch: not taken)"
    else:
        text = "does not fit"
    reason = f"{'chosen' if taken else 'option'}: {option.levers.describe()}: {text}"
    return {
        "epoch": epoch,
        "step": step,
        "chosen": "plan" if taken else "option",
        "parameter": "levers",
        "old": "",
        "new": option.levers.describe(),
        "reason": f"{why}; {reason}" if why else reason,
    }


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
        self.plan: Plan | None = None  # the plan made before training (this process)
        # this process only
        self._norm_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._summary: dict[str, Any] = {}
        self._levers: Any = None  # the LeverHandle of the levers this callback applied
        self._step_in_backward: OptimizerInBackward | None = None  # when planned
        # its logical batches (stepped in backward, folded, plain) over every plan so far
        self._steps_in_backward: dict[str, int] = {}
        self._fits: dict[Levers, BudgetFit] = {}
        self._blocks: list[str] = []  # the blocks the planned levers recompute
        self._rows: dict[str, torch.Tensor] | None = None  # a sparse plan's rows
        self._rows_share: float | None = None  # ... and its share
        #: a planned low-precision state's rounding generators while its levers are off
        self._state_rng: dict[str, Any] | None = None

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
        levers = ctl.state.levers
        if levers is not None:
            self._summary["plan"] = {
                "levers": to_plain(levers),
                "describe": levers.describe(),
                "recomputed_blocks": self._blocks,
                "replans": ctl.state.replans,
                "options": [to_plain(o) for o in self.plan.options] if self.plan else None,
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
        from edgetrain.adapt.levers import auto_min_micro

        levers = ctl.state.levers  # resumed: a sparse plan's batch-norm is frozen
        frozen = levers is not None and levers.frozen_norm
        ctl.resolve_min_micro(1 if frozen else auto_min_micro(state.model))
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
                if ctl.state.levers is not None:
                    self._apply(state, ctl.state.levers)
                self._act(state, ctl.resumed(_settings(state), epoch=len(state.history)))
        self.meter.reset_peak()
        self._record_summary(state)

    def _fit_budget(self, state: TrainState) -> None:
        batch = self._samples(state, state.batch_size)
        try:
            self._plan(state, batch)
            tries = 0
            while True:
                try:
                    outcome = self._fit_and_verify(state, batch)
                    break
                except BudgetUnmetError as unmet:
                    # the planned set measured more here than in the planner's probes:
                    # another set (each re-plan raises the one that failed)
                    tries += 1
                    if tries > MAX_UNMET_REPLANS or not self._replan_unmet(state, unmet):
                        raise
        finally:
            del batch
        self._act(state, outcome)

    # -- the memory planner ----------------------------------------------------------------
    def _fixed(self, cfg: TrainConfig) -> dict[str, Any]:
        return fixed_levers(cfg)

    def _candidates(self, state: TrainState) -> list[Levers]:
        from edgetrain.train.features.optim_backward import refusal

        return plan_candidates(state.config, state.model, refusal(state) is None)

    def _plan(self, state: TrainState, batch: Any) -> None:
        """Measure each lever set's cost, choose the fastest that fits, apply it, log it
        (see :mod:`edgetrain.adapt.planner`)."""
        candidates = self._candidates(state)
        if len(candidates) <= 1:
            return
        ctl = self.controller
        budget, min_micro = ctl.require_budget(), ctl.min_micro(state.batch_size)
        plan_args = {
            "budget_bytes": budget,
            "batch_size": state.task.size(batch),
            "limit_frac": ctl.limit_frac,
        }

        try:
            # the set with the fewest levers first: if it runs the whole batch, nothing is faster
            costs = self._measure_costs(state, batch, candidates[-1:])
            try:
                plan = make_plan(
                    costs, **plan_args, min_micro=ctl.cfg.min_micro, norm_min_micro=min_micro
                )
                whole = plan.micro_batch_size >= state.batch_size
            except PlanError:
                whole = False
            if not whole:
                costs = self._measure_costs(state, batch, candidates[:-1]) + costs
        except torch.OutOfMemoryError as exc:
            raise EdgeTrainError(
                f"budget.memory {format_bytes(budget)}: a probe step at micro-batch "
                f"{min_micro} runs out of device memory ({exc})"
            ) from exc
        self._choose(state, costs, preferred_min=min_micro)

    def _choose(
        self, state: TrainState, costs: list[LeverCost], *, preferred_min: int, why: str = ""
    ) -> None:
        """Plan on ``costs``, apply the chosen set and log the plan.

        Raises:
            PlanError: no set fits (exit 2, naming the smallest budget a plan reaches).
        """
        ctl = self.controller
        budget = ctl.require_budget()
        try:
            plan, held = make_plan_preferring(
                costs,
                budget_bytes=budget,
                batch_size=state.batch_size,
                limit_frac=ctl.limit_frac,
                preferred_min=preferred_min,
                min_micro=ctl.cfg.min_micro,
            )
            if plan.levers.frozen_norm:  # running statistics: any micro-batch computes alike
                ctl.resolve_min_micro(1)
            else:
                ctl.resolve_min_micro(preferred_min)
                if not held:
                    ctl.relax_min_micro(state.batch_size, "no memory plan fits")
        except PlanError as exc:  # exit 2, naming the smallest budget a plan reaches
            static = next(iter(self._fits.values())).static
            if budget < static.total_bytes:
                raise EdgeTrainError(
                    f"{ctl.static_message(static)}; the smallest budget any plan reaches is "
                    f"{format_bytes(exc.smallest_bytes)} ({exc.smallest_bytes} bytes)"
                ) from exc
            raise
        self.plan = plan
        ctl.state.levers, ctl.state.plan_costs = plan.levers, costs
        self._apply(state, plan.levers)
        self._log_plan(state, plan, epoch=len(state.history), why=why)

    def _preferred_min(self, state: TrainState) -> int:
        """The smallest micro-batch a plan prefers: with ``min_micro_batch_size: auto``
        16 for batch-norm models (see ``docs/design.md``, "Memory planner"), else the
        configured minimum."""
        from edgetrain.adapt.levers import auto_min_micro

        cfg = self.controller.cfg
        if cfg.min_micro_batch_size == "auto":
            return min(auto_min_micro(state.model), state.batch_size)
        return cfg.min_micro

    def _replan_unmet(self, state: TrainState, unmet: BudgetUnmetError) -> bool:
        """The controller's probes of the planned set measured more than the budget at its
        smallest micro-batch, where the planner's probes had predicted it within: plan
        again with that set's memory raised by the difference (the others keep theirs:
        each is measured again when chosen). True if another set was taken and applied."""
        ctl = self.controller
        levers, costs = ctl.state.levers, ctl.state.plan_costs
        current = next((c for c in costs or () if c.levers == levers), None)
        if levers is None or current is None:
            return False
        drift = unmet.needed_bytes - current.predict_bytes(unmet.micro_batch_size, state.batch_size)
        if drift <= 0:
            return False
        # the sets that add levers to it are raised alike (what the probes missed for its
        # levers is there with more levers too); the others are measured when chosen
        corrected = [
            c.raised(drift) if c.levers == levers or within(levers, c.levers) else c
            for c in costs or ()
        ]
        why = (
            f"re-plan: {levers.describe()} measured {format_bytes(unmet.needed_bytes)} at "
            f"micro-batch {unmet.micro_batch_size} before training, "
            f"{format_bytes(drift)} above its plan"
        )
        try:
            self._choose(state, corrected, preferred_min=self._preferred_min(state), why=why)
        except PlanError:
            ctl.state.plan_costs = corrected
            return False
        return ctl.state.levers != levers

    def _measure_costs(self, state: TrainState, batch: Any, sets: list[Levers]) -> list[LeverCost]:
        """Probe ``sets`` on ``batch`` (see :func:`edgetrain.adapt.levers.measure_lever_costs`)."""
        from edgetrain.adapt.levers import measure_lever_costs

        ctl = self.controller
        measured = measure_lever_costs(
            state.model,
            state.optimizer,
            state.task,
            batch,
            sets,
            meter=self.meter,
            limit_bytes=ctl.limit_bytes,
            start=min(ctl.cfg.min_micro, state.batch_size),  # below an automatic minimum too
            autocast=lambda: autocast(state.config.precision, state.device),
            seed=state.config.seed,
            skip=set(self._fixed(state.config)) - {"activations"},
            known=self._fits,
        )
        self._fits.update(measured.fits)
        return list(measured.costs)

    def _apply(self, state: TrainState, levers: Levers) -> None:
        """Apply ``levers`` (those the config does not already apply)."""
        from edgetrain.adapt.levers import apply_levers
        from edgetrain.train.features.optim_backward import OptimizerInBackward

        self._remove_levers(state)
        skip = set(self._fixed(state.config))
        # a sparse share keeps the rows chosen before training (resumed, or re-applied
        # after a re-plan's probes): the trained weights would select others
        rows = self._rows if self._rows_share == levers.sparse else None
        self._levers = apply_levers(
            state.model,
            levers,
            seed=state.config.seed,
            skip=skip,
            task=state.task,
            example=lambda: self._samples(state, 2),
            optimizer=state.optimizer,
            rows=rows if levers.sparse < 1 else None,
        )
        self._rows, self._rows_share = self._levers.rows, levers.sparse
        self._blocks = self._levers.blocks
        if self._levers.low_state is not None and self._state_rng:
            # the rounding continues its draws (re-applied after a re-plan's probes, or
            # resumed from a checkpoint) instead of repeating them from the seed
            self._levers.low_state.load_state_dict(self._state_rng)
        if levers.optimizer_in_backward and "optimizer_in_backward" not in skip:
            self._step_in_backward = OptimizerInBackward()
            self._step_in_backward.on_fit_start(state)

    def _samples(self, state: TrainState, size: int) -> Any:
        """The first ``size`` training samples as one batch on the device (probes; two for
        a sparse lever's selection)."""
        if self.probe_data is None:
            raise EdgeTrainError(
                "budget.memory needs training samples to probe the memory per micro-batch: "
                "pass probe_data to AdaptiveCallback (adapt_callbacks(config, train_data))"
            )
        dtype = next(state.model.parameters()).dtype
        batch = probe_batch(self.probe_data, size, state.collate_fn)
        return state.task.to_device(batch, state.device, dtype)

    def _remove_levers(self, state: TrainState) -> None:
        if self._levers is not None:
            if self._levers.low_state is not None:
                self._state_rng = self._levers.low_state.state_dict()
            self._levers.remove()
            self._levers = None
        if self._step_in_backward is not None:
            self._steps_in_backward = self._steps_counted()
            self._step_in_backward.on_fit_end(state)
            self._step_in_backward = None

    def _steps_counted(self) -> dict[str, int]:
        """Logical batches the planned optimizer step in backward saw (all plans)."""
        counts = dict(self._steps_in_backward)
        if self._step_in_backward is not None:
            for key, value in self._step_in_backward.state_dict().items():
                counts[key] = counts.get(key, 0) + int(value)
        return counts

    def _log_plan(self, state: TrainState, plan: Plan, *, epoch: int, why: str = "") -> None:
        """decisions.csv: one row per lever set considered (chosen = 'plan' for the one
        taken, 'option' for the others)."""
        for row in plan_rows(plan, epoch=epoch, step=state.step, why=why):
            self.decisions.append(row)
            if state.run is not None:
                state.run.log("decisions.csv", DECISIONS_COLUMNS).append(row)
        log.info("memory plan: %s", plan.describe())

    def wrap_forward(self, forward: Forward) -> Forward:
        def planned(*args: Any, **kwargs: Any) -> Any:
            handle = self._levers
            if handle is None or handle.codec is None or not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            with handle.codec:
                return forward(*args, **kwargs)

        return planned

    def _replan(self, state: TrainState, peak: int) -> bool:
        """Measured memory passed the budget: plan again on costs raised by what the
        probes did not see; True if other levers were taken (and applied)."""
        ctl = self.controller
        levers, costs = ctl.state.levers, ctl.state.plan_costs
        if levers is None or not costs or ctl.budget_bytes is None:
            return False
        current = next((c for c in costs if c.levers == levers), None)
        if current is None:
            return False
        micro = state.micro_batch_size
        drift = peak - current.predict_bytes(micro, state.batch_size)
        corrected = shifted(costs, levers, drift)
        probed = {c.levers for c in costs}
        if self.probe_data is not None and any(lv not in probed for lv in self._candidates(state)):
            # sets not probed before training (the first fitted the whole batch): probe every
            # set again now, so that all of them measure what the first probes missed
            self._remove_levers(state)
            self._fits = {}
            batch = self._samples(state, state.batch_size)
            try:
                corrected = self._measure_costs(state, batch, self._candidates(state))
            finally:
                del batch
                self._apply(state, levers)
        # the batch-norm preference as before training (a sparse plan had set the minimum
        # to 1 for its frozen statistics; a set that trains them needs it back)
        preferred = self._preferred_min(state)
        try:
            plan, held = make_plan_preferring(
                corrected,
                budget_bytes=ctl.budget_bytes,
                batch_size=state.batch_size,
                limit_frac=ctl.limit_frac,
                preferred_min=preferred,
                min_micro=ctl.cfg.min_micro,
            )
        except EdgeTrainError:
            return False  # nothing fits: the controller shrinks as it can
        ctl.state.plan_costs = corrected
        if plan.levers == levers:
            return False
        if plan.levers.frozen_norm:
            ctl.resolve_min_micro(1)
        else:
            ctl.resolve_min_micro(preferred)
            if not held:
                ctl.relax_min_micro(state.batch_size, "no memory plan fits")
        chosen = next(c for c in corrected if c.levers == plan.levers)
        fit = self._fits.get(plan.levers)
        ctl.adopt_levers(
            plan.levers,
            chosen.memory,
            ceiling=chosen.ceiling,
            probes=list(fit.probes) if fit is not None else None,
        )
        self._apply(state, plan.levers)
        self._log_plan(
            state,
            plan,
            epoch=state.epoch + 1,
            why=f"re-plan: measured {format_bytes(peak)} at micro-batch {micro}, "
            f"{format_bytes(max(0, drift))} above the plan",
        )
        state.micro_batch_size = plan.micro_batch_size
        if ctl.chunks_evaluation:
            state.eval_micro_batch_size = state.micro_batch_size
        return True

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
                context=self._codec_context(state),
                free_grads=self._frees_grads(state),
            )
        except torch.OutOfMemoryError as exc:
            raise EdgeTrainError(
                f"budget.memory {format_bytes(budget)}: a step at micro-batch {min_micro} runs "
                f"out of device memory ({exc})"
            ) from exc

    def _codec_context(self, state: TrainState) -> Any:
        """What wraps a probe's forward: the planned codec, or the configured one (whose
        callback wraps only training's forward)."""
        if self._levers is not None and self._levers.codec is not None:
            codec = self._levers.codec
            return lambda: codec
        if state.config.activations not in ("off", "none"):
            from edgetrain.memory import compress_activations

            codec = compress_activations(
                state.model, state.config.activations, seed=state.config.seed
            )
            return lambda: codec
        return contextlib.nullcontext

    def _frees_grads(self, state: TrainState) -> GradFreeing:
        """Which gradients training frees as they are ready: none, at the whole batch
        (the step in backward), or at every micro-batch (SGD's momentum folds them)."""
        from edgetrain.memory.fold import fold_refusal

        levers = self.controller.state.levers
        if levers is None or not levers.optimizer_in_backward:
            return False
        return "accumulating" if fold_refusal(state.optimizer) is None else True

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
                context=self._codec_context(state),
                free_grads=self._frees_grads(state),
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
        if self._step_in_backward is not None:
            self._step_in_backward.on_batch_start(state)
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
        if self._step_in_backward is not None:
            self._step_in_backward.on_batch_end(state)
        if not self.active or self.meter is None or self.controller.budget_bytes is None:
            return
        peak = self.meter.peak_bytes()  # reading /proc/self/status: tens of microseconds
        outcome = self.controller.step_measured(
            _settings(state), epoch=state.epoch + 1, peak_bytes=peak
        )
        if outcome is None:
            return
        if peak is not None and outcome.changed and self._replan(state, peak):
            self.meter.reset_peak()
            self._record_summary(state)
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
        if not self._summary:
            return {}
        steps = self._steps_counted()
        if steps and "plan" in self._summary:  # under the plan: how each batch was stepped
            return {"adapt": {**self._summary, "plan": {**self._summary["plan"], **steps}}}
        return {"adapt": self._summary}

    # -- epoch end -------------------------------------------------------------------------
    def on_epoch_end(self, state: TrainState) -> None:
        if not self.active or self.meter is None:
            return
        ctl, row = self.controller, state.epoch_row
        codec = self._levers.codec if self._levers is not None else None
        if codec is not None:
            row["activation_bytes"] = codec.stats.peak_stored_bytes
            codec.reset_peak()
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
        self._remove_levers(state)
        if not self.active or self.meter is None:
            return
        self.controller.fit_ended(self.meter.peak_bytes())
        self._record_summary(state)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = self.controller.state.to_dict()
        if self._rows is not None:
            # a sparse plan's rows, chosen before training (the weights differ on resume)
            out["sparse_rows"] = {k: v.detach().cpu() for k, v in self._rows.items()}
        handle = self._levers
        rng = handle.low_state.state_dict() if handle and handle.low_state else self._state_rng
        if rng:  # a planned low-precision state's rounding generators
            out["state_rng"] = rng
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._rows = state.pop("sparse_rows", None)
        self._state_rng = state.pop("state_rng", None)
        self.controller.state = BudgetState.from_dict(state)
        levers = self.controller.state.levers
        self._rows_share = levers.sparse if levers is not None and self._rows else None
