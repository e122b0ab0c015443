"""NVML sensor against a stub pynvml module: 2 GPUs, one without an energy counter."""

from __future__ import annotations

import builtins
from types import SimpleNamespace
from typing import Any

import pytest

from edgetrain.measure import Monitor, NvmlSensor
from edgetrain.measure.nvml import visible_gpu_indices


def test_two_gpus_values(stub_nvml: Any) -> None:
    sensor = NvmlSensor(stub_nvml)
    assert sensor.status.available, sensor.status.reason
    assert "GPU 0 Fake GPU (energy counter)" in sensor.status.reason
    assert "GPU 1 Fake GPU (power integrated)" in sensor.status.reason
    values = sensor.read()
    assert values["gpu0_power_w"] == pytest.approx(100.0)
    assert values["gpu1_power_w"] == pytest.approx(150.0)
    assert values["gpu_power_w"] == pytest.approx(250.0)
    assert values["gpu_mem_bytes"] == pytest.approx(3 * 1024**3)
    assert values["gpu_util_pct"] == pytest.approx(45.0)  # mean, not sum
    assert values["gpu0_energy_j"] == pytest.approx(5000.0)
    assert "gpu1_energy_j" not in values
    channels = {c.power_key: c for c in sensor.energy_channels}
    assert channels["gpu0_power_w"].energy_key == "gpu0_energy_j"
    assert channels["gpu1_power_w"].energy_key is None
    sensor.close()
    assert stub_nvml.shutdowns == 1


def test_counter_for_gpu0_and_integrated_power_for_gpu1(
    stub_nvml: Any, fakes: SimpleNamespace
) -> None:
    clock = fakes.FakeClock()
    monitor = Monitor(sensors=[NvmlSensor(stub_nvml)], clock=clock)
    with monitor.window("w") as w:
        for _ in range(4):
            clock.advance(0.5)
            stub_nvml.energy_mj[0] += 60_000  # 60 J per 0.5 s on GPU 0 (counter)
            monitor.sample_now()
        clock.advance(0.5)
        stub_nvml.energy_mj[0] += 60_000
    result = w.result
    assert result is not None
    assert result.time_s == pytest.approx(2.5)
    # GPU 0 from the counter (300 J, not power 100 W x 2.5 s); GPU 1: 150 W x 2.5 s
    assert result.energy_j == pytest.approx(300.0 + 375.0)
    assert result.energy_by_source_j == {"nvml": pytest.approx(675.0)}
    assert result.energy_source == "measured:nvml"
    assert result.peak_device_mem_bytes == 3 * 1024**3
    assert "gpu0_energy_j" not in monitor.recent_samples()[-1]


def test_missing_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pynvml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    sensor = NvmlSensor()
    assert not sensor.status.available
    assert 'pip install "edgetrain[gpu]"' in sensor.status.reason


def test_no_driver(fakes: SimpleNamespace) -> None:
    sensor = NvmlSensor(fakes.StubNvml(driver=False))
    assert not sensor.status.available
    assert "driver" in sensor.status.reason.lower()
    assert sensor.read() == {}


def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, fakes: SimpleNamespace) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sensor = NvmlSensor(fakes.StubNvml())
    assert set(sensor.read()) == {
        "gpu_util_pct",
        "gpu_mem_bytes",
        "gpu_power_w",
        "gpu1_util_pct",
        "gpu1_mem_bytes",
        "gpu1_power_w",
    }


def test_visible_gpu_indices() -> None:
    uuids = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3"]
    assert visible_gpu_indices(None, uuids) == [0, 1, 2]
    assert visible_gpu_indices("2,0", uuids) == [2, 0]
    assert visible_gpu_indices("", uuids) == []
    assert visible_gpu_indices("GPU-bbbb", uuids) == [1]
    assert visible_gpu_indices("0,7,1", uuids) == [0]  # CUDA stops at an invalid entry
    assert visible_gpu_indices("MIG-1234", uuids) == [0, 1, 2]
