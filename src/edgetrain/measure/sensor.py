"""The sensor interface: one small protocol, a status record, energy channels, a null sensor.

A sensor is created once (that is where it finds out whether it works on this machine) and
then read many times. ``read()`` returns a flat dict of named values with the unit in the
name (``gpu0_power_w``, ``proc_rss_bytes``, ``cpu_pct``). A sensor that provides energy also
declares :class:`EnergyChannel` objects, which tell the monitor how to turn its readings into
joules: from a cumulative counter where one exists, else by integrating a power value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "UNIT_SUFFIXES",
    "EnergyChannel",
    "NullSensor",
    "Sensor",
    "SensorStatus",
]

#: Every value name a sensor returns ends with one of these unit suffixes.
UNIT_SUFFIXES = ("_w", "_j", "_bytes", "_pct", "_s", "_hz", "_count")

Scope = Literal["board", "cpu", "gpu"]


@dataclass(frozen=True)
class SensorStatus:
    """Whether a sensor works on this machine, and why (not).

    Attributes:
        name: Sensor name, e.g. ``"nvml"``, ``"rapl"``, ``"cpu-tdp"``.
        available: True when the sensor is read during monitoring.
        reason: What was found, or why the sensor is not used and how to fix it.
        source_label: The energy source label it would contribute (``"measured:nvml"``,
            ``"estimated:cpu-tdp"``), or None for sensors without energy (psutil).
    """

    name: str
    available: bool
    reason: str
    source_label: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (for env.json and summary.json)."""
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "source_label": self.source_label,
        }


@dataclass(frozen=True)
class EnergyChannel:
    """One energy-producing quantity of a sensor.

    Attributes:
        source: Short source name used in labels and ``energy_by_source_j`` (``"nvml"``).
        scope: What the energy covers: ``"board"`` (the whole device, e.g. a Jetson input
            rail), ``"cpu"`` or ``"gpu"``. Used by :func:`edgetrain.measure.energy.compose`.
        measured: False for estimates; an estimate is never labelled as a measurement.
        power_key: Key in ``read()`` holding power in watts, integrated when there is no
            counter.
        energy_key: Key in ``read()`` holding a cumulative energy counter in joules (any
            origin; only differences are used). The monitor removes it from samples.
        power_is_interval_mean: True when the power value is the mean over the time since
            the previous read (RAPL counter differences, the utilisation estimate): then
            energy is ``power * dt`` exactly, not a trapezoid.
    """

    source: str
    scope: Scope
    measured: bool
    power_key: str | None = None
    energy_key: str | None = None
    power_is_interval_mean: bool = False


@runtime_checkable
class Sensor(Protocol):
    """What the monitor needs from a sensor.

    ``read()`` may raise; the monitor then logs once and drops the sensor. Keys in ``read()``
    are a subset of ``columns`` plus the channels' ``energy_key`` s.
    """

    name: str

    @property
    def status(self) -> SensorStatus:
        """Availability and reason, fixed at construction."""
        ...

    @property
    def columns(self) -> tuple[str, ...]:
        """Names ``read()`` may return, excluding energy counters (for a fixed CSV header)."""
        ...

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """Energy this sensor provides; empty for sensors without energy."""
        ...

    def read(self) -> dict[str, float]:
        """Current values: names with units to floats."""
        ...

    def close(self) -> None:
        """Release handles (NVML); reading afterwards is not supported."""
        ...


class NullSensor:
    """The sensor of last resort: always readable, returns nothing.

    Used by the factory when no other sensor works, so that the monitor has one code path.
    """

    name = "null"

    def __init__(self, reason: str = "no sensor works on this machine") -> None:
        self._status = SensorStatus(self.name, False, reason, None)

    @property
    def status(self) -> SensorStatus:
        """Always unavailable, with the reason given."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """No columns."""
        return ()

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """No energy."""
        return ()

    def read(self) -> dict[str, float]:
        """Return an empty dict."""
        return {}

    def close(self) -> None:
        """Nothing to release."""
