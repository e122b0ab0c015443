"""report(..., task=...): one training step of any task, the loss as the loop computes it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.memory import report
from edgetrain.tasks import (
    ClassificationTask,
    LanguageModelingTask,
    ModelLossTask,
    RegressionTask,
)

F32 = 4


def _mlp(outputs: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, outputs))


def test_classification_task_reports_what_the_default_does() -> None:
    model = _mlp(3)
    optimizer = torch.optim.Adam(model.parameters())
    batch = (torch.randn(4, 6), torch.randint(0, 3, (4,)))
    assert report(model, optimizer, batch, task=ClassificationTask()) == report(
        model, optimizer, batch
    )


def test_regression_on_float_targets() -> None:
    model = _mlp(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = (torch.randn(5, 6), torch.randn(5))
    params = [p.detach().clone() for p in model.parameters()]
    rep = report(model, optimizer, batch, task=RegressionTask())
    assert rep.batch_size == 5
    assert rep.grad_bytes == rep.param_bytes == rep.optimizer_state_bytes
    # the linear layers save x and the ReLU output; the loss saves the prediction and
    # the target (MSE), counted under "(loss)"
    assert rep.activation_bytes >= 5 * 6 * F32 + 5 * 8 * F32
    assert {r.layer for r in rep.per_layer} >= {"0", "1", "(loss)"}
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert not optimizer.state  # restored


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


def test_language_modeling_on_token_ids() -> None:
    model = TinyGPT()
    ids = torch.randint(0, 11, (3, 8))
    rep = report(model, None, ids, task=LanguageModelingTask())
    assert rep.batch_size == 3
    assert rep.optimizer_state_bytes == 0 and rep.grad_bytes == rep.param_bytes
    # the head saves the embedding output [3, 7, 4] (the model saw all but the last token)
    head = next(r for r in rep.per_layer if r.layer == "head")
    assert head.activation_bytes == 3 * 7 * 4 * F32
    # cross entropy over the logits [21, 11] saves its log-softmax
    loss = next(r for r in rep.per_layer if r.layer == "(loss)")
    assert loss.activation_bytes >= 3 * 7 * 11 * F32


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.lin(features)
        return SimpleNamespace(loss=nn.functional.cross_entropy(logits, labels), logits=logits)


def test_model_loss_on_dict_batches() -> None:
    model = DictModel()
    batch = {"features": torch.randn(4, 6), "labels": torch.randint(0, 2, (4,))}
    rep = report(model, torch.optim.Adam(model.parameters()), batch, task=ModelLossTask())
    assert rep.batch_size == 4
    assert rep.optimizer_state_bytes >= 2 * rep.param_bytes  # Adam's two moments
    assert rep.activation_bytes >= 4 * 6 * F32  # the linear layer saves its input


def test_a_dict_batch_without_a_task_and_a_task_with_a_loss_fn_are_errors() -> None:
    model = DictModel()
    batch = {"features": torch.randn(4, 6), "labels": torch.randint(0, 2, (4,))}
    with pytest.raises(EdgeTrainError, match="pair"):
        report(model, None, batch)
    with pytest.raises(EdgeTrainError, match="not both"):
        report(model, None, batch, lambda out, y: out.loss, task=ModelLossTask())
