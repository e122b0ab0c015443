"""Global magnitude pruning: exact ratio, permanence, schedule, resume."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import QUIET, Blobs
from edgetrain.errors import EdgeTrainError
from edgetrain.prune import (
    attach_masks,
    current_masks,
    make_permanent,
    param_sparsity,
    plain_state_dict,
    prunable_modules,
    prune_to,
    target_sparsity,
)
from edgetrain.train import fit
from edgetrain.train.features.budget import PruneCallback


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def _zeros(model: nn.Module) -> tuple[int, int]:
    weights = [m.weight.detach() for _, m in prunable_modules(model)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.37, 0.9])
def test_prune_to_is_exact_global_and_by_magnitude(ratio):
    model = net()
    before = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_modules(model)])
    count = prune_to(model, ratio)
    zeros, total = _zeros(model)
    assert zeros == count == round(ratio * total)
    assert param_sparsity(model) == pytest.approx(zeros / total)
    after = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_modules(model)])
    assert after[after > 0].min() >= before[after == 0].max()  # the smallest went


def test_pruning_only_rises_and_keeps_parameter_identity():
    model = net()
    ids = [id(p) for p in model.parameters()]
    prune_to(model, 0.5)
    assert prune_to(model, 0.3) == 0  # never lowered
    prune_to(model, 0.75)
    zeros, total = _zeros(model)
    assert zeros == round(0.75 * total)
    assert sorted(id(p) for p in model.parameters()) == sorted(ids)  # optimizer keeps them


def test_permanent_pruning_leaves_plain_weights():
    model = net()
    prune_to(model, 0.5)
    assert any(k.endswith("weight_orig") for k in model.state_dict())
    assert make_permanent(model) == 3
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert _zeros(model)[0] == round(0.5 * _zeros(model)[1])


def test_plain_state_dict_while_masked_and_masks_round_trip():
    model = net()
    attach_masks(model)
    handles = plain_state_dict(model)
    prune_to(model, 0.6)
    state = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    fresh = net(seed=1)
    fresh.load_state_dict(state)  # loads into an unpruned model, as on resume
    attach_masks(fresh, current_masks(model))
    for (_, a), (_, b) in zip(prunable_modules(model), prunable_modules(fresh), strict=True):
        torch.testing.assert_close(a.weight, b.weight)
    for h in handles:
        h.remove()


def test_schedules():
    assert target_sparsity(0, ratio=0.5, start_epoch=1) == 0.0
    assert target_sparsity(1, ratio=0.5, start_epoch=1) == 0.5
    steps = [target_sparsity(e, ratio=0.8, schedule="gradual", epochs=4) for e in range(4)]
    assert steps == sorted(steps) and steps[-1] == pytest.approx(0.8) and steps[0] > 0
    assert target_sparsity(9, ratio=0.8, schedule="gradual", end_epoch=3, epochs=10) == 0.8
    with pytest.raises(ValueError):
        target_sparsity(1, ratio=0.5, schedule="cubic")


def _train(out, epochs, resume=False, **prune):
    data = Blobs()
    return fit(
        net(),
        data,
        Blobs(n=48, seed=1),
        out=out,
        callbacks=[PruneCallback()],
        epochs=epochs,
        batch_size=16,
        lr=0.05,
        resume=resume,
        prune={"ratio": 0.5, **prune},
        **QUIET,
    )


def test_training_prunes_exactly_and_model_pt_is_plain(tmp_path):
    result = _train(tmp_path / "r", epochs=3, start_epoch=1)
    sparsity = result.history.param_sparsity.tolist()
    assert sparsity[0] == pytest.approx(0.0, abs=1e-3)  # one dense epoch first
    assert sparsity[1:] == pytest.approx([0.5, 0.5])
    saved = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in saved)
    model = net()
    model.load_state_dict(saved)
    zeros, total = _zeros(model)
    assert zeros == round(0.5 * total)
    assert result.summary["prune"]["param_sparsity"] == pytest.approx(0.5, abs=1 / total)
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    assert decisions.chosen.tolist() == ["prune"] and decisions.epoch.tolist() == [2]


@pytest.mark.parametrize("schedule", ["constant", "gradual"])
def test_resume_with_pruning_matches_a_straight_run(tmp_path, schedule):
    # the gradual ramp is fixed by end_epoch, not by the epochs of the first run
    straight = _train(tmp_path / "a", epochs=4, schedule=schedule, end_epoch=4)
    _train(tmp_path / "b", epochs=2, schedule=schedule, end_epoch=4)
    ckpt = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in ckpt["model"])
    resumed = _train(tmp_path / "b", epochs=4, resume=True, schedule=schedule, end_epoch=4)
    a = torch.load(straight.run_dir / "model.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "model.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert resumed.history.param_sparsity.tolist() == pytest.approx(
        straight.history.param_sparsity.tolist()
    )


def test_pruning_that_would_never_start_is_an_error(tmp_path):
    with pytest.raises(EdgeTrainError, match=r"prune\.start_epoch must be < epochs"):
        _train(tmp_path / "r", epochs=2, start_epoch=2)


def test_a_second_prune_callback_does_nothing_and_keeps_the_masks(tmp_path):
    data = Blobs()
    first, second = PruneCallback(), PruneCallback()
    result = fit(
        net(),
        data,
        Blobs(n=48, seed=1),
        out=tmp_path / "r",
        callbacks=[first, second],
        epochs=2,
        batch_size=16,
        prune={"ratio": 0.5},
        **QUIET,
    )
    saved = torch.load(result.run_dir / "checkpoints/last.pt", weights_only=True)
    assert set(saved["callbacks"]["prune"]["masks"]) == {"0", "4", "6"}
    assert result.summary["prune"]["layers"] == 3
