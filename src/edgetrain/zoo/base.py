"""What every data set returns: items ``(x, y)`` and a ``DataInfo``.

Image data sets give ``(x [C, H, W] float32, y int64)``; non-image ones (tabular,
token sequences) give tensors of other shapes and dtypes, described by the same
``DataInfo`` (see its docstring for the convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["DataInfo", "InMemoryDataset", "TensorPairDataset"]


@dataclass(frozen=True)
class DataInfo:
    """Shape and size of a data set, enough to build a model for it.

    Non-image data keep the same fields, so that ``build_model(num_classes=,
    in_channels=, input_size=)`` and per-channel preprocessing work unchanged:
    ``in_channels`` is the size of x's first axis (axis 1 of a batch, what
    preprocessing standardises per channel) and ``input_size`` the rest, with 1 for
    missing axes, so ``in_channels * H * W`` is always the number of values in x.
    Tabular x [F]: ``in_channels=F``, ``input_size=(1, 1)``. Token ids x [T]:
    ``in_channels=1``, ``input_size=(1, T)``.

    Attributes:
        name: the data set name (or import path) it was loaded with.
        num_classes: the model's output size: number of labels (labels are
            0..num_classes-1) for classification, number of targets for regression,
            vocabulary size for language modelling.
        in_channels: channels C of every item (features of tabular data).
        input_size: (H, W) of every item ((1, 1) for tabular data, (1, T) for sequences).
        num_samples: number of items.
        files: files read while iterating (lazy data sets), for page-cache studies;
            empty for in-memory data sets.
        task: the task the data set is trained with unless the config names one:
            ``classification``, ``regression`` or ``language_modeling``.
    """

    name: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    num_samples: int
    files: tuple[Path, ...] = ()
    task: str = "classification"  # the task it is trained with unless the config names one


class TensorPairDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A data set held in two tensors of any shape and dtype, item i being ``(x[i], y[i])``.

    Attributes:
        x: inputs [N, ...].
        y: targets [N, ...].
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() < 1 or y.dim() < 1 or len(x) != len(y):
            raise ValueError(
                f"x and y must be tensors with the same first axis, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    def edgetrain_bulk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both tensors, for batch fetching without per-sample calls: only data sets that
        declare this method are read in bulk (a user's ``__getitem__`` is always honoured)."""
        return self.x, self.y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class InMemoryDataset(TensorPairDataset):
    """An image data set held in two tensors, for fast bulk indexing and statistics.

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
        super().__init__(x, y)
        self.classes = list(classes)

    @property
    def targets(self) -> list[int]:
        """Labels as a list of ints (same as ``y.tolist()``)."""
        return self.y.tolist()
