"""Write a data set to disk, one file per sample, in the layout the ``folder`` data set reads.

``DIR/<class>/<index>.npy`` (float32 [C, H, W], read back exactly) or ``.png`` (8-bit).
Class folders are named by the zero-padded label (``00``, ``01``, ... plus ``_name`` when
the class has a name of its own), so their sorted order is the label order and the
folder data set gives every sample its original label. File names are the sample's index
in the source data set. ``DIR/export.json`` records what was written.

PNG needs values in [0, 1]. Data already in [0, 1] (digits, cifar10) are written as
``round(255 * x)``, within 1/255 of the original. Other data (synthetic is zero-mean and
unbounded) are mapped with one affine map for the whole data set,
``x01 = (x - lo) / (hi - lo)`` with ``lo``/``hi`` its minimum and maximum, recorded in
export.json (``x = lo + (hi - lo) * png / 255``). Reading the PNGs back gives ``x01``;
training standardises its input, so the affine map does not change what is learned.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgetrain.errors import EdgeTrainError
from edgetrain.safefs import atomic_write_text, claim_dir, dumps_strict

__all__ = ["FORMATS", "MANIFEST", "ExportResult", "export_dataset", "export_samples"]

log = logging.getLogger(__name__)

FORMATS = ("npy", "png")
MANIFEST = "export.json"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote (or found already written).

    Attributes:
        root: the directory (one subfolder per class).
        format: ``npy`` or ``png``.
        files: number of sample files.
        classes: the class folder names written, in label order (a class without samples
            gets no folder).
        png_range: (lo, hi) mapped to [0, 1] for PNG, or None.
        reused: True when an identical export was already there.
    """

    root: Path
    format: str
    files: int
    classes: tuple[str, ...]
    png_range: tuple[float, float] | None = None
    reused: bool = False


def _folder_names(dataset: Dataset[Any], num_classes: int) -> list[str]:
    width = len(str(max(0, num_classes - 1)))
    names = list(getattr(dataset, "classes", []) or [])
    out = []
    for label in range(num_classes):
        name = str(names[label]) if label < len(names) else str(label)
        folder = f"{label:0{width}d}"
        if name != str(label):
            folder += "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")
        out.append(folder)
    return out


def _tensor_items(dataset: Dataset[Any], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = getattr(dataset, "x", None)
    y = getattr(dataset, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x[:count], y[:count]
    pairs = [dataset[i] for i in range(count)]
    return (
        torch.stack([torch.as_tensor(p[0]).float() for p in pairs]),
        torch.stack([torch.as_tensor(p[1]).long() for p in pairs]),
    )


def _png_range(x: torch.Tensor) -> tuple[float, float]:
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return lo, hi if hi > lo else lo + 1.0


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    if image.shape[0] == 1:
        Image.fromarray(np.ascontiguousarray(image[0])).save(path)  # uint8 [H, W]: mode L
    else:
        Image.fromarray(np.ascontiguousarray(image[:3].transpose(1, 2, 0))).save(path)  # RGB


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _prepare_dir(
    root: Path, spec: dict[str, Any], *, overwrite: bool, reuse: bool
) -> ExportResult | None:
    """An identical earlier export to reuse, or None after making ``root`` ready."""
    if root.exists() and not root.is_dir():
        raise EdgeTrainError(f"export target {root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        manifest = _read_manifest(root)
        if reuse and manifest is not None and manifest.get("spec") == spec:
            return ExportResult(
                root=root,
                format=manifest["format"],
                files=int(manifest["files"]),
                classes=tuple(manifest["classes"]),
                png_range=tuple(manifest["png_range"]) if manifest.get("png_range") else None,
                reused=True,
            )
        if not overwrite:
            raise EdgeTrainError(
                f"export target {root} is not empty and holds no identical export; "
                "choose another directory or use --overwrite"
            )
    # only a directory edgetrain marked as an export is ever cleared (docs/design.md)
    claim_dir(root, "export", overwrite=overwrite, what="export target")
    return None


def export_samples(
    dataset: Dataset[Any],
    num_classes: int,
    to: str | Path,
    *,
    fmt: str = "npy",
    count: int | None = None,
    spec: dict[str, Any] | None = None,
    overwrite: bool = False,
    reuse: bool = True,
) -> ExportResult:
    """Write the first ``count`` samples of ``dataset`` (items ``(x [C, H, W], y)``).

    Args:
        dataset: any map-style data set; in-memory ones (``.x``/``.y``) are written in bulk.
        num_classes: labels are 0..num_classes-1.
        to: target directory (created; must be empty unless it holds the same export).
        fmt: ``npy`` (exact float32) or ``png`` (8-bit; see the module docstring).
        count: how many samples (default all).
        spec: what identifies this export (an identical one already in ``to`` is reused).
        overwrite: replace whatever ``to`` holds (unless it is reused).
        reuse: keep an identical earlier export in ``to`` instead of writing again.

    Raises:
        EdgeTrainError: unknown format, bad count, target not empty, images with a
            channel count PNG cannot hold.
    """
    if fmt not in FORMATS:
        raise EdgeTrainError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    total = len(dataset)  # type: ignore[arg-type]
    if count is not None and (isinstance(count, bool) or not 1 <= count <= total):
        raise EdgeTrainError(
            f"count must be between 1 and {total} (the data set's size), got {count}"
        )
    count = total if count is None else count
    root = Path(to).expanduser()
    # through JSON so that it compares equal to the manifest read back (tuples -> lists)
    spec = json.loads(json.dumps({**(spec or {}), "format": fmt, "count": count}, default=str))
    reused = _prepare_dir(root, spec, overwrite=overwrite, reuse=reuse)
    if reused is not None:
        log.info("reusing the export in %s", root)
        return reused
    x, y = _tensor_items(dataset, count)
    if fmt == "png" and x.shape[1] not in (1, 3):
        raise EdgeTrainError(f"png holds 1 or 3 channels, the data have {x.shape[1]}; use npy")
    folders = _folder_names(dataset, num_classes)
    labels = y.tolist()
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise EdgeTrainError(f"a sample has label {bad[0]}, outside 0..{num_classes - 1}")
    present = sorted(set(labels))
    if len(present) < num_classes:
        # the folder data set needs a file in every class folder: absent classes get none,
        # and the labels after them move down by one for each (the manifest says which)
        log.warning("exporting %d samples: %d classes have none", count, num_classes - len(present))
    for label in present:
        (root / folders[label]).mkdir(exist_ok=True)
    width = len(str(max(0, count - 1)))
    png_range = _png_range(x) if fmt == "png" else None
    if png_range is not None:
        lo, hi = png_range
        pixels = ((x - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    for i, label in enumerate(labels):
        path = root / folders[label] / f"{i:0{width}d}.{fmt}"
        if png_range is None:
            np.save(path, x[i].numpy().astype(np.float32, copy=False), allow_pickle=False)
        else:
            _write_png(path, pixels[i].numpy())
    manifest = {
        "spec": spec,
        "format": fmt,
        "files": count,
        "classes": [folders[label] for label in present],
        "missing_classes": [folders[label] for label in range(num_classes) if label not in present],
        "shape": list(x.shape[1:]),
        "png_range": list(png_range) if png_range else None,
        "png_mapping": "x = lo + (hi - lo) * png / 255" if png_range else None,
    }
    atomic_write_text(root / MANIFEST, dumps_strict(manifest))
    log.info("exported %d samples to %s as %s", count, root, fmt)
    return ExportResult(root, fmt, count, tuple(folders[label] for label in present), png_range)


def export_dataset(
    name: str,
    to: str | Path,
    *,
    fmt: str = "npy",
    image_size: int | None = None,
    channels: int | None = None,
    count: int | None = None,
    seed: int = 0,
    data_path: str | Path | None = None,
    overwrite: bool = False,
    reuse: bool = True,
    **options: Any,
) -> ExportResult:
    """Load a data set by name (see :func:`edgetrain.zoo.load_dataset`) and export it.

    For ``synthetic``, ``count`` is the number of samples generated; for the others it
    keeps the first ``count``.
    """
    from edgetrain.zoo import load_dataset

    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise EdgeTrainError(f"count must be an integer >= 1, got {count!r}")
    if name.lower() == "synthetic" and count is not None:
        options.setdefault("num_samples", count)
    dataset, info = load_dataset(
        name, data_path=data_path, image_size=image_size, channels=channels, seed=seed, **options
    )
    if info.task != "classification":
        raise EdgeTrainError(
            f"data set '{name}' is for {info.task}; export writes image classification data "
            "(one folder per class), so it takes digits, synthetic, cifar10 or folder data"
        )
    spec = {
        "data": name,
        "data_path": str(data_path) if data_path is not None else None,
        "image_size": image_size,
        "channels": channels,
        "seed": seed,
        "data_args": options,
    }
    return export_samples(
        dataset,
        info.num_classes,
        to,
        fmt=fmt,
        count=count,
        spec=spec,
        overwrite=overwrite,
        reuse=reuse,
    )
