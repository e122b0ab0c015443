"""NVIDIA Jetson board power from the INA3221 power monitor in sysfs, and the GPU load."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = ["INPUT_RAILS", "JetsonSensor"]

#: Names of the board input rail, which carries the whole module's power (newer, older boards).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")

# GPU load files (0..1000) on the boards seen so far, relative to the sysfs root.
_GPU_LOAD_GLOBS = (
    "devices/gpu.0/load",
    "devices/platform/gpu.0/load",
    "devices/platform/*.ga10b/load",
    "devices/platform/*.gv11b/load",
    "devices/platform/*.gp10b/load",
    "devices/platform/bus@0/*.gpu/load",
    "devices/*.ga10b/load",
)
_SKIP_LABELS = {"nc", "sum of shunt voltages"}


@dataclass(frozen=True)
class _Rail:
    """One rail; power = power_path (mW), or current (mA) x voltage (mV)."""

    name: str
    power_path: Path | None = None
    current_path: Path | None = None
    voltage_path: Path | None = None

    def read_w(self) -> float:
        if self.power_path is not None:
            return _read_float(self.power_path) / 1e3
        assert self.current_path is not None and self.voltage_path is not None
        return _read_float(self.current_path) * _read_float(self.voltage_path) / 1e6


def _read_float(path: Path) -> float:
    with open(path, "rb") as f:
        return float(f.read().strip())


def _column(rail: str) -> str:
    return "rail_" + re.sub(r"[^0-9a-z]+", "_", rail.lower()).strip("_") + "_power_w"


def _hwmon_rails(root: Path) -> list[_Rail]:
    """Newer layout: /sys/class/hwmon/hwmon*/ with name 'ina3221', in*_label, curr*/in*_input."""
    rails = []
    for device in sorted((root / "class" / "hwmon").glob("hwmon*")):
        try:
            if (device / "name").read_text().strip() not in ("ina3221", "ina3221x"):
                continue
        except OSError:
            continue
        for label_path in sorted(device.glob("in*_label")):
            match = re.fullmatch(r"in(\d+)_label", label_path.name)
            if match is None:
                continue
            label = label_path.read_text().strip()
            n = match.group(1)
            current, voltage = device / f"curr{n}_input", device / f"in{n}_input"
            if label.lower() in _SKIP_LABELS or not (current.exists() and voltage.exists()):
                continue
            rails.append(_Rail(label, current_path=current, voltage_path=voltage))
    return rails


def _iio_rails(root: Path) -> list[_Rail]:
    """Older layout: /sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_N, in_power N_input."""
    rails = []
    base = root / "bus" / "i2c" / "drivers" / "ina3221x"
    for name_path in sorted(base.glob("*/iio:device*/rail_name_*")):
        n = name_path.name.rsplit("_", 1)[1]
        label = name_path.read_text().strip()
        device = name_path.parent
        power = device / f"in_power{n}_input"
        current, voltage = device / f"in_current{n}_input", device / f"in_voltage{n}_input"
        if label.lower() in _SKIP_LABELS:
            continue
        if power.exists():
            rails.append(_Rail(label, power_path=power))
        elif current.exists() and voltage.exists():
            rails.append(_Rail(label, current_path=current, voltage_path=voltage))
    return rails


class JetsonSensor:
    """Board power, per-rail power and GPU load of an NVIDIA Jetson.

    The total is the input rail (``VDD_IN``, or ``POM_5V_IN`` on older boards): every other
    rail (CPU, GPU, SoC) is a part of it, so rails are never summed when an input rail
    exists. Boards without one (Xavier AGX lists GPU, CPU, SOC, CV, VDDRQ, SYS5V) get the
    sum of their rails, and the status says so. The board total covers CPU, GPU and memory,
    so no CPU estimate is added on a Jetson.

    Values: ``board_power_w``, ``rail_<name>_power_w`` per rail, ``gpu_util_pct`` (from
    the GPU ``load`` file, 0..1000) where found.

    Args:
        sysfs_root: Root of the sysfs tree (a fake tree in tests).
    """

    name = "jetson"

    def __init__(self, sysfs_root: str | Path = "/sys") -> None:
        self.root = Path(sysfs_root)
        try:
            rails = _hwmon_rails(self.root) or _iio_rails(self.root)
            for rail in rails:
                rail.read_w()
        except (OSError, ValueError) as exc:
            rails = []
            problem = f"Jetson power monitor found but unreadable: {exc}"
        else:
            problem = f"no Jetson INA3221 power monitor under {self.root}"
        self._rails = rails
        self._input = next((r for r in rails if r.name.upper() in INPUT_RAILS), None)
        self._gpu_load = next(
            (p for pattern in _GPU_LOAD_GLOBS for p in sorted(self.root.glob(pattern))), None
        )
        if not rails:
            self._status = SensorStatus(self.name, False, problem, "measured:jetson")
            return
        names = ", ".join(r.name for r in rails)
        total = (
            f"board power from input rail {self._input.name}"
            if self._input
            else "no input rail (VDD_IN / POM_5V_IN): board power is the sum of the rails"
        )
        self._status = SensorStatus(self.name, True, f"{total}; rails: {names}", "measured:jetson")

    @property
    def status(self) -> SensorStatus:
        """Available when at least one rail could be read."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """``board_power_w``, ``gpu_util_pct``, one column per rail."""
        if not self._rails:
            return ()
        gpu = ("gpu_util_pct",) if self._gpu_load else ()
        return ("board_power_w", *gpu, *(_column(r.name) for r in self._rails))

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One measured board channel (integrated power; the INA3221 has no counter)."""
        if not self._rails:
            return ()
        return (EnergyChannel("jetson", "board", measured=True, power_key="board_power_w"),)

    def read(self) -> dict[str, float]:
        """Read every rail and the GPU load (nothing when unavailable)."""
        if not self._rails:
            return {}
        out: dict[str, float] = {}
        total = 0.0
        for rail in self._rails:
            power = rail.read_w()
            out[_column(rail.name)] = power
            total += power
        out["board_power_w"] = out[_column(self._input.name)] if self._input else total
        if self._gpu_load is not None:
            out["gpu_util_pct"] = _read_float(self._gpu_load) / 10.0
        return out

    def close(self) -> None:
        """Nothing to release."""
