"""Final validation accuracy with lossy activation codecs vs uncompressed training.

Trains the same model, data, seed and epochs once per mode and seed (digits resized to 32x32x3 by
default) and prints the accuracy difference and the saved-activation bytes, so the goal
"int2 within 1 point of uncompressed" is measured side by side in one run.

    python benchmarks/activation_accuracy.py --model resnet18 --epochs 3 --modes none,int2
    python benchmarks/activation_accuracy.py --epochs 6 --modes none,int2 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

import edgetrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--modes", default="none,int2,int4,lossless")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds; each mode is trained once per seed"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    modes = args.modes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {
        "model": args.model,
        "data": "digits",
        "image_size": 32,
        "channels": 3,
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": args.lr,
        "lr_schedule": "cosine",
        "monitor": {"enabled": False},
    }
    rows = []
    with TemporaryDirectory() as tmp:
        for seed in seeds:  # seeds outside, modes inside: drift of the machine hits all modes
            for mode in modes:
                t0 = time.perf_counter()
                res = edgetrain.train(
                    {**base, "seed": seed, "activations": mode, "out": str(Path(tmp) / mode)},
                    overwrite=True,
                    progress=False,
                )
                rows.append(
                    {
                        "mode": mode,
                        "seed": seed,
                        "val_acc": float(res.history["val_acc"].iloc[-1]),
                        "test_acc": float(res.summary["test"]["test_acc"]),
                        "activation_bytes": float(res.history["activation_bytes"].max()),
                        "time_s": time.perf_counter() - t0,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

    def of(mode: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["mode"] == mode]

    ref = modes[0]
    print(
        f"machine: {platform.node()} {platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; {args.model} on digits 32x32x3 (val 180, test 180 "
        f"images), {args.epochs} epochs, batch {args.batch}, seeds {args.seeds}"
    )
    print(
        f"{'mode':<10}{'val_acc':>9}{'test_acc':>10}{'Δ val pts':>11}{'Δ test pts':>12}"
        f"{'Δ per seed (val+test)':>28}{'act bytes':>11}{'time s':>9}"
    )
    summary = []
    for mode in modes:
        val, test = of(mode, "val_acc"), of(mode, "test_acc")
        d_val = [100 * (a - b) for a, b in zip(val, of(ref, "val_acc"), strict=True)]
        d_test = [100 * (a - b) for a, b in zip(test, of(ref, "test_acc"), strict=True)]
        both = [(v + t) / 2 for v, t in zip(d_val, d_test, strict=True)]
        ratio = statistics.fmean(of(mode, "activation_bytes")) / statistics.fmean(
            of(ref, "activation_bytes")
        )
        per_seed = " ".join(f"{d:+.1f}" for d in both)
        print(
            f"{mode:<10}{statistics.fmean(val):>9.4f}{statistics.fmean(test):>10.4f}"
            f"{statistics.fmean(d_val):>+11.2f}{statistics.fmean(d_test):>+12.2f}"
            f"{per_seed:>28}{ratio:>10.3f}x{statistics.fmean(of(mode, 'time_s')):>9.1f}"
        )
        summary.append({"mode": mode, "delta_val_points": d_val, "delta_test_points": d_test})
    print(
        f"Δ = mode minus {ref}, in accuracy points, mean over seeds; one image is 0.56 points "
        "of either split"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "rows": rows, "summary": summary},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
