"""What probing measures, as plain records: no torch, so the controller can hold them.

:mod:`edgetrain.adapt.probe` fills them from real forward/backward passes;
:class:`~edgetrain.adapt.controller.BudgetController` decides from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetrain.adapt.memory_model import MemoryModel

__all__ = ["BudgetFit", "Probe", "StaticBytes"]


@dataclass(frozen=True)
class StaticBytes:
    """Bytes that do not grow with the batch, from exact accounting of one real step."""

    param_bytes: int
    buffer_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.buffer_bytes + self.grad_bytes + self.optimizer_state_bytes


@dataclass(frozen=True)
class Probe:
    """One measured forward/backward pass.

    Attributes:
        micro_batch_size: samples in the pass.
        saved_bytes: bytes saved for backward (unique storages, parameters excluded).
        measured_bytes: the meter's peak, plus optimizer state that a real step would
            hold but the probe did not yet have; None without a meter reading.
        seconds: wall time of the forward and backward passes (None: not timed).
    """

    micro_batch_size: int
    saved_bytes: int
    measured_bytes: int | None
    seconds: float | None = None

    def peak_bytes(self, static: StaticBytes) -> float:
        """The larger of the measured peak and the exact accounting (static + saved)."""
        accounted = static.total_bytes + self.saved_bytes
        return float(max(accounted, self.measured_bytes or 0))


@dataclass(frozen=True)
class BudgetFit:
    """What probing found: the static bytes, every probe, the fitted model."""

    static: StaticBytes
    probes: tuple[Probe, ...]
    memory: MemoryModel
    ceiling: int | None  # smallest micro-batch that ran out of memory while probing
    verified: int  # largest micro-batch measured within the limit (0: none)
    calibration: Probe | None = None  # a whole logical batch at the last doubled size
    overhead_bytes: float = 0.0  # calibration minus the single pass at its size
    probe_peak_bytes: int | None = None  # the largest peak the probes themselves reached
    single: Probe | None = None  # a whole logical batch at micro-batch 1 (memory.single_bytes)
