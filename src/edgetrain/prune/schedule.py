"""The sparsity to hold in each epoch: constant, or gradual along a cubic curve."""

from __future__ import annotations

__all__ = ["target_sparsity"]


def target_sparsity(
    epoch: int,
    *,
    ratio: float,
    start_epoch: int = 0,
    schedule: str = "constant",
    end_epoch: int | None = None,
    epochs: int | None = None,
) -> float:
    """Sparsity for epoch ``epoch`` (0-based), after ``start_epoch`` dense epochs.

    ``constant``: ``ratio`` from ``start_epoch`` on. ``gradual``: Zhu and Gupta's cubic
    ramp ``ratio * (1 - (1 - p)^3)``, with ``p`` rising linearly from the first pruned
    epoch to 1 in epoch ``end_epoch - 1`` (default: ``epochs``, the last epoch).
    """
    if ratio <= 0 or epoch < start_epoch:
        return 0.0
    if schedule == "constant":
        return ratio
    if schedule != "gradual":
        raise ValueError(f"schedule must be constant or gradual, got {schedule!r}")
    end = end_epoch if end_epoch is not None else epochs
    if end is None:
        raise ValueError("the gradual schedule needs end_epoch or epochs")
    span = max(1, end - start_epoch)
    progress = min(1.0, (epoch - start_epoch + 1) / span)
    return ratio * (1 - (1 - progress) ** 3)
