"""Device settings that change training speed, read (never changed) for the record.

Each reader takes ``root`` (``/`` on a real machine; a fake tree in tests) and returns
plain data with ``None`` (or ``"unknown"``) for whatever the machine does not tell; none
raises because a file or tool is missing. Readers: the storage behind a path, CPU
frequency scaling, Jetson power mode, fan and devfreq, NVIDIA GPU clocks and power limit.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from edgetrain.measure.environment import platform_string

__all__ = [
    "device_settings",
    "read_cpu",
    "read_jetson",
    "read_nvidia",
    "read_storage",
]

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
_PARTITION = (re.compile(r"^((?:mmcblk|nvme\d+n|loop)\d+)p\d+$"), re.compile(r"^([a-z]+)\d+$"))


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _flag(path: Path) -> bool | None:
    value = _int(path)
    return None if value is None else value != 0


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


# -- storage ----------------------------------------------------------------------------------
def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(root: Path) -> list[tuple[str, str, str]]:
    """(source, mount point, file system) of every mount."""
    text = _text(_under(root, "/proc/mounts")) or ""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append((_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return mounts


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return Path(os.path.realpath(path))


def _covers(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def _block_name(root: Path, source: str, path: Path) -> str | None:
    """The kernel name of the block device behind a mount source, if any."""
    if source.startswith("/dev/"):
        real = os.path.realpath(source) if root == Path("/") else source
        name = Path(real).name
        if name != "root" and (
            _under(root, f"/sys/class/block/{name}").exists() or root != Path("/")
        ):
            return name
    try:  # /dev/root and friends: ask the kernel by device number
        st_dev = os.stat(_existing(path)).st_dev
        link = _under(root, f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}")
        if link.exists():
            return Path(os.path.realpath(link)).name
    except OSError:
        pass
    return None


def _disk_of(root: Path, name: str) -> str:
    """The whole disk of a partition (mmcblk0p1 -> mmcblk0, sda2 -> sda, vda -> vda)."""
    if _under(root, f"/sys/block/{name}").exists():
        return name
    class_dir = _under(root, f"/sys/class/block/{name}")
    if (class_dir / "partition").exists():
        return Path(os.path.realpath(class_dir)).parent.name
    for pattern in _PARTITION:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return name


def read_storage(path: str | Path, root: str | Path = "/") -> dict[str, Any]:
    """The mount, file system and block device holding ``path``.

    Returns:
        ``path``, ``mount_point``, ``fs_type``, ``source``, ``block_device`` (the whole
        disk, e.g. ``mmcblk0``), ``rotational``, ``removable``, ``sd_card`` and ``model``;
        None where the platform does not tell.
    """
    root = Path(root)
    target = str(_existing(Path(path)))
    info: dict[str, Any] = {
        "path": str(path),
        "mount_point": None,
        "fs_type": None,
        "source": None,
        "block_device": None,
        "rotational": None,
        "removable": None,
        "sd_card": None,
        "model": None,
    }
    covering = [m for m in _mounts(root) if _covers(m[1], target)]
    if not covering:
        return info
    source, mount_point, fs_type = max(covering, key=lambda m: len(m[1]))  # last wins ties
    info.update(mount_point=mount_point, fs_type=fs_type, source=source)
    name = _block_name(root, source, Path(path))
    if name is None:
        return info
    disk = _disk_of(root, name)
    sys_disk = _under(root, f"/sys/block/{disk}")
    info["block_device"] = disk
    info["rotational"] = _flag(sys_disk / "queue" / "rotational")
    info["removable"] = _flag(sys_disk / "removable")
    info["model"] = _text(sys_disk / "device" / "model") or None
    if disk.startswith("mmcblk"):
        mmc_type = _text(sys_disk / "device" / "type")  # "SD" or "MMC" (eMMC)
        info["sd_card"] = None if mmc_type is None else mmc_type.upper() == "SD"
    elif sys_disk.exists():
        info["sd_card"] = False
    return info


# -- CPU --------------------------------------------------------------------------------------
def read_cpu(root: str | Path = "/") -> dict[str, Any]:
    """CPU frequency scaling: governor and frequencies (kHz) of every CPU.

    Returns:
        ``cpus`` (one dict per CPU), ``governors`` (distinct, sorted; ``["unknown"]``
        without cpufreq) and ``frequency_fixed`` (every CPU's min equals its max; None
        when unknown).
    """
    base = _under(Path(root), "/sys/devices/system/cpu")
    dirs = sorted(
        (p for p in base.glob("cpu[0-9]*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:])
    )
    cpus = []
    for cpu in dirs:
        freq = cpu / "cpufreq"
        cpus.append(
            {
                "cpu": int(cpu.name[3:]),
                "online": _flag(cpu / "online") if (cpu / "online").exists() else True,
                "governor": _text(freq / "scaling_governor"),
                "cur_freq_khz": _int(freq / "scaling_cur_freq"),
                "min_freq_khz": _int(freq / "scaling_min_freq"),
                "max_freq_khz": _int(freq / "scaling_max_freq"),
                "hw_min_freq_khz": _int(freq / "cpuinfo_min_freq"),
                "hw_max_freq_khz": _int(freq / "cpuinfo_max_freq"),
            }
        )
    governors = sorted({c["governor"] for c in cpus if c["governor"]}) or [UNKNOWN]
    bounds = [(c["min_freq_khz"], c["max_freq_khz"]) for c in cpus if c["online"]]
    known = [b for b in bounds if None not in b]
    fixed = all(lo == hi for lo, hi in known) if known and len(known) == len(bounds) else None
    return {"cpus": cpus, "governors": governors, "frequency_fixed": fixed}


# -- Jetson -----------------------------------------------------------------------------------
def _nvpmodel_query() -> str | None:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvpmodel -q failed: %s", exc)
        return None
    return done.stdout if done.returncode == 0 else None


def _power_mode(root: Path, query: Callable[[], str | None] | None) -> dict[str, Any]:
    mode: dict[str, Any] = {"name": None, "id": None, "source": None}
    output = query() if query is not None else None
    if output:
        name = re.search(r"NV Power Mode:\s*(\S+)", output)
        ident = re.search(r"^\s*(\d+)\s*$", output, re.MULTILINE)
        if name:
            mode.update(
                name=name.group(1), id=int(ident.group(1)) if ident else None, source="nvpmodel -q"
            )
            return mode
    conf = _text(_under(root, "/etc/nvpmodel.conf"))
    if conf is None:
        return mode
    names = {
        int(i): n for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", conf)
    }
    status = _text(_under(root, "/var/lib/nvpmodel/status")) or ""
    current = re.search(r"pmode:(\d+)", status)
    if current:
        ident = int(current.group(1))
        mode.update(id=ident, name=names.get(ident), source="/var/lib/nvpmodel/status")
    else:
        default = re.search(r"PM_CONFIG\s+DEFAULT=(\d+)", conf)
        if default:
            ident = int(default.group(1))
            mode.update(id=ident, name=names.get(ident), source="/etc/nvpmodel.conf (default mode)")
    return mode


def _fan(root: Path) -> dict[str, Any]:
    legacy = _under(root, "/sys/devices/pwm-fan")
    pwm = _int(legacy / "target_pwm")
    if pwm is not None:
        return {
            "pwm": pwm,
            "pwm_max": 255,
            "current_pwm": _int(legacy / "cur_pwm"),
            "source": str(legacy / "target_pwm"),
        }
    for hwmon in sorted(_under(root, "/sys/class/hwmon").glob("hwmon*")):
        if (_text(hwmon / "name") or "") in ("pwmfan", "pwm_fan", "pwm-fan"):
            pwm = _int(hwmon / "pwm1")
            if pwm is not None:
                return {
                    "pwm": pwm,
                    "pwm_max": 255,
                    "rpm": _int(hwmon / "rpm") or _int(hwmon / "fan1_input"),
                    "source": str(hwmon / "pwm1"),
                }
    return {"pwm": None, "pwm_max": None, "source": None}


def _devfreq(root: Path) -> list[dict[str, Any]]:
    """Dynamic frequency scaling of the GPU, memory and accelerators (Hz)."""
    out = []
    for dev in sorted(_under(root, "/sys/class/devfreq").glob("*")):
        lo, hi = _int(dev / "min_freq"), _int(dev / "max_freq")
        out.append(
            {
                "name": dev.name,
                "governor": _text(dev / "governor"),
                "cur_freq_hz": _int(dev / "cur_freq"),
                "min_freq_hz": lo,
                "max_freq_hz": hi,
                "frequency_fixed": None if lo is None or hi is None else lo == hi,
            }
        )
    return out


def read_jetson(
    root: str | Path = "/", query: Callable[[], str | None] | None = None
) -> dict[str, Any]:
    """Jetson power mode, fan and devfreq; ``{"is_jetson": False}`` elsewhere.

    Args:
        root: file system root.
        query: returns ``nvpmodel -q`` output (default: runs it when ``root`` is ``/``
            and the tool exists).
    """
    root = Path(root)
    model = _text(_under(root, "/proc/device-tree/model"))
    release = _text(_under(root, "/etc/nv_tegra_release"))
    is_jetson = release is not None or bool(model and ("jetson" in model.lower()))
    if not is_jetson:
        return {"is_jetson": False}
    if query is None and root == Path("/"):
        query = _nvpmodel_query
    return {
        "is_jetson": True,
        "model": model,
        "l4t_release": release.splitlines()[0] if release else None,
        "power_mode": _power_mode(root, query),
        "fan": _fan(root),
        "devfreq": _devfreq(root),
    }


# -- NVIDIA GPUs ------------------------------------------------------------------------------
def _nvml_module() -> ModuleType | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    return pynvml


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        value = fn(*args)
    except Exception:  # NVMLError_NotSupported and friends: the value is unknown
        return None
    return value.decode() if isinstance(value, bytes) else value


def read_nvidia(nvml: ModuleType | None = None) -> dict[str, Any]:
    """Clocks (MHz) and power limits (W) of every NVIDIA GPU, through NVML (pynvml).

    Args:
        nvml: the pynvml module (tests pass a stub); default: import it if installed.
    """
    nvml = nvml if nvml is not None else _nvml_module()
    if nvml is None:
        return {"available": False, "reason": 'pynvml not installed (pip install "edgetrain[gpu]")'}
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return {"available": False, "reason": f"NVML did not start: {exc}"}
    try:
        gpus = []
        for index in range(_call(nvml.nvmlDeviceGetCount) or 0):
            h = _call(nvml.nvmlDeviceGetHandleByIndex, index)
            if h is None:
                continue
            clocks = {}
            for label, kind in (
                ("graphics", "NVML_CLOCK_GRAPHICS"),
                ("sm", "NVML_CLOCK_SM"),
                ("mem", "NVML_CLOCK_MEM"),
            ):
                clock_id = getattr(nvml, kind, None)
                clocks[f"{label}_mhz"] = _call(nvml.nvmlDeviceGetClockInfo, h, clock_id)
                clocks[f"{label}_max_mhz"] = _call(nvml.nvmlDeviceGetMaxClockInfo, h, clock_id)
                clocks[f"{label}_app_mhz"] = _call(nvml.nvmlDeviceGetApplicationsClock, h, clock_id)
            limit_mw = _call(nvml.nvmlDeviceGetPowerManagementLimit, h)
            default_mw = _call(nvml.nvmlDeviceGetPowerManagementDefaultLimit, h)
            enforced_mw = _call(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            gpus.append(
                {
                    "index": index,
                    "name": _call(nvml.nvmlDeviceGetName, h),
                    **clocks,
                    "power_limit_w": limit_mw / 1000 if limit_mw is not None else None,
                    "default_power_limit_w": default_mw / 1000 if default_mw is not None else None,
                    "enforced_power_limit_w": enforced_mw / 1000
                    if enforced_mw is not None
                    else None,
                    "persistence_mode": _call(nvml.nvmlDeviceGetPersistenceMode, h),
                    "performance_state": _call(nvml.nvmlDeviceGetPerformanceState, h),
                    "fan_pct": _call(nvml.nvmlDeviceGetFanSpeed, h),
                }
            )
        return {"available": True, "gpus": gpus}
    finally:
        _call(nvml.nvmlShutdown)


# -- everything -------------------------------------------------------------------------------
def _versions() -> dict[str, Any]:
    import torch

    import edgetrain

    return {
        "edgetrain": edgetrain.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform_string(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def device_settings(
    data_paths: Iterable[str | Path] = (),
    *,
    root: str | Path = "/",
    nvml: ModuleType | None = None,
    query: Callable[[], str | None] | None = None,
) -> dict[str, Any]:
    """Everything above, for device.json: storage per data path, CPU, Jetson, NVIDIA."""
    return {
        "versions": _versions(),
        "storage": {str(p): read_storage(p, root) for p in data_paths},
        "cpu": read_cpu(root),
        "jetson": read_jetson(root, query),
        "nvidia": read_nvidia(nvml),
    }
