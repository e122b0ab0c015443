"""What machine this is: versions, CPU, memory, GPUs, sensors, optional extras (``edgetrain env``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import psutil
from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgetrain.measure.sensor import SensorStatus
from edgetrain.units import format_bytes

__all__ = ["EXTRAS", "environment_info", "platform_string", "render_environment"]

logger = logging.getLogger(__name__)

#: Optional extras: name -> (distribution on PyPI, module imported, feature).
EXTRAS: dict[str, tuple[str, str, str]] = {
    "gpu": ("nvidia-ml-py", "pynvml", "NVIDIA GPU power and energy"),
    "sweep": ("optuna", "optuna", "hyper-parameter sweeps"),
    "xlsx": ("openpyxl", "openpyxl", "Excel export of sweep results"),
}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86: "model name"; ARM (Jetson): "Model" or "Hardware"
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.machine() or "unknown"  # not platform.processor(): it forks `uname -p`


def platform_string() -> str:
    """Like ``platform.platform()``, without its fork of ``uname -p``.

    A fork while the monitor samples is a child holding the trainer's whole resident size
    until it execs: the first sample of every run showed twice the process's memory.
    """
    parts = [platform.system(), platform.release(), platform.machine()]
    libc, version = platform.libc_ver()
    if libc:
        parts.append(f"with-{libc}{version}")
    return "-".join(p for p in parts if p)


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"version": None, "threads": None, "cuda": {"available": False, "devices": []}}
    cuda: dict[str, Any] = {"available": False, "version": torch.version.cuda, "devices": []}
    try:
        if torch.cuda.is_available():
            cuda["available"] = True
            cuda["devices"] = [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except Exception as exc:  # a broken driver is an environment fact, not a crash
        cuda["error"] = str(exc)
    return {"version": torch.__version__, "threads": torch.get_num_threads(), "cuda": cuda}


def _extras() -> dict[str, dict[str, Any]]:
    out = {}
    for extra, (distribution, module, feature) in EXTRAS.items():
        installed = importlib.util.find_spec(module) is not None
        out[extra] = {
            "package": distribution,
            "feature": feature,
            "installed": installed,
            "version": _version(distribution) if installed else None,
            "install": None if installed else f'pip install "edgetrain[{extra}]"',
        }
    return out


def environment_info(
    sensor_statuses: Sequence[SensorStatus | Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Describe this machine as a JSON-serialisable dict (for env.json and ``edgetrain env``).

    Args:
        sensor_statuses: Statuses to record (a monitor's ``sensor_statuses``, or their
            ``to_dict()`` forms); default: discover the sensors now (and release them).

    Returns:
        Keys ``python``, ``edgetrain``, ``torch`` (``version``, ``threads``), ``cuda``
        (``available``, ``version``, ``devices``), ``cpu`` (``model``, ``cores_physical``,
        ``cores_logical``), ``memory_total_bytes``, ``os`` (``system``, ``release``,
        ``machine``, ``platform``), ``hostname``, ``sensors`` (list of ``name``,
        ``available``, ``reason``, ``source_label``) and ``extras`` (per extra: ``package``,
        ``installed``, ``version``, ``install`` command when missing).
    """
    if sensor_statuses is None:
        from edgetrain.measure.factory import discover_sensors

        sensors, sensor_statuses = discover_sensors()
        for sensor in sensors:
            sensor.close()
    torch_info = _torch_info()
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "edgetrain": _version("edgetrain") or "unknown",
        "torch": {"version": torch_info["version"], "threads": torch_info["threads"]},
        "cuda": torch_info["cuda"],
        "cpu": {
            "model": _cpu_model(),
            "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": psutil.cpu_count(logical=True) or os.cpu_count(),
        },
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform_string(),
        },
        "hostname": socket.gethostname(),
        "sensors": [
            s.to_dict() if isinstance(s, SensorStatus) else dict(s) for s in sensor_statuses
        ],
        "extras": _extras(),
    }


def render_environment(info: dict[str, Any]) -> Group:
    """Rich tables for ``edgetrain env``: the machine, the sensors, the optional extras."""
    machine = Table(title="Environment", show_header=False)
    machine.add_column("key", style="bold")
    machine.add_column("value")
    cpu, cuda, os_info = info.get("cpu", {}), info.get("cuda", {}), info.get("os", {})
    torch_info = info.get("torch", {})
    machine.add_row("edgetrain", str(info.get("edgetrain")))
    machine.add_row("python", str(info.get("python")))
    machine.add_row("torch", f"{torch_info.get('version')} ({torch_info.get('threads')} threads)")
    devices = ", ".join(cuda.get("devices") or []) or "-"
    state = "available" if cuda.get("available") else "not available"
    machine.add_row("CUDA", Text(f"{state}: {devices}"))
    machine.add_row(
        "CPU",
        Text(
            f"{cpu.get('model')} ({cpu.get('cores_physical')} physical / "
            f"{cpu.get('cores_logical')} logical cores)"
        ),
    )
    machine.add_row("memory", format_bytes(info.get("memory_total_bytes")))
    machine.add_row("OS", Text(str(os_info.get("platform"))))
    machine.add_row("host", Text(str(info.get("hostname"))))

    sensors = Table(title="Sensors")
    for column in ("sensor", "available", "energy source", "details"):
        sensors.add_column(column)
    for s in info.get("sensors", []):
        ok = Text("yes", style="green") if s.get("available") else Text("no", style="red")
        sensors.add_row(
            Text(str(s.get("name"))),
            ok,
            Text(str(s.get("source_label") or "-")),
            Text(str(s.get("reason"))),
        )

    extras = Table(title="Optional extras")
    for column in ("extra", "package", "installed", "for"):
        extras.add_column(column)
    for name, e in info.get("extras", {}).items():
        installed = (
            Text(str(e.get("version") or "yes"), style="green")
            if e.get("installed")
            else Text.assemble(("no", "red"), f": {e.get('install')}")
        )
        extras.add_row(name, str(e.get("package")), installed, str(e.get("feature")))
    return Group(machine, sensors, extras)
