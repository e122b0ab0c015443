"""Recomputation (non-reentrant checkpoint) of chosen blocks: parity, memory, codecs, fit."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import edgetrain
from edgetrain.errors import EdgeTrainError
from edgetrain.memory import SavedTensorCounter, compress_activations
from edgetrain.memory import recompute as rc
from edgetrain.train.features.recompute import RecomputeCallback
from edgetrain.zoo import build_model
from edgetrain.zoo.architectures import ResNet18


class Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class ResStack(nn.Module):
    def __init__(self, c: int = 8, n: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*(Residual(c) for _ in range(n)))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def gpt(dropout: float = 0.0) -> nn.Module:
    return build_model(
        "gpt",
        num_classes=32,
        in_channels=1,
        input_size=(1, 16),
        d_model=32,
        n_layers=2,
        n_heads=2,
        dropout=dropout,
    )


def res_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)


def gpt_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 32, (3, 16), generator=g), torch.randint(0, 32, (3, 16), generator=g)


def step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: str | list[str],
    wrap: Callable[[nn.Module], object] | None = None,
    seed: int = 0,
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Gradients and state after one forward/backward of a copy of ``model``."""
    model = copy.deepcopy(model)
    handle = rc.apply_recompute(model, spec)
    torch.manual_seed(seed)
    ctx = wrap(model) if wrap is not None else None
    with ctx if ctx is not None else torch.enable_grad():  # type: ignore[attr-defined]
        out = model(x)
    loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    loss.backward()
    handle.remove()
    return [p.grad.clone() for p in model.parameters()], model.state_dict()


def assert_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    assert all(torch.equal(i, j) for i, j in zip(a, b, strict=True))


# ------------------------------------------------------------------ finding blocks


def test_find_blocks_on_common_models() -> None:
    res = ResNet18(10, 3, (16, 16), width_mult=0.25)
    assert [n for n, _ in rc.find_blocks(res)] == [
        f"layer{i}.{j}" for i in range(1, 5) for j in range(2)
    ]
    assert [n for n, _ in rc.find_blocks(gpt())] == ["blocks.0", "blocks.1"]
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3)
    assert [n for n, _ in rc.find_blocks(enc)] == ["layers.0", "layers.1", "layers.2"]
    mobilenet = build_model("mobilenetv2", num_classes=10, in_channels=3, input_size=(32, 32))
    blocks = rc.find_blocks(mobilenet)
    assert len(blocks) > 5 and {type(m).__name__ for _, m in blocks} == {"InvertedResidual"}
    # no repeated composite blocks: the top-level children that hold parameters
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert [n for n, _ in rc.find_blocks(mlp)] == ["0", "2"]


def test_choose_blocks() -> None:
    blocks = [(f"b{i}", nn.Identity()) for i in range(7)]
    assert rc.choose_blocks(blocks, "none") == []
    assert rc.choose_blocks(blocks, "all") == [f"b{i}" for i in range(7)]
    assert rc.choose_blocks(blocks, "auto") == [f"b{i}" for i in range(7)]
    assert rc.choose_blocks(blocks, "every_2") == ["b0", "b2", "b4", "b6"]
    assert rc.choose_blocks(blocks, "every_3") == ["b0", "b3", "b6"]
    assert rc.choose_blocks(blocks, ["b1", "x"]) == ["b1", "x"]
    for bad in ("every_0", "evry_2", "some", []):
        with pytest.raises(EdgeTrainError):
            rc.choose_blocks(blocks, bad)


def test_enable_keeps_modules_and_restores() -> None:
    model = ResStack()
    keys = list(model.state_dict())
    handle = rc.enable_recompute(model, ["blocks.0", "blocks.2"])
    assert list(model.state_dict()) == keys
    assert "forward" in model.blocks[0].__dict__ and "forward" not in model.blocks[1].__dict__
    with pytest.raises(EdgeTrainError, match="already"):
        rc.enable_recompute(model, ["blocks.0"])
    handle.remove()
    handle.remove()
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(EdgeTrainError, match="no module named"):
        rc.enable_recompute(model, ["blocks.9"])
    with pytest.raises(EdgeTrainError, match="inside"):
        rc.enable_recompute(model, ["blocks", "blocks.1"])


def test_checkpoints_only_with_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = rc.checkpoint

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rc, "checkpoint", counting)
    model = ResStack()
    x, _ = res_batch()
    with rc.apply_recompute(model, "all"):
        with torch.no_grad():
            model(x)
        assert calls == []
        model(x).sum().backward()
        assert len(calls) == 4


# ------------------------------------------------------------------ gradient parity


@pytest.mark.parametrize("spec", ["all", "every_2", ["blocks.1"]])
def test_residual_stack_bitwise(spec: str | list[str]) -> None:
    torch.manual_seed(0)
    model = ResStack()
    x, y = res_batch()
    plain, plain_state = step(model, x, y, "none")
    grads, state = step(model, x, y, spec)
    assert_equal(plain, grads)
    # BatchNorm's running statistics are updated once, as without recomputation
    assert_equal(list(plain_state.values()), list(state.values()))


def test_gpt_bitwise() -> None:
    torch.manual_seed(0)
    model = gpt()
    x, y = gpt_batch()
    assert_equal(step(model, x, y, "none")[0], step(model, x, y, "all")[0])


def test_dropout_same_masks() -> None:
    torch.manual_seed(0)
    model = gpt(dropout=0.2)
    x, y = gpt_batch()
    plain = step(model, x, y, "none", seed=5)[0]
    assert_equal(plain, step(model, x, y, "all", seed=5)[0])
    other = step(model, x, y, "none", seed=6)[0]
    assert not all(torch.equal(a, b) for a, b in zip(plain, other, strict=True))


def test_kwargs_pass_through() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = nn.Sequential()  # holder so the encoder is a child with a name
    enc.add_module("enc", nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    x = torch.randn(3, 5, 16)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True

    def grads(spec: str) -> list[torch.Tensor]:
        model = copy.deepcopy(enc)
        with rc.apply_recompute(model.enc, spec):
            model.enc(x, src_key_padding_mask=pad).sum().backward()
        return [p.grad for p in model.parameters()]

    assert_equal(grads("none"), grads("all"))


# ------------------------------------------------------------------ codecs and memory


def test_lossless_codec_bitwise_and_compresses_block_inputs() -> None:
    torch.manual_seed(0)
    model = ResStack()
    x, y = res_batch()
    plain = step(model, x, y, "none")[0]
    ctxs: list = []

    def lossless(m: nn.Module) -> object:
        ctxs.append(compress_activations(m, "lossless", min_bytes=0))
        return ctxs[-1]

    assert_equal(plain, step(model, x, y, "all", wrap=lossless)[0])
    stats = ctxs[0].stats
    assert 0 < stats.peak_stored_bytes <= stats.peak_raw_bytes


def test_int8_codec_close() -> None:
    torch.manual_seed(0)
    model = gpt()
    x, y = gpt_batch()
    plain = step(model, x, y, "none")[0]

    def int8(m: nn.Module) -> object:
        return compress_activations(m, "int8", min_bytes=0, seed=0)

    grads = step(model, x, y, "all", wrap=int8)[0]
    for a, b in zip(plain, grads, strict=True):
        assert (a - b).norm() <= 0.1 * a.norm() + 1e-6


def test_saved_bytes_drop() -> None:
    torch.manual_seed(0)
    model = ResStack()
    x, _ = res_batch()

    def saved(spec: str) -> int:
        m = copy.deepcopy(model)
        with rc.apply_recompute(m, spec), SavedTensorCounter(m) as counter:
            out = m(x).sum()
        del out
        return counter.peak_bytes

    plain, every_2, full = saved("none"), saved("every_2"), saved("all")
    assert full < 0.6 * plain
    assert full < every_2 < plain


# ------------------------------------------------------------------ training


def test_fit_with_callback_equals_plain(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(
        torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
    )

    def run(name: str, callbacks: list) -> edgetrain.FitResult:
        torch.manual_seed(0)
        return edgetrain.fit(
            ResStack(c=4, n=2),
            data,
            epochs=1,
            batch_size=8,
            lr=0.1,
            out=str(tmp_path / name),
            progress=False,
            monitor={"enabled": False},
            callbacks=callbacks,
        )

    plain = run("plain", [])
    cb = RecomputeCallback("all")
    recomputed = run("rc", [cb])
    assert recomputed.summary["recompute"] == {"blocks": ["blocks.0", "blocks.1"], "spec": "all"}
    assert cb.handle is None and all(
        "forward" not in m.__dict__ for m in recomputed.model.modules()
    )
    a, b = plain.model.state_dict(), recomputed.model.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(plain.history) == 1
