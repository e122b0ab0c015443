"""Composition of energy sources, labels, and the integrator."""

from __future__ import annotations

import pytest

from edgetrain.measure import EnergyChannel, EnergyIntegrator, compose, source_label
from edgetrain.measure.energy import EnergyState, scope_label, summarise

NVML = EnergyChannel("nvml", "gpu", True, power_key="gpu0_power_w", energy_key="gpu0_energy_j")
RAPL = EnergyChannel("rapl", "cpu", True, power_key="cpu_power_w", energy_key="cpu_energy_j")
JETSON = EnergyChannel("jetson-input", "board", True, power_key="board_power_w")
RAILS = EnergyChannel("jetson-rails", "board", True, power_key="board_power_w", summed=True)
GH200 = EnergyChannel("nvml", "gpu", True, energy_key="gpu0_energy_j", includes_cpu=True)
DRAM = EnergyChannel("rapl-dram", "memory", True, energy_key="dram0_energy_j")
ESTIMATE = EnergyChannel(
    "cpu-tdp", "cpu", False, power_key="cpu_power_est_w", power_is_interval_mean=True
)


@pytest.mark.parametrize(
    ("channels", "kept", "label"),
    [
        ([NVML, RAPL, ESTIMATE], [NVML, RAPL], "measured:rapl+nvml"),
        ([NVML, ESTIMATE], [NVML, ESTIMATE], "measured:nvml+estimated:cpu-tdp"),
        ([ESTIMATE], [ESTIMATE], "estimated:cpu-tdp"),
        ([JETSON, ESTIMATE, NVML], [JETSON], "measured:jetson-input"),
        ([RAILS, ESTIMATE, NVML], [RAILS], "summed:jetson-rails"),
        ([GH200, ESTIMATE], [GH200], "measured:nvml"),
        ([GH200, RAPL, DRAM], [GH200], "measured:nvml"),
        ([NVML, RAPL, DRAM], [NVML, RAPL, DRAM], "measured:rapl+rapl-dram+nvml"),
        ([], [], "none"),
    ],
)
def test_compose_and_label(channels: list, kept: list, label: str) -> None:
    assert compose(channels) == kept
    assert source_label(compose(channels)) == label


def test_trapezoid_interval_mean_and_counter() -> None:
    integ = EnergyIntegrator([NVML, ESTIMATE, JETSON])
    integ.update(0.0, {"gpu0_energy_j": 1000.0, "cpu_power_est_w": 99.0, "board_power_w": 10.0})
    integ.update(2.0, {"gpu0_energy_j": 1100.0, "cpu_power_est_w": 5.0, "board_power_w": 20.0})
    assert integ.by_source_j["nvml"] == pytest.approx(100.0)  # counter difference
    assert integ.by_source_j["cpu-tdp"] == pytest.approx(10.0)  # mean power x dt
    assert integ.by_source_j["jetson-input"] == pytest.approx(30.0)  # trapezoid
    # a counter that goes backwards (driver reload) adds nothing
    integ.update(3.0, {"gpu0_energy_j": 5.0})
    assert integ.by_source_j["nvml"] == pytest.approx(100.0)
    assert integ.total_j == pytest.approx(140.0)


def test_no_channels_means_no_energy() -> None:
    integ = EnergyIntegrator([])
    assert integ.update(1.0, {"x_w": 3.0}) is None
    assert integ.total_j is None
    assert integ.label == "none"


def test_partial_label_and_scope() -> None:
    assert source_label([NVML, RAPL], {"nvml": 0.5}) == "measured:rapl+partial:nvml"
    assert source_label([RAILS], {"jetson-rails": 0.9}) == "partial:jetson-rails"
    # an estimate stays labelled an estimate; its coverage says the rest
    assert source_label([NVML, ESTIMATE], {"cpu-tdp": 0.5}) == "measured:nvml+estimated:cpu-tdp"
    device = EnergyChannel("nvml", "gpu", True, power_key="gpu0_power_w", scope="device")
    assert scope_label([device, RAPL]) == "machine+device"
    assert scope_label([device]) == "device"
    assert scope_label([]) == "none"


def test_summarise_between_snapshots() -> None:
    integ = EnergyIntegrator([NVML, RAPL])
    integ.update(
        0.0, {"gpu0_energy_j": 0.0, "cpu_energy_j": 0.0, "proc_cpu_s": 0.0, "cpu_busy_s": 0.0}
    )
    start = integ.snapshot()
    integ.update(
        1.0, {"gpu0_energy_j": 100.0, "cpu_energy_j": 10.0, "proc_cpu_s": 1.0, "cpu_busy_s": 4.0}
    )
    integ.update(2.0, {"cpu_energy_j": 30.0, "proc_cpu_s": 2.0, "cpu_busy_s": 8.0})  # no GPU
    figures = summarise(integ.channels, start, integ.snapshot(), 2.0)
    assert figures.total_j == pytest.approx(130.0)
    assert figures.coverage_by_source == {"rapl": 1.0, "nvml": 0.5}
    assert figures.source == "measured:rapl+partial:nvml"
    # CPU: a quarter of the busy time each second; the GPU is held (unknown counts as held)
    assert figures.process_j == pytest.approx(100.0 + 0.25 * 30.0)
    assert figures.process_source == "attributed:measured:rapl+partial:nvml"


def test_restarted_counter_covers_nothing() -> None:
    channel = EnergyChannel("rapl", "cpu", True, energy_key="e_j", restarts_key="r_count")
    integ = EnergyIntegrator([channel])
    integ.update(0.0, {"e_j": 0.0, "r_count": 0.0})
    integ.update(1.0, {"e_j": 5.0, "r_count": 0.0})
    integ.update(100.0, {"e_j": 5.0, "r_count": 1.0})  # the sensor could not count this gap
    integ.update(101.0, {"e_j": 8.0, "r_count": 1.0})
    figures = summarise([channel], EnergyState(), integ.snapshot(), 101.0)
    assert figures.total_j == pytest.approx(8.0)
    assert figures.coverage == pytest.approx(2.0 / 101.0, abs=1e-6)
