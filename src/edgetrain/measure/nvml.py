"""NVIDIA GPU utilisation, memory, power and energy via NVML (``pip install nvidia-ml-py``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = ["NvmlSensor", "visible_gpu_indices"]

logger = logging.getLogger(__name__)

_INSTALL = 'pip install "edgetrain[gpu]"'


@dataclass(frozen=True)
class _Gpu:
    index: int
    name: str
    handle: Any
    has_util: bool
    has_mem: bool
    has_power: bool
    has_energy: bool


def visible_gpu_indices(cuda_visible_devices: str | None, uuids: list[str]) -> list[int]:
    """NVML indices of the GPUs that CUDA may use.

    Args:
        cuda_visible_devices: The ``CUDA_VISIBLE_DEVICES`` value, or None when unset.
        uuids: The UUID of each NVML device, by NVML index.

    Returns:
        Indices of entries given as integers or (prefixes of) ``GPU-`` UUIDs, in order; all
        GPUs when the variable is unset or holds something else (MIG instances).
    """
    everything = list(range(len(uuids)))
    if cuda_visible_devices is None:
        return everything
    chosen: list[int] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if not entry:
            continue
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < len(uuids):
                break  # CUDA ignores everything from the first invalid entry on
            chosen.append(index)
        elif entry.startswith("GPU-"):
            match = [i for i, u in enumerate(uuids) if u.startswith(entry)]
            if len(match) != 1:
                break
            chosen.append(match[0])
        else:
            return everything
    return chosen


def _supported(call: Any, *args: Any) -> bool:
    try:
        call(*args)
    except Exception:  # NVMLError_NotSupported and friends
        return False
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSensor:
    """Every visible NVIDIA GPU: utilisation, memory used, power and energy.

    Energy comes from the total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ,
    Volta and newer) where the GPU has one; otherwise the monitor integrates the power,
    which NVML reports as a 1-second average on recent GPUs. "Visible" follows
    ``CUDA_VISIBLE_DEVICES`` when it lists indices or UUIDs, so that a job on one GPU of
    eight is not charged for the other seven.

    Values: ``gpu_util_pct`` (mean over GPUs), ``gpu_mem_bytes`` and ``gpu_power_w`` (sums),
    and per GPU ``gpu<i>_util_pct``, ``gpu<i>_mem_bytes``, ``gpu<i>_power_w`` with ``i``
    the NVML index (as nvidia-smi shows it), plus counters ``gpu<i>_energy_j``. Memory used is
    device-wide (CUDA context and other processes included), not PyTorch's allocations.

    Args:
        nvml_module: A module with the pynvml functions (a stub in tests); default: import
            ``pynvml`` from nvidia-ml-py.
        indices: NVML indices to read; default: the visible GPUs.
    """

    name = "nvml"

    def __init__(
        self, nvml_module: ModuleType | Any | None = None, *, indices: list[int] | None = None
    ) -> None:
        self._nvml: Any = None
        self._gpus: list[_Gpu] = []
        self._status = self._probe(nvml_module, indices)

    def _probe(self, nvml_module: Any, indices: list[int] | None) -> SensorStatus:
        label = "measured:nvml"
        if nvml_module is None:
            try:
                import pynvml as nvml_module  # type: ignore[import-not-found,no-redef]
            except ImportError:
                return SensorStatus(
                    self.name, False, f"nvidia-ml-py is not installed; {_INSTALL}", label
                )
        nvml = nvml_module
        try:
            nvml.nvmlInit()
        except Exception as exc:
            return SensorStatus(
                self.name, False, f"NVIDIA driver not available (NVML: {_text(exc)})", label
            )
        self._nvml = nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            if indices is None:
                uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
                indices = visible_gpu_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids)
            for i in indices:
                h = handles[i]
                self._gpus.append(
                    _Gpu(
                        index=i,
                        name=_text(nvml.nvmlDeviceGetName(h)),
                        handle=h,
                        has_util=_supported(nvml.nvmlDeviceGetUtilizationRates, h),
                        has_mem=_supported(nvml.nvmlDeviceGetMemoryInfo, h),
                        has_power=_supported(nvml.nvmlDeviceGetPowerUsage, h),
                        has_energy=_supported(nvml.nvmlDeviceGetTotalEnergyConsumption, h),
                    )
                )
        except Exception as exc:
            self.close()
            self._gpus = []
            return SensorStatus(self.name, False, f"NVML query failed: {_text(exc)}", label)
        if not self._gpus:
            self.close()
            return SensorStatus(self.name, False, "no visible NVIDIA GPU", label)
        parts = []
        for g in self._gpus:
            how = (
                "energy counter"
                if g.has_energy
                else "power integrated"
                if g.has_power
                else "no power reading"
            )
            parts.append(f"GPU {g.index} {g.name} ({how})")
        return SensorStatus(self.name, True, "; ".join(parts), label)

    @property
    def status(self) -> SensorStatus:
        """Available when NVML started and at least one GPU is visible."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """Summary columns, then per-GPU columns."""
        if not self._gpus:
            return ()
        cols = []
        if any(g.has_util for g in self._gpus):
            cols.append("gpu_util_pct")
        if any(g.has_mem for g in self._gpus):
            cols.append("gpu_mem_bytes")
        if any(g.has_power for g in self._gpus):
            cols.append("gpu_power_w")
        for g in self._gpus:
            cols += [f"gpu{g.index}_util_pct"] if g.has_util else []
            cols += [f"gpu{g.index}_mem_bytes"] if g.has_mem else []
            cols += [f"gpu{g.index}_power_w"] if g.has_power else []
        return tuple(cols)

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One measured GPU channel per GPU with a counter or a power reading."""
        return tuple(
            EnergyChannel(
                "nvml",
                "gpu",
                measured=True,
                power_key=f"gpu{g.index}_power_w" if g.has_power else None,
                energy_key=f"gpu{g.index}_energy_j" if g.has_energy else None,
            )
            for g in self._gpus
            if g.has_power or g.has_energy
        )

    def read(self) -> dict[str, float]:
        """Read every GPU (about 4 NVML calls per GPU)."""
        nvml = self._nvml
        out: dict[str, float] = {}
        utils, mem_total, power_total = [], 0.0, 0.0
        for g in self._gpus:
            i = g.index
            if g.has_util:
                util = float(nvml.nvmlDeviceGetUtilizationRates(g.handle).gpu)
                out[f"gpu{i}_util_pct"] = util
                utils.append(util)
            if g.has_mem:
                mem = float(nvml.nvmlDeviceGetMemoryInfo(g.handle).used)
                out[f"gpu{i}_mem_bytes"] = mem
                mem_total += mem
            if g.has_power:
                power = nvml.nvmlDeviceGetPowerUsage(g.handle) / 1e3  # mW
                out[f"gpu{i}_power_w"] = power
                power_total += power
            if g.has_energy:
                out[f"gpu{i}_energy_j"] = nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle) / 1e3
        if utils:
            out["gpu_util_pct"] = sum(utils) / len(utils)
        if any(g.has_mem for g in self._gpus):
            out["gpu_mem_bytes"] = mem_total
        if any(g.has_power for g in self._gpus):
            out["gpu_power_w"] = power_total
        return out

    def close(self) -> None:
        """Shut NVML down (it counts inits, so other users are not affected)."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                logger.debug("nvmlShutdown failed", exc_info=True)
            self._nvml = None
