"""On a machine with an NVIDIA GPU: a short training run, its NVML energy per epoch, cross-checked.

Trains resnet18 on generated 32x32 images on the GPU with the monitor at its default interval,
then prints, per epoch, the time, the energy and its source, the average power, and the GPU
energy a second way: the trapezoid integral of the sampled total power (``power_w`` in
resources.csv: NVML power plus the CPU's) over the epoch. The two agree closely when the energy counter works (the
power reading is a ~1 s average, so short epochs differ more). Ends with the line the README
records: GPU model, energy per epoch (epoch 1, the warm-up, left out) and the sampling rate
achieved.

Usage:
    pip install -e ".[gpu]"
    python benchmarks/gpu_check.py [--epochs 4] [--model resnet18] [--samples 16384]
                                   [--out runs/gpu-check] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from edgetrain.train import train


def integrate_power(resources: pd.DataFrame, epoch: int, column: str) -> float | None:
    """Trapezoid integral of ``column`` (W) over the samples of one epoch, in joules."""
    rows = resources[resources["epoch"] == epoch].dropna(subset=[column])
    if len(rows) < 2:
        return None
    watts, t_s = rows[column].to_numpy(), rows["t_s"].to_numpy()
    return float(np.sum((watts[1:] + watts[:-1]) / 2 * np.diff(t_s)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--samples", type=int, default=16384, help="generated training images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: try the script itself"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: needs a CUDA GPU; torch.cuda.is_available() is False", file=sys.stderr)
        return 2

    result = train(
        overrides=[
            f"model={args.model}",
            "data=synthetic",
            f"data_args.num_samples={args.samples}",
            f"device={args.device}",
            f"epochs={args.epochs}",
            f"batch_size={args.batch}",
            f"out={args.out}",
        ],
        overwrite=True,
    )
    run = result.run_dir
    assert run is not None
    metrics = pd.read_csv(run / "metrics.csv")
    resources = pd.read_csv(run / "resources.csv")
    summary = json.loads((run / "summary.json").read_text())
    env = json.loads((run / "env.json").read_text())
    nvml = next((s for s in env["sensors"] if s["name"] == "nvml"), None)
    power = "power_w" if "power_w" in resources.columns else None

    table = Table(title=f"{args.model} on {args.device}: energy per epoch")
    for column in ("epoch", "time s", "energy J", "source", "avg W", "J from power samples"):
        table.add_column(column, justify="right")
    rows = []
    for _, m in metrics.iterrows():
        epoch = int(m["epoch"])
        integral = integrate_power(resources, epoch, power) if power else None
        rows.append(
            {
                "epoch": epoch,
                "time_s": float(m["time_s"]),
                "energy_j": float(m["energy_j"]),
                "energy_source": m["energy_source"],
                "avg_power_w": float(m["avg_power_w"]),
                "power_integral_j": integral,
                "peak_device_mem_bytes": float(m["peak_device_mem_bytes"]),
            }
        )
        table.add_row(
            str(epoch),
            f"{m['time_s']:.2f}",
            f"{m['energy_j']:.1f}",
            str(m["energy_source"]),
            f"{m['avg_power_w']:.1f}",
            "-" if integral is None else f"{integral:.1f}",
        )
    console = Console()
    console.print(table)
    later = [r for r in rows if r["epoch"] > 1] or rows
    peak = max(r["peak_device_mem_bytes"] for r in rows)
    peak_mib = "n/a" if peak != peak else f"{peak / 2**20:.0f} MiB"
    # the sampler's own rate: windows add samples at epoch edges, so use the median gap
    gaps = resources["t_s"].diff().dropna()
    gaps = gaps[gaps > 0]
    rate = 1 / float(gaps.median()) if len(gaps) else float("nan")
    line = (
        f"GPU: {nvml['reason'] if nvml else 'NVML not found'}; "
        f"{args.model}, batch {args.batch}, {args.samples} generated 32x32 images (80% "
        "trained on per epoch): "
        f"{statistics.fmean(r['energy_j'] for r in later):.1f} J per epoch "
        f"({statistics.fmean(r['time_s'] for r in later):.2f} s, "
        f"{statistics.fmean(r['avg_power_w'] for r in later):.1f} W average, "
        f"{later[0]['energy_source']}; epoch 1 left out), "
        f"sampler at {rate:.2f} Hz (interval {summary.get('monitor', {}).get('interval_s')} s), "
        f"peak device memory {peak_mib}"
    )
    console.print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"epochs": rows, "line": line, "env": env}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
