"""The monitor: a background sampler thread, measurement windows, listeners."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from edgetrain.errors import EdgeTrainError
from edgetrain.measure.energy import (
    DEGRADED_AFTER,
    EnergyIntegrator,
    EnergyState,
    compose,
    summarise,
)
from edgetrain.measure.estimate import DEFAULT_CPU_TDP_W
from edgetrain.measure.factory import discover_sensors
from edgetrain.measure.sensor import EnergyChannel, Sensor, SensorStatus
from edgetrain.measure.window import Window, WindowResult

__all__ = ["DEFAULT_HISTORY", "DEFAULT_INTERVAL_S", "Listener", "Monitor", "Sample"]

logger = logging.getLogger(__name__)

#: Default sampling interval, seconds. One sample costs about 1 ms of CPU from the sampler's
#: cold wake-up (0.14 ms warm) on the 2-core dev VM (process tree and system figures from
#: /proc, no GPU; a few NVML calls more with a GPU), so 5 Hz uses about 0.5% of one core;
#: benchmarks/monitor_overhead.py bounds the training slowdown at 0.6% (measured at 10x
#: the rate and scaled back). Faster buys little: NVML power is itself a 1-second average,
#: and energy comes from counter differences where counters exist. Slower would miss more
#: RSS peaks and leave short epochs with few samples (a window adds a sample at each end).
DEFAULT_INTERVAL_S = 0.2

#: Samples kept in memory (a ring buffer; windows and totals are accumulated incrementally
#: and do not need old samples). 1024 samples at 0.2 s is the last 3.4 minutes, about 1 MB.
DEFAULT_HISTORY = 1024

Sample = dict[str, float]
Listener = Callable[[Sample], None]


class _Peaks:
    """Running maxima over samples (incremental, constant memory)."""

    def __init__(self) -> None:
        self.rss: float | None = None
        self.pss: float | None = None
        self.device_mem: float | None = None
        self.power: float | None = None
        self.hwm_first: float | None = None
        self.hwm_last: float | None = None
        self.n = 0

    def update(self, sample: Mapping[str, float]) -> None:
        self.n += 1
        self.rss = _max(self.rss, sample.get("proc_rss_bytes"))
        self.pss = _max(self.pss, sample.get("proc_pss_bytes"))
        self.device_mem = _max(self.device_mem, sample.get("gpu_mem_bytes"))
        self.power = _max(self.power, sample.get("power_w"))
        hwm = sample.get("proc_hwm_bytes")
        if hwm is not None:
            if self.hwm_first is None:
                self.hwm_first = hwm
            self.hwm_last = hwm

    def peak_rss_bytes(self) -> int | None:
        peak = self.rss
        if (
            self.hwm_last is not None
            and self.hwm_first is not None
            and self.hwm_last > self.hwm_first
        ):
            peak = _max(peak, self.hwm_last)  # the main process set a new peak in the window
        return None if peak is None else int(peak)


def _max(a: float | None, b: float | None) -> float | None:
    if b is None:
        return a
    return b if a is None or b > a else a


@dataclass
class _WindowState:
    """An open window: the cumulative energy at opening, running peaks, degraded channels."""

    name: str
    start_s: float
    energy_at_open: EnergyState
    peaks: _Peaks = field(default_factory=_Peaks)
    degraded: set[EnergyChannel] = field(default_factory=set)


@dataclass
class _Health:
    """Read failures of one sensor: the consecutive count, the total, what went wrong."""

    failing: int = 0
    since_s: float = 0.0
    failed_reads: int = 0
    last_error: str | None = None
    reads_degraded: bool = False
    degraded: set[str] = field(default_factory=set)  # channel names
    note: str | None = None


def _sync_cuda() -> None:
    """Wait for queued CUDA work so that a window's edges fall where the caller thinks.

    Only when this process already imported torch and initialised CUDA (never imports torch).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # host-device sync point
    except Exception:
        logger.debug("torch.cuda.synchronize failed", exc_info=True)


class Monitor:
    """Samples sensors in a background thread and measures named windows.

    Each sample is a dict: ``t_s`` (seconds since the monitor started), every sensor's
    values (see :attr:`columns`), ``power_w`` (total power of the counted energy sources) and
    ``energy_j`` (their cumulative energy since start). Internal values (energy counters,
    the process tree's CPU time) are consumed and left out of samples.

    The monitor never raises into training. A sensor whose read raises is retried at once;
    when that fails too its values are missing from that sample, and it is read again at
    the next one. A channel (one GPU, one CPU package) without a value for
    :data:`~edgetrain.measure.energy.DEGRADED_AFTER` samples in a row is *degraded*: it is
    logged once, listed in the window results and the sensor's status, and the windows'
    ``energy_coverage`` says which share of their time the energy figures cover (the label
    then reads ``partial:<source>``). Other devices and sensors are not affected. A listener
    that raises is logged once and removed. The one error is opening a second window with
    a name that is already open.

    Listeners are called with a copy of every sample, from the thread that took it (the
    sampler thread, or the caller of :meth:`sample_now` and of window opening and closing),
    one at a time with the monitor's lock held, so rows arrive in order; keep them short.

    Args:
        interval_s: Sampling interval of the background thread (see ``DEFAULT_INTERVAL_S``).
        cpu_tdp_w: TDP for the CPU estimate when sensors are discovered.
        pid: Process whose tree is followed when sensors are discovered (memory, the
            attributed energy); default: this one.
        devices: GPUs to measure when sensors are discovered, as ``CUDA_VISIBLE_DEVICES``
            is written (indices, ``GPU-`` or ``MIG-`` UUIDs) or ``"all"``; default: see
            :class:`~edgetrain.measure.nvml.NvmlSensor`.
        sensors: Sensors to read; default: :func:`discover_sensors`. The monitor owns them
            and closes them in :meth:`close`.
        statuses: Statuses of every sensor tried, unused ones included (when ``sensors`` is
            given); default: the statuses of ``sensors``.
        clock: Monotonic clock in seconds for timestamps (tests inject a fake one; the thread
            still sleeps in real time).
        history: Number of recent samples kept for :meth:`recent_samples`.
    """

    def __init__(
        self,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        cpu_tdp_w: float = DEFAULT_CPU_TDP_W,
        pid: int | None = None,
        devices: str | None = None,
        sensors: Sequence[Sensor] | None = None,
        statuses: Sequence[SensorStatus] | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        if not interval_s > 0:
            raise EdgeTrainError(f"interval_s must be > 0 seconds, got {interval_s}")
        if sensors is None:
            found, statuses = discover_sensors(cpu_tdp_w=cpu_tdp_w, pid=pid, devices=devices)
        else:
            found = list(sensors)
            statuses = list(statuses) if statuses is not None else [s.status for s in found]
        self.interval_s = float(interval_s)
        self._sensors: list[Sensor] = list(found)
        self._statuses: list[SensorStatus] = list(statuses)
        self._clock = clock
        self._lock = threading.RLock()
        self._owner: dict[EnergyChannel, str] = {
            c: s.name for s in self._sensors for c in s.energy_channels
        }
        self._energy = EnergyIntegrator(compose(self._owner))
        self._health: dict[str, _Health] = {s.name: _Health() for s in self._sensors}
        self._columns = self._make_columns()
        self._column_set = frozenset(self._columns)
        self._history: deque[Sample] = deque(maxlen=max(1, history))
        self._windows: dict[str, _WindowState] = {}
        self._totals = _Peaks()
        self._totals_degraded: set[EnergyChannel] = set()
        self._listeners: list[Listener] = []
        self._t0: float | None = None
        self._first_t_s: float | None = None
        self._last_t_s: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _make_columns(self) -> list[str]:
        internal = {k for c in self._owner for k in c.internal_keys}
        columns = ["t_s"]
        for sensor in self._sensors:
            columns += [c for c in sensor.columns if c not in columns and c not in internal]
        if any(c.power_key for c in self._energy.channels):
            columns.append("power_w")
        if self._energy.channels:
            columns.append("energy_j")
        return columns

    # -- public properties ---------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        """Every key a sample may hold, in a fixed order (the resources.csv header)."""
        return list(self._columns)

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        """The sensors being read."""
        return tuple(self._sensors)

    @property
    def sensor_statuses(self) -> list[SensorStatus]:
        """Status of every sensor tried; a failing sensor's reason says what fails."""
        with self._lock:
            out = []
            for s in self._statuses:
                health = self._health.get(s.name)
                if health is None or health.note is None:
                    out.append(s)
                    continue
                out.append(
                    SensorStatus(
                        s.name,
                        s.available,
                        f"{s.reason}; {health.note}",
                        s.source_label,
                        degraded=health.reads_degraded or bool(health.degraded),
                    )
                )
            return out

    @property
    def energy_source(self) -> str:
        """Label of the counted energy sources, e.g. ``measured:nvml+estimated:cpu-tdp``."""
        return self._energy.label

    @property
    def sample_rate_hz(self) -> float:
        """Achieved rate over all samples so far (0.0 before two samples)."""
        with self._lock:
            n = self._totals.n
            if n < 2 or self._first_t_s is None or self._last_t_s is None:
                return 0.0
            span = self._last_t_s - self._first_t_s
            return (n - 1) / span if span > 0 else 0.0

    @property
    def running(self) -> bool:
        """Whether the sampler thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # -- sampling ------------------------------------------------------------------------

    def sample_now(self) -> Sample:
        """Take one sample now (also used by windows and tests); returns a copy."""
        with self._lock:
            return dict(self._sample_locked())

    def _read(self, sensor: Sensor, t_s: float) -> dict[str, float]:
        """Read a sensor, retrying once; record failures and recoveries."""
        health = self._health.setdefault(sensor.name, _Health())
        error: Exception | None = None
        for _ in range(2):
            try:
                values = sensor.read()
            except Exception as exc:
                error = exc
                continue
            if health.failing:
                if health.reads_degraded:
                    health.reads_degraded = False
                    logger.info(
                        "sensor %s reads again after %d failed reads", sensor.name, health.failing
                    )
                health.note = (
                    f"recovered at t={t_s:.1f} s; {health.failed_reads} failed reads in all, "
                    f"last: {health.last_error}"
                )
                health.failing = 0
            return values
        if not health.failing:
            health.since_s = t_s
        health.failing += 1
        health.failed_reads += 1
        health.last_error = repr(error)
        if health.failing == 1:
            logger.warning(
                "sensor %s failed to read (retried once; read again at the next sample): %r",
                sensor.name,
                error,
            )
        if health.failing >= DEGRADED_AFTER:
            health.reads_degraded = True
        health.note = (
            f"degraded since t={health.since_s:.1f} s: {health.failing} reads in a row failed, "
            f"last: {health.last_error}"
            if health.failing >= DEGRADED_AFTER
            else f"read failed at t={t_s:.1f} s: {health.last_error}"
        )
        return {}

    def _track_channels(self, t_s: float) -> set[EnergyChannel]:
        """Log channels that became degraded or recovered; return the degraded ones."""
        degraded = set(self._energy.degraded())
        for c in self._energy.channels:
            health = self._health.setdefault(self._owner.get(c, c.source), _Health())
            if c in degraded and c.name not in health.degraded:
                health.degraded.add(c.name)
                logger.warning(
                    "energy channel %s has had no value for %d samples; its figures cover "
                    "only the time it was read (see energy_coverage)",
                    c.name,
                    self._energy.misses.get(c, 0),
                )
                health.note = f"degraded at t={t_s:.1f} s: no value from {c.name}"
                if health.failing:
                    health.note += f" (its reads fail: {health.last_error})"
            elif c not in degraded and c.name in health.degraded:
                health.degraded.discard(c.name)
                logger.info("energy channel %s reads again", c.name)
                health.note = f"{c.name} degraded, recovered at t={t_s:.1f} s"
        return degraded

    def _sample_locked(self) -> Sample:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        t_s = now - self._t0
        values: dict[str, float] = {}
        for sensor in self._sensors:
            values.update(self._read(sensor, t_s))
        power_w = self._energy.update(t_s, values)
        degraded = self._track_channels(t_s)
        sample: Sample = {"t_s": t_s}
        for key, value in values.items():
            if key in self._column_set:
                sample[key] = value
        if power_w is not None:
            sample["power_w"] = power_w
        total_j = self._energy.total_j
        if total_j is not None:
            sample["energy_j"] = total_j
        for state in self._windows.values():
            state.peaks.update(sample)
            state.degraded |= degraded
        self._totals.update(sample)
        self._totals_degraded |= degraded
        if self._first_t_s is None:
            self._first_t_s = t_s
        self._last_t_s = t_s
        self._history.append(sample)
        self._notify(sample)
        return sample

    def _notify(self, sample: Sample) -> None:
        for listener in list(self._listeners):
            try:
                listener(dict(sample))
            except Exception as exc:
                logger.warning("monitor listener %r failed and was removed: %r", listener, exc)
                self._listeners.remove(listener)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(sample)`` for every sample from now on."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def recent_samples(self) -> list[Sample]:
        """The last ``history`` samples, oldest first."""
        with self._lock:
            return [dict(s) for s in self._history]

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> Monitor:
        """Start the sampler thread (a no-op when running); takes a first sample at once."""
        with self._lock:
            if self.running:
                return self
            if self._t0 is None:
                self._t0 = self._clock()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edgetrain-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        next_s = time.monotonic()
        while True:
            try:
                self.sample_now()
            except Exception:  # a bug here must not kill the thread silently, nor training
                logger.warning("monitor sample failed", exc_info=True)
            next_s += self.interval_s
            delay = next_s - time.monotonic()
            if delay < 0:  # fell behind (a slow sensor, a busy machine): skip, don't burst
                next_s = time.monotonic()
                delay = 0.0
            if self._stop.wait(delay):
                return

    def stop(self) -> None:
        """Stop the sampler thread and wait for it; windows keep working on demand."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, 5 * self.interval_s))
            if thread.is_alive():
                logger.warning("monitor thread did not stop within the timeout")
        self._thread = None

    def close(self) -> None:
        """Stop and close the sensors (NVML handles)."""
        self.stop()
        with self._lock:
            for sensor in self._sensors:
                try:
                    sensor.close()
                except Exception:
                    logger.debug("closing sensor %s failed", sensor.name, exc_info=True)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- windows -------------------------------------------------------------------------

    def window(self, name: str) -> Window:
        """A window handle: ``with monitor.window("epoch-3") as w: ...`` then ``w.result``."""
        return Window(self, name)

    def _check_free(self, name: str) -> None:
        if name in self._windows:
            raise EdgeTrainError(
                f"a measurement window named {name!r} is already open; "
                "open windows need distinct names"
            )

    def _open_window(self, name: str) -> None:
        with self._lock:
            self._check_free(name)
        _sync_cuda()
        with self._lock:
            self._check_free(name)
            sample = self._sample_locked()
            state = _WindowState(
                name=name,
                start_s=sample["t_s"],
                energy_at_open=self._energy.snapshot(),
                degraded=set(self._energy.degraded()),
            )
            state.peaks.update(sample)
            self._windows[name] = state

    def _close_window(self, name: str) -> WindowResult:
        with self._lock:
            if name not in self._windows:
                raise EdgeTrainError(f"no open measurement window named {name!r}")
        _sync_cuda()
        with self._lock:
            state = self._windows.get(name)
            if state is None:  # closed by another thread meanwhile
                raise EdgeTrainError(f"no open measurement window named {name!r}")
            sample = self._sample_locked()
            del self._windows[name]
            return self._result(
                name,
                state.start_s,
                sample["t_s"],
                state.energy_at_open,
                state.peaks,
                state.degraded,
            )

    def totals(self) -> WindowResult:
        """Everything from the first sample to the last, as a window named ``"total"``."""
        with self._lock:
            start_s = self._first_t_s if self._first_t_s is not None else 0.0
            end_s = self._last_t_s if self._last_t_s is not None else start_s
            return self._result(
                "total", start_s, end_s, EnergyState(), self._totals, self._totals_degraded
            )

    def summary(self) -> dict[str, Any]:
        """JSON-ready totals for a run's summary: the sampling, every energy figure with its
        scope, source and coverage, the attributed process figure, degraded channels, and
        the sensors' statuses (with what failed during the run)."""
        t = self.totals()
        return {
            "interval_s": self.interval_s,
            "sample_rate_hz": self.sample_rate_hz,
            "energy_j": t.energy_j,
            "energy_source": t.energy_source,
            "energy_scope": t.energy_scope,
            "energy_coverage": t.energy_coverage,
            "energy_by_source_j": t.energy_by_source_j,
            "energy_process_j": t.energy_process_j,
            "energy_process_source": t.energy_process_source,
            "energy_process_coverage": t.energy_process_coverage,
            "energy_figures": t.energy_figures,
            "degraded": t.degraded,
            "peak_rss_bytes": t.peak_rss_bytes,
            "peak_pss_bytes": t.peak_pss_bytes,
            "peak_device_mem_bytes": t.peak_device_mem_bytes,
            "sensors": [s.to_dict() for s in self.sensor_statuses],
        }

    def _result(
        self,
        name: str,
        start_s: float,
        end_s: float,
        energy_at_open: EnergyState,
        peaks: _Peaks,
        degraded: set[EnergyChannel],
    ) -> WindowResult:
        time_s = end_s - start_s
        figures = summarise(
            self._energy.channels, energy_at_open, self._energy.snapshot(), time_s, degraded
        )
        energy_j = figures.total_j
        return WindowResult(
            name=name,
            time_s=time_s,
            energy_j=energy_j,
            energy_by_source_j=figures.by_source_j,
            energy_source=figures.source,
            avg_power_w=energy_j / time_s if energy_j is not None and time_s > 0 else None,
            peak_power_w=peaks.power,
            peak_rss_bytes=peaks.peak_rss_bytes(),
            peak_device_mem_bytes=None if peaks.device_mem is None else int(peaks.device_mem),
            n_samples=peaks.n,
            start_s=start_s,
            end_s=end_s,
            energy_scope=figures.scope,
            energy_coverage=figures.coverage,
            energy_coverage_by_source=figures.coverage_by_source,
            energy_process_j=figures.process_j,
            energy_process_source=figures.process_source,
            energy_process_coverage=figures.process_coverage,
            energy_figures=figures.figures,
            degraded=figures.degraded,
            peak_pss_bytes=None if peaks.pss is None else int(peaks.pss),
        )
