"""CPU power estimate from utilisation and a TDP, for machines where nothing measures the CPU."""

from __future__ import annotations

from edgetrain.errors import EdgeTrainError
from edgetrain.measure.psutil_sensor import CpuUtilisation
from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = ["DEFAULT_CPU_TDP_W", "ESTIMATE_SOURCE", "CpuTdpEstimate"]

#: Default CPU thermal design power for the estimate, in watts. 15 W is the TDP of the
#: mainstream laptop CPUs (Intel Core U-series, AMD Ryzen U-series) and the top power mode of
#: small Jetson modules: the middle of the machines edgetrain targets, between single-board
#: computers (5-7 W) and desktops/servers (65-250 W). Set ``cpu_tdp_w`` for your CPU; for a
#: share of a server (a VM's vCPUs) use the share of the package TDP.
DEFAULT_CPU_TDP_W = 15.0

#: Source name; labels read ``estimated:cpu-tdp``.
ESTIMATE_SOURCE = "cpu-tdp"


class CpuTdpEstimate:
    """Estimated CPU power: ``cpu_tdp_w * system CPU utilisation``. An estimate, not a measurement.

    Utilisation is system-wide (all processes, all cores): the figure has scope ``machine``
    and answers the same question as the measured sources it stands in for (RAPL, NVML, a
    Jetson input rail): what the device drew while this ran, other processes included. The
    job's own share is the monitor's attributed ``energy_process_j``: this estimate times
    the process tree's share of the machine's busy CPU time, which comes to about
    ``cpu_tdp_w`` times the tree's CPU time over all cores' time. On a shared machine the machine figure over-states
    the job; that is what the scope says, and the process figure is beside it.

    It models power above idle only (0 W at 0% load), and real CPUs differ from TDP both
    ways: CodeCarbon estimated 5.5 W on the 2-core dev VM under full training load, so
    treat the number as an order of magnitude (``benchmarks/energy_vs_codecarbon.py``
    compares the two side by side).

    The value is the mean over the time since the previous read, so the monitor integrates
    it as ``power * dt`` (exact for the utilisation it saw). It is reported as
    ``cpu_power_est_w`` so that no column holds an estimate under a measurement's name.

    Args:
        cpu_tdp_w: The CPU's thermal design power in watts (> 0).
    """

    name = ESTIMATE_SOURCE

    def __init__(self, cpu_tdp_w: float = DEFAULT_CPU_TDP_W) -> None:
        if not cpu_tdp_w > 0:
            raise EdgeTrainError(f"cpu_tdp_w must be > 0 watts, got {cpu_tdp_w}")
        self.cpu_tdp_w = float(cpu_tdp_w)
        self._cpu = CpuUtilisation()
        self._status = SensorStatus(
            self.name,
            True,
            f"estimate: system CPU utilisation x TDP {self.cpu_tdp_w:g} W (set cpu_tdp_w "
            "for your CPU); not a measurement",
            f"estimated:{ESTIMATE_SOURCE}",
        )

    @property
    def status(self) -> SensorStatus:
        """Always available."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """``cpu_power_est_w``."""
        return ("cpu_power_est_w",)

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One estimated CPU channel."""
        return (
            EnergyChannel(
                ESTIMATE_SOURCE,
                "cpu",
                measured=False,
                power_key="cpu_power_est_w",
                power_is_interval_mean=True,
            ),
        )

    def read(self) -> dict[str, float]:
        """Estimated CPU power since the previous read."""
        return {"cpu_power_est_w": self.cpu_tdp_w * self._cpu.percent() / 100.0}

    def close(self) -> None:
        """Nothing to release."""
