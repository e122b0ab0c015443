"""Batch augmentation, applied on the device to a whole logical batch.

Randomness comes from a generator seeded by (seed, epoch, step), so an epoch replays
exactly after a resume, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["MixedBatch", "augment_batch", "augment_generator"]

_CROP_PAD = 4  # pixels of padding for random crops (as in CIFAR training), at most H/8


@dataclass(frozen=True)
class MixedBatch:
    """Inputs with two label sets mixed at ratio ``lam`` (mixup, cutmix)."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float


def augment_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator for one batch, independent of everything but (seed, epoch, step)."""
    # modulo 2**64, torch's seed range: unchanged for seeds below about 1.8e7, safe above
    mixed = ((int(seed) * 1_000_003 + epoch) * 1_000_033 + step) % 2**64
    return torch.Generator().manual_seed(mixed)


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    if flip.any():
        x = x.clone()
        idx = flip.nonzero().squeeze(1).to(x.device)
        x[idx] = x[idx].flip(-1)
    return x


def _crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    pad = max(1, min(_CROP_PAD, h // 8))
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def _mix_lambda(alpha: float, gen: torch.Generator) -> float:
    # Beta(alpha, alpha) from two Gamma draws, with our generator (torch.distributions has none)
    a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=gen)
    return float(a[0] / a.sum())


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, method: str, gen: torch.Generator, mix_alpha: float = 0.2
) -> torch.Tensor | MixedBatch:
    """Augment one logical batch. Returns the new inputs, or a :class:`MixedBatch`."""
    if method == "none" or x.dim() != 4:
        return x
    if method in ("flip", "flip_crop"):
        x = _flip(x, gen)
    if method in ("crop", "flip_crop"):
        x = _crop(x, gen)
    if method in ("flip", "crop", "flip_crop"):
        return x
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    lam = _mix_lambda(mix_alpha, gen)
    if method == "mixup":
        return MixedBatch(lam * x + (1 - lam) * x[perm], y, y[perm], lam)
    if method == "cutmix":
        _, _, h, w = x.shape
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = int(torch.randint(0, h, (1,), generator=gen))
        cx = int(torch.randint(0, w, (1,), generator=gen))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        return MixedBatch(x, y, y[perm], lam)
    raise ValueError(f"unknown augmentation {method!r}")
