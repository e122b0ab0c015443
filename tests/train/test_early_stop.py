"""Early stopping: stops on a plateau, says why and when, and keeps counting after a resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import edgetrain
from edgetrain.config import load_config
from edgetrain.errors import DivergedError, EdgeTrainError
from edgetrain.train import Callback
from edgetrain.train.features.early_stop import EarlyStopCallback, early_stop_reason

QUIET = {"progress": False, "monitor": {"enabled": False}, "batch_size": 16}


def regression_data(n: int = 64, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(2 * n, generator=g)
    return TensorDataset(x[:n], y[:n, None]), TensorDataset(x[n:], y[n:, None])


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def fit(tmp_path, name: str = "run", **config):
    train, val = regression_data()
    settings = {**QUIET, "out": str(tmp_path / name), **config}
    progress = settings.pop("progress")
    return edgetrain.fit(net(), train, val, progress=progress, **settings)


def summary(result) -> dict:
    return json.loads((result.run_dir / "summary.json").read_text())


def test_a_plateau_stops_the_run_before_its_epochs(tmp_path):
    # a learning rate too small to move float32 weights: val_rmse is exactly flat
    result = fit(tmp_path, epochs=20, lr=1e-30, early_stop={"patience": 3})
    s = summary(result)
    assert s["status"] == "completed"
    assert s["epochs_completed"] == 4 and s["stop_epoch"] == 4  # best at 1, then 3 flat
    assert len(result.history) == 4
    best = result.history["val_rmse"].iloc[0]
    assert s["stop_reason"] == early_stop_reason("val_rmse", 0.0, 3, best, 1)
    assert s["stop_reason"].startswith("early_stop: val_rmse did not improve for 3 epochs (best ")
    assert s["early_stop"] | {"best": None} == {
        "metric": "val_rmse",
        "mode": "min",
        "patience": 3,
        "min_delta": 0.0,
        "best": None,
        "best_epoch": 1,
        "epochs_without_improvement": 3,
        "stopped_epoch": 4,
        "reason": s["stop_reason"],
    }
    assert result.summary["stop_reason"] == s["stop_reason"]


def test_min_delta_counts_small_improvements_as_none(tmp_path):
    # it learns, but never by 1000 in RMSE: stops after `patience` epochs past the first
    result = fit(tmp_path, epochs=10, lr=0.05, early_stop={"patience": 2, "min_delta": 1000})
    s = summary(result)
    assert s["epochs_completed"] == 3
    assert "did not improve by 1000 for 2 epochs (best " in s["stop_reason"]
    assert s["stop_reason"].endswith("at epoch 1)")
    # the task's best checkpoint is still the best epoch, whatever stopped the run
    assert s["checkpoints"]["best"]["epoch"] == int(
        result.history["val_rmse"].idxmin() + 1  # history rows are epochs 1..n
    )


def test_a_learning_run_is_not_stopped_and_says_it_completed(tmp_path):
    result = fit(tmp_path, epochs=4, lr=0.05, early_stop={"patience": 3, "metric": "train_loss"})
    s = summary(result)
    assert s["epochs_completed"] == 4
    assert s["stop_reason"] == "completed all epochs"
    assert s["stop_epoch"] == 4
    assert s["early_stop"]["metric"] == "train_loss"
    assert s["early_stop"]["stopped_epoch"] is None


def test_off_by_default_and_with_patience_zero(tmp_path):
    assert not load_config({}).early_stop.enabled
    assert not load_config({"early_stop": {"patience": 0}}).early_stop.enabled
    result = fit(tmp_path, epochs=3, lr=1e-30, early_stop={"patience": 0})
    s = summary(result)
    assert s["epochs_completed"] == 3 and s["stop_reason"] == "completed all epochs"
    assert "early_stop" not in s


def test_max_mode_follows_the_metric_direction(tmp_path):
    # a classification task's val_acc is maximised; a flat run stops all the same
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    result = edgetrain.fit(
        nn.Linear(4, 3),
        TensorDataset(x[:48], y[:48]),
        TensorDataset(x[48:], y[48:]),
        out=str(tmp_path / "cls"),
        progress=False,
        monitor={"enabled": False},
        batch_size=16,
        epochs=10,
        lr=1e-30,
        early_stop={"patience": 2},
    )
    s = result.summary
    assert s["early_stop"]["metric"] == "val_acc" and s["early_stop"]["mode"] == "max"
    assert s["epochs_completed"] == 3


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"metric": "acc"}, "early_stop.metric must be a metrics.csv column"),
        ({"patience": -1}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"mode": "up"}, "mode"),
    ],
)
def test_bad_settings_are_config_errors(settings, fragment):
    with pytest.raises(EdgeTrainError, match=fragment):
        load_config({"early_stop": settings})


def test_a_metric_the_run_does_not_write_is_refused(tmp_path):
    with pytest.raises(EdgeTrainError, match=r"early_stop\.metric 'val_acc' is not a column"):
        fit(tmp_path, epochs=2, early_stop={"patience": 2, "metric": "val_acc"})


def test_a_validation_metric_without_validation_data_is_refused(tmp_path):
    train, _ = regression_data()
    with pytest.raises(EdgeTrainError, match="no validation data"):
        edgetrain.fit(
            net(), train, out=str(tmp_path / "r"), progress=False, early_stop={"patience": 2}
        )
    assert not (tmp_path / "r").exists()  # refused before the run directory was made


def test_interrupted_and_diverged_runs_say_so(tmp_path):
    class Stop(Callback):
        def on_batch_end(self, state):
            if state.epoch == 1 and state.batch_in_epoch == 2:
                raise KeyboardInterrupt

    train, val = regression_data()
    with pytest.raises(KeyboardInterrupt):
        edgetrain.fit(
            net(), train, val, callbacks=[Stop()], out=str(tmp_path / "i"), **QUIET, epochs=5
        )
    s = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert (s["status"], s["stop_reason"], s["stop_epoch"]) == ("interrupted", "interrupted", 2)
    assert s["checkpoints"]["last"] == {"path": "checkpoints/last.pt", "epoch": 1}
    assert s["checkpoints"]["final"] is None  # no model.pt: the run did not complete

    bad = TensorDataset(torch.full((32, 4), float("inf")), torch.zeros(32, 1))
    with pytest.raises(DivergedError):
        edgetrain.fit(net(), bad, val, out=str(tmp_path / "d"), **QUIET, epochs=3)
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (s["status"], s["stop_reason"], s["stop_epoch"]) == ("diverged", "diverged", 1)


def test_resume_keeps_the_early_stop_counters(tmp_path):
    # 3 flat epochs: best at 1, two without improvement, not yet stopped (patience 3)
    first = fit(tmp_path, epochs=3, lr=1e-30, early_stop={"patience": 3})
    assert summary(first)["stop_reason"] == "completed all epochs"
    ckpt = torch.load(
        first.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True
    )
    saved = ckpt["callbacks"]["early_stop"]
    assert saved == {
        "metric": "val_rmse",
        "mode": "min",
        "best": pytest.approx(first.history["val_rmse"].iloc[0]),
        "best_epoch": 1,
        "wait": 2,
        "stopped_epoch": None,
    }
    # resumed with more epochs: one more flat epoch is the third without improvement
    resumed = fit(tmp_path, epochs=10, lr=1e-30, early_stop={"patience": 3}, resume=True)
    s = summary(resumed)
    assert s["epochs_completed"] == 4 and s["stop_epoch"] == 4
    assert s["early_stop"]["best_epoch"] == 1
    assert s["stop_reason"].startswith("early_stop: val_rmse did not improve for 3 epochs")


def test_the_callback_state_is_plain_values():
    cb = EarlyStopCallback(load_config({"early_stop": {"patience": 2}}).early_stop)
    cb.load_state_dict(
        {"metric": "val_loss", "mode": "min", "best": 1.5, "best_epoch": 3, "wait": 1}
    )
    assert (cb.best, cb.best_epoch, cb.wait, cb.stopped_epoch) == (1.5, 3, 1, None)
    assert all(v is None or isinstance(v, str | int | float) for v in cb.state_dict().values())
