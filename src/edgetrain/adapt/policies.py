"""Policies: pure functions from observations to a decision.

Nothing here touches a model, an optimizer or a file: the training callback gathers an
:class:`EpochObservation`, calls :func:`decide` and applies the returned
:class:`Decision`; every decision is testable without training.

- ``none``: never changes anything.
- ``budget``: the micro-batch is fitted to the memory budget before training (see
  :func:`fit_to_budget`) and shrunk when a step runs out of memory or passes the
  budget; the effective (logical) batch never changes.
- ``edgetrain``: EdgeTrain's scheme with its defects fixed: a memory score (measured
  peak / budget, or / the device total without a budget) and an accuracy score (from
  the change in *validation* accuracy) are weighted into priorities, and only the
  top-priority parameter is adjusted, once per epoch. Memory pressure moves the
  micro-batch (gradient accumulation keeps the effective batch); spare memory grows the
  micro-batch and then, up to ``max_batch_size``, the effective batch with the learning
  rate rescaled (``lr_scaling``); the learning rate is *reduced* when validation
  accuracy stagnates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgetrain.adapt.memory_model import MemoryModel, even_micro_batch
from edgetrain.adapt.scores import (
    accuracy_score,
    clamp_lr,
    memory_score,
    priorities,
    scale_lr,
    stagnant_epochs,
)
from edgetrain.config.adapt import AdaptConfig
from edgetrain.units import format_bytes

__all__ = [
    "POLICIES",
    "Change",
    "Decision",
    "EpochObservation",
    "budget_policy",
    "decide",
    "edgetrain_policy",
    "fit_to_budget",
    "keep_unbatched_overrun",
    "none_policy",
    "shrink_after_oom",
    "shrink_after_overrun",
]

MICRO, BATCH, LR = "micro_batch_size", "batch_size", "lr"


@dataclass(frozen=True)
class EpochObservation:
    """What the controller knows at the end of an epoch.

    Attributes:
        epoch: the epoch that just ended, 1-based (as in metrics.csv).
        batch_size: the effective (logical) batch.
        micro_batch_size: samples per forward/backward.
        lr: the base learning rate (the schedule multiplies it).
        train_size: training samples.
        configured_batch_size: ``batch_size`` of the config (the default growth cap).
        peak_bytes: the training's own peak memory during the epoch, or None.
        budget_bytes: ``budget.memory``, or None.
        device_total_bytes: the device's total memory, or None.
        val_accs: validation accuracy of every epoch so far, this one last.
        epochs_since_lr_change: epochs trained since the learning rate last changed.
        memory: the fitted memory model, or None.
        micro_ceiling: smallest micro-batch that ran out of memory or passed the
            budget (never grown back to), or None.
        unbatched_peak_bytes: peaks up to this are memory that shrinking the micro-batch
            did not lower (see :func:`keep_unbatched_overrun`); None when not seen.
    """

    epoch: int
    batch_size: int
    micro_batch_size: int
    lr: float
    train_size: int
    configured_batch_size: int
    peak_bytes: int | None = None
    budget_bytes: int | None = None
    device_total_bytes: int | None = None
    val_accs: tuple[float | None, ...] = ()
    epochs_since_lr_change: int = 0
    memory: MemoryModel | None = None
    micro_ceiling: int | None = None
    unbatched_peak_bytes: int | None = None

    @property
    def unbatched(self) -> bool:
        """Whether this epoch's peak is memory that shrinking the micro-batch did not lower."""
        return (
            self.unbatched_peak_bytes is not None
            and self.peak_bytes is not None
            and self.peak_bytes <= self.unbatched_peak_bytes
        )


@dataclass(frozen=True)
class Change:
    """One parameter changed: ``parameter`` is micro_batch_size, batch_size or lr."""

    parameter: str
    old: float
    new: float
    reason: str


@dataclass(frozen=True)
class Decision:
    """A policy's answer: the scores it used, what it chose and what to change.

    ``chosen`` is the parameter the policy decided about (batch_size, learning_rate or
    micro_batch_size; empty when it had nothing to decide on); ``changes`` may be empty
    (the decision was to keep everything), with ``reason`` saying why.
    """

    policy: str
    chosen: str = ""
    changes: tuple[Change, ...] = ()
    reason: str = ""
    memory_score: float | None = None
    accuracy_score: float | None = None
    priority_batch_size: float | None = None
    priority_learning_rate: float | None = None

    def new(self, parameter: str, current: float) -> float:
        """The new value of ``parameter``, or ``current`` if it is not changed."""
        for change in self.changes:
            if change.parameter == parameter:
                return change.new
        return current

    def rows(self) -> list[dict[str, Any]]:
        """decisions.csv rows (without epoch and step): one per change, or one 'keep' row."""
        base = {
            "memory_score": self.memory_score,
            "accuracy_score": self.accuracy_score,
            "priority_batch_size": self.priority_batch_size,
            "priority_learning_rate": self.priority_learning_rate,
            "chosen": self.chosen,
        }
        if not self.changes:
            return [{**base, "parameter": "", "old": None, "new": None, "reason": self.reason}]
        return [
            {**base, "parameter": c.parameter, "old": c.old, "new": c.new, "reason": c.reason}
            for c in self.changes
        ]


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def _accum(batch: int, micro: int) -> int:
    return math.ceil(batch / max(1, micro))


def _micro_change(
    policy: str, old: int, new: int, why: str, score: float | None = None
) -> Decision:
    """A decision that changes the micro-batch from ``old`` to ``new`` because ``why``."""
    return Decision(policy, MICRO, (Change(MICRO, old, new, why),), why, memory_score=score)


# -- before training and inside steps -----------------------------------------------------


def fit_to_budget(
    model: MemoryModel,
    *,
    budget_bytes: int,
    limit_frac: float,
    batch_size: int,
    micro_batch_size: int,
    min_micro_batch_size: int = 1,
    max_micro_batch_size: int | None = None,
    policy: str = "budget",
) -> Decision:
    """The largest micro-batch predicted to stay within ``limit_frac`` of the budget, then
    evened out: the same number of micro-batches per logical batch, all of one size
    (256 at 39 -> 7 micro-batches of 37).

    ``max_micro_batch_size`` caps it (e.g. the largest size a probe measured within the
    limit, so the choice is not extrapolated). The caller checks feasibility first (the
    prediction at ``min_micro_batch_size`` must fit the whole budget); here the result is
    at least ``min_micro_batch_size``.
    """
    limit = limit_frac * budget_bytes
    upper = batch_size if max_micro_batch_size is None else min(batch_size, max_micro_batch_size)
    best = max(min_micro_batch_size, model.largest_micro_batch(limit, upper=upper))
    best = min(best, batch_size)
    # as many micro-batches as `best` needs, but of equal size: same steps, less memory
    best = max(min_micro_batch_size, even_micro_batch(batch_size, best))
    predicted = model.predict_bytes(best)
    why = (
        f"micro-batch predicted within {_pct(limit_frac)} of the budget "
        f"{format_bytes(budget_bytes)}: {format_bytes(predicted)} = "
        f"{format_bytes(model.static_bytes)} static + {format_bytes(model.per_sample_bytes)}"
        f"/sample x {best}; effective batch {batch_size} kept by accumulating "
        f"{_accum(batch_size, best)} steps"
    )
    score = memory_score(predicted, budget_bytes)
    if best == micro_batch_size:
        return Decision(policy, MICRO, (), f"kept: {why}", memory_score=score)
    return _micro_change(policy, micro_batch_size, best, why, score)


def shrink_after_overrun(
    *,
    micro_batch_size: int,
    peak_bytes: int,
    budget_bytes: int,
    memory: MemoryModel | None,
    limit_frac: float,
    min_micro_batch_size: int = 1,
    factor: int = 2,
    policy: str = "budget",
) -> Decision:
    """A measured peak passed the budget: the next micro-batch predicted to stay within
    ``limit_frac`` of it.

    ``memory`` should already include the measurement; the new size is the model's choice
    but at least ``micro_batch_size // factor`` (one step at a time). Always smaller than
    ``micro_batch_size`` unless that is already the minimum (then nothing changes).
    """
    score = memory_score(peak_bytes, budget_bytes)
    upper = micro_batch_size - 1
    if upper < min_micro_batch_size:
        return Decision(
            policy,
            MICRO,
            (),
            f"peak {format_bytes(peak_bytes)} passed the budget {format_bytes(budget_bytes)} "
            f"at the smallest micro-batch ({micro_batch_size}): cannot shrink further",
            memory_score=score,
        )
    # at most one step of `factor`: on CPU the resident size lags a shrink (the allocator
    # keeps freed memory), so one overrun can make the recalibrated model say nothing fits
    target = micro_batch_size // factor
    if memory is not None:
        target = max(target, memory.largest_micro_batch(limit_frac * budget_bytes, upper=upper))
    new = max(min_micro_batch_size, min(upper, target))
    why = (
        f"measured peak {format_bytes(peak_bytes)} passed the budget "
        f"{format_bytes(budget_bytes)} at micro-batch {micro_batch_size}; effective batch kept"
    )
    return _micro_change(policy, micro_batch_size, new, why, score)


def keep_unbatched_overrun(
    *,
    micro_batch_size: int,
    peak_bytes: int,
    budget_bytes: int,
    margin: float,
    why: str = "",
    policy: str = "budget",
) -> Decision:
    """A measured peak passed the budget, but shrinking the micro-batch did not lower it:
    keep the micro-batch (halving it again would only slow training) and say what budget
    would hold this peak with ``margin`` to spare. ``why`` leads the reason."""
    reason = (
        f"{why}peak {format_bytes(peak_bytes)} passed the budget {format_bytes(budget_bytes)}, "
        "but the memory over it is not the micro-batch's (kept by the runtime or grown "
        f"outside the step), so micro-batch {micro_batch_size} is kept; raise budget.memory "
        f"to at least {format_bytes(peak_bytes / (1 - margin))} to keep {_pct(margin)} to spare"
    )
    return Decision(policy, MICRO, (), reason, memory_score=memory_score(peak_bytes, budget_bytes))


def shrink_after_oom(
    *, micro_batch_size: int, min_micro_batch_size: int = 1, factor: int = 2, policy: str = "budget"
) -> Decision:
    """A step ran out of memory: retry it with the micro-batch divided by ``factor``."""
    new = max(min_micro_batch_size, micro_batch_size // factor)
    if new >= micro_batch_size:
        return Decision(
            policy,
            MICRO,
            (),
            f"out of memory at the smallest micro-batch ({micro_batch_size}): cannot retry",
        )
    why = (
        f"out of memory at micro-batch {micro_batch_size}: retrying the same logical batch "
        f"at {new} (no sample lost or counted twice)"
    )
    return _micro_change(policy, micro_batch_size, new, why)


# -- once per epoch ------------------------------------------------------------------------


def none_policy(obs: EpochObservation, cfg: AdaptConfig) -> Decision:
    """Never changes anything."""
    del cfg
    return Decision("none", reason="policy none", memory_score=_budget_score(obs))


def _budget_score(obs: EpochObservation) -> float | None:
    return memory_score(obs.peak_bytes, obs.budget_bytes)


def budget_policy(obs: EpochObservation, cfg: AdaptConfig) -> Decision:
    """Keep the micro-batch unless the epoch's measured peak passed the budget.

    The fit before training already chose the largest micro-batch that fits with
    ``margin`` to spare; this never grows it and never changes the effective batch or
    the learning rate. (The per-step guard acts on an overrun at once; this catches one
    during evaluation.)
    """
    score = _budget_score(obs)
    if obs.budget_bytes is None:
        return Decision("budget", MICRO, (), "no budget.memory: out-of-memory recovery only")
    if obs.peak_bytes is None:
        return Decision("budget", MICRO, (), "kept: no memory measurement this epoch")
    if obs.peak_bytes > obs.budget_bytes and obs.unbatched:
        return keep_unbatched_overrun(
            micro_batch_size=obs.micro_batch_size,
            peak_bytes=obs.peak_bytes,
            budget_bytes=obs.budget_bytes,
            margin=cfg.margin,
        )
    if obs.peak_bytes > obs.budget_bytes:
        return shrink_after_overrun(
            micro_batch_size=obs.micro_batch_size,
            peak_bytes=obs.peak_bytes,
            budget_bytes=obs.budget_bytes,
            memory=obs.memory,
            limit_frac=1 - cfg.margin,
            min_micro_batch_size=cfg.min_micro,
            factor=cfg.batch_factor,
        )
    return Decision(
        "budget",
        MICRO,
        (),
        f"kept: peak {format_bytes(obs.peak_bytes)} is {_pct(score)} of the budget "
        f"{format_bytes(obs.budget_bytes)}",
        memory_score=score,
    )


def _fits(obs: EpochObservation, cfg: AdaptConfig, micro: int) -> tuple[bool, str]:
    """Whether ``micro`` is predicted to stay under the high threshold (and the margin)."""
    if obs.micro_ceiling is not None and micro >= obs.micro_ceiling:
        return False, f"micro-batch {obs.micro_ceiling} already ran out of memory or budget"
    if obs.memory is None or obs.budget_bytes is None:
        return True, ""
    limit = min(cfg.memory_high_frac, 1 - cfg.margin) * obs.budget_bytes
    predicted = obs.memory.predict_bytes(micro)
    if predicted > limit:
        return False, f"micro-batch {micro} is predicted at {format_bytes(predicted)}"
    return True, ""


def _batch_rule(obs: EpochObservation, cfg: AdaptConfig, score: float) -> tuple[list[Change], str]:
    micro, batch, factor = obs.micro_batch_size, obs.batch_size, cfg.batch_factor
    tag = f"memory score {score:.2f}"
    if score > cfg.memory_high_frac and obs.unbatched:
        return [], (
            f"{tag} > {cfg.memory_high_frac}, but shrinking the micro-batch did not lower the "
            "peak before: kept"
        )
    if score > cfg.memory_high_frac:
        new = max(cfg.min_micro, micro // factor)
        if new >= micro:
            return [], f"{tag} > {cfg.memory_high_frac}, but the micro-batch is at its minimum"
        why = (
            f"{tag} > {cfg.memory_high_frac}: micro-batch / {factor}; effective batch {batch} "
            f"kept by accumulating {_accum(batch, new)} steps"
        )
        return [Change(MICRO, micro, new, why)], why
    if score >= cfg.memory_low_frac:
        return [], f"{tag} within [{cfg.memory_low_frac}, {cfg.memory_high_frac}]: kept"
    if micro < batch:
        new = min(batch, micro * factor)
        ok, blocker = _fits(obs, cfg, new)
        if not ok:
            return [], f"{tag} < {cfg.memory_low_frac}, but {blocker}: kept"
        why = f"{tag} < {cfg.memory_low_frac}: micro-batch x {factor} (effective batch kept)"
        return [Change(MICRO, micro, new, why)], why
    cap = min(cfg.max_batch_size or obs.configured_batch_size, obs.train_size)
    new_batch = min(batch * factor, cap)
    if new_batch <= batch:
        return [], f"{tag} < {cfg.memory_low_frac}, but the batch is at its maximum ({cap})"
    why = (
        f"{tag} < {cfg.memory_low_frac} and micro-batch = batch: effective batch "
        f"{batch} -> {new_batch} (micro-batch {micro}, accumulating {_accum(new_batch, micro)})"
    )
    changes = [Change(BATCH, batch, new_batch, why)]
    new_lr = clamp_lr(scale_lr(obs.lr, batch, new_batch, cfg.lr_scaling), cfg.min_lr, cfg.max_lr)
    if new_lr != obs.lr:
        changes.append(
            Change(LR, obs.lr, new_lr, f"{cfg.lr_scaling} scaling for batch {batch} -> {new_batch}")
        )
    return changes, why


def _lr_rule(obs: EpochObservation, cfg: AdaptConfig) -> tuple[list[Change], str]:
    stagnant = stagnant_epochs(obs.val_accs, cfg.min_delta)
    waited = min(stagnant, obs.epochs_since_lr_change)
    if waited < cfg.patience:
        if stagnant >= cfg.patience:
            return [], f"kept: the learning rate changed {obs.epochs_since_lr_change} epoch(s) ago"
        return [], (
            f"kept: validation accuracy improved by more than {cfg.min_delta} "
            f"within the last {cfg.patience} epoch(s)"
        )
    new_lr = clamp_lr(obs.lr * cfg.lr_factor, cfg.min_lr, cfg.max_lr)
    if new_lr >= obs.lr:
        return (
            [],
            f"validation accuracy stagnates, but the learning rate is at its minimum ({cfg.min_lr})",
        )
    why = (
        f"validation accuracy did not improve by more than {cfg.min_delta} for {waited} "
        f"epoch(s): learning rate x {cfg.lr_factor}"
    )
    return [Change(LR, obs.lr, new_lr, why)], why


def edgetrain_policy(obs: EpochObservation, cfg: AdaptConfig) -> Decision:
    """EdgeTrain's score-and-priority scheme; adjusts only the top-priority parameter.

    Ties go to the learning rate (as in EdgeTrain). A score that is unknown (no memory
    measurement; fewer than two validation accuracies) gives its parameter no priority.
    """
    capacity = obs.budget_bytes if obs.budget_bytes is not None else obs.device_total_bytes
    mem = memory_score(obs.peak_bytes, capacity)
    acc = accuracy_score(obs.val_accs)
    pb, plr = priorities(mem, acc, cfg.weights.batch_size, cfg.weights.learning_rate)
    scores = {
        "memory_score": mem,
        "accuracy_score": acc,
        "priority_batch_size": pb,
        "priority_learning_rate": plr,
    }
    if pb is None and plr is None:
        return Decision("edgetrain", "", (), "kept: no score yet", **scores)
    # pb exists exactly when the memory score does
    if mem is not None and pb is not None and (plr is None or pb > plr):
        changes, why = _batch_rule(obs, cfg, mem)
        return Decision("edgetrain", BATCH, tuple(changes), why, **scores)
    changes, why = _lr_rule(obs, cfg)
    return Decision("edgetrain", "learning_rate", tuple(changes), why, **scores)


POLICIES: dict[str, Callable[[EpochObservation, AdaptConfig], Decision]] = {
    "none": none_policy,
    "budget": budget_policy,
    "edgetrain": edgetrain_policy,
}


def decide(obs: EpochObservation, cfg: AdaptConfig) -> Decision:
    """The configured policy's decision for the epoch that just ended."""
    return POLICIES[cfg.policy](obs, cfg)
