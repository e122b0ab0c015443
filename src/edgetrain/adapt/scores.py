"""The scores of EdgeTrain's scheme and the learning-rate rules, as pure functions.

Every memory quantity is a fraction (0.8 = 80%), never a percentage; accuracies are
validation accuracies in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "accuracy_score",
    "clamp_lr",
    "memory_score",
    "priorities",
    "scale_lr",
    "stagnant_epochs",
]


def memory_score(peak_bytes: float | None, capacity_bytes: float | None) -> float | None:
    """Measured peak as a fraction of the capacity (the budget, else the device total).

    Not clipped: a score above 1 means the peak passed the capacity. None when either
    is unknown.
    """
    if peak_bytes is None or capacity_bytes is None or capacity_bytes <= 0:
        return None
    return float(peak_bytes) / float(capacity_bytes)


def accuracy_score(val_accs: Sequence[float | None]) -> float | None:
    """``1 - max(0, acc_t - acc_{t-1})`` on validation accuracy, in [0, 1].

    High when validation accuracy stagnates or falls, low when it improves. None before
    two epochs with a validation accuracy exist.
    """
    known = [a for a in val_accs if a is not None and not math.isnan(a)]
    if len(val_accs) < 2 or val_accs[-1] is None or len(known) < 2:
        return None
    gain = float(known[-1]) - float(known[-2])
    return 1.0 - min(1.0, max(0.0, gain))


def priorities(
    mem_score: float | None,
    acc_score: float | None,
    weight_batch_size: float,
    weight_learning_rate: float,
) -> tuple[float | None, float | None]:
    """(batch-size priority, learning-rate priority): each weight times its score."""
    pb = None if mem_score is None else weight_batch_size * mem_score
    plr = None if acc_score is None else weight_learning_rate * acc_score
    return pb, plr


def stagnant_epochs(val_accs: Sequence[float | None], min_delta: float) -> int:
    """Epochs at the end of ``val_accs`` that did not beat the best before them by > ``min_delta``."""
    accs = [a for a in val_accs if a is not None and not math.isnan(a)]
    count = 0
    for i in range(len(accs) - 1, 0, -1):
        if accs[i] > max(accs[:i]) + min_delta:
            break
        count += 1
    return count


def scale_lr(lr: float, old_batch: int, new_batch: int, rule: str) -> float:
    """The learning rate for a new effective batch: linear (x k), sqrt (x sqrt k) or none."""
    ratio = new_batch / old_batch
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    if rule == "none":
        return lr
    raise ValueError(f"lr_scaling must be linear, sqrt or none, got {rule!r}")


def clamp_lr(lr: float, min_lr: float, max_lr: float | None) -> float:
    """``lr`` bounded to [min_lr, max_lr]."""
    lr = max(min_lr, lr)
    return lr if max_lr is None else min(max_lr, lr)
