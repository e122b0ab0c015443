"""run_monitored on small Python commands (no torch in the children: they start fast)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from edgetrain.errors import EdgeTrainError
from edgetrain.measure import proctree, render_summary, run_monitored

MIB = 1024**2


def test_exit_code_and_files(tmp_path: Path) -> None:
    code = "import time, sys; time.sleep(0.3); sys.exit(3)"
    result = run_monitored([sys.executable, "-c", code], interval_s=0.05, out=tmp_path)
    assert result.exit_code == 3 and result.status == "failed"
    assert result.window.time_s >= 0.25
    assert result.window.energy_j is not None and result.window.energy_j >= 0

    with open(tmp_path / "resources.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[:5] == ["t_s", "epoch", "cpu_pct", "ram_used_bytes", "proc_rss_bytes"]
    assert "energy_j" in header
    assert len(rows) >= 4
    assert all(r["epoch"] == "" for r in rows)
    energies = [float(r["energy_j"]) for r in rows]
    assert energies == sorted(energies)  # cumulative

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == 3 and summary["status"] == "failed"
    for key in (
        "command",
        "wall_time_s",
        "energy_j",
        "energy_source",
        "avg_power_w",
        "peak_power_w",
        "peak_rss_bytes",
        "sensors",
    ):
        assert key in summary, key
    assert summary["command"][0] == sys.executable
    assert not list(tmp_path.glob(".*.tmp"))
    # every figure has its scope, source and coverage
    assert summary["energy_scope"] == "machine"
    assert summary["energy_coverage"] == 1.0
    names = [f["name"] for f in summary["energy_figures"]]
    assert names[0] == "total" and names[-1] == "process"
    for figure in summary["energy_figures"]:
        assert {"name", "scope", "source", "energy_j", "coverage"} <= set(figure), figure
    assert summary["energy_process_source"].startswith("attributed:")
    assert 0 <= summary["energy_process_j"] <= summary["energy_j"] + 1e-9
    assert summary["degraded"] == []
    assert "peak_pss_bytes" in summary

    console = Console(record=True, width=120)
    console.print(render_summary(result))
    text = console.export_text()
    assert "energy" in text and result.window.energy_source in text and "exit 3" in text


def test_child_and_grandchild_memory_is_counted() -> None:
    grandchild = f"b = b'x' * ({100 * MIB}); import time; time.sleep(0.6)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    result = run_monitored([sys.executable, "-c", child], interval_s=0.05, out=None)
    assert result.exit_code == 0 and result.status == "completed"
    assert result.window.peak_rss_bytes is not None
    assert result.window.peak_rss_bytes >= 100 * MIB


def test_short_lived_peak_is_caught_by_the_kernel_high_water_mark() -> None:
    # above this process's own peak: below it, the child's ru_maxrss is ambiguous (Linux
    # copies the spawning process's peak into it at exec)
    size = (proctree.hwm_bytes(os.getpid()) or 0) + 64 * MIB
    code = f"b = b'x' * ({size}); del b"
    result = run_monitored([sys.executable, "-c", code], interval_s=0.5, out=None)
    assert result.exit_code == 0
    assert result.window.peak_rss_bytes is not None
    assert result.window.peak_rss_bytes >= size


def test_a_small_command_is_not_given_the_monitors_own_memory() -> None:
    own = proctree.hwm_bytes(os.getpid())
    if own is None:
        pytest.skip("no VmHWM on this platform")
    result = run_monitored([sys.executable, "-c", "import time; time.sleep(0.3)"], out=None)
    assert result.window.peak_rss_bytes is not None
    assert result.window.peak_rss_bytes < min(own / 2, 100 * MIB)


def test_missing_command() -> None:
    with pytest.raises(EdgeTrainError, match="command not found: surely-not-a-command-xyz"):
        run_monitored(["surely-not-a-command-xyz"], interval_s=0.1, out=None)
    with pytest.raises(EdgeTrainError, match="command not found"):
        run_monitored(["./no/such/file"], interval_s=0.1, out=None)
    with pytest.raises(EdgeTrainError, match="no command"):
        run_monitored([], interval_s=0.1, out=None)


def test_summary_title_keeps_a_long_command_and_its_exit_code_on_one_line() -> None:
    from edgetrain.measure.command import MonitoredCommandResult
    from edgetrain.measure.window import WindowResult

    window = WindowResult(
        name="command",
        time_s=0.3,
        energy_j=0.1,
        energy_by_source_j={"cpu-tdp": 0.1},
        energy_source="estimated:cpu-tdp",
        avg_power_w=0.3,
        peak_power_w=15.0,
        peak_rss_bytes=8 * MIB,
        peak_device_mem_bytes=None,
        n_samples=9,
        start_s=0.0,
        end_s=0.3,
    )
    command = ["/a/fairly/long/checkout/path/of/the/project/.venv/bin/python", "-c", "pass"]
    result = MonitoredCommandResult(command, 3, "failed", window, 15.0, 25.0)
    console = Console(record=True, width=120)
    console.print(render_summary(result))
    first = console.export_text().splitlines()[0]
    assert command[0] in first and "(exit 3, failed)" in first


def test_a_busy_command_gets_its_share_up_to_its_exit() -> None:
    code = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.6: pass\n"
    result = run_monitored([sys.executable, "-c", code], interval_s=0.1, out=None)
    w = result.window
    assert w.energy_process_j is not None and w.energy_j is not None
    assert 0 < w.energy_process_j <= w.energy_j + 1e-9
    assert w.energy_process_coverage == 1.0  # the exited child was read before it was reaped
    console = Console(record=True, width=160)
    console.print(render_summary(result))
    text = console.export_text()
    assert "this process tree" in text and "scope machine" in text
