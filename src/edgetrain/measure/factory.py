"""Find the sensors that work on this machine; one code path for every machine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError
from edgetrain.measure.energy import compose
from edgetrain.measure.estimate import DEFAULT_CPU_TDP_W, ESTIMATE_SOURCE, CpuTdpEstimate
from edgetrain.measure.jetson import JetsonSensor
from edgetrain.measure.nvml import NvmlSensor
from edgetrain.measure.psutil_sensor import PsutilSensor
from edgetrain.measure.rapl import RaplSensor
from edgetrain.measure.sensor import NullSensor, Sensor, SensorStatus

__all__ = ["discover_sensors"]

logger = logging.getLogger(__name__)


def _try(name: str, build: Any) -> tuple[Sensor | None, SensorStatus]:
    try:
        sensor = build()
    except Exception as exc:  # a sensor bug must not stop training
        logger.warning("sensor %s failed to start: %s", name, exc)
        return None, SensorStatus(name, False, f"failed to start: {exc}", None)
    return sensor, sensor.status


def discover_sensors(
    *,
    cpu_tdp_w: float = DEFAULT_CPU_TDP_W,
    pid: int | None = None,
    sysfs_root: str | Path = "/sys",
    nvml_module: Any | None = None,
    devices: str | None = None,
) -> tuple[list[Sensor], list[SensorStatus]]:
    """Try NVML, Jetson sysfs, RAPL, psutil and the CPU estimate; keep those that work.

    The CPU estimate is added only when no CPU energy is measured: RAPL measures the CPU
    packages, a Jetson's board figure covers the whole module, and a Grace Hopper module's
    energy counter includes its CPU. With NVML alone the GPU is measured and the CPU
    estimated (``measured:nvml+estimated:cpu-tdp``); see :mod:`edgetrain.measure.energy`
    for the full rule. When nothing works, the result is one :class:`NullSensor`.

    Args:
        cpu_tdp_w: TDP for the CPU estimate.
        pid: Process whose tree is followed (memory, held GPUs, attributed energy);
            default: this process.
        sysfs_root: Root of sysfs (Jetson rails and NvMap, ``class/powercap`` for RAPL).
        nvml_module: A pynvml-like module (tests); default: ``import pynvml``.
        devices: GPUs to measure, written like ``CUDA_VISIBLE_DEVICES`` or ``all``;
            default: see :class:`NvmlSensor`.

    Returns:
        The working sensors, and a status for every sensor tried (the unused ones with the
        reason).

    Raises:
        EdgeTrainError: if ``cpu_tdp_w`` is not positive.
    """
    if not cpu_tdp_w > 0:
        raise EdgeTrainError(f"cpu_tdp_w must be > 0 watts, got {cpu_tdp_w}")
    root = Path(sysfs_root)
    builders = [
        ("nvml", lambda: NvmlSensor(nvml_module, devices=devices, pid=pid)),
        ("jetson", lambda: JetsonSensor(root, pid=pid)),
        ("rapl", lambda: RaplSensor(root / "class" / "powercap")),
        ("psutil", lambda: PsutilSensor(pid)),
    ]
    sensors: list[Sensor] = []
    statuses: list[SensorStatus] = []
    for name, build in builders:
        sensor, status = _try(name, build)
        statuses.append(status)
        if sensor is not None and status.available:
            sensors.append(sensor)
        elif sensor is not None:
            sensor.close()

    channels = [c for s in sensors for c in s.energy_channels]
    cpu_covered = [c for c in compose(channels) if c.domain in ("board", "cpu") or c.includes_cpu]
    if cpu_covered:
        statuses.append(
            SensorStatus(
                ESTIMATE_SOURCE,
                False,
                f"not used: CPU energy is measured ({cpu_covered[0].source})",
                f"estimated:{ESTIMATE_SOURCE}",
            )
        )
    else:
        estimate, status = _try(ESTIMATE_SOURCE, lambda: CpuTdpEstimate(cpu_tdp_w))
        statuses.append(status)
        if estimate is not None:
            sensors.append(estimate)

    if not sensors:
        null = NullSensor("no sensor works on this machine; time is measured, energy is not")
        sensors.append(null)
        statuses.append(null.status)
    return sensors, statuses
