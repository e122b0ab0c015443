"""The memory planner: which levers, at which micro-batch, fit a budget fastest.

A pure function over measured costs (no torch; :mod:`edgetrain.adapt.levers` measures
them with short probe steps on the actual device). Each candidate :class:`Levers` set
(recomputation, an activation codec, the optimizer step inside backward) comes with a
:class:`LeverCost`: its memory model (peak bytes against the micro-batch, fitted from
its probes) and its time model (seconds of a step against the micro-batch, from the
same probes). :func:`make_plan` picks, for every set, the largest micro-batch its
memory model fits under the limit, predicts the time of one logical batch (steps x
per-step seconds + samples x per-sample seconds) and chooses the fastest; a set within
:data:`TIE_FRAC` of the fastest with fewer levers wins the tie (fewer moving parts).
Sets that change what training computes (a lossy codec, a sparse update of a
fine-tuned model) are taken only when no exact set fits, and then the least lossy
first (the largest updated share, the codec with the most bits). When no set fits even
at the smallest micro-batch, :class:`PlanError` names the smallest budget any set
reaches. See docs/design.md, "Memory planner".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from edgetrain.adapt.memory_model import MemoryModel, even_micro_batch
from edgetrain.errors import EdgeTrainError
from edgetrain.units import format_bytes

__all__ = [
    "LOSSLESS_CODECS",
    "MIN_SAVING_FRAC",
    "SMALLEST_SLACK_FRAC",
    "TIE_FRAC",
    "LeverCost",
    "Levers",
    "Plan",
    "PlanError",
    "PlanOption",
    "TimeModel",
    "make_plan",
    "make_plan_preferring",
    "shifted",
    "within",
]

LOSSLESS_CODECS = frozenset({"none", "lossless"})
# codecs by what they lose (more bits first); unknown codecs rank last
CODEC_LOSS_RANK = {"none": 0, "lossless": 0, "bf16": 1, "fp16": 1, "int8": 2, "int4": 3, "int2": 4}
# options whose predicted time is within this fraction of the fastest are ties
TIE_FRAC = 0.03
# a lever set is taken only if it saves at least this fraction of the base set's peak
# at the same micro-batch (a lever that saves nothing measurable only costs time)
MIN_SAVING_FRAC = 0.02
# the smallest budget a refusal names is this much above the bare prediction, so that a
# second run's measurements (the resident size moves by some 100 KiB to a few MiB from
# process to process on CPU: 0.75 MiB of 18.5 seen for a small CNN) still find a plan at it
SMALLEST_SLACK_FRAC = 0.05


@dataclass(frozen=True, order=True)
class Levers:
    """One combination of memory levers (besides the micro-batch).

    Attributes:
        activations: the codec for tensors saved for backward ("none" = kept as they are).
        recompute: "none" or "all" (every block recomputed in backward).
        optimizer_in_backward: each parameter stepped as its gradient is ready and the
            gradient freed (without accumulation: micro-batch = batch; with accumulation
            only where the optimizer folds gradients into its momentum,
            :attr:`LeverCost.accumulates`).
        sparse: the share of the trainable parameters updated (1.0: all). Below 1, a
            static sparse update (``sparse_update.scheme: static``, chosen from the
            weights before training, so the probes measure what training runs): frozen
            tensors need no gradient, no optimizer state and, before the first trained
            layer, no saved activations. Offered when fine-tuning (``init_from``) with
            ``budget.lossy: allow``: it trains less of the model.
        state: the dtype the optimizer state is kept in between steps ("fp32": as the
            optimizer keeps it; "bf16": ``optimizer_state: bf16``, half its bytes, rounded
            stochastically). Offered with ``budget.lossy: allow``; the least lossy lever.
    """

    activations: str = "none"
    recompute: str = "none"
    optimizer_in_backward: bool = False
    sparse: float = 1.0
    state: str = "fp32"

    @property
    def count(self) -> int:
        """How many levers are turned."""
        return (
            (self.activations != "none")
            + (self.recompute != "none")
            + int(self.optimizer_in_backward)
            + int(self.sparse < 1)
            + int(self.state != "fp32")
        )

    @property
    def lossy(self) -> bool:
        """Whether training computes something else than without the levers."""
        return self.activations not in LOSSLESS_CODECS or self.sparse < 1 or self.state != "fp32"

    @property
    def frozen_norm(self) -> bool:
        """Whether batch-norm layers normalise with their running statistics in training
        (a sparse update freezes them with the weights: micro-batch size then changes
        nothing the forward computes, so no minimum micro-batch is needed)."""
        return self.sparse < 1

    @property
    def loss_rank(self) -> tuple[float, int, int]:
        """Smaller loses less: the updated share first (more is better), then the codec,
        then the optimizer state (rounded state loses less than any lossy codec)."""
        codec = CODEC_LOSS_RANK.get(self.activations, len(CODEC_LOSS_RANK))
        return (-self.sparse, codec, int(self.state != "fp32"))

    def short(self, *, accumulating: bool = False) -> str:
        """Shortest text: 'recompute + int8 + step in backward', or 'micro-batch only';
        ``accumulating``: the step in backward with accumulation is a fold of the
        gradients into SGD's momentum (:mod:`edgetrain.memory.fold`)."""
        parts = []
        if self.recompute != "none":
            parts.append("recompute" if self.recompute == "all" else f"recompute {self.recompute}")
        if self.activations != "none":
            parts.append(self.activations)
        if self.optimizer_in_backward:
            parts.append("gradients folded into momentum" if accumulating else "step in backward")
        if self.sparse < 1:
            parts.append(f"sparse {self.sparse:.0%}")
        if self.state != "fp32":
            parts.append(f"{self.state} state")
        return " + ".join(parts) if parts else "micro-batch only"

    def describe(self) -> str:
        """Text: 'recompute=all + activations=int8', or 'micro-batch only'."""
        parts = []
        if self.recompute != "none":
            parts.append(f"recompute={self.recompute}")
        if self.activations != "none":
            parts.append(f"activations={self.activations}")
        if self.optimizer_in_backward:
            parts.append("optimizer_in_backward")
        if self.sparse < 1:
            parts.append(f"sparse_update=static {self.sparse:g}")
        if self.state != "fp32":
            parts.append(f"optimizer_state={self.state}")
        return " + ".join(parts) if parts else "micro-batch only"


@dataclass(frozen=True)
class TimeModel:
    """Seconds of one micro-batch step = ``step_seconds`` + ``sample_seconds`` x size."""

    step_seconds: float
    sample_seconds: float

    def batch_seconds(self, batch_size: int, micro_batch_size: int) -> float:
        """Predicted seconds of one logical batch of ``batch_size`` at ``micro_batch_size``."""
        steps = math.ceil(batch_size / micro_batch_size)
        return steps * self.step_seconds + batch_size * self.sample_seconds

    @classmethod
    def fit(cls, points: Iterable[tuple[int, float]]) -> TimeModel:
        """Least squares over (micro-batch, seconds), both coefficients at least 0.

        One size (or several equal): all of the time is per sample.

        Raises:
            ValueError: no point with a positive size and a finite time.
        """
        pts = [(float(m), float(s)) for m, s in points if m >= 1 and math.isfinite(s) and s >= 0]
        if not pts:
            raise ValueError("a time model needs at least one (micro-batch, seconds) point")
        xs = [m for m, _ in pts]
        mx = sum(xs) / len(xs)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            return cls(0.0, sum(s for _, s in pts) / sum(xs))
        my = sum(s for _, s in pts) / len(pts)
        slope = sum((x - mx) * (s - my) for x, s in pts) / sxx
        slope = max(slope, 0.0)
        intercept = my - slope * mx
        if intercept < 0:  # no negative overhead: all per sample, through the origin
            slope = sum(x * s for x, s in pts) / sum(x * x for x in xs)
            intercept = 0.0
        return cls(intercept, slope)


@dataclass(frozen=True)
class LeverCost:
    """What one lever set costs, as measured by probe steps.

    Attributes:
        levers: the set.
        memory: its peak bytes against the micro-batch.
        time: its step seconds against the micro-batch.
        ceiling: the smallest micro-batch that ran out of memory while probing (None: none).
        grad_free_bytes: with ``levers.optimizer_in_backward``, the bytes of gradients that
            need not coexist (subtracted from the peak at micro-batch = batch only, or at
            every micro-batch where ``accumulates``).
        time_measured: False when the time is taken from another set (a lever whose
            probe would change the weights); shown in the plan table.
        whole_bytes: with ``levers.optimizer_in_backward``, the measured peak of a pass
            over the whole batch with each gradient freed as it is ready (optimizer
            state counted); the prediction at the whole batch is never below it (the
            memory model's line, fitted to smaller probes, can pass under it: vgg11's
            lossless set predicted 135 MiB where that pass measured 189).
        accumulates: with ``levers.optimizer_in_backward``, the step in backward also
            runs with gradient accumulation (SGD with momentum: each micro-batch's
            gradients folded into the momentum as they are ready, see
            :mod:`edgetrain.memory.fold`), so every micro-batch saves the gradients.
    """

    levers: Levers
    memory: MemoryModel
    time: TimeModel
    ceiling: int | None = None
    grad_free_bytes: int = 0
    time_measured: bool = True
    whole_bytes: int | None = None
    accumulates: bool = False

    @property
    def whole_batch_only(self) -> bool:
        """Whether the set runs only at micro-batch = batch (the step in backward of an
        optimizer that cannot fold accumulated gradients)."""
        return self.levers.optimizer_in_backward and not self.accumulates

    def predict_bytes(self, micro_batch_size: int, batch_size: int) -> int:
        peak = self.memory.predict_bytes(micro_batch_size)
        if not self.levers.optimizer_in_backward:
            return peak
        if micro_batch_size < batch_size:  # the fold frees them at every micro-batch
            return peak - self.grad_free_bytes if self.accumulates else peak
        if self.accumulates and self.whole_bytes is None:
            # measured with accumulation, which saves more than one pass over the whole
            # batch: no saving counted there
            return peak
        peak -= self.grad_free_bytes
        if self.whole_bytes is not None:
            peak = max(peak, self.whole_bytes)
        return peak

    def raised(self, delta_bytes: float) -> LeverCost:
        """Every prediction ``delta_bytes`` higher (lower where negative)."""
        whole = None if self.whole_bytes is None else round(self.whole_bytes + delta_bytes)
        return replace(self, memory=self.memory.raised(delta_bytes), whole_bytes=whole)

    def largest_micro_batch(self, limit_bytes: float, batch_size: int, min_micro: int) -> int:
        """The largest micro-batch in [min_micro, batch] predicted under the limit, evened
        out (:func:`~edgetrain.adapt.memory_model.even_micro_batch`); 0 if none."""
        upper = batch_size if self.ceiling is None else min(batch_size, self.ceiling - 1)
        if self.whole_batch_only:  # steps in backward only without accumulation
            if upper < batch_size:
                return 0
            return batch_size if self.predict_bytes(batch_size, batch_size) <= limit_bytes else 0
        memory = self.memory
        if self.levers.optimizer_in_backward:  # folds: every micro-batch frees gradients
            memory = memory.raised(-self.grad_free_bytes)
            if upper >= batch_size and self.predict_bytes(batch_size, batch_size) > limit_bytes:
                upper = batch_size - 1  # the whole batch's measured pass is over the limit
        micro = memory.largest_micro_batch(limit_bytes, upper)
        # evened out (as the controller trains it): the same steps at less memory
        return even_micro_batch(batch_size, micro, min_micro) if micro >= min_micro else 0


@dataclass(frozen=True)
class PlanOption:
    """One lever set's best fit under the limit (``micro_batch_size`` 0: it does not fit)."""

    levers: Levers
    micro_batch_size: int
    accum_steps: int
    predicted_peak_bytes: int
    batch_seconds: float
    time_ratio: float  # against the base option (fewest levers; else the fastest fitting)
    saved_bytes: int  # predicted peak below the base option's at the same micro-batch
    time_measured: bool
    saves: bool = True  # saves at least MIN_SAVING_FRAC (the base option always counts)

    @property
    def fits(self) -> bool:
        return self.micro_batch_size > 0

    def short(self) -> str:
        """:meth:`Levers.short` at this option's micro-batch."""
        return self.levers.short(accumulating=self.accum_steps > 1)

    @property
    def eligible(self) -> bool:
        return self.fits and self.saves


@dataclass(frozen=True)
class Plan:
    """The chosen option and every option considered (the plan table).

    ``smallest_bytes`` is the smallest budget any option reaches (at its smallest
    micro-batch, with the margin), for the reader and for error messages.
    """

    chosen: PlanOption
    options: tuple[PlanOption, ...]
    budget_bytes: int
    limit_bytes: float
    batch_size: int
    smallest_bytes: int

    @property
    def levers(self) -> Levers:
        return self.chosen.levers

    @property
    def micro_batch_size(self) -> int:
        return self.chosen.micro_batch_size

    @property
    def accum_steps(self) -> int:
        return self.chosen.accum_steps

    @property
    def predicted_peak_bytes(self) -> int:
        return self.chosen.predicted_peak_bytes

    def describe(self) -> str:
        c = self.chosen
        return (
            f"{c.levers.describe()}, micro-batch {c.micro_batch_size} x {c.accum_steps}, "
            f"predicted peak {format_bytes(c.predicted_peak_bytes)} of "
            f"{format_bytes(self.budget_bytes)}, time {c.time_ratio:.2f}x"
        )


class PlanError(EdgeTrainError):
    """No lever set fits the budget; ``smallest_bytes`` is the smallest budget one reaches."""

    def __init__(self, message: str, smallest_bytes: int) -> None:
        super().__init__(message)
        self.smallest_bytes = smallest_bytes


def _smallest(cost: LeverCost, batch_size: int, min_micro: int, limit_frac: float) -> float:
    micro = batch_size if cost.whole_batch_only else min_micro
    if cost.ceiling is not None and micro >= cost.ceiling:
        return math.inf
    return cost.predict_bytes(micro, batch_size) / limit_frac


def within(smaller: Levers, larger: Levers) -> bool:
    """Whether ``smaller`` turns a subset of ``larger``'s levers (and not all of them)."""
    parts = (
        smaller.activations in ("none", larger.activations),
        smaller.recompute in ("none", larger.recompute),
        not smaller.optimizer_in_backward or larger.optimizer_in_backward,
        smaller.sparse in (1.0, larger.sparse),
        smaller.state in ("fp32", larger.state),
    )
    return all(parts) and smaller != larger


def _adds_work(smaller: Levers, larger: Levers) -> bool:
    """Whether ``larger`` is ``smaller`` plus recomputation or a codec: work added to
    every step (a sparse update removes work, the step in backward moves it)."""
    same = (
        smaller.sparse == larger.sparse
        and smaller.optimizer_in_backward == larger.optimizer_in_backward
    )
    return same and within(smaller, larger)


def _seconds(cost: LeverCost, costs: Sequence[LeverCost], batch_size: int, micro: int) -> float:
    """Predicted seconds of a logical batch at ``micro``: never less than a set with fewer
    of its work-adding levers at the same micro-batch (recomputing or encoding cannot make
    a step faster; a probe that says so measured noise: single probe passes on a shared
    CPU vary by 10%)."""
    seconds = cost.time.batch_seconds(batch_size, micro)
    for other in costs:
        if other is not cost and _adds_work(other.levers, cost.levers):
            seconds = max(seconds, other.time.batch_seconds(batch_size, micro))
    return seconds


def _pays(
    cost: LeverCost, micro: int, peak: int, costs: Sequence[LeverCost], batch_size: int
) -> bool:
    """Whether every lever of ``cost`` pays its way: at ``micro`` its peak is at least
    :data:`MIN_SAVING_FRAC` below that of every set with fewer of its levers."""
    if not micro:
        return False
    for other in costs:
        if other is cost or not within(other.levers, cost.levers):
            continue
        theirs = other.predict_bytes(micro, batch_size)
        if theirs - peak < MIN_SAVING_FRAC * theirs:
            return False
    return True


def make_plan(
    costs: Sequence[LeverCost],
    *,
    budget_bytes: int,
    batch_size: int,
    limit_frac: float = 0.9,
    min_micro: int = 1,
    norm_min_micro: int = 1,
) -> Plan:
    """Choose the lever set and micro-batch that fit ``limit_frac`` x ``budget_bytes``
    with the least predicted time per logical batch (module doc). ``norm_min_micro``:
    the smallest micro-batch for sets whose batch-norm layers use batch statistics
    (all but :attr:`Levers.frozen_norm` ones), at least ``min_micro``.

    Raises:
        PlanError: no set fits at any micro-batch (the message names the smallest budget
            a set reaches and which set).
        ValueError: no costs, or impossible arguments.
    """
    if not costs:
        raise ValueError("make_plan needs at least one lever cost")
    if batch_size < 1 or not 1 <= min_micro <= batch_size or not 0 < limit_frac <= 1:
        raise ValueError(
            f"make_plan: batch_size {batch_size}, min_micro {min_micro}, "
            f"limit_frac {limit_frac} are not consistent"
        )
    limit = limit_frac * budget_bytes

    def own_min(levers: Levers) -> int:
        return min_micro if levers.frozen_norm else min(max(min_micro, norm_min_micro), batch_size)

    rows: list[tuple[LeverCost, int, int, float]] = []
    for cost in costs:
        micro = cost.largest_micro_batch(limit, batch_size, own_min(cost.levers))
        peak = cost.predict_bytes(micro, batch_size) if micro else 0
        seconds = _seconds(cost, costs, batch_size, micro) if micro else math.inf
        rows.append((cost, micro, peak, seconds))
    base_cost = min(costs, key=lambda c: c.levers.count)  # micro-batch only, or the fixed set
    fitting = [r for r in rows if r[1]]
    reference = next(
        (r[3] for r in rows if r[0] is base_cost and r[1]),
        min((r[3] for r in fitting), default=math.nan),
    )
    options = []
    for cost, micro, peak, seconds in rows:
        same = base_cost.predict_bytes(micro, batch_size) if micro else peak
        saved = max(0, same - peak) if micro else 0
        options.append(
            PlanOption(
                levers=cost.levers,
                micro_batch_size=micro,
                accum_steps=math.ceil(batch_size / micro) if micro else 0,
                predicted_peak_bytes=peak,
                batch_seconds=seconds,
                time_ratio=seconds / reference if micro and reference > 0 else math.nan,
                saved_bytes=saved,
                time_measured=cost.time_measured,
                saves=cost is base_cost or _pays(cost, micro, peak, costs, batch_size),
            )
        )
    smallest_cost = min(
        costs, key=lambda c: _smallest(c, batch_size, own_min(c.levers), limit_frac)
    )
    smallest = _smallest(smallest_cost, batch_size, own_min(smallest_cost.levers), limit_frac)
    smallest_bytes = (
        math.ceil(smallest * (1 + SMALLEST_SLACK_FRAC)) if math.isfinite(smallest) else 0
    )
    if not fitting:
        reach = (
            f"the smallest any reaches is {format_bytes(smallest_bytes)} ({smallest_bytes} "
            f"bytes, {smallest_cost.levers.describe()} at micro-batch "
            f"{batch_size if smallest_cost.whole_batch_only else own_min(smallest_cost.levers)}, with "
            f"the margin {1 - limit_frac:.0%})"
            if smallest_bytes
            else "every probe ran out of memory"
        )
        raise PlanError(
            f"budget.memory {format_bytes(budget_bytes)} ({budget_bytes} bytes) is below "
            f"what any plan of {len(costs)} lever sets reaches: {reach}; raise budget.memory "
            "to at least that",
            smallest_bytes,
        )
    eligible = [o for o in options if o.eligible] or [o for o in options if o.fits]
    # exact sets first; else the least lossy of those that fit (then the fastest of those)
    exact = [o for o in eligible if not o.levers.lossy]
    if exact:
        eligible = exact
    else:
        least = min(o.levers.loss_rank for o in eligible)
        eligible = [o for o in eligible if o.levers.loss_rank == least]
    fastest = min(o.batch_seconds for o in eligible)
    ties = [o for o in eligible if o.batch_seconds <= fastest * (1 + TIE_FRAC)]
    chosen = min(ties, key=lambda o: (o.levers.count, o.batch_seconds))
    return Plan(
        chosen=chosen,
        options=tuple(options),
        budget_bytes=budget_bytes,
        limit_bytes=limit,
        batch_size=batch_size,
        smallest_bytes=smallest_bytes,
    )


def make_plan_preferring(
    costs: Sequence[LeverCost],
    *,
    budget_bytes: int,
    batch_size: int,
    preferred_min: int,
    limit_frac: float = 0.9,
    min_micro: int = 1,
) -> tuple[Plan, bool]:
    """:func:`make_plan` with micro-batches of at least ``preferred_min`` where batch-norm
    uses batch statistics (``adapt.min_micro_batch_size: auto``) if any set fits so, else
    down to ``min_micro``; the flag says whether the preference held.

    Raises:
        PlanError: nothing fits even at ``min_micro``.
    """
    args = {
        "budget_bytes": budget_bytes,
        "batch_size": batch_size,
        "limit_frac": limit_frac,
        "min_micro": min_micro,
    }
    preferred = min(max(preferred_min, min_micro), batch_size)
    try:
        plan = make_plan(costs, **args, norm_min_micro=preferred)
    except PlanError:
        if preferred <= min_micro:
            raise
        return make_plan(costs, **args), False
    if preferred > min_micro:  # the smallest budget any plan reaches: below the preference
        plan = replace(plan, smallest_bytes=make_plan(costs, **args).smallest_bytes)
    return plan, True


def shifted(
    costs: Sequence[LeverCost], levers: Levers, measured_minus_predicted: float
) -> list[LeverCost]:
    """Costs corrected by what training measured: the peak of ``levers`` passed its
    prediction by ``measured_minus_predicted`` bytes (memory the probes did not see:
    the data loader, the allocator, other threads), so every set's memory model is raised
    by the same amount (never lowered). Used to re-plan when measured memory drifts."""
    delta = max(0.0, float(measured_minus_predicted))
    out = []
    for cost in costs:
        out.append(cost.raised(delta))
    return out
