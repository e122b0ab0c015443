"""One contract for every sensor: status, unit-suffixed float values, repeatable reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.measure import (
    CpuTdpEstimate,
    JetsonSensor,
    NullSensor,
    NvmlSensor,
    PsutilSensor,
    RaplSensor,
    Sensor,
    SensorStatus,
)
from edgetrain.measure.sensor import UNIT_SUFFIXES

Factory = Callable[[Path, SimpleNamespace], Sensor]

SENSORS: dict[str, Factory] = {
    "psutil": lambda tmp, f: PsutilSensor(),
    "nvml-stub": lambda tmp, f: NvmlSensor(f.StubNvml(), indices=[0, 1]),
    "jetson-hwmon": lambda tmp, f: JetsonSensor(
        f.make_jetson_hwmon(tmp, {"VDD_IN": (1500, 5000), "VDD_SOC": (400, 5000)})
    ),
    "jetson-iio": lambda tmp, f: JetsonSensor(f.make_jetson_iio(tmp, {"POM_5V_IN": 4000})),
    "rapl": lambda tmp, f: RaplSensor(f.make_rapl(tmp / "powercap", {0: 10, 1: 20})),
    "cpu-estimate": lambda tmp, f: CpuTdpEstimate(15.0),
    "null": lambda tmp, f: NullSensor(),
}


@pytest.fixture(params=sorted(SENSORS))
def sensor(
    request: pytest.FixtureRequest, tmp_path: Path, fakes: SimpleNamespace
) -> Iterator[Sensor]:
    built = SENSORS[request.param](tmp_path, fakes)
    yield built
    built.close()


def test_sensor_contract(sensor: Sensor) -> None:
    assert isinstance(sensor, Sensor)
    assert isinstance(sensor.status, SensorStatus)
    assert sensor.status.name == sensor.name
    assert isinstance(sensor.status.reason, str) and sensor.status.reason
    assert sensor.status.available is (not isinstance(sensor, NullSensor))
    counters = {c.energy_key for c in sensor.energy_channels if c.energy_key}
    for _ in range(2):  # reading twice works
        values = sensor.read()
        assert isinstance(values, dict)
        for key, value in values.items():
            assert isinstance(key, str)
            assert key.endswith(UNIT_SUFFIXES), key
            assert isinstance(value, float), (key, value)
            assert value >= 0, (key, value)
            assert key in sensor.columns or key in counters, key
    for channel in sensor.energy_channels:
        assert channel.power_key is None or channel.power_key in sensor.columns
        assert channel.source
        assert channel.scope in ("board", "cpu", "gpu")
