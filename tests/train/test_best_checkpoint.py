"""checkpoints/best.pt holds the best epoch by the task's metric and direction; model.pt
the final weights; summary.json says which is which; init_from takes either."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import Blobs, tiny_net
from torch import nn
from torch.utils.data import TensorDataset

import edgetrain
from edgetrain.errors import EdgeTrainError
from edgetrain.train import Callback
from edgetrain.train.api import load_pretrained

QUIET = {"monitor": {"enabled": False}, "batch_size": 16}


class SpoilLastEpoch(Callback):
    """Scrambles the weights after the last training batch, so the last epoch's
    validation is the worst and the best epoch is an earlier one."""

    def on_batch_end(self, state):
        last = state.epoch == state.config.epochs - 1
        if last and state.batch_in_epoch == state.batches_per_epoch:
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in state.model.parameters():
                    p.copy_(100 * torch.randn(p.shape, generator=g))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def check_best(result, key: str, mode: str) -> dict:
    run, hist = result.run_dir, result.history
    idx = hist[key].idxmax() if mode == "max" else hist[key].idxmin()
    best_epoch = int(hist.loc[idx, "epoch"])
    assert best_epoch < len(hist)  # the spoilt last epoch is not the best
    ckpt = load(run / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == best_epoch
    assert (ckpt["metric"], ckpt["mode"]) == (key, mode)
    assert ckpt["value"] == pytest.approx(hist.loc[idx, key])
    s = json.loads((run / "summary.json").read_text())
    assert s["checkpoints"] == {
        "best": {
            "path": "checkpoints/best.pt",
            "epoch": best_epoch,
            "metric": key,
            "mode": mode,
            "value": pytest.approx(ckpt["value"]),
        },
        "last": {"path": "checkpoints/last.pt", "epoch": len(hist)},
        "final": {"path": "model.pt", "epoch": len(hist)},
    }
    assert s["best"]["epoch"] == best_epoch
    # model.pt is the final (spoilt) model, best.pt another one
    final = load(run / "model.pt")
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(final[name], tensor)
    assert any(not torch.equal(ckpt["model"][k], final[k]) for k in final)
    return ckpt


def test_classification_keeps_the_highest_val_acc(tmp_path):
    result = edgetrain.fit(
        tiny_net(),
        Blobs(96, seed=0),
        Blobs(48, seed=1),
        callbacks=[SpoilLastEpoch()],
        epochs=4,
        lr=0.1,
        out=str(tmp_path / "cls"),
        progress=False,
        **QUIET,
    )
    ckpt = check_best(result, "val_acc", "max")
    # the weights in best.pt score the recorded val_acc
    model = tiny_net()
    model.load_state_dict(ckpt["model"])
    val = Blobs(48, seed=1)
    with torch.no_grad():
        acc = (model(val.x).argmax(1) == val.y).float().mean().item()
    assert acc == pytest.approx(ckpt["value"])


def test_regression_keeps_the_lowest_val_rmse(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]))[:, None]
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    result = edgetrain.fit(
        model,
        TensorDataset(x[:64], y[:64]),
        TensorDataset(x[64:], y[64:]),
        callbacks=[SpoilLastEpoch()],
        epochs=4,
        lr=0.05,
        out=str(tmp_path / "reg"),
        progress=False,
        **QUIET,
    )
    ckpt = check_best(result, "val_rmse", "min")
    torch.manual_seed(1)
    fresh = nn.Linear(4, 1)
    fresh.load_state_dict(ckpt["model"])
    with torch.no_grad():
        rmse = (fresh(x[64:]) - y[64:]).pow(2).mean().sqrt().item()
    assert rmse == pytest.approx(ckpt["value"], rel=1e-5)


def test_no_validation_data_means_no_best_checkpoint(tmp_path):
    result = edgetrain.fit(
        tiny_net(), Blobs(48), epochs=2, out=str(tmp_path / "r"), progress=False, **QUIET
    )
    assert not (result.run_dir / "checkpoints" / "best.pt").exists()
    assert result.summary["checkpoints"]["best"] is None
    with pytest.raises(EdgeTrainError, match="no best weights at"):
        load_pretrained(tiny_net(), result.run_dir, which="best")


def test_init_from_takes_the_final_the_best_or_a_checkpoint_file(tmp_path):
    result = edgetrain.fit(
        tiny_net(),
        Blobs(96),
        Blobs(48, seed=1),
        callbacks=[SpoilLastEpoch()],
        epochs=3,
        lr=0.1,
        out=str(tmp_path / "src"),
        progress=False,
        **QUIET,
    )
    run = result.run_dir
    best = load(run / "checkpoints" / "best.pt")["model"]
    final = load(run / "model.pt")
    last = load(run / "checkpoints" / "last.pt")["model"]
    for source, which, expected in [
        (run, "final", final),
        (run, "best", best),
        (run, "last", last),
        (run / "checkpoints" / "best.pt", "final", best),  # a file is taken as given
        (run / "model.pt", "best", final),
    ]:
        model = tiny_net(seed=5)
        assert load_pretrained(model, source, which=which) == []
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name]), (source, which, name)
    with pytest.raises(EdgeTrainError, match="must be one of final, best, last"):
        load_pretrained(tiny_net(), run, which="worst")


def test_train_initialises_from_a_runs_best_weights(tmp_path):
    base = {
        "model": "mlp",
        "data": "diabetes",
        "epochs": 2,
        "batch_size": 64,
        "model_args": {"hidden": [8]},
        "monitor": {"enabled": False},
    }
    first = edgetrain.train({**base, "out": str(tmp_path / "a")}, progress=False)
    best = load(first.run_dir / "checkpoints" / "best.pt")["model"]
    config = {
        **base,
        "epochs": 1,
        "lr": 1e-30,  # the weights stay where they started
        "init_from": str(first.run_dir),
        "init_from_which": "best",
        "out": str(tmp_path / "b"),
    }
    second = edgetrain.train(config, progress=False)
    for name, tensor in second.model.state_dict().items():
        assert torch.equal(tensor, best[name])
    with pytest.raises(EdgeTrainError, match="init_from_which"):
        edgetrain.train({**config, "init_from_which": "worst"}, progress=False)


def test_resume_repairs_a_best_checkpoint_cut_off_by_a_kill(tmp_path):
    # killed after last.pt and before best.pt: the resume writes best.pt from last.pt
    settings = {"out": str(tmp_path / "r"), "progress": False, **QUIET}
    first = edgetrain.fit(tiny_net(), Blobs(96), Blobs(48, seed=1), epochs=1, **settings)
    path = first.run_dir / "checkpoints" / "best.pt"
    path.unlink()
    resumed = edgetrain.fit(
        tiny_net(), Blobs(96), Blobs(48, seed=1), epochs=1, resume=True, **settings
    )
    ckpt = load(path)
    assert ckpt["epoch"] == 1 and resumed.summary["checkpoints"]["best"]["epoch"] == 1
    final = load(first.run_dir / "model.pt")
    assert all(torch.equal(ckpt["model"][k], v) for k, v in final.items())


def test_resume_removes_a_best_checkpoint_that_is_not_the_best_epoch(tmp_path):
    from edgetrain.train.rundir import save_tensors

    # a flat run: epoch 1 is the best (ties keep the first); a best.pt naming epoch 2
    # cannot be trusted and goes, so summary.json never names weights the file lacks
    settings = {"lr": 1e-30, "out": str(tmp_path / "r"), "progress": False, **QUIET}
    first = edgetrain.fit(tiny_net(), Blobs(96), Blobs(48, seed=1), epochs=2, **settings)
    assert first.summary["checkpoints"]["best"]["epoch"] == 1
    path = first.run_dir / "checkpoints" / "best.pt"
    save_tensors(path, {**load(path), "epoch": 2})
    resumed = edgetrain.fit(
        tiny_net(), Blobs(96), Blobs(48, seed=1), epochs=2, resume=True, **settings
    )
    assert not path.exists()
    assert resumed.summary["checkpoints"]["best"] is None
