"""SparseUpdateCallback inside the training loop: logs, budgets, exact freezing, resume."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from edgetrain.config import SparseUpdateConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.train import fit
from edgetrain.train.features.sparse import SPARSE_UPDATE_COLUMNS, SparseUpdateCallback

SETTINGS = {
    "epochs": 3,
    "batch_size": 16,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.01,
    "progress": False,
    "monitor": {"enabled": False},
}


def _fit(model, data, sparse: dict, out, **extra):
    cfg = SparseUpdateConfig(**sparse)
    callback = SparseUpdateCallback(cfg, data, seed=3)
    settings = {**SETTINGS, **extra}
    result = fit(model, data, data, out=str(out), overwrite=True, callbacks=[callback], **settings)
    return result, callback


def test_velocity_run_logs_each_epoch_within_budget(tiny_net, blobs, tmp_path):
    model, data = tiny_net(), blobs(n=64)
    result, cb = _fit(model, data, {"scheme": "velocity", "budget": 0.3}, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "sparse_update.csv")
    assert list(log.columns) == list(SPARSE_UPDATE_COLUMNS)
    layers = [la.name for la in cb.units.layers]
    assert len(log) == 3 * len(layers)
    assert log.groupby("epoch")["layer"].apply(list).tolist() == [layers] * 3
    assert log.groupby("epoch")["scheme"].first().tolist() == ["static", "velocity", "velocity"]
    limit = int(0.3 * cb.units.total_params)
    assert (log["budget"] == limit).all() and (log["cost"] <= limit).all()
    assert (log.groupby("epoch")["selected_params"].sum() <= limit).all()
    assert log["velocity_abs_mean"].notna().all()  # velocities exist after every epoch
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["trainable_frac"].between(0.01, 0.3).all()
    assert result.summary["sparse_update"]["budget"] == limit
    assert all(p.requires_grad for p in model.parameters())  # given back at the end


def test_static_run_leaves_unselected_rows_bit_identical(tiny_net, blobs, tmp_path):
    model, data = tiny_net(), blobs(n=64)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, cb = _fit(model, data, {"scheme": "static", "budget": 0.2}, tmp_path / "run")
    rows = cb.planner.static_rows()
    changed = 0
    for name, p in model.named_parameters():
        mask = rows.get(name, torch.zeros(p.shape[0], dtype=torch.bool))
        assert torch.equal(p[~mask], initial[name][~mask]), name
        changed += int(not torch.equal(p[mask], initial[name][mask]))
    assert changed > 0


def test_adam_memory_budget_run(tiny_net, blobs, tmp_path):
    model, data = tiny_net(), blobs(n=64)
    sparse = {"scheme": "velocity", "budget": "60KiB", "first_epoch": "random"}
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    _fit(model, data, sparse, tmp_path / "run", optimizer="adam", lr=0.01)
    log = pd.read_csv(tmp_path / "run" / "sparse_update.csv")
    assert (log["budget_kind"] == "bytes").all()
    assert (log["cost"] <= 60 * 1024).all()
    assert log.groupby("epoch")["scheme"].first().tolist() == ["random", "velocity", "velocity"]
    assert torch.equal(model.conv1.weight, initial["conv1.weight"])  # too expensive to open


def test_a_second_callback_does_nothing(tiny_net, blobs, tmp_path):
    model, data = tiny_net(), blobs(n=32)
    cfg = SparseUpdateConfig(scheme="static", budget=0.2)
    first, second = SparseUpdateCallback(cfg, data), SparseUpdateCallback(cfg, data)
    fit(
        model, data, out=str(tmp_path / "r"), callbacks=[first, second], **{**SETTINGS, "epochs": 1}
    )
    assert first.updated_params and not second.updated_params
    log = pd.read_csv(tmp_path / "r" / "sparse_update.csv")
    assert len(log) == len(first.units.layers)


def test_resume_continues_the_velocity_and_the_log(tiny_net, blobs, tmp_path):
    data = blobs(n=48)
    out = tmp_path / "run"
    sparse = {"scheme": "velocity", "budget": 0.4}
    _, cb = _fit(tiny_net(), data, sparse, out, epochs=2)
    assert cb.tracker.steps == 2
    again = SparseUpdateCallback(SparseUpdateConfig(**sparse), data, seed=3)
    fit(
        tiny_net(),
        data,
        data,
        out=str(out),
        resume=True,
        callbacks=[again],
        **{**SETTINGS, "epochs": 3},
    )
    assert again.tracker.steps == 3
    log = pd.read_csv(out / "sparse_update.csv")
    assert log.groupby("epoch").size().tolist() == [len(cb.units.layers)] * 3


@pytest.mark.parametrize("scheme", ["last_k", "bias_only", "full"])
def test_baseline_schemes(tiny_net, blobs, tmp_path, scheme):
    model, data = tiny_net(), blobs(n=32)
    result, cb = _fit(model, data, {"scheme": scheme}, tmp_path / "r", epochs=1)
    frac = result.history["trainable_frac"].iloc[0]
    assert frac == pytest.approx(cb.selection.updated_params(cb.units) / cb.units.total_params)
    assert (frac == 1.0) == (scheme == "full")


def test_too_small_a_budget_fails_before_training(tiny_net, blobs, tmp_path):
    with pytest.raises(EdgeTrainError, match="smaller than the least any selection costs"):
        _fit(tiny_net(), blobs(n=32), {"scheme": "static", "budget": 5}, tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.csv").exists()
