"""A linear memory model: peak bytes = static bytes + per-sample bytes x micro-batch.

Fitted from probe steps (and, during training, from measured steps). The fit is an
upper envelope: the least-squares slope, with the intercept raised until no measured
point lies above the line, so the model never predicts less than was measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["MemoryModel", "even_micro_batch", "merge_points"]

Point = tuple[int, float]  # (micro-batch size, peak bytes)


def merge_points(points: Iterable[Point]) -> list[Point]:
    """One point per micro-batch size, the largest peak measured for it, sorted."""
    best: dict[int, float] = {}
    for micro, peak in points:
        if micro >= 1 and math.isfinite(peak):
            best[int(micro)] = max(best.get(int(micro), -math.inf), float(peak))
    return sorted(best.items())


def even_micro_batch(batch_size: int, micro_batch_size: int, min_micro: int = 1) -> int:
    """The smallest micro-batch with as many micro-batches per logical batch as
    ``micro_batch_size`` needs: 256 at 153 -> 128 (2 steps either way: the same time, less
    memory, and one size of step instead of two). Not below ``min_micro`` (the size given
    is kept then)."""
    if micro_batch_size < 1 or batch_size < 1:
        return micro_batch_size
    micro = min(micro_batch_size, batch_size)
    even = math.ceil(batch_size / math.ceil(batch_size / micro))
    return micro if even < min_micro else even


@dataclass(frozen=True)
class MemoryModel:
    """Predicted peak memory of one training step as a function of the micro-batch size.

    Attributes:
        static_bytes: bytes that do not grow with the micro-batch (parameters,
            gradients, optimizer state, workspaces, runtime overhead).
        per_sample_bytes: bytes each sample of the micro-batch adds (saved activations
            and the temporaries of backward).
        single_bytes: the peak measured for micro-batch 1 where it lies below the line
            (None: the line holds there too). A batch of one takes other kernels: on CPU
            oneDNN's batch-1 paths leave about 21 MiB of library code untouched on vgg11,
            so training at 1 needs less than the line through 2, 8, ... predicts (see
            ``docs/design.md``, "Memory planner").
    """

    static_bytes: float
    per_sample_bytes: float
    single_bytes: float | None = None

    def predict_bytes(self, micro_batch_size: int) -> int:
        """Predicted peak bytes at ``micro_batch_size``."""
        if micro_batch_size == 1 and self.single_bytes is not None:
            return math.ceil(self.single_bytes)
        return self._line(micro_batch_size)

    def _line(self, micro_batch_size: int) -> int:
        return math.ceil(self.static_bytes + self.per_sample_bytes * micro_batch_size)

    def with_single(self, peak_bytes: float) -> MemoryModel:
        """The model with ``peak_bytes`` measured at micro-batch 1: kept apart where it
        lies below the line (:attr:`single_bytes`), else the line is raised to it (as
        any point above the envelope raises it)."""
        line = self._line(1)
        if peak_bytes < line:
            return replace(self, single_bytes=float(peak_bytes))
        return MemoryModel(self.static_bytes + (peak_bytes - line), self.per_sample_bytes)

    def raised(self, delta_bytes: float) -> MemoryModel:
        """Every prediction ``delta_bytes`` higher."""
        single = None if self.single_bytes is None else self.single_bytes + delta_bytes
        return MemoryModel(self.static_bytes + delta_bytes, self.per_sample_bytes, single)

    def largest_micro_batch(self, limit_bytes: float, upper: int) -> int:
        """The largest micro-batch in [1, upper] predicted to stay within ``limit_bytes``; 0 if none."""
        if upper < 1 or self.predict_bytes(1) > limit_bytes:
            return 0
        if self.per_sample_bytes <= 0:
            return upper
        micro = math.floor((limit_bytes - self.static_bytes) / self.per_sample_bytes)
        micro = max(1, min(upper, micro))
        while micro > 1 and self.predict_bytes(micro) > limit_bytes:  # rounding at the edge
            micro -= 1
        return micro

    @classmethod
    def fit(
        cls,
        points: Sequence[Point],
        *,
        static_floor: float = 0.0,
        per_sample_floor: float = 0.0,
    ) -> MemoryModel:
        """Fit the upper envelope of ``points`` (micro-batch, peak bytes).

        Args:
            points: at least one measurement; several at one size count as their maximum.
            static_floor: the intercept is at least this (e.g. the exact static bytes).
            per_sample_floor: the slope is at least this (e.g. the exact saved bytes per
                sample); also the slope when all points share one micro-batch size.

        Raises:
            ValueError: no usable point.
        """
        merged = merge_points(points)
        if not merged:
            raise ValueError("a memory model needs at least one (micro-batch, bytes) point")
        xs = [float(m) for m, _ in merged]
        ys = [p for _, p in merged]
        slope = per_sample_floor
        if len(merged) >= 2:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
            slope = max(per_sample_floor, sxy / sxx)
        intercept = max(y - slope * x for x, y in zip(xs, ys, strict=True))
        return cls(static_bytes=max(static_floor, intercept), per_sample_bytes=max(0.0, slope))

    @classmethod
    def envelope(
        cls, points: Sequence[Point], per_sample_bytes: float, *, static_floor: float = 0.0
    ) -> MemoryModel:
        """The lowest line with slope ``per_sample_bytes`` that no point lies above.

        For recalibrating a model on new measurements while keeping its slope.
        """
        merged = merge_points(points)
        if not merged:
            raise ValueError("a memory model needs at least one (micro-batch, bytes) point")
        intercept = max(p - per_sample_bytes * m for m, p in merged)
        return cls(max(static_floor, intercept), max(0.0, per_sample_bytes))

    def to_dict(self) -> dict[str, Any]:
        out = {"static_bytes": self.static_bytes, "per_sample_bytes": self.per_sample_bytes}
        if self.single_bytes is not None:
            out["single_bytes"] = self.single_bytes
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryModel:
        single = data.get("single_bytes")
        return cls(
            float(data["static_bytes"]),
            float(data["per_sample_bytes"]),
            None if single is None else float(single),
        )
