"""The budget controller: every decision of the adaptive callback, from numbers alone.

:class:`BudgetController` imports no torch and needs no model. The training callback
(:class:`edgetrain.train.features.budget.AdaptiveCallback`) measures (probes, meters,
out-of-memory errors, the epoch's metrics), feeds the numbers in, and applies the
:class:`BudgetDecision` that comes out to the loop's state::

    ctl = BudgetController(config.adapt, budget_bytes=30 * 2**20)
    out = ctl.fit_budget(fit, Settings(batch_size=32, micro_batch_size=32, lr=0.1),
                         epoch=0, measure=lambda micro: peak_of_a_logical_batch(micro))
    out.settings.micro_batch_size  # what to train at
    out = ctl.step_measured(out.settings, epoch=1, peak_bytes=31 * 2**20)  # None: within

What is checkpointed is :attr:`BudgetController.state` (a :class:`BudgetState`).
"""

from __future__ import annotations

import logging
from typing import Any

from edgetrain.adapt.interface import (
    BudgetDecision,
    BudgetUnmetError,
    ControllerError,
    Measure,
    Settings,
)
from edgetrain.adapt.measurements import BudgetFit, Probe, StaticBytes
from edgetrain.adapt.memory_model import MemoryModel
from edgetrain.adapt.planner import Levers
from edgetrain.adapt.policies import (
    BATCH,
    LR,
    MICRO,
    Decision,
    EpochObservation,
    decide,
    fit_to_budget,
    keep_unbatched_overrun,
    shrink_after_oom,
    shrink_after_overrun,
)
from edgetrain.adapt.state import BudgetState, to_plain
from edgetrain.config.adapt import AdaptConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.units import format_bytes

log = logging.getLogger(__name__)

__all__ = [
    "SHRINK_EFFECT_FRAC",
    "VERIFY_TRIES",
    "BudgetController",
    "BudgetDecision",
    "ControllerError",
    "Measure",
    "Settings",
]

# whole logical batches measured before training to confirm the chosen micro-batch
VERIFY_TRIES = 3
# A shrink from m to n samples that lowers the measured peak by less than this share of
# what the memory model expects m - n samples to hold did not free the micro-batch's
# memory: what passes the limit is someone else's (the runtime's, noise in the resident
# size), and shrinking further would only slow training.
SHRINK_EFFECT_FRAC = 0.25


def _measured(micro: int, measured: int) -> str:
    """How a whole-batch check reads in decisions.csv (``measured`` -1: out of memory)."""
    shown = "ran out of memory" if measured < 0 else f"measured {format_bytes(measured)}"
    return f"a logical batch at {micro} {shown}"


def _max(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return b if a is None else max(a, b)


class BudgetController:
    """Keeps training inside ``budget_bytes`` and applies ``cfg.policy`` (module doc).

    Args:
        cfg: the ``adapt`` settings.
        budget_bytes: ``budget.memory`` in bytes; None: out-of-memory recovery and the
            epoch policy only.
        state: the checkpointed state to go on from (default: a fresh one).

    ``device_total_bytes`` (the device's memory, for the edgetrain policy's score without
    a budget) may be set by the caller once it knows it.
    """

    def __init__(
        self, cfg: AdaptConfig, budget_bytes: int | None, state: BudgetState | None = None
    ) -> None:
        self.cfg = cfg
        self.budget_bytes = budget_bytes
        self.state = state if state is not None else BudgetState()
        self.device_total_bytes: int | None = None
        # this process only
        self._auto_min_micro = 1  # min_micro_batch_size: auto, by the model
        self._epoch_open = False
        self._train_peak: int | None = None  # the highest step peak of this epoch
        self._stuck_epoch: int | None = None  # the epoch of the last stuck overrun logged
        # the last overrun that shrank the micro-batch: (micro-batch, peak), to see whether
        # shrinking lowered the peak at all
        self._last_shrink: tuple[int, int] | None = None
        # the peak reached by memory that shrinking did not lower (None: none seen)
        self._unbatched_peak: int | None = None

    # -- what the caller reads -------------------------------------------------------------
    @property
    def limit_frac(self) -> float:
        """The share of the budget the micro-batch is fitted to."""
        if self.cfg.policy == "edgetrain":
            return min(1 - self.cfg.margin, self.cfg.memory_high_frac)
        return 1 - self.cfg.margin

    @property
    def limit_bytes(self) -> float:
        return self.limit_frac * self.require_budget()

    @property
    def chunks_evaluation(self) -> bool:
        """Whether evaluation should run in chunks of the micro-batch (where training fits)."""
        return self.budget_bytes is not None or self.state.oom_retries > 0

    @property
    def train_peak_bytes(self) -> int | None:
        """The highest peak measured after a training step in this (or the last) epoch."""
        return self._train_peak

    def min_micro(self, batch_size: int) -> int:
        """The smallest micro-batch the budget fit and the planner may choose for
        ``batch_size`` (shrinking after an overrun or out-of-memory error may go below an
        automatic minimum: see :meth:`resolve_min_micro`)."""
        return min(max(self.cfg.min_micro, self._auto_min_micro), batch_size)

    def resolve_min_micro(self, auto_value: int) -> None:
        """With ``min_micro_batch_size: auto``, the fit and the plan start from
        ``auto_value`` (by the model: :func:`edgetrain.adapt.levers.auto_min_micro`); a
        number given stays. The automatic minimum is a preference: a budget that no
        micro-batch of that size fits drops it (:meth:`relax_min_micro`)."""
        if self.cfg.min_micro_batch_size == "auto":
            self._auto_min_micro = max(1, int(auto_value))

    def relax_min_micro(self, batch_size: int, why: str) -> bool:
        """Drop the automatic minimum (logged); False if there was none to drop."""
        if self.min_micro(batch_size) <= self.cfg.min_micro:
            return False
        log.warning(
            "%s at micro-batch %d (the automatic minimum for batch-norm models): trying "
            "smaller micro-batches, whose batch statistics are noisier (set "
            "adapt.min_micro_batch_size to choose)",
            why,
            self._auto_min_micro,
        )
        self._auto_min_micro = 1
        return True

    def predict_bytes(self, micro_batch_size: int) -> int | None:
        """The memory model's peak at ``micro_batch_size`` (None: no model)."""
        memory = self.state.memory
        return memory.predict_bytes(micro_batch_size) if memory is not None else None

    def summary(self, micro_batch_size: int) -> dict[str, Any]:
        """The controller's part of summary.json's ``adapt``."""
        state, budget = self.state, self.budget_bytes
        within = None
        if budget is not None and state.peak_bytes is not None:
            within = state.peak_bytes <= budget
        return {
            "measured_peak_bytes": state.peak_bytes,
            "within_budget": within,
            "probe_peak_bytes": state.probe_peak_bytes,
            "budget_violations": state.violations,
            "oom_retries": state.oom_retries,
            "outside_epochs_peak_bytes": state.outside_peak_bytes,
            "predicted_peak_bytes": self.predict_bytes(micro_batch_size),
            "memory_model": to_plain(state.memory),
            "static": to_plain(state.static),
            "probes": to_plain(state.probes),
            "calibration": to_plain(state.calibration),
        }

    # -- invariants ------------------------------------------------------------------------
    def require_budget(self) -> int:
        """The budget in bytes; raises :class:`ControllerError` without one."""
        if self.budget_bytes is None:
            raise ControllerError("the controller has no memory budget (budget.memory unset)")
        return self.budget_bytes

    def _memory(self) -> MemoryModel:
        if self.state.memory is None:
            raise ControllerError("the controller has no memory model yet: call fit_budget first")
        return self.state.memory

    def require_validation(self, has_validation: bool | None) -> None:
        """Raise if the policy decides from validation accuracy that will not exist."""
        if self.cfg.policy == "edgetrain" and has_validation is False:
            raise EdgeTrainError(
                "adapt.policy edgetrain decides from validation accuracy, but the run has no "
                "validation data; give it a validation split (split: [0.8, 0.1, 0.1]) or "
                "val_data, or use adapt.policy: budget"
            )

    # -- applying a decision ---------------------------------------------------------------
    def _settle(
        self, decision: Decision, epoch: int, settings: Settings, note: str = ""
    ) -> BudgetDecision:
        """``decision`` with the settings it leads to (the micro-batch within the batch)."""
        batch = int(decision.new(BATCH, settings.batch_size))
        micro = int(decision.new(MICRO, settings.micro_batch_size))
        lr = float(decision.new(LR, settings.lr))
        if lr != settings.lr:
            self.state.last_lr_change_epoch = epoch
        return BudgetDecision(decision, epoch, Settings(batch, max(1, min(micro, batch)), lr), note)

    def static_message(self, static: StaticBytes) -> str:
        """The error for a budget below the static bytes, naming both."""
        budget = self.require_budget()
        return (
            f"budget.memory {format_bytes(budget)} ({budget} bytes) is below the static "
            f"bytes {format_bytes(static.total_bytes)} ({static.total_bytes} bytes) the "
            f"model needs before any sample: parameters {format_bytes(static.param_bytes)}, "
            f"buffers {format_bytes(static.buffer_bytes)}, gradients "
            f"{format_bytes(static.grad_bytes)}, optimizer state "
            f"{format_bytes(static.optimizer_state_bytes)}"
        )

    def adopt_levers(
        self,
        levers: Levers,
        memory: MemoryModel,
        *,
        ceiling: int | None,
        probes: list[Probe] | None = None,
    ) -> None:
        """Train on with other levers (a re-plan): their memory model and ceiling replace
        the old ones, and the steps measured with the old levers no longer count."""
        state = self.state
        state.levers, state.memory, state.ceiling = levers, memory, ceiling
        state.points = []
        state.probes = list(probes or [])
        state.calibration, state.overhead_bytes = None, 0.0
        state.replans += 1
        self._last_shrink = None
        self._unbatched_peak = None

    def _refit(self) -> None:
        """Recalibrate on the steps measured in training (the probes' slope is kept)."""
        state = self.state
        if state.static is None or state.memory is None:
            return
        extra = state.overhead_bytes
        points = [(p.micro_batch_size, p.peak_bytes(state.static) + extra) for p in state.probes]
        single = state.memory.single_bytes
        state.memory = MemoryModel.envelope(
            points + state.points,
            state.memory.per_sample_bytes,
            static_floor=state.static.total_bytes,
        )
        if single is not None:  # micro-batch 1 measured apart: training's steps there raise it
            ones = [peak for micro, peak in state.points if micro == 1]
            state.memory = state.memory.with_single(max([single, *ones]))

    @property
    def _slope(self) -> float:
        memory = self.state.memory
        return memory.per_sample_bytes if memory is not None else 0.0

    def _lower_ceiling(self, micro: int) -> None:
        """``micro`` ran out of memory or passed the budget: never grow back to it."""
        ceiling = self.state.ceiling
        self.state.ceiling = micro if ceiling is None else min(ceiling, micro)

    def _did_not_lower(
        self, larger: int, larger_peak: int, smaller: int, smaller_peak: int
    ) -> bool:
        """Whether going from ``larger`` to ``smaller`` samples lowered the peak by less
        than :data:`SHRINK_EFFECT_FRAC` of what the model expects them to hold."""
        return larger_peak - smaller_peak < SHRINK_EFFECT_FRAC * self._expected_drop(
            larger, smaller
        )

    def _expected_drop(self, larger: int, smaller: int) -> float:
        """The bytes the memory model expects ``larger - smaller`` samples to hold."""
        return self._memory().per_sample_bytes * (larger - smaller)

    # -- before training -------------------------------------------------------------------
    def fit_budget(
        self, fit: BudgetFit, settings: Settings, *, epoch: int, measure: Measure
    ) -> BudgetDecision:
        """Take the probes' fit, check that the budget can hold a step, and choose the
        micro-batch, measured as a whole logical batch with ``measure`` (see
        :meth:`_verify`). ``epoch``: the epochs already trained.

        Raises:
            EdgeTrainError: the budget is below the static bytes.
            BudgetUnmetError: the budget is below the peak measured at the smallest
                micro-batch.
        """
        budget = self.require_budget()
        min_micro = self.min_micro(settings.batch_size)
        static = fit.static
        if budget < static.total_bytes:
            raise EdgeTrainError(self.static_message(static))
        needed = fit.memory.predict_bytes(min_micro)
        if needed > budget and self.relax_min_micro(settings.batch_size, "the budget is not met"):
            min_micro = self.min_micro(settings.batch_size)
            needed = fit.memory.predict_bytes(min_micro)
        if needed > budget:
            raise BudgetUnmetError(
                f"budget.memory {format_bytes(budget)} ({budget} bytes) is below the "
                f"{format_bytes(needed)} ({needed} bytes) measured for micro-batch {min_micro} "
                f"(static bytes {format_bytes(static.total_bytes)}, the rest runtime and "
                f"activations); raise it to at least "
                f"{format_bytes(needed / (1 - self.cfg.margin))}",
                needed_bytes=needed,
                micro_batch_size=min_micro,
            )
        state = self.state
        state.static, state.memory, state.ceiling = static, fit.memory, fit.ceiling
        state.probes = list(fit.probes)
        state.calibration = fit.calibration
        state.overhead_bytes = fit.overhead_bytes
        state.probe_peak_bytes = fit.probe_peak_bytes
        state.fitted = True
        sizes = ", ".join(str(p.micro_batch_size) for p in fit.probes)
        notes = [f"probed micro-batches {sizes}"]
        decision = self._verify(settings, min_micro, fit.verified or min_micro, measure, notes)
        return self._settle(decision, epoch, settings, note="; ".join(notes))

    def _verify(
        self, settings: Settings, min_micro: int, upper: int, measure: Measure, notes: list[str]
    ) -> Decision:
        """The model's choice, measured as a whole logical batch; above the limit, the next
        smaller choice is measured (up to :data:`VERIFY_TRIES` sizes in all).

        A smaller size that measures no less (see :data:`SHRINK_EFFECT_FRAC`) shows that
        what passes the limit is not the micro-batch's: the larger size is kept if it
        measured within the budget, and shrinking stops.
        """
        budget, limit = self.require_budget(), self.limit_bytes
        decision = self._budget_decision(settings, min_micro, upper)
        micro = int(decision.new(MICRO, settings.micro_batch_size))
        measured = measure(micro)
        for _ in range(VERIFY_TRIES - 1):
            if measured is None:  # the meter has no reading: the model's choice stands
                return decision
            notes.append(_measured(micro, measured))
            if 0 <= measured <= limit or micro <= min_micro:
                return decision
            smaller_decision = self._budget_decision(settings, min_micro, micro - 1)
            smaller = int(smaller_decision.new(MICRO, settings.micro_batch_size))
            again = measure(smaller)
            if (
                again is not None
                and measured >= 0
                and again >= 0
                and self._did_not_lower(micro, measured, smaller, again)
            ):
                notes.append(
                    f"{_measured(smaller, again)}, no less: what passes the limit is not the "
                    "micro-batch's"
                )
                return decision if measured <= budget else smaller_decision
            decision, micro, measured = smaller_decision, smaller, again
        if measured is not None:
            notes.append(_measured(micro, measured))
        return decision

    def _budget_decision(
        self, settings: Settings, min_micro: int, upper: int | None = None
    ) -> Decision:
        return fit_to_budget(
            self._memory(),
            budget_bytes=self.require_budget(),
            limit_frac=self.limit_frac,
            batch_size=settings.batch_size,
            micro_batch_size=settings.micro_batch_size,
            min_micro_batch_size=min_micro,
            max_micro_batch_size=None if upper is None else max(min_micro, upper),
            policy=self.cfg.policy,
        )

    def resumed(self, settings: Settings, *, epoch: int) -> BudgetDecision | None:
        """After a resume (perhaps with a new budget): shrink if the model says it must;
        None if the micro-batch still fits (or nothing was fitted)."""
        memory = self.state.memory
        if (
            memory is None
            or memory.predict_bytes(settings.micro_batch_size) <= self.require_budget()
        ):
            return None
        decision = self._budget_decision(settings, self.min_micro(settings.batch_size))
        return self._settle(decision, epoch, settings, note="resumed")

    # -- inside epochs ---------------------------------------------------------------------
    def epoch_started(self, epoch: int, peak_bytes: int | None) -> None:
        """Epoch ``epoch`` (1-based) starts; ``peak_bytes``: the peak since the last one
        ended (checkpoint writes and other work between epochs)."""
        if not self._epoch_open and epoch > 1:
            self.state.outside_peak_bytes = _max(self.state.outside_peak_bytes, peak_bytes)
        self._epoch_open = True
        self._train_peak = None

    def step_measured(
        self, settings: Settings, *, epoch: int, peak_bytes: int | None
    ) -> BudgetDecision | None:
        """The peak of a training step (since the last reset); None if it kept within the
        budget, else what to do about the overrun (the caller resets the meter then)."""
        budget = self.require_budget()
        self._train_peak = _max(self._train_peak, peak_bytes)
        if peak_bytes is None or peak_bytes <= budget:
            return None
        state, micro = self.state, settings.micro_batch_size
        state.violations += 1
        state.peak_bytes = _max(state.peak_bytes, peak_bytes)
        decision = self._unbatched(peak_bytes, micro) or self._shrink(peak_bytes, micro)
        if decision.changes:
            self._lower_ceiling(micro)
            self._last_shrink = (micro, peak_bytes)
            return self._settle(decision, epoch, settings)
        first = self._stuck_epoch != epoch  # said once per epoch, not once per step
        self._stuck_epoch = epoch
        return BudgetDecision(
            decision, epoch, logged=first, level=logging.WARNING if first else None
        )

    def _shrink(self, peak: int, micro: int) -> Decision:
        self.state.points.append((micro, float(peak)))
        self._refit()
        return shrink_after_overrun(
            micro_batch_size=micro,
            peak_bytes=peak,
            budget_bytes=self.require_budget(),
            memory=self.state.memory,
            limit_frac=self.limit_frac,
            min_micro_batch_size=self.cfg.min_micro,
            factor=self.cfg.batch_factor,
            policy=self.cfg.policy,
        )

    def _unbatched(self, peak: int, micro: int) -> Decision | None:
        """A decision to keep the micro-batch when shrinking it does not lower the peak.

        If the last shrink (from m to the current ``micro``) did not lower the peak (see
        :data:`SHRINK_EFFECT_FRAC`), the bytes over the budget are not the micro-batch's
        (memory the runtime keeps, or that grew outside the step), and halving again would
        only slow training. Such overruns are counted but shrink nothing, until a peak
        passes theirs by more than the current micro-batch could hold (new pressure that
        may be the batch's).
        """
        if self._unbatched_peak is None:
            last = self._last_shrink
            if last is None or micro >= last[0] or self._slope <= 0:
                return None
            if not self._did_not_lower(last[0], last[1], micro, peak):
                return None
            self._unbatched_peak = peak
            self._stuck_epoch = None  # this first decision is always logged
            first = (
                f"shrinking the micro-batch from {last[0]} to {micro} did not lower the peak "
                f"({format_bytes(last[1])} -> {format_bytes(peak)}; expected about "
                f"{format_bytes(self._expected_drop(last[0], micro))} less): "
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
            budget_bytes=self.require_budget(),
            margin=self.cfg.margin,
            why=first,
            policy=self.cfg.policy,
        )

    def _unbatched_limit(self, micro: int) -> int | None:
        """Peaks up to this are the memory that shrinking did not lower (None: not seen):
        the highest such peak, plus what ``micro`` samples could hold on top of it."""
        if self._unbatched_peak is None:
            return None
        return int(self._unbatched_peak + self._slope * micro)

    def out_of_memory(
        self, settings: Settings, *, epoch: int, in_optimizer_step: bool = False
    ) -> BudgetDecision:
        """A step ran out of memory: retry it at a smaller micro-batch if ``changed``.

        ``in_optimizer_step``: the error came from inside the optimizer's step, which may
        be half applied and cannot be retried exactly.
        """
        if in_optimizer_step:
            reason = (
                "out of memory inside the optimizer step: the step may be half applied, so it "
                "cannot be retried exactly"
            )
            decision = Decision(self.cfg.policy, MICRO, (), reason)
            return BudgetDecision(decision, epoch, level=logging.ERROR)
        micro = settings.micro_batch_size
        decision = shrink_after_oom(
            micro_batch_size=micro,
            min_micro_batch_size=self.cfg.min_micro,
            factor=self.cfg.batch_factor,
            policy=self.cfg.policy,
        )
        if not decision.changes:
            return BudgetDecision(decision, epoch)
        state = self.state
        state.oom_retries += 1
        self._lower_ceiling(micro)
        return self._settle(decision, epoch, settings)

    # -- epoch end -------------------------------------------------------------------------
    def epoch_ended(
        self,
        settings: Settings,
        *,
        epoch: int,
        peak_bytes: int | None,
        train_size: int,
        configured_batch_size: int,
        val_accs: tuple[float | None, ...],
    ) -> BudgetDecision:
        """Epoch ``epoch`` (1-based) ended with ``peak_bytes`` (its training steps and
        evaluation) and validation accuracies ``val_accs`` (every epoch's, this one last):
        the policy's decision."""
        state = self.state
        self._epoch_open = False
        if self._train_peak is not None:
            state.points.append((settings.micro_batch_size, float(self._train_peak)))
            self._refit()
        state.peak_bytes = _max(state.peak_bytes, peak_bytes)
        obs = EpochObservation(
            epoch=epoch,
            batch_size=settings.batch_size,
            micro_batch_size=settings.micro_batch_size,
            lr=settings.lr,
            train_size=train_size,
            configured_batch_size=configured_batch_size,
            peak_bytes=peak_bytes,
            budget_bytes=self.budget_bytes,
            device_total_bytes=self.device_total_bytes,
            val_accs=val_accs,
            epochs_since_lr_change=epoch - state.last_lr_change_epoch,
            memory=state.memory,
            micro_ceiling=state.ceiling,
            unbatched_peak_bytes=self._unbatched_limit(settings.micro_batch_size),
        )
        return self._settle(decide(obs, self.cfg), epoch, settings)

    def fit_ended(self, peak_bytes: int | None) -> None:
        """Training ended; ``peak_bytes``: the peak since the last epoch ended."""
        if not self._epoch_open:
            self.state.outside_peak_bytes = _max(self.state.outside_peak_bytes, peak_bytes)
