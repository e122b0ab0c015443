"""Run any command under the monitor: ``edgetrain monitor -- python train.py``."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

from rich.table import Table
from rich.text import Text

from edgetrain.errors import EdgeTrainError
from edgetrain.measure import proctree
from edgetrain.measure.estimate import DEFAULT_CPU_TDP_W
from edgetrain.measure.factory import discover_sensors
from edgetrain.measure.files import ResourcesCsv, resources_columns, write_json_atomic
from edgetrain.measure.monitor import DEFAULT_INTERVAL_S, Monitor
from edgetrain.measure.psutil_sensor import PsutilSensor
from edgetrain.measure.sensor import SensorStatus
from edgetrain.measure.window import WindowResult
from edgetrain.units import format_bytes, format_seconds

__all__ = ["MonitoredCommandResult", "render_summary", "run_monitored"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitoredCommandResult:
    """What running a command cost.

    Attributes:
        command: The command as run.
        exit_code: The command's exit code; negative (``-signal``) when a signal ended it.
        status: ``completed`` (exit 0), ``failed`` or ``interrupted`` (Ctrl-C).
        window: Time, energy and memory of the whole run. Its ``peak_rss_bytes`` also
            includes the command's own peak RSS from the kernel (``ru_maxrss`` via
            ``wait4``), which catches peaks between samples.
        peak_power_w: Largest total power over the samples, or None.
        sample_rate_hz: Achieved sampling rate.
        sensors: Status of every sensor tried.
        out: Directory written to, or None.
    """

    command: list[str]
    exit_code: int
    status: str
    window: WindowResult
    peak_power_w: float | None
    sample_rate_hz: float
    sensors: list[SensorStatus] = field(default_factory=list)
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary.json content."""
        w = self.window
        return {
            "command": self.command,
            "status": self.status,
            "exit_code": self.exit_code,
            "wall_time_s": w.time_s,
            "energy_j": w.energy_j,
            "energy_source": w.energy_source,
            "energy_by_source_j": w.energy_by_source_j,
            "avg_power_w": w.avg_power_w,
            "peak_power_w": self.peak_power_w,
            "peak_rss_bytes": w.peak_rss_bytes,
            "peak_device_mem_bytes": w.peak_device_mem_bytes,
            "n_samples": w.n_samples,
            "sample_rate_hz": self.sample_rate_hz,
            "sensors": [s.to_dict() for s in self.sensors],
        }


def _resolve(cmd: Sequence[str]) -> list[str]:
    if not cmd:
        raise EdgeTrainError("no command given; usage: edgetrain monitor -- COMMAND [ARGS...]")
    cmd = [str(c) for c in cmd]
    program = cmd[0]
    if os.sep in program or (os.altsep and os.altsep in program):
        if not Path(program).is_file():
            raise EdgeTrainError(f"command not found: {program}")
    elif shutil.which(program) is None:
        raise EdgeTrainError(f"command not found: {program}")
    return cmd


@contextlib.contextmanager
def _forward_sigint(proc: subprocess.Popen[bytes], interrupted: list[bool]) -> Iterator[None]:
    """Forward SIGINT to the child while it runs (main thread only).

    A Ctrl-C at a terminal reaches the whole foreground process group, the child included;
    forwarding makes a SIGINT sent to edgetrain alone (``kill -INT``) reach the command
    too. Near-simultaneous SIGINTs merge in the kernel, so the child normally sees one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        interrupted[0] = True
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, int | None]:
    """Wait for the child; return its exit code and its peak RSS in bytes (POSIX)."""
    if hasattr(os, "wait4"):
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except ChildProcessError:
            return proc.wait(), None
        proc.returncode = os.waitstatus_to_exitcode(status)
        # ru_maxrss is KiB on Linux, bytes on macOS
        scale = 1 if os.uname().sysname == "Darwin" else 1024
        return proc.returncode, int(usage.ru_maxrss) * scale
    return proc.wait(), None


def run_monitored(
    cmd: Sequence[str],
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    out: str | Path | None = None,
    cpu_tdp_w: float = DEFAULT_CPU_TDP_W,
) -> MonitoredCommandResult:
    """Run ``cmd`` (stdio inherited), sample it and its children, report what it cost.

    With ``out``, writes ``out/resources.csv`` (one flushed row per sample, ``epoch`` empty)
    and ``out/summary.json`` (written to a temporary file and renamed). Sensors are found
    before the command starts; sampling begins right after it starts, so the first
    milliseconds (process start-up) fall outside the measured window.

    Args:
        cmd: Program and arguments.
        interval_s: Sampling interval.
        out: Directory for resources.csv and summary.json, or None.
        cpu_tdp_w: TDP for the CPU estimate where no CPU energy is measured.

    Raises:
        EdgeTrainError: if the command is empty or not found.
    """
    command = _resolve(cmd)
    out_dir = Path(out) if out is not None else None
    sensors, statuses = discover_sensors(cpu_tdp_w=cpu_tdp_w)
    interrupted = [False]
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # Linux records the spawning process's own peak into the child's ru_maxrss at exec, so
    # a child's ru_maxrss at or below ours says nothing about the child
    own_peak = proctree.hwm_bytes(os.getpid())
    try:
        proc = subprocess.Popen(command)
    except FileNotFoundError as exc:
        for s in sensors:
            s.close()
        raise EdgeTrainError(f"command not found: {command[0]}") from exc
    except PermissionError as exc:
        for s in sensors:
            s.close()
        raise EdgeTrainError(f"command is not executable: {command[0]}") from exc
    # follow the child's process tree instead of ours
    sensors = [PsutilSensor(proc.pid) if isinstance(s, PsutilSensor) else s for s in sensors]
    by_name = {s.name: s.status for s in sensors}
    statuses = [by_name.get(s.name, s) if s.available else s for s in statuses]
    monitor = Monitor(interval_s=interval_s, sensors=sensors, statuses=statuses)
    csv = (
        ResourcesCsv(out_dir / "resources.csv", resources_columns(monitor.columns))
        if out_dir
        else None
    )
    if csv is not None:
        monitor.add_listener(csv.write)
    window = monitor.window("command")
    peak_rss_child: int | None = None
    try:
        with _forward_sigint(proc, interrupted):
            window.open()
            monitor.start()
            try:
                exit_code, peak_rss_child = _wait(proc)
            except KeyboardInterrupt:  # not main thread, or a second Ctrl-C raced the handler
                interrupted[0] = True
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGINT)
                exit_code = proc.wait()
            result = window.close()
    finally:
        monitor.close()
        if proc.poll() is None:  # an error of ours: do not leave the command behind
            proc.kill()
            proc.wait()
        if csv is not None:
            csv.close()
    if peak_rss_child is not None and own_peak is not None and peak_rss_child <= own_peak:
        peak_rss_child = None
    if peak_rss_child is not None and (result.peak_rss_bytes or 0) < peak_rss_child:
        result = replace(result, peak_rss_bytes=peak_rss_child)
    status = "interrupted" if interrupted[0] else ("completed" if exit_code == 0 else "failed")
    outcome = MonitoredCommandResult(
        command=command,
        exit_code=exit_code,
        status=status,
        window=result,
        peak_power_w=result.peak_power_w,
        sample_rate_hz=monitor.sample_rate_hz,
        sensors=monitor.sensor_statuses,
        out=out_dir,
    )
    if out_dir is not None:
        summary = outcome.to_dict()
        summary["started_at"] = started_at
        summary["interval_s"] = interval_s
        write_json_atomic(out_dir / "summary.json", summary)
    return outcome


def render_summary(result: MonitoredCommandResult) -> Table:
    """A rich table: wall time, energy and its source, average and peak power, peak memory."""
    w = result.window
    shown = " ".join(" ".join(result.command).split())  # one line, even for python -c '...'
    if len(shown) > 100:
        shown = shown[:99] + "…"
    title = f"{shown}  (exit {result.exit_code}, {result.status})"
    # wide enough for the title on one line (a console narrower than that still wraps it)
    table = Table(title=Text(title), min_width=len(title) + 2)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("note")
    table.add_row(
        "wall time",
        format_seconds(w.time_s),
        f"{w.n_samples} samples, {result.sample_rate_hz:.1f} Hz",
    )
    energy = "-" if w.energy_j is None else f"{w.energy_j:.1f} J"
    table.add_row("energy", energy, Text(str(w.energy_source)))
    for source, joules in w.energy_by_source_j.items():
        table.add_row(Text(f"  {source}"), f"{joules:.1f} J", "")
    table.add_row("average power", _watts(w.avg_power_w), "")
    table.add_row("peak power", _watts(result.peak_power_w), "over samples")
    table.add_row("peak RSS", format_bytes(w.peak_rss_bytes), "process tree")
    if w.peak_device_mem_bytes is not None:
        table.add_row("peak GPU memory", format_bytes(w.peak_device_mem_bytes), "device-wide")
    return table


def _watts(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} W"
