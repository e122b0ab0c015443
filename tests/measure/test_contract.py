"""One contract for every sensor: status, unit-suffixed float values, repeatable reads."""

from __future__ import annotations

import os
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
from edgetrain.measure.sensor import MACHINE_BUSY_KEY, PROC_CPU_KEY, UNIT_SUFFIXES

Factory = Callable[[Path, SimpleNamespace], Sensor]


def _with_nvmap(fakes: SimpleNamespace, root: Path) -> Path:
    fakes.make_nvmap(root, {os.getpid(): 1000})
    return root


def _mig_stub(fakes: SimpleNamespace) -> object:
    stub = fakes.StubNvml(2)
    stub.mig = {0: ["MIG-aaaa-1"]}
    stub.procs = {("mig", 0, 0): [os.getpid()]}
    return stub


SENSORS: dict[str, Factory] = {
    "psutil": lambda tmp, f: PsutilSensor(),
    "nvml-stub": lambda tmp, f: NvmlSensor(f.StubNvml(), indices=[0, 1]),
    "jetson-hwmon": lambda tmp, f: JetsonSensor(
        f.make_jetson_hwmon(tmp, {"VDD_IN": (1500, 5000), "VDD_SOC": (400, 5000)})
    ),
    "jetson-agx-orin-nvmap": lambda tmp, f: JetsonSensor(
        _with_nvmap(f, f.make_jetson_hwmon(tmp, f.AGX_ORIN_RAILS))
    ),
    "jetson-iio": lambda tmp, f: JetsonSensor(f.make_jetson_iio(tmp, {"POM_5V_IN": 4000})),
    "rapl": lambda tmp, f: RaplSensor(f.make_rapl(tmp / "powercap", {0: 10, 1: 20})),
    "rapl-dram": lambda tmp, f: RaplSensor(
        f.make_rapl(tmp / "powercap", {0: 10}, dram={0: 5}, power_limit_w=65)
    ),
    "nvml-mig-held": lambda tmp, f: NvmlSensor(_mig_stub(f), devices="MIG-aaaa,1"),
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
    internal = {k for c in sensor.energy_channels for k in c.internal_keys}
    internal |= {PROC_CPU_KEY, MACHINE_BUSY_KEY}
    for _ in range(2):  # reading twice works
        values = sensor.read()
        assert isinstance(values, dict)
        for key, value in values.items():
            assert isinstance(key, str)
            assert key.endswith(UNIT_SUFFIXES), key
            assert isinstance(value, float), (key, value)
            assert value >= 0, (key, value)
            assert key in sensor.columns or key in internal, key
            assert key not in sensor.columns or key not in internal, key
    for channel in sensor.energy_channels:
        assert channel.power_key is None or channel.power_key in sensor.columns
        assert channel.source
        assert channel.domain in ("board", "cpu", "gpu", "memory")
        assert channel.scope in ("machine", "device")
        assert channel.kind in ("measured", "summed", "estimated")
