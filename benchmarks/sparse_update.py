"""Sparse updates on a transfer task: training memory, step time and accuracy vs full fine-tuning.

Task (offline): pre-train on the digits 0-4, fine-tune on the digits 5-9 (relabelled 0-4,
so the head is kept), digits resized to ``--image-size``. For each model, with the same
pre-trained weights, and for every seed, one fine-tuning run per configuration, in
interleaved order (seed 0: all configurations, seed 1: all, ...) so that a drift of the
machine spreads over all of them:

- ``full``: every parameter;
- ``velocity``, ``random``, ``static``: a parameter budget (``--budget``, default 10%);
- ``static (mask only)``: the static selection, but layers without a selected neuron keep
  ``requires_grad`` and only lose their gradient before the step (NEq's masking): what
  switching ``requires_grad`` off saves, measured side by side;
- ``velocity (memory)``: the memory-aware velocity scheme at a memory budget of
  ``--memory-frac`` (default 0.5) times full fine-tuning's estimated training memory.

Measured per run (edgetrain.compare.sparse, in-process):
peak training memory = weights + gradients + optimizer state + saved-for-backward
activations, accounted per step with saved-tensor hooks (each storage once) -- not RSS,
which on the CPU is dominated by the interpreter and libraries; step time = median wall
time of a step's forward + backward + optimizer step; step CPU = its median process CPU
time (all threads; less disturbed by the other processes of a shared machine); test
accuracy at the epoch with the best validation accuracy. Ratios are means over seeds
divided by full fine-tuning's means; accuracy differences are in points.

Step time is measured apart from the runs, which share the machine with whatever else
runs: the selection each configuration used in its last epoch (seed 0) is applied to a
copy of the pre-trained model, and blocks of ``--block-steps`` steps on one fixed batch
alternate between configurations for ``--rounds`` rounds (the first configuration rotates);
the ratio is the median over rounds of block median / full's block median of the same round.
The median step inside the training runs is shown too ("run step x": noisy).

Goals: static and memory-aware velocity at most 0.6x peak memory and 0.7x step time with
test accuracy within 1 point of full fine-tuning; velocity at least as accurate as random.

Usage:
    python benchmarks/sparse_update.py --quick [--json out.json]
    python benchmarks/sparse_update.py [--models mobilenetv2,resnet18] [--seeds 3]
        [--image-size 32] [--pretrain-epochs 10] [--epochs 10] [--max-batches N]
        [--budget 0.1] [--memory-frac 0.5] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from edgetrain.compare.sparse import run_one
from edgetrain.config import load_config
from edgetrain.sparse import RowFreezer
from edgetrain.train import Callback, TrainState, prepare_data, train
from edgetrain.train.api import load_pretrained
from edgetrain.units import format_bytes
from edgetrain.zoo import build_model

console = Console(width=150)


class LastSelection(Callback):
    """Keeps the selection of the last epoch (``state.extras["sparse_selection"]``)."""

    name = "last_selection"

    def __init__(self) -> None:
        self.rows: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, state: TrainState) -> None:
        selection = state.extras.get("sparse_selection")
        if selection is not None:
            self.rows = dict(selection.rows)


CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("full", {"scheme": "full"}),
    ("velocity", {"scheme": "velocity"}),
    ("random", {"scheme": "random"}),
    ("static", {"scheme": "static"}),
    ("static (mask only)", {"scheme": "static", "mask_only": True}),
    ("velocity (memory)", {"scheme": "velocity"}),
]


def base_config(args: argparse.Namespace, model: str, classes: list[int]) -> dict[str, Any]:
    return {
        "model": model,
        "data": "digits",
        "data_args": {"classes": classes},
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_schedule": "cosine",
        "monitor": {"enabled": False},
        "seed": 0,
    }


def pretrain(args: argparse.Namespace, model: str, out: Path) -> Path:
    run = out / model / "pretrain"
    if args.reuse_pretrained and (run / "model.pt").exists():
        return run
    cfg = base_config(args, model, [0, 1, 2, 3, 4])
    cfg.update(epochs=args.pretrain_epochs, lr=0.05, out=str(run))
    t0 = time.perf_counter()
    result = train(cfg, overwrite=True, progress=False)
    best = (result.summary.get("best") or {}).get("val_acc")
    console.print(
        f"pre-trained {model} in {time.perf_counter() - t0:.0f} s: best val_acc {best}",
        highlight=False,
    )
    return run


def finetune_config(
    args: argparse.Namespace, model: str, pre: Path, seed: int, sparse: dict[str, Any]
) -> Any:
    cfg = base_config(args, model, [5, 6, 7, 8, 9])
    cfg.update(
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        init_from=str(pre),
        max_batches_per_epoch=args.max_batches,
        sparse_update={"static_depth": args.static_depth, **sparse},
    )
    return load_config(cfg)


def time_selections(
    args: argparse.Namespace,
    model_name: str,
    pre: Path,
    selections: Mapping[str, tuple[Mapping[str, torch.Tensor], bool]],
) -> dict[str, dict[str, float]]:
    """Step time of each selection in alternating blocks on one fixed batch.

    ``selections`` maps a configuration to (row masks, mask_only). Every round runs
    ``--block-steps`` steps of each configuration, starting at a different one each round;
    a configuration's ratio is the median over rounds of its block median divided by full
    fine-tuning's block median of the same round (wall time, and process CPU time).
    """
    cfg = finetune_config(args, model_name, pre, 0, {"scheme": "full"})
    data, info = prepare_data(cfg)
    n = min(args.batch_size, len(data.train))
    x = torch.stack([data.train[i][0] for i in range(n)])
    y = torch.stack([data.train[i][1] for i in range(n)])
    torch.manual_seed(0)
    base = build_model(
        model_name,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_size,
    )
    load_pretrained(base, pre)
    setups = {}
    for name, (rows, mask_only) in selections.items():
        model = copy.deepcopy(base).train()
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        RowFreezer(model, opt, mask_only=mask_only).apply(rows)
        setups[name] = (model, opt)

    def step(name: str) -> tuple[float, float]:
        model, opt = setups[name]
        wall, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    names = list(setups)
    for name in names:
        step(name)  # warm-up
    blocks: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times = [step(name) for _ in range(args.block_steps)]
            blocks[name].append(
                (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))
            )
    out = {}
    for name in names:
        wall = [b[0] / f[0] for b, f in zip(blocks[name], blocks["full"], strict=True)]
        cpu = [b[1] / f[1] for b, f in zip(blocks[name], blocks["full"], strict=True)]
        out[name] = {
            "block_step_s": statistics.median(b[0] for b in blocks[name]),
            "block_step_cpu_s": statistics.median(b[1] for b in blocks[name]),
            "step_ratio": statistics.median(wall),
            "cpu_ratio": statistics.median(cpu),
        }
    return out


def run_model(
    args: argparse.Namespace, model: str, out: Path
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    pre = pretrain(args, model, out)
    rows: list[dict[str, Any]] = []
    memory_budget: int | None = None
    selections: dict[str, tuple[Mapping[str, torch.Tensor], bool]] = {}
    for seed in range(args.seeds):
        for name, sparse in CONFIGS:
            sparse = dict(sparse)
            if sparse["scheme"] != "full":
                sparse["budget"] = args.budget
            if name == "velocity (memory)":
                assert memory_budget is not None
                sparse["budget"] = f"{memory_budget}B"
            cfg = finetune_config(args, model, pre, seed, sparse)
            tag = name.replace(" (", "-").replace(")", "").replace(" ", "_")
            last = LastSelection()
            row = run_one(cfg, f"{tag}-s{seed}", out / model, [last])
            if seed == 0 and last.rows is not None:
                selections[name] = (last.rows, bool(sparse.get("mask_only")))
            if name == "full" and memory_budget is None:
                run = json.loads((Path(row["run"]) / "summary.json").read_text())
                full_est = run["sparse_update"]["est_train_bytes_full"]
                memory_budget = int(args.memory_frac * full_est)
            row.update(model=model, config=name, memory_budget=memory_budget)
            rows.append(row)
            console.print(
                f"{model:12s} {name:20s} seed {seed}: test_acc {row['test_acc']:.4f}, "
                f"{format_bytes(row['peak_train_bytes'])}, step {row['step_time_s']:.3f} s",
                highlight=False,
            )
    timing = time_selections(args, model, pre, selections)
    return rows, timing


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def summarize(
    rows: list[dict[str, Any]], timing: Mapping[str, Mapping[str, Mapping[str, float]]]
) -> list[dict[str, Any]]:
    """Per model and configuration: means over seeds and ratios to full fine-tuning."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        full = [r for r in mine if r["config"] == "full"]
        ref = {k: _mean(full, k) for k in ("peak_train_bytes", "step_time_s", "step_cpu_s")}
        ref_acc = _mean(full, "test_acc")
        for name, _ in CONFIGS:
            group = [r for r in mine if r["config"] == name]
            if not group:
                continue
            acc = _mean(group, "test_acc")
            entry = {
                "model": model,
                "config": name,
                "seeds": len(group),
                "budget": group[0]["budget"],
                "trainable_frac": _mean(group, "trainable_frac"),
                "test_acc": acc,
                "test_acc_std": statistics.stdev([r["test_acc"] for r in group])
                if len(group) > 1
                else None,
                "delta_acc_points": 100 * (acc - ref_acc) if acc is not None and ref_acc else None,
            }
            for key, ref_value in ref.items():
                value = _mean(group, key)
                entry[key] = value
                entry[f"{key}_ratio"] = value / ref_value if value and ref_value else None
            entry.update(timing.get(model, {}).get(name, {}))
            out.append(entry)
    return out


def goals(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for model in dict.fromkeys(s["model"] for s in summary):
        by = {s["config"]: s for s in summary if s["model"] == model}
        for name in ("static", "velocity (memory)"):
            s = by.get(name)
            if s is None:
                continue
            mem, step, cpu = s["peak_train_bytes_ratio"], s["step_ratio"], s["cpu_ratio"]
            acc = s["delta_acc_points"]
            lines.append(
                f"{model} {name}: memory {mem:.2f}x (goal <= 0.6: {_ok(mem <= 0.6)}), "
                f"step {step:.2f}x wall / {cpu:.2f}x CPU (goal <= 0.7: {_ok(step <= 0.7)}), "
                f"accuracy {acc:+.2f} points (goal >= -1: {_ok(acc >= -1)})"
            )
        v, r = by.get("velocity"), by.get("random")
        if v and r:
            diff = 100 * (v["test_acc"] - r["test_acc"])
            lines.append(
                f"{model} velocity vs random: {diff:+.2f} points (goal >= 0: {_ok(diff >= 0)})"
            )
        st, mask = by.get("static"), by.get("static (mask only)")
        if st and mask:
            lines.append(
                f"{model} requires_grad=False vs masking (static): memory "
                f"{st['peak_train_bytes'] / mask['peak_train_bytes']:.2f}x, step "
                f"{st['step_ratio'] / mask['step_ratio']:.2f}x wall / "
                f"{st['cpu_ratio'] / mask['cpu_ratio']:.2f}x CPU"
            )
    return lines


def _ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


def render(summary: list[dict[str, Any]]) -> Table:
    table = Table(title="sparse updates vs full fine-tuning (means over seeds)")
    for col in (
        "model",
        "configuration",
        "budget",
        "updated",
        "peak train mem",
        "mem x",
        "step s",
        "step x",
        "CPU x",
        "run step x",
        "test acc",
        "Δ pts",
    ):
        table.add_column(col, justify="left" if col in ("model", "configuration") else "right")
    for s in summary:
        std = f" ± {100 * s['test_acc_std']:.1f}" if s["test_acc_std"] is not None else ""
        table.add_row(
            s["model"],
            s["config"],
            str(s["budget"]) if s["budget"] is not None else "-",
            f"{100 * s['trainable_frac']:.1f}%",
            format_bytes(s["peak_train_bytes"]),
            f"{s['peak_train_bytes_ratio']:.2f}",
            f"{s['block_step_s']:.3f}",
            f"{s['step_ratio']:.2f}",
            f"{s['cpu_ratio']:.2f}",
            f"{s['step_time_s_ratio']:.2f}",
            f"{100 * s['test_acc']:.1f}{std}",
            f"{s['delta_acc_points']:+.1f}",
        )
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="2-core CPU settings: pre-train 3 epochs, fine-tune 4 epochs x 8 batches, 5 rounds",
    )
    p.add_argument("--models", default="mobilenetv2,resnet18")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--memory-frac", type=float, default=0.5)
    p.add_argument(
        "--static-depth",
        type=float,
        default=0.75,
        help="sparse_update.static_depth: the fraction of layers, from the last, static uses",
    )
    p.add_argument("--rounds", type=int, default=7, help="timing rounds (alternating blocks)")
    p.add_argument("--block-steps", type=int, default=3, help="steps per timing block")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/bench-sparse-update"))
    p.add_argument("--reuse-pretrained", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_epochs = min(args.pretrain_epochs, 3)
        args.epochs = min(args.epochs, 4)
        args.max_batches = args.max_batches or 8
        args.rounds = min(args.rounds, 5)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    timing: dict[str, dict[str, dict[str, float]]] = {}
    for model in args.models.split(","):
        model_rows, timing[model.strip()] = run_model(args, model.strip(), args.out)
        rows += model_rows
    summary = summarize(rows, timing)
    machine = (
        f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    console.print(render(summary))
    console.print(
        f"machine {machine}; {args.seeds} seeds; digits {args.image_size}x{args.image_size}, "
        f"batch {args.batch_size}, pre-train {args.pretrain_epochs} epochs, fine-tune "
        f"{args.epochs} epochs x {args.max_batches or 'all'} batches; "
        f"memory = weights + grads + optimizer state + saved activations (accounted); "
        f"step = median block step on one batch, {args.rounds} alternating rounds x "
        f"{args.block_steps} steps (run step x: median step inside the training runs); "
        f"total {time.perf_counter() - t0:.0f} s",
        highlight=False,
    )
    for line in goals(summary):
        console.print(line, highlight=False)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine, "args": vars(args), "summary": summary, "runs": rows},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
