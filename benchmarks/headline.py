"""The headline table: memory, step time and accuracy of edgetrain's plan against plain PyTorch.

    python benchmarks/headline.py --quick --csv headline.csv
    python benchmarks/headline.py --csv headline.csv --json headline.json      # full: hours
    python benchmarks/headline.py --models resnet18 --methods pytorch checkpoint lossless

Workloads: ``resnet18``, ``mobilenetv2`` and ``vgg11`` on digits at 32x32x3 (10
classes, batch 128); the zoo's tiny ``gpt`` on ``pycorpus`` (200 kB, windows of 64
bytes, d_model 128, 2 layers, 4 heads, batch 32); and ``transfer``, the fine-tuning step
of the transfer example (``examples/transfer_finetune.yaml``: mobilenetv2 at 16x16 on the
digits 5-9, batch 32, from the weights ``examples/transfer_pretrain.yaml`` trains on the
digits 0-4; pre-trained here once, offline, under ``--out``; every parameter fine-tuned:
the example's sparse update is not one of the levers measured here). Every method trains
the same model (same seed) on the same batches with SGD (lr 0.01, momentum 0.9):

* ``pytorch``: the plain loop on the whole batch (the reference of every ratio; on the
  CPU, without a memory limit, the whole batch is plain PyTorch's largest micro-batch);
* ``checkpoint``: ``torch.utils.checkpoint`` (non-reentrant) around every block
  (``edgetrain.memory.recompute.apply_recompute(model, "all")``);
* ``edgetrain:F``: edgetrain's memory plan for a budget of F x ``pytorch``'s measured
  process memory (peak RSS growth) of the same run (``edgetrain:0.5``, ``edgetrain:0.25``);
* ``edgetrain:checkpoint``: the plan for a budget of ``checkpoint``'s measured memory (the
  equal-memory comparison with ``checkpoint``);
* ``edgetrain:min``: the plan at the smallest budget the planner reaches (its
  ``smallest_bytes``), against
* ``pytorch:mb1``: plain PyTorch's floor, micro-batches of 1 sample accumulated over the
  batch;
* more levers, one at a time: ``accumulate`` (micro-batches of 32, 8 for gpt and
  transfer), ``recompute+int8`` (every block recomputed and what it keeps compressed by
  the int8 codec), ``lossless`` (the lossless codec on every saved activation), ``int8``
  (the int8 codec on every saved activation, no recomputation:
  ``compress_activations(model, "int8")`` around the forward), ``optimizer_in_backward``
  (each parameter stepped by its own one-parameter SGD, ``per_parameter_optimizers``,
  in a ``register_post_accumulate_grad_hook`` and its gradient freed at once; a plan's
  step in backward with accumulation folds each micro-batch's gradients into SGD's
  momentum instead, ``edgetrain.memory.fold``, and steps after the last).

The plans: one planning subprocess per model measures every candidate lever set once
(``edgetrain.adapt.levers.measure_lever_costs``: probe steps at growing micro-batches up
to 0.9 x the largest budget asked for, as ``plan_memory`` probes; ``budget.lossy``: forbid
unless ``--lossy``) and ``edgetrain.adapt.planner.make_plan`` chooses for each budget
(``plan_memory`` is these two calls; one measurement serves every budget). With
``--low-precision-state`` every full-update set is also offered with its optimizer state
kept in bfloat16 (``optimizer_state: bf16``, the opt-in lever for the static floor; its
memory is the fp32 set's less the state's exact saving, its time the fp32 set's), taken
only where no exact set fits. Its time is the ``plan_s`` column. The planning never runs in a measured process: each ``edgetrain:*``
row's process applies the chosen plan (``apply_levers``: recomputation on the model, the
codec's saved-tensor hooks around each forward; the optimizer step in backward through
the ``optimizer_in_backward`` hooks; the micro-batch with gradient accumulation).

Each (model, method) runs in a fresh subprocess (glibc's ``MALLOC_MMAP_THRESHOLD_`` set
to 128 KiB so that RSS follows live memory, as in ``activation_memory.py``). The child
loads the data, takes its batches, runs one SGD step on a 2-element tensor (the first
optimizer imports ``torch._dynamo``: about 75 MiB of resident memory that is no
training's and that ``fit`` has loaded before its memory baseline too), then resets the
RSS high-water mark (``VmHWM`` through ``/proc/self/clear_refs``; ``ru_maxrss`` if that
is not allowed) and records RSS; it then builds the model and optimizer, runs a warm-up
step and ``--steps`` timed steps. Columns:

* ``budget``: the plan's budget as a fraction of ``pytorch``'s process memory;
  ``budget_bytes`` the bytes; ``plan``: the levers and micro-batch chosen; ``predicted``:
  the plan's predicted peak.
* ``accounted``: training bytes by exact accounting, as ``edgetrain.memory.report``
  counts them: parameters + buffers + gradients + optimizer state + the peak of the
  tensors saved for backward during one forward (``SavedTensorCounter``; for the codecs
  the stored, compressed bytes). With recomputation only what the blocks keep is
  counted, not the one block rebuilt at a time in backward; with accumulation the
  activations of one micro-batch; with optimizer-in-backward the gradients counted are
  those of the largest parameter (the others are freed as soon as they are used).
  ``acc_ratio``: accounted / pytorch's.
* ``mem_ratio``: process peak RSS growth (above the RSS after loading the data, so it
  includes parameters, gradients, optimizer state, activations, temporaries and the
  allocator's slack) / pytorch's, same run.
* ``time_ratio``: median wall time of a training step / pytorch's (gpt: at least 20
  timed steps, as its steps are short). With ``--rounds`` > 1 the methods' subprocesses
  run in alternating order (ABC..., ...CBA) and times and RSS are pooled (median step,
  median peak), so that drift of the machine hits all alike; the plans are made once,
  from the first round's measurements.
* ``metric_delta``: accuracy in points of training with the row's plan minus plain
  training, paired by seed and averaged over ``--seeds`` seeds (``metric`` names it:
  ``test_acc`` for the image workloads, ``test_token_acc`` for gpt; the test split, final
  weights). Each is an ``edgetrain.train.train`` run of the workload's config (the
  ``pytorch`` row: nothing else; the ``edgetrain:*`` rows: the plan's levers as config
  keys ``micro_batch_size``, ``activations``, ``recompute``, ``optimizer_in_backward``;
  a plan with a sparse update, which no config key reproduces because it also freezes
  batch-norm statistics, trains with the row's budget itself, ``budget.lossy: allow``,
  so the planner inside training chooses). ``metric_value``: the row's own mean.

Fine-tuning (``transfer``, pre-trained weights via ``init_from``): the plans may also
update a static share of the parameters (``Levers.sparse``, 50/25/10%; lossy codecs still
only with ``--lossy``); exact sets come first, so a sparse update is taken only where no
full update fits.

The step is forward, loss, backward and the optimizer step (and ``zero_grad``).

Goals (the ``goal`` column): every ``edgetrain:F`` row within its budget (mem_ratio <= F)
and, where accuracy was measured, within 0.5 point of plain training (1 point for the
fine-tuning workload ``transfer``); full training at 0.5x also at <= 1.3x time; at equal
memory faster than ``checkpoint`` (``edgetrain:checkpoint``: less time at no more
memory); the lowest budget at which each model trains (``edgetrain:min``) below plain
PyTorch's micro-batch-1 floor (``pytorch:mb1``). The issue's targets: full training at
``edgetrain:0.5``, fine-tuning at ``edgetrain:0.25``. The one-lever rows keep the old
goal: mem_ratio <= 0.5x at time_ratio <= 1.3x.

``--quick`` (meant to take under 10 minutes on an otherwise idle 2-core machine): resnet18
(pytorch, checkpoint and the plans but ``edgetrain:min``; no micro-batch-1 floor), gpt
(everything but the one-lever rows) and transfer (pytorch and ``edgetrain:F``); 2 timed
steps (20 for gpt, 1 at micro-batch 1), 1 round; accuracy for transfer only, 1 seed, 2
epochs of 6 batches (the output says which).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procmem import (
    parse_or_run_child,
    peak_rss_bytes,
    reset_peak_rss,
    run_json_child,
    status_bytes,
)

MODELS = ("resnet18", "mobilenetv2", "vgg11", "gpt", "transfer")
QUICK_MODELS = ("resnet18", "gpt", "transfer")
FINETUNE = ("transfer",)
METHODS = (
    "pytorch",
    "checkpoint",
    "accumulate",
    "recompute+int8",
    "lossless",
    "int8",
    "optimizer_in_backward",
)
BASELINE = "pytorch"
FLOOR = "pytorch:mb1"
FRACTIONS = (0.5, 0.25)
EDGETRAIN = "edgetrain:"
AT_CHECKPOINT = "edgetrain:checkpoint"
AT_MIN = "edgetrain:min"
PLAN_METHODS = (*(f"{EDGETRAIN}{f}" for f in FRACTIONS), AT_CHECKPOINT, AT_MIN)
QUICK_METHODS = ("pytorch", "checkpoint", *PLAN_METHODS, FLOOR)
#: --quick's methods by model (resnet18's micro-batch-1 steps take minutes on 2 cores)
QUICK_BY_MODEL = {
    "resnet18": ("pytorch", "checkpoint", *PLAN_METHODS[:-1]),
    "transfer": ("pytorch", *PLAN_METHODS[: len(FRACTIONS)]),
}
ALL_METHODS = (*METHODS, *PLAN_METHODS, FLOOR)
GOAL_MEM, GOAL_TIME, GOAL_ACC = 0.5, 1.3, 0.5  # full training: memory, time, points
GOAL_FT_ACC = 1.0  # fine-tuning (its memory target, 0.25x, is edgetrain:0.25's budget)
LIMIT_FRAC = 0.9  # the share of the budget a plan fills (plan_memory's default margin)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: accuracy runs, full mode: epochs and batches per epoch (None: all) by workload
METRIC_EPOCHS = {"gpt": (3, 100), "transfer": (6, None)}
METRIC_EPOCHS_CNN = (10, None)
#: the gpt workload's model and data as training config keys
GPT_CONFIG: dict[str, Any] = {
    "model": "gpt",
    "model_args": {"d_model": 128, "n_layers": 2, "n_heads": 4},
    "data": "pycorpus",
    "data_args": {"max_bytes": 200_000, "seq_len": 64},
    "preprocessing": "none",
    "split": [0.9, 0.05, 0.05],
}


@dataclass
class Row:
    """One (model, method) measurement."""

    model: str
    method: str
    budget: float | None
    budget_bytes: int | None
    plan: str
    batch: int
    micro_batch: int | None
    accounted_bytes: int | None
    acc_ratio: float | None
    peak_rss_growth_bytes: int | None
    mem_ratio: float | None
    step_s: float | None
    time_ratio: float | None
    metric: str
    metric_value: float | None
    metric_delta: float | None
    metric_seeds: int
    goal: str
    predicted_bytes: int | None
    smallest_bytes: int | None
    plan_s: float | None
    loss: float | None
    param_bytes: int | None
    grad_bytes: int | None
    optimizer_state_bytes: int | None
    activation_bytes: int | None


def is_plan(method: str) -> bool:
    return method.startswith(EDGETRAIN)


def plan_fraction(method: str) -> float | None:
    """F of ``edgetrain:F``; None for the other methods."""
    if not is_plan(method):
        return None
    try:
        return float(method[len(EDGETRAIN) :])
    except ValueError:
        return None


def valid_method(method: str) -> bool:
    if method in (*METHODS, FLOOR, AT_CHECKPOINT, AT_MIN):
        return True
    f = plan_fraction(method) if is_plan(method) else None
    return f is not None and 0 < f <= 1


def batch_size(model: str) -> int:
    return 32 if model in ("gpt", *FINETUNE) else 128


def metric_name(model: str) -> str:
    return "test_token_acc" if model == "gpt" else "test_acc"


# -- workloads --------------------------------------------------------------------------


def finetune_config(init_from: str | None) -> dict[str, Any]:
    """The transfer example's fine-tuning config, every parameter trained (no sparse update)."""
    import yaml

    cfg = yaml.safe_load((EXAMPLES / "transfer_finetune.yaml").read_text())
    cfg.pop("sparse_update", None)
    cfg["init_from"] = init_from
    cfg["monitor"] = {"enabled": False}
    return dict(cfg)


def _batches(model: str, batch: int, count: int) -> tuple[Any, Any]:
    """``count`` batches (inputs, targets) stacked: [count, batch, ...], the same in every process."""
    import torch

    from edgetrain.zoo import load_dataset

    if model == "gpt":
        data, _ = load_dataset("pycorpus", max_bytes=200_000, seq_len=64)
    elif model in FINETUNE:
        from edgetrain.config import load_config
        from edgetrain.train.api import prepare_data

        split, _ = prepare_data(load_config(finetune_config(None)))
        data = split.train
    else:
        data, _ = load_dataset("digits", image_size=32, channels=3)
    n = len(data)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=gen)
    idx = [int(order[i % n]) for i in range(batch * count)]
    items = [data[i] for i in idx]
    x = torch.stack([it[0] for it in items]).view(count, batch, *items[0][0].shape)
    y = torch.stack([torch.as_tensor(it[1]) for it in items]).view(count, batch, *items[0][1].shape)
    return x.contiguous(), y.contiguous()


def _build(model: str, init_from: str | None = None) -> Any:
    from edgetrain.zoo import build_model

    if model == "gpt":
        return build_model(
            "gpt", num_classes=256, in_channels=1, input_size=(1, 64),
            d_model=128, n_layers=2, n_heads=4,
        )  # fmt: skip
    if model in FINETUNE:
        from edgetrain.train.api import load_pretrained

        # examples/transfer_finetune.yaml: digits 5-9 (5 classes), 1 channel, 16x16
        net = build_model("mobilenetv2", num_classes=5, in_channels=1, input_size=(16, 16))
        if init_from is not None:
            load_pretrained(net, init_from)
        return net
    return build_model(model, num_classes=10, in_channels=3, input_size=(32, 32))


def _loss(out: Any, y: Any) -> Any:
    from torch.nn import functional as F

    if out.dim() == 3:  # language model: [N, T, V]
        return F.cross_entropy(out.flatten(0, 1), y.flatten())
    return F.cross_entropy(out, y)


# -- child processes --------------------------------------------------------------------


def _warm_libraries() -> None:
    """One SGD step on a 2-element tensor: what the first optimizer loads lazily
    (``torch._dynamo``, about 75 MiB of resident code and data) is loaded before the
    measured window, as it is before ``fit`` starts; nothing here scales with the model."""
    import torch

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    p.sum().backward()
    opt.step()


def plan_child(spec: dict[str, Any]) -> None:
    """Measure the lever costs once, plan every budget in ``spec["budgets"]``; print JSON."""
    import torch

    from edgetrain.adapt import make_meter
    from edgetrain.adapt.levers import (
        SPARSE_CANDIDATES,
        auto_min_micro,
        candidate_levers,
        measure_lever_costs,
    )
    from edgetrain.adapt.planner import Plan, PlanError, make_plan_preferring
    from edgetrain.memory import unique_bytes
    from edgetrain.tasks import make_task

    torch.set_num_threads(spec["threads"])
    batch = spec["batch"]
    xs, ys = _batches(spec["model"], batch, 1)
    torch.manual_seed(0)
    model = _build(spec["model"], spec.get("init_from")).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    task = make_task("language_modeling" if spec["model"] == "gpt" else "classification")
    meter = make_meter(torch.device("cpu"))
    meter.start(unique_bytes([*model.parameters(), *model.buffers()]))
    budgets: dict[str, int] = spec["budgets"]
    started = time.perf_counter()
    measured = measure_lever_costs(
        model,
        opt,
        task,
        (xs[0], ys[0]),
        # fine-tuning: a static sparse update may be planned (budget.lossy: allow, as the
        # fine-tuning config would set it); lossy codecs only with --lossy
        candidate_levers(
            model=model,
            lossy=spec["lossy"],
            sparse=SPARSE_CANDIDATES if spec["model"] in FINETUNE else (),
            low_state=spec.get("low_state", False),  # --low-precision-state
        ),
        meter=meter,
        limit_bytes=LIMIT_FRAC * max(budgets.values()),
        # the smallest budget asked for: micro-batch 1 measured, not extrapolated
        always_single=bool(spec["want_min"]),
    )
    plan_s = time.perf_counter() - started

    def one(budget: int) -> dict[str, Any]:
        try:
            plan: Plan = make_plan_preferring(
                measured.costs,
                budget_bytes=budget,
                batch_size=batch,
                limit_frac=LIMIT_FRAC,
                preferred_min=auto_min_micro(model),  # adapt.min_micro_batch_size: auto
            )[0]
        except PlanError as exc:
            return {"budget_bytes": budget, "error": str(exc), "smallest_bytes": exc.smallest_bytes}
        return {
            "budget_bytes": budget,
            "levers": asdict(plan.levers),
            "describe": plan.levers.describe(),
            "micro_batch_size": plan.micro_batch_size,
            "accum_steps": plan.accum_steps,
            "predicted_peak_bytes": plan.predicted_peak_bytes,
            "smallest_bytes": plan.smallest_bytes,
            "options": [
                {
                    "levers": o.levers.describe(),
                    "micro_batch_size": o.micro_batch_size,
                    "predicted_peak_bytes": o.predicted_peak_bytes,
                    "time_ratio": None if math.isnan(o.time_ratio) else o.time_ratio,
                }
                for o in plan.options
            ],
        }

    plans = {name: one(b) for name, b in budgets.items()}
    smallest = next((p["smallest_bytes"] for p in plans.values() if p["smallest_bytes"]), 0)
    if spec["want_min"] and smallest:
        plans[AT_MIN] = one(smallest)
    print(json.dumps({"plans": plans, "plan_s": plan_s, "smallest_bytes": smallest or None}))


def child(spec: dict[str, Any]) -> None:
    """Train ``spec["steps"]`` + 1 steps of one method; print peak RSS growth, times, accounting."""
    import torch

    from edgetrain.memory import SavedTensorCounter, compress_activations, unique_bytes
    from edgetrain.memory.optimizer_state import per_parameter_optimizers
    from edgetrain.memory.recompute import apply_recompute

    if spec["method"] == "plan":
        plan_child(spec)
        return
    torch.set_num_threads(spec["threads"])
    method, batch = spec["method"], spec["batch"]
    steps = spec["steps"] + 1  # the first is the warm-up
    xs, ys = _batches(spec["model"], batch, steps)
    levers = spec.get("levers")  # an edgetrain:* row: the plan's levers and micro-batch
    if levers is not None:  # imported before the measured window, as the others are
        from edgetrain.adapt.levers import apply_levers
        from edgetrain.adapt.planner import Levers
    _warm_libraries()
    reset = reset_peak_rss()
    rss0 = status_bytes("VmRSS") or 0

    torch.manual_seed(0)
    model = _build(spec["model"], spec.get("init_from")).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    ctx = None
    if levers is not None:  # recompute: in place; a sparse share: frozen rows
        from edgetrain.tasks import make_task

        task = make_task("language_modeling" if spec["model"] == "gpt" else "classification")
        handle = apply_levers(
            model, Levers(**levers), seed=0, task=task, optimizer=opt,
            example=lambda: (xs[0][:2], ys[0][:2]),
        )  # fmt: skip
        ctx = handle.codec  # (and a LowPrecisionState on opt where the plan keeps bf16 state)
    if method in ("checkpoint", "recompute+int8"):
        apply_recompute(model, "all")
    if method == "recompute+int8":
        ctx = compress_activations(model, "int8", seed=0)
    elif method == "lossless":
        ctx = compress_activations(model, "lossless")
    elif method == "int8":
        ctx = compress_activations(model, "int8", seed=0)
    in_backward = method == "optimizer_in_backward" or bool(
        levers and levers["optimizer_in_backward"]
    )
    stepping = [False]
    micro = {"accumulate": spec["micro_batch"], FLOOR: 1}.get(method, batch)
    if levers is not None:
        micro = spec["plan_micro"]
    fold = None  # with accumulation, SGD's momentum takes the gradients (edgetrain.memory.fold)
    if in_backward:
        from edgetrain.memory.fold import MomentumFold, fold_refusal
        from edgetrain.memory.optimizer_state import installed

        if micro < batch and fold_refusal(opt) is None:
            fold = MomentumFold(opt)
        low = installed(opt)  # the plan keeps bf16 state: its per-parameter step
        for p, single, _group in per_parameter_optimizers(opt):

            def hook(t: torch.Tensor, single: torch.optim.Optimizer = single) -> None:
                if fold is not None and fold.active:
                    fold.fold(t)
                elif stepping[0]:
                    if low is not None:
                        low.step_parameter(t, single)
                    else:
                        single.step()
                    t.grad = None

            p.register_post_accumulate_grad_hook(hook)
    act_peak = [0]
    grad_peak = [0]

    def forward(x: torch.Tensor, y: torch.Tensor, count: bool) -> torch.Tensor:
        if ctx is not None:
            with ctx:
                loss = _loss(model(x), y)
            if count:
                act_peak[0] = max(act_peak[0], ctx.stats.peak_stored_bytes)
            return loss
        if count:
            with SavedTensorCounter(model) as counter:
                loss = _loss(model(x), y)
            act_peak[0] = max(act_peak[0], counter.peak_bytes)
            return loss
        return _loss(model(x), y)

    def step(i: int, count: bool) -> float:
        x, y = xs[i], ys[i]
        opt.zero_grad(set_to_none=True)
        stepping[0] = True
        if fold is not None:
            fold.begin()
        total = 0.0
        for lo in range(0, batch, micro):
            hi = min(lo + micro, batch)
            # each micro-batch's mean loss weighted by its share: the whole batch's mean
            loss = forward(x[lo:hi], y[lo:hi], count and lo == 0) * ((hi - lo) / batch)
            loss.backward()
            total += float(loss.detach())
        stepping[0] = False
        if fold is not None:
            fold.finish()
        if in_backward:
            grad_peak[0] = max(p.numel() * p.element_size() for p in params)
        else:
            grad_peak[0] = unique_bytes(p.grad for p in params)
            opt.step()
        return total

    times: list[float] = []
    losses: list[float] = []
    for i in range(steps):
        started = time.perf_counter()
        losses.append(step(i, count=i == 0))  # accounting hooks only on the warm-up step
        if i > 0:
            times.append(time.perf_counter() - started)
    if ctx is not None:
        ctx.reset()
    peak = peak_rss_bytes()
    state = unique_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    param_bytes = unique_bytes(model.parameters())
    print(
        json.dumps(
            {
                "peak_rss_growth_bytes": peak - rss0 if reset else None,
                "times": times,
                "loss": losses[-1],
                "param_bytes": param_bytes,
                "buffer_bytes": unique_bytes(model.buffers()),
                "grad_bytes": grad_peak[0],
                "optimizer_state_bytes": state,
                "activation_bytes": act_peak[0],
            }
        )
    )


def run_child(spec: dict[str, Any]) -> dict[str, Any] | None:
    return run_json_child(__file__, spec, f"{spec['model']}/{spec['method']}")


# -- the memory and time table ----------------------------------------------------------


def _accounted(o: dict[str, Any]) -> int:
    return int(
        o["param_bytes"] + o["buffer_bytes"] + o["grad_bytes"]
        + o["optimizer_state_bytes"] + o["activation_bytes"]
    )  # fmt: skip


def _plan_text(plan: dict[str, Any] | None) -> str:
    if plan is None:
        return ""
    if "error" in plan:
        return f"no plan (smallest {_mib(plan.get('smallest_bytes'))} MiB)"
    return f"{plan['describe']}, micro {plan['micro_batch_size']} x {plan['accum_steps']}"


def run_model(model: str, methods: list[str], args: argparse.Namespace) -> list[Row]:
    batch = batch_size(model)
    micro = batch // 4
    steps = max(args.steps, 20) if model == "gpt" else args.steps  # gpt steps take ~0.05 s
    # micro-batches of 1: slow steps, few needed (--quick: 1)
    few = {m: 1 if args.quick else args.steps for m in (FLOOR, AT_MIN)}
    spec: dict[str, Any] = {
        "model": model, "batch": batch, "micro_batch": micro, "steps": steps,
        "threads": args.threads, "init_from": args.init_from if model in FINETUNE else None,
    }  # fmt: skip
    wanted = set(methods) | {BASELINE}
    if AT_CHECKPOINT in wanted:
        wanted.add("checkpoint")  # its budget
    # the plain methods first (the plans' budgets come from them), then the plans
    order = [m for m in ALL_METHODS if m in wanted and not is_plan(m)]
    order += sorted((m for m in wanted if plan_fraction(m)), key=lambda m: -(plan_fraction(m) or 0))
    order += [m for m in (AT_CHECKPOINT, AT_MIN) if m in wanted]
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    planned: dict[str, Any] = {}

    def rss_of(method: str) -> int | None:
        rss = [o["peak_rss_growth_bytes"] for o in got.get(method, [])]
        rss = [r for r in rss if r is not None]
        return int(statistics.median(rss)) if rss else None

    def make_plans() -> dict[str, Any]:
        base = rss_of(BASELINE)
        budgets: dict[str, int] = {}
        for m in order:
            f = plan_fraction(m) if is_plan(m) else None
            if f is not None and base:
                budgets[m] = int(f * base)
        if AT_CHECKPOINT in order and rss_of("checkpoint"):
            budgets[AT_CHECKPOINT] = int(rss_of("checkpoint") or 0)
        if not budgets:  # only edgetrain:min: any budget, for the smallest
            budgets[BASELINE] = base or 1 << 30
        print(f"  {model}: planning for {', '.join(budgets)} ...", flush=True)
        out = run_child({**spec, "method": "plan", "budgets": budgets, "lossy": args.lossy,
                         "low_state": args.low_precision_state,
                         "want_min": AT_MIN in order})  # fmt: skip
        if out is not None:
            print(f"  {model}: planned in {out['plan_s']:.0f} s", flush=True)
        return out or {"plans": {}, "plan_s": None, "smallest_bytes": None}

    for r in range(args.rounds):
        for method in order if r % 2 == 0 else order[::-1]:
            run_spec = {**spec, "method": method, "steps": few.get(method, steps)}
            if is_plan(method):
                if not planned:
                    planned.update(make_plans())
                plan = planned["plans"].get(method)
                if plan is None or "error" in plan:
                    continue
                run_spec.update(levers=plan["levers"], plan_micro=plan["micro_batch_size"])
            out = run_child(run_spec)
            if out is not None:
                got[method].append(out)

    base_rss = rss_of(BASELINE)
    base_outs = got[BASELINE]
    base_step = statistics.median(t for o in base_outs for t in o["times"]) if base_outs else None
    base_acc = _accounted(base_outs[0]) if base_outs else None
    rows = []
    for method in order:
        outs = got[method]
        plan = planned.get("plans", {}).get(method) if is_plan(method) else None
        if not outs and plan is None:
            continue
        o = outs[0] if outs else None
        rss = rss_of(method)
        step = statistics.median(t for o in outs for t in o["times"]) if outs else None
        acc = _accounted(o) if o else None
        budget_bytes = plan.get("budget_bytes") if plan else None
        row_micro = {"accumulate": micro, FLOOR: 1}.get(method, batch)
        if plan is not None:
            row_micro = plan.get("micro_batch_size")
        rows.append(
            Row(
                model=model,
                method=method,
                budget=budget_bytes / base_rss if budget_bytes and base_rss else None,
                budget_bytes=budget_bytes,
                plan=_plan_text(plan),
                batch=batch,
                micro_batch=row_micro,
                accounted_bytes=acc,
                acc_ratio=acc / base_acc if acc is not None and base_acc else None,
                peak_rss_growth_bytes=rss,
                mem_ratio=rss / base_rss if rss is not None and base_rss else None,
                step_s=step,
                time_ratio=step / base_step if step is not None and base_step else None,
                metric=metric_name(model),
                metric_value=None,
                metric_delta=None,
                metric_seeds=0,
                goal="",
                predicted_bytes=plan.get("predicted_peak_bytes") if plan else None,
                smallest_bytes=plan.get("smallest_bytes") if plan else None,
                plan_s=planned.get("plan_s") if plan else None,
                loss=o["loss"] if o else None,
                param_bytes=o["param_bytes"] if o else None,
                grad_bytes=o["grad_bytes"] if o else None,
                optimizer_state_bytes=o["optimizer_state_bytes"] if o else None,
                activation_bytes=o["activation_bytes"] if o else None,
            )
        )
    if planned.get("plans"):
        args.plan_tables[model] = planned
    return rows


# -- accuracy ---------------------------------------------------------------------------


def train_config(model: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The workload as a training config (the same model, batch and optimizer as the children)."""
    epochs, max_batches = METRIC_EPOCHS.get(model, METRIC_EPOCHS_CNN)
    if args.epochs is not None:
        epochs = args.epochs
    if args.max_batches is not None:
        max_batches = args.max_batches
    common = {"epochs": epochs, "max_batches_per_epoch": max_batches, "seed": seed,
              "monitor": {"enabled": False}}  # fmt: skip
    if model in FINETUNE:
        return {**finetune_config(args.init_from), **common}
    sgd = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": batch_size(model)}
    if model == "gpt":
        return {
            **GPT_CONFIG,
            **sgd,
            "lr": 0.1,  # SGD on the byte model: 0.01 barely leaves the unigram in 3 epochs
            **common,
        }
    return {"model": model, "data": "digits", "image_size": 32, "channels": 3, **sgd, **common}


def plan_config(plan: dict[str, Any], batch: int) -> dict[str, Any]:
    """A plan's levers as training config keys."""
    lv = plan["levers"]
    micro = plan["micro_batch_size"]
    return {
        "micro_batch_size": micro if micro < batch else None,
        "activations": lv["activations"] if lv["activations"] != "none" else "off",
        "recompute": lv["recompute"],
        "optimizer_in_backward": lv["optimizer_in_backward"],
        "optimizer_state": lv.get("state", "fp32"),
    }


def _run_name(extra: dict[str, Any]) -> str:
    """A run directory's name for a plan's config keys ("plain" when it changes nothing)."""
    parts = []
    if extra["micro_batch_size"]:
        parts.append(f"micro{extra['micro_batch_size']}")
    if extra["recompute"] != "none":
        parts.append(f"recompute-{extra['recompute']}")
    if extra["activations"] != "off":
        parts.append(extra["activations"])
    if extra["optimizer_in_backward"]:
        parts.append("in-backward")
    if extra.get("optimizer_state", "fp32") != "fp32":
        parts.append(f"{extra['optimizer_state']}-state")
    return "-".join(parts) or "plain"


def train_metric(cfg: dict[str, Any], out: Path) -> float | None:
    """The test metric (points) of one training run, or None if it failed.

    Each run is ``edgetrain train`` in a fresh process, as a user runs it: a process that
    trained before holds other memory (heap arenas, huge pages, kernel caches), and a
    budget run's probes measured 50 MiB too little after six trainings in one process.
    """
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({**cfg, "out": str(out)}))
    cmd = [sys.executable, "-m", "edgetrain", "train", str(config), "--overwrite", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        print(f"  training failed ({out.name}): {lines[-1] if lines else proc.returncode}")
        return None
    summary = json.loads((out / "summary.json").read_text())
    test = summary.get("test") or {}
    key = "test_token_acc" if cfg.get("data") == "pycorpus" else "test_acc"
    value = test.get(key)
    return None if value is None else 100.0 * float(value)


def fill_metrics(model: str, rows: list[Row], methods: list[str], args: argparse.Namespace) -> None:
    """metric_value / metric_delta of the pytorch row and the ``edgetrain:F`` rows in ``methods``."""
    batch = batch_size(model)
    plans = args.plan_tables.get(model, {}).get("plans", {})
    cache: dict[str, list[float | None]] = {}
    root = Path(args.out) / "metric" / model

    def runs(key: str, extra: dict[str, Any]) -> list[float | None]:
        if key not in cache:
            vals = []
            for seed in range(args.seeds):
                started = time.perf_counter()
                vals.append(train_metric({**train_config(model, args, seed), **extra},
                                         root / f"{key}-s{seed}"))  # fmt: skip
                print(f"  {model} {key} seed {seed}: {vals[-1]} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
            cache[key] = vals
        return cache[key]

    base = runs("plain", {})
    by_method = {r.method: r for r in rows}
    if BASELINE in by_method:
        done = [v for v in base if v is not None]
        by_method[BASELINE].metric_value = statistics.fmean(done) if done else None
        by_method[BASELINE].metric_seeds = len(done)
    for method in methods:
        row, plan = by_method.get(method), plans.get(method)
        if row is None or plan is None or "error" in plan or not is_plan(method):
            continue
        if plan["levers"].get("sparse", 1.0) < 1:
            # a sparse plan also freezes batch-norm statistics, which no config key sets:
            # this run trains with the budget itself (the planner inside training chooses)
            extra = {
                "budget": {"memory": plan["budget_bytes"], "lossy": "allow"},
                "adapt": {"policy": "budget"},
            }
            key = f"budget{plan['budget_bytes'] >> 20}MiB"
        else:
            extra = plan_config(plan, batch)
            key = _run_name(extra)
        mine = runs(key, extra)
        pairs = [(a, b) for a, b in zip(mine, base, strict=True) if a is not None and b is not None]
        if pairs:
            row.metric_value = statistics.fmean(a for a, _ in pairs)
            row.metric_delta = statistics.fmean(a - b for a, b in pairs)
            row.metric_seeds = len(pairs)


def pretrain(args: argparse.Namespace) -> str:
    """The transfer example's pre-trained weights (trained once under ``--out``)."""
    import yaml

    from edgetrain.train import train

    epochs = args.pretrain_epochs
    run = Path(args.out) / f"transfer-pretrain-e{epochs}"
    if (run / "model.pt").exists():
        return str(run)
    cfg = yaml.safe_load((EXAMPLES / "transfer_pretrain.yaml").read_text())
    cfg.update(out=str(run), epochs=epochs, monitor={"enabled": False})
    started = time.perf_counter()
    result = train(cfg, overwrite=True, progress=False)
    best = (result.summary.get("best") or {}).get("val_acc")
    print(f"  transfer: pre-trained ({epochs} epochs, digits 0-4) in "
          f"{time.perf_counter() - started:.0f} s, best val_acc {best}")  # fmt: skip
    return str(run)


# -- goals and output -------------------------------------------------------------------


def judge(rows: list[Row]) -> None:
    """The ``goal`` column of every row (module doc)."""
    by = {(r.model, r.method): r for r in rows}
    for r in rows:
        if r.method in (BASELINE, FLOOR):
            continue
        if r.mem_ratio is None or r.time_ratio is None:
            r.goal = "no plan" if r.plan.startswith("no plan") else "not measured"
            continue
        fails: list[str] = []
        unmeasured = False
        frac = plan_fraction(r.method) if is_plan(r.method) else None
        if frac is not None:
            if r.mem_ratio > frac:
                fails.append(f"mem {r.mem_ratio:.2f}x>{frac:g}x")
            finetune = r.model in FINETUNE
            if not finetune and frac == GOAL_MEM and r.time_ratio > GOAL_TIME:
                fails.append(f"time {r.time_ratio:.2f}x>{GOAL_TIME}x")
            worst = -(GOAL_FT_ACC if finetune else GOAL_ACC)  # at every budget
            if r.metric_delta is None:
                unmeasured = True
            elif r.metric_delta < worst:
                fails.append(f"acc {r.metric_delta:+.2f}pt<{worst:g}")
        elif r.method == AT_CHECKPOINT:
            ck = by.get((r.model, "checkpoint"))
            if ck is None or ck.time_ratio is None or ck.mem_ratio is None:
                unmeasured = True
            else:
                if r.time_ratio >= ck.time_ratio:
                    fails.append(f"time {r.time_ratio:.2f}x>=checkpoint's {ck.time_ratio:.2f}x")
                if r.mem_ratio > ck.mem_ratio:
                    fails.append(f"mem {r.mem_ratio:.2f}x>checkpoint's {ck.mem_ratio:.2f}x")
        elif r.method == AT_MIN:
            fl = by.get((r.model, FLOOR))
            if fl is None or fl.mem_ratio is None:
                unmeasured = True
            elif r.mem_ratio >= fl.mem_ratio:
                fails.append(f"mem {r.mem_ratio:.2f}x>=floor's {fl.mem_ratio:.2f}x")
            worst = -(GOAL_FT_ACC if r.model in FINETUNE else GOAL_ACC)
            if r.metric_delta is not None and r.metric_delta < worst:
                fails.append(f"acc {r.metric_delta:+.2f}pt<{worst:g}")
        elif r.mem_ratio > GOAL_MEM or r.time_ratio > GOAL_TIME:  # one lever alone
            fails.append(f"mem {r.mem_ratio:.2f}x, time {r.time_ratio:.2f}x")
        if fails:
            r.goal = "no: " + "; ".join(fails)
        else:
            r.goal = "met" + (" (accuracy not measured)" if unmeasured else "")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pt(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def print_table(rows: list[Row]) -> None:
    head = ("model", "method", "budget", "plan", "accounted MiB", "acc_ratio", "RSS growth MiB",
            "mem_ratio", "step s", "time_ratio", "metric", "metric_delta", "goal")  # fmt: skip
    lines = [head]
    for r in rows:
        budget = "-" if r.budget is None else f"{r.budget:.2f}x {_mib(r.budget_bytes)} MiB"
        metric = "-" if r.metric_value is None else f"{r.metric_value:.1f} (n={r.metric_seeds})"
        lines.append(
            (
                r.model, r.method, budget, r.plan or "-", _mib(r.accounted_bytes), _x(r.acc_ratio),
                _mib(r.peak_rss_growth_bytes), _x(r.mem_ratio),
                "-" if r.step_s is None else f"{r.step_s:.3f}", _x(r.time_ratio), metric,
                _pt(r.metric_delta, sign=True), r.goal,
            )
        )  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    left = {0, 1, 3, 12}
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines[1:]:
        cells = [
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")


def floors(rows: list[Row]) -> list[dict[str, Any]]:
    """Per model: the lowest budget edgetrain's plan trains at vs plain PyTorch's mb-1 floor."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        by = {r.method: r for r in rows if r.model == model}
        low, floor = by.get(AT_MIN), by.get(FLOOR)
        if low is None and floor is None:
            continue
        out.append(
            {
                "model": model,
                "edgetrain_min_budget_bytes": low.budget_bytes if low else None,
                "edgetrain_min_plan": low.plan if low else None,
                "edgetrain_min_rss_bytes": low.peak_rss_growth_bytes if low else None,
                "edgetrain_min_step_s": low.step_s if low else None,
                "pytorch_mb1_rss_bytes": floor.peak_rss_growth_bytes if floor else None,
                "pytorch_mb1_step_s": floor.step_s if floor else None,
                "pytorch_rss_bytes": by[BASELINE].peak_rss_growth_bytes if BASELINE in by else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS)
    parser.add_argument(
        "--methods", nargs="+", default=None,
        help=f"of {', '.join(ALL_METHODS)} or edgetrain:F (0 < F <= 1); default all "
        "(--quick: by model, see the module doc)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per method (ABBA)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--lossy", action="store_true", help="plans may use lossy codecs")
    parser.add_argument(
        "--low-precision-state", action="store_true",
        help="plans may keep the optimizer state in bf16 (optimizer_state: bf16)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="accuracy seeds (full: 3)")
    parser.add_argument("--epochs", type=int, default=None, help="accuracy runs' epochs")
    parser.add_argument("--max-batches", type=int, default=None, help="per accuracy epoch")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="transfer (full: 6)")
    parser.add_argument(
        "--metric-models", nargs="*", default=None, choices=MODELS,
        help="models whose accuracy is measured (default: all; --quick: transfer)",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/bench-headline", help="training runs' directory")
    parser.add_argument("--csv", dest="csv_path", default=None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 timed steps (20 for gpt; 1 at micro-batch 1), 1 round, resnet18 (no floor), gpt "
        "and transfer (pytorch and edgetrain:F only); accuracy of transfer only (1 seed, 2 "
        "epochs x 6 batches)",
    )
    args = parse_or_run_child(parser, argv, child)
    if args is None:
        return 0
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.steps, args.rounds = min(args.steps, 2), 1
        args.models = args.models or list(QUICK_MODELS)
        args.seeds = args.seeds or 1
        args.epochs = args.epochs or 2
        args.max_batches = args.max_batches or 6
        args.pretrain_epochs = args.pretrain_epochs or 3
        if args.metric_models is None:
            args.metric_models = [m for m in args.models if m in FINETUNE]
    models = args.models or list(MODELS)
    methods = args.methods or list(ALL_METHODS)
    if args.quick and args.methods is None:
        methods = list(QUICK_METHODS)
    bad = [m for m in methods if not valid_method(m)]
    if bad:
        parser.error(f"unknown method(s) {bad}; known: {', '.join(ALL_METHODS)}, edgetrain:F")
    args.seeds = args.seeds or 3
    args.pretrain_epochs = args.pretrain_epochs or 6
    for out in (args.csv_path, args.json_path):  # before the runs: a missing folder lost them
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    metric_models = models if args.metric_models is None else args.metric_models
    args.plan_tables, args.init_from = {}, None
    import torch

    torch.set_num_threads(args.threads)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(
        f"machine: {machine}, {os.cpu_count()} cpus, {platform.platform()}; python "
        f"{platform.python_version()}, torch {torch.__version__}, threads {args.threads}, "
        f"device cpu, {args.steps} timed steps after 1 warm-up, {args.rounds} round(s); "
        f"plans {'may' if args.lossy else 'may not'} use lossy codecs, "
        f"{'may' if args.low_precision_state else 'may not'} keep bf16 optimizer state"
    )
    metric_note = ", ".join(
        f"{m} {train_config(m, args, 0)['epochs']} epochs"
        + (f" x {mb} batches" if (mb := train_config(m, args, 0)["max_batches_per_epoch"]) else "")
        for m in metric_models
    )
    print(
        f"accuracy: {metric_note or 'none'}; seeds 0..{args.seeds - 1}; test split, final weights"
    )
    started_all = time.perf_counter()
    args.init_from = pretrain(args) if any(m in FINETUNE for m in models) else None
    rows: list[Row] = []
    for model in models:
        started = time.perf_counter()
        mine = methods
        if args.quick and args.methods is None:
            mine = list(QUICK_BY_MODEL.get(model, QUICK_METHODS))
        model_rows = run_model(model, mine, args)
        print(f"  {model}: memory and time in {time.perf_counter() - started:.0f} s", flush=True)
        if model in metric_models:
            started = time.perf_counter()
            fill_metrics(model, model_rows, mine, args)
            print(f"  {model}: accuracy in {time.perf_counter() - started:.0f} s", flush=True)
        judge(model_rows)
        print_table(model_rows)
        rows.extend(model_rows)
    judge(rows)
    print_table(rows)
    print(
        f"goals: edgetrain:F within its budget (mem_ratio <= F) and metric_delta >= -{GOAL_ACC} "
        f"pt (transfer: -{GOAL_FT_ACC} pt); edgetrain:{GOAL_MEM} (full training) also "
        f"time_ratio <= {GOAL_TIME}x; edgetrain:checkpoint faster than checkpoint at no more "
        "memory; edgetrain:min below pytorch:mb1; one lever alone: mem_ratio <= "
        f"{GOAL_MEM}x at time_ratio <= {GOAL_TIME}x (process RSS growth, CPU wall time; ratios "
        "against pytorch in this run)"
    )
    low = floors(rows)
    for f in low:
        print(
            f"lowest budget, {f['model']}: edgetrain {_mib(f['edgetrain_min_budget_bytes'])} MiB "
            f"({f['edgetrain_min_plan'] or '-'}; measured {_mib(f['edgetrain_min_rss_bytes'])} "
            f"MiB) vs plain PyTorch's micro-batch-1 floor {_mib(f['pytorch_mb1_rss_bytes'])} MiB "
            f"(whole batch {_mib(f['pytorch_rss_bytes'])} MiB)"
        )
    print(f"total {time.perf_counter() - started_all:.0f} s")
    if args.csv_path:
        with open(args.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
            writer.writeheader()
            for r in rows:
                writer.writerow(asdict(r))
    if args.json_path:
        payload = {
            "machine": machine,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "steps": args.steps,
            "rounds": args.rounds,
            "lossy": args.lossy,
            "seeds": args.seeds,
            "accuracy": metric_note,
            "rows": [asdict(r) for r in rows],
            "floors": low,
            "plans": args.plan_tables,
        }
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
