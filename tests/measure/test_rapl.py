"""RAPL powercap sensor on fake sysfs trees: packages, DRAM, wraps, a gap across stop()."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.measure import Monitor, RaplSensor
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
    assert values["pkg0_energy_j"] + values["pkg1_energy_j"] == pytest.approx(4.0)
    assert values["cpu_power_w"] == pytest.approx(2.0)
    assert values["pkg0_power_w"] == pytest.approx(1.5)
    assert [c.device for c in sensor.energy_channels] == ["package-0", "package-1"]
    assert {c.source for c in sensor.energy_channels} == {"rapl"}


def test_counter_wrap_uses_max_energy_range(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    # a 10 J range and a 2 W limit: the counter cannot wrap twice within 2.5 s
    root = fakes.make_rapl(
        tmp_path / "powercap", {0: 9_000_000}, max_uj=10_000_000, power_limit_w=2.0
    )
    sensor = RaplSensor(root, clock=clock)
    fakes.write(root / "intel-rapl:0/energy_uj", 500_000)  # wrapped: 1 J to the top, +0.5 J
    clock.advance(1.0)
    assert sensor.read()["pkg0_energy_j"] == pytest.approx(1.5)
    fakes.write(root / "intel-rapl:0/energy_uj", 2_500_000)
    clock.advance(1.0)
    values = sensor.read()
    assert values["pkg0_energy_j"] == pytest.approx(3.5)
    assert values["cpu_power_w"] == pytest.approx(2.0)
    assert values["pkg0_restarts_count"] == 0.0


def test_dram_is_reported_separately(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    root = fakes.make_rapl(tmp_path / "powercap", {0: 1_000_000}, dram={0: 7_000_000})
    sensor = RaplSensor(root, clock=clock)
    assert "DRAM energy counters: dram-0" in sensor.status.reason
    assert sensor.columns == ("cpu_power_w", "dram_power_w", "pkg0_power_w", "dram0_power_w")
    channels = {c.device: c for c in sensor.energy_channels}
    assert (channels["dram-0"].source, channels["dram-0"].domain) == ("rapl-dram", "memory")
    monitor = Monitor(sensors=[sensor], clock=clock)
    with monitor.window("w") as w:
        fakes.write(root / "intel-rapl:0/energy_uj", 11_000_000)  # +10 J
        fakes.write(root / "intel-rapl:0:1/energy_uj", 9_000_000)  # +2 J
        clock.advance(2.0)
    result = w.result
    assert result is not None
    assert result.energy_by_source_j == {
        "rapl": pytest.approx(10.0),
        "rapl-dram": pytest.approx(2.0),
    }
    assert result.energy_j == pytest.approx(12.0)  # DRAM is not inside the package
    assert result.energy_source == "measured:rapl+rapl-dram"
    assert monitor.recent_samples()[-1]["dram_power_w"] == pytest.approx(1.0)


def test_a_wrap_across_stop_is_not_guessed(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    # 10 J range, 2 W limit (4 W assumed at most): safe to read every 2.5 s
    root = fakes.make_rapl(
        tmp_path / "powercap", {0: 1_000_000}, max_uj=10_000_000, power_limit_w=2.0
    )
    monitor = Monitor(sensors=[RaplSensor(root, clock=clock)], clock=clock)
    window = monitor.window("across-stop").open()
    fakes.write(root / "intel-rapl:0/energy_uj", 3_000_000)
    clock.advance(1.0)
    monitor.sample_now()  # 2 J in the first second
    monitor.stop()  # the sampler stops; the window stays open
    # 60 s unread at about 1 W: the counter wrapped several times, and ends lower than it
    # began, which one-wrap logic would read as 9 J
    fakes.write(root / "intel-rapl:0/energy_uj", 2_000_000)
    clock.advance(60.0)
    result = window.close()
    assert result.energy_j == pytest.approx(2.0)  # the unknowable minute is left out
    assert result.energy_coverage == pytest.approx(1.0 / 61.0, abs=1e-6)
    assert result.energy_source == "partial:rapl"
    # and counting resumes from the new reading
    later = monitor.window("after").open()
    fakes.write(root / "intel-rapl:0/energy_uj", 4_000_000)
    clock.advance(1.0)
    after = later.close()
    assert after.energy_j == pytest.approx(2.0) and after.energy_coverage == 1.0


def test_one_unreadable_package_leaves_the_other(tmp_path: Path, fakes: SimpleNamespace) -> None:
    clock = fakes.FakeClock()
    root = fakes.make_rapl(tmp_path / "powercap", {0: 1_000_000, 1: 1_000_000})
    sensor = RaplSensor(root, clock=clock)
    (root / "intel-rapl:1/energy_uj").unlink()
    (root / "intel-rapl:1/energy_uj").mkdir()  # unreadable from now on
    fakes.write(root / "intel-rapl:0/energy_uj", 3_000_000)
    clock.advance(1.0)
    values = sensor.read()
    assert values["pkg0_power_w"] == pytest.approx(2.0)
    assert "pkg1_energy_j" not in values and "pkg1_power_w" not in values
    assert "cpu_power_w" not in values  # not a sum over some packages


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
    assert sensor.energy_channels == ()
