"""Measure what training costs: time, energy (joules, with its source) and peak memory.

Knows nothing about training. Typical use::

    from edgetrain.measure import Monitor

    with Monitor() as monitor:
        with monitor.window("epoch-1") as w:
            train_one_epoch()
    print(w.result.energy_j, w.result.energy_source, w.result.energy_coverage)
    print(w.result.energy_process_j, w.result.energy_process_source)

Sensors (NVML, Jetson sysfs, RAPL, psutil, a CPU estimate, a null sensor) share one small
interface and are found by :func:`discover_sensors`; the rule for combining energy sources,
their labels, scopes and coverage are in :mod:`edgetrain.measure.energy`. docs/measuring.md
says what each sensor measures and where its figures can be wrong.
"""

from edgetrain.measure.command import MonitoredCommandResult, render_summary, run_monitored
from edgetrain.measure.energy import (
    EnergyFigures,
    EnergyIntegrator,
    compose,
    scope_label,
    source_label,
    summarise,
)
from edgetrain.measure.environment import environment_info, render_environment
from edgetrain.measure.estimate import DEFAULT_CPU_TDP_W, CpuTdpEstimate
from edgetrain.measure.factory import discover_sensors
from edgetrain.measure.files import ResourcesCsv, resources_columns, write_json_atomic
from edgetrain.measure.jetson import JetsonSensor
from edgetrain.measure.monitor import DEFAULT_INTERVAL_S, Monitor
from edgetrain.measure.nvml import NvmlSensor
from edgetrain.measure.psutil_sensor import PsutilSensor
from edgetrain.measure.rapl import RaplSensor
from edgetrain.measure.sensor import EnergyChannel, NullSensor, Sensor, SensorStatus
from edgetrain.measure.window import EPOCH_FIELDS, Window, WindowResult

__all__ = [
    "DEFAULT_CPU_TDP_W",
    "DEFAULT_INTERVAL_S",
    "EPOCH_FIELDS",
    "CpuTdpEstimate",
    "EnergyChannel",
    "EnergyFigures",
    "EnergyIntegrator",
    "JetsonSensor",
    "Monitor",
    "MonitoredCommandResult",
    "NullSensor",
    "NvmlSensor",
    "PsutilSensor",
    "RaplSensor",
    "ResourcesCsv",
    "Sensor",
    "SensorStatus",
    "Window",
    "WindowResult",
    "compose",
    "discover_sensors",
    "environment_info",
    "render_environment",
    "render_summary",
    "resources_columns",
    "run_monitored",
    "scope_label",
    "source_label",
    "summarise",
    "write_json_atomic",
]
