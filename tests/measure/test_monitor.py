"""Monitor: deterministic windows with a fake clock, then the real sampler thread."""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.measure import EnergyChannel, Monitor, WindowResult

POWER = EnergyChannel("fake", "board", True, power_key="board_power_w")


def trace_monitor(
    fakes: SimpleNamespace, trace: dict[float, float], **kwargs: Any
) -> tuple[Monitor, Any]:
    """A monitor over a sensor whose power follows ``trace`` {clock offset: watts}."""
    clock = fakes.FakeClock(start=0.0)
    sensor = fakes.ScriptedSensor(
        lambda: {"board_power_w": trace[round(clock.now, 6)]}, channels=(POWER,)
    )
    return Monitor(sensors=[sensor], clock=clock, **kwargs), clock


def test_window_integrates_a_known_trace_exactly(fakes: SimpleNamespace) -> None:
    trace = {0.0: 10.0, 1.0: 20.0, 2.0: 20.0, 3.0: 10.0, 4.0: 0.0}
    monitor, clock = trace_monitor(fakes, trace)
    monitor.sample_now()  # t=0, before the window
    clock.advance(1.0)
    window = monitor.window("epoch-1").open()  # opening sample at t=1
    for _ in range(2):
        clock.advance(1.0)
        monitor.sample_now()
    clock.advance(1.0)
    result = window.close()  # closing sample at t=4
    assert isinstance(result, WindowResult)
    assert window.result is result
    # trapezoid over t=1..4: (20+20)/2 + (20+10)/2 + (10+0)/2 = 40 J
    assert result.energy_j == pytest.approx(40.0)
    assert result.energy_by_source_j == {"fake": pytest.approx(40.0)}
    assert result.energy_source == "measured:fake"
    assert result.time_s == pytest.approx(3.0)
    assert result.avg_power_w == pytest.approx(40.0 / 3.0)
    assert result.peak_power_w == pytest.approx(20.0)
    assert result.n_samples == 4
    assert (result.start_s, result.end_s) == (pytest.approx(1.0), pytest.approx(4.0))
    assert monitor.totals().energy_j == pytest.approx(15.0 + 40.0)
    with pytest.raises(AttributeError):
        result.energy_j = 0.0  # type: ignore[misc]  # frozen


def test_short_window_is_covered_by_its_edge_samples(fakes: SimpleNamespace) -> None:
    monitor, clock = trace_monitor(fakes, {0.0: 8.0, 0.25: 8.0})
    with monitor.window("short") as w:
        clock.advance(0.25)
    assert w.result is not None
    assert w.result.energy_j == pytest.approx(2.0)
    assert w.result.n_samples == 2


def test_windows_nest_and_names_must_be_unique(fakes: SimpleNamespace) -> None:
    trace = {float(t): 10.0 for t in range(10)}
    monitor, clock = trace_monitor(fakes, trace)
    with monitor.window("outer") as outer:
        clock.advance(1.0)
        with monitor.window("inner") as inner:
            clock.advance(2.0)
            with pytest.raises(EdgeTrainError, match="already open"), monitor.window("inner"):
                pass
        clock.advance(1.0)
    assert inner.result is not None and outer.result is not None
    assert inner.result.energy_j == pytest.approx(20.0)
    assert outer.result.energy_j == pytest.approx(40.0)
    with monitor.window("inner") as again:  # a closed name can be used again
        clock.advance(1.0)
    assert again.result is not None and again.result.energy_j == pytest.approx(10.0)
    with pytest.raises(EdgeTrainError, match="no open"):
        monitor.window("never").close()


def test_bounded_history_still_integrates_everything(fakes: SimpleNamespace) -> None:
    trace = {round(0.5 * i, 6): 4.0 for i in range(50)}
    monitor, clock = trace_monitor(fakes, trace, history=5)
    with monitor.window("long") as w:
        for _ in range(40):
            clock.advance(0.5)
            monitor.sample_now()
    assert len(monitor.recent_samples()) == 5
    assert w.result is not None
    assert w.result.energy_j == pytest.approx(4.0 * 20.0)
    assert w.result.n_samples == 42


def test_peak_rss_uses_samples_and_the_high_water_mark(fakes: SimpleNamespace) -> None:
    mem = {"proc_rss_bytes": 100.0, "proc_hwm_bytes": 500.0}
    sensor = fakes.ScriptedSensor(lambda: dict(mem))
    monitor = Monitor(sensors=[sensor], clock=fakes.FakeClock())
    with monitor.window("a") as a:
        mem["proc_rss_bytes"] = 300.0
        monitor.sample_now()
    assert a.result is not None
    # the high-water mark (500) predates the window: only the samples count
    assert a.result.peak_rss_bytes == 300
    with monitor.window("b") as b:
        mem["proc_hwm_bytes"] = 900.0  # a peak between samples, seen through VmHWM
    assert b.result is not None and b.result.peak_rss_bytes == 900
    assert b.result.energy_j is None and b.result.energy_source == "none"
    assert b.result.peak_device_mem_bytes is None


def test_failing_sensor_is_retried_not_dropped_and_logged_once(
    fakes: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    clock = fakes.FakeClock(start=0.0)
    calls = {"n": 0}

    def flaky() -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("device unplugged")
        return {"gpu0_power_w": 50.0}

    gpu = fakes.ScriptedSensor(
        flaky,
        name="flaky",
        channels=(EnergyChannel("flaky", "gpu", True, power_key="gpu0_power_w"),),
        columns=("gpu0_power_w",),
    )
    cpu = fakes.ScriptedSensor(
        lambda: {"cpu_power_w": 10.0},
        name="steady",
        channels=(EnergyChannel("steady", "cpu", True, power_key="cpu_power_w"),),
    )
    monitor = Monitor(sensors=[gpu, cpu], clock=clock)
    with caplog.at_level(logging.WARNING, logger="edgetrain.measure.monitor"):
        for _ in range(5):
            monitor.sample_now()
            clock.advance(1.0)
    warnings = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert len(warnings) == 2  # the first failed read, and the channel turning degraded
    assert not gpu.closed and gpu in monitor.sensors  # still read, in case it comes back
    assert calls["n"] == 2 + 3 * 2  # every failed read was retried once
    status = next(s for s in monitor.sensor_statuses if s.name == "flaky")
    assert status.available and status.degraded and "device unplugged" in status.reason
    totals = monitor.totals()
    assert totals.energy_by_source_j["flaky"] == pytest.approx(50.0)  # t=0..1 only
    assert totals.energy_by_source_j["steady"] == pytest.approx(40.0)
    assert totals.energy_coverage_by_source == {"flaky": 0.25, "steady": 1.0}
    assert totals.energy_coverage == 0.25
    assert totals.energy_source == "measured:steady+partial:flaky"
    assert totals.degraded == ["flaky"]


def test_a_sensor_that_comes_back_counts_again(fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock(start=0.0)
    broken = {"now": False}

    def values() -> dict[str, float]:
        if broken["now"]:
            raise OSError("i2c timeout")
        return {"board_power_w": 10.0}

    sensor = fakes.ScriptedSensor(values, channels=(POWER,), columns=("board_power_w",))
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        clock.advance(1.0)
        monitor.sample_now()
        broken["now"] = True
        clock.advance(1.0)
        monitor.sample_now()  # one missed sample: not degraded yet
        broken["now"] = False
        clock.advance(1.0)
        monitor.sample_now()
        clock.advance(1.0)
    assert w.result is not None
    assert w.result.energy_j == pytest.approx(20.0)  # 0..1 and 3..4; 1..3 unknown
    assert w.result.energy_coverage == pytest.approx(0.5)
    assert w.result.energy_source == "partial:fake"
    assert w.result.degraded == []
    status = monitor.sensor_statuses[0]
    assert not status.degraded and "recovered" in status.reason


def test_process_share_of_cpu_energy(fakes: SimpleNamespace) -> None:
    """The tree's share of the machine's busy CPU time, interval by interval."""
    clock = fakes.FakeClock(start=0.0)
    cpu = {"proc_cpu_s": 0.0, "cpu_busy_s": 0.0, "cpu_power_w": 20.0}
    channel = EnergyChannel(
        "rapl", "cpu", True, power_key="cpu_power_w", power_is_interval_mean=True
    )
    sensor = fakes.ScriptedSensor(lambda: dict(cpu), channels=(channel,), columns=("cpu_power_w",))
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        clock.advance(1.0)
        cpu["proc_cpu_s"] += 1.0  # the job: one core for the whole second
        cpu["cpu_busy_s"] += 1.0  # nothing else ran
        monitor.sample_now()
        clock.advance(1.0)
        cpu["proc_cpu_s"] += 1.0
        cpu["cpu_busy_s"] += 2.0  # another process used the second core
        cpu["cpu_power_w"] = 30.0
    result = w.result
    assert result is not None
    assert result.energy_j == pytest.approx(50.0)  # the machine: 20 J + 30 J
    assert result.energy_process_j == pytest.approx(20.0 + 15.0)  # all of 1, half of 2
    assert result.energy_process_source == "attributed:measured:rapl"
    assert result.energy_process_coverage == 1.0
    assert "proc_cpu_s" not in monitor.recent_samples()[-1]  # internal, not a column
    names = [f["name"] for f in result.energy_figures]
    assert names == ["total", "rapl", "process"]
    assert all({"scope", "source", "energy_j", "coverage"} <= set(f) for f in result.energy_figures)


def test_without_process_times_there_is_no_process_figure(fakes: SimpleNamespace) -> None:
    monitor, clock = trace_monitor(fakes, {0.0: 10.0, 1.0: 10.0})
    with monitor.window("w") as w:
        clock.advance(1.0)
    assert w.result is not None
    assert w.result.energy_process_j is None and w.result.energy_process_source == "none"
    assert w.result.energy_scope == "machine" and w.result.energy_coverage == 1.0


def test_listeners_get_samples_and_a_failing_one_is_removed(
    fakes: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    monitor, clock = trace_monitor(fakes, {float(t): 1.0 for t in range(5)})
    received: list[dict[str, float]] = []

    def broken(sample: dict[str, float]) -> None:
        raise ValueError("disk full")

    monitor.add_listener(received.append)
    monitor.add_listener(broken)
    with caplog.at_level(logging.WARNING, logger="edgetrain.measure.monitor"):
        for _ in range(3):
            monitor.sample_now()
            clock.advance(1.0)
    assert [s["t_s"] for s in received] == [0.0, 1.0, 2.0]
    assert set(received[-1]) == {"t_s", "board_power_w", "power_w", "energy_j"}
    assert received[-1]["energy_j"] == pytest.approx(2.0)
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1
    received[-1]["epoch"] = 3  # listeners get copies
    assert "epoch" not in monitor.recent_samples()[-1]


def test_columns_are_fixed_and_exclude_counters(fakes: SimpleNamespace) -> None:
    sensor = fakes.ScriptedSensor(
        lambda: {"gpu0_power_w": 1.0, "gpu0_energy_j": 7.0},
        channels=(EnergyChannel("nvml", "gpu", True, "gpu0_power_w", "gpu0_energy_j"),),
        columns=("gpu0_power_w",),
    )
    monitor = Monitor(sensors=[sensor], clock=fakes.FakeClock())
    assert monitor.columns == ["t_s", "gpu0_power_w", "power_w", "energy_j"]
    assert set(monitor.sample_now()) == set(monitor.columns)


def test_bad_interval() -> None:
    with pytest.raises(EdgeTrainError, match="interval_s must be > 0"):
        Monitor(interval_s=0, sensors=[])


def test_thread_samples_and_stops(fakes: SimpleNamespace) -> None:
    sensor = fakes.ScriptedSensor(lambda: {"x_pct": 1.0})
    got = threading.Event()
    threads: set[str] = set()

    def listener(sample: dict[str, float]) -> None:
        threads.add(threading.current_thread().name)
        got.set()

    monitor = Monitor(sensors=[sensor], interval_s=0.02)
    monitor.add_listener(listener)
    with monitor:
        thread = monitor._thread
        assert thread is not None and thread.daemon and thread.name == "edgetrain-monitor"
        assert got.wait(2.0)
        time.sleep(0.4)
        assert monitor.running
    assert not thread.is_alive() and not monitor.running
    assert "edgetrain-monitor" in threads
    n = sensor.reads
    assert n >= 5  # about 20 expected; lenient for a loaded machine
    assert 5.0 < monitor.sample_rate_hz < 80.0
    assert sensor.closed
    time.sleep(0.05)
    assert sensor.reads == n  # nothing samples after stop


def test_thread_and_windows_together(fakes: SimpleNamespace) -> None:
    sensor = fakes.ScriptedSensor(lambda: {"board_power_w": 10.0}, channels=(POWER,))
    with Monitor(sensors=[sensor], interval_s=0.01) as monitor, monitor.window("w") as w:
        time.sleep(0.15)
    assert w.result is not None
    assert w.result.n_samples >= 4
    assert w.result.energy_j == pytest.approx(10.0 * w.result.time_s)


def test_real_sensors_catch_this_process_allocating() -> None:
    with Monitor(interval_s=0.05) as monitor:
        with monitor.window("alloc") as w:
            block = b"\x01" * (64 * 1024**2)
            time.sleep(0.15)
        del block
        with monitor.window("idle") as idle:
            time.sleep(0.05)
    assert w.result is not None and idle.result is not None
    before = monitor.recent_samples()[0]["proc_rss_bytes"]
    assert w.result.peak_rss_bytes is not None
    assert w.result.peak_rss_bytes >= before + 60 * 1024**2
    assert w.result.energy_source in ("estimated:cpu-tdp", "measured:rapl")
    assert w.result.energy_process_j is not None
    assert 0 <= w.result.energy_process_j <= (w.result.energy_j or 0) + 1e-9
    assert w.result.energy_process_source.startswith("attributed:")
    assert w.result.peak_pss_bytes is None or w.result.peak_pss_bytes > 0
    statuses = {s.name: s for s in monitor.sensor_statuses}
    assert {"nvml", "jetson", "rapl", "psutil", "cpu-tdp"} <= set(statuses)


def test_windows_synchronise_cuda_when_in_use(
    fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[str] = []
    cuda = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        synchronize=lambda: syncs.append("sync"),
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    monitor = Monitor(
        sensors=[fakes.ScriptedSensor(lambda: {"x_pct": 1.0})], clock=fakes.FakeClock()
    )
    with monitor.window("epoch"):
        assert syncs == ["sync"]
    assert syncs == ["sync", "sync"]
    monitor.sample_now()  # plain samples do not synchronise
    assert len(syncs) == 2


def test_epoch_fields_and_summary_carry_scope_source_and_coverage(
    fakes: SimpleNamespace,
) -> None:
    import json

    from edgetrain.measure import EPOCH_FIELDS

    clock = fakes.FakeClock(start=0.0)
    times = {"proc_cpu_s": 0.0, "cpu_busy_s": 0.0, "board_power_w": 10.0}
    sensor = fakes.ScriptedSensor(
        lambda: dict(times), channels=(POWER,), columns=("board_power_w",)
    )
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("epoch-1") as w:
        clock.advance(2.0)
        times["proc_cpu_s"] += 1.0
        times["cpu_busy_s"] += 2.0
    assert w.result is not None
    fields = w.result.epoch_fields()
    assert tuple(fields) == EPOCH_FIELDS
    assert fields["energy_j"] == pytest.approx(20.0)
    assert fields["energy_process_j"] == pytest.approx(10.0)  # half the busy time: board x 0.5
    assert fields["energy_scope"] == "machine" and fields["energy_coverage"] == 1.0
    assert fields["energy_process_source"] == "attributed:measured:fake"
    summary = monitor.summary()
    json.dumps(summary)
    assert summary["energy_j"] == pytest.approx(20.0)
    assert {f["name"] for f in summary["energy_figures"]} == {"total", "fake", "process"}
    assert summary["sensors"][0]["name"] == "scripted"
