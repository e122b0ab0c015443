"""Probe steps: fit a :class:`MemoryModel` on real forward/backward passes before training.

The static bytes (parameters, buffers, gradients, optimizer state) come from exact
accounting (:func:`edgetrain.memory.report`); then forward/backward passes at micro-batch
1, 2, 4, ... are measured with a :class:`~edgetrain.adapt.meters.MemoryMeter` (RSS
high-water mark on CPU, allocator peak on CUDA) and their saved-for-backward bytes
counted, while the next size is predicted to fit. Each probe restores gradients,
buffers and the RNG, so probing does not change training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.adapt.measurements import BudgetFit, Probe, StaticBytes
from edgetrain.adapt.memory_model import MemoryModel, even_micro_batch
from edgetrain.adapt.meters import MemoryMeter
from edgetrain.memory import SavedTensorCounter, report, unique_bytes
from edgetrain.tasks import Task
from edgetrain.tasks.batch import sample_batch

__all__ = [
    "BudgetFit",
    "GradFreeing",
    "Probe",
    "StaticBytes",
    "accounted_model",
    "add_single",
    "fit_memory_model",
    "isolated",
    "measure_logical_batch",
    "missing_state_bytes",
    "probe_batch",
    "probe_step",
    "static_bytes",
]

log = logging.getLogger(__name__)

#: Each probe is this many times the last: half as many sizes as doubling (planning
#: time: every lever set is probed, each in its own forked copy on CPU), and the probe of
#: the final choice closes the gap between rungs.
LADDER = 4

#: A timed probe pass shorter than this runs again (the faster time counts): kernel
#: compilation on a size's first pass is a few ms per layer, a large share only of short
#: passes.
REPEAT_BELOW_S = 0.5

AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]
# which gradients a probe frees as soon as they are ready (see probe_step's free_grads)
GradFreeing = bool | Literal["accumulating"]
_T = TypeVar("_T")


def probe_batch(
    data: Dataset | DataLoader,
    size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Any:
    """The first ``size`` samples of ``data`` (repeated if it is shorter), as one CPU batch.

    Args:
        data: a map-style Dataset, or a DataLoader (its ``dataset`` and ``collate_fn``).
        size: samples in the batch.
        collate_fn: builds the batch from a Dataset's samples (None: ``default_collate``);
            a DataLoader brings its own.

    Raises:
        EdgeTrainError: an empty data set, or one without a length.
    """
    return sample_batch(data, size, collate_fn, repeat=True)


def _count(task: Task, batch: Any) -> int | torch.Tensor:
    """What the loss of ``batch`` averages over, as the loop divides by it."""
    total = task.count(batch)
    if isinstance(total, torch.Tensor):
        total = total.clamp(min=1)  # a batch whose every target is ignored
    return total


def isolated(meter: MemoryMeter | None, probes: Callable[[], _T], what: str) -> _T:
    """``probes()`` in a forked copy of the process where ``meter`` says that what probes
    leave resident would count against the budget (``isolate_probes``: the CPU meter; see
    :mod:`edgetrain.adapt.isolate`), else in this process."""
    if getattr(meter, "isolate_probes", False):
        from edgetrain.adapt.isolate import run_forked

        return run_forked(probes, what=what)
    return probes()


def static_bytes(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batch: Any,
    size: int = 1,
) -> StaticBytes:
    """Exact static bytes from one real step on the first ``size`` samples of ``batch``
    (restored afterwards). Any size gives the same bytes; probes pass the size they probe
    first, so that the step adds no kernels of a size training never runs."""
    n = task.size(batch)
    part = task.split(batch, 0, max(1, min(size, n))) if size < n else batch
    rep = report(model, optimizer, part, task=task)
    return StaticBytes(rep.param_bytes, rep.buffer_bytes, rep.grad_bytes, rep.optimizer_state_bytes)


def _state_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if optimizer is None:
        return []
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def missing_state_bytes(static: StaticBytes, optimizer: torch.optim.Optimizer | None) -> int:
    """Optimizer state a real step holds that the optimizer does not have yet (its first
    step creates it); probes add it to what they measure."""
    return max(0, static.optimizer_state_bytes - unique_bytes(_state_tensors(optimizer)))


class _Restore:
    """Gradients (the objects), buffers, training flags and RNG, put back after a probe."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())
        self.grads = [p.grad for p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.flags = [(m, m.training) for m in model.modules()]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for m, flag in self.flags:
            m.training = flag
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def probe_step(
    model: nn.Module,
    task: Task,
    batch: Any,
    *,
    meter: MemoryMeter | None,
    missing_bytes: int = 0,
    autocast: AutocastFactory = contextlib.nullcontext,
    micro_batch_size: int | None = None,
    evaluate: bool = False,
    context: AutocastFactory = contextlib.nullcontext,
    free_grads: GradFreeing = False,
    repeat: int = 1,
) -> Probe:
    """Training forward/backward on ``batch`` as the loop runs it, measured and undone.

    Args:
        model: the model (its gradients, buffers and RNG are restored).
        task: what the batch means (forward, loss sum and count, splitting).
        batch: one batch on the model's device, of any structure the task reads.
        meter: the memory meter (its window is reset first), or None.
        missing_bytes: bytes a real step would hold that this one does not (optimizer
            state not created yet); added to the measurement.
        autocast: the training's autocast context (so probes see its dtypes).
        micro_batch_size: split the batch into micro-batches and accumulate gradients as
            the training loop does (default: one pass over the whole batch).
        evaluate: also run an evaluation forward (no grad) of one micro-batch.
        context: entered around each forward inside ``autocast`` (an activation codec's
            saved-tensor hooks: :func:`edgetrain.memory.compress_activations`).
        free_grads: free each gradient as soon as it is accumulated when there is no
            accumulation (True), or also with accumulation ("accumulating": folded into
            SGD's momentum, :mod:`edgetrain.memory.fold`), as ``optimizer_in_backward``
            does after its step or its fold (the weights
            are not stepped: the probe's memory is that of the real step, its weights
            unchanged).
        repeat: run the pass up to this many times (gradients freed in between) while
            the passes are short (:data:`REPEAT_BELOW_S`); the peak is over all of them,
            the time the least: a size's first pass also compiles its kernels (oneDNN on
            CPU), which training pays once, not per step, and which weighs only on short
            passes.

    Raises:
        torch.OutOfMemoryError: as raised by the pass (after restoring).
    """
    n = task.size(batch)
    micro = n if micro_batch_size is None else max(1, min(micro_batch_size, n))
    total = _count(task, batch)
    saved = _Restore(model)
    for p in saved.params:
        p.grad = None
    handles = []
    if free_grads == "accumulating" or (free_grads and micro >= n):
        handles = [
            p.register_post_accumulate_grad_hook(_drop_grad)
            for p in saved.params
            if p.requires_grad
        ]
    if meter is not None:
        meter.reset_peak()
    try:
        model.train()
        seconds = math.inf
        with SavedTensorCounter(model) as counter:
            for run in range(max(1, repeat)):
                if run:
                    if seconds >= REPEAT_BELOW_S:
                        break
                    for p in saved.params:
                        p.grad = None
                started = time.perf_counter()
                for lo in range(0, n, micro):
                    part = task.split(batch, lo, min(lo + micro, n)) if micro < n else batch
                    with autocast(), context():
                        out = task.forward(model, part)
                    loss = task.loss_sum(out, part) / total
                    loss.backward()
                    del out, loss, part
                seconds = min(seconds, time.perf_counter() - started)
        if evaluate:
            model.eval()
            with torch.no_grad(), autocast():
                task.forward(model, task.split(batch, 0, micro) if micro < n else batch)
        measured = meter.peak_bytes() if meter is not None else None
    finally:
        for handle in handles:
            handle.remove()
        saved.restore()
    return Probe(
        micro_batch_size=micro,
        saved_bytes=counter.peak_bytes,
        measured_bytes=None if measured is None else measured + missing_bytes,
        seconds=seconds,
    )


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


def measure_logical_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batch: Any,
    micro_batch_size: int,
    *,
    static: StaticBytes,
    meter: MemoryMeter,
    autocast: AutocastFactory = contextlib.nullcontext,
    context: AutocastFactory = contextlib.nullcontext,
    free_grads: GradFreeing = False,
) -> Probe:
    """One whole logical ``batch`` as the loop runs it at ``micro_batch_size``
    (accumulated micro-batches, the remainder included, then an evaluation forward),
    measured and undone: how a chosen micro-batch is checked before training starts.
    ``static`` is the :func:`static_bytes` of the model (for optimizer state a real step
    would hold and this one does not have yet)."""
    return probe_step(
        model,
        task,
        batch,
        meter=meter,
        missing_bytes=missing_state_bytes(static, optimizer),
        autocast=autocast,
        micro_batch_size=micro_batch_size,
        evaluate=True,
        context=context,
        free_grads=free_grads,
    )


def _needs_single(
    memory: MemoryModel, limit_bytes: float | None, meter: MemoryMeter | None, start: int, size: int
) -> bool:
    """Whether micro-batch 1 must be measured: it is allowed, the probes never ran it, and
    the line says 2 does not fit under ``limit_bytes`` (then 1 is the only choice, and
    the prediction there decides between a plan and exit 2); None: whatever the limit."""
    if meter is None or start > 1 or size < 2:
        return False
    return limit_bytes is None or memory.predict_bytes(2) > limit_bytes


def _model(
    static: StaticBytes,
    probes: Sequence[Probe],
    *,
    cautious: bool = False,
    overhead_bytes: float = 0.0,
) -> MemoryModel:
    """Upper envelope of the probes, raised by ``overhead_bytes`` (what a whole logical
    batch holds beyond a single pass); slope from the last four probes, at least the saved
    bytes per sample (x 2 when ``cautious``: backward temporaries reach about that on CPU)."""
    last = probes[-1]
    floor = last.saved_bytes / last.micro_batch_size
    points = [(p.micro_batch_size, p.peak_bytes(static) + overhead_bytes) for p in probes]
    slope = MemoryModel.fit(points[-4:], per_sample_floor=floor).per_sample_bytes
    if cautious:
        slope = max(slope, 2 * floor)
    return MemoryModel.envelope(points, slope, static_floor=static.total_bytes)


def accounted_model(static: StaticBytes, probes: Sequence[Probe]) -> MemoryModel:
    """The model from exact accounting alone: static bytes + saved bytes per sample."""
    return MemoryModel.fit(
        [(p.micro_batch_size, static.total_bytes + p.saved_bytes) for p in probes],
        static_floor=static.total_bytes,
    )


def fit_memory_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batch: Any,
    *,
    meter: MemoryMeter | None,
    limit_bytes: float | None,
    start: int = 1,
    autocast: AutocastFactory = contextlib.nullcontext,
    is_oom: Callable[[BaseException], bool] | None = None,
    context: AutocastFactory = contextlib.nullcontext,
    free_grads: GradFreeing = False,
    timed: bool = False,
    isolate: bool = True,
    single: bool = True,
) -> BudgetFit:
    """Probe at ``start`` (at least 2), 4x, 16x, ... (:data:`LADDER`) while the next size
    is cautiously predicted to fit.

    One unmeasured pass first takes the one-time costs (lazy allocations). Doubling stops
    before a size whose prediction, with at least twice the saved bytes per sample as
    slope, passes ``limit_bytes``. A calibration pass then runs the whole probe batch at
    the last size as the loop would (accumulating micro-batches, then an evaluation
    forward): what it holds beyond the single pass raises the model. One more probe
    checks the largest size that model allows below the next rung, evened out as training
    runs it (:func:`~edgetrain.adapt.memory_model.even_micro_batch`), so the final
    choice is measured, not extrapolated, and no probe is larger than it. Where that
    model says micro-batch 2 does not fit and 1 is allowed (``start`` 1), a whole logical
    batch at 1 is measured too (:attr:`MemoryModel.single_bytes`): a batch of one takes
    other kernels, and the line through the larger sizes over-predicts it.

    Args:
        model, optimizer: what will be trained (restored after each probe).
        task: what the batch means (see :class:`~edgetrain.tasks.Task`).
        batch: a probe batch of one logical batch (the largest possible micro-batch), on
            the model's device.
        meter: measures each probe; None = exact accounting only.
        limit_bytes: the most a micro-batch may need (None: probe up to the batch size).
        start: the first micro-batch size.
        autocast: the training's autocast context.
        is_oom: whether an exception is an out-of-memory error (default: torch's); such
            a probe ends probing and sets ``ceiling``.
        context: entered around each forward (an activation codec's hooks).
        free_grads: passes without accumulation free each gradient when it is ready
            (``optimizer_in_backward``; see :func:`probe_step`).
        timed: the probes' times will be compared (the planner): short passes run twice
            and keep the faster (``probe_step``'s ``repeat``), so a size's one-time kernel
            compilation is not timed.
        isolate: probe in a forked copy of the process where the meter asks for it
            (:func:`isolated`); False when the caller already is one.
        single: measure micro-batch 1 where needed (above); False when the caller does
            (in a copy of its own).
    """

    def with_single(fit: BudgetFit, in_a_copy: bool) -> BudgetFit:
        if not single:
            return fit
        return add_single(
            fit,
            model,
            optimizer,
            task,
            batch,
            meter=meter,
            limit_bytes=limit_bytes,
            start=start,
            autocast=autocast,
            context=context,
            free_grads=free_grads,
            isolate=in_a_copy,
        )

    if isolate:
        fit = isolated(
            meter,
            lambda: fit_memory_model(
                model,
                optimizer,
                task,
                batch,
                meter=meter,
                limit_bytes=limit_bytes,
                start=start,
                autocast=autocast,
                is_oom=is_oom,
                context=context,
                free_grads=free_grads,
                timed=timed,
                isolate=False,
                single=False,
            ),
            "probe steps",
        )
        # micro-batch 1 in a copy of its own (after the ladder, this one holds its code)
        return with_single(fit, in_a_copy=True)
    oom = is_oom or (lambda exc: isinstance(exc, torch.OutOfMemoryError))
    size = task.size(batch)
    # never probe at 1 when 2 is possible: a batch of one can take other kernels and
    # measure far less than training at 1 needs (micro-batch 1 is extrapolated instead)
    micro = max(1, min(max(start, 2), size))
    static = static_bytes(model, optimizer, task, batch, size=micro)
    missing = missing_state_bytes(static, optimizer)
    probes: list[Probe] = []
    ceiling: int | None = None

    def run(micro: int, whole_batch: bool = False) -> Probe | None:
        nonlocal ceiling
        n = size if whole_batch else micro
        try:
            return probe_step(
                model,
                task,
                task.split(batch, 0, n) if n < size else batch,
                meter=meter,
                missing_bytes=missing,
                autocast=autocast,
                micro_batch_size=micro,
                evaluate=whole_batch,
                context=context,
                free_grads=free_grads,
                repeat=2 if timed and not whole_batch else 1,
            )
        except Exception as exc:
            if not oom(exc) or not probes:
                raise
            ceiling = micro if ceiling is None else min(ceiling, micro)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.info("probe at micro-batch %d ran out of memory", micro)
            return None

    def one(micro: int) -> bool:
        probe = run(micro)
        if probe is not None:
            probes.append(probe)
        return probe is not None

    first = task.split(batch, 0, micro) if micro < size else batch
    probe_step(model, task, first, meter=None, autocast=autocast, context=context)  # warm-up
    del first
    one(micro)
    while True:
        nxt = min(size, micro * LADDER)
        cautious = _model(static, probes, cautious=True)
        if nxt == micro or (limit_bytes is not None and cautious.predict_bytes(nxt) > limit_bytes):
            break
        if not one(nxt):
            break
        micro = nxt
    limit = math.inf if limit_bytes is None else limit_bytes

    def within(overhead: float = 0.0) -> int:
        """The largest size probed within the limit (0: none)."""
        return max(
            (p.micro_batch_size for p in probes if p.peak_bytes(static) + overhead <= limit),
            default=0,
        )

    # a whole logical batch at the largest size within the limit (else the last): what
    # training holds beyond a single pass
    calibrated = within() or micro
    calibration = run(calibrated, whole_batch=True)
    overhead = 0.0
    if calibration is not None:
        one_pass = next(p for p in probes if p.micro_batch_size == calibrated)
        overhead = max(0.0, calibration.peak_bytes(static) - one_pass.peak_bytes(static))
    if limit_bytes is not None:
        # the largest size the model allows below the next rung, evened out as training
        # runs it (same steps, less memory, one size of step), measured unless it was
        upper = min(size, LADDER * micro, (ceiling or size + 1) - 1)
        candidate = _model(static, probes, overhead_bytes=overhead).largest_micro_batch(
            limit, upper
        )
        candidate = even_micro_batch(size, candidate)
        probed = {p.micro_batch_size for p in probes}
        if candidate > within(overhead) and candidate not in probed:
            one(candidate)
    if meter is not None:
        meter.reset_peak()
    memory = _model(static, probes, overhead_bytes=overhead)
    measured = [
        p.measured_bytes - missing
        for p in [*probes, *([calibration] if calibration else [])]
        if p.measured_bytes is not None
    ]
    fit = BudgetFit(
        static,
        tuple(probes),
        memory,
        ceiling,
        within(overhead),
        calibration,
        overhead,
        max(measured, default=None),
    )
    return with_single(fit, in_a_copy=False)


def add_single(
    fit: BudgetFit,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    task: Task,
    batch: Any,
    *,
    meter: MemoryMeter | None,
    limit_bytes: float | None,
    start: int = 1,
    autocast: AutocastFactory = contextlib.nullcontext,
    context: AutocastFactory = contextlib.nullcontext,
    free_grads: GradFreeing = False,
    prepare: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    always: bool = False,
    isolate: bool = True,
) -> BudgetFit:
    """``fit`` (made with ``single=False``) with micro-batch 1 measured where it needs it
    (see :func:`fit_memory_model`), in a forked copy of its own where the meter asks for
    it (``isolate``): after larger sizes' kernels the copy would count their library
    code too. ``prepare``: entered around the probe (a lever set applied); what it
    yields, if not None, is the forward's context (the set's codec). ``always``: also
    where 2 fits (the smallest budget any plan reaches is asked for)."""
    if limit_bytes is None and not always:
        return fit
    limit = None if always else limit_bytes
    if not _needs_single(fit.memory, limit, meter, start, task.size(batch)):
        return fit

    def probe() -> Probe | None:
        """A whole logical batch at micro-batch 1, as the loop runs it (None: it failed)."""
        assert meter is not None  # _needs_single
        try:
            with prepare() as forward_context:
                return measure_logical_batch(
                    model,
                    optimizer,
                    task,
                    batch,
                    1,
                    static=fit.static,
                    meter=meter,
                    autocast=autocast,
                    context=forward_context or context,
                    free_grads=free_grads,
                )
        except (RuntimeError, ValueError) as exc:  # out of memory; batch-norm's one value
            log.info("no probe at micro-batch 1 (%s); it is extrapolated", exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None
        finally:
            meter.reset_peak()

    at_one = isolated(meter, probe, "probe at micro-batch 1") if isolate else probe()
    return _with_single(fit, at_one, limit_bytes, missing_state_bytes(fit.static, optimizer))


def _with_single(
    fit: BudgetFit, at_one: Probe | None, limit_bytes: float | None, missing_bytes: int
) -> BudgetFit:
    """``fit`` with micro-batch 1 measured (:meth:`MemoryModel.with_single`)."""
    if at_one is None or at_one.measured_bytes is None:
        return fit
    memory = fit.memory.with_single(at_one.peak_bytes(fit.static))
    verified = fit.verified
    if limit_bytes is not None and memory.predict_bytes(1) <= limit_bytes:
        verified = max(verified, 1)
    peak = max(fit.probe_peak_bytes or 0, at_one.measured_bytes - missing_bytes)
    return replace(fit, memory=memory, verified=verified, probe_peak_bytes=peak, single=at_one)
