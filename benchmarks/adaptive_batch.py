"""The memory-budget controller vs every fixed micro-batch, side by side.

For one model, data set, logical batch and memory budget, trains:

- ``budget``: ``adapt.policy: budget`` (probes, fits the micro-batch to the budget with
  ``adapt.margin`` to spare, gradient accumulation keeps the logical batch);
- ``fixed m``: ``micro_batch_size: m`` for every power of two m up to the batch (same
  logical batch, so the same learning up to floating-point rounding).

Every run has the same ``cpu_allocator`` (``--allocator``, default ``release``: what a
budget run gets on CPU with ``auto``), so that only the micro-batch differs.

Each run is a fresh process (on CPU the resident size keeps what earlier work touched, so
runs in one process would measure each other). Every run measures its peak memory the
same way the controller does (``edgetrain.adapt.meters``: on CPU the RSS high-water mark
above the RSS at fit start plus the model tensors resident then; on CUDA the allocator's
peak), over training steps and evaluation (evaluation in chunks of the micro-batch for
every run), not over checkpoint writes. Repetitions are interleaved (rep 0: all
configurations, rep 1: all, ...); the table shows medians over repetitions.

Reported per configuration: final micro-batch and accumulation steps, peak memory vs the
budget, throughput of the training steps in epochs after the first (samples per wall
second, and samples per second of process CPU time, which the other processes of a shared
machine disturb less; the throughput ratio uses the latter), final validation accuracy.

Goals: zero budget violations for the controller; at least 90% of the throughput of the
fastest fixed micro-batch that fits the budget; final accuracy within 0.5 points of the
fixed run with the same effective batch (micro-batch = batch).

Usage:
    python benchmarks/adaptive_batch.py --quick [--json out.json]
    python benchmarks/adaptive_batch.py [--model vgg11] [--data digits] [--image-size N]
        [--channels N] [--batch-size 256] [--budget 64MiB] [--epochs 3] [--reps 3]
        [--micros 16,32,64,128,256] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(width=160)
MiB = 2**20


# -- one run, in a child process ---------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    from edgetrain.adapt import make_meter
    from edgetrain.config import load_config
    from edgetrain.train import Callback, TrainState, prepare_data, train
    from edgetrain.train.features.budget import AdaptiveCallback, _resident_tensor_bytes

    class Peak(Callback):
        """The controller's measurement, for fixed runs (and eval in micro-batch chunks)."""

        def __init__(self) -> None:
            self.meter: Any = None
            self.peak = 0
            self.chunk = 1

        def wrap_forward(self, forward: Any) -> Any:
            def chunked(x: torch.Tensor) -> torch.Tensor:
                if torch.is_grad_enabled() or x.shape[0] <= self.chunk:
                    return forward(x)
                return torch.cat([forward(p) for p in x.split(self.chunk)])

            return chunked

        def on_fit_start(self, state: TrainState) -> None:
            self.meter = make_meter(state.device)
            self.meter.start(_resident_tensor_bytes(state.model, state.optimizer))
            self.chunk = state.micro_batch_size

        def on_epoch_start(self, state: TrainState) -> None:
            self.meter.reset_peak()

        def on_batch_end(self, state: TrainState) -> None:
            self.peak = max(self.peak, self.meter.peak_bytes() or 0)

        def on_epoch_end(self, state: TrainState) -> None:
            self.peak = max(self.peak, self.meter.peak_bytes() or 0)

    class Cpu(Callback):
        """Process CPU time of the training steps (epochs after the first): less disturbed
        than wall time by the other processes of a shared machine."""

        def __init__(self) -> None:
            self.samples = 0
            self.cpu_s = 0.0
            self._t0 = 0.0
            self._last = 0.0
            self._n = 0

        def on_epoch_start(self, state: TrainState) -> None:
            self._t0 = self._last = time.process_time()
            self._n = 0

        def on_batch_end(self, state: TrainState) -> None:
            self._last = time.process_time()
            self._n += state.batch_timing.samples if state.batch_timing else 0

        def on_epoch_end(self, state: TrainState) -> None:
            if state.epoch >= 1 or state.config.epochs == 1:
                self.samples += self._n
                self.cpu_s += self._last - self._t0

    overrides = [
        f"model={spec['model']}",
        f"data={spec['data']}",
        f"batch_size={spec['batch_size']}",
        f"epochs={spec['epochs']}",
        f"device={spec['device']}",
        "monitor.enabled=false",
        f"out={spec['out']}",
        # every run with the same CPU allocator (a budget run's auto is release): the
        # comparison is of micro-batches, not of allocators
        f"cpu_allocator={spec.get('allocator', 'release')}",
    ]
    if spec.get("image_size"):
        overrides.append(f"image_size={spec['image_size']}")
    if spec.get("channels"):
        overrides.append(f"channels={spec['channels']}")
    if spec["kind"] == "budget":
        overrides += [f"budget.memory={spec['budget']}", "adapt.policy=budget"]
    else:
        overrides.append(f"micro_batch_size={spec['micro']}")
    cfg = load_config(overrides=overrides)
    data, _ = prepare_data(cfg)
    peak_cb, cpu = Peak(), Cpu()
    if spec["kind"] == "budget":
        callbacks: list[Any] = [AdaptiveCallback(cfg, data.train, has_validation=True), cpu]
    else:
        callbacks = [peak_cb, cpu]
    del data
    result = train(cfg, callbacks=callbacks, overwrite=True, progress=False)
    history = result.history
    steady = history.iloc[1:] if len(history) > 1 else history
    if spec["kind"] == "budget":
        peak = result.summary["adapt"]["measured_peak_bytes"]
    else:
        peak = peak_cb.peak
    return {
        "kind": spec["kind"],
        "micro": int(history.micro_batch_size.iloc[-1]),
        "accum": int(history.accum_steps.iloc[-1]),
        "peak_bytes": int(peak),
        "samples_per_s": float(steady.samples_per_s.mean()),
        "samples_per_cpu_s": cpu.samples / cpu.cpu_s if cpu.cpu_s > 0 else float("nan"),
        "val_acc": float(history.val_acc.iloc[-1]),
        "violations": result.summary.get("adapt", {}).get("budget_violations"),
    }


# -- the parent: schedule, collect, report -----------------------------------------------


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec['kind']} {spec.get('micro')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--budget", default="64MiB")
    parser.add_argument(
        "--allocator", default="release", choices=("release", "keep"),
        help="cpu_allocator of every run (default release: what a budget run gets on CPU)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--micros", help="fixed micro-batches, e.g. 16,32,64 (default: 2^k)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 rep, micro >= 16")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    from edgetrain.units import format_bytes, parse_bytes

    epochs, reps = (2, 1) if args.quick else (args.epochs, args.reps)
    if args.micros:
        micros = [int(m) for m in args.micros.split(",")]
    else:
        micros = [2**k for k in range(20) if 2**k <= args.batch_size]
        if args.quick:
            micros = [m for m in micros if m >= 16] or micros[-1:]
    budget = parse_bytes(args.budget, name="--budget")
    configs = [("budget", None)] + [("fixed", m) for m in micros]
    machine = _machine()
    results: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for kind, micro in configs:
                name = "budget" if kind == "budget" else f"fixed {micro}"
                spec = {
                    "kind": kind,
                    "micro": micro,
                    "model": args.model,
                    "data": args.data,
                    "image_size": args.image_size,
                    "channels": args.channels,
                    "batch_size": args.batch_size,
                    "budget": args.budget,
                    "allocator": args.allocator,
                    "epochs": epochs,
                    "device": args.device,
                    "threads": args.threads,
                    "out": str(Path(tmp) / f"{name.replace(' ', '-')}-{rep}"),
                }
                console.print(f"rep {rep}: {name} ...", highlight=False)
                results.setdefault(name, []).append(_run_child(spec))
    machine["load_avg_end"] = os.getloadavg()
    machine["wall_s"] = time.perf_counter() - t0

    summary: dict[str, dict[str, Any]] = {}
    for name, rows in results.items():
        summary[name] = {
            "micro": rows[-1]["micro"],
            "accum": rows[-1]["accum"],
            "peak_bytes": _median(rows, "peak_bytes"),
            "max_peak_bytes": max(r["peak_bytes"] for r in rows),
            "samples_per_s": _median(rows, "samples_per_s"),
            "samples_per_cpu_s": _median(rows, "samples_per_cpu_s"),
            "val_acc": _median(rows, "val_acc"),
            "fits": all(r["peak_bytes"] <= budget for r in rows),
        }
    fitting = [s for n, s in summary.items() if n != "budget" and s["fits"]]
    fastest = max((s["samples_per_cpu_s"] for s in fitting), default=None)
    reference = summary.get(f"fixed {args.batch_size}")
    ctrl = summary["budget"]
    throughput_ratio = ctrl["samples_per_cpu_s"] / fastest if fastest else None
    acc_diff = 100 * (ctrl["val_acc"] - reference["val_acc"]) if reference else None

    table = Table(
        title=(
            f"{args.model} on {args.data}, logical batch {args.batch_size}, budget "
            f"{format_bytes(budget)}, {epochs} epochs, {reps} rep(s), device {args.device}"
        )
    )
    for col in (
        "config",
        "micro",
        "accum",
        "peak",
        "peak/budget",
        "fits",
        "samples/s (wall)",
        "samples/CPU-s",
        "x fastest fitting (CPU)",
        "val_acc",
        "acc vs fixed batch (pts)",
    ):
        table.add_column(col, justify="left" if col == "config" else "right")
    for name, s in summary.items():
        ratio = s["samples_per_cpu_s"] / fastest if fastest else None
        diff = 100 * (s["val_acc"] - reference["val_acc"]) if reference else None
        table.add_row(
            name,
            str(s["micro"]),
            str(s["accum"]),
            format_bytes(s["peak_bytes"]),
            f"{s['peak_bytes'] / budget:.2f}",
            "yes" if s["fits"] else "NO",
            f"{s['samples_per_s']:.0f}",
            f"{s['samples_per_cpu_s']:.0f}",
            "-" if ratio is None else f"{ratio:.2f}",
            f"{s['val_acc']:.4f}",
            "-" if diff is None else f"{diff:+.2f}",
        )
    console.print(table)
    goals = {
        "zero_violations": ctrl["fits"],
        "throughput_ratio": throughput_ratio,
        "throughput_goal_met": throughput_ratio is not None and throughput_ratio >= 0.9,
        "accuracy_diff_pts": acc_diff,
        "accuracy_goal_met": acc_diff is not None and abs(acc_diff) <= 0.5,
    }
    console.print(
        f"controller: peak {format_bytes(ctrl['max_peak_bytes'])} of {format_bytes(budget)} "
        f"(violations: {'none' if ctrl['fits'] else 'YES'}); throughput "
        f"{'-' if throughput_ratio is None else f'{throughput_ratio:.2f}'}x the fastest fitting "
        f"fixed micro-batch in samples per CPU second (goal >= 0.90); accuracy "
        f"{'-' if acc_diff is None else f'{acc_diff:+.2f}'} pts vs fixed {args.batch_size} "
        "(goal within 0.5)",
        highlight=False,
    )
    console.print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, load average "
        f"{machine['load_avg_start'][0]:.1f} -> {machine['load_avg_end'][0]:.1f} (shared: "
        f"throughput is noisy); python {machine['python']}, torch {machine['torch']}, "
        f"{args.threads} thread(s); {reps} rep(s), medians; {machine['wall_s']:.0f} s",
        highlight=False,
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        **vars(args),
                        "json": str(args.json),
                        "epochs": epochs,
                        "reps": reps,
                    },
                    "machine": machine,
                    "budget_bytes": budget,
                    "results": results,
                    "summary": summary,
                    "goals": goals,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
