"""Tiny models and data for the sparse-update tests (2 shared cores: keep them small)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset


class Blobs(Dataset):
    """Two-channel 6x6 'images' whose class is the sign pattern of a fixed projection."""

    def __init__(self, n: int = 64, classes: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, 6, 6, generator=g)
        w = torch.randn(classes, 72, generator=g)
        self.y = (self.x.flatten(1) @ w.T).argmax(dim=1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class TinyNet(nn.Module):
    """conv-BN-ReLU, depthwise conv, 1x1 conv, linear hidden layer, linear head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.relu2 = nn.ReLU()
        self.pw = nn.Conv2d(8, 6, 1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(24, 10)
        self.relu4 = nn.ReLU()
        self.head = nn.Linear(10, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu3(self.pw(self.relu2(self.dw(x))))
        return self.head(self.relu4(self.fc(self.flat(self.pool(x)))))


@pytest.fixture
def blobs():
    return Blobs


@pytest.fixture
def tiny_net():
    def make(seed: int = 0, classes: int = 3) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(classes)

    return make
