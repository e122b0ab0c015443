"""Run any command under the monitor: ``edgetrain monitor -- python train.py``."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
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
from edgetrain.mark import MARKS_ENV, MARKS_FILE, mark_time, read_marks
from edgetrain.measure import proctree
from edgetrain.measure.estimate import DEFAULT_CPU_TDP_W
from edgetrain.measure.factory import discover_sensors
from edgetrain.measure.files import ResourcesCsv, resources_columns, write_json_atomic
from edgetrain.measure.monitor import DEFAULT_INTERVAL_S, Monitor
from edgetrain.measure.phases import Phase, PhaseRecorder, split_phases
from edgetrain.measure.psutil_sensor import PsutilSensor
from edgetrain.measure.sensor import SensorStatus
from edgetrain.measure.window import WindowResult
from edgetrain.units import format_bytes, format_seconds

__all__ = ["MonitoredCommandResult", "render_summary", "run_monitored"]

logger = logging.getLogger(__name__)

MAX_PHASE_ROWS = 20  # phases listed in the printed summary (summary.json has them all)


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
        phases: The phases the command marked with ``edgetrain.mark`` (none without
            marks), each with its time and energy.
    """

    command: list[str]
    exit_code: int
    status: str
    window: WindowResult
    peak_power_w: float | None
    sample_rate_hz: float
    sensors: list[SensorStatus] = field(default_factory=list)
    out: Path | None = None
    phases: list[Phase] = field(default_factory=list)

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
            "energy_scope": w.energy_scope,
            "energy_coverage": w.energy_coverage,
            "energy_coverage_by_source": w.energy_coverage_by_source,
            "energy_by_source_j": w.energy_by_source_j,
            "energy_process_j": w.energy_process_j,
            "energy_process_source": w.energy_process_source,
            "energy_process_coverage": w.energy_process_coverage,
            "energy_figures": w.energy_figures,
            "degraded": w.degraded,
            "avg_power_w": w.avg_power_w,
            "peak_power_w": self.peak_power_w,
            "peak_rss_bytes": w.peak_rss_bytes,
            "peak_pss_bytes": w.peak_pss_bytes,
            "peak_device_mem_bytes": w.peak_device_mem_bytes,
            "n_samples": w.n_samples,
            "sample_rate_hz": self.sample_rate_hz,
            "sensors": [s.to_dict() for s in self.sensors],
            "phases": [p.to_dict() for p in self.phases],
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


def _wait_exited(proc: subprocess.Popen[bytes]) -> None:
    """Wait until the child has exited but leave it unreaped (a zombie), where supported.

    Its ``/proc/<pid>/stat`` then still holds its final CPU time (its reaped children's
    included), so the closing sample attributes the last interval too.
    """
    wnowait = getattr(os, "WNOWAIT", None)
    if wnowait is None or not hasattr(os, "waitid"):
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | wnowait)


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
    devices: str | None = None,
) -> MonitoredCommandResult:
    """Run ``cmd`` (stdio inherited), sample it and its children, report what it cost.

    With ``out``, writes ``out/resources.csv`` (one flushed row per sample, ``epoch`` empty)
    and ``out/summary.json`` (written to a temporary file and renamed): every energy figure
    with its scope, source label and coverage, and the command's attributed share
    (``energy_process_j``). Sensors are found before the command starts; sampling begins
    right after it starts, so the first milliseconds (process start-up) fall outside the
    measured window. The closing sample is taken after the command exits and before it is
    reaped, so its CPU time up to the end counts.

    Phases: the command gets ``EDGETRAIN_MARKS`` naming ``out/marks.tsv`` (a temporary
    file without ``out``); each ``edgetrain.mark(label)`` in it starts a phase, and the
    result (summary.json ``phases``) splits the time and energy per phase.

    Args:
        cmd: Program and arguments.
        interval_s: Sampling interval.
        out: Directory for resources.csv and summary.json, or None.
        cpu_tdp_w: TDP for the CPU estimate where no CPU energy is measured.
        devices: GPUs to measure, written like ``CUDA_VISIBLE_DEVICES`` or ``all``;
            default: ``CUDA_VISIBLE_DEVICES``, else every GPU (see
            :class:`~edgetrain.measure.nvml.NvmlSensor`).

    Raises:
        EdgeTrainError: if the command is empty or not found.
    """
    command = _resolve(cmd)
    out_dir = Path(out) if out is not None else None
    sensors, statuses = discover_sensors(cpu_tdp_w=cpu_tdp_w, devices=devices)
    interrupted = [False]
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # Linux records the spawning process's own peak into the child's ru_maxrss at exec, so
    # a child's ru_maxrss at or below ours says nothing about the child
    own_peak = proctree.hwm_bytes(os.getpid())
    # the command's edgetrain.mark() calls append to this file
    scratch: tempfile.TemporaryDirectory[str] | None = None
    if out_dir is not None:
        marks_path = out_dir / MARKS_FILE
        out_dir.mkdir(parents=True, exist_ok=True)
        marks_path.unlink(missing_ok=True)  # an earlier command's marks in the same directory
    else:
        scratch = tempfile.TemporaryDirectory(prefix="edgetrain-")
        marks_path = Path(scratch.name) / MARKS_FILE
    try:
        proc = subprocess.Popen(command, env={**os.environ, MARKS_ENV: str(marks_path)})
    except FileNotFoundError as exc:
        for s in sensors:
            s.close()
        if scratch is not None:
            scratch.cleanup()
        raise EdgeTrainError(f"command not found: {command[0]}") from exc
    except PermissionError as exc:
        for s in sensors:
            s.close()
        if scratch is not None:
            scratch.cleanup()
        raise EdgeTrainError(f"command is not executable: {command[0]}") from exc
    # follow the child's process tree instead of ours
    sensors = [PsutilSensor(proc.pid) if isinstance(s, PsutilSensor) else s for s in sensors]
    for sensor in sensors:
        if hasattr(sensor, "pid"):  # NVML (held GPUs), Jetson (NvMap memory)
            sensor.pid = proc.pid
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
    recorder = PhaseRecorder()
    monitor.add_listener(recorder)
    window = monitor.window("command")
    peak_rss_child: int | None = None
    try:
        with _forward_sigint(proc, interrupted):
            origin_s = mark_time()  # the wall-clock time of the monitor's t_s = 0
            window.open()
            monitor.start()
            try:
                _wait_exited(proc)
                monitor.stop()
                result = window.close()  # the exited child is still readable here
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
        marks = read_marks(marks_path)
        if scratch is not None:
            scratch.cleanup()
    if peak_rss_child is not None and own_peak is not None and peak_rss_child <= own_peak:
        peak_rss_child = None
    if peak_rss_child is not None and (result.peak_rss_bytes or 0) < peak_rss_child:
        result = replace(result, peak_rss_bytes=peak_rss_child)
    status = "interrupted" if interrupted[0] else ("completed" if exit_code == 0 else "failed")
    phases = split_phases(marks, origin_s, result.time_s, recorder)
    outcome = MonitoredCommandResult(
        command=command,
        exit_code=exit_code,
        status=status,
        window=result,
        peak_power_w=result.peak_power_w,
        sample_rate_hz=monitor.sample_rate_hz,
        sensors=monitor.sensor_statuses,
        out=out_dir,
        phases=phases,
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
    note = str(w.energy_source)
    if w.energy_j is not None:
        note += f", scope {w.energy_scope}{_coverage(w.energy_coverage)}"
    table.add_row("energy", energy, Text(note))
    for figure in w.energy_figures:
        if figure.get("name") in ("total", "process"):
            continue
        table.add_row(
            Text(f"  {figure['name']}"),
            f"{figure['energy_j']:.1f} J",
            Text(f"{figure['source']}, {figure['scope']}{_coverage(figure.get('coverage'))}"),
        )
    if w.energy_process_j is not None:
        table.add_row(
            "energy, this process tree",
            f"{w.energy_process_j:.1f} J",
            Text(f"{w.energy_process_source}{_coverage(w.energy_process_coverage)}"),
        )
    if w.degraded:
        table.add_row("degraded", "", Text(", ".join(w.degraded)))
    for phase in result.phases[:MAX_PHASE_ROWS]:
        table.add_row(
            Text(f"  phase {phase.label}"),
            "-" if phase.energy_j is None else f"{phase.energy_j:.1f} J",
            f"{format_seconds(phase.time_s)}, {_watts(phase.avg_power_w)}",
        )
    if len(result.phases) > MAX_PHASE_ROWS:
        more = len(result.phases) - MAX_PHASE_ROWS
        table.add_row(Text(f"  … {more} more phases"), "", "summary.json: phases")
    table.add_row("average power", _watts(w.avg_power_w), "")
    table.add_row("peak power", _watts(result.peak_power_w), "over samples")
    table.add_row(
        "peak RSS", format_bytes(w.peak_rss_bytes), "process tree, shared pages per process"
    )
    if w.peak_pss_bytes is not None:
        table.add_row("peak PSS", format_bytes(w.peak_pss_bytes), "process tree, read every few s")
    if w.peak_device_mem_bytes is not None:
        table.add_row("peak GPU memory", format_bytes(w.peak_device_mem_bytes), "device-wide")
    return table


def _coverage(value: float | None) -> str:
    return "" if value is None or value >= 1.0 else f", covers {100 * value:.0f}% of the time"


def _watts(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} W"
