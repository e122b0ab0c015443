"""Tests for the gpt model: shapes, causality, size, options, learning on pycorpus."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgetrain.errors import EdgeTrainError
from edgetrain.zoo import build_model, load_dataset
from edgetrain.zoo.models import model_options

LM = {"num_classes": 256, "in_channels": 1, "input_size": (1, 32)}


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_output_shape_and_backward() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", num_classes=50, in_channels=1, input_size=(1, 16), d_model=32)
    ids = torch.randint(50, (3, 16))
    logits = model(ids)
    assert logits.shape == (3, 16, 50) and logits.dtype == torch.float32
    nn.functional.cross_entropy(logits.reshape(-1, 50), ids.reshape(-1)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # shorter sequences than seq_len work too
    assert model(ids[:, :5]).shape == (3, 5, 50)


def test_causal() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", **LM, d_model=64, n_layers=2, n_heads=4).eval()
    ids = torch.randint(256, (2, 32))
    with torch.no_grad():
        before = model(ids)
        for t in (0, 10, 30):
            changed = ids.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
            after = model(changed)
            assert torch.allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-5), t
            assert not torch.allclose(after[:, t + 1], before[:, t + 1], atol=1e-5), t


def test_parameter_count() -> None:
    model = build_model("gpt", num_classes=256, in_channels=1, input_size=(1, 128))
    d, v, s, layers = 128, 256, 128, 2
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert _params(model) == v * d + s * d + layers * block + 2 * d + (d * v + v) == 478_976
    assert model.pos_emb.num_embeddings == 128  # seq_len defaults to input_size[1]


def test_options() -> None:
    assert model_options("gpt") == ("d_model", "n_layers", "n_heads", "seq_len", "dropout")
    model = build_model("gpt", **LM, d_model=48, n_layers=3, n_heads=6, seq_len=64, dropout=0.1)
    assert model.pos_emb.num_embeddings == 64
    assert len(model.blocks) == 3 and model.tok_emb.embedding_dim == 48
    assert any(isinstance(m, nn.Dropout) and m.p == 0.1 for m in model.modules())
    assert any(isinstance(m, nn.GELU) for m in model.modules())
    assert model(torch.randint(256, (2, 64))).shape == (2, 64, 256)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (
            {"d_model": 30, "n_heads": 4},
            "gpt option d_model must be a multiple of n_heads (4), got 30",
        ),
        ({"n_layers": 0}, "gpt option n_layers must be an integer >= 1, got 0"),
        ({"seq_len": 0}, "gpt option seq_len must be an integer >= 1, got 0"),
        ({"dropout": 1.0}, "gpt option dropout must be in [0, 1)"),
        ({"heads": 2}, "did you mean 'n_heads'"),
    ],
)
def test_bad_options(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(EdgeTrainError) as err:
        build_model("gpt", **LM, **options)
    assert fragment in str(err.value)


def test_bad_inputs() -> None:
    model = build_model("gpt", **LM, d_model=32)
    with pytest.raises(EdgeTrainError, match=r"at most seq_len=32 tokens, got 33"):
        model(torch.randint(256, (1, 33)))
    with pytest.raises(EdgeTrainError, match=r"integer token ids \[N, T\], got torch.float32"):
        model(torch.zeros(1, 8))
    with pytest.raises(EdgeTrainError, match=r"integer token ids \[N, T\]"):
        model(torch.zeros(8, dtype=torch.int64))


def test_learns_pycorpus() -> None:
    """A few Adam steps on corpus batches bring the loss well below uniform (ln 256)."""
    data, info = load_dataset("pycorpus", max_bytes=200_000, seq_len=32)
    torch.manual_seed(0)
    model = build_model(
        "gpt",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_size,
        d_model=64,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(
        data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    losses = []
    for step, (x, y) in enumerate(loader):
        logits = model(x)
        assert logits.shape == (32, 32, 256)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 60:
            break
    assert abs(losses[0] - math.log(256)) < 0.5
    assert sum(losses[-5:]) / 5 < 3.3
