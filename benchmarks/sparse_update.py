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
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from edgetrain.compare.sparse import run_one
from edgetrain.config import load_config
from edgetrain.train import train
from edgetrain.units import format_bytes

console = Console()

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
        sparse_update=sparse,
    )
    return load_config(cfg)


def run_model(args: argparse.Namespace, model: str, out: Path) -> list[dict[str, Any]]:
    pre = pretrain(args, model, out)
    rows: list[dict[str, Any]] = []
    memory_budget: int | None = None
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
            row = run_one(cfg, f"{tag}-s{seed}", out / model)
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
    return rows


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
            mem, step, cpu = (
                s["peak_train_bytes_ratio"],
                s["step_time_s_ratio"],
                s["step_cpu_s_ratio"],
            )
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
                f"{st['step_time_s'] / mask['step_time_s']:.2f}x wall / "
                f"{st['step_cpu_s'] / mask['step_cpu_s']:.2f}x CPU"
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
            f"{s['step_time_s']:.3f}",
            f"{s['step_time_s_ratio']:.2f}",
            f"{s['step_cpu_s_ratio']:.2f}",
            f"{100 * s['test_acc']:.1f}{std}",
            f"{s['delta_acc_points']:+.1f}",
        )
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few epochs and batches (2-core CPU)")
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
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/bench-sparse-update"))
    p.add_argument("--reuse-pretrained", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.pretrain_epochs = min(args.pretrain_epochs, 3)
        args.epochs = min(args.epochs, 3)
        args.max_batches = args.max_batches or 6
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        rows += run_model(args, model.strip(), args.out)
    summary = summarize(rows)
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
