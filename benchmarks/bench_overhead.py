"""What the bench instrumentation costs, and whether its parts add up to the epoch.

Two measurements, side by side in one run:

1. Overhead. The same ``train()`` is run plain (no bench callback, ``sync_timing`` off) and
   instrumented (``BatchTimer`` writing every batch to a CSV file, ``sync_timing`` on),
   interleaved ABBA so that drift of a shared machine hits both alike. Reported: the
   median training time of the measured epochs (epoch 1 is warm-up), the ratio of the
   medians and the median of the per-pair ratios. The callback's own cost is also timed
   in isolation (hooks called on a fake state; CSV rows, which it writes at the end of
   each epoch), which other processes blur far less.
2. Accounting. For the instrumented runs, ``wait_s + copy_s + compute_s`` summed over an
   epoch's batches, divided by that epoch's training wall time measured by the callback
   (first batch request to end of last step) and by the loop's own ``time_s`` (which also
   holds building the DataLoader and starting its workers).

Usage::

    python benchmarks/bench_overhead.py                 # defaults: about a minute
    python benchmarks/bench_overhead.py --reps 5 --batches 60 --json out.json
    python benchmarks/bench_overhead.py --files --workers 2   # read .npy files from disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import edgetrain
from edgetrain.bench.export import export_dataset
from edgetrain.bench.timing import BATCH_COLUMNS, BatchTimer
from edgetrain.train import BatchTiming, train
from edgetrain.train.rundir import CsvLog


def _config(args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    return {
        "model": args.model,
        **data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_batches_per_epoch": args.batches,
        "split": [1.0, 0.0, 0.0],
        "num_workers": args.workers,
        "monitor": {"enabled": args.monitor},
        "seed": 0,
        "out": str(out),
    }


def _measured_times(history: Any, warmup: int) -> list[float]:
    return [
        float(t)
        for e, t in zip(history["epoch"], history["time_s"], strict=True)
        if int(e) > warmup
    ]


def _run(config: dict[str, Any], instrumented: bool, scratch: Path) -> dict[str, Any]:
    callbacks = []
    timer = None
    log = None
    if instrumented:
        log = CsvLog(scratch / f"batches-{time.monotonic_ns()}.csv", ["config", *BATCH_COLUMNS])
        timer = BatchTimer(on_batch=lambda r: log.append({"config": 0, **r.row()}))
        callbacks.append(timer)
    try:
        result = train(config, callbacks=callbacks, overwrite=True, progress=False)
    finally:
        if log is not None:
            log.close()
    out: dict[str, Any] = {"times_s": _measured_times(result.history, 1)}
    if timer is not None:
        epochs = [e for e in timer.epochs if e.epoch > 1]
        loop_time = {
            int(e): float(t)
            for e, t in zip(result.history["epoch"], result.history["time_s"], strict=True)
        }
        out["accounted_frac"] = [e.accounted_frac for e in epochs]
        out["parts_over_loop_time"] = [
            (e.wait_s + e.copy_s + e.compute_s) / loop_time[e.epoch] for e in epochs
        ]
        out["batch_s"] = [b.wait_s + b.copy_s + b.compute_s for b in timer.batches if b.epoch > 1]
    return out


class _FakeState:
    """Just what the callback reads."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batch_in_epoch = 0
        self.sync_timing = False
        self.epoch_row: dict[str, Any] = {}
        self.batch_timing = BatchTiming(wait_s=0.001, copy_s=0.0001, compute_s=0.01, samples=16)


def _hook_costs_s(scratch: Path, calls: int = 20000) -> tuple[float, float]:
    """Seconds per batch in the two per-batch hooks (inside the loop) and per CSV row
    (written at the end of the epoch, outside the timed training part)."""
    log = CsvLog(scratch / "hooks.csv", ["config", *BATCH_COLUMNS])
    timer = BatchTimer(on_batch=lambda r: log.append({"config": 0, **r.row()}))
    state = _FakeState()
    timer.on_epoch_start(state)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for i in range(calls):
        state.batch_in_epoch = i + 1
        timer.on_batch_start(state)  # type: ignore[arg-type]
        timer.on_batch_end(state)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    timer.on_epoch_end(state)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    log.close()
    return (t1 - t0) / calls, (t2 - t1) / calls


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs (ABBA order)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (1 is warm-up)")
    parser.add_argument("--batches", type=int, default=40, help="max batches per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--files", action="store_true", help="read .npy files (folder data set)")
    parser.add_argument("--monitor", action="store_true", help="keep the resource monitor on")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        size = args.image_size
        data: dict[str, Any] = {
            "data": "synthetic",
            "data_args": {"num_samples": args.batches * args.batch_size},
            "image_size": size,
            "channels": 3,
        }
        if args.files:
            root = scratch / "data"
            export_dataset(
                "synthetic", root, count=args.batches * args.batch_size, image_size=size, channels=3
            )
            data = {"data": "folder", "data_path": str(root)}
        config = _config(args, data, scratch / "run")
        plain: list[float] = []
        inst: list[float] = []
        pair_ratios: list[float] = []
        fracs: list[float] = []
        loop_fracs: list[float] = []
        batch_s: list[float] = []
        for rep in range(args.reps):
            order = (False, True) if rep % 2 == 0 else (True, False)
            means: dict[bool, float] = {}
            for instrumented in order:
                result = _run(config, instrumented, scratch)
                (inst if instrumented else plain).extend(result["times_s"])
                means[instrumented] = statistics.fmean(result["times_s"])
                if instrumented:
                    fracs += result["accounted_frac"]
                    loop_fracs += result["parts_over_loop_time"]
                    batch_s += result["batch_s"]
            pair_ratios.append(means[True] / means[False])
        hook_s, row_s = _hook_costs_s(scratch)

    plain_s, inst_s = _median(plain), _median(inst)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "edgetrain": edgetrain.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "epochs_measured_per_variant": len(plain),
        "plain_epoch_s_median": plain_s,
        "instrumented_epoch_s_median": inst_s,
        "plain_epoch_s_range": [min(plain), max(plain)],
        "instrumented_epoch_s_range": [min(inst), max(inst)],
        "overhead_ratio": inst_s / plain_s,
        "pair_ratios": pair_ratios,
        "pair_ratio_median": _median(pair_ratios),
        "hook_cost_per_batch_s": hook_s,
        "csv_row_cost_at_epoch_end_s": row_s,
        "median_batch_s": _median(batch_s),
        "hook_share_of_batch": hook_s / _median(batch_s),
        "accounted_frac_min": min(fracs),
        "accounted_frac_median": _median(fracs),
        "parts_over_loop_time_min": min(loop_fracs),
        "parts_over_loop_time_median": _median(loop_fracs),
    }
    m, v, s = report["machine"], report["versions"], report["settings"]
    print(f"machine: {m['platform']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}")
    print(f"versions: edgetrain {v['edgetrain']}, torch {v['torch']}, python {v['python']}")
    print(
        f"settings: {s['model']} {s['image_size']}x{s['image_size']} batch {s['batch_size']}, "
        f"{s['batches']} batches/epoch, {s['epochs']} epochs (1 warm-up), workers {s['workers']}, "
        f"{'npy files' if s['files'] else 'in memory'}, monitor {'on' if s['monitor'] else 'off'}; "
        f"{s['reps']} ABBA pairs -> {len(plain)} measured epochs per variant"
    )
    rows = [
        ("plain epoch (median) s", f"{plain_s:.4f}", f"range {min(plain):.4f}-{max(plain):.4f}"),
        (
            "instrumented epoch (median) s",
            f"{inst_s:.4f}",
            f"range {min(inst):.4f}-{max(inst):.4f}",
        ),
        ("ratio of medians instrumented / plain", f"{inst_s / plain_s:.4f}", "target <= 1.02"),
        (
            "ratio per ABBA pair (median)",
            f"{_median(pair_ratios):.4f}",
            "pairs " + ", ".join(f"{r:.3f}" for r in pair_ratios),
        ),
        ("hooks per batch (isolated)", f"{hook_s * 1e6:.1f} us", "inside the loop"),
        ("CSV row per batch (isolated)", f"{row_s * 1e6:.1f} us", "at epoch end, not timed"),
        (
            "hooks / median batch",
            f"{hook_s / _median(batch_s):.4%}",
            f"batch {_median(batch_s) * 1e3:.2f} ms",
        ),
        (
            "parts / train wall (median)",
            f"{_median(fracs):.4f}",
            f"min {min(fracs):.4f}; target >= 0.98",
        ),
        (
            "parts / loop time_s (median)",
            f"{_median(loop_fracs):.4f}",
            f"min {min(loop_fracs):.4f}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
