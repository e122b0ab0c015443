"""``pycorpus``: a byte-level language-modelling corpus that exists on every machine.

The text is the Python standard library's own source: the ``.py`` files under the
directory of ``os.py`` (``site-packages``, ``dist-packages`` and ``__pycache__`` left
out), read in sorted path order and joined, up to ``max_bytes``. Bytes are the tokens
(vocabulary 256). The stream is cut into consecutive, non-overlapping windows of
``seq_len`` bytes; the target of each position is the next byte. Nothing is
downloaded or cached: the same Python installation always gives the same corpus.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from edgetrain.errors import EdgeTrainError
from edgetrain.zoo.base import DataInfo, TensorPairDataset
from edgetrain.zoo.sources import check_not_image

__all__ = ["VOCAB_SIZE", "load_pycorpus", "stdlib_files"]

logger = logging.getLogger(__name__)

VOCAB_SIZE = 256
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, in sorted order of their relative paths."""
    root = Path(os.__file__).resolve().parent
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files if f.endswith(".py")]
    return [root / name for name in sorted(found)]


def _read(budget: int) -> tuple[bytes, int]:
    """The first ``budget`` bytes of the joined files, and how many files were read."""
    parts: list[bytes] = []
    total = files = 0
    for path in stdlib_files():
        if total >= budget:
            break
        try:
            data = path.read_bytes()
        except OSError:  # an unreadable file is skipped, as if it were not there
            continue
        parts.append(data[: budget - total])
        total += len(parts[-1])
        files += 1
    return b"".join(parts), files


def _positive_int(option: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EdgeTrainError(
            f"pycorpus option {option} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def load_pycorpus(
    *,
    data_path: Any,
    image_size: int | None,
    channels: int | None,
    seed: int,
    max_bytes: int = 2_000_000,
    seq_len: int = 128,
) -> tuple[TensorPairDataset, DataInfo]:
    """Byte-level next-token prediction on the standard library's source (see the module).

    Items ``(x int64 [seq_len], y int64 [seq_len])`` with ``y[t]`` the byte after
    ``x[t]``; ``(len - 1) // seq_len`` windows from at most ``max_bytes`` bytes. Task
    ``language_modeling``; ``DataInfo`` has ``num_classes=256`` (the vocabulary),
    ``in_channels=1`` and ``input_size=(1, seq_len)``. ``data_path`` and ``seed`` are
    not used.
    """
    check_not_image("pycorpus", image_size, channels)
    seq_len = _positive_int("seq_len", seq_len)
    max_bytes = _positive_int("max_bytes", max_bytes, seq_len + 1)
    text, files = _read(max_bytes)
    count = (len(text) - 1) // seq_len
    if count < 1:
        raise EdgeTrainError(
            f"pycorpus needs more than seq_len={seq_len} bytes of standard-library source, "
            f"found {len(text)} under {Path(os.__file__).parent}"
        )
    stream = torch.frombuffer(bytearray(text[: count * seq_len + 1]), dtype=torch.uint8).long()
    # x and y are views of one stream, shifted by one byte: no copy
    x = stream[:-1].view(count, seq_len)
    y = stream[1:].view(count, seq_len)
    info = DataInfo(
        name="pycorpus",
        num_classes=VOCAB_SIZE,
        in_channels=1,
        input_size=(1, seq_len),
        num_samples=count,
        task="language_modeling",
    )
    logger.info(
        "loaded pycorpus: %d windows of %d bytes from %d files (%d bytes)",
        count,
        seq_len,
        files,
        len(text),
    )
    return TensorPairDataset(x, y), info
