"""CPU package energy from the Linux RAPL powercap counters (Intel, and AMD on recent kernels)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = ["DEFAULT_POWERCAP_ROOT", "RaplSensor", "rapl_remedy"]

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
_TOP_LEVEL = re.compile(r"intel-rapl:\d+")


def rapl_remedy(root: str | Path = DEFAULT_POWERCAP_ROOT) -> str:
    """The message for unreadable counters: cause and way out."""
    return (
        f"RAPL energy counters need read access to {root} "
        "(run as root or grant read access); CPU energy will be estimated"
    )


@dataclass
class _Domain:
    name: str
    energy_path: Path
    max_uj: int | None
    last_uj: int


def _read_int(path: Path) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip())


class RaplSensor:
    """Energy of all CPU packages, summed, from ``intel-rapl:N/energy_uj``.

    Only top-level package domains (``intel-rapl:0``, ``intel-rapl:1``, ...) are summed:
    sub-domains (``intel-rapl:0:0`` core, uncore, dram) are nested inside their package and a
    top-level ``psys`` domain covers the packages too, so adding either would double-count.
    Counters wrap at ``max_energy_range_uj`` (about 262 kJ on Intel); a decrease is read as
    one wrap. Since CVE-2020-8694 the counters are readable by root only; then the sensor is
    unavailable and says so.

    Values: ``cpu_power_w`` (mean since the previous read) and ``cpu_energy_j`` (a counter,
    joules since the sensor was created).

    Args:
        root: The powercap directory (a fake tree in tests).
        clock: Monotonic clock in seconds.
    """

    name = "rapl"

    def __init__(
        self,
        root: str | Path = DEFAULT_POWERCAP_ROOT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self._clock = clock
        self._domains: list[_Domain] = []
        self._energy_j = 0.0
        self._status = self._probe()
        self._last_s = clock()

    def _probe(self) -> SensorStatus:
        if not self.root.is_dir():
            return SensorStatus(
                self.name,
                False,
                f"no RAPL powercap interface at {self.root} (not an Intel/AMD CPU with the "
                "intel_rapl driver loaded, or a virtual machine)",
                "measured:rapl",
            )
        candidates = sorted(
            (p for p in self.root.iterdir() if _TOP_LEVEL.fullmatch(p.name)),
            key=lambda p: int(p.name.split(":")[1]),
        )
        try:
            for path in candidates:
                name_file = path / "name"
                name = name_file.read_text().strip() if name_file.exists() else path.name
                if name_file.exists() and not name.startswith("package"):
                    continue  # psys (platform) covers the packages: not added
                energy_path = path / "energy_uj"
                max_path = path / "max_energy_range_uj"
                max_uj = _read_int(max_path) if max_path.exists() else None
                self._domains.append(_Domain(name, energy_path, max_uj, _read_int(energy_path)))
        except (OSError, ValueError):
            self._domains = []
            return SensorStatus(self.name, False, rapl_remedy(self.root), "measured:rapl")
        if not self._domains:
            return SensorStatus(
                self.name, False, f"no RAPL package domain under {self.root}", "measured:rapl"
            )
        names = ", ".join(d.name for d in self._domains)
        return SensorStatus(
            self.name, True, f"CPU package energy counters: {names}", "measured:rapl"
        )

    @property
    def status(self) -> SensorStatus:
        """Available when every package counter could be read."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """``cpu_power_w``."""
        return ("cpu_power_w",) if self._domains else ()

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One measured CPU channel with a counter."""
        if not self._domains:
            return ()
        return (
            EnergyChannel(
                "rapl",
                "cpu",
                measured=True,
                power_key="cpu_power_w",
                energy_key="cpu_energy_j",
                power_is_interval_mean=True,
            ),
        )

    def read(self) -> dict[str, float]:
        """Energy since creation and mean power since the previous read."""
        now_s = self._clock()
        delta_uj = 0
        for domain in self._domains:
            current = _read_int(domain.energy_path)
            step = current - domain.last_uj
            if step < 0:  # wrapped (or reset, when the range is unknown)
                step = current + (domain.max_uj - domain.last_uj if domain.max_uj else 0)
            delta_uj += step
            domain.last_uj = current
        delta_j = delta_uj / 1e6
        self._energy_j += delta_j
        dt = now_s - self._last_s
        self._last_s = now_s
        out = {"cpu_energy_j": self._energy_j}
        if dt > 0:
            out["cpu_power_w"] = delta_j / dt
        return out

    def close(self) -> None:
        """Nothing to release."""
