"""Final validation accuracy with lossy activation codecs vs uncompressed training.

Trains the same model, data, seed and epochs once per mode (digits resized to 32x32x3 by
default) and prints the accuracy difference and the saved-activation bytes, so the goal
"int2 within 1 point of uncompressed" is measured side by side in one run.

    python benchmarks/activation_accuracy.py --model resnet18 --epochs 3 --modes none,int2
"""

from __future__ import annotations

import argparse
import json
import platform
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = {
        "model": args.model,
        "data": "digits",
        "image_size": 32,
        "channels": 3,
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": args.lr,
        "lr_schedule": "cosine",
        "seed": args.seed,
        "monitor": {"enabled": False},
    }
    rows = []
    with TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            t0 = time.perf_counter()
            res = edgetrain.train(
                {**base, "activations": mode, "out": str(Path(tmp) / mode)}, progress=False
            )
            rows.append(
                {
                    "mode": mode,
                    "val_acc": float(res.history["val_acc"].iloc[-1]),
                    "test_acc": float(res.summary["test"]["test_acc"]),
                    "activation_bytes": float(res.history["activation_bytes"].max()),
                    "time_s": time.perf_counter() - t0,
                }
            )
    ref = rows[0]
    print(
        f"machine: {platform.node()} {platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; {args.model} on digits 32x32x3, "
        f"{args.epochs} epochs, batch {args.batch}, seed {args.seed}, one run per mode"
    )
    print(
        f"{'mode':<10}{'val_acc':>9}{'Δ points':>10}{'test_acc':>10}{'act bytes':>11}{'time s':>9}"
    )
    for r in rows:
        delta = 100 * (r["val_acc"] - ref["val_acc"])
        ratio = r["activation_bytes"] / ref["activation_bytes"]
        print(
            f"{r['mode']:<10}{r['val_acc']:>9.4f}{delta:>+10.2f}{r['test_acc']:>10.4f}"
            f"{ratio:>10.3f}x{r['time_s']:>9.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
