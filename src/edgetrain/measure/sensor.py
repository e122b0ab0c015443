"""The sensor interface: one small protocol, a status record, energy channels, a null sensor.

A sensor is created once (that is where it finds out whether it works on this machine) and
then read many times. ``read()`` returns a flat dict of named values with the unit in the
name (``gpu0_power_w``, ``proc_rss_bytes``, ``cpu_pct``). A sensor that provides energy also
declares :class:`EnergyChannel` objects, which tell the monitor how to turn its readings into
joules: from a cumulative counter where one exists, else by integrating a power value.

Keys that are not in a sensor's ``columns`` (energy counters, restart counts, the process
tree's CPU time) are internal: the monitor uses them and leaves them out of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "MACHINE_BUSY_KEY",
    "PROC_CPU_KEY",
    "UNIT_SUFFIXES",
    "EnergyChannel",
    "NullSensor",
    "Sensor",
    "SensorStatus",
]

#: Every value name a sensor returns ends with one of these unit suffixes.
UNIT_SUFFIXES = ("_w", "_j", "_bytes", "_pct", "_s", "_hz", "_count")

#: Internal key: cumulative CPU time (user + system, reaped children included) of the
#: followed process tree, seconds. With :data:`MACHINE_BUSY_KEY` it gives the tree's share
#: of the machine's CPU time, which the monitor applies to CPU energy.
PROC_CPU_KEY = "proc_cpu_s"

#: Internal key: cumulative busy CPU time of the whole machine (all cores; idle, iowait
#: and steal left out), seconds.
MACHINE_BUSY_KEY = "cpu_busy_s"

#: What hardware a channel's energy covers (used by :func:`edgetrain.measure.energy.compose`).
Domain = Literal["board", "cpu", "gpu", "memory"]

#: What an energy figure covers: a whole machine's part (all CPU packages, a board's input,
#: every GPU of the machine), chosen devices (the GPUs of the job), or a process tree.
Scope = Literal["machine", "device", "process"]


@dataclass(frozen=True)
class SensorStatus:
    """Whether a sensor works on this machine, and why (not).

    Attributes:
        name: Sensor name, e.g. ``"nvml"``, ``"rapl"``, ``"cpu-tdp"``.
        available: True when the sensor is read during monitoring.
        reason: What was found, or why the sensor is not used and how to fix it; during
            monitoring also what failed (a device whose reads fail, and since when).
        source_label: The energy source label it would contribute (``"measured:nvml"``,
            ``"estimated:cpu-tdp"``), or None for sensors without energy (psutil).
        degraded: True while some of its reads keep failing (the monitor sets it).
    """

    name: str
    available: bool
    reason: str
    source_label: str | None = None
    degraded: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (for env.json and summary.json)."""
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "source_label": self.source_label,
            "degraded": self.degraded,
        }


@dataclass(frozen=True)
class EnergyChannel:
    """One energy-producing quantity of a sensor (one GPU, one CPU package, one board).

    Attributes:
        source: Short source name used in labels and ``energy_by_source_j`` (``"nvml"``).
        domain: What hardware the energy covers: ``"board"`` (a whole module, e.g. a Jetson
            input rail), ``"cpu"``, ``"gpu"`` or ``"memory"`` (RAPL DRAM). Used by
            :func:`edgetrain.measure.energy.compose`.
        measured: False for estimates; an estimate is never labelled as a measurement.
        power_key: Key in ``read()`` holding power in watts, integrated when there is no
            counter.
        energy_key: Key in ``read()`` holding a cumulative energy counter in joules (any
            origin; only differences are used). Internal: left out of samples.
        power_is_interval_mean: True when the power value is the mean over the time since
            the previous read (RAPL counter differences, the utilisation estimate): then
            energy is ``power * dt`` exactly, not a trapezoid, also across a missed read.
        device: Which device of the sensor this is (``"gpu0"``, ``"package-0"``), for
            per-device coverage; None for a sensor with one channel.
        scope: ``"machine"`` when the figure covers a part of the whole machine (all CPU
            packages, a board, every GPU because none was chosen), ``"device"`` when it
            covers chosen devices (the job's GPUs).
        summed: True when the figure is a sum of parts, not a measurement of the input
            (Jetson rails without an input rail): labelled ``summed:``, not ``measured:``.
        includes_cpu: True when the figure also covers the CPU (a Grace Hopper module's
            energy counter): no CPU figure is added to it.
        restarts_key: Key in ``read()`` holding a restart count (internal): when it changes,
            the counter restarted (RAPL after a gap too long to count wraps) and the
            interval since the previous read is not covered.
        held_key: Key in ``read()`` holding 1.0 when the followed process tree holds this
            device, 0.0 when it does not (internal; absent: unknown, counted as held).
            Only GPU channels use it, for the process-attributed figure.
    """

    source: str
    domain: Domain
    measured: bool
    power_key: str | None = None
    energy_key: str | None = None
    power_is_interval_mean: bool = False
    device: str | None = None
    scope: Literal["machine", "device"] = "machine"
    summed: bool = False
    includes_cpu: bool = False
    restarts_key: str | None = None
    held_key: str | None = None

    @property
    def kind(self) -> str:
        """Label prefix: ``measured``, ``summed`` or ``estimated``."""
        if not self.measured:
            return "estimated"
        return "summed" if self.summed else "measured"

    @property
    def name(self) -> str:
        """``source`` or ``source:device``, as degraded channels are listed."""
        return f"{self.source}:{self.device}" if self.device else self.source

    @property
    def internal_keys(self) -> tuple[str, ...]:
        """Keys of ``read()`` this channel uses that are not sample columns."""
        keys = (self.energy_key, self.restarts_key, self.held_key)
        return tuple(k for k in keys if k)


@runtime_checkable
class Sensor(Protocol):
    """What the monitor needs from a sensor.

    ``read()`` may raise; the monitor then retries once, and when that fails too the sensor's
    values are missing for that sample (it is read again at the next one). A sensor with
    several devices should catch a failing device itself and leave only that device's
    values out. Keys in ``read()`` are a subset of ``columns`` plus internal keys (the
    channels' :attr:`EnergyChannel.internal_keys`, :data:`PROC_CPU_KEY`,
    :data:`MACHINE_BUSY_KEY`).
    """

    name: str

    @property
    def status(self) -> SensorStatus:
        """Availability and reason, fixed at construction."""
        ...

    @property
    def columns(self) -> tuple[str, ...]:
        """Names ``read()`` may return, internal keys excluded (for a fixed CSV header)."""
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
