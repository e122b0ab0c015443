"""Measurement windows: what one named stretch of time cost.

This module knows nothing of :mod:`edgetrain.measure.monitor`: a :class:`Window` talks to
whatever opened it through the small :class:`WindowHost` protocol, and the monitor (which
keeps the running state of open windows) imports this module, never the other way round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["EPOCH_FIELDS", "Window", "WindowResult"]

#: The per-epoch fields a training run copies from a window (:meth:`WindowResult.epoch_fields`).
EPOCH_FIELDS = (
    "energy_j",
    "energy_source",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_device_mem_bytes",
    "energy_scope",
    "energy_coverage",
    "energy_process_j",
    "energy_process_source",
    "peak_pss_bytes",
)


@dataclass(frozen=True)
class WindowResult:
    """What a window cost.

    Every energy figure has a scope, a source label and a coverage (see
    :mod:`edgetrain.measure.energy`): ``energy_j`` is what the metered parts of the machine
    drew (every process on them included), ``energy_process_j`` the followed process tree's
    attributed share of it.

    Attributes:
        name: The window's name.
        time_s: Wall time from the opening to the closing sample.
        energy_j: Total energy of the counted sources, or None without any energy source.
        energy_by_source_j: Energy per source name (``{"nvml": 812.0, "cpu-tdp": 95.1}``).
        energy_source: How the energy was obtained, e.g. ``measured:nvml``,
            ``measured:nvml+estimated:cpu-tdp``, ``partial:nvml`` (a source whose figure
            covers only part of the window); ``none`` without a source.
        avg_power_w: ``energy_j / time_s``, or None.
        peak_power_w: Largest total power over the window's samples, or None.
        peak_rss_bytes: The larger of (a) the maximum over samples of the summed RSS of the
            process tree and (b) the main process's RSS high-water mark (Linux ``VmHWM``)
            when that mark rose during the window, which catches main-process peaks between
            samples. None when the process was not readable.
        peak_device_mem_bytes: Maximum over samples of GPU memory used (device-wide, summed
            over the measured GPUs, from NVML; a MIG instance's own memory; Jetson NvMap
            memory), or None without a GPU memory reading.
        n_samples: Samples in the window, the opening and closing ones included.
        start_s: Monitor time (``t_s`` of the samples) when the window opened.
        end_s: Monitor time when it closed.
        energy_scope: What ``energy_j`` covers: ``machine`` (CPU packages, a board, every
            GPU), ``device`` (chosen GPUs only), ``machine+device``; ``none``.
        energy_coverage: Smallest share (0-1) of the window's time that a counted source's
            energy covers; below 1 when reads failed and a counter could not bridge them.
        energy_coverage_by_source: Coverage per source.
        energy_process_j: The process tree's attributed share: CPU (and board, DRAM) energy
            times the tree's share of the machine's busy CPU time, plus the energy of the
            GPUs the tree holds. None when the process could not be read.
        energy_process_source: ``attributed:`` and the label it came from, or ``none``.
        energy_process_coverage: Coverage of the attribution.
        energy_figures: Every figure with its ``name``, ``scope``, ``source``, ``energy_j``
            and ``coverage`` (``total``, one per source with per-device parts, ``process``).
        degraded: Energy channels degraded during the window (``nvml:gpu1``).
        peak_pss_bytes: Maximum over samples of the process tree's summed PSS (shared
            pages split between the processes sharing them), read every few seconds only;
            None where not readable.
    """

    name: str
    time_s: float
    energy_j: float | None
    energy_by_source_j: dict[str, float] = field(default_factory=dict)
    energy_source: str = "none"
    avg_power_w: float | None = None
    peak_power_w: float | None = None
    peak_rss_bytes: int | None = None
    peak_device_mem_bytes: int | None = None
    n_samples: int = 0
    start_s: float = 0.0
    end_s: float = 0.0
    energy_scope: str = "none"
    energy_coverage: float | None = None
    energy_coverage_by_source: dict[str, float] = field(default_factory=dict)
    energy_process_j: float | None = None
    energy_process_source: str = "none"
    energy_process_coverage: float | None = None
    energy_figures: list[dict[str, Any]] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    peak_pss_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def epoch_fields(self) -> dict[str, Any]:
        """The per-epoch fields (:data:`EPOCH_FIELDS`), for a metrics.csv row."""
        return {name: getattr(self, name) for name in EPOCH_FIELDS}


class WindowHost(Protocol):
    """What a :class:`Window` needs from the object that measures it (the monitor)."""

    def _open_window(self, name: str) -> None: ...

    def _close_window(self, name: str) -> WindowResult: ...


class Window:
    """A handle for one window; open and close it with ``with`` or explicitly.

    ``result`` is None until the window closes. Opening and closing each take one sample
    (and synchronise CUDA when it is in use), so windows suit epochs and phases, not
    single steps.
    """

    def __init__(self, monitor: WindowHost, name: str) -> None:
        self._monitor = monitor
        self.name = name
        self.result: WindowResult | None = None

    def open(self) -> Window:
        """Open the window.

        Raises:
            EdgeTrainError: if a window with this name is already open.
        """
        self._monitor._open_window(self.name)
        return self

    def close(self) -> WindowResult:
        """Close the window and return (and keep) its result; closing twice is harmless."""
        if self.result is None:
            self.result = self._monitor._close_window(self.name)
        return self.result

    def __enter__(self) -> Window:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
