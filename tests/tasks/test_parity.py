"""edgetrain.fit equals a hand-written PyTorch loop bit for bit, for every built-in task.

Same initial weights, same batches in the same order (edgetrain's order is a permutation
drawn from (seed, epoch)), same optimizer: after two epochs the parameters are equal with
torch.equal. Batch sizes are powers of two so a mean and a sum divided by the count round
identically.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import edgetrain

SEED, EPOCHS, BATCH, LR = 3, 2, 16, 0.05
QUIET: dict[str, Any] = {"progress": False, "monitor": {"enabled": False}}


def epoch_order(n: int, epoch: int) -> list[int]:
    """The order edgetrain draws an epoch in (train/data.py ``_batches``)."""
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def plain_loop(model: nn.Module, dataset: Dataset, step_loss: Any) -> nn.Module:
    """The loop a user writes by hand: SGD with momentum, mean loss, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    n = len(dataset)  # type: ignore[arg-type]
    model.train()
    for epoch in range(EPOCHS):
        order = epoch_order(n, epoch)
        for lo in range(0, n, BATCH):
            batch = torch.utils.data.default_collate([dataset[i] for i in order[lo : lo + BATCH]])
            opt.zero_grad(set_to_none=True)
            step_loss(model, batch).backward()
            opt.step()
    return model


def both(model: nn.Module, dataset: Dataset, step_loss: Any, tmp_path, **kw: Any) -> None:
    torch.manual_seed(0)
    reference = plain_loop(copy.deepcopy(model), dataset, step_loss)
    result = edgetrain.fit(
        model,
        dataset,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        seed=SEED,
        out=str(tmp_path / "run"),
        **QUIET,
        **kw,
    )
    for (name, p), q in zip(result.model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), f"{name} differs from the hand-written loop"


def test_classification_matches_a_plain_loop(tmp_path):
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(m(x), y)

    both(model, data, loss, tmp_path)


def test_regression_matches_a_plain_loop(tmp_path):
    torch.manual_seed(2)
    data = TensorDataset(torch.randn(64, 8), torch.randn(64))
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(m(x).reshape(-1), y)

    both(model, data, loss, tmp_path)  # float targets: regression chosen automatically


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)))


def test_language_modeling_matches_a_plain_loop(tmp_path):
    torch.manual_seed(3)
    tokens = torch.randint(0, 16, (64, 9))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        logits = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    both(TinyLM(), data, loss, tmp_path, task="language_modeling")


class DictModel(nn.Module):
    """Hugging Face style: keyword inputs, returns an output with .loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 4)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.net(features)
        return SimpleNamespace(loss=F.cross_entropy(logits, labels), logits=logits)


class DictData(Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(64, 6)
        self.y = torch.randint(0, 4, (64,))

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "labels": self.y[i]}


def test_model_loss_matches_a_plain_loop(tmp_path):
    torch.manual_seed(4)

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return m(**batch).loss

    result_task: list[str] = []

    class Spy(edgetrain.Callback):
        def on_fit_start(self, state) -> None:  # type: ignore[no-untyped-def]
            result_task.append(state.task.name)

    both(DictModel(), DictData(), loss, tmp_path, callbacks=[Spy()])
    assert result_task == ["model_loss"]  # chosen automatically: dict batch, output with .loss
