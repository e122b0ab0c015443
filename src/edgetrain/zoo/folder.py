"""A lazy data set over a directory with one subfolder per class.

Files are read in ``__getitem__`` (real I/O on every access, for data-loading
studies). Readable files:

- ``.png .jpg .jpeg .bmp``: 8-bit images scaled to [0, 1] (16-bit grayscale by
  1/65535); grayscale gives 1 channel, anything else is converted to RGB (alpha
  dropped).
- ``.npy``: a 2-D array is [H, W] (1 channel); a 3-D array is [C, H, W] when its
  first dimension is 1, 3 or 4, otherwise [H, W, C] when its last one is. uint8
  arrays are scaled to [0, 1]; other dtypes are kept as they are (float32). A 4th
  channel is dropped as alpha.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.zoo._callables import one_line
from edgetrain.zoo._image import convert_channels, resize
from edgetrain.zoo.base import DataInfo

__all__ = ["FILE_SUFFIXES", "FolderDataset", "load_folder", "read_image_file"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FILE_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
_CHANNEL_COUNTS = (1, 3, 4)


def _read_picture(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow comes with matplotlib, a core dependency
        raise EdgeTrainError(
            f"reading {path.suffix} files needs the 'Pillow' package: pip install pillow"
        ) from exc
    with Image.open(path) as image:
        if image.mode in ("1", "L", "LA"):
            return np.asarray(image.convert("L"), dtype=np.float32)[None] / 255.0
        if image.mode.startswith("I"):  # 16/32-bit integer grayscale
            return np.asarray(image, dtype=np.float32)[None] / 65535.0
        if image.mode == "F":
            return np.asarray(image, dtype=np.float32)[None]
        return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def _read_array(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in _CHANNEL_COUNTS:
        if array.shape[-1] not in _CHANNEL_COUNTS:
            raise ValueError(
                f"a 3-D array must be [C, H, W] or [H, W, C] with C in 1, 3, 4, got shape {array.shape}"
            )
        array = array.transpose(2, 0, 1)
    elif array.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def read_image_file(path: Path) -> torch.Tensor:
    """Read one image or .npy file as float32 [C, H, W] (C is 1 or 3).

    Raises:
        EdgeTrainError: if the file cannot be read or has an unsupported layout.
    """
    try:
        array = _read_array(path) if path.suffix.lower() == ".npy" else _read_picture(path)
    except EdgeTrainError:
        raise
    except Exception as exc:  # corrupt, truncated or unreadable file
        raise EdgeTrainError(f"could not read {path}: {one_line(exc)}") from exc
    return convert_channels(torch.from_numpy(np.ascontiguousarray(array)), None)


class FolderDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Items ``(x [C, H, W], y)`` read lazily from ``root/<class name>/<file>``.

    Classes are the sorted subfolder names (hidden ones skipped), labels 0..k-1 in
    that order, or in the order of ``classes`` if given. Files are found recursively
    and sorted. Every item is converted to ``channels`` and resized to
    ``image_size``; either one, when None, comes from the first file (which is then
    read once here).

    Attributes:
        root: the directory.
        classes: class (subfolder) names, one per label.
        files: every file, in item order.
        targets: the label of every file.
        channels: channels of every item.
        size: (H, W) of every item.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int | None = None,
        channels: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            what = "not a directory" if self.root.exists() else "not found"
            raise EdgeTrainError(
                f"folder data set needs data_path pointing to a directory with one subfolder "
                f"per class; {what}: {self.root}"
            )
        found = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not found:
            raise EdgeTrainError(
                f"folder data set needs one subfolder per class in {self.root}; found no subfolders"
            )
        self.classes = self._choose(found, classes)
        self.files: list[Path] = []
        self.targets: list[int] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            members = sorted(
                p
                for p in folder.rglob("*")
                if p.is_file()
                and p.suffix.lower() in FILE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            )
            if not members:
                raise EdgeTrainError(
                    f"class folder {folder} has no {', '.join(FILE_SUFFIXES)} files"
                )
            self.files += members
            self.targets += [label] * len(members)
        if image_size is None or channels is None:
            first = read_image_file(self.files[0])  # one read, to learn the native shape
            channels = channels or int(first.shape[0])
            native = (int(first.shape[1]), int(first.shape[2]))
        self.channels: int = channels
        self.size: tuple[int, int] = (image_size, image_size) if image_size else native

    def _choose(self, found: list[str], classes: Sequence[str] | None) -> list[str]:
        if classes is None:
            return found
        if (
            not isinstance(classes, list | tuple)
            or not classes
            or len(set(classes)) != len(classes)
        ):
            raise EdgeTrainError(
                f"folder option classes must be a list of distinct subfolder names, got {classes!r}"
            )
        for name in classes:
            if name not in found:
                raise EdgeTrainError(
                    f"folder option classes: no subfolder '{name}' in {self.root}; "
                    f"found: {', '.join(found)}{suggest(str(name), found)}"
                )
        return list(classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = read_image_file(self.files[index])
        x = resize(convert_channels(x, self.channels), self.size).contiguous()
        return x, torch.tensor(self.targets[index], dtype=torch.int64)


def load_folder(
    *,
    data_path: Any,
    image_size: int | None,
    channels: int | None,
    seed: int,
    classes: list[str] | None = None,
) -> tuple[FolderDataset, DataInfo]:
    """Image or .npy files in one subfolder per class, read lazily. ``seed`` is not used."""
    if data_path is None:
        raise EdgeTrainError(
            "folder data set needs data_path pointing to a directory with one subfolder per class"
        )
    dataset = FolderDataset(data_path, image_size=image_size, channels=channels, classes=classes)
    info = DataInfo(
        name="folder",
        num_classes=len(dataset.classes),
        in_channels=dataset.channels,
        input_size=dataset.size,
        num_samples=len(dataset),
        files=tuple(dataset.files),
    )
    logger.info(
        "folder %s: %d files, %d classes, items %d x %s",
        dataset.root,
        len(dataset),
        info.num_classes,
        info.in_channels,
        info.input_size,
    )
    return dataset, info
