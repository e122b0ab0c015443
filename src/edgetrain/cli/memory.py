"""``edgetrain memory CONFIG``: exact memory of one training step, per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]

out = Console(markup=False)


def memory(
    config: Annotated[Path | None, typer.Argument(help="YAML config file (optional).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a config key.")
    ] = None,
) -> None:
    """Bytes of parameters, gradients, optimizer state and saved activations for one step.

    The step uses the configured micro-batch (or batch) on the configured device and the
    config's task (its loss, however the batch is structured); with ``activations`` set
    to a codec, the compressed size of the same step is shown too.
    """
    import torch

    from edgetrain.config import load_config
    from edgetrain.memory import compress_activations, render_memory_report, report
    from edgetrain.train.api import config_task, prepare, resolve_device
    from edgetrain.train.data import eval_loader
    from edgetrain.train.optim import build_optimizer, param_dtype
    from edgetrain.units import format_bytes

    cfg = load_config(config, overrides=list(set_ or []))
    data, model = prepare(cfg)
    device = resolve_device(cfg.device)
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


def register(app: typer.Typer) -> None:
    """Add the ``memory`` command."""
    app.command("memory")(memory)
