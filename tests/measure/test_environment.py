"""environment_info is JSON-serialisable and complete; render_environment renders it."""

from __future__ import annotations

import json

from rich.console import Console

from edgetrain.measure import SensorStatus, environment_info, render_environment


def test_environment_info_keys_and_json() -> None:
    statuses = [
        SensorStatus("nvml", False, 'nvidia-ml-py is not installed; pip install "edgetrain[gpu]"'),
        SensorStatus("cpu-tdp", True, "estimate", "estimated:cpu-tdp"),
    ]
    info = environment_info(statuses)
    json.loads(json.dumps(info))
    for key in (
        "python",
        "edgetrain",
        "torch",
        "cuda",
        "cpu",
        "memory_total_bytes",
        "os",
        "hostname",
    ):
        assert key in info, key
    assert info["torch"]["version"]
    assert isinstance(info["cuda"]["available"], bool)
    assert info["cpu"]["cores_logical"] >= 1
    assert info["memory_total_bytes"] > 0
    assert info["sensors"][0] == {
        "name": "nvml",
        "available": False,
        "reason": 'nvidia-ml-py is not installed; pip install "edgetrain[gpu]"',
        "source_label": None,
        "degraded": False,
    }
    assert set(info["extras"]) == {"gpu", "sweep", "xlsx"}
    for extra, entry in info["extras"].items():
        assert isinstance(entry["installed"], bool)
        assert entry["install"] == (
            None if entry["installed"] else f'pip install "edgetrain[{extra}]"'
        )

    console = Console(record=True, width=160)
    console.print(render_environment(info))
    text = console.export_text()
    assert "Sensors" in text and "edgetrain[gpu]" in text and "Optional extras" in text


def test_environment_info_discovers_sensors() -> None:
    info = environment_info()
    names = [s["name"] for s in info["sensors"]]
    assert {"nvml", "jetson", "rapl", "psutil", "cpu-tdp"} <= set(names)
    json.dumps(info)


def test_environment_info_starts_no_process(monkeypatch):
    """platform.platform() forks `uname -p`; a fork while the monitor samples shows up as a
    child holding the trainer's whole resident size."""
    import platform
    import subprocess

    from edgetrain.measure import environment_info
    from edgetrain.measure.environment import platform_string

    def no_process(*args, **kwargs):
        raise AssertionError("started a process")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    for cache, empty in (("_uname_cache", None), ("_platform_cache", {})):
        if hasattr(platform, cache):  # forget what earlier calls found out
            monkeypatch.setattr(platform, cache, empty)
    info = environment_info()
    assert info["os"]["platform"] == platform_string()
    assert platform_string().startswith(platform.system())
