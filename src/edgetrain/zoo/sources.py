"""The built-in in-memory data sets: digits, synthetic, cifar10 and diabetes.

Value scales: digits and cifar10 are in [0, 1]; synthetic is zero-mean with
unit-variance noise (not bounded); diabetes features are scikit-learn's (centred,
each with unit norm), its targets standardised (``standardize_target: false``: raw 25..346).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgetrain.errors import EdgeTrainError
from edgetrain.zoo._image import convert_channels, resize
from edgetrain.zoo.base import DataInfo, InMemoryDataset, TensorPairDataset

__all__ = [
    "check_classes",
    "check_not_image",
    "load_cifar10",
    "load_diabetes",
    "load_digits",
    "load_synthetic",
]

logger = logging.getLogger(__name__)

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Synthetic signal amplitude at 3x32x32; scaled by sqrt(3072 / pixels) for other shapes
# so the task is about as hard at every shape. Tuned so the cnn is far above chance
# after one epoch at noise=1 but needs a few epochs to reach ~90%.
_SYNTHETIC_SIGNAL = 0.08
_SYNTHETIC_GRID = 4  # class patterns are random 4x4 grids, upsampled: smooth images


def check_classes(dataset: str, classes: Any, num_classes: int) -> list[int] | None:
    """Validate a ``classes`` option: distinct ints in 0..num_classes-1, or None."""
    if classes is None:
        return None
    ok = isinstance(classes, list | tuple) and len(classes) > 0
    ok = ok and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    ok = ok and len(set(classes)) == len(classes)
    ok = ok and all(0 <= c < num_classes for c in classes)
    if not ok:
        raise EdgeTrainError(
            f"{dataset} option classes must be a list of distinct integers in 0..{num_classes - 1}, "
            f"got {classes!r}"
        )
    return list(classes)


def check_not_image(dataset: str, image_size: int | None, channels: int | None) -> None:
    """Reject ``image_size``/``channels`` for a data set whose items are not images."""
    for option, value in (("image_size", image_size), ("channels", channels)):
        if value is not None:
            raise EdgeTrainError(
                f"data set '{dataset}' is not images, so {option} must not be set, got {value!r}"
            )


def _select(
    x: torch.Tensor, y: torch.Tensor, classes: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep samples of ``classes`` and relabel them 0..k-1 in the order given."""
    if classes is None:
        return x, y
    remap = torch.full((max(int(y.max()) if len(y) else 0, *classes) + 1,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    new_y = remap[y]
    keep = new_y >= 0
    return x[keep], new_y[keep]


def _finish(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    image_size: int | None,
    channels: int | None,
    class_names: Sequence[str],
) -> tuple[InMemoryDataset, DataInfo]:
    """Convert channels, resize once, and describe the result."""
    x = convert_channels(x, channels)
    x = resize(x, (image_size, image_size) if image_size else None).contiguous()
    dataset = InMemoryDataset(x, y, class_names)
    info = DataInfo(
        name=name,
        num_classes=num_classes,
        in_channels=x.shape[1],
        input_size=(x.shape[2], x.shape[3]),
        num_samples=len(y),
    )
    logger.info(
        "loaded %s: %d samples of %s, %d classes", name, len(y), tuple(x.shape[1:]), num_classes
    )
    return dataset, info


def load_digits(
    *,
    data_path: Any,
    image_size: int | None,
    channels: int | None,
    seed: int,
    classes: list[int] | None = None,
) -> tuple[InMemoryDataset, DataInfo]:
    """The 8x8 handwritten digits bundled with scikit-learn (1797 samples, 10 classes).

    Values are scaled from 0..16 to [0, 1]. ``classes`` keeps a subset, relabelled
    0..k-1 in the order given. Order is the file's; ``seed`` is not used.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    chosen = check_classes("digits", classes, 10)
    bunch = sklearn_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    x, y = _select(x, y, chosen)
    names = [str(c) for c in (chosen if chosen is not None else range(10))]
    return _finish(
        "digits",
        x,
        y,
        num_classes=len(names),
        image_size=image_size,
        channels=channels,
        class_names=names,
    )


def load_synthetic(
    *,
    data_path: Any,
    image_size: int | None,
    channels: int | None,
    seed: int,
    num_samples: int = 2048,
    num_classes: int = 10,
    noise: float = 1.0,
    classes: list[int] | None = None,
) -> tuple[InMemoryDataset, DataInfo]:
    """Generated images: one fixed smooth random pattern per class plus Gaussian noise.

    Each sample is ``gain * amplitude * pattern[label] + noise * N(0, 1)`` with a
    random gain in [0.5, 1.5] and labels drawn uniformly. Class patterns depend only
    on ``seed``, ``num_classes``, the size and the channels, so subsets chosen with
    ``classes`` share them. Default shape 3x32x32.
    """
    for option, value in (("num_samples", num_samples), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EdgeTrainError(
                f"synthetic option {option} must be an integer >= 1, got {value!r}"
            )
    if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
        raise EdgeTrainError(f"synthetic option noise must be a number >= 0, got {noise!r}")
    chosen = check_classes("synthetic", classes, num_classes)
    keep = torch.tensor(chosen if chosen is not None else range(num_classes), dtype=torch.int64)
    size = image_size or 32
    depth = channels or 3

    generator = torch.Generator().manual_seed(seed)
    grid = min(_SYNTHETIC_GRID, size)
    coarse = torch.randn(num_classes, depth, grid, grid, generator=generator)
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    amplitude = _SYNTHETIC_SIGNAL * math.sqrt(3 * 32 * 32 / (depth * size * size))

    y = torch.randint(len(keep), (num_samples,), generator=generator)
    gain = 0.5 + torch.rand(num_samples, 1, 1, 1, generator=generator)
    x = torch.randn(num_samples, depth, size, size, generator=generator).mul_(float(noise))
    x += (amplitude * gain) * patterns[keep[y]]
    names = [str(int(c)) for c in keep]
    return _finish(
        "synthetic", x, y, num_classes=len(keep), image_size=None, channels=None, class_names=names
    )


def _cifar_dir(data_path: Any) -> Path:
    expected = (
        f"cifar10 needs data_path pointing to the '{CIFAR10_DIR}' directory "
        "(data_batch_1..5, test_batch from the CIFAR-10 python version)"
    )
    if data_path is None:
        raise EdgeTrainError(f"{expected}; no data_path was given")
    root = Path(data_path).expanduser()
    for candidate in (root, root / CIFAR10_DIR):
        if all((candidate / f).is_file() for f in CIFAR10_FILES):
            return candidate
    if not root.exists():
        raise EdgeTrainError(f"{expected}; not found: {root}")
    where = root / CIFAR10_DIR if (root / CIFAR10_DIR).is_dir() else root
    missing = [f for f in CIFAR10_FILES if not (where / f).is_file()]
    raise EdgeTrainError(f"{expected}; not found in {where}: {', '.join(missing)}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            # the official format is a pickle; only load files you trust
            batch = pickle.load(f, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        data = np.asarray(data, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64)
    except Exception as exc:
        raise EdgeTrainError(
            f"could not read CIFAR-10 batch {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise EdgeTrainError(
            f"CIFAR-10 batch {path} must hold b'data' uint8 [N, 3072] and N b'labels', "
            f"got data {data.shape} and labels {labels.shape}"
        )
    return data, labels


def load_cifar10(
    *,
    data_path: Any,
    image_size: int | None,
    channels: int | None,
    seed: int,
    classes: list[int] | None = None,
) -> tuple[InMemoryDataset, DataInfo]:
    """CIFAR-10 from the python-version pickles: the 5 training batches then the test batch.

    Values in [0, 1], 3x32x32. The caller splits train/validation. ``seed`` is not used.
    """
    chosen = check_classes("cifar10", classes, 10)
    folder = _cifar_dir(data_path)
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_FILES]
    y = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise EdgeTrainError(
            f"CIFAR-10 labels in {folder} must be in 0..9, got {int(y.min())}..{int(y.max())}"
        )
    raw = torch.from_numpy(np.concatenate([data for data, _ in parts])).view(-1, 3, 32, 32)
    del parts
    raw, y = _select(raw, y, chosen)
    x = raw.to(torch.float32).div_(255.0)
    del raw
    names = [CIFAR10_CLASSES[c] for c in (chosen if chosen is not None else range(10))]
    return _finish(
        "cifar10",
        x,
        y,
        num_classes=len(names),
        image_size=image_size,
        channels=channels,
        class_names=names,
    )


def load_diabetes(
    *,
    data_path: Any,
    image_size: int | None,
    channels: int | None,
    seed: int,
    standardize_target: bool = True,
) -> tuple[TensorPairDataset, DataInfo]:
    """The diabetes regression set bundled with scikit-learn (442 patients, 10 features).

    Items ``(x float32 [10], y float32 scalar)``: x as scikit-learn scales it
    (each feature centred, with unit norm over the 442 samples), y the disease
    progression one year later, standardised to zero mean and unit variance (errors and
    losses are in standard deviations, 77.0 of the raw target; the raw 25..346 with
    ``standardize_target=False``, which needs a small learning rate). Task ``regression``; ``DataInfo`` has
    ``num_classes=1`` (one output), ``in_channels=10`` (features) and
    ``input_size=(1, 1)``. Order is the file's; ``seed`` is not used.
    """
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    check_not_image("diabetes", image_size, channels)
    if not isinstance(standardize_target, bool):
        raise EdgeTrainError(
            f"diabetes option standardize_target must be true or false, got {standardize_target!r}"
        )
    bunch = sklearn_diabetes()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32))
    target = np.asarray(bunch.target, dtype=np.float64)
    if standardize_target:
        target = (target - target.mean()) / target.std()
    y = torch.from_numpy(target.astype(np.float32))
    info = DataInfo(
        name="diabetes",
        num_classes=1,
        in_channels=x.shape[1],
        input_size=(1, 1),
        num_samples=len(y),
        task="regression",
    )
    logger.info("loaded diabetes: %d samples of %d features", len(y), x.shape[1])
    return TensorPairDataset(x.contiguous(), y), info
