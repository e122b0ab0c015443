"""Data for the loop: a fixed split, preprocessing fitted on training data, epoch loaders.

The train/val/test split is drawn once from the seed, before any shuffling or
augmentation, and never changes between epochs, runs or trials. Preprocessing
statistics come from the training split only, so nothing leaks from validation or test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from edgetrain.errors import EdgeTrainError

__all__ = [
    "Normalizer",
    "SplitData",
    "SubsetView",
    "epoch_loader",
    "eval_loader",
    "fit_normalizer",
    "split_indices",
]

log = logging.getLogger(__name__)
_STATS_MAX_SAMPLES = 4096  # enough for per-channel statistics; bounds the cost on file data sets


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into disjoint index sets with the given fractions, fixed by seed."""
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    counts = [round(f * n) for f in fractions]
    counts[0] = n - sum(counts[1:])
    out, start = [], 0
    for c in counts:
        out.append(perm[start : start + c].sort().values)
        start += c
    return out


@dataclass(frozen=True)
class Normalizer:
    """Per-channel affine preprocessing ``(x - shift) / scale`` fitted on training data."""

    method: str
    shift: torch.Tensor  # shape (C, 1, 1)
    scale: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "none":
            return x  # token ids and other integer inputs pass unchanged
        x = x.float()
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)


def _bulk(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` tensors of a data set that declares them (``edgetrain_bulk()``, as
    edgetrain's in-memory data sets do); never guessed from attributes, so a user's
    ``__getitem__`` is always what training sees."""
    declare = getattr(dataset, "edgetrain_bulk", None)
    if declare is None:
        return None
    x, y = declare()
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and len(x) == len(y):
        return x, y
    return None


def fit_normalizer(dataset: Dataset, indices: torch.Tensor, method: str) -> Normalizer:
    """Fit ``method`` (none, standardize, minmax, robust) on the samples at ``indices``."""
    if method == "none":
        one = torch.ones(1, 1, 1)
        return Normalizer("none", torch.zeros(1, 1, 1), one)
    idx = indices[:_STATS_MAX_SAMPLES]
    bulk = _bulk(dataset)
    if bulk is not None:
        x = bulk[0][idx]
    else:
        x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx])
    if not x.is_floating_point():  # token ids, class indices: nothing to standardise
        log.info("inputs are %s, not floats: preprocessing=%s is not applied", x.dtype, method)
        return Normalizer("none", torch.zeros(1, 1, 1), torch.ones(1, 1, 1))
    x = x.float()
    if x.dim() < 2:
        raise EdgeTrainError(
            f"preprocessing needs samples with a channel axis, got shape {tuple(x.shape)}"
        )
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
    if method == "standardize":
        shift, scale = flat.mean(dim=1), flat.std(dim=1)
    elif method == "minmax":
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        shift, scale = lo, hi - lo
    elif method == "robust":
        q = torch.quantile(
            flat[:, :: max(1, flat.shape[1] // 1_000_000)], torch.tensor([0.25, 0.5, 0.75]), dim=1
        )
        shift, scale = q[1], q[2] - q[0]
    else:
        raise EdgeTrainError(f"unknown preprocessing {method!r}")
    scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))  # constant channels
    shape = (-1,) + (1,) * (x.dim() - 2)
    return Normalizer(method, shift.reshape(shape), scale.reshape(shape))


class SubsetView(Dataset):
    """A split of a data set with preprocessing applied to each item's first element (the
    inputs); items are otherwise passed on as the data set returns them. Fetches whole
    batches in one go when the data set declares its tensors (``edgetrain_bulk``)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, normalizer: Normalizer) -> None:
        self.dataset = dataset
        self.indices = indices
        self.normalizer = normalizer
        self._bulk = _bulk(dataset)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self._item(int(self.indices[i]))

    def _item(self, index: int) -> Any:
        item = self.dataset[index]
        if self.normalizer.method == "none":
            return item
        x, *rest = item
        return (self.normalizer(torch.as_tensor(x)), *rest)

    def __getitems__(self, items: list[int]) -> Any:
        if self._bulk is None:  # the data set's own __getitem__, one conversion of the indices
            return [self._item(i) for i in self.indices[items].tolist()]
        idx = self.indices[torch.as_tensor(items, dtype=torch.long)]
        x, y = self._bulk
        return _Batch(self.normalizer(x[idx]), y[idx])


class _Batch(tuple):
    """A batch already collated by :meth:`SubsetView.__getitems__`."""

    def __new__(cls, x: torch.Tensor, y: torch.Tensor) -> _Batch:
        return super().__new__(cls, (x, y))


def _collate(items: Any) -> Any:
    if isinstance(items, _Batch):
        return tuple(items)
    return default_collate(items)


@dataclass
class SplitData:
    """The three splits of a data set (val and test may be empty)."""

    train: Dataset | DataLoader  # a user's DataLoader is used as given
    val: Dataset | DataLoader | None
    test: Dataset | DataLoader | None
    num_classes: int
    collate_fn: Any = None  # for loaders edgetrain builds (None: default_collate)
    info: Any = None  # the data set's DataInfo, when edgetrain loaded it


def as_loader(data: Dataset | DataLoader) -> DataLoader | None:
    """A user's DataLoader, to be used as given (its collate_fn, sampler and workers)."""
    return data if isinstance(data, DataLoader) else None


def _batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    if shuffle:
        # the order of an epoch depends only on (seed, epoch): a resumed run replays it exactly
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(n, generator=gen).tolist()
    else:
        order = list(range(n))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _loader(
    dataset: Dataset,
    batches: list[list[int]],
    num_workers: int,
    prefetch_factor: int | None,
    pin_memory: bool,
    collate_fn: Any = None,
) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor or 2
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate_fn or _collate,
        pin_memory=pin_memory,
        **kwargs,
    )


def epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    prefetch_factor: int | None = None,
    pin_memory: bool = False,
    collate_fn: Any = None,
) -> DataLoader:
    """The loader for one training epoch: a fresh order from (seed, epoch) and any batch size.

    A new loader per epoch lets the logical batch size change between epochs without
    rebuilding the data set. A user's DataLoader is returned as it is.
    """
    if isinstance(dataset, DataLoader):
        return dataset
    batches = _batches(len(dataset), batch_size, seed, epoch, shuffle=True)  # type: ignore[arg-type]
    return _loader(dataset, batches, num_workers, prefetch_factor, pin_memory, collate_fn)


def eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    prefetch_factor: int | None = None,
    pin_memory: bool = False,
    collate_fn: Any = None,
) -> DataLoader:
    """A loader over a whole split in order (validation, test); a user's DataLoader as is."""
    if isinstance(dataset, DataLoader):
        return dataset
    batches = _batches(len(dataset), batch_size, 0, 0, shuffle=False)  # type: ignore[arg-type]
    return _loader(dataset, batches, num_workers, prefetch_factor, pin_memory, collate_fn)
