"""Jetson INA3221 sensor on fake sysfs trees (hwmon and the older iio layout), and NvMap."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.measure import JetsonSensor, Monitor
from edgetrain.measure.jetson import read_nvmap_clients


def test_hwmon_total_is_the_input_rail(jetson_hwmon_root: Path) -> None:
    sensor = JetsonSensor(jetson_hwmon_root)
    assert sensor.status.available, sensor.status.reason
    assert "VDD_IN" in sensor.status.reason
    values = sensor.read()
    assert values["board_power_w"] == pytest.approx(7.5)  # 1500 mA x 5000 mV, not the sum 12.5
    assert values["rail_vdd_in_power_w"] == pytest.approx(7.5)
    assert values["rail_vdd_cpu_gpu_cv_power_w"] == pytest.approx(3.0)
    assert values["rail_vdd_soc_power_w"] == pytest.approx(2.0)
    assert values["gpu_util_pct"] == pytest.approx(50.0)
    assert not any("shunt" in k for k in values)
    (channel,) = sensor.energy_channels
    assert (channel.source, channel.domain, channel.measured) == ("jetson-input", "board", True)
    assert not channel.summed


def test_iio_total_is_pom_5v_in(jetson_iio_root: Path) -> None:
    sensor = JetsonSensor(jetson_iio_root)
    values = sensor.read()
    assert values["board_power_w"] == pytest.approx(4.0)
    assert values["rail_pom_5v_gpu_power_w"] == pytest.approx(1.0)
    assert values["gpu_util_pct"] == pytest.approx(25.0)
    assert sensor.status.source_label == "measured:jetson-input"


def test_values_follow_the_files(jetson_hwmon_root: Path, fakes: SimpleNamespace) -> None:
    sensor = JetsonSensor(jetson_hwmon_root)
    fakes.write(jetson_hwmon_root / "class/hwmon/hwmon1/curr1_input", 2000)
    assert sensor.read()["board_power_w"] == pytest.approx(10.0)


def test_without_input_rail_sums_rails(tmp_path: Path, fakes: SimpleNamespace) -> None:
    root = fakes.make_jetson_iio(tmp_path, {"GPU": 2000, "CPU": 1000, "SOC": 500}, gpu_load=None)
    sensor = JetsonSensor(root)
    assert "sum of the rails" in sensor.status.reason
    values = sensor.read()
    assert values["board_power_w"] == pytest.approx(3.5)
    assert "gpu_util_pct" not in values and "gpu_util_pct" not in sensor.columns


def test_orin_nano_with_vdd_in_is_measured(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    sensor = JetsonSensor(fakes.make_jetson_hwmon(tmp_path, fakes.ORIN_NANO_RAILS))
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        clock.advance(2.0)
    assert w.result is not None
    assert w.result.energy_j == pytest.approx(15.0)  # 7.5 W x 2 s, the input rail only
    assert w.result.energy_source == "measured:jetson-input"
    assert w.result.energy_scope == "machine"


def test_agx_orin_without_vdd_in_is_summed_not_measured(
    tmp_path: Path, fakes: SimpleNamespace
) -> None:
    clock = fakes.FakeClock()
    sensor = JetsonSensor(fakes.make_jetson_hwmon(tmp_path, fakes.AGX_ORIN_RAILS))
    assert sensor.status.source_label == "summed:jetson-rails"
    assert "summed, not measured" in sensor.status.reason
    (channel,) = sensor.energy_channels
    assert (channel.source, channel.summed, channel.kind) == ("jetson-rails", True, "summed")
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        clock.advance(2.0)
    assert w.result is not None
    assert w.result.energy_j == pytest.approx((6.0 + 3.0 + 2.5) * 2.0)
    assert w.result.energy_source == "summed:jetson-rails"
    assert w.result.energy_by_source_j == {"jetson-rails": pytest.approx(23.0)}


def test_a_rail_that_fails_leaves_the_sum_out(tmp_path: Path, fakes: SimpleNamespace) -> None:
    root = fakes.make_jetson_hwmon(tmp_path, fakes.AGX_ORIN_RAILS)
    sensor = JetsonSensor(root)
    (root / "class/hwmon/hwmon1/curr2_input").unlink()
    values = sensor.read()
    assert "board_power_w" not in values  # 6 + 2.5 W would under-state the board
    assert values["rail_vdd_gpu_soc_power_w"] == pytest.approx(6.0)
    assert "rail_vdd_cpu_cv_power_w" not in values


def test_nvmap_memory_is_device_memory(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    root = fakes.make_jetson_hwmon(tmp_path, fakes.ORIN_NANO_RAILS)
    fakes.make_nvmap(root, {os.getpid(): 512_000, 1: 52_388})
    sensor = JetsonSensor(root)
    assert "GPU memory from NvMap" in sensor.status.reason
    assert {"gpu_mem_bytes", "proc_gpu_mem_bytes"} <= set(sensor.columns)
    values = sensor.read()
    assert values["gpu_mem_bytes"] == (512_000 + 52_388) * 1024
    assert values["proc_gpu_mem_bytes"] == 512_000 * 1024  # this process's tree only
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        fakes.make_nvmap(root, {os.getpid(): 900_000, 1: 52_388})
        clock.advance(1.0)
    assert w.result is not None
    assert w.result.peak_device_mem_bytes == (900_000 + 52_388) * 1024


def test_nvmap_clients_parsing(tmp_path: Path, fakes: SimpleNamespace) -> None:
    path = fakes.make_nvmap(tmp_path, {10: 100, 11: 300}, total=False)
    assert read_nvmap_clients(path) == (400 * 1024, {10: 100 * 1024, 11: 300 * 1024})


def test_without_nvmap_access_there_is_no_gpu_memory(jetson_hwmon_root: Path) -> None:
    sensor = JetsonSensor(jetson_hwmon_root)
    assert "NvMap clients not readable" in sensor.status.reason
    assert "gpu_mem_bytes" not in sensor.columns and "gpu_mem_bytes" not in sensor.read()


def test_not_a_jetson(tmp_path: Path) -> None:
    sensor = JetsonSensor(tmp_path)
    assert not sensor.status.available
    assert sensor.columns == () and sensor.energy_channels == () and sensor.read() == {}
