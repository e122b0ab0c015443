"""Jetson INA3221 sensor on fake sysfs trees (hwmon and the older iio layout)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.measure import JetsonSensor


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
    assert (channel.source, channel.scope, channel.measured) == ("jetson", "board", True)


def test_iio_total_is_pom_5v_in(jetson_iio_root: Path) -> None:
    sensor = JetsonSensor(jetson_iio_root)
    values = sensor.read()
    assert values["board_power_w"] == pytest.approx(4.0)
    assert values["rail_pom_5v_gpu_power_w"] == pytest.approx(1.0)
    assert values["gpu_util_pct"] == pytest.approx(25.0)


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


def test_not_a_jetson(tmp_path: Path) -> None:
    sensor = JetsonSensor(tmp_path)
    assert not sensor.status.available
    assert sensor.columns == () and sensor.energy_channels == () and sensor.read() == {}
