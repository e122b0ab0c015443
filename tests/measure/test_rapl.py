"""RAPL powercap sensor on fake sysfs trees."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.measure import RaplSensor
from edgetrain.measure.rapl import rapl_remedy


def test_sums_top_level_packages_only(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    root = fakes.make_rapl(tmp_path / "powercap", {0: 1_000_000, 1: 2_000_000}, psys=True)
    sensor = RaplSensor(root, clock=clock)
    assert sensor.status.available, sensor.status.reason
    assert "package-0" in sensor.status.reason and "psys" not in sensor.status.reason

    fakes.write(root / "intel-rapl:0/energy_uj", 4_000_000)  # +3 J
    fakes.write(root / "intel-rapl:1/energy_uj", 3_000_000)  # +1 J
    fakes.write(root / "intel-rapl:0:0/energy_uj", 1)  # nested core domain: ignored
    fakes.write(root / "intel-rapl:2/energy_uj", 9_000_000_000)  # psys: ignored
    clock.advance(2.0)
    values = sensor.read()
    assert values["cpu_energy_j"] == pytest.approx(4.0)
    assert values["cpu_power_w"] == pytest.approx(2.0)


def test_counter_wrap_uses_max_energy_range(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    root = fakes.make_rapl(tmp_path / "powercap", {0: 9_000_000}, max_uj=10_000_000)
    sensor = RaplSensor(root, clock=clock)
    fakes.write(root / "intel-rapl:0/energy_uj", 500_000)  # wrapped: 1 J to the top, +0.5 J
    clock.advance(1.0)
    assert sensor.read()["cpu_energy_j"] == pytest.approx(1.5)
    fakes.write(root / "intel-rapl:0/energy_uj", 2_500_000)
    clock.advance(1.0)
    values = sensor.read()
    assert values["cpu_energy_j"] == pytest.approx(3.5)
    assert values["cpu_power_w"] == pytest.approx(2.0)


def test_unreadable_counter_gives_the_remedy(tmp_path: Path, fakes: SimpleNamespace) -> None:
    # tests run as root, where chmod 000 does not block reads: make the file a directory
    root = fakes.make_rapl(tmp_path / "powercap", {0: 1, 1: 2})
    (root / "intel-rapl:1/energy_uj").unlink()
    (root / "intel-rapl:1/energy_uj").mkdir()
    sensor = RaplSensor(root)
    assert not sensor.status.available
    assert sensor.status.reason == rapl_remedy(root)
    assert "run as root or grant read access" in sensor.status.reason
    assert sensor.status.reason.endswith("CPU energy will be estimated")
    assert sensor.energy_channels == () and sensor.columns == ()


def test_permission_error_gives_the_remedy(
    tmp_path: Path, fakes: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fakes.make_rapl(tmp_path / "powercap", {0: 1})

    def denied(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("edgetrain.measure.rapl._read_int", denied)
    sensor = RaplSensor(root)
    assert not sensor.status.available
    assert sensor.status.reason == rapl_remedy(root)


def test_default_remedy_text() -> None:
    assert rapl_remedy() == (
        "RAPL energy counters need read access to /sys/class/powercap "
        "(run as root or grant read access); CPU energy will be estimated"
    )


def test_missing_powercap_is_unavailable(tmp_path: Path) -> None:
    sensor = RaplSensor(tmp_path / "nothing")
    assert not sensor.status.available
    assert "no RAPL powercap" in sensor.status.reason


def test_no_package_domain(tmp_path: Path, fakes: SimpleNamespace) -> None:
    root = fakes.make_rapl(tmp_path / "powercap", {0: 1})
    shutil.rmtree(root / "intel-rapl:0")
    sensor = RaplSensor(root)
    assert not sensor.status.available
    assert "no RAPL package domain" in sensor.status.reason
