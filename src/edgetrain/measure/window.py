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

__all__ = ["Window", "WindowResult"]


@dataclass(frozen=True)
class WindowResult:
    """What a window cost.

    Attributes:
        name: The window's name.
        time_s: Wall time from the opening to the closing sample.
        energy_j: Total energy of the counted sources, or None without any energy source.
        energy_by_source_j: Energy per source name (``{"nvml": 812.0, "cpu-tdp": 95.1}``).
        energy_source: How the energy was obtained, e.g. ``measured:nvml``,
            ``measured:nvml+estimated:cpu-tdp``; ``none`` without a source.
        avg_power_w: ``energy_j / time_s``, or None.
        peak_power_w: Largest total power over the window's samples, or None.
        peak_rss_bytes: The larger of (a) the maximum over samples of the summed RSS of the
            process tree and (b) the main process's RSS high-water mark (Linux ``VmHWM``)
            when that mark rose during the window, which catches main-process peaks between
            samples. None when the process was not readable.
        peak_device_mem_bytes: Maximum over samples of GPU memory used (device-wide, summed
            over visible GPUs, from NVML), or None without an NVML GPU.
        n_samples: Samples in the window, the opening and closing ones included.
        start_s: Monitor time (``t_s`` of the samples) when the window opened.
        end_s: Monitor time when it closed.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


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
