"""Measure what each memory lever costs on this model and device, and plan a budget.

For every candidate :class:`~edgetrain.adapt.planner.Levers` set the levers are applied
(:func:`apply_levers`: recomputation on the model, an activation codec's saved-tensor
hooks around the forward) and :func:`~edgetrain.adapt.probe.fit_memory_model` probes
short forward/backward steps at growing micro-batches, measured by the run's meter and
timed; each probe is undone (gradients, buffers, RNG), so probing changes nothing. The
optimizer step inside backward is a set of its own only where it can act (no clipping,
fp32/bf16; with gradient accumulation only where SGD's momentum takes the folded
gradients, :mod:`edgetrain.memory.fold`): its memory is the plain set's less what a
probe with every gradient freed as soon as it is ready saves (at the whole batch, or
over three micro-batches where it folds; the weights are not stepped), its time is the
plain set's (not probed: a probe may not change the weights).
:func:`~edgetrain.adapt.planner.make_plan` then chooses. See docs/design.md, "Memory
planner"::

    plan = plan_memory(model, optimizer, task, batch, budget_bytes=300 << 20,
                       meter=make_meter(device))
    handle = apply_levers(model, plan.levers)
    with handle.forward_context():
        loss = task.loss_sum(task.forward(model, part), part) / count
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from edgetrain.adapt.measurements import BudgetFit
from edgetrain.adapt.meters import MemoryMeter
from edgetrain.adapt.planner import LeverCost, Levers, Plan, TimeModel, make_plan
from edgetrain.adapt.probe import (
    AutocastFactory,
    add_single,
    fit_memory_model,
    isolated,
    missing_state_bytes,
    probe_step,
    static_bytes,
)
from edgetrain.errors import EdgeTrainError
from edgetrain.memory.fold import fold_refusal
from edgetrain.memory.recompute import find_blocks
from edgetrain.tasks import Task

__all__ = [
    "BATCH_NORM_MIN_MICRO",
    "LOSSY_CANDIDATES",
    "SPARSE_CANDIDATES",
    "LeverHandle",
    "MeasuredCosts",
    "apply_levers",
    "candidate_levers",
    "measure_lever_costs",
    "plan_memory",
]

log = logging.getLogger(__name__)

# the lossy codecs a plan may choose with budget.lossy: allow (int4/int2 lose accuracy)
LOSSY_CANDIDATES = ("bf16", "int8")
# the shares of the parameters a fine-tuning plan may update (budget.lossy: allow)
SPARSE_CANDIDATES = (0.5, 0.25, 0.1)
# the smallest micro-batch for a model with batch-norm in training mode: batch statistics
# of fewer samples are noisy and cost accuracy (Wu and He 2018, "Group Normalization":
# BN's error rises steeply below 16 samples per batch); adapt.min_micro_batch_size: auto
BATCH_NORM_MIN_MICRO = 16


def auto_min_micro(model: nn.Module) -> int:
    """``adapt.min_micro_batch_size: auto``: :data:`BATCH_NORM_MIN_MICRO` for a model with a
    batch-norm layer that normalises by batch statistics in training, else 1."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.track_running_stats or module.training
        ):
            return BATCH_NORM_MIN_MICRO
    return 1


def static_rows(
    model: nn.Module, task: Task, example: Any, share: float, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The rows a static sparse update of ``share`` of the trainable parameters trains:
    the selection ``sparse_update: {scheme: static, budget: share}`` makes before
    training (from the weights as they are now; see :mod:`edgetrain.sparse`)."""
    from edgetrain.config.sparse import SparseUpdateConfig
    from edgetrain.sparse import (
        ParamCost,
        SelectionPlanner,
        describe_model,
        resolve_budget,
        weight_norms,
    )

    cfg = SparseUpdateConfig(scheme="static", budget=share)
    units = describe_model(model, example, task.forward)
    budget = resolve_budget(share, units.total_params)
    planner = SelectionPlanner(
        cfg, units, ParamCost(units), budget.limit, seed, weight_norms(model, units)
    )
    return dict(planner.static().rows)


def _use_running_stats(module: nn.Module, args: Any) -> None:
    module.training = False


class LeverHandle:
    """Levers applied to a model: :meth:`forward_context` around each training forward,
    :meth:`remove` to undo (the model's forwards and hooks as before)."""

    def __init__(
        self,
        model: nn.Module,
        levers: Levers,
        *,
        seed: int | None = 0,
        skip: Collection[str] = (),
        task: Task | None = None,
        example: Callable[[], Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        rows: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        from edgetrain.memory import compress_activations
        from edgetrain.memory.recompute import apply_recompute
        from edgetrain.sparse import RowFreezer

        self.levers = levers
        self.rows: dict[str, torch.Tensor] | None = None
        self._freezer: RowFreezer | None = None
        self._norm_hooks: list[Any] = []
        self._model: nn.Module | None = None
        if levers.sparse < 1 and "sparse" not in skip:
            if rows is None:
                if task is None or example is None:
                    raise ValueError("a sparse lever needs the task and an example batch")
                rows = static_rows(model, task, example(), levers.sparse, seed=seed or 0)
            self.rows = dict(rows)
            self._freezer = RowFreezer(model, optimizer)
            self._freezer.apply(self.rows)
            # batch-norm normalises with its running statistics (frozen with the weights,
            # as fine-tuning with small batches does): the micro-batch changes nothing
            self._norm_hooks = [
                m.register_forward_pre_hook(_use_running_stats)
                for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            ]
            self._model = model
        self._recompute = (
            apply_recompute(model, levers.recompute)
            if levers.recompute != "none" and "recompute" not in skip
            else None
        )
        self.codec = (
            compress_activations(model, levers.activations, seed=seed)
            if levers.activations != "none" and "activations" not in skip
            else None
        )
        self._state: Any = None  # a LowPrecisionState
        if levers.state != "fp32" and "state" not in skip and optimizer is not None:
            from edgetrain.memory.optimizer_state import STATE_DTYPES, LowPrecisionState

            self._state = LowPrecisionState(optimizer, STATE_DTYPES[levers.state], seed=seed or 0)

    @property
    def low_state(self) -> Any:
        """The :class:`~edgetrain.memory.optimizer_state.LowPrecisionState` these levers
        installed (its rounding generators go into checkpoints), or None."""
        return self._state

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """The codec's hooks (a null context without a codec)."""
        return self.codec if self.codec is not None else contextlib.nullcontext()

    @property
    def blocks(self) -> list[str]:
        return list(self._recompute.names) if self._recompute is not None else []

    def remove(self) -> None:
        if self._freezer is not None:
            self._freezer.remove()
            self._freezer = None
        for hook in self._norm_hooks:
            hook.remove()
        self._norm_hooks = []
        if self._model is not None:  # norm layers back in the model's mode
            self._model.train(self._model.training)
            self._model = None
        if self._recompute is not None:
            self._recompute.remove()
            self._recompute = None
        if self._state is not None:
            self._state.remove(restore=True)
            self._state = None
        self.codec = None

    def __enter__(self) -> LeverHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_levers(model: nn.Module, levers: Levers, **options: Any) -> LeverHandle:
    """Apply ``levers`` and return the handle. Not the optimizer step in backward (the
    trainer's ``optimizer_in_backward`` does that), nor the levers named in ``skip``
    ("recompute", "activations": already applied by other means). A sparse lever selects
    its rows from ``example()`` (a small batch, run by ``task``) unless ``rows`` gives them
    (a resumed run: the selection made before training) and freezes the rest; with
    ``optimizer`` its steps leave frozen rows alone; low-precision optimizer state
    (``levers.state``) is kept on ``optimizer`` (given) until :meth:`LeverHandle.remove`
    casts it back. ``options``: :class:`LeverHandle`'s
    keywords (``seed``, ``skip``, ``task``, ``example``, ``optimizer``, ``rows``)."""
    return LeverHandle(model, levers, **options)


def candidate_levers(
    *,
    model: nn.Module,
    activations: str | None = None,
    recompute: str | None = None,
    optimizer_in_backward: bool | None = None,
    lossy: bool = False,
    step_in_backward_ok: bool = True,
    sparse: Sequence[float] = (),
    state: str | None = None,
    low_state: bool | None = None,
) -> list[Levers]:
    """The lever sets a plan considers. A lever given (not None) is fixed to that value;
    recomputation only where the model has blocks; the optimizer step in backward only
    where ``step_in_backward_ok`` (no clipping, no fp16 scaling, no sparse updates...);
    ``sparse``: shares of the parameters a static sparse update may train (fine-tuning),
    each a set of its own with the fixed levers; ``state``: the optimizer state's dtype
    fixed, else each full-update set also with bf16 state where ``low_state`` (default:
    ``lossy``). Sets are ordered from the most
    memory-saving to plain (probes then run from the smallest peak up, so a CPU's
    resident memory reflects each set's own)."""
    if activations is not None:
        codecs = [activations]
    else:
        codecs = ["none", "lossless", *(LOSSY_CANDIDATES if lossy else ())]
    if recompute is not None:
        recomputes = [recompute]
    else:
        recomputes = ["none", "all"] if find_blocks(model) else ["none"]
    if optimizer_in_backward is not None:
        steps = [optimizer_in_backward]
    else:
        steps = [False, True] if step_in_backward_ok else [False]
    if state is not None:
        states = [state]
    else:
        states = ["fp32", "bf16"] if (lossy if low_state is None else low_state) else ["fp32"]
    sets = [
        Levers(c, r, s, state=t) for c in codecs for r in recomputes for s in steps for t in states
    ]
    base = Levers(
        activations or "none", recompute or "none", bool(optimizer_in_backward), state=states[0]
    )
    # the step in backward skips the freezer's hooks; low-precision state would step
    # before them (edgetrain.train.features.optim_state)
    if not base.optimizer_in_backward and base.state == "fp32":
        sets += [replace(base, sparse=float(f)) for f in sparse if 0 < f < 1]
    rank = {"none": 0, "lossless": 1, "bf16": 2, "fp16": 2, "int8": 3, "int4": 4, "int2": 5}
    return sorted(
        sets,
        key=lambda lv: (
            lv.sparse,
            -(lv.recompute != "none"),
            -rank.get(lv.activations, 1),
            -int(lv.optimizer_in_backward),
            -int(lv.state != "fp32"),
        ),
    )


@dataclass(frozen=True)
class MeasuredCosts:
    """Each set's cost and the probes' fit behind it (the chosen set's fit goes to the
    budget controller, so training starts from the planner's measurements)."""

    costs: tuple[LeverCost, ...]
    fits: dict[Levers, BudgetFit]


def _time_model(fit: BudgetFit, batch_size: int) -> TimeModel:
    """Seconds per step against the micro-batch, fitted to the timed probes and, where
    micro-batch 1 was measured (a whole logical batch of ``batch_size`` steps), to its
    mean step: the line through 2, 8, ... alone can put a step's fixed cost at 0 and
    predict micro-batch 1 as fast as the whole batch."""
    points = [(p.micro_batch_size, p.seconds) for p in fit.probes if p.seconds is not None]
    single = fit.single
    if single is not None and single.seconds is not None and batch_size > 0:
        points.append((1, single.seconds / batch_size))
    return TimeModel.fit(points) if points else TimeModel(0.0, 0.0)


@contextlib.contextmanager
def _applied(
    model: nn.Module,
    levers: Levers,
    seed: int | None,
    skip: Collection[str] = (),
    task: Task | None = None,
    batch: Any = None,
) -> Iterator[LeverHandle]:
    example = None
    if task is not None and batch is not None:
        example = lambda: task.split(batch, 0, min(2, task.size(batch)))  # noqa: E731
    handle = apply_levers(model, levers, seed=seed, skip=skip, task=task, example=example)
    try:
        yield handle
    finally:
        handle.remove()


@contextlib.contextmanager
def _forward_context(
    model: nn.Module,
    levers: Levers,
    seed: int | None,
    skip: Collection[str],
    task: Task,
    batch: Any,
) -> Iterator[AutocastFactory]:
    """``levers`` applied; yields the forward's context (the codec's hooks)."""
    with _applied(model, levers, seed, skip, task, batch) as handle:
        yield handle.forward_context


def measure_lever_costs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batch: Any,
    candidates: Sequence[Levers],
    *,
    meter: MemoryMeter | None,
    limit_bytes: float | None,
    start: int = 1,
    autocast: AutocastFactory = contextlib.nullcontext,
    seed: int | None = 0,
    progress: Callable[[Levers], None] | None = None,
    skip: Collection[str] = (),
    known: dict[Levers, BudgetFit] | None = None,
    always_single: bool = False,
) -> MeasuredCosts:
    """Probe every set in ``candidates`` (module doc); ``batch`` is one logical batch on
    the model's device. Sets with the optimizer step in backward reuse the probes of
    the same set without it, plus one probe at the whole batch with gradients freed.
    ``skip``: levers already in effect (not applied again); ``known``: fits measured
    before (reused, not probed again); ``always_single``: micro-batch 1 measured for
    every set, also where 2 fits ``limit_bytes`` (for the smallest budget any plan
    reaches; :func:`~edgetrain.adapt.probe.add_single`)."""
    fits: dict[Levers, BudgetFit] = dict(known or {})
    size = task.size(batch)
    # low-precision optimizer state not yet in effect: derived from its fp32 set
    derive = "state" not in skip

    def probed(lv: Levers) -> Levers:
        return replace(lv, optimizer_in_backward=False, state="fp32" if derive else lv.state)

    order = [lv for lv in candidates if probed(lv) == lv]
    for lv in candidates:
        base = probed(lv)
        if base not in order:
            order.append(base)
    reference = next(iter(fits.values()), None)  # the first set measured
    for levers in order:
        if levers in fits:
            continue
        if progress is not None:
            progress(levers)
        # every set runs the calibration pass (what a whole logical batch holds beyond a
        # single pass: it differs by set, and a plan's smallest budget must hold when the
        # controller measures the chosen set again); the sets after the first start
        # probing near the first one's choice (fewer probes)
        first = start
        if reference is not None and limit_bytes is not None:
            reach = reference.memory.largest_micro_batch(limit_bytes, size)
            # a size the first set probed too: their times compare at the same size
            shared = [p.micro_batch_size for p in reference.probes]
            first = max([start, *(m for m in shared if m <= reach // 2)])

        def probe_set(levers: Levers = levers, first: int = first) -> BudgetFit | None:
            with contextlib.ExitStack() as stack:
                try:
                    handle = stack.enter_context(_applied(model, levers, seed, skip, task, batch))
                except EdgeTrainError as exc:  # a share below what the head alone costs
                    log.info("memory plan: %s not considered: %s", levers.describe(), exc)
                    return None
                return fit_memory_model(
                    model,
                    optimizer,
                    task,
                    batch,
                    meter=meter,
                    limit_bytes=limit_bytes,
                    start=min(first, size),
                    autocast=autocast,
                    context=handle.forward_context,
                    timed=True,
                    isolate=False,  # already in its own copy
                    single=False,  # in a copy of its own, below
                )

        # each set in its own copy of the process: what one leaves behind is not measured
        # as another's (see edgetrain.adapt.isolate)
        fit = isolated(meter, probe_set, f"probe steps of {levers.describe()}")
        if fit is None:
            continue
        fit = add_single(
            fit,
            model,
            optimizer,
            task,
            batch,
            meter=meter,
            limit_bytes=limit_bytes,
            start=start,  # the smallest allowed, wherever its ladder began
            autocast=autocast,
            prepare=lambda levers=levers: _forward_context(model, levers, seed, skip, task, batch),
            always=always_single,
        )
        fits[levers] = fit
        if reference is None:
            reference = fit

    def cost_of(levers: Levers) -> LeverCost:
        fit = fits[levers]
        return LeverCost(levers, fit.memory, _time_model(fit, size), fit.ceiling)

    costs = [cost_of(lv) for lv in order if lv in candidates and lv in fits]
    low = [lv for lv in candidates if derive and lv.state != "fp32"]
    saving = _state_saving(optimizer, {lv.state for lv in low})
    grads: tuple[int, int] | None = None  # the same for every set: computed once, when needed
    # the step in backward runs with accumulation too where the optimizer folds the
    # micro-batches' gradients into its momentum (edgetrain.memory.fold)
    folds = optimizer is not None and fold_refusal(optimizer) is None
    for levers in candidates:
        if not levers.optimizer_in_backward or (derive and levers.state != "fp32"):
            continue
        if _base(levers) not in fits:
            continue
        base = cost_of(_base(levers))
        whole_runs = base.ceiling is None or base.ceiling > size
        accumulates = folds and levers.state == "fp32"
        if not whole_runs and not accumulates:
            continue  # the whole batch does not run: no step in backward
        if grads is None:
            grads = isolated(
                meter,
                lambda: _accounted_grad_free(model, optimizer, task, batch),
                "the gradients' exact bytes",
            )
        # (less the state's saving where a low-precision variant of the set is a candidate)
        lower = max(
            (saving[lv.state] for lv in low if replace(lv, state="fp32") == levers), default=0
        )
        # the pass measured with gradients freed: the whole batch; where the set folds,
        # the largest micro-batch predicted to fit with every gradient freed
        micro = size
        if accumulates and limit_bytes is not None:
            upper = size if whole_runs else base.ceiling - 1  # type: ignore[operator]
            fitting = base.memory.raised(-grads[0] - lower).largest_micro_batch(limit_bytes, upper)
            micro = min(max(start, fitting), upper)
        # the most freeing can save (exact): with accumulation every gradient (plain
        # accumulation keeps them all from the first micro-batch on); in one pass over the
        # whole batch all but the largest parameter's (which must exist at once)
        accounted = grads[0] if micro < size else max(0, grads[0] - grads[1])
        hopeless = (
            limit_bytes is not None
            and base.predict_bytes(micro, size) - accounted - lower > limit_bytes
        )
        if hopeless:
            # not even every gradient freed fits: not an option, and not a 'smallest
            # reachable' budget either (that would rest on a pass never measured)
            continue
        if progress is not None:
            progress(levers)
        free, peak = isolated(
            meter,
            lambda levers=levers, accounted=accounted, micro=micro: _grad_free_bytes(
                model, task, batch, levers, meter, autocast, seed, skip, accounted, micro
            ),
            f"probe steps of {levers.describe()}",
        )
        whole = peak if micro >= size else None
        if whole is not None:  # the state a real step holds that the probe did not
            whole += missing_state_bytes(fits[_base(levers)].static, optimizer)
        costs.append(
            LeverCost(
                levers,
                base.memory,
                base.time,
                base.ceiling,
                grad_free_bytes=free,
                time_measured=False,
                whole_bytes=whole,
                accumulates=accumulates,
            )
        )
    by_set = {c.levers: c for c in costs}
    for levers in low:  # the fp32 set's memory less the state's saving, its time
        exact = replace(levers, state="fp32")  # measured in this call, or known before
        full = by_set.get(exact) or (cost_of(exact) if exact in fits else None)
        if full is None:
            continue
        # (the step in backward does not fold into a low-precision state)
        costs.append(
            replace(
                full.raised(-saving[levers.state]),
                levers=levers,
                time_measured=False,
                accumulates=False,
            )
        )
    rank = {lv: i for i, lv in enumerate(candidates)}
    costs.sort(key=lambda c: rank[c.levers])
    return MeasuredCosts(tuple(costs), {lv: fits[lv] for lv in order if lv in fits})


def _base(levers: Levers) -> Levers:
    return replace(levers, optimizer_in_backward=False)


def _state_saving(
    optimizer: torch.optim.Optimizer | None, dtypes: Collection[str]
) -> dict[str, int]:
    """Bytes of optimizer state each low-precision dtype saves (exact: see
    :func:`~edgetrain.train.features.optim_state.state_saving_bytes`). Its memory is static:
    it lowers every micro-batch's peak alike, so no probe is needed (the controller
    measures the chosen set again before training)."""
    from edgetrain.memory.optimizer_state import STATE_DTYPES, state_saving_bytes

    if optimizer is None:
        return dict.fromkeys(dtypes, 0)
    return {name: state_saving_bytes(optimizer, STATE_DTYPES[name]) for name in dtypes}


def _accounted_grad_free(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, task: Task, batch: Any
) -> tuple[int, int]:
    """Exact gradient bytes and the largest parameter's."""
    static = static_bytes(model, optimizer, task, batch, size=2)
    params = [p for p in model.parameters() if p.requires_grad]
    largest = max((p.numel() * p.element_size() for p in params), default=0)
    return static.grad_bytes, largest


def _grad_free_bytes(
    model: nn.Module,
    task: Task,
    batch: Any,
    levers: Levers,
    meter: MemoryMeter | None,
    autocast: AutocastFactory,
    seed: int | None,
    skip: Collection[str],
    accounted: int,
    micro: int,
) -> tuple[int, int | None]:
    """Bytes the logical batch at ``micro`` saves when gradients are freed as they are
    ready (at the whole batch: the step in backward; below it: folded into SGD's
    momentum, so every micro-batch after the first no longer runs beside a whole set of
    gradients): measured (a probe with and without freeing) where the meter reads, else
    ``accounted`` (the exact bytes); and the peak measured with freeing (None: no
    reading)."""
    if meter is None:
        return accounted, None
    peaks = []
    size = task.size(batch)
    accumulating = micro < size
    # three micro-batches show accumulation's peak (the gradients kept from the first)
    part = task.split(batch, 0, 3 * micro) if 3 * micro < size else batch
    with _applied(model, _base(levers), seed, skip, task, batch) as handle:
        for free in (False, True):
            probe = probe_step(
                model,
                task,
                part,
                meter=meter,
                autocast=autocast,
                micro_batch_size=micro,
                context=handle.forward_context,
                free_grads="accumulating" if free and accumulating else free,
            )
            peaks.append(probe.measured_bytes)
    if peaks[0] is None or peaks[1] is None:
        return accounted, None
    # never more than the gradients' bytes: the rest is the meter's noise
    return max(0, min(accounted, peaks[0] - peaks[1])), peaks[1]


def plan_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batch: Any,
    *,
    budget_bytes: int,
    lossy: bool = False,
    meter: MemoryMeter | None = None,
    limit_frac: float = 0.9,
    min_micro: int = 1,
    autocast: AutocastFactory = contextlib.nullcontext,
    candidates: Sequence[Levers] | None = None,
    seed: int | None = 0,
) -> Plan:
    """Measure the candidate sets' costs on ``batch`` (one logical batch, on the model's
    device) and plan ``budget_bytes`` (see :func:`~edgetrain.adapt.planner.make_plan`).

    Raises:
        PlanError: nothing fits (``exc.smallest_bytes``: the smallest budget reached).
    """
    sets = (
        list(candidates) if candidates is not None else candidate_levers(model=model, lossy=lossy)
    )
    measured = measure_lever_costs(
        model,
        optimizer,
        task,
        batch,
        sets,
        meter=meter,
        limit_bytes=limit_frac * budget_bytes,
        start=min_micro,
        autocast=autocast,
        seed=seed,
    )
    return make_plan(
        measured.costs,
        budget_bytes=budget_bytes,
        batch_size=task.size(batch),
        limit_frac=limit_frac,
        min_micro=min_micro,
    )
