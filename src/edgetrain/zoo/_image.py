"""Resizing and channel conversion shared by all data sets."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from edgetrain.errors import EdgeTrainError

__all__ = ["check_channels", "check_image_size", "convert_channels", "resize"]

_RESIZE_CHUNK = 4096  # images per interpolate call, to bound temporary memory


def check_image_size(image_size: Any) -> int | None:
    """Validate ``image_size`` (None or an integer >= 1)."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise EdgeTrainError(f"image_size must be an integer >= 1, got {image_size!r}")
    return image_size


def check_channels(channels: Any) -> int | None:
    """Validate ``channels`` (None, 1 or 3)."""
    if channels is None:
        return None
    if isinstance(channels, bool) or channels not in (1, 3):
        raise EdgeTrainError(f"channels must be 1 or 3, got {channels!r}")
    return int(channels)


def convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert [..., C, H, W] to ``channels``: 1 -> 3 repeats, 3 -> 1 averages.

    A 4th (alpha) channel is dropped first. ``None`` keeps the native channels.
    """
    if x.shape[-3] == 4:
        x = x[..., :3, :, :]
    have = x.shape[-3]
    if channels is None or have == channels:
        return x
    if have == 1 and channels == 3:
        return x.repeat_interleave(3, dim=-3)
    if have == 3 and channels == 1:
        return x.mean(dim=-3, keepdim=True)
    raise EdgeTrainError(
        f"cannot convert images with {have} channels to {channels}; only 1 -> 3 and 3 -> 1 are supported"
    )


def resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Resize [C, H, W] or [N, C, H, W] to ``size`` (bilinear, antialiased); None keeps it."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 3:
        return _interpolate(x.unsqueeze(0), size).squeeze(0)
    chunks = [_interpolate(part, size) for part in x.split(_RESIZE_CHUNK)]
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def _interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
