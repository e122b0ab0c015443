"""Batches of any structure: tensors, tuples, lists, dicts, dataclasses, ``BatchEncoding``.

Three operations the loop and the features need, whatever a batch holds: move it to a
device (floating tensors take the parameters' dtype, integer tensors such as token ids
keep theirs), read its size (the leading dimension of its first tensor) and slice it into
micro-batches (every tensor whose leading dimension is the batch size is sliced; other
values are shared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from edgetrain.errors import EdgeTrainError

__all__ = [
    "apply_tensors",
    "batch_size",
    "first_tensor",
    "move_batch",
    "sample_batch",
    "slice_batch",
]


def apply_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it, the structure kept."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = {k: apply_tensors(v, fn) for k, v in batch.items()}
        if isinstance(batch, dict) and type(batch) is dict:
            return items
        try:  # BatchEncoding, OrderedDict, UserDict...: rebuilt as their own type
            return type(batch)(items)
        except Exception:
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(apply_tensors(v, fn) for v in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(apply_tensors(v, fn) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {
            f.name: apply_tensors(getattr(batch, f.name), fn)
            for f in dataclasses.fields(batch)
            if f.init
        }
        return dataclasses.replace(batch, **changes)
    return batch


def first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor of ``batch`` in its own order (depth first), or None."""
    found: list[torch.Tensor] = []

    def grab(t: torch.Tensor) -> torch.Tensor:
        if not found:
            found.append(t)
        return t

    apply_tensors(batch, grab)
    return found[0] if found else None


def batch_size(batch: Any) -> int:
    """The leading dimension of the first tensor of ``batch``."""
    t = first_tensor(batch)
    if t is None or t.dim() == 0:
        raise EdgeTrainError(
            f"a batch must hold a tensor with a batch dimension, got {type(batch).__name__}"
        )
    return int(t.shape[0])


def move_batch(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """``batch`` on ``device``; floating tensors in ``float_dtype`` (integers keep theirs)."""
    non_blocking = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        if float_dtype is not None and t.is_floating_point() and t.dtype != float_dtype:
            return t.to(device, float_dtype, non_blocking=non_blocking)
        return t.to(device, non_blocking=non_blocking)

    return apply_tensors(batch, move)


def slice_batch(batch: Any, lo: int, hi: int, size: int | None = None) -> Any:
    """Samples ``lo:hi`` of ``batch``: tensors whose leading dimension is the batch size."""
    n = batch_size(batch) if size is None else size

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[lo:hi] if t.dim() > 0 and t.shape[0] == n else t

    return apply_tensors(batch, cut)


def sample_batch(
    data: Dataset | DataLoader,
    size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    *,
    repeat: bool = True,
) -> Any:
    """One batch of the first ``size`` samples of ``data``, collated as training collates
    them (a DataLoader's own ``collate_fn``, else ``collate_fn`` or ``default_collate``),
    on the CPU. With ``repeat`` a shorter data set is cycled; without, the batch is cut.
    The budget controller's probes and the sparse-update probe use it.

    Raises:
        EdgeTrainError: no samples, no length, or a DataLoader that does not batch.
    """
    if isinstance(data, DataLoader):
        if data.batch_size is None and data.batch_sampler is None:
            raise EdgeTrainError(
                "cannot build a probe batch from a DataLoader without automatic batching "
                "(batch_size=None): pass the Dataset, or a DataLoader with a batch_size"
            )
        dataset, collate = data.dataset, data.collate_fn
    else:
        dataset, collate = data, collate_fn
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise EdgeTrainError(
            f"probe data must have a length (a map-style Dataset), got {type(dataset).__name__}"
        ) from None
    n = int(size) if repeat else min(int(size), total)
    if n < 1 or total < 1:
        raise EdgeTrainError("the probe set needs at least one sample; the data set is empty")
    return (collate or default_collate)([dataset[i % total] for i in range(n)])
