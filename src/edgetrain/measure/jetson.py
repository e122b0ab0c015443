"""NVIDIA Jetson board power from the INA3221 power monitor in sysfs, GPU load and NvMap memory."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetrain.measure import proctree
from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = ["INPUT_RAILS", "NVMAP_CLIENTS", "JetsonSensor", "read_nvmap_clients"]

logger = logging.getLogger(__name__)

#: NvMap's list of clients (process, pid, size) under the sysfs root: the memory that the
#: GPU (and the video and camera engines) allocated, per process. debugfs: root only.
NVMAP_CLIENTS = "kernel/debug/nvmap/iovmm/clients"

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}

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


def _retry(read: Callable[[], float]) -> float | None:
    """``read()``, tried twice; None when both fail."""
    for _ in range(2):
        try:
            return read()
        except (OSError, ValueError) as exc:
            logger.debug("reading a Jetson rail failed: %r", exc)
    return None


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


def _size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([BKMG]?)i?B?", text.strip(), flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def read_nvmap_clients(path: str | Path) -> tuple[int, dict[int, int]]:
    """NvMap memory from its ``clients`` file: the total and bytes per pid.

    The file lists ``CLIENT PROCESS PID SIZE`` rows (sizes like ``52388K``) and a ``total``
    row; without a total row the rows are summed.

    Raises:
        OSError: when the file cannot be read (no debugfs, not root).
        ValueError: when it does not parse.
    """
    per_pid: dict[int, int] = {}
    total: int | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if not fields or fields[0].upper() == "CLIENT":
                continue
            if fields[0].lower() == "total":
                total = _size_bytes(fields[-1])
                continue
            if len(fields) < 4 or not fields[-2].isdigit():
                continue
            pid = int(fields[-2])
            per_pid[pid] = per_pid.get(pid, 0) + _size_bytes(fields[-1])
    return (total if total is not None else sum(per_pid.values())), per_pid


class JetsonSensor:
    """Board power, per-rail power, GPU load and GPU (NvMap) memory of an NVIDIA Jetson.

    With an input rail (``VDD_IN`` on Orin Nano/NX, ``POM_5V_IN`` on older boards) the board
    figure is that rail, a measurement of everything the module draws (source
    ``jetson-input``, labelled ``measured:jetson-input``); every other rail is a part of it,
    so rails are never summed then. Boards without one (AGX Orin: VDD_GPU_SOC, VDD_CPU_CV,
    VIN_SYS_5V0, ...; Xavier AGX: GPU, CPU, SOC, CV, VDDRQ, SYS5V) get the sum of their
    rails, which leaves out regulator losses and unmetered parts: source ``jetson-rails``,
    labelled ``summed:jetson-rails``, never ``measured``. Either covers CPU, GPU and memory,
    so no CPU estimate is added on a Jetson. A rail that cannot be read leaves the board
    figure out of that read (a sum without it would mislead).

    GPU memory on a Jetson is system memory allocated through NvMap; with read access to
    ``/sys/kernel/debug/nvmap/iovmm/clients`` (root) it is reported as ``gpu_mem_bytes``
    (all clients: the device's GPU memory) and ``proc_gpu_mem_bytes`` (the followed
    process tree's).

    Values: ``board_power_w``, ``rail_<name>_power_w`` per rail, ``gpu_util_pct`` (from
    the GPU ``load`` file, 0..1000) where found, the NvMap values where readable.

    Args:
        sysfs_root: Root of the sysfs tree (a fake tree in tests).
        pid: Process whose tree's NvMap memory is reported; default: this process.
    """

    name = "jetson"

    def __init__(self, sysfs_root: str | Path = "/sys", *, pid: int | None = None) -> None:
        self.root = Path(sysfs_root)
        self.pid = os.getpid() if pid is None else pid
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
        self._nvmap: Path | None = self.root / NVMAP_CLIENTS
        nvmap_note = "GPU memory from NvMap"
        try:
            read_nvmap_clients(self._nvmap)
        except (OSError, ValueError) as exc:
            self._nvmap = None
            nvmap_note = f"no GPU memory: NvMap clients not readable ({exc.__class__.__name__})"
        self._source = "jetson-input" if self._input else "jetson-rails"
        label = "measured:jetson-input" if self._input else "summed:jetson-rails"
        if not rails:
            self._status = SensorStatus(self.name, False, problem, "measured:jetson-input")
            return
        names = ", ".join(r.name for r in rails)
        total = (
            f"board power from input rail {self._input.name}"
            if self._input
            else "no input rail (VDD_IN / POM_5V_IN): board power is the sum of the rails, "
            "which misses regulator losses and unmetered parts (summed, not measured)"
        )
        self._status = SensorStatus(
            self.name, True, f"{total}; rails: {names}; {nvmap_note}", label
        )

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
        mem = ("gpu_mem_bytes", "proc_gpu_mem_bytes") if self._nvmap else ()
        return ("board_power_w", *gpu, *mem, *(_column(r.name) for r in self._rails))

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One board channel (integrated power; the INA3221 has no counter)."""
        if not self._rails:
            return ()
        return (
            EnergyChannel(
                self._source,
                "board",
                measured=True,
                power_key="board_power_w",
                summed=self._input is None,
            ),
        )

    def read(self) -> dict[str, float]:
        """Read every rail, the GPU load and NvMap memory (nothing when unavailable)."""
        if not self._rails:
            return {}
        out: dict[str, float] = {}
        total: float | None = 0.0
        for rail in self._rails:
            power = _retry(rail.read_w)
            if power is None:
                total = None
                continue
            out[_column(rail.name)] = power
            total = None if total is None else total + power
        board = out.get(_column(self._input.name)) if self._input else total
        if board is not None:
            out["board_power_w"] = board
        if self._gpu_load is not None:
            with contextlib.suppress(OSError, ValueError):
                out["gpu_util_pct"] = _read_float(self._gpu_load) / 10.0
        if self._nvmap is not None:
            try:
                device, per_pid = read_nvmap_clients(self._nvmap)
            except (OSError, ValueError):
                return out
            out["gpu_mem_bytes"] = float(device)
            pids = proctree.tree_pids(self.pid)
            out["proc_gpu_mem_bytes"] = float(sum(per_pid.get(p, 0) for p in pids))
        return out

    def close(self) -> None:
        """Nothing to release."""
