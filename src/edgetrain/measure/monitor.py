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

from edgetrain.errors import EdgeTrainError
from edgetrain.measure.energy import EnergyIntegrator, compose
from edgetrain.measure.estimate import DEFAULT_CPU_TDP_W
from edgetrain.measure.factory import discover_sensors
from edgetrain.measure.sensor import Sensor, SensorStatus
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
        self.device_mem: float | None = None
        self.power: float | None = None
        self.hwm_first: float | None = None
        self.hwm_last: float | None = None
        self.n = 0

    def update(self, sample: Mapping[str, float]) -> None:
        self.n += 1
        self.rss = _max(self.rss, sample.get("proc_rss_bytes"))
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
    """An open window: the cumulative energy at opening and running peaks."""

    name: str
    start_s: float
    energy_at_open_j: dict[str, float]
    label: str
    peaks: _Peaks = field(default_factory=_Peaks)


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
    ``energy_j`` (their cumulative energy since start). Energy counters (``*_energy_j`` of
    NVML and RAPL) are consumed and left out of samples.

    The monitor never raises into training: a sensor that raises is logged once and dropped,
    a listener that raises is logged once and removed. The one error is opening a second
    window with a name that is already open.

    Listeners are called with a copy of every sample, from the thread that took it (the
    sampler thread, or the caller of :meth:`sample_now` and of window opening and closing),
    one at a time with the monitor's lock held, so rows arrive in order; keep them short.

    Args:
        interval_s: Sampling interval of the background thread (see ``DEFAULT_INTERVAL_S``).
        cpu_tdp_w: TDP for the CPU estimate when sensors are discovered.
        pid: Process whose tree is followed when sensors are discovered; default: this one.
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
        sensors: Sequence[Sensor] | None = None,
        statuses: Sequence[SensorStatus] | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        if not interval_s > 0:
            raise EdgeTrainError(f"interval_s must be > 0 seconds, got {interval_s}")
        if sensors is None:
            found, statuses = discover_sensors(cpu_tdp_w=cpu_tdp_w, pid=pid)
        else:
            found = list(sensors)
            statuses = list(statuses) if statuses is not None else [s.status for s in found]
        self.interval_s = float(interval_s)
        self._sensors: list[Sensor] = list(found)
        self._statuses: list[SensorStatus] = list(statuses)
        self._clock = clock
        self._lock = threading.RLock()
        channels = [c for s in self._sensors for c in s.energy_channels]
        self._counter_keys = {c.energy_key for c in channels if c.energy_key}
        self._energy = EnergyIntegrator(compose(channels))
        self._columns = self._make_columns()
        self._history: deque[Sample] = deque(maxlen=max(1, history))
        self._windows: dict[str, _WindowState] = {}
        self._totals = _Peaks()
        self._listeners: list[Listener] = []
        self._t0: float | None = None
        self._first_t_s: float | None = None
        self._last_t_s: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _make_columns(self) -> list[str]:
        columns = ["t_s"]
        for sensor in self._sensors:
            columns += [
                c for c in sensor.columns if c not in columns and c not in self._counter_keys
            ]
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
        """Sensors still being read."""
        return tuple(self._sensors)

    @property
    def sensor_statuses(self) -> list[SensorStatus]:
        """Status of every sensor tried, updated when one is dropped."""
        with self._lock:
            return list(self._statuses)

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

    def _sample_locked(self) -> Sample:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        t_s = now - self._t0
        values: dict[str, float] = {}
        for sensor in list(self._sensors):
            try:
                values.update(sensor.read())
            except Exception as exc:
                self._drop(sensor, exc)
        power_w = self._energy.update(t_s, values)
        sample: Sample = {"t_s": t_s}
        for key, value in values.items():
            if key not in self._counter_keys:
                sample[key] = value
        if power_w is not None:
            sample["power_w"] = power_w
        total_j = self._energy.total_j
        if total_j is not None:
            sample["energy_j"] = total_j
        for state in self._windows.values():
            state.peaks.update(sample)
        self._totals.update(sample)
        if self._first_t_s is None:
            self._first_t_s = t_s
        self._last_t_s = t_s
        self._history.append(sample)
        self._notify(sample)
        return sample

    def _drop(self, sensor: Sensor, exc: Exception) -> None:
        logger.warning("sensor %s failed and is no longer read: %r", sensor.name, exc)
        self._sensors.remove(sensor)
        self._statuses = [
            SensorStatus(
                s.name, False, f"dropped after an error during monitoring: {exc!r}", s.source_label
            )
            if s.name == sensor.name
            else s
            for s in self._statuses
        ]
        self._energy.set_channels(compose(c for s in self._sensors for c in s.energy_channels))
        try:
            sensor.close()
        except Exception:
            logger.debug("closing sensor %s failed", sensor.name, exc_info=True)

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
                energy_at_open_j=dict(self._energy.by_source_j),
                label=self._energy.label,
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
            energy = {
                source: total - state.energy_at_open_j.get(source, 0.0)
                for source, total in self._energy.by_source_j.items()
            }
            return self._result(
                name, state.start_s, sample["t_s"], energy, state.label, state.peaks
            )

    def totals(self) -> WindowResult:
        """Everything since the monitor started, as a window named ``"total"``."""
        with self._lock:
            end_s = self._last_t_s if self._last_t_s is not None else 0.0
            return self._result(
                "total",
                0.0,
                end_s,
                dict(self._energy.by_source_j),
                self._energy.label,
                self._totals,
            )

    @staticmethod
    def _result(
        name: str,
        start_s: float,
        end_s: float,
        energy_by_source_j: dict[str, float],
        label: str,
        peaks: _Peaks,
    ) -> WindowResult:
        time_s = end_s - start_s
        energy_j = sum(energy_by_source_j.values()) if energy_by_source_j else None
        return WindowResult(
            name=name,
            time_s=time_s,
            energy_j=energy_j,
            energy_by_source_j=energy_by_source_j,
            energy_source=label if energy_j is not None else "none",
            avg_power_w=energy_j / time_s if energy_j is not None and time_s > 0 else None,
            peak_power_w=peaks.power,
            peak_rss_bytes=peaks.peak_rss_bytes(),
            peak_device_mem_bytes=None if peaks.device_mem is None else int(peaks.device_mem),
            n_samples=peaks.n,
            start_s=start_s,
            end_s=end_s,
        )
