"""psutil sensor: process tree, USS throttling, a process that has exited; the CPU estimate."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.measure import CpuTdpEstimate, PsutilSensor
from edgetrain.measure.psutil_sensor import CpuUtilisation


def test_uss_is_read_rarely(fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    sensor = PsutilSensor(clock=clock, uss_min_interval_s=2.0)
    if "proc_uss_bytes" not in sensor.columns:
        pytest.skip("no USS on this platform")
    first = sensor.read()
    assert first["proc_uss_bytes"] > 0
    assert first["proc_rss_bytes"] >= first["proc_uss_bytes"] * 0.5
    assert "proc_uss_bytes" not in sensor.read()  # too soon
    clock.advance(2.5)
    assert "proc_uss_bytes" in sensor.read()


def test_children_are_counted_and_exit_is_not_an_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        alone = PsutilSensor(child.pid).read()["proc_rss_bytes"]
        with_child = PsutilSensor().read()["proc_rss_bytes"]
        assert alone > 0
        assert with_child >= alone  # our tree includes the child
    finally:
        child.kill()
        child.wait()
    values = PsutilSensor(child.pid).read()
    assert set(values) == {"cpu_pct", "ram_used_bytes"}


def test_cpu_utilisation_range() -> None:
    util = CpuUtilisation()
    sum(i * i for i in range(200_000))
    assert 0.0 <= util.percent() <= 100.0


def test_estimate_scales_with_tdp(monkeypatch: pytest.MonkeyPatch) -> None:
    estimate = CpuTdpEstimate(20.0)
    monkeypatch.setattr(estimate._cpu, "percent", lambda: 25.0)
    assert estimate.read() == {"cpu_power_est_w": pytest.approx(5.0)}
    (channel,) = estimate.energy_channels
    assert not channel.measured and channel.power_is_interval_mean
    assert estimate.status.source_label == "estimated:cpu-tdp"
    with pytest.raises(EdgeTrainError, match="cpu_tdp_w must be > 0"):
        CpuTdpEstimate(-1)


def test_proc_fast_paths_agree_with_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from edgetrain.measure import proctree

    fast_used = proctree.ram_used_bytes()
    fast_total, fast_idle = proctree.cpu_total_idle()
    monkeypatch.setattr(proctree, "_IS_LINUX", False)  # the portable psutil path
    vm = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: vm)  # one reading for both
    slow_used = proctree.ram_used_bytes()
    slow_total, slow_idle = proctree.cpu_total_idle()
    assert slow_used == vm.total - vm.available
    assert abs(fast_used - slow_used) < 0.05 * vm.total  # RAM moves a little between reads
    assert 0 < fast_idle < fast_total and 0 < slow_idle < slow_total
    # /proc/stat counts clock ticks, psutil seconds: the idle share is the same
    assert fast_idle / fast_total == pytest.approx(slow_idle / slow_total, abs=0.01)
