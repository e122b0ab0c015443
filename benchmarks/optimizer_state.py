"""Low-precision optimizer state (``optimizer_state: bf16``): memory the process sees, step
time, and what it costs in accuracy.

    python benchmarks/optimizer_state.py --quick              # ~5 minutes on 2 cores
    python benchmarks/optimizer_state.py --csv state.csv      # full: memory + 3 seeds

Memory and time (one fresh subprocess per row, glibc's ``MALLOC_MMAP_THRESHOLD_`` at
128 KiB so that RSS follows live memory, as in ``headline.py``): each model (vgg11,
resnet18, mobilenetv2 on digits at 32x32x3, batch 128, trained at micro-batches of
``--micro`` samples accumulated over the batch, where parameters, gradients and
optimizer state are most of the peak) takes a warm-up step and ``--steps`` timed steps
with SGD (momentum 0.9) or Adam, its state in fp32 or bf16. Columns: ``state_bytes`` (the
optimizer state's exact bytes after the steps), ``rss_growth`` (peak RSS growth above the
RSS after the data was loaded and the libraries warmed up), ``mem_ratio`` (bf16 /
fp32 of the same model and optimizer, same run), ``time_ratio`` (median step, bf16 / fp32;
a few steps on a shared machine: +-10-20% noise), ``opt_step_ms`` (the optimizer step
alone, median of 5 on the last gradients: what the lever adds to every step).

Accuracy: ``edgetrain train`` runs (fresh processes), fp32 against bf16 state, paired by
seed: the small ``cnn`` on 8x8 digits (SGD and Adam, 15 epochs), resnet18 on digits at
32x32 (SGD, 5 epochs), vgg11 on digits at 32x32 (SGD at 0.005, 8 epochs; no batch-norm,
nor dropout, so the whole batch trains what a plan's micro-batch 1 x 128 trains, up to
float rounding) and the zoo's tiny ``gpt`` on the bundled Python corpus (Adam and SGD, 3
epochs of 100 batches; test token accuracy). ``delta`` is bf16 minus fp32 test accuracy in
points, the mean over the seeds, with each seed's difference beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from headline import GPT_CONFIG
from procmem import (
    parse_or_run_child,
    peak_rss_bytes,
    reset_peak_rss,
    run_json_child,
    status_bytes,
)

MODELS = ("vgg11", "resnet18", "mobilenetv2")
OPTIMIZERS = ("sgd", "adam")
STATES = ("fp32", "bf16")
BATCH = 128
# accuracy workloads: (name, config, optimizers)
ACCURACY: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "cnn-digits8": (
        {"model": "cnn", "data": "digits", "batch_size": 64, "epochs": 15},
        ("sgd", "adam"),
    ),
    "resnet18-digits32": (
        {
            "model": "resnet18",
            "data": "digits",
            "image_size": 32,
            "channels": 3,
            "batch_size": 128,
            "epochs": 5,
        },
        ("sgd",),
    ),
    # vgg11 has no batch-norm: SGD at 0.01 diverges in epoch 5 (headline.py's workload)
    "vgg11-digits32": (
        {
            "model": "vgg11",
            "data": "digits",
            "image_size": 32,
            "channels": 3,
            "batch_size": 128,
            "epochs": 8,
        },
        ("sgd",),
    ),
    # the zoo's tiny language model on the bundled Python corpus (test token accuracy)
    "gpt-pycorpus": (
        {
            **GPT_CONFIG,  # headline.py's workload
            "batch_size": 32,
            "epochs": 3,
            "max_batches_per_epoch": 100,
        },
        ("adam", "sgd"),
    ),
}
LR = {"sgd": 0.01, "adam": 1e-3}
# gpt as headline.py (0.01 barely leaves the unigram); vgg11 at 0.005 (0.01 diverges)
LR_BY_WORKLOAD = {("gpt-pycorpus", "sgd"): 0.1, ("vgg11-digits32", "sgd"): 0.005}


def child(spec: dict[str, Any]) -> None:
    """One model, optimizer and state: peak RSS growth, step times, state bytes (JSON)."""
    import torch
    import torch.nn.functional as F

    from edgetrain.memory.optimizer_state import LowPrecisionState
    from edgetrain.zoo import build_model, load_dataset

    torch.set_num_threads(spec["threads"])
    data, _ = load_dataset("digits", image_size=32, channels=3)
    items = [data[i] for i in range(BATCH)]
    x = torch.stack([it[0] for it in items])
    y = torch.stack([torch.as_tensor(it[1]) for it in items])
    # the first optimizer step imports torch._dynamo (not this row's memory)
    warm = torch.nn.Parameter(torch.zeros(2))
    warm.grad = torch.ones(2)
    torch.optim.SGD([warm], lr=0.1, momentum=0.9).step()
    torch.optim.Adam([warm], lr=0.1).step()
    reset = reset_peak_rss()
    rss0 = status_bytes("VmRSS") or 0

    torch.manual_seed(0)
    model = build_model(spec["model"], num_classes=10, in_channels=3, input_size=(32, 32)).train()
    if spec["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=LR["sgd"], momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=LR["adam"])
    if spec["state"] == "bf16":
        LowPrecisionState(opt)
    micro = spec["micro"]
    times = []
    for i in range(spec["steps"] + 1):
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for lo in range(0, BATCH, micro):
            out = model(x[lo : lo + micro])
            (F.cross_entropy(out, y[lo : lo + micro], reduction="sum") / BATCH).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - started)
    opt_times = []  # the optimizer step alone, on the last gradients (given back after it)
    for _ in range(5):
        started = time.perf_counter()
        opt.step()
        opt_times.append(time.perf_counter() - started)
    state_bytes = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    print(
        json.dumps(
            {
                "rss_growth": peak_rss_bytes() - rss0 if reset else None,
                "times": times,
                "opt_step_s": statistics.median(opt_times),
                "state_bytes": state_bytes,
                "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            }
        )
    )


def run_child(spec: dict[str, Any]) -> dict[str, Any] | None:
    return run_json_child(__file__, spec, f"{spec['model']}/{spec['optimizer']}/{spec['state']}")


def memory_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for model in args.models:
        for optimizer in OPTIMIZERS:
            got: dict[str, dict[str, Any]] = {}
            for state in STATES:
                spec = {"model": model, "optimizer": optimizer, "state": state,
                        "micro": args.micro, "steps": args.steps, "threads": args.threads}  # fmt: skip
                out = run_child(spec)
                if out is not None:
                    got[state] = out
            if len(got) < 2:
                continue
            base, low = got["fp32"], got["bf16"]
            t0, t1 = statistics.median(base["times"]), statistics.median(low["times"])
            for state, o in got.items():
                rss = o["rss_growth"]
                ratio = rss / base["rss_growth"] if rss and base["rss_growth"] else None
                rows.append(
                    {
                        "model": model, "optimizer": optimizer, "state": state,
                        "micro": args.micro, "param_mib": o["param_bytes"] / 2**20,
                        "state_mib": o["state_bytes"] / 2**20,
                        "rss_growth_mib": rss / 2**20 if rss else None,
                        "saved_mib": (base["rss_growth"] - rss) / 2**20 if rss else None,
                        "mem_ratio": ratio,
                        "step_s": statistics.median(o["times"]),
                        "time_ratio": (t1 if state == "bf16" else t0) / t0,
                        "opt_step_ms": 1e3 * o["opt_step_s"],
                    }
                )  # fmt: skip
            print_memory(rows[-2:])
    return rows


def print_memory(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        rss = "" if r["rss_growth_mib"] is None else f"{r['rss_growth_mib']:7.1f}"
        ratio = "" if r["mem_ratio"] is None else f"{r['mem_ratio']:.3f}x"
        print(
            f"{r['model']:12s} {r['optimizer']:5s} {r['state']:5s} micro {r['micro']:3d}  "
            f"params {r['param_mib']:6.1f} MiB  state {r['state_mib']:6.1f} MiB  "
            f"RSS growth {rss} MiB ({ratio})  step {r['step_s']:.2f} s "
            f"({r['time_ratio']:.2f}x), optimizer step alone {r['opt_step_ms']:.0f} ms",
            flush=True,
        )


def train_acc(cfg: dict[str, Any], out: Path) -> float | None:
    import yaml

    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump({**cfg, "out": str(out)}))
    cmd = [sys.executable, "-m", "edgetrain", "train", str(config), "--overwrite", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  training failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return None
    summary = json.loads((out / "summary.json").read_text())
    key = "test_token_acc" if cfg.get("data") == "pycorpus" else "test_acc"
    return 100 * float((summary.get("test") or {})[key])


def accuracy_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    root = Path(args.out or tempfile.mkdtemp(prefix="edgetrain-state-"))
    root.mkdir(parents=True, exist_ok=True)
    for name in args.workloads:
        base_cfg, optimizers = ACCURACY[name]
        for optimizer in optimizers:
            diffs, accs = [], {s: [] for s in STATES}
            for seed in range(args.seeds):
                got = {}
                for state in STATES:
                    lr = LR_BY_WORKLOAD.get((name, optimizer), LR[optimizer])
                    cfg = {**base_cfg, "optimizer": optimizer, "lr": lr,
                           "momentum": 0.9, "seed": seed, "optimizer_state": state,
                           "monitor": {"enabled": False}}  # fmt: skip
                    if args.epochs:
                        cfg["epochs"] = args.epochs
                    got[state] = train_acc(cfg, root / f"{name}-{optimizer}-{state}-s{seed}")
                if None in got.values():
                    continue
                for s in STATES:
                    accs[s].append(got[s])
                diffs.append(got["bf16"] - got["fp32"])
            if not diffs:
                continue
            row = {
                "workload": name, "optimizer": optimizer, "seeds": len(diffs),
                "epochs": args.epochs or base_cfg["epochs"],
                "fp32_acc": statistics.mean(accs["fp32"]), "bf16_acc": statistics.mean(accs["bf16"]),
                "delta": statistics.mean(diffs), "per_seed": " ".join(f"{d:+.2f}" for d in diffs),
            }  # fmt: skip
            rows.append(row)
            print(
                f"{name:18s} {optimizer:5s} {row['epochs']:3d} epochs, {row['seeds']} seeds: "
                f"fp32 {row['fp32_acc']:.2f}%  bf16 {row['bf16_acc']:.2f}%  "
                f"delta {row['delta']:+.2f} pt  ({row['per_seed']})",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--workloads", nargs="*", default=list(ACCURACY), choices=list(ACCURACY))
    parser.add_argument("--micro", type=int, default=8, help="micro-batch of the memory rows")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per memory row")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the workloads'")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default=None, help="training runs' directory (default: a temp)")
    parser.add_argument("--csv", dest="csv_path", default=None)
    parser.add_argument(
        "--quick", action="store_true",
        help="vgg11 memory rows; accuracy of cnn-digits8 only, 1 seed",
    )  # fmt: skip
    args = parse_or_run_child(parser, argv, child)
    if args is None:
        return 0
    if args.quick:
        args.models = ["vgg11"]
        args.workloads = ["cnn-digits8"]
        args.seeds = 1
    print(f"memory: micro-batch {args.micro} of {BATCH}, {args.steps} timed steps, "
          f"{args.threads} threads")  # fmt: skip
    mem = memory_table(args)
    print(f"accuracy: {', '.join(args.workloads)}; {args.seeds} seed(s)")
    acc = accuracy_table(args)
    for path, rows in ((args.csv_path, mem), (args.json_path, {"memory": mem, "accuracy": acc})):
        if not path:
            continue
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if isinstance(rows, dict):
            Path(path).write_text(json.dumps(rows, indent=2))
        elif rows:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
