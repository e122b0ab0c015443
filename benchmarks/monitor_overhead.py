"""How much does the resource monitor slow training down? Monitor on vs off, side by side.

A plain PyTorch training loop (small CNN, random CIFAR-sized data) runs in alternating blocks
with the monitor off and on (order off, on, on, off, off, on, ... so that a slow drift of the
machine cancels), in one process. Reports the mean step time of each and their ratio; the median
ratio within adjacent off/on pairs of blocks, for wall time (per-block median step) and for
process CPU time per step (all threads: less disturbed by other processes on a shared
machine); the sampling rate achieved and the CPU cost of one sample. Goal: at most 1% slower
at the default interval.

Usage:
    python benchmarks/monitor_overhead.py [--interval 0.2] [--blocks 20] [--steps 25]
                                          [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from edgetrain.measure import (
    DEFAULT_INTERVAL_S,
    Monitor,
    PsutilSensor,
    discover_sensors,
    environment_info,
)


def make_model() -> nn.Module:
    """A small CIFAR-style CNN."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 10),
    )


def run_block(step: Any, steps: int) -> tuple[list[float], float]:
    """Wall seconds of each step, and the process CPU seconds of the whole block.

    Process CPU time covers every thread of this process (torch's workers and the sampler),
    so it shows what the monitor costs even when other processes load the machine.
    """
    times = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times, time.process_time() - cpu_start


def thread_cpu_s(native_id: int | None) -> float | None:
    """On-CPU seconds of one thread of this process (Linux schedstat, nanoseconds)."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _pair_ratios(blocks: list[dict[str, Any]], key: str) -> list[float]:
    """on/off ratio of ``key`` within each adjacent pair of blocks (one off, one on)."""
    ratios = []
    for i in range(0, len(blocks) - 1, 2):
        pair = {b["kind"]: b[key] for b in blocks[i : i + 2]}
        ratios.append(pair["on"] / pair["off"])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_S, help="monitor interval_s"
    )
    parser.add_argument("--blocks", type=int, default=20, help="blocks, alternating off/on (even)")
    parser.add_argument("--steps", type=int, default=25, help="training steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-uss", action="store_true", help="do not read USS (smaps_rollup)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    blocks = max(2, args.blocks + args.blocks % 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    sensors = None
    if args.no_uss:  # the default sensors, with psutil's USS reads switched off
        sensors, _ = discover_sensors()
        sensors = [PsutilSensor(uss=False) if isinstance(s, PsutilSensor) else s for s in sensors]
    monitor = Monitor(interval_s=args.interval, sensors=sensors)
    stamps: list[float] = []  # t_s of every sample, from the sampler thread
    monitor.add_listener(lambda sample: stamps.append(sample["t_s"]))
    run_block(step, args.warmup)

    # off, on, on, off, off, on, ...: a linear drift of the machine cancels
    order = (["off", "on", "on", "off"] * (blocks // 4 + 1))[:blocks]
    results: list[dict[str, Any]] = []
    block_rates_hz: list[float] = []
    sampler_cpu_s, on_wall_s = 0.0, 0.0
    for kind in order:
        if kind == "on":
            first = len(stamps)
            wall_start = time.perf_counter()
            monitor.start()
            thread = monitor._thread
        times, cpu_s = run_block(step, args.steps)
        if kind == "on":
            used = thread_cpu_s(thread.native_id if thread else None)  # before the thread ends
            monitor.stop()
            on_wall_s += time.perf_counter() - wall_start
            sampler_cpu_s = sampler_cpu_s + used if used is not None else float("nan")
            block = stamps[first:]
            if len(block) >= 2 and block[-1] > block[0]:
                block_rates_hz.append((len(block) - 1) / (block[-1] - block[0]))
        results.append(
            {
                "kind": kind,
                "mean_s": statistics.fmean(times),
                "median_s": statistics.median(times),
                "cpu_per_step_s": cpu_s / args.steps,
            }
        )

    sample_costs = []
    for _ in range(50):
        start = time.perf_counter()
        monitor.sample_now()
        sample_costs.append(time.perf_counter() - start)
    sample_cost_s = statistics.median(sample_costs)
    monitor.close()

    def mean_of(kind: str, key: str) -> float:
        return statistics.fmean(b[key] for b in results if b["kind"] == kind)

    rate_hz = statistics.fmean(block_rates_hz) if block_rates_hz else 0.0
    env = environment_info(monitor.sensor_statuses)
    wall_pairs = _pair_ratios(results, "median_s")
    cpu_pairs = _pair_ratios(results, "cpu_per_step_s")
    result = {
        "interval_s": args.interval,
        "uss": not args.no_uss,
        "blocks": blocks,
        "steps_per_block": args.steps,
        "batch": args.batch,
        "step_off_s": mean_of("off", "mean_s"),
        "step_on_s": mean_of("on", "mean_s"),
        "ratio_mean_step": mean_of("on", "mean_s") / mean_of("off", "mean_s"),
        "ratio_median_pair_wall": statistics.median(wall_pairs),
        "ratio_median_pair_cpu": statistics.median(cpu_pairs),
        "pair_ratios_wall": wall_pairs,
        "pair_ratios_cpu": cpu_pairs,
        "blocks_detail": results,
        "sample_rate_hz": rate_hz,
        "sample_cost_s": sample_cost_s,
        "sampler_cpu_share_of_one_core": sample_cost_s * rate_hz,
        "sampler_thread_cpu_share_of_one_core": sampler_cpu_s / on_wall_s,
        "energy_source": monitor.energy_source,
        "cpu_model": env["cpu"]["model"],
        "cores_physical": env["cpu"]["cores_physical"],
        "cores_logical": env["cpu"]["cores_logical"],
        "torch": env["torch"]["version"],
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }

    def spread(ratios: list[float]) -> str:
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
        return f"{statistics.median(ratios):.4f} (IQR {q[0]:.3f}-{q[2]:.3f})"

    table = Table(title=f"Monitor overhead (interval {args.interval} s)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("mean step, monitor off", f"{1e3 * result['step_off_s']:.2f} ms")
    table.add_row("mean step, monitor on", f"{1e3 * result['step_on_s']:.2f} ms")
    table.add_row("ratio of mean steps on / off", f"{result['ratio_mean_step']:.4f}")
    table.add_row("median on/off ratio, adjacent blocks, wall", spread(wall_pairs))
    table.add_row("median on/off ratio, adjacent blocks, CPU", spread(cpu_pairs))
    table.add_row("sample rate achieved", f"{rate_hz:.2f} Hz")
    table.add_row("one sample (median)", f"{1e6 * sample_cost_s:.0f} us")
    table.add_row(
        "one sample x rate", f"{100 * result['sampler_cpu_share_of_one_core']:.3f}% of one core"
    )
    table.add_row(
        "sampler thread CPU, measured (schedstat)",
        f"{100 * result['sampler_thread_cpu_share_of_one_core']:.3f}% of one core",
    )
    table.add_row("energy source", result["energy_source"])
    table.add_row(
        "machine",
        f"{result['cpu_model']}, {result['cores_physical']} physical / "
        f"{result['cores_logical']} logical cores",
    )
    table.add_row(
        "load average (1/5/15 min)", " ".join(f"{v:.2f}" for v in result["load_average"] or [])
    )
    table.add_row("torch", f"{result['torch']}, {result['torch_threads']} threads")
    table.add_row(
        "repetitions",
        f"{blocks} blocks x {args.steps} steps (batch {args.batch}), {args.warmup} warm-up",
    )
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
