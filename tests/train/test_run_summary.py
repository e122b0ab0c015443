"""A readable run: the model's size first, ETA and samples/s while it trains, a summary
table at the end (returned by fit, printed by the CLI)."""

from __future__ import annotations

import io

import torch
from helpers import Blobs, tiny_net
from rich.console import Console
from rich.progress import TimeRemainingColumn
from torch import nn

import edgetrain
from edgetrain.cli import main
from edgetrain.train import TrainState
from edgetrain.train.api import _first_batch
from edgetrain.train.features.progress import (
    ProgressCallback,
    format_model_line,
    model_stats,
    summary_table,
)

QUIET = {"monitor": {"enabled": False}, "batch_size": 16}


def test_model_stats_count_parameters_and_macs_per_sample():
    model = nn.Sequential(nn.Linear(10, 3), nn.ReLU(), nn.Linear(3, 2))
    model[2].weight.requires_grad_(False)
    assert model_stats(model) == {
        "parameters": 33 + 8,
        "trainable_parameters": 33 + 2,
        "macs_per_sample": None,
    }
    state = TrainState(
        config=edgetrain.config.load_config({}),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        run=None,
        train_size=4,
        task=edgetrain.tasks.make_task("classification"),
    )
    batch = (torch.randn(4, 10), torch.zeros(4, dtype=torch.long))
    stats = model_stats(model, state, batch)
    assert stats["macs_per_sample"] == 10 * 3 + 3 * 2  # one sample, not the batch
    line = format_model_line("mlp", stats)
    assert line == "model mlp: 41 parameters (35 trainable), 36 MACs per sample"
    assert model.training  # put back in training mode


def test_progress_prints_the_model_and_leaves_training_unchanged(tmp_path):
    sink = io.StringIO()
    console = Console(file=sink, width=200, markup=False)
    data = Blobs(64)
    shown = edgetrain.fit(
        tiny_net(),
        data,
        Blobs(32, seed=1),
        callbacks=[ProgressCallback(console, sample=lambda: _first_batch(data, None))],
        epochs=2,
        out=str(tmp_path / "a"),
        progress=False,
        **QUIET,
    )
    text = sink.getvalue()
    assert "model Sequential: 271 parameters (271 trainable)" in text
    assert "MACs per sample" in text
    assert "epoch 2/2" in text
    quiet = edgetrain.fit(
        tiny_net(),
        data,
        Blobs(32, seed=1),
        epochs=2,
        out=str(tmp_path / "b"),
        progress=False,
        **QUIET,
    )
    # counting MACs draws a sample and runs the model: randomness and weights are untouched
    cols = ["train_loss", "val_loss", "val_acc"]
    assert shown.history[cols].equals(quiet.history[cols])


def test_the_progress_bar_shows_the_time_left():
    cb = ProgressCallback(Console(file=io.StringIO(), markup=False))
    model = tiny_net()
    state = TrainState(
        config=edgetrain.config.load_config({"epochs": 3}),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        run=None,
        train_size=32,
        task=edgetrain.tasks.make_task("classification"),
        batch_size=16,
    )
    cb.on_fit_start(state)
    try:
        assert any(isinstance(c, TimeRemainingColumn) for c in cb._progress.columns)
        cb._epoch_times = [2.0]
        assert cb._run_eta(state) == "(run: 4.0 s more)"  # 2 more epochs of 2 s
    finally:
        cb.on_fit_end(state)


def test_fit_returns_a_summary_table(tmp_path):
    result = edgetrain.fit(
        tiny_net(),
        Blobs(64),
        Blobs(32, seed=1),
        epochs=3,
        lr=1e-30,
        early_stop={"patience": 1},
        out=str(tmp_path / "r"),
        progress=False,
        **QUIET,
    )
    text = result.table_text()
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert rows["status"].split()[1] == "completed"
    interrupted = summary_table(
        {**result.summary, "status": "interrupted", "stop_reason": "interrupted", "stop_epoch": 2}
    )
    sink = io.StringIO()
    Console(file=sink, width=120, markup=False).print(interrupted)
    assert "interrupted in epoch 2" in sink.getvalue()
    assert "early_stop: val_acc did not improve for 1 epoch (best" in text
    assert rows["stop"].split()[2] == "early_stop:"
    assert "epochs 2 of 3" in " ".join(rows["epochs"].split())
    assert "val_acc" in rows["best"] and "checkpoints/best.pt" in rows["best"]
    assert "model.pt" in text and "at epoch 2" in rows["final"]
    assert rows["energy"].split()[1:] == ["not", "measured"]
    assert "271 parameters" in rows["model"]


def test_the_table_shows_energy_with_its_source_and_memory_against_the_budget():
    summary = {
        "status": "completed",
        "stop_reason": "completed all epochs",
        "stop_epoch": 5,
        "epochs": 5,
        "epochs_completed": 5,
        "steps": 50,
        "total_time_s": 75.0,
        "total_energy_j": 812.5,
        "energy_source": "estimated:cpu-tdp",
        "avg_power_w": 10.8,
        "peak_rss_bytes": 300 * 2**20,
        "adapt": {
            "budget_bytes": 512 * 2**20,
            "measured_peak_bytes": 256 * 2**20,
            "memory_source": "rss",
        },
        "task": {"best_metric": "val_rmse", "best_mode": "min"},
        "best": {"epoch": 3, "val_rmse": 0.5123},
        "final": {"epoch": 5, "val_rmse": 0.6, "train_loss": 0.2},
        "test": {"test_rmse": 0.55},
        "checkpoints": {"best": {"path": "checkpoints/best.pt"}, "final": {"path": "model.pt"}},
    }
    sink = io.StringIO()
    Console(file=sink, width=120, markup=False).print(summary_table(summary))
    text = sink.getvalue()
    assert "val_rmse 0.5123 at epoch 3 (checkpoints/best.pt)" in text
    assert "val_rmse 0.6, train_loss 0.2 at epoch 5 (model.pt)" in text
    assert "812.5 J (estimated:cpu-tdp), 10.8 W average" in text
    assert "256.0 MiB of the 512.0 MiB budget (50%, rss)" in text
    assert "1m 15s" in text
    assert "test_rmse 0.55" in text


def test_the_cli_prints_the_table(capsys, tmp_path):
    args = ["--set", "model=mlp", "--set", "data=diabetes", "--set", "epochs=1"]
    args += ["--set", "monitor.enabled=false", "--set", "model_args={hidden: [8]}"]
    main(["train", *args, "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    for fragment in ("status", "completed all epochs", "best", "val_rmse", "final", "energy"):
        assert fragment in out
    assert f"run directory: {tmp_path / 'run'}" in out
