"""Energy per phase of a monitored command, from the marks it wrote (:mod:`edgetrain.mark`).

A phase runs from one mark to the next (the last to the command's end); the time before
the first mark is the phase ``(start)``. A phase's energy is the difference of the
monitor's cumulative energy at its two edges, interpolated linearly between samples, so
phases shorter than the sampling interval still get their share; its peaks are over the
samples inside it (None when none fell inside).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgetrain.mark import Mark

__all__ = ["BEFORE_FIRST_MARK", "Phase", "PhaseRecorder", "split_phases"]

#: The label of the time before the first mark.
BEFORE_FIRST_MARK = "(start)"


@dataclass(frozen=True)
class Phase:
    """One phase: seconds since the monitor started (resources.csv ``t_s``) and its cost."""

    index: int  # 1-based, in time order
    label: str
    start_s: float
    end_s: float
    energy_j: float | None
    peak_rss_bytes: int | None
    peak_device_mem_bytes: int | None
    n_samples: int

    @property
    def time_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def avg_power_w(self) -> float | None:
        if self.energy_j is None or self.time_s <= 0:
            return None
        return self.energy_j / self.time_s

    def to_dict(self) -> dict[str, Any]:
        """summary.json's ``phases`` item."""
        return {
            "index": self.index,
            "label": self.label,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "time_s": self.time_s,
            "energy_j": self.energy_j,
            "avg_power_w": self.avg_power_w,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_device_mem_bytes": self.peak_device_mem_bytes,
            "n_samples": self.n_samples,
        }


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class PhaseRecorder:
    """A monitor listener that keeps what phases need of each sample (a few floats)."""

    def __init__(self) -> None:
        self.t_s: list[float] = []
        self.energy_j: list[float | None] = []
        self.rss: list[float | None] = []
        self.device_mem: list[float | None] = []

    def __call__(self, sample: Mapping[str, Any]) -> None:
        t = _float(sample.get("t_s"))
        if t is None or (self.t_s and t < self.t_s[-1]):
            return  # samples arrive in order; anything else is not ours to place
        self.t_s.append(t)
        self.energy_j.append(_float(sample.get("energy_j")))
        self.rss.append(_float(sample.get("proc_rss_bytes")))
        self.device_mem.append(_float(sample.get("gpu_mem_bytes")))


def _interpolate(times: Sequence[float], values: Sequence[float], t: float) -> float | None:
    """``values`` at ``t``, linear between the points around it, flat beyond the ends."""
    if not times:
        return None
    i = bisect.bisect_left(times, t)
    if i == 0:
        return values[0]
    if i == len(times):
        return values[-1]
    t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
    return v0 if t1 <= t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def _peak(values: Sequence[float | None]) -> int | None:
    present = [v for v in values if v is not None]
    return int(max(present)) if present else None


def split_phases(
    marks: Sequence[Mark], origin_s: float, end_s: float, recorder: PhaseRecorder
) -> list[Phase]:
    """The phases the marks delimit, in the monitor's time (``t_s``).

    Args:
        marks: The marks in time order (wall-clock seconds, :func:`edgetrain.mark.read_marks`).
        origin_s: The wall-clock time of the monitor's ``t_s = 0``
            (:func:`edgetrain.mark.mark_time` taken as the window opened).
        end_s: The end of the measured window (its ``time_s``).
        recorder: The samples.

    Returns:
        No phase without marks; else ``(start)`` (when the first mark came after the
        start) and one phase per mark. Marks outside the window are clipped to it.
    """
    if not marks:
        return []
    starts = [(min(max(m.time_s - origin_s, 0.0), end_s), m.label) for m in marks]
    if starts[0][0] > 0:
        starts.insert(0, (0.0, BEFORE_FIRST_MARK))
    known = [(t, e) for t, e in zip(recorder.t_s, recorder.energy_j, strict=True) if e is not None]
    times, energies = [t for t, _ in known], [e for _, e in known]
    phases = []
    for i, (start, label) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else end_s
        e0, e1 = (
            _interpolate(times, energies, start),
            _interpolate(times, energies, end),
        )
        lo = bisect.bisect_left(recorder.t_s, start)
        last = i + 1 == len(starts)
        hi = (
            bisect.bisect_right(recorder.t_s, end)
            if last
            else bisect.bisect_left(recorder.t_s, end)
        )
        phases.append(
            Phase(
                index=i + 1,
                label=label,
                start_s=start,
                end_s=end,
                energy_j=None if e0 is None or e1 is None else max(0.0, e1 - e0),
                peak_rss_bytes=_peak(recorder.rss[lo:hi]),
                peak_device_mem_bytes=_peak(recorder.device_mem[lo:hi]),
                n_samples=hi - lo,
            )
        )
    return phases
