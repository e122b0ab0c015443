"""Load a data set by name: a built-in offline one or the user's own by import path.

Built-ins (all offline). Images, task classification: ``digits`` (scikit-learn's 8x8
digits, [0, 1]), ``synthetic`` (generated, zero-mean), ``cifar10`` (the python-version
pickles at ``data_path``, [0, 1]) and ``folder`` (one subfolder per class, read lazily).
Others: ``diabetes`` (scikit-learn's tabular regression set, x float32 [10], y float32)
and ``pycorpus`` (bytes of the Python standard library's source for language modelling,
x and y int64 [seq_len]). ``DataInfo.task`` says which task each is trained with.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.zoo._callables import (
    accepted_keywords,
    call_user,
    is_import_path,
    load_callable,
    one_line,
)
from edgetrain.zoo._image import check_channels, check_image_size, convert_channels, resize
from edgetrain.zoo.base import DataInfo, InMemoryDataset, TensorPairDataset
from edgetrain.zoo.corpus import load_pycorpus
from edgetrain.zoo.folder import load_folder
from edgetrain.zoo.sources import load_cifar10, load_diabetes, load_digits, load_synthetic

__all__ = [
    "DATASETS",
    "DataInfo",
    "InMemoryDataset",
    "TensorPairDataset",
    "dataset_options",
    "load_dataset",
]

logger = logging.getLogger(__name__)

_COMMON = ("data_path", "image_size", "channels", "seed")

DATASETS: dict[str, Callable[..., tuple[Dataset[Any], DataInfo]]] = {
    "cifar10": load_cifar10,
    "diabetes": load_diabetes,
    "digits": load_digits,
    "folder": load_folder,
    "pycorpus": load_pycorpus,
    "synthetic": load_synthetic,
}
"""Built-in data sets: name -> loader(data_path=, image_size=, channels=, seed=, **options)."""


def dataset_options(name: str) -> tuple[str, ...]:
    """The extra options a built-in data set accepts."""
    names, _ = accepted_keywords(DATASETS[name])
    return tuple(n for n in names if n not in _COMMON)


def load_dataset(
    name: str,
    *,
    data_path: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    **options: Any,
) -> tuple[Dataset[Any], DataInfo]:
    """Load a data set: items ``(x: float32 [C, H, W], y: int64 scalar)`` for images,
    other shapes for non-image data sets (diabetes, pycorpus; see ``DataInfo``).

    Args:
        name: a built-in name (see ``DATASETS``, case-insensitive) or
            'package.module:callable' for the user's own loader. A user loader of
            images may return the data set alone; one of other data (x not
            [C, H, W]) returns ``(dataset, DataInfo)``, and its items are passed on
            unchanged.
        data_path: where the files are (cifar10, folder, user loaders).
        image_size: resize to image_size x image_size (bilinear, antialiased); None
            keeps the native size. Images only.
        channels: 1 or 3 (1 -> 3 repeats, 3 -> 1 averages); None keeps the native ones.
            Images only.
        seed: makes generated data reproducible.
        **options: data set options, e.g. ``classes`` (a subset, relabelled 0..k-1
            in the order given), ``num_samples``, ``num_classes``, ``noise``,
            ``standardize_target`` (diabetes), ``max_bytes``, ``seq_len`` (pycorpus).

    Returns:
        The data set (an ``InMemoryDataset`` for digits, synthetic and cifar10, a
        ``TensorPairDataset`` for diabetes and pycorpus) and its ``DataInfo``.

    Raises:
        EdgeTrainError: unknown data set or option, bad value, missing files, or user
            code that cannot be imported, fails, or returns something else.
    """
    image_size = check_image_size(image_size)
    channels = check_channels(channels)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EdgeTrainError(f"seed must be an integer, got {seed!r}")
    if not isinstance(name, str) or not name:
        raise EdgeTrainError(f"data set must be a non-empty name, got {name!r}")
    if is_import_path(name):
        return _load_user(name, data_path, image_size, channels, seed, options)
    key = name.lower()
    if key not in DATASETS:
        raise EdgeTrainError(
            f"unknown data set '{name}'; choose one of: {', '.join(DATASETS)} "
            f"or give 'package.module:callable'{suggest(key, DATASETS)}"
        )
    accepted = dataset_options(key)
    for option in options:
        if option not in accepted:
            raise EdgeTrainError(
                f"data set '{key}' does not accept option '{option}'; "
                f"accepted options: {', '.join(accepted) or 'none'}{suggest(option, accepted)}"
            )
    return DATASETS[key](
        data_path=data_path, image_size=image_size, channels=channels, seed=seed, **options
    )


class _Converted(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Per-item channel conversion and resizing of another data set."""

    def __init__(
        self, base: Dataset[Any], channels: int | None, size: tuple[int, int] | None
    ) -> None:
        self.base = base
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        return resize(convert_channels(x, self.channels), self.size), y

    def __getattr__(self, name: str) -> Any:
        # targets, classes, files ... of the wrapped data set stay reachable
        if name in ("base", "edgetrain_bulk"):  # bulk reads would skip the conversion
            raise AttributeError(name)
        return getattr(self.base, name)


def _load_user(
    spec: str,
    data_path: str | Path | None,
    image_size: int | None,
    channels: int | None,
    seed: int,
    options: dict[str, Any],
) -> tuple[Dataset[Any], DataInfo]:
    loader = load_callable(spec, kind="data set")
    common: dict[str, Any] = {
        "data_path": data_path,
        "image_size": image_size,
        "channels": channels,
    }
    common = {k: v for k, v in common.items() if v is not None}  # keep the loader's own defaults
    common["seed"] = seed
    result = call_user(
        loader, spec=spec, kind="data set", common=common, options=options, reserved=_COMMON
    )
    info: DataInfo | None = None
    if isinstance(result, tuple):  # (Dataset, DataInfo), checked by call_user
        result, info = result
    dataset: Dataset[Any] = result
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise EdgeTrainError(f"data set '{spec}' is empty")
    if info is not None and image_size is None and channels is None:
        x = _first_x(spec, dataset)
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            # not images (tabular, token ids, dicts ...): the loader's DataInfo describes them
            logger.info("loaded %s: %d samples (%s)", spec, info.num_samples, info.task)
            return dataset, info
    dataset, shape = _conform(spec, dataset, image_size, channels)
    if info is None:
        info = DataInfo(
            name=spec,
            num_classes=_num_classes(spec, dataset),
            in_channels=shape[0],
            input_size=(shape[1], shape[2]),
            num_samples=len(dataset),  # type: ignore[arg-type]
            files=_files(dataset),
        )
    else:
        info = dataclasses.replace(info, in_channels=shape[0], input_size=(shape[1], shape[2]))
    logger.info(
        "loaded %s: %d samples of %s, %d classes", spec, info.num_samples, shape, info.num_classes
    )
    return dataset, info


def _first_x(spec: str, dataset: Dataset[Any]) -> Any:
    """x of item 0, or an error saying why it cannot be read."""
    try:
        item = dataset[0]
        x, _ = item
    except EdgeTrainError:
        raise
    except Exception as exc:
        raise EdgeTrainError(
            f"data set '{spec}': item 0 must be a pair (x, y), reading it failed: "
            f"{type(exc).__name__}: {one_line(exc)}"
        ) from exc
    return x


def _first_shape(spec: str, dataset: Dataset[Any]) -> tuple[int, int, int]:
    x = _first_x(spec, dataset)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        what = (
            f"a tensor of shape {tuple(x.shape)}"
            if isinstance(x, torch.Tensor)
            else type(x).__name__
        )
        raise EdgeTrainError(
            f"data set '{spec}': x of item 0 must be a tensor [C, H, W], got {what} "
            "(a loader of other data returns (dataset, DataInfo) and no image_size/channels)"
        )
    return (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))


def _conform(
    spec: str, dataset: Dataset[Any], image_size: int | None, channels: int | None
) -> tuple[Dataset[Any], tuple[int, int, int]]:
    """Apply image_size/channels the user loader did not apply itself."""
    c, h, w = _first_shape(spec, dataset)
    size = (image_size, image_size) if image_size and (h, w) != (image_size, image_size) else None
    convert = channels if channels and c != channels else None
    if size is None and convert is None:
        return dataset, (c, h, w)
    if isinstance(dataset, InMemoryDataset):
        x = resize(convert_channels(dataset.x, convert), size).contiguous()
        dataset = InMemoryDataset(x, dataset.y, dataset.classes)
    else:
        dataset = _Converted(dataset, convert, size)
    return dataset, _first_shape(spec, dataset)


def _num_classes(spec: str, dataset: Dataset[Any]) -> int:
    """From ``num_classes`` or ``classes`` if the data set has them, else the largest label + 1."""
    declared = getattr(dataset, "num_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 1:
        return declared
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
        return len(classes)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        logger.info("data set %s declares no classes; scanning all labels", spec)
        labels = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    try:
        largest = int(torch.as_tensor(labels).max())
    except Exception as exc:
        raise EdgeTrainError(
            f"data set '{spec}': labels must be integers, got {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    return largest + 1


def _files(dataset: Dataset[Any]) -> tuple[Path, ...]:
    files = getattr(dataset, "files", None)
    if isinstance(files, Sequence) and all(isinstance(f, str | Path) for f in files):
        return tuple(Path(f) for f in files)
    return ()
