"""Small hand-made models covering what saved-tensor hooks must get right, and helpers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgetrain.memory import CompressionContext


class VggLike(nn.Module):
    """Conv, in-place ReLU, max-pool twice, then a linear head (ReLU outputs saved twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class ResLike(nn.Module):
    """Conv-BN-ReLU(in place), a residual block with ``out += identity``, a downsample."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        out = self.relu(out)
        out = self.relu(self.down(out))
        return self.fc(torch.flatten(self.pool(out), 1))


class Linear3D(nn.Module):
    """Linear layers on (batch, tokens, features): saved inputs are reshaped views."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.mix = nn.Linear(5, 5)  # over tokens: its input is a transposed view
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 5, 6]
        h = torch.relu(self.embed(x))
        h = h + self.mlp(h)
        h = self.mix(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h.mean(1))


class Shared(nn.Module):
    """One activation used by several operations, and the same module applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        g = self.a(h) + self.b(h) + h * h  # h saved by relu, a, b and twice by mul
        g = torch.relu(self.a(torch.relu(g)))  # self.a used twice
        return self.fc(g.mean((2, 3)))


class Views(nn.Module):
    """Saved views: slices with and without gaps, channels_last, a chunk, a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # [B, 8, 8, 8]
        first, second = h.chunk(2, dim=1)  # views into h's storage with an offset
        u = self.conv2(first.contiguous(memory_format=torch.channels_last))
        v = second[:, :, ::2, :] * second[:, :, 1::2, :]  # strided views with gaps
        w = torch.relu(u)[:, :, 1:5, :] * v  # view with offset, no gaps per row block
        z = w.reshape(w.shape[0], -1)[:, :64]
        t = z.t()  # a transposed view, then a matmul that saves it
        out = t.t() @ self.fc.weight.t() + self.fc.bias
        return out + torch.sigmoid(z).sum(1, keepdim=True)


class BNNet(nn.Module):
    """Batch norm in training mode, dropout, and a max-pool with dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2, dilation=2),
            nn.Dropout(0.2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def make_case(name: str, batch: int = 4) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model, an input batch and integer targets (10 classes), all seeded."""
    torch.manual_seed(0)
    models: dict[str, Callable[[], nn.Module]] = {
        "vgg_like": VggLike,
        "res_like": ResLike,
        "linear3d": Linear3D,
        "shared": Shared,
        "views": Views,
        "bn": BNNet,
    }
    model = models[name]()
    shape = (batch, 5, 6) if name == "linear3d" else (batch, 3, 16, 16)
    if name == "views":
        shape = (batch, 3, 8, 8)
    x = torch.randn(shape)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


CASES = ("vgg_like", "res_like", "linear3d", "shared", "views", "bn")


def step_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ctx: CompressionContext | None = None,
    seed: int = 1,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and parameter gradients of one forward/backward (RNG seeded for dropout)."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    if ctx is None:
        loss = nn.functional.cross_entropy(model(x), y)
    else:
        with ctx:
            loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of ``t`` (so that -0.0 and NaN compare exactly)."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(width)


# -- fixtures: test modules get the helpers through these (no imports from conftest) ------


@pytest.fixture(params=CASES)
def parity_case(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Each hand-made model with its batch."""
    return make_case(request.param)


@pytest.fixture
def case() -> Callable[..., tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """``case(name, batch=4)``: a hand-made model with its batch."""
    return make_case


@pytest.fixture
def grads() -> Callable[..., tuple[torch.Tensor, list[torch.Tensor]]]:
    """``grads(model, x, y, ctx=None)``: loss and parameter gradients of one step."""
    return step_grads


@pytest.fixture
def as_bits() -> Callable[[torch.Tensor], torch.Tensor]:
    """``as_bits(t)``: the bit patterns of ``t``, for exact comparisons."""
    return bits
