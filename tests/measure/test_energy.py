"""Composition of energy sources, labels, and the integrator."""

from __future__ import annotations

import pytest

from edgetrain.measure import EnergyChannel, EnergyIntegrator, compose, source_label

NVML = EnergyChannel("nvml", "gpu", True, power_key="gpu0_power_w", energy_key="gpu0_energy_j")
RAPL = EnergyChannel("rapl", "cpu", True, power_key="cpu_power_w", energy_key="cpu_energy_j")
JETSON = EnergyChannel("jetson", "board", True, power_key="board_power_w")
ESTIMATE = EnergyChannel(
    "cpu-tdp", "cpu", False, power_key="cpu_power_est_w", power_is_interval_mean=True
)


@pytest.mark.parametrize(
    ("channels", "kept", "label"),
    [
        ([NVML, RAPL, ESTIMATE], [NVML, RAPL], "measured:rapl+nvml"),
        ([NVML, ESTIMATE], [NVML, ESTIMATE], "measured:nvml+estimated:cpu-tdp"),
        ([ESTIMATE], [ESTIMATE], "estimated:cpu-tdp"),
        ([JETSON, ESTIMATE, NVML], [JETSON], "measured:jetson"),
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
    assert integ.by_source_j["jetson"] == pytest.approx(30.0)  # trapezoid
    # a counter that goes backwards (driver reload) adds nothing
    integ.update(3.0, {"gpu0_energy_j": 5.0})
    assert integ.by_source_j["nvml"] == pytest.approx(100.0)
    assert integ.total_j == pytest.approx(140.0)


def test_no_channels_means_no_energy() -> None:
    integ = EnergyIntegrator([])
    assert integ.update(1.0, {"x_w": 3.0}) is None
    assert integ.total_j is None
    assert integ.label == "none"
