"""The sensor factory: what is found on each kind of machine, and how energy is composed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.measure import Monitor, NullSensor, discover_sensors


def _names(sensors: list) -> list[str]:
    return [s.name for s in sensors]


def _label(sensors: list) -> str:
    monitor = Monitor(sensors=sensors)
    label = monitor.energy_source
    monitor.close()
    return label


def test_laptop_without_counters(tmp_path: Path, fakes: SimpleNamespace) -> None:
    sensors, statuses = discover_sensors(
        sysfs_root=tmp_path, nvml_module=fakes.StubNvml(driver=False)
    )
    assert _names(sensors) == ["psutil", "cpu-tdp"]
    assert [s.name for s in statuses] == ["nvml", "jetson", "rapl", "psutil", "cpu-tdp"]
    assert _label(sensors) == "estimated:cpu-tdp"


def test_gpu_server_without_rapl_access(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    root = tmp_path / "sys"
    powercap = fakes.make_rapl(root / "class/powercap", {0: 1})
    (powercap / "intel-rapl:0/energy_uj").unlink()
    (powercap / "intel-rapl:0/energy_uj").mkdir()  # unreadable
    sensors, statuses = discover_sensors(
        sysfs_root=root, nvml_module=fakes.StubNvml(), cpu_tdp_w=28
    )
    assert _names(sensors) == ["nvml", "psutil", "cpu-tdp"]
    rapl = next(s for s in statuses if s.name == "rapl")
    assert "grant read access" in rapl.reason
    assert "28 W" in next(s for s in statuses if s.name == "cpu-tdp").reason
    assert _label(sensors) == "measured:nvml+estimated:cpu-tdp"


def test_rapl_replaces_the_estimate(tmp_path: Path, fakes: SimpleNamespace) -> None:
    root = tmp_path / "sys"
    fakes.make_rapl(root / "class/powercap", {0: 1})
    sensors, statuses = discover_sensors(sysfs_root=root, nvml_module=fakes.StubNvml())
    assert _names(sensors) == ["nvml", "rapl", "psutil"]
    estimate = next(s for s in statuses if s.name == "cpu-tdp")
    assert not estimate.available and "not used" in estimate.reason
    assert _label(sensors) == "measured:rapl+nvml"


def test_jetson_board_covers_the_cpu(jetson_hwmon_root: Path, fakes: SimpleNamespace) -> None:
    sensors, _ = discover_sensors(
        sysfs_root=jetson_hwmon_root, nvml_module=fakes.StubNvml(driver=False)
    )
    assert _names(sensors) == ["jetson", "psutil"]
    assert _label(sensors) == "measured:jetson-input"


def test_agx_orin_rails_cover_the_cpu_too(tmp_path: Path, fakes: SimpleNamespace) -> None:
    root = fakes.make_jetson_hwmon(tmp_path, fakes.AGX_ORIN_RAILS)
    sensors, statuses = discover_sensors(sysfs_root=root, nvml_module=fakes.StubNvml(driver=False))
    assert _names(sensors) == ["jetson", "psutil"]
    assert "not used" in next(s for s in statuses if s.name == "cpu-tdp").reason
    assert _label(sensors) == "summed:jetson-rails"


def test_null_sensor_when_nothing_works(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no /proc")

    monkeypatch.setattr("edgetrain.measure.factory.PsutilSensor", broken)
    monkeypatch.setattr("edgetrain.measure.factory.CpuTdpEstimate", broken)
    sensors, statuses = discover_sensors(
        sysfs_root=tmp_path, nvml_module=fakes.StubNvml(driver=False)
    )
    assert len(sensors) == 1 and isinstance(sensors[0], NullSensor)
    assert "failed to start: no /proc" in next(s for s in statuses if s.name == "psutil").reason
    with Monitor(sensors=sensors) as monitor, monitor.window("w") as w:
        pass
    assert w.result is not None and w.result.energy_j is None and w.result.energy_source == "none"


def test_bad_tdp() -> None:
    with pytest.raises(EdgeTrainError, match="cpu_tdp_w must be > 0"):
        discover_sensors(cpu_tdp_w=0)
