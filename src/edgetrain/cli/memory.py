"""``edgetrain memory CONFIG``: exact memory of one training step, per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["register"]

out = Console(markup=False)
err = Console(markup=False, stderr=True)


def memory(
    config: Annotated[Path | None, typer.Argument(help="YAML config file (optional).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a config key.")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            "-b",
            help="Plan this memory budget (e.g. 300MiB; default: the config's budget.memory): "
            "probe each memory lever on this device and print the plan, before any training.",
        ),
    ] = None,
) -> None:
    """Bytes of parameters, gradients, optimizer state and saved activations for one step.

    The step uses the configured micro-batch (or batch) on the configured device and the
    config's task (its loss, however the batch is structured); with ``activations`` set
    to a codec, the compressed size of the same step is shown too. With ``--budget`` (or
    ``budget.memory`` in the config) the memory planner probes each lever set
    (recomputation, activation codecs, the optimizer step in backward) with short steps
    and prints the plan training with that budget would start from; a budget no plan
    reaches exits 2, naming the smallest one.
    """
    import torch

    from edgetrain.config import load_config
    from edgetrain.memory import compress_activations, render_memory_report, report
    from edgetrain.train.api import config_task, load_pretrained, prepare, resolve_device
    from edgetrain.train.data import eval_loader
    from edgetrain.train.optim import build_optimizer, param_dtype
    from edgetrain.units import format_bytes

    overrides = list(set_ or [])
    if budget is not None:
        overrides.append(f"budget.memory={budget}")
    cfg = load_config(config, overrides=overrides)
    data, model = prepare(cfg)
    if cfg.init_from is not None:  # a fine-tuning plan selects from the pre-trained weights
        load_pretrained(model, cfg.init_from, which=cfg.init_from_which)
    device = resolve_device(cfg.device)
    if cfg.budget.memory_bytes is not None:
        _plan(cfg, data, model, device)
        return
    model = model.to(device=device, dtype=param_dtype(cfg.precision))
    optimizer = build_optimizer(model.parameters(), cfg)
    task = config_task(cfg, data.info)
    micro = cfg.micro_batch_size or cfg.batch_size
    loader = eval_loader(data.train, batch_size=micro, collate_fn=data.collate_fn)
    batch = task.to_device(next(iter(loader)), device, param_dtype(cfg.precision))
    rep = report(model, optimizer, batch, task=task)
    out.print(render_memory_report(rep))
    if cfg.activations not in ("off", "none"):
        count = task.count(batch)
        if isinstance(count, torch.Tensor):
            count = count.clamp(min=1)
        ctx = compress_activations(model, cfg.activations, seed=cfg.seed)
        with ctx:
            loss = task.loss_sum(task.forward(model, batch), batch) / count
        stats = ctx.stats
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        out.print(
            f"activations={cfg.activations}: {format_bytes(stats.peak_stored_bytes)} stored of "
            f"{format_bytes(stats.peak_raw_bytes)} saved ({stats.ratio:.3f}x)",
            highlight=False,
        )


def _plan(cfg: Any, data: Any, model: Any, device: Any) -> None:
    """Probe the lever sets and print the plan for ``cfg.budget.memory``."""
    from rich.table import Table

    from edgetrain.adapt import make_meter
    from edgetrain.adapt.levers import auto_min_micro, measure_lever_costs
    from edgetrain.adapt.planner import Levers, make_plan_preferring
    from edgetrain.adapt.probe import probe_batch
    from edgetrain.memory.allocator import configure_for_run
    from edgetrain.train.api import config_task
    from edgetrain.train.features.budget import plan_candidates
    from edgetrain.train.features.optim_backward import refusal_for
    from edgetrain.train.optim import autocast, build_optimizer, param_dtype
    from edgetrain.units import format_bytes

    allocator = configure_for_run(cfg, device)
    dtype = param_dtype(cfg.precision)
    model = model.to(device=device, dtype=dtype)
    optimizer = build_optimizer(model.parameters(), cfg)
    task = config_task(cfg, data.info)
    step_ok = refusal_for(cfg, optimizer) is None
    candidates = plan_candidates(cfg, model, step_ok) or [Levers()]
    budget = int(cfg.budget.memory_bytes)
    limit_frac = 1 - cfg.adapt.margin
    batch = task.to_device(probe_batch(data.train, cfg.batch_size, data.collate_fn), device, dtype)
    meter = make_meter(device)
    meter.start(sum(p.numel() * p.element_size() for p in model.parameters()))
    auto = cfg.adapt.min_micro_batch_size == "auto"
    min_micro = min(cfg.adapt.min_micro, cfg.batch_size)  # probes start there
    err.print(
        f"probing {len(candidates)} lever set(s) at batch {cfg.batch_size} on {device} "
        f"(allocator: {allocator.get('mode', 'keep')})...",
        highlight=False,
    )
    measured = measure_lever_costs(
        model,
        optimizer,
        task,
        batch,
        candidates,
        meter=meter,
        limit_bytes=limit_frac * budget,
        start=min_micro,
        autocast=lambda: autocast(cfg.precision, device),
        seed=cfg.seed,
        progress=lambda lv: err.print(f"  {lv.describe()}", highlight=False),
    )
    del batch
    # with batch-norm, micro-batches of 16 and more first (adapt.min_micro_batch_size: auto)
    plan, held = make_plan_preferring(
        measured.costs,
        budget_bytes=budget,
        batch_size=cfg.batch_size,
        limit_frac=limit_frac,
        preferred_min=auto_min_micro(model) if auto else min_micro,
        min_micro=min_micro,
    )  # PlanError (exit 2) names the smallest reachable budget
    if not held:
        err.print(
            f"no plan at micro-batch {auto_min_micro(model)} or more (the automatic minimum "
            "for batch-norm models): smaller micro-batches, noisier batch statistics",
            highlight=False,
        )
    table = Table(
        title=f"memory plan for budget.memory {format_bytes(budget)} "
        f"(fitted to {limit_frac:.0%}: {format_bytes(plan.limit_bytes)}; {meter.source})",
        title_justify="left",
    )
    for name in ("", "levers", "micro-batch", "predicted peak", "saves", "time"):
        table.add_column(name, justify="left" if name in ("", "levers") else "right")
    for option in plan.options:
        taken = option.levers == plan.levers
        if option.fits:
            time = f"{option.time_ratio:.2f}x" + ("" if option.time_measured else " *")
            row = [
                f"{option.micro_batch_size} x {option.accum_steps}",
                format_bytes(option.predicted_peak_bytes),
                format_bytes(option.saved_bytes) if option.saves else "-",
                time,
            ]
        else:
            row = ["does not fit", "", "", ""]
        table.add_row("->" if taken else "", option.short(), *row)
    out.print(table)
    out.print(
        f"plan: {plan.describe()}; the smallest budget any plan reaches: "
        f"{format_bytes(plan.smallest_bytes)}",
        highlight=False,
    )
    if any(o.fits and not o.time_measured for o in plan.options):
        out.print(
            "* time not probed (a probe may not step the weights): that of the same set "
            "without the optimizer step in backward or with fp32 optimizer state",
            highlight=False,
        )
    out.print(
        "time: predicted seconds per logical batch against micro-batch only; train with "
        f"--set budget.memory={cfg.budget.memory} --set adapt.policy=budget to use it; "
        "'-': saves under 2% over a set with fewer levers (not taken)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``memory`` command."""
    app.command("memory")(memory)
