"""Gradient accumulation folded into SGD's momentum: the accumulated step's result with
no gradient kept between micro-batches, in the real training loop too."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import Blobs, tiny_net
from torch import nn

import edgetrain
from edgetrain.memory.fold import MomentumFold, fold_refusal
from edgetrain.memory.optimizer_state import LowPrecisionState

QUIET = {"monitor": {"enabled": False}}

SGDS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "decay_dampening": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2
    ),
    "maximize": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, weight_decay=1e-3, maximize=True
    ),
    "groups": lambda p: torch.optim.SGD(_groups(p), lr=0.05, momentum=0.9),
}


def _groups(params: Any) -> list[dict[str, Any]]:
    params = list(params)
    return [{"params": params[:2], "lr": 0.2, "weight_decay": 0.01}, {"params": params[2:]}]


class _WithUnused(nn.Module):
    """A net with a parameter that gets no gradient (SGD leaves it alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _batches(count: int, n: int = 12, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 2, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
        for _ in range(count)
    ]


@pytest.mark.parametrize("name", sorted(SGDS))
def test_folded_accumulation_matches_the_accumulated_step(name: str) -> None:
    plain_model = _WithUnused()
    fold_model = copy.deepcopy(plain_model)
    plain, opt = SGDS[name](plain_model.parameters()), SGDS[name](fold_model.parameters())
    fold = MomentumFold(opt)
    params = list(fold_model.parameters())
    alive: list[int] = []
    for p in params:
        p.register_post_accumulate_grad_hook(fold.fold)
        # runs after the fold: how many gradients exist at that moment
        p.register_post_accumulate_grad_hook(
            lambda _p: alive.append(sum(q.grad is not None for q in params))
        )
    for step, (x, y) in enumerate(_batches(5)):
        plain.zero_grad()
        for lo in range(0, 12, 4):  # three micro-batches, the loss over the whole batch
            F.cross_entropy(plain_model(x[lo : lo + 4]), y[lo : lo + 4], reduction="sum").div(
                12
            ).backward()
        plain.step()
        fold.begin()
        for lo in range(0, 12, 4):
            F.cross_entropy(fold_model(x[lo : lo + 4]), y[lo : lo + 4], reduction="sum").div(
                12
            ).backward()
            assert all(p.grad is None for p in params)
        fold.finish()
        for (pname, a), b in zip(plain_model.named_parameters(), params, strict=True):
            if step == 0:  # from a zero buffer: the same sums in the same order
                assert torch.equal(a, b), pname
            else:  # the momentum's product is added before the gradients: rounding only
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert alive and max(alive) == 0
    assert torch.equal(fold_model.unused, torch.ones(3))  # never had a gradient
    assert "momentum_buffer" not in opt.state[fold_model.unused]
    for a, b in zip(plain_model.parameters(), params, strict=True):
        if a is not plain_model.unused:
            torch.testing.assert_close(
                plain.state[a]["momentum_buffer"], opt.state[b]["momentum_buffer"]
            )


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: torch.optim.Adam(p, lr=1e-2), "Adam needs the whole gradient"),
        (lambda p: torch.optim.SGD(p, lr=0.1), "without momentum"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "nesterov"),
    ],
    ids=["adam", "no_momentum", "nesterov"],
)
def test_refuses_what_cannot_fold(make: Any, words: str) -> None:
    opt = make(tiny_net().parameters())
    assert words in (fold_refusal(opt) or "")
    with pytest.raises(ValueError, match=words):
        MomentumFold(opt)


def test_low_precision_state_does_not_fold() -> None:
    opt = torch.optim.SGD(tiny_net().parameters(), lr=0.1, momentum=0.9)
    assert fold_refusal(opt) is None
    state = LowPrecisionState(opt, seed=0)
    assert "low-precision" in (fold_refusal(opt) or "")
    state.remove(restore=True)
    assert fold_refusal(opt) is None


def _fit(tmp: Any, name: str, optimizer: str = "sgd", **extra: Any) -> Any:
    settings = {"out": str(tmp / name), "progress": False, "optimizer": optimizer, **QUIET}
    return edgetrain.fit(
        tiny_net(),
        Blobs(96),
        Blobs(48, seed=1),
        epochs=2,
        batch_size=16,
        micro_batch_size=4,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        **settings,
        **extra,
    )


def test_training_with_accumulation_folds_and_matches_plain(tmp_path: Any) -> None:
    """The real loop: micro-batch 4 x 4 with optimizer_in_backward folds every batch,
    keeps no gradient between micro-batches, and trains what plain accumulation trains."""
    plain = _fit(tmp_path, "plain")
    folded = _fit(tmp_path, "fold", optimizer_in_backward=True)
    steps = folded.summary["optimizer_in_backward"]
    assert steps["steps_folded"] == steps["steps_in_backward"] == 12  # 96 / 16 x 2 epochs
    assert steps["steps_plain"] == 0
    for column in ("train_loss", "val_loss"):
        assert list(folded.history[column]) == pytest.approx(list(plain.history[column]), rel=1e-4)
    ckpt = torch.load(folded.run_dir / "checkpoints" / "last.pt", weights_only=True)
    plain_ckpt = torch.load(plain.run_dir / "checkpoints" / "last.pt", weights_only=True)
    for key, value in plain_ckpt["model"].items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-4, atol=1e-6)


def test_adam_with_accumulation_steps_the_plain_way(tmp_path: Any) -> None:
    res = _fit(tmp_path, "adam", "adam", optimizer_in_backward=True)
    steps = res.summary["optimizer_in_backward"]
    assert steps == {"steps_in_backward": 0, "steps_folded": 0, "steps_plain": 12}


class _Pairs(torch.utils.data.Dataset):
    """Regression pairs, or dict batches with labels for a model that returns its loss."""

    def __init__(self, as_dict: bool, n: int = 96, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        if self.as_dict:
            return {"input": self.x[i], "labels": (self.y[i, 0] > 0).long()}
        return self.x[i], self.y[i]


class _OwnLoss(nn.Module):
    """A Hugging Face-style model: keyword inputs, a dict output with its own loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, input: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.net(input)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


@pytest.mark.parametrize("as_dict", [False, True], ids=["regression", "dict_model_loss"])
def test_other_tasks_fold_and_match_plain_accumulation(tmp_path: Any, as_dict: bool) -> None:
    torch.manual_seed(0)
    plain_model = (
        _OwnLoss() if as_dict else nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    )
    fold_model = copy.deepcopy(plain_model)
    settings = {
        "epochs": 2, "batch_size": 32, "micro_batch_size": 8, "optimizer": "sgd", "lr": 0.01,
        "momentum": 0.9, "progress": False, **QUIET,
    }  # fmt: skip
    plain = edgetrain.fit(
        plain_model, _Pairs(as_dict), _Pairs(as_dict, 48, 1), out=str(tmp_path / "p"), **settings
    )
    folded = edgetrain.fit(
        fold_model, _Pairs(as_dict), _Pairs(as_dict, 48, 1), out=str(tmp_path / "f"),
        optimizer_in_backward=True, **settings,
    )  # fmt: skip
    assert folded.summary["optimizer_in_backward"]["steps_folded"] == 6
    assert list(folded.history.val_loss) == pytest.approx(list(plain.history.val_loss), rel=1e-5)
    for a, b in zip(plain_model.parameters(), fold_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
