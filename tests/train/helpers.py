"""Small models and data for loop tests (no zoo needed)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


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


def tiny_net(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, classes)
    )
