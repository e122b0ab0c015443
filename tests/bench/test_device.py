"""Device readers on fake trees: values where the files exist, None/unknown where not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgetrain.bench.device import (
    device_settings,
    read_cpu,
    read_jetson,
    read_nvidia,
    read_storage,
)


def put(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


@pytest.fixture
def empty_root(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    return root


def test_everything_unknown_on_an_empty_tree(empty_root, tmp_path):
    storage = read_storage(tmp_path, empty_root)
    assert storage["mount_point"] is None and storage["block_device"] is None
    cpu = read_cpu(empty_root)
    assert cpu == {"cpus": [], "governors": ["unknown"], "frequency_fixed": None}
    assert read_jetson(empty_root) == {"is_jetson": False}
    settings = device_settings([tmp_path], root=empty_root, nvml=_broken_nvml())
    assert settings["nvidia"]["available"] is False
    assert "versions" in settings and str(tmp_path) in settings["storage"]


def test_storage_on_an_sd_card(tmp_path):
    root = tmp_path / "fake"
    data = tmp_path / "datasets" / "cifar"
    data.mkdir(parents=True)
    mount = str(tmp_path / "datasets")
    put(
        root,
        "/proc/mounts",
        "/dev/vda1 / ext4 rw 0 0\n"
        f"/dev/mmcblk1p1 {mount} vfat rw 0 0\n"
        "tmpfs /dev/shm tmpfs rw 0 0\n",
    )
    put(root, "/sys/block/mmcblk1/queue/rotational", "0\n")
    put(root, "/sys/block/mmcblk1/removable", "0\n")
    put(root, "/sys/block/mmcblk1/device/type", "SD\n")
    info = read_storage(data, root)
    assert info["mount_point"] == mount
    assert info["fs_type"] == "vfat"
    assert info["source"] == "/dev/mmcblk1p1"
    assert info["block_device"] == "mmcblk1"
    assert info["rotational"] is False and info["removable"] is False
    assert info["sd_card"] is True


def test_storage_on_a_rotational_disk_with_an_escaped_mount_point(tmp_path):
    root = tmp_path / "fake"
    data = tmp_path / "my disk" / "x"
    data.mkdir(parents=True)
    escaped = str(tmp_path / "my disk").replace(" ", "\\040")
    put(root, "/proc/mounts", f"/dev/sda2 {escaped} ext4 rw 0 0\n/dev/vda / ext4 rw 0 0\n")
    put(root, "/sys/block/sda/queue/rotational", "1\n")
    put(root, "/sys/block/sda/removable", "1\n")
    put(root, "/sys/block/sda/device/model", "Spinning Rust\n")
    info = read_storage(data, root)
    assert info["mount_point"] == str(tmp_path / "my disk")
    assert info["block_device"] == "sda"
    assert info["rotational"] is True and info["removable"] is True
    assert info["sd_card"] is False and info["model"] == "Spinning Rust"


def test_storage_nvme_partition_and_tmpfs(tmp_path):
    root = tmp_path / "fake"
    put(root, "/proc/mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n")
    put(root, "/sys/block/nvme0n1/queue/rotational", "0\n")
    assert read_storage(tmp_path, root)["block_device"] == "nvme0n1"
    put(root, "/proc/mounts", f"tmpfs {tmp_path} tmpfs rw 0 0\n")
    info = read_storage(tmp_path, root)
    assert info["fs_type"] == "tmpfs" and info["block_device"] is None


def test_cpu_governors_and_fixed_frequency(tmp_path):
    root = tmp_path / "fake"
    for cpu, governor in ((0, "performance"), (1, "schedutil")):
        base = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/"
        put(root, base + "scaling_governor", governor + "\n")
        put(root, base + "scaling_cur_freq", "1907200\n")
        put(root, base + "scaling_min_freq", "1907200\n" if cpu == 0 else "115200\n")
        put(root, base + "scaling_max_freq", "1907200\n")
        put(root, base + "cpuinfo_max_freq", "2265600\n")
    put(root, "/sys/devices/system/cpu/cpu1/online", "1\n")
    put(root, "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor", "x")  # not a cpu
    info = read_cpu(root)
    assert [c["cpu"] for c in info["cpus"]] == [0, 1]
    assert info["governors"] == ["performance", "schedutil"]
    assert info["cpus"][0]["cur_freq_khz"] == 1907200
    assert info["cpus"][1]["hw_max_freq_khz"] == 2265600
    assert info["frequency_fixed"] is False
    put(root, "/sys/devices/system/cpu/cpu1/cpufreq/scaling_min_freq", "1907200\n")
    assert read_cpu(root)["frequency_fixed"] is True


def _jetson_root(tmp_path: Path) -> Path:
    root = tmp_path / "jetson"
    put(root, "/etc/nv_tegra_release", "# R35 (release), REVISION: 4.1\n")
    put(root, "/proc/device-tree/model", "NVIDIA Jetson Xavier NX Developer Kit\x00")
    return root


def test_jetson_power_mode_from_nvpmodel_query(tmp_path):
    root = _jetson_root(tmp_path)
    info = read_jetson(root, query=lambda: "NV Fan Mode:quiet\nNV Power Mode: MODE_20W_6CORE\n8\n")
    assert info["is_jetson"] is True
    assert info["model"] == "NVIDIA Jetson Xavier NX Developer Kit"
    assert info["power_mode"] == {"name": "MODE_20W_6CORE", "id": 8, "source": "nvpmodel -q"}


def test_jetson_power_mode_from_files_fan_and_devfreq(tmp_path):
    root = _jetson_root(tmp_path)
    put(
        root,
        "/etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n"
        "< POWER_MODEL ID=2 NAME=MODE_15W >\n< PM_CONFIG DEFAULT=2 >\n",
    )
    put(root, "/sys/devices/pwm-fan/target_pwm", "255\n")
    put(root, "/sys/devices/pwm-fan/cur_pwm", "250\n")
    dev = "/sys/class/devfreq/17000000.gv11b/"
    put(root, dev + "governor", "nvhost_podgov\n")
    put(root, dev + "cur_freq", "1100000000\n")
    put(root, dev + "min_freq", "1100000000\n")
    put(root, dev + "max_freq", "1100000000\n")
    info = read_jetson(root, query=lambda: None)
    assert info["power_mode"]["id"] == 2 and info["power_mode"]["name"] == "MODE_15W"
    assert "default" in info["power_mode"]["source"]
    put(root, "/var/lib/nvpmodel/status", "pmode:0000 fmode:cool\n")
    info = read_jetson(root, query=lambda: None)
    assert info["power_mode"]["name"] == "MAXN"
    assert info["fan"]["pwm"] == 255 and info["fan"]["current_pwm"] == 250
    assert info["devfreq"][0]["name"] == "17000000.gv11b"
    assert info["devfreq"][0]["frequency_fixed"] is True


def test_jetson_fan_through_hwmon_and_nothing_known(tmp_path):
    root = _jetson_root(tmp_path)
    put(root, "/sys/class/hwmon/hwmon0/name", "thermal\n")
    put(root, "/sys/class/hwmon/hwmon3/name", "pwmfan\n")
    put(root, "/sys/class/hwmon/hwmon3/pwm1", "128\n")
    info = read_jetson(root, query=lambda: None)
    assert info["fan"]["pwm"] == 128 and info["fan"]["source"].endswith("hwmon3/pwm1")
    assert info["power_mode"] == {"name": None, "id": None, "source": None}


class _NvmlError(Exception):
    pass


def _broken_nvml():
    def fail():
        raise _NvmlError("NVML Shared Library Not Found")

    return SimpleNamespace(nvmlInit=fail)


def _stub_nvml():
    def not_supported(*args):
        raise _NvmlError("Not Supported")

    clocks = {1: 1410, 2: 1410, 3: 1215}
    return SimpleNamespace(
        NVML_CLOCK_GRAPHICS=1,
        NVML_CLOCK_SM=2,
        NVML_CLOCK_MEM=3,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA A100",
        nvmlDeviceGetClockInfo=lambda h, c: clocks[c],
        nvmlDeviceGetMaxClockInfo=lambda h, c: clocks[c] + 100,
        nvmlDeviceGetApplicationsClock=not_supported,
        nvmlDeviceGetPowerManagementLimit=lambda h: 250000,
        nvmlDeviceGetPowerManagementDefaultLimit=lambda h: 300000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 250000,
        nvmlDeviceGetPersistenceMode=lambda h: 1,
        nvmlDeviceGetPerformanceState=lambda h: 0,
        nvmlDeviceGetFanSpeed=not_supported,
    )


def test_nvidia_clocks_and_power_limit_from_a_stub():
    info = read_nvidia(_stub_nvml())
    assert info["available"] is True
    gpu = info["gpus"][0]
    assert gpu["name"] == "NVIDIA A100"
    assert gpu["graphics_mhz"] == 1410 and gpu["mem_mhz"] == 1215 and gpu["sm_max_mhz"] == 1510
    assert gpu["graphics_app_mhz"] is None and gpu["fan_pct"] is None
    assert gpu["power_limit_w"] == 250.0 and gpu["default_power_limit_w"] == 300.0


def test_nvidia_unavailable_is_a_reason_not_an_exception():
    info = read_nvidia(_broken_nvml())
    assert info == {
        "available": False,
        "reason": "NVML did not start: NVML Shared Library Not Found",
    }
