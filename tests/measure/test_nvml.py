"""NVML sensor against a stub pynvml module: device choice, MIG, failing GPUs, held GPUs."""

from __future__ import annotations

import builtins
import logging
import os
from types import SimpleNamespace
from typing import Any

import pytest

from edgetrain.measure import Monitor, NvmlSensor, discover_sensors
from edgetrain.measure.nvml import choose_devices, visible_gpu_indices

MIG_A = "MIG-11111111-2222-3333-4444-555555555555"
MIG_B = "MIG-66666666-7777-8888-9999-000000000000"


def gpu_keys(values: dict[str, float]) -> set[int]:
    """The GPU indices that have per-GPU keys in a read."""
    return {int(k[3 : k.index("_")]) for k in values if k[3].isdigit()}


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
    assert [c.device for c in sensor.energy_channels] == ["gpu0", "gpu1"]
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
    assert result.energy_coverage == 1.0 and result.degraded == []
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


# -- which GPUs --------------------------------------------------------------------------


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
    assert "from CUDA_VISIBLE_DEVICES" in sensor.status.reason
    assert {c.scope for c in sensor.energy_channels} == {"device"}


def test_visible_gpu_indices() -> None:
    uuids = ["GPU-aaaa-1", "GPU-bbbb-2", "GPU-cccc-3"]
    migs = [[], ["MIG-dddd-1", "MIG-eeee-2"], []]
    assert visible_gpu_indices(None, uuids) == [0, 1, 2]
    assert visible_gpu_indices("2,0", uuids) == [2, 0]
    assert visible_gpu_indices("", uuids) == []
    assert visible_gpu_indices("GPU-bbbb", uuids) == [1]
    assert visible_gpu_indices("0,7,1", uuids) == [0]  # CUDA stops at an invalid entry
    # a MIG UUID selects its parent GPU, never every GPU
    assert visible_gpu_indices("MIG-eeee-2", uuids, migs) == [1]
    assert visible_gpu_indices("MIG-dddd-1,MIG-eeee-2", uuids, migs) == [1]
    assert visible_gpu_indices("MIG-1234", uuids, migs) == []  # matches nothing
    assert visible_gpu_indices("MIG-GPU-cccc-3/1/0", uuids) == [2]  # the older form
    choice = choose_devices("1,MIG-ffff,0", uuids, migs)
    assert choice.gpus == [1] and choice.problem is not None and "MIG-ffff" in choice.problem
    assert choose_devices("all", uuids).scope == "machine"


def test_mig_uuid_measures_its_parent_gpu_with_a_note(
    monkeypatch: pytest.MonkeyPatch, fakes: SimpleNamespace
) -> None:
    stub = fakes.StubNvml(3)
    stub.mig = {1: [MIG_A, MIG_B]}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_B)
    sensor = NvmlSensor(stub)
    assert sensor.status.available, sensor.status.reason
    assert f"GPU 1 Fake GPU (power integrated) [MIG {MIG_B}" in sensor.status.reason
    assert "energy and power are per GPU" in sensor.status.reason
    values = sensor.read()
    assert gpu_keys(values) == {1}
    assert values["gpu1_power_w"] == pytest.approx(150.0)  # the whole GPU's power
    assert values["gpu1_mem_bytes"] == 1024**3  # the instance's memory (second slot: 1 GiB)
    assert "gpu1_util_pct" not in values  # not available in MIG mode
    (channel,) = sensor.energy_channels
    assert (channel.device, channel.scope) == ("gpu1", "device")


def test_unset_cvd_reads_every_gpu_as_the_machine(stub_nvml: Any) -> None:
    sensor = NvmlSensor(stub_nvml, in_use=lambda: None)
    assert gpu_keys(sensor.read()) == {0, 1}
    assert "every GPU of the machine" in sensor.status.reason
    assert "monitor.devices" in sensor.status.reason
    assert {c.scope for c in sensor.energy_channels} == {"machine"}
    monitor = Monitor(sensors=[sensor], clock=lambda: 0.0)
    assert monitor.totals().energy_scope == "machine"


def test_unset_cvd_defaults_to_the_gpus_this_process_uses(fakes: SimpleNamespace) -> None:
    stub = fakes.StubNvml(3)
    sensor = NvmlSensor(stub, in_use=lambda: ["00000002-aaaa"])  # torch's UUID, no prefix
    assert gpu_keys(sensor.read()) == {2}
    assert "in use by this process" in sensor.status.reason
    assert {c.scope for c in sensor.energy_channels} == {"device"}


def test_in_use_mig_instance(fakes: SimpleNamespace) -> None:
    stub = fakes.StubNvml(2)
    stub.mig = {0: [MIG_A]}
    sensor = NvmlSensor(stub, in_use=lambda: [MIG_A[4:]])
    assert gpu_keys(sensor.read()) == {0}
    assert "MIG" in sensor.status.reason


def test_torch_devices_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from edgetrain.measure.nvml import torch_device_uuids

    props = {0: SimpleNamespace(uuid="aaaa"), 1: SimpleNamespace(uuid="bbbb")}
    cuda = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_reserved=lambda i: 0 if i == 0 else 1024,
        current_device=lambda: 0,
        get_device_properties=lambda i: props[i],
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert torch_device_uuids() == ["bbbb"]
    cuda.is_initialized = lambda: False
    assert torch_device_uuids() is None


def test_monitor_devices_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, fakes: SimpleNamespace
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    sensor = NvmlSensor(fakes.StubNvml(3), devices="2,1")
    assert gpu_keys(sensor.read()) == {1, 2}
    assert "chosen by monitor.devices" in sensor.status.reason
    everything = NvmlSensor(fakes.StubNvml(3), devices="all")
    assert gpu_keys(everything.read()) == {0, 1, 2}
    assert {c.scope for c in everything.energy_channels} == {"machine"}
    nothing = NvmlSensor(fakes.StubNvml(3), devices="GPU-nope")
    assert not nothing.status.available and "GPU-nope" in nothing.status.reason


def test_monitor_passes_devices_on(monkeypatch: pytest.MonkeyPatch, fakes: SimpleNamespace) -> None:
    stub = fakes.StubNvml(2)
    monkeypatch.setattr(
        "edgetrain.measure.factory.NvmlSensor",
        lambda module, **kw: NvmlSensor(stub, **kw),
    )
    monitor = Monitor(devices="1")
    nvml = next(s for s in monitor.sensors if s.name == "nvml")
    assert gpu_keys(nvml.read()) == {1}
    monitor.close()


# -- failing GPUs ------------------------------------------------------------------------


def test_one_failing_gpu_never_disables_the_others(
    stub_nvml: Any, fakes: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    clock = fakes.FakeClock()
    monitor = Monitor(sensors=[NvmlSensor(stub_nvml)], clock=clock)
    stub_nvml.fail[1] = -1  # GPU 1 is lost for good
    with caplog.at_level(logging.WARNING), monitor.window("w") as w:
        for _ in range(4):
            clock.advance(0.5)
            stub_nvml.energy_mj[0] += 50_000
            values = monitor.sample_now()
            assert "gpu0_power_w" in values and "gpu1_power_w" not in values
            assert "gpu_power_w" not in values  # a sum without GPU 1 would mislead
        clock.advance(0.5)
        stub_nvml.energy_mj[0] += 50_000
    result = w.result
    assert result is not None
    assert result.energy_by_source_j["nvml"] == pytest.approx(250.0)  # GPU 0's counter
    assert result.energy_source == "partial:nvml"
    assert result.energy_coverage == 0.0  # GPU 1 contributed for none of the window
    nvml = next(f for f in result.energy_figures if f["name"] == "nvml")
    assert nvml["devices"]["gpu0"] == {"energy_j": pytest.approx(250.0), "coverage": 1.0}
    assert nvml["devices"]["gpu1"]["coverage"] == 0.0
    assert result.degraded == ["nvml:gpu1"]
    assert sum("nvml:gpu1" in r.getMessage() for r in caplog.records) == 1
    status = next(s for s in monitor.sensor_statuses if s.name == "nvml")
    assert status.available and status.degraded and "gpu1" in status.reason


def test_counter_gpu_failing_then_recovering_is_bridged(
    stub_nvml: Any, fakes: SimpleNamespace
) -> None:
    clock = fakes.FakeClock()
    monitor = Monitor(sensors=[NvmlSensor(stub_nvml, indices=[0])], clock=clock)
    with monitor.window("w") as w:
        clock.advance(1.0)
        stub_nvml.energy_mj[0] += 100_000
        monitor.sample_now()
        stub_nvml.fail[0] = 8  # 4 samples x 2 attempts
        for _ in range(4):
            clock.advance(1.0)
            stub_nvml.energy_mj[0] += 100_000
            assert "gpu0_power_w" not in monitor.sample_now()
        clock.advance(1.0)
        stub_nvml.energy_mj[0] += 100_000
        assert "gpu0_power_w" in monitor.sample_now()  # recovered
        clock.advance(1.0)
        stub_nvml.energy_mj[0] += 100_000
    result = w.result
    assert result is not None
    # the counter covers the gap: all 7 x 100 J, and all of the window
    assert result.energy_j == pytest.approx(700.0)
    assert result.energy_coverage == 1.0
    assert result.energy_source == "measured:nvml"
    assert result.degraded == ["nvml:gpu0"]  # it was degraded during the window
    status = next(s for s in monitor.sensor_statuses if s.name == "nvml")
    assert not status.degraded and "recovered" in status.reason


def test_power_only_gpu_failing_then_recovering_leaves_a_gap(
    stub_nvml: Any, fakes: SimpleNamespace
) -> None:
    clock = fakes.FakeClock()
    monitor = Monitor(sensors=[NvmlSensor(stub_nvml, indices=[1])], clock=clock)  # 150 W
    with monitor.window("w") as w:
        clock.advance(1.0)
        monitor.sample_now()  # t=1
        stub_nvml.fail[1] = 6
        for _ in range(3):  # t=2..4 missing
            clock.advance(1.0)
            monitor.sample_now()
        clock.advance(1.0)
        monitor.sample_now()  # t=5 back; the gap 1..5 is not covered
        clock.advance(1.0)  # closes at t=6
    result = w.result
    assert result is not None
    assert result.energy_j == pytest.approx(150.0 * 2)  # 0..1 and 5..6
    assert result.energy_coverage == pytest.approx(2 / 6)
    assert result.energy_source == "partial:nvml"
    assert result.degraded == ["nvml:gpu1"]
    later = monitor.window("later").open()
    clock.advance(2.0)
    after = later.close()
    assert after.energy_coverage == 1.0 and after.energy_source == "measured:nvml"
    assert after.degraded == []


def test_a_single_failed_read_is_retried(stub_nvml: Any, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    monitor = Monitor(sensors=[NvmlSensor(stub_nvml, indices=[1])], clock=clock)
    with monitor.window("w") as w:
        clock.advance(1.0)
        stub_nvml.fail[1] = 1  # the first attempt fails, the retry works
        assert "gpu1_power_w" in monitor.sample_now()
        clock.advance(1.0)
    assert w.result is not None and w.result.energy_coverage == 1.0
    assert w.result.energy_j == pytest.approx(300.0)


# -- Grace Hopper ------------------------------------------------------------------------


def test_grace_hopper_module_energy_is_not_added_to_a_cpu_estimate(
    tmp_path: Any, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    stub = fakes.StubNvml(1)
    stub.names = ["NVIDIA GH200 480GB"]
    sensors, statuses = discover_sensors(sysfs_root=tmp_path, nvml_module=stub)
    assert [s.name for s in sensors] == ["nvml", "psutil"]
    estimate = next(s for s in statuses if s.name == "cpu-tdp")
    assert not estimate.available and "not used" in estimate.reason
    nvml = sensors[0]
    (channel,) = nvml.energy_channels
    assert channel.includes_cpu
    assert "includes the Grace CPU" in nvml.status.reason
    monitor = Monitor(sensors=sensors, clock=lambda: 0.0)
    assert monitor.energy_source == "measured:nvml"
    monitor.close()


def test_a_gh200_without_counter_is_gpu_power_only(fakes: SimpleNamespace) -> None:
    stub = fakes.StubNvml(1)
    stub.names = ["NVIDIA GH200 480GB"]
    stub.energy_mj = [None]
    (channel,) = NvmlSensor(stub).energy_channels
    assert not channel.includes_cpu


# -- held GPUs: the process-attributed figure --------------------------------------------


def test_held_gpus_decide_the_process_figure(stub_nvml: Any, fakes: SimpleNamespace) -> None:
    stub_nvml.procs = {0: [os.getpid()], 1: [1]}  # we hold GPU 0; pid 1 (visible) holds GPU 1
    clock = fakes.FakeClock()
    sensor = NvmlSensor(stub_nvml, clock=clock)
    values = sensor.read()
    assert values["gpu0_held_count"] == 1.0 and values["gpu1_held_count"] == 0.0
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        clock.advance(1.0)
        stub_nvml.energy_mj[0] += 100_000
    result = w.result
    assert result is not None
    assert result.energy_j == pytest.approx(100.0 + 150.0)
    assert result.energy_process_j == pytest.approx(100.0)  # GPU 0 only
    assert result.energy_process_source == "attributed:measured:nvml"
    assert result.energy_process_coverage == 1.0
    process = next(f for f in result.energy_figures if f["name"] == "process")
    assert process["scope"] == "process"


def test_unknown_holders_count_as_held(stub_nvml: Any) -> None:
    # nothing listed (a container hides host pids): unknown, so no flag, counted as held
    values = NvmlSensor(stub_nvml).read()
    assert "gpu0_held_count" not in values and "gpu1_held_count" not in values
    # the tree is seen on GPU 1: GPU 0, listing nothing, is not held
    stub_nvml.procs = {1: [os.getpid()]}
    values = NvmlSensor(stub_nvml).read()
    assert values["gpu0_held_count"] == 0.0 and values["gpu1_held_count"] == 1.0
