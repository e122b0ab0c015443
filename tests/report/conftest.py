"""Fixtures that write synthetic run directories following the DESIGN.md contract."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

METRICS_HEADER = [
    "epoch",
    "time_s",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "batch_size",
    "micro_batch_size",
    "accum_steps",
    "samples_per_s",
    "energy_j",
    "energy_source",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_device_mem_bytes",
    "activation_bytes",
    "param_sparsity",
    "trainable_frac",
]
BASE_RESOURCES = ["t_s", "epoch", "cpu_pct", "ram_used_bytes", "proc_rss_bytes"]
GPU_RESOURCES = ["gpu_util_pct", "gpu_mem_bytes", "gpu_power_w", "gpu1_util_pct", "energy_j"]
DECISIONS_HEADER = [
    "epoch",
    "step",
    "memory_score",
    "accuracy_score",
    "priority_batch_size",
    "priority_learning_rate",
    "chosen",
    "parameter",
    "old",
    "new",
    "reason",
]
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

    Epoch e lasts ``EPOCH_TIMES[e - 1]`` seconds and starts at
    ``SETUP_S + sum(EPOCH_TIMES[:e - 1])``; with a GPU the energy of an epoch is
    ``GPU_POWER_W * time_s`` (measured:nvml), without one ``5 W * time_s`` (estimated).
    """
    path.mkdir(parents=True, exist_ok=True)
    times = EPOCH_TIMES[:epochs]
    power_w = GPU_POWER_W if gpu else 5.0
    source = "measured:nvml" if gpu else "estimated:cpu-tdp"
    batch = [64] + [32] * (epochs - 1) if adapt else [64] * epochs
    lr = [0.1 if e < 3 else 0.05 for e in range(1, epochs + 1)] if adapt else [0.1] * epochs

    metrics = []
    for e in range(1, epochs + 1):
        t = times[e - 1]
        metrics.append(
            [
                e,
                t,
                2.0 / e,
                0.3 + 0.1 * e,
                2.2 / e,
                min(1.0, 0.25 + 0.12 * e),
                lr[e - 1],
                batch[e - 1],
                batch[e - 1] // 2 if adapt else batch[e - 1],
                2 if adapt else 1,
                4500.0 / t,
                power_w * t,
                source,
                power_w,
                (500 + 10 * e) * MIB,
                (800 + 5 * e) * MIB if gpu else None,
                (120 - 10 * e) * MIB if adapt else None,
                None,
                round(1.0 - 0.1 * e, 3) if adapt else None,
            ]
        )
    if metrics_overrides:
        for column, values in metrics_overrides.items():
            index = METRICS_HEADER.index(column)
            for row, value in zip(metrics, values, strict=True):
                row[index] = value
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
