"""Sweep throughput: trials per hour with 1 and 2 workers, and the harness overhead.

Runs the same small sweep (same trials: the random sampler is seeded per trial number)
with 1 and with 2 workers, for each trial launcher (``zygote``: forked from a pre-loaded
process; ``subprocess``: a fresh Python per trial). Each trial trains with one thread
(OMP_NUM_THREADS=1, torch threads 1), so on a 2-core machine two workers can at best
double the rate.

Overhead = worker time not spent in training epochs: (workers x sweep wall time - sum of
the trials' epoch times) / sum of epoch times. It is broken down per trial into process
start-up (interpreter and imports, or a fork), in-trial setup (data, model, monitor,
test evaluation, checkpoint and model files) and study bookkeeping (ask/tell, heartbeat,
storage). A zygote's one-time start is measured separately.

    python benchmarks/sweep_scaling.py                 # 6 trials, 8 epochs each
    python benchmarks/sweep_scaling.py --trials 4 --epochs 2 --json out.json

Goals (issue 7): overhead under 5% of trial time; 2 workers >= 1.7x the rate of 1. The
"per trial %" column leaves out the zygote starts (once per worker and sweep, measured
separately): what each further trial costs, the figure that matters for long sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported anywhere
os.environ["MKL_NUM_THREADS"] = "1"


def _space(epochs: int) -> dict[str, Any]:
    return {
        "base": {
            "model": "cnn",
            "model_args": {"channels": [32, 64]},
            "data": "digits",
            "image_size": 32,  # digits resized to 32x32: about 1 s per epoch on one core
            "epochs": epochs,
            "batch_size": 32,
            "precision": "fp32",
            "monitor": {"interval_s": 0.2},
        },
        # knobs that barely change the cost of a trial, so runs are comparable
        "params": {
            "lr": {"low": 0.005, "high": 0.1, "log": True},
            "momentum": {"low": 0.5, "high": 0.95},
        },
        "seed": 0,
    }


def _machine() -> dict[str, Any]:
    import optuna
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "load_avg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _zygote_start_s() -> float:
    from edgetrain.sweep.launch import ZygoteLauncher

    launcher = ZygoteLauncher(1)
    t0 = time.perf_counter()
    launcher._ensure()
    elapsed = time.perf_counter() - t0
    launcher.close()
    return elapsed


def _one(
    space: dict[str, Any], trials: int, workers: int, launcher: str, root: Path, zygote_s: float
) -> dict[str, Any]:
    from edgetrain.sweep.runner import run_sweep
    from edgetrain.sweep.space import load_space

    out = root / f"{launcher}-w{workers}"
    t0 = time.perf_counter()
    result = run_sweep(
        load_space(space),
        trials,
        workers=workers,
        out=out,
        threads=1,
        launcher=launcher,
        progress=False,
    )
    wall_s = time.perf_counter() - t0
    records = [r for r in result.records if r.state == "complete"]
    if len(records) != trials:
        raise SystemExit(f"{launcher} x{workers}: only {len(records)} of {trials} trials completed")
    train_s = [float(r.metrics["time_s"]) for r in records]
    startup_s = []
    setup_s = []
    for r in records:
        report = json.loads((out / "trials" / str(r.number) / "trial.json").read_text())
        timing = report["timing"]
        startup = float(timing.get("startup_s", 0.0))
        startup_s.append(startup)
        setup_s.append(float(timing["process_s"]) - startup - float(r.metrics["time_s"]))
    storage_s = [r.storage_s for r in records]
    total_train = sum(train_s)
    overhead = workers * wall_s - total_train
    # each worker starts its zygote once per sweep: a fixed cost, not one per trial
    once = workers * zygote_s if launcher == "zygote" else 0.0
    return {
        "launcher": launcher,
        "workers": workers,
        "trials": trials,
        "wall_s": wall_s,
        "trials_per_hour": trials / wall_s * 3600,
        "train_s_per_trial": total_train / trials,
        "overhead_s_per_trial": overhead / trials,
        "overhead_pct": 100 * overhead / total_train,
        "once_per_sweep_s": once,
        "steady_overhead_pct": 100 * (overhead - once) / total_train,
        "startup_s_per_trial": statistics.mean(startup_s),
        "setup_s_per_trial": statistics.mean(setup_s),
        "storage_s_per_trial": statistics.mean(storage_s),
        "val_acc_mean": statistics.mean(float(r.metrics["val_acc"]) for r in records),
    }


def _table(rows: list[dict[str, Any]], machine: dict[str, Any], zygote_s: float, args: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        caption="per trial: train = epoch time; train x = vs the 1-worker run; "
        "overhead = workers x wall / trials - train; per trial = overhead without the "
        "zygote starts (once per worker and sweep)",
        title=f"sweep scaling: {args.trials} trials of cnn on 32x32 digits, {args.epochs} epochs, "
        "1 thread each",
    )
    for col in (
        "launcher",
        "workers",
        "wall s",
        "trials/h",
        "x 1 worker",
        "train s",
        "train x",
        "overhead s",
        "overhead %",
        "per trial %",
        "start-up s",
        "setup s",
        "study s",
    ):
        table.add_column(col, justify="right")
    base = {r["launcher"]: r["trials_per_hour"] for r in rows if r["workers"] == 1}
    base_train = {r["launcher"]: r["train_s_per_trial"] for r in rows if r["workers"] == 1}
    for r in rows:
        table.add_row(
            r["launcher"],
            str(r["workers"]),
            f"{r['wall_s']:.1f}",
            f"{r['trials_per_hour']:.0f}",
            f"{r['trials_per_hour'] / base[r['launcher']]:.2f}" if r["launcher"] in base else "-",
            f"{r['train_s_per_trial']:.2f}",
            f"{r['train_s_per_trial'] / base_train[r['launcher']]:.2f}"
            if r["launcher"] in base_train
            else "-",
            f"{r['overhead_s_per_trial']:.2f}",
            f"{r['overhead_pct']:.1f}",
            f"{r['steady_overhead_pct']:.1f}",
            f"{r['startup_s_per_trial']:.2f}",
            f"{r['setup_s_per_trial']:.2f}",
            f"{r['storage_s_per_trial']:.3f}",
        )
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(table)
    console.print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; python "
        f"{machine['python']}, torch {machine['torch']}, optuna {machine['optuna']}; load average "
        f"{machine['load_avg_start']} at start, {machine.get('load_avg_end')} at end; one run each "
        "(no repetitions)",
        highlight=False,
    )
    slow = [
        r["train_s_per_trial"] / base_train[r["launcher"]]
        for r in rows
        if r["workers"] > 1 and r["launcher"] in base_train
    ]
    if slow and max(slow) > 1.15:
        console.print(
            f"[bold yellow]note:[/] side by side, trials trained up to {max(slow):.2f}x slower than "
            "alone (column 'train x'): the cores were not free (other processes; see the load "
            "average), so the worker scaling here measures that contention, not the harness.",
            highlight=False,
        )
    console.print(
        f"zygote start (once per worker, inside the first trial's overhead): {zygote_s:.1f} s. "
        "start-up = process start to imports done; setup = the rest of the trial process outside "
        "training epochs; study = ask/tell and storage writes after a trial.",
        highlight=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="trials per run (even: 2 workers)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--launchers", nargs="+", default=["zygote", "subprocess"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="keep the sweep directories here")
    args = parser.parse_args(argv)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    machine = _machine()
    zygote_s = _zygote_start_s() if "zygote" in args.launchers else float("nan")
    space = _space(args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for launcher in args.launchers:
            for workers in args.workers:
                rows.append(_one(space, args.trials, workers, launcher, root, zygote_s))
                print(json.dumps(rows[-1]), file=sys.stderr)
    machine["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    _table(rows, machine, zygote_s, args)
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine, "zygote_start_s": zygote_s, "runs": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
