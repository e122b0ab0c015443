"""Small data, models and a deterministic memory meter for the adaptive and pruning tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from edgetrain.tasks import first_tensor

QUIET = {"progress": False, "monitor": {"enabled": False}}


class Blobs(Dataset):
    """Two-channel 4x4 'images' whose class is the sign pattern of a fixed projection."""

    def __init__(self, n: int = 96, classes: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, 4, 4, generator=g)
        w = torch.randn(classes, 32, generator=g)
        self.y = (self.x.flatten(1) @ w.T).argmax(dim=1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def tiny_net(classes: int = 3, seed: int = 0, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(2, 4, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


class BatchMeter:
    """A memory meter that 'measures' static + per_sample x the largest training forward
    batch since the last reset: deterministic, so budget tests do not depend on RSS."""

    source = "fake:batch"

    def __init__(self, model: nn.Module, static_bytes: int, per_sample_bytes: int) -> None:
        self.static_bytes = static_bytes
        self.per_sample_bytes = per_sample_bytes
        self.baseline_rss_bytes = None
        self.largest = 0
        self.resets = 0
        model.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.is_grad_enabled():  # the batch: the first tensor argument, by position or name
            first = first_tensor((args, kwargs))
            self.largest = max(self.largest, int(first.shape[0]))

    def start(self, resident_tensor_bytes: int) -> None:
        self.reset_peak()

    def reset_peak(self) -> None:
        self.largest = 0
        self.resets += 1

    def peak_bytes(self) -> int:
        return self.static_bytes + self.per_sample_bytes * self.largest

    def current_bytes(self) -> int:
        return self.static_bytes

    def capacity_bytes(self) -> int:
        return 1 << 30


class OomAbove(nn.Module):
    """Wraps a model; raises torch.OutOfMemoryError when a training forward gets more than
    ``limit`` samples, after the wrapped model's first layers ran (so batch-norm statistics
    were already updated, as in a real out-of-memory error part-way through a forward)."""

    def __init__(self, inner: nn.Sequential, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.raised = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner[:2](x)
        if torch.is_grad_enabled() and x.shape[0] > self.limit:
            self.raised += 1
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} > {self.limit} samples")
        return self.inner[2:](h)


@pytest.fixture
def blobs() -> Blobs:
    return Blobs()
