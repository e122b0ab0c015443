"""psutil sensor: process tree, USS throttling, a process that has exited; the CPU estimate."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    gone = PsutilSensor(child.pid)
    values = gone.read()
    assert {k for k in values if k in gone.columns} == {"cpu_pct", "ram_used_bytes"}
    assert "proc_cpu_s" not in values  # nothing to attribute to a process that is gone


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


def test_pss_from_a_fake_smaps_rollup(tmp_path, fakes: SimpleNamespace) -> None:
    """A parent and a forked worker sharing 90 MiB: RSS counts it twice, PSS once."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        root = tmp_path / "proc"
        me = os.getpid()
        fakes.make_smaps_rollup(root, me, rss_kb=100 * 1024, pss_kb=55 * 1024, uss_kb=10 * 1024)
        fakes.make_smaps_rollup(
            root, child.pid, rss_kb=95 * 1024, pss_kb=50 * 1024, uss_kb=5 * 1024
        )
        sensor = PsutilSensor(proc_root=root)
        if "proc_pss_bytes" not in sensor.columns:
            pytest.skip("no smaps_rollup on this platform")
        values = sensor.read()
        assert values["proc_pss_bytes"] == 105 * 1024**2
        assert values["proc_uss_bytes"] == 15 * 1024**2
        assert values["proc_rss_bytes"] > 0  # RSS comes from statm, as before
    finally:
        child.kill()
        child.wait()


def test_unreadable_smaps_rollup_falls_back_to_psutil_uss(tmp_path) -> None:
    sensor = PsutilSensor(proc_root=tmp_path / "empty")
    if "proc_uss_bytes" not in sensor.columns:
        pytest.skip("no USS on this platform")
    values = sensor.read()
    assert values["proc_uss_bytes"] > 0 and "proc_pss_bytes" not in values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="smaps_rollup is Linux")
def test_real_forked_tree_rss_double_counts_and_pss_does_not(tmp_path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import os, sys, time\n"
        f"b = bytearray({96 * 1024**2}); b[::4096] = b'x' * len(b[::4096])\n"
        "if os.fork() == 0:\n"
        "    time.sleep(30); os._exit(0)\n"
        f"open({str(ready)!r}, 'w').close(); time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        time.sleep(0.2)
        values = PsutilSensor(parent.pid).read()
        if "proc_pss_bytes" not in values:
            pytest.skip("smaps_rollup not readable here")
        # the 96 MiB buffer is mapped in both processes: summed RSS has it twice
        assert values["proc_rss_bytes"] > 1.6 * values["proc_pss_bytes"]
        assert values["proc_pss_bytes"] > 96 * 1024**2
    finally:
        parent.kill()
        parent.wait()


def test_process_and_machine_cpu_times_are_internal() -> None:
    sensor = PsutilSensor()
    sum(i * i for i in range(300_000))
    values = sensor.read()
    assert values["proc_cpu_s"] > 0 and values["cpu_busy_s"] >= values["proc_cpu_s"] * 0.5
    assert "proc_cpu_s" not in sensor.columns and "cpu_busy_s" not in sensor.columns
    from edgetrain.measure import proctree

    before = proctree.proc_cpu_s(os.getpid())
    sum(i * i for i in range(300_000))
    after = proctree.proc_cpu_s(os.getpid())
    assert before is not None and after is not None and after > before
