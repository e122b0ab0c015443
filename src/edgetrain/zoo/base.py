"""What every data set returns: items ``(x [C, H, W] float32, y int64)`` and a ``DataInfo``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["DataInfo", "InMemoryDataset"]


@dataclass(frozen=True)
class DataInfo:
    """Shape and size of a data set, enough to build a model for it.

    Attributes:
        name: the data set name (or import path) it was loaded with.
        num_classes: number of labels; labels are 0..num_classes-1.
        in_channels: channels C of every item.
        input_size: (H, W) of every item.
        num_samples: number of items.
        files: files read while iterating (lazy data sets), for page-cache studies;
            empty for in-memory data sets.
    """

    name: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    num_samples: int
    files: tuple[Path, ...] = ()


class InMemoryDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A data set held in two tensors, for fast bulk indexing and statistics.

    Attributes:
        x: float32 tensor [N, C, H, W].
        y: int64 tensor [N].
        classes: class names, one per label.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str] = ()) -> None:
        if x.dim() != 4 or x.dtype != torch.float32:
            raise ValueError(
                f"x must be a float32 tensor [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
            )
        if y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(x):
            raise ValueError(
                f"y must be an int64 tensor [{len(x)}], got {y.dtype} {tuple(y.shape)}"
            )
        self.x = x
        self.y = y
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def targets(self) -> list[int]:
        """Labels as a list of ints (same as ``y.tolist()``)."""
        return self.y.tolist()
