"""Fixtures that write synthetic run directories following the docs/design.md contract."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from edgetrain.contract import DECISIONS_COLUMNS, METRICS_COLUMNS, RESOURCES_BASE_COLUMNS

METRICS_HEADER = list(METRICS_COLUMNS)
BASE_RESOURCES = list(RESOURCES_BASE_COLUMNS)
GPU_RESOURCES = ["gpu_util_pct", "gpu_mem_bytes", "gpu_power_w", "gpu1_util_pct", "energy_j"]
DECISIONS_HEADER = list(DECISIONS_COLUMNS)
MIB = 1024**2
GIB = 1024**3
SETUP_S = 1.0  # monitor samples before epoch 1 (epoch column empty)
SAMPLE_S = 0.5
EPOCH_TIMES = [10.0, 12.0, 11.0, 10.0, 12.0, 11.0]
GPU_POWER_W = 40.0


def _write_csv(path: Path, header: list[str], rows: list[list[Any]], cut_last: bool) -> None:
    """Write rows like the run writer (one flushed line each); optionally cut the last."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if cell is None else cell for cell in row])
    if cut_last:
        text = path.read_text(encoding="utf-8")
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        path.write_text(text[: len(text) - 1 - len(last) // 2], encoding="utf-8")


def _config(adapt: bool, extra_keys: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"name": "resnet18", "num_classes": 10, "pretrained": False},
        "data": {
            "name": "cifar10",
            "root": "/data/cifar10",
            "augment": ["random_crop(32, padding=4)", "horizontal_flip", "normalize"],
            "val_fraction": 0.1,
            "num_workers": 2,
        },
        "train": {"epochs": 6, "batch_size": 64, "seed": 0, "device": "auto"},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005},
        "budget": {"memory": "1.5GiB", "energy": None},
        "adapt": {"enabled": adapt, "min_batch_size": 16, "max_batch_size": 128},
        "monitor": {"interval_s": SAMPLE_S, "sensors": "auto"},
    }
    if extra_keys:
        config["extra"] = {f"option_{i:03d}": i * 0.5 for i in range(extra_keys)}
    return config


def write_run(
    path: Path,
    *,
    epochs: int = 6,
    gpu: bool = True,
    adapt: bool = True,
    status: str | None = "completed",
    cut_last: bool = False,
    extra_config_keys: int = 0,
    metrics_overrides: dict[str, list[Any]] | None = None,
) -> Path:
    """Write a run directory with known numbers.

    Epoch e lasts ``EPOCH_TIMES[e - 1]`` seconds (cycled beyond six epochs) and starts at
    ``SETUP_S + sum(EPOCH_TIMES[:e - 1])``; with a GPU the energy of an epoch is
    ``GPU_POWER_W * time_s`` (measured:nvml), without one ``5 W * time_s`` (estimated).
    """
    path.mkdir(parents=True, exist_ok=True)
    times = [EPOCH_TIMES[i % len(EPOCH_TIMES)] for i in range(epochs)]  # cycled past 6
    power_w = GPU_POWER_W if gpu else 5.0
    source = "measured:nvml" if gpu else "estimated:cpu-tdp"
    batch = [64] + [32] * (epochs - 1) if adapt else [64] * epochs
    lr = [0.1 if e < 3 else 0.05 for e in range(1, epochs + 1)] if adapt else [0.1] * epochs

    records = []
    for e in range(1, epochs + 1):
        t = times[e - 1]
        records.append(
            {
                "epoch": e,
                "time_s": t,
                "train_loss": 2.0 / e,
                "train_acc": 0.3 + 0.1 * e,
                "val_loss": 2.2 / e,
                "val_acc": min(1.0, 0.25 + 0.12 * e),
                "lr": lr[e - 1],
                "batch_size": batch[e - 1],
                "micro_batch_size": batch[e - 1] // 2 if adapt else batch[e - 1],
                "accum_steps": 2 if adapt else 1,
                "samples_per_s": 4500.0 / t,
                "energy_j": power_w * t,
                "energy_source": source,
                "avg_power_w": power_w,
                "peak_rss_bytes": (500 + 10 * e) * MIB,
                "peak_device_mem_bytes": (800 + 5 * e) * MIB if gpu else None,
                "activation_bytes": (120 - 10 * e) * MIB if adapt else None,
                "param_sparsity": None,
                "trainable_frac": round(1.0 - 0.1 * e, 3) if adapt else None,
            }
        )
    for column, values in (metrics_overrides or {}).items():
        for record, value in zip(records, values, strict=True):
            record[column] = value
    # every contract column, in the contract's order (the ones not set here stay empty)
    metrics = [[record.get(column) for column in METRICS_HEADER] for record in records]
    _write_csv(path / "metrics.csv", METRICS_HEADER, metrics, cut_last)

    header = BASE_RESOURCES + (GPU_RESOURCES if gpu else [])
    rows: list[list[Any]] = []
    t, energy = 0.0, 0.0
    spans = [(None, SETUP_S)] + [(e, times[e - 1]) for e in range(1, epochs + 1)]
    for epoch, span in spans:
        for i in range(int(span / SAMPLE_S)):
            row: list[Any] = [t, epoch, 50.0 + (i % 7), 3 * GIB + i * MIB, 600 * MIB + i * MIB]
            if gpu:
                busy = epoch is not None
                row += [90.0 if busy else 0.0, 2 * GIB if busy else 0.5 * GIB]
                row += [GPU_POWER_W, 85.0 if busy else 0.0, round(energy, 6)]
            rows.append(row)
            t = round(t + SAMPLE_S, 6)
            if epoch is not None:
                energy += GPU_POWER_W * SAMPLE_S
    _write_csv(path / "resources.csv", header, rows, cut_last)

    if adapt:
        decisions = [
            [1, 0, 0.82, 1.0, 0.33, 0.6, "batch_size", "batch_size", 64, 32, "memory 82% > 75%"],
            [2, 150, 0.55, 0.97, 0.22, 0.58, "none", None, None, None, "within budget"],
            [3, 300, 0.6, 0.99, 0.24, 0.59, "learning_rate", "lr", 0.1, 0.05, "accuracy flat"],
            [4, 450, 0.58, 0.98, 0.23, 0.59, "none", None, None, None, "within budget"],
        ]
        _write_csv(path / "decisions.csv", DECISIONS_HEADER, decisions, False)

    (path / "config.yaml").write_text(
        yaml.safe_dump(_config(adapt, extra_config_keys), sort_keys=False), encoding="utf-8"
    )
    env = {
        "versions": {"python": "3.11.7", "torch": "2.5.1", "edgetrain": "0.1.0"},
        "device": {"type": "cuda" if gpu else "cpu", "name": "NVIDIA RTX A2000" if gpu else "x86_64"},
        "sensors": [
            {"name": "nvml", "available": gpu, "reason": "" if gpu else "no NVIDIA GPU found",
             "source_label": "measured:nvml"},
            {"name": "rapl", "available": False,
             "reason": "RAPL energy counters need read access to /sys/class/powercap "
                       "(run as root or grant read access)", "source_label": "measured:rapl"},
            {"name": "psutil", "available": True, "reason": "", "source_label": "psutil"},
        ],
    }  # fmt: skip
    (path / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
    if status is not None:
        done = epochs - 1 if cut_last else epochs  # the cut row is the unfinished epoch
        val = [m[5] for m in metrics[:done]]
        summary = {
            "status": status,
            "epochs_completed": done,
            "total_time_s": SETUP_S + sum(times),
            "total_energy_j": power_w * sum(times),
            "energy_source": source,
            "best": {"epoch": val.index(max(val)) + 1, "val_acc": max(val)},
            "final": {"val_acc": val[-1], "train_loss": metrics[done - 1][2]},
            "test": {"acc": 0.8},
        }
        (path / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return path


SPARSE_LAYERS = [("features.0", "conv", 16), ("features.4", "conv", 32), ("head.1", "linear", 10)]


def sparse_selected(epoch: int, layer: int) -> int:
    """Neurons selected in a layer (index into SPARSE_LAYERS) at an epoch (from 1)."""
    neurons = SPARSE_LAYERS[layer][2]
    return min(neurons, (epoch * (layer + 2)) % (neurons + 1))


def write_sparse_update(path: Path, epochs: int, budget: float = 0.3) -> Path:
    """``sparse_update.csv`` as the sparse-update callback writes it (one row per epoch and
    neuron layer, :func:`sparse_selected` neurons selected), and its summary.json section."""
    header = [
        "epoch", "scheme", "layer", "kind", "neurons", "selected", "params", "selected_params",
        "requires_grad", "budget_kind", "budget", "cost",
    ]  # fmt: skip
    rows = []
    for epoch in range(1, epochs + 1):
        for index, (name, kind, neurons) in enumerate(SPARSE_LAYERS):
            selected = sparse_selected(epoch, index)
            rows.append(
                [epoch, "velocity", name, kind, neurons, selected, neurons * 9, selected * 9,
                 "true" if selected else "false", "params", int(budget * 522), 100]
            )  # fmt: skip
    _write_csv(path / "sparse_update.csv", header, rows, False)
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["sparse_update"] = {
        "scheme": "velocity",
        "budget_kind": "params",
        "budget": int(budget * 522),  # 0.3 of the 522 parameters
        "total_params": 522,
        "mean_trainable_frac": 0.3,
    }
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    return path


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_run("name", gpu=False, ...)`` writes a run under tmp_path."""

    def factory(name: str = "run", **options: Any) -> Path:
        return write_run(tmp_path / name, **options)

    return factory


# Session-wide runs are shared by many tests: read them, never modify them.
@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the shared runs."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def full_run(runs_root: Path) -> Path:
    """A finished run with GPU sensors and controller decisions."""
    return write_run(runs_root / "full")


@pytest.fixture(scope="session")
def plain_run(runs_root: Path) -> Path:
    """A CPU-only run without adaptation: optional columns empty, energy estimated."""
    return write_run(runs_root / "plain", gpu=False, adapt=False)


@pytest.fixture(scope="session")
def interrupted_run(runs_root: Path) -> Path:
    """A run killed in epoch 4: status interrupted, last CSV lines cut mid-row."""
    return write_run(runs_root / "interrupted", epochs=4, status="interrupted", cut_last=True)


@pytest.fixture(scope="session")
def known() -> SimpleNamespace:
    """The numbers the synthetic runs are built from (for expected values in tests)."""
    return SimpleNamespace(
        epoch_times=EPOCH_TIMES,
        setup_s=SETUP_S,
        sample_s=SAMPLE_S,
        gpu_power_w=GPU_POWER_W,
        mib=MIB,
        gib=GIB,
    )


# -- sweep, benchmark and sparse-update comparison directories ---------------------------

SWEEP_TRIALS = [
    # number, state, fail_reason, error, val_acc, energy_j, time_s, opt, lr, batch_size
    (0, "complete", None, None, 0.80, 100.0, 10.0, "sgd", 0.001, 16),
    (1, "complete", None, None, 0.90, 400.0, 40.0, "adam", 0.01, 32),
    (2, "complete", None, None, 0.85, 50.0, 5.0, "adam", 0.1, 16),
    (3, "complete", None, None, 0.70, 200.0, 20.0, "sgd", 0.003, 32),
    (4, "failed", "error", "boom: out of memory", None, None, None, "sgd", 0.05, 16),
    (5, "complete", None, None, 0.88, 60.0, 6.0, "adam", 0.02, 32),
]
SWEEP_POWER_W = 10.0
SWEEP_PARAMS = ["opt", "lr", "batch_size"]
TOP_COLUMNS = [
    "rank",
    "number",
    "val_acc",
    "energy_j",
    "avg_power_w",
    "efficiency_acc_per_kj",
    "time_s",
    "energy_source",
    "quantized_val_acc",
    "quantized_bytes",
    "model_bytes",
    "concurrent_trials",
    "run_dir",
]
IMPORTANCE_HEADER = [
    "target",
    "parameter",
    "rank",
    "fanova_importance",
    "kruskal_h",
    "kruskal_p",
    "epsilon_sq",
    "eta_sq_h",
    "n_groups",
    "n_trials",
    "best_value",
    "best_group",
    "best_group_mean",
    "best_group_n",
]


def _trial_record(t: tuple[Any, ...]) -> dict[str, Any]:
    number, state, reason, error, acc, energy, time_s, opt, lr, batch = t
    done = state == "complete"
    return {
        "number": number,
        "state": state,
        "fail_reason": reason,
        "error": error,
        "val_acc": acc,
        "energy_j": energy,
        "avg_power_w": SWEEP_POWER_W if done else None,
        "efficiency_acc_per_kj": acc / (energy / 1000) if done else None,
        "time_s": time_s,
        "energy_source": "estimated:cpu-tdp" if done else None,
        "quantized_val_acc": None,
        "quantized_bytes": None,
        "model_bytes": 29817,
        "concurrent_trials": 1,
        "run_dir": f"trials/{number}",
        "param_opt": opt,
        "param_lr": lr,
        "param_batch_size": batch,
    }


def _write_records(path: Path, header: list[str], records: list[dict[str, Any]]) -> None:
    _write_csv(path, header, [[r.get(c) for c in header] for r in records], False)


def extra_trials(count: int) -> list[tuple[Any, ...]]:
    """Completed trials 6, 7, ... that are dominated by the front (lower accuracy, more
    energy), with lr rising and accuracy falling with it."""
    return [
        (6 + i, "complete", None, None, 0.75 - 0.01 * i, 120.0 + 15 * i, 12.0 + i,
         ("sgd", "adam")[i % 2], 0.002 * (i + 1), (16, 32)[i % 2])
        for i in range(count)
    ]  # fmt: skip


def write_sweep(path: Path, *, analysed: bool = True, extra: int = 0) -> Path:
    """A sweep of 6 trials (5 complete, 1 failed) with its analysis tables.

    Pareto front (max accuracy, min energy): trials 2, 5, 1; knee 5. Most efficient:
    trial 2 (0.85 / 0.05 kJ = 17 acc/kJ), whose run directory exists (2 epochs, CPU).
    ``extra``: that many more completed trials (:func:`extra_trials`), off the front.
    """
    path.mkdir(parents=True, exist_ok=True)
    (path / "sweep.json").write_text(json.dumps({"study": "toy"}), encoding="utf-8")
    space = {
        "base": {"model": "cnn", "data": "digits", "epochs": 2},
        "params": {
            "opt": {"choices": ["sgd", "adam"]},
            "lr": {"low": 0.001, "high": 0.1, "log": True},
            "batch_size": {"choices": [16, 32, 64]},
        },
        "objectives": ["accuracy", "energy"],
        "sampler": "random",
        "seed": 0,
    }
    (path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False), encoding="utf-8")
    write_run(path / "trials" / "2", epochs=2, gpu=False, adapt=False)
    if not analysed:
        return path
    analysis = path / "analysis"
    analysis.mkdir()
    records = [_trial_record(t) for t in [*SWEEP_TRIALS, *extra_trials(extra)]]
    trial_header = [
        "number",
        "state",
        "fail_reason",
        "error",
        "val_acc",
        "energy_j",
        "avg_power_w",
        "efficiency_acc_per_kj",
        "time_s",
        "energy_source",
        "quantized_val_acc",
        "quantized_bytes",
        "model_bytes",
        "concurrent_trials",
        "run_dir",
    ] + [f"param_{p}" for p in SWEEP_PARAMS]
    _write_records(analysis / "trials.csv", trial_header, records)
    done = [r for r in records if r["state"] == "complete"]
    params = [f"param_{p}" for p in SWEEP_PARAMS]
    orders = {
        "top_accuracy": sorted(done, key=lambda r: -r["val_acc"]),
        "top_energy": sorted(done, key=lambda r: r["energy_j"]),
        "top_efficiency": sorted(done, key=lambda r: -r["efficiency_acc_per_kj"]),
    }
    for name, ranked in orders.items():
        rows = [{**r, "rank": i} for i, r in enumerate(ranked, 1)]
        _write_records(analysis / f"{name}.csv", TOP_COLUMNS + params, rows)
    front = [r for r in sorted(done, key=lambda r: r["energy_j"]) if r["number"] in (2, 5, 1)]
    rows = [{**r, "rank": i, "knee": r["number"] == 5} for i, r in enumerate(front, 1)]
    _write_records(analysis / "pareto.csv", TOP_COLUMNS + params + ["knee"], rows)
    importance = [
        ("energy", "batch_size", 1, 0.6, 0.8, "32"),
        ("energy", "opt", 2, 0.3, 0.1, "adam"),
        ("energy", "lr", 3, 0.1, None, "0.0100000001"),
        ("accuracy", "opt", 1, 0.7, 0.5, "adam"),
        ("accuracy", "lr", 2, 0.2, 0.3, "0.02"),
        ("accuracy", "batch_size", 3, 0.1, 0.05, "32"),
    ]
    rows = [
        {
            "target": t,
            "parameter": p,
            "rank": rank,
            "fanova_importance": f,
            "epsilon_sq": e,
            "kruskal_p": 0.5,
            "n_trials": 5,
            "best_value": best,
        }
        for t, p, rank, f, e, best in importance
    ]
    _write_records(analysis / "importance.csv", IMPORTANCE_HEADER, rows)
    best_values = [
        {"parameter": "opt", "best_for_accuracy": "adam", "best_for_energy": "adam"},
        {"parameter": "lr", "best_for_accuracy": 0.02, "best_for_energy": 0.1},
        {"parameter": "batch_size", "best_for_accuracy": 32, "best_for_energy": 16},
    ]
    header = ["parameter", "best_for_accuracy", "best_for_energy", "best_for_efficiency"]
    _write_records(analysis / "best_values.csv", header, best_values)
    summary = {
        "study": "toy",
        "objectives": ["accuracy", "energy"],
        "sampler": "random",
        "seed": 0,
        "trials": {"complete": 5 + extra, "failed": 1, "lost_or_interrupted": 0, "running": 0},
        "energy_sources": ["estimated:cpu-tdp"],
        "energy_estimated": True,
        "max_concurrent_trials": 1,
        "knee_trial": 5,
        "best_accuracy_trial": 1,
        "lowest_energy_trial": 2,
        "best_efficiency_trial": 2,
        "top_energy_driver": "batch_size",
        "top_accuracy_driver": "opt",
    }
    (analysis / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


BENCH_SUMMARY = {
    # config: (num_workers, stall, copy, compute, loader_start, epoch_time, samples/s, energy)
    0: (0, 0.5, 0.1, 2.0, 0.05, 3.0, 100.0, 30.0),
    1: (2, 0.1, 0.1, 2.0, 0.3, 2.6, 115.0, 26.0),
}
BENCH_EPOCH_ENERGY = {0: [60.0, 27.0, 33.0], 1: [50.0, 25.0, 27.0]}
BENCH_EPOCH_TIME = {0: [6.0, 2.7, 3.3], 1: [5.0, 2.5, 2.7]}
BENCH_SAMPLES = 300
BENCH_METRICS = (
    "stall_s",
    "wait_s",
    "copy_s",
    "compute_s",
    "train_wall_s",
    "loader_start_s",
    "epoch_time_s",
    "samples_per_s",
    "energy_j",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_device_mem_bytes",
)


def write_bench(path: Path) -> Path:
    """A benchmark over num_workers = 0, 2, 4 (4 failed); 3 epochs, the first warm-up."""
    path.mkdir(parents=True, exist_ok=True)
    header = ["config", "status", "note", "num_workers", "measured_epochs", "warmup_epochs"]
    header += [f"{m}_{s}" for m in BENCH_METRICS for s in ("mean", "std")]
    header += [f"warmup_{m}" for m in BENCH_METRICS]
    header += ["stall_frac", "accounted_frac_mean", "energy_source", "cache_method"]
    header += ["resident_before_frac", "resident_after_frac", "resident_end_frac"]
    header += ["data_path", "run_dir"]
    rows = []
    for config, (
        workers,
        stall,
        copy,
        compute,
        start,
        epoch,
        rate,
        energy,
    ) in BENCH_SUMMARY.items():
        row = {
            "config": config,
            "status": "completed",
            "num_workers": workers,
            "measured_epochs": 2,
            "warmup_epochs": 1,
            "stall_s_mean": stall,
            "stall_s_std": stall / 5,
            "wait_s_mean": stall,
            "copy_s_mean": copy,
            "copy_s_std": 0.01,
            "compute_s_mean": compute,
            "compute_s_std": 0.2,
            "train_wall_s_mean": stall + copy + compute,
            "loader_start_s_mean": start,
            "loader_start_s_std": 0.0,
            "epoch_time_s_mean": epoch,
            "epoch_time_s_std": 0.3,
            "samples_per_s_mean": rate,
            "samples_per_s_std": 10.0,
            "energy_j_mean": energy,
            "energy_j_std": 3.0,
            "avg_power_w_mean": 10.0,
            "peak_rss_bytes_mean": 500 * MIB,
            "warmup_epoch_time_s": BENCH_EPOCH_TIME[config][0],
            "warmup_train_wall_s": BENCH_EPOCH_TIME[config][0] - 1,
            "warmup_samples_per_s": 50.0,
            "warmup_energy_j": BENCH_EPOCH_ENERGY[config][0],
            "warmup_loader_start_s": start * 2,
            "stall_frac": stall / (stall + copy + compute),
            "energy_source": "estimated:cpu-tdp",
            "cache_method": "fadvise",
            "resident_before_frac": 1.0,
            "resident_after_frac": 0.0,
        }
        rows.append(row)
    rows.append({"config": 2, "status": "failed", "note": "out of memory", "num_workers": 4})
    _write_records(path / "summary.csv", header, rows)
    epoch_header = ["config", "num_workers", "warmup", "epoch", "batches", "samples"]
    epoch_header += ["loader_start_s", "wait_s", "copy_s", "compute_s", "stall_s"]
    epoch_header += ["train_wall_s", "epoch_time_s", "samples_per_s", "energy_j", "energy_source"]
    epochs, batches = [], []
    for config, (workers, stall, copy, compute, start, *_rest) in BENCH_SUMMARY.items():
        for epoch in (1, 2, 3):
            time_s = BENCH_EPOCH_TIME[config][epoch - 1]
            epochs.append(
                {
                    "config": config,
                    "num_workers": workers,
                    "warmup": "true" if epoch == 1 else "false",
                    "epoch": epoch,
                    "batches": 3,
                    "samples": BENCH_SAMPLES,
                    "loader_start_s": start,
                    "stall_s": stall,
                    "copy_s": copy,
                    "compute_s": compute,
                    "train_wall_s": stall + copy + compute,
                    "epoch_time_s": time_s,
                    "samples_per_s": BENCH_SAMPLES / time_s,
                    "energy_j": BENCH_EPOCH_ENERGY[config][epoch - 1],
                    "energy_source": "estimated:cpu-tdp",
                }
            )
            for batch in (1, 2, 3):
                batches.append(
                    {
                        "config": config,
                        "epoch": epoch,
                        "batch": batch,
                        "samples": 100,
                        "wait_s": stall / 3 * batch / 2,
                        "copy_s": copy / 3,
                        "compute_s": compute / 3,
                        "stall_s": stall / 3 * batch / 2,
                    }
                )
    _write_records(path / "epochs.csv", epoch_header, epochs)
    batch_header = [
        "config",
        "epoch",
        "batch",
        "samples",
        "wait_s",
        "copy_s",
        "compute_s",
        "stall_s",
    ]
    _write_records(path / "batches.csv", batch_header, batches)
    device = {
        "versions": {"edgetrain": "0.1.0", "torch": "2.5.1", "python": "3.11.7"},
        "storage": {"/data": {"device": "mmcblk0", "rotational": False}},
        "cpu": {
            "cpus": [
                {"cpu": 0, "online": True, "governor": "performance", "cur_freq_khz": 1500000},
                {"cpu": 1, "online": True, "governor": "performance", "cur_freq_khz": 1500000},
            ],
            "governors": ["performance"],
            "frequency_fixed": True,
        },
        "jetson": {"is_jetson": False},
        "nvidia": {"available": False, "reason": "no NVIDIA GPU"},
        "bench": {
            "grid": {"num_workers": [0, 2, 4]},
            "epochs": 3,
            "warmup_epochs": 1,
            "drop_cache": False,
            "cache_method": "fadvise",
            "export": True,
            "notes": [],
        },
    }
    (path / "device.json").write_text(json.dumps(device), encoding="utf-8")
    return path


SPARSE_RUNS = [
    # scheme, budget, seed, test_acc, trainable_frac, peak_train_bytes, step_time_s, energy_j
    ("velocity", "0.1", 0, 0.80, 0.1, 10 * MIB, 0.010, 10.0),
    ("velocity", "0.1", 1, 0.84, 0.1, 10 * MIB, 0.012, 14.0),
    ("velocity", "0.5", 0, 0.88, 0.5, 12 * MIB, 0.020, 20.0),
    ("velocity", "0.5", 1, 0.90, 0.5, 12 * MIB, 0.022, 22.0),
    ("full", None, 0, 0.92, 1.0, 16 * MIB, 0.030, 30.0),
    ("full", None, 1, 0.94, 1.0, 16 * MIB, 0.034, 34.0),
]
SPARSE_METRICS = (
    "test_acc",
    "best_val_acc",
    "updated_params",
    "trainable_frac",
    "peak_train_bytes",
    "step_time_s",
    "step_cpu_s",
    "train_time_s",
)


def write_sparse_compare(path: Path, *, results: bool = True) -> Path:
    """A sparse-compare directory: velocity at budgets 0.1 and 0.5, and full; 2 seeds each.

    results.csv holds no energy (as sparse-compare writes it); each run's summary.json does.
    """
    path.mkdir(parents=True, exist_ok=True)
    runs = []
    for scheme, budget, seed, acc, frac, peak, step, energy in SPARSE_RUNS:
        label = f"{scheme}{'-b' + budget if budget else ''}-s{seed}"
        run_dir = path / "runs" / label
        run_dir.mkdir(parents=True)
        summary = {
            "status": "completed",
            "total_energy_j": energy,
            "energy_source": "measured:nvml",
        }
        (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        runs.append(
            {
                "scheme": scheme,
                "budget": budget,
                "seed": seed,
                "run": f"/elsewhere/{path.name}/runs/{label}",  # made on another machine
                "best_epoch": 2,
                "best_val_acc": acc + 0.01,
                "test_acc": acc,
                "updated_params": frac * 6000,
                "total_params": 6000,
                "trainable_frac": frac,
                "peak_train_bytes": peak,
                "step_time_s": step,
                "step_cpu_s": step,
                "train_time_s": step * 100,
            }
        )
    header = list(runs[0])
    _write_records(path / "runs.csv", header, runs)
    if results:
        rows = []
        for key in dict.fromkeys((r["scheme"], r["budget"]) for r in runs):
            group = [r for r in runs if (r["scheme"], r["budget"]) == key]
            row: dict[str, Any] = {"scheme": key[0], "budget": key[1], "seeds": len(group)}
            for metric in SPARSE_METRICS:
                values = [r[metric] for r in group]
                mean = sum(values) / len(values)
                row[f"{metric}_mean"] = mean
                row[f"{metric}_std"] = (
                    sum((v - mean) ** 2 for v in values) / (len(values) - 1)
                ) ** 0.5
            rows.append(row)
        header = ["scheme", "budget", "seeds"] + [
            f"{m}_{s}" for m in SPARSE_METRICS for s in ("mean", "std")
        ]
        _write_records(path / "results.csv", header, rows)
    return path


@pytest.fixture(scope="session")
def sweep_dir(runs_root: Path) -> Path:
    """A small analysed sweep (read it, never modify it)."""
    return write_sweep(runs_root / "sweep")


@pytest.fixture(scope="session")
def bench_dir(runs_root: Path) -> Path:
    """A small benchmark directory (read it, never modify it)."""
    return write_bench(runs_root / "bench")


@pytest.fixture(scope="session")
def sparse_dir(runs_root: Path) -> Path:
    """A small sparse-update comparison (read it, never modify it)."""
    return write_sparse_compare(runs_root / "sparse")


@pytest.fixture
def make_sweep(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_sweep("name", analysed=False)`` writes a sweep under tmp_path."""

    def factory(name: str = "sweep", **options: Any) -> Path:
        return write_sweep(tmp_path / name, **options)

    return factory


@pytest.fixture
def make_sparse_compare(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_sparse_compare("name", results=False)`` writes one under tmp_path."""

    def factory(name: str = "sparse", **options: Any) -> Path:
        return write_sparse_compare(tmp_path / name, **options)

    return factory


@pytest.fixture
def pdf_pages_saved(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """Every figure saved as a PDF page while the test runs, in page order."""
    pages: list[Figure] = []
    save = PdfPages.savefig

    def savefig(self: PdfPages, figure: Any = None, **kwargs: Any) -> None:
        save(self, figure, **kwargs)  # drawn: tick labels exist now
        pages.append(figure)

    monkeypatch.setattr(PdfPages, "savefig", savefig)
    yield pages


@pytest.fixture(scope="session")
def sparse_csv() -> SimpleNamespace:
    """The synthetic sparse_update.csv: ``write(path, epochs)``, ``layers`` (name, kind,
    neurons) and ``selected(epoch, layer index)``."""
    return SimpleNamespace(
        write=write_sparse_update, layers=SPARSE_LAYERS, selected=sparse_selected
    )
