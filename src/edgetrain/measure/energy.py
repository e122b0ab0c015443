"""Which energy channels count, how they are labelled, and how readings become joules.

Composition rule (one place, used by the factory and the monitor):

1. A board-level channel (a Jetson input rail, or its summed rails) covers CPU, GPU and
   memory: when one exists, only board channels count. Other sensors are still read for
   their columns.
2. Otherwise GPU, CPU and memory (RAPL DRAM) channels count side by side; they meter
   disjoint parts of the machine.
3. A channel that already includes the CPU (a Grace Hopper module's energy counter)
   replaces every CPU and memory channel; a measured CPU channel (RAPL) replaces the CPU
   estimate.

Labels list the sources by kind: ``measured:``, ``summed:`` (a sum of parts, not a
measurement of the input), ``partial:`` (a measured or summed source whose figure covers
only part of the time, see *coverage*), ``estimated:``; e.g. ``measured:rapl+nvml``,
``measured:nvml+estimated:cpu-tdp``, ``summed:jetson-rails``, ``measured:rapl+partial:nvml``;
``none`` without any source.

Every figure also has a *scope*: ``machine`` (a part of the whole machine: all CPU packages,
a board, every GPU because none was chosen), ``device`` (the chosen GPUs) or ``process``
(the followed process tree's attributed share, labelled ``attributed:...``), and a
*coverage*: the fraction of the window's time its energy accounts for (1.0 unless reads
failed; a counter bridges failed reads, an integrated power reading cannot).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgetrain.measure.sensor import MACHINE_BUSY_KEY, PROC_CPU_KEY, EnergyChannel

__all__ = [
    "DEGRADED_AFTER",
    "EnergyFigures",
    "EnergyIntegrator",
    "EnergyState",
    "compose",
    "scope_label",
    "source_label",
    "summarise",
]

_ORDER = ("jetson-input", "jetson-rails", "rapl", "rapl-dram", "nvml")
_KINDS = ("measured", "summed", "partial", "estimated")

#: Coverage at or above this counts as complete (sums of float time steps).
_FULL = 1.0 - 1e-6

#: Consecutive samples without a value after which a channel counts as degraded.
DEGRADED_AFTER = 3


def compose(channels: Iterable[EnergyChannel]) -> list[EnergyChannel]:
    """The channels that count, by the rule in the module docstring."""
    channels = list(channels)
    board = [c for c in channels if c.domain == "board"]
    if board:
        return board
    if any(c.includes_cpu for c in channels):
        return [c for c in channels if c.domain not in ("cpu", "memory")]
    cpu_measured = any(c.domain == "cpu" and c.measured for c in channels)
    return [c for c in channels if not (c.domain == "cpu" and not c.measured and cpu_measured)]


def _sorted_sources(sources: Iterable[str]) -> list[str]:
    unique = set(sources)
    known = [s for s in _ORDER if s in unique]
    return known + sorted(unique - set(known))


def source_label(
    channels: Iterable[EnergyChannel], coverage: Mapping[str, float] | None = None
) -> str:
    """``measured:a+b``, ``summed:c``, ``partial:d``, ``estimated:e``, joined; or ``none``.

    Args:
        channels: The counted channels.
        coverage: Coverage per source (0-1); a measured or summed source below 1 is
            labelled ``partial``. Default: every source complete.
    """
    kinds: dict[str, str] = {}
    for c in channels:
        kind = c.kind
        if kind != "estimated" and coverage is not None and coverage.get(c.source, 1.0) < _FULL:
            kind = "partial"
        kinds.setdefault(c.source, kind)
    parts = []
    for kind in _KINDS:
        sources = _sorted_sources(s for s, k in kinds.items() if k == kind)
        if sources:
            parts.append(f"{kind}:" + "+".join(sources))
    return "+".join(parts) if parts else "none"


def scope_label(channels: Iterable[EnergyChannel]) -> str:
    """``machine``, ``device``, ``machine+device`` or ``none``: what the total covers."""
    scopes = {c.scope for c in channels}
    return "+".join(s for s in ("machine", "device") if s in scopes) or "none"


@dataclass
class _Last:
    """A channel's values at its previous sample that had a value."""

    t: float
    energy: float | None
    power: float | None
    restarts: float | None
    proc: float | None
    busy: float | None


@dataclass(frozen=True)
class EnergyState:
    """Cumulative figures per channel at one moment (snapshotted when a window opens)."""

    energy_j: dict[EnergyChannel, float] = field(default_factory=dict)
    covered_s: dict[EnergyChannel, float] = field(default_factory=dict)
    process_j: dict[EnergyChannel, float] = field(default_factory=dict)
    process_covered_s: dict[EnergyChannel, float] = field(default_factory=dict)


class EnergyIntegrator:
    """Cumulative energy per channel, updated one sample at a time (constant memory).

    Per channel and sample, over the time since the channel's previous value: the counter
    difference when the channel has a counter and both readings hold it; else
    ``power * dt`` for interval-mean power, or the trapezoid ``(p_prev + p) / 2 * dt`` for
    sampled power when no sample was missed; else nothing. The time so accounted is the
    channel's *covered* time. A counter that goes backwards (driver reload) or restarts
    (``restarts_key``) adds neither energy nor covered time. A sample without a value for
    a channel leaves it as it was: a counter bridges the gap at the next value, sampled
    power does not (that time stays uncovered).

    Alongside, the process tree's attributed share: CPU, memory and board energy times the
    tree's share of the machine's busy CPU time over the same interval (internal keys
    :data:`~edgetrain.measure.sensor.PROC_CPU_KEY` and
    :data:`~edgetrain.measure.sensor.MACHINE_BUSY_KEY`); GPU energy in full when the tree
    holds the device (or when that is unknown), else nothing.
    """

    def __init__(self, channels: Iterable[EnergyChannel]) -> None:
        self.channels: list[EnergyChannel] = []
        self._state = EnergyState()
        self._last: dict[EnergyChannel, _Last] = {}
        self._t: float | None = None
        #: Consecutive samples without a value, per channel.
        self.misses: dict[EnergyChannel, int] = {}
        self.set_channels(channels)

    def set_channels(self, channels: Iterable[EnergyChannel]) -> None:
        """Replace the counted channels; figures so far are kept."""
        self.channels = list(dict.fromkeys(channels))
        s = self._state
        for c in self.channels:
            for table in (s.energy_j, s.covered_s, s.process_j, s.process_covered_s):
                table.setdefault(c, 0.0)
            self.misses.setdefault(c, 0)
        self._last = {c: v for c, v in self._last.items() if c in self.channels}

    @property
    def by_source_j(self) -> dict[str, float]:
        """Energy so far per source."""
        out: dict[str, float] = {}
        for c in self.channels:
            out[c.source] = out.get(c.source, 0.0) + self._state.energy_j.get(c, 0.0)
        return out

    @property
    def total_j(self) -> float | None:
        """Total so far, or None when there is no channel at all."""
        return sum(self.by_source_j.values()) if self.channels else None

    @property
    def label(self) -> str:
        """Source label of the counted channels, assuming complete coverage."""
        return source_label(self.channels)

    def snapshot(self) -> EnergyState:
        """A copy of the cumulative figures now."""
        s = self._state
        return EnergyState(
            dict(s.energy_j), dict(s.covered_s), dict(s.process_j), dict(s.process_covered_s)
        )

    def degraded(self) -> list[EnergyChannel]:
        """Channels without a value for :data:`DEGRADED_AFTER` samples or more, now."""
        return [c for c in self.channels if self.misses.get(c, 0) >= DEGRADED_AFTER]

    def update(self, t_s: float, values: Mapping[str, float]) -> float | None:
        """Account one sample taken at ``t_s``; return the counted channels' power, if any."""
        power_sum: float | None = None
        proc = values.get(PROC_CPU_KEY)
        busy = values.get(MACHINE_BUSY_KEY)
        s = self._state
        for c in self.channels:
            energy = values.get(c.energy_key) if c.energy_key else None
            power = values.get(c.power_key) if c.power_key else None
            if energy is None and power is None:
                self.misses[c] = self.misses.get(c, 0) + 1
                continue
            self.misses[c] = 0
            if power is not None:
                power_sum = (power_sum or 0.0) + power
            restarts = values.get(c.restarts_key) if c.restarts_key else None
            last = self._last.get(c)
            self._last[c] = _Last(t_s, energy, power, restarts, proc, busy)
            if last is None:
                continue
            added, covered = self._interval(c, last, t_s, energy, power, restarts)
            s.energy_j[c] += added
            s.covered_s[c] += covered
            share = self._share(c, last, values, proc, busy)
            if share is not None:
                s.process_j[c] += added * share
                s.process_covered_s[c] += covered
        self._t = t_s
        return power_sum

    def _interval(
        self,
        c: EnergyChannel,
        last: _Last,
        t_s: float,
        energy: float | None,
        power: float | None,
        restarts: float | None,
    ) -> tuple[float, float]:
        dt = t_s - last.t
        if c.restarts_key and restarts != last.restarts:
            return 0.0, 0.0
        if energy is not None and last.energy is not None:
            step = energy - last.energy
            return (step, dt) if step >= 0 else (0.0, 0.0)
        if power is None or dt <= 0:
            return 0.0, 0.0
        if c.power_is_interval_mean:
            return power * dt, dt
        if last.t != self._t:  # missed samples: sampled power says nothing about the gap
            return 0.0, 0.0
        if last.power is None:
            return power * dt, dt
        return 0.5 * (last.power + power) * dt, dt

    @staticmethod
    def _share(
        c: EnergyChannel,
        last: _Last,
        values: Mapping[str, float],
        proc: float | None,
        busy: float | None,
    ) -> float | None:
        """The process tree's share of this interval's energy, or None when unknown."""
        if c.domain == "gpu":
            held = values.get(c.held_key) if c.held_key else None
            return 1.0 if held is None or held > 0 else 0.0
        if proc is None or busy is None or last.proc is None or last.busy is None:
            return None
        d_proc = max(0.0, proc - last.proc)
        d_busy = busy - last.busy
        if d_busy <= 0:
            return 1.0 if d_proc > 0 else 0.0
        return min(1.0, d_proc / d_busy)


@dataclass(frozen=True)
class EnergyFigures:
    """What a stretch of time cost in energy: the machine figure, its parts, the process's.

    Attributes:
        total_j: Energy of the counted channels, or None without any.
        by_source_j: Energy per source.
        source: Label of the total (``measured:rapl+nvml``, ``partial:nvml``).
        scope: What the total covers: ``machine``, ``device``, ``machine+device``.
        coverage: Smallest coverage over the counted channels (0-1), or None.
        coverage_by_source: Smallest coverage per source.
        process_j: The process tree's attributed share, or None when unknown.
        process_source: ``attributed:`` and the sources it came from, or ``none``.
        process_coverage: Smallest coverage of the attribution over the channels.
        figures: Every figure with its ``name``, ``scope``, ``source``, ``energy_j``,
            ``coverage`` (and ``devices`` per source with several devices).
        degraded: Names of channels that were degraded (``nvml:gpu1``).
    """

    total_j: float | None = None
    by_source_j: dict[str, float] = field(default_factory=dict)
    source: str = "none"
    scope: str = "none"
    coverage: float | None = None
    coverage_by_source: dict[str, float] = field(default_factory=dict)
    process_j: float | None = None
    process_source: str = "none"
    process_coverage: float | None = None
    figures: list[dict[str, Any]] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)


def _ratio(covered: float, time_s: float) -> float:
    if time_s <= 0:
        return 1.0
    ratio = min(1.0, max(0.0, covered / time_s))
    return 1.0 if ratio >= _FULL else round(ratio, 6)


def summarise(
    channels: Iterable[EnergyChannel],
    start: EnergyState,
    end: EnergyState,
    time_s: float,
    degraded: Iterable[EnergyChannel] = (),
) -> EnergyFigures:
    """The figures between two snapshots, ``time_s`` apart, for the counted ``channels``."""
    channels = list(channels)
    if not channels:
        return EnergyFigures()

    def delta(table: str, c: EnergyChannel) -> float:
        return getattr(end, table).get(c, 0.0) - getattr(start, table).get(c, 0.0)

    energy = {c: delta("energy_j", c) for c in channels}
    coverage = {c: _ratio(delta("covered_s", c), time_s) for c in channels}
    process = {c: delta("process_j", c) for c in channels}
    process_cov = {c: _ratio(delta("process_covered_s", c), time_s) for c in channels}

    by_source: dict[str, list[EnergyChannel]] = {}
    for c in channels:
        by_source.setdefault(c.source, []).append(c)
    sources = _sorted_sources(by_source)
    by_source_j = {s: sum(energy[c] for c in by_source[s]) for s in sources}
    cov_by_source = {s: min(coverage[c] for c in by_source[s]) for s in sources}
    label = source_label(channels, cov_by_source)
    total = sum(by_source_j.values())

    figures: list[dict[str, Any]] = []
    figures.append(
        {
            "name": "total",
            "scope": scope_label(channels),
            "source": label,
            "energy_j": total,
            "coverage": min(coverage.values()),
        }
    )
    for s in sources:
        members = by_source[s]
        entry: dict[str, Any] = {
            "name": s,
            "scope": scope_label(members),
            "source": source_label(members, cov_by_source),
            "energy_j": by_source_j[s],
            "coverage": cov_by_source[s],
        }
        named = [c for c in members if c.device]
        if named:
            entry["devices"] = {
                c.device: {"energy_j": energy[c], "coverage": coverage[c]} for c in named
            }
        figures.append(entry)

    process_known = any(process_cov[c] > 0 for c in channels)
    process_j = sum(process.values()) if process_known else None
    process_source = f"attributed:{label}" if process_known else "none"
    process_coverage = min(process_cov.values()) if process_known else None
    if process_known:
        figures.append(
            {
                "name": "process",
                "scope": "process",
                "source": process_source,
                "energy_j": process_j,
                "coverage": process_coverage,
            }
        )
    return EnergyFigures(
        total_j=total,
        by_source_j=by_source_j,
        source=label,
        scope=scope_label(channels),
        coverage=min(coverage.values()),
        coverage_by_source=cov_by_source,
        process_j=process_j,
        process_source=process_source,
        process_coverage=process_coverage,
        figures=figures,
        degraded=sorted({c.name for c in degraded}),
    )
