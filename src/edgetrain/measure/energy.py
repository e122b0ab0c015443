"""Which energy channels count, how they are labelled, and how readings become joules.

Composition rule (one place, used by the factory and the monitor):

1. A board-level channel (a Jetson input rail) covers CPU, GPU and memory: when one exists,
   only board channels count. Other sensors are still read for their columns.
2. Otherwise GPU channels (NVML) and CPU channels count side by side; they meter disjoint
   parts of the machine.
3. A measured CPU channel (RAPL) replaces the CPU estimate: the estimate counts only when no
   CPU energy is measured.

Labels list measured sources first, then estimates: ``measured:rapl+nvml``,
``measured:nvml+estimated:cpu-tdp``, ``estimated:cpu-tdp``; ``none`` without any source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from edgetrain.measure.sensor import EnergyChannel

__all__ = ["EnergyIntegrator", "compose", "source_label"]

_ORDER = ("jetson", "rapl", "nvml")


def compose(channels: Iterable[EnergyChannel]) -> list[EnergyChannel]:
    """The channels that count, by the rule in the module docstring."""
    channels = list(channels)
    board = [c for c in channels if c.scope == "board"]
    if board:
        return board
    cpu_measured = any(c.scope == "cpu" and c.measured for c in channels)
    return [c for c in channels if not (c.scope == "cpu" and not c.measured and cpu_measured)]


def _sorted_sources(sources: Iterable[str]) -> list[str]:
    unique = set(sources)
    known = [s for s in _ORDER if s in unique]
    return known + sorted(unique - set(known))


def source_label(channels: Iterable[EnergyChannel]) -> str:
    """``measured:a+b``, ``estimated:c``, ``measured:a+estimated:c`` or ``none``."""
    channels = list(channels)
    measured = _sorted_sources(c.source for c in channels if c.measured)
    estimated = _sorted_sources(c.source for c in channels if not c.measured)
    parts = []
    if measured:
        parts.append("measured:" + "+".join(measured))
    if estimated:
        parts.append("estimated:" + "+".join(estimated))
    return "+".join(parts) if parts else "none"


class EnergyIntegrator:
    """Cumulative energy per source, updated one sample at a time (constant memory).

    Per channel and sample: the counter difference when the channel has a counter and both
    this and the previous sample hold it; else ``power * dt`` for interval-mean power, or the
    trapezoid ``(p_prev + p) / 2 * dt`` for sampled power; else nothing. A counter that goes
    backwards (driver reload) adds nothing.
    """

    def __init__(self, channels: Iterable[EnergyChannel]) -> None:
        self.channels: list[EnergyChannel] = []
        self.by_source_j: dict[str, float] = {}
        self._prev: dict[EnergyChannel, tuple[float, float | None, float | None]] = {}
        self.set_channels(channels)

    def set_channels(self, channels: Iterable[EnergyChannel]) -> None:
        """Replace the counted channels (after a sensor was dropped); totals are kept."""
        self.channels = list(channels)
        for c in self.channels:
            self.by_source_j.setdefault(c.source, 0.0)
        self._prev = {c: p for c, p in self._prev.items() if c in self.channels}

    @property
    def total_j(self) -> float | None:
        """Total so far, or None when there is no channel at all."""
        return sum(self.by_source_j.values()) if self.by_source_j else None

    @property
    def label(self) -> str:
        """Source label of the counted channels."""
        return source_label(self.channels)

    def update(self, t_s: float, values: Mapping[str, float]) -> float | None:
        """Account one sample taken at ``t_s``; return the counted channels' power, if any."""
        power_sum: float | None = None
        for c in self.channels:
            energy = values.get(c.energy_key) if c.energy_key else None
            power = values.get(c.power_key) if c.power_key else None
            if power is not None:
                power_sum = (power_sum or 0.0) + power
            prev = self._prev.get(c)
            self._prev[c] = (t_s, energy, power)
            if prev is None:
                continue
            prev_t, prev_energy, prev_power = prev
            dt = t_s - prev_t
            if energy is not None and prev_energy is not None:
                added = max(0.0, energy - prev_energy)
            elif power is not None and dt > 0:
                if c.power_is_interval_mean or prev_power is None:
                    added = power * dt
                else:
                    added = 0.5 * (prev_power + power) * dt
            else:
                added = 0.0
            self.by_source_j[c.source] += added
        return power_sum
