"""Start one trial in its own process, wait for it, and say what happened.

The trial process is ``python -m edgetrain.sweep.trial SPEC.json``; its output goes to
``trials/<n>/trial.log``. Whatever the process does (raises, is killed, hangs past the time
limit), the worker gets a :class:`TrialOutcome` and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrain.sweep.trial import EXIT_INTERRUPTED, TRIAL_FILE, read_trial_file

__all__ = ["TrialOutcome", "run_trial_process", "trial_env"]

log = logging.getLogger(__name__)

_TERM_GRACE_S = 10.0  # after SIGTERM, how long a trial may take to leave its files readable
_POLL_S = 0.05


@dataclass
class TrialOutcome:
    """What became of a trial process.

    Attributes:
        state: ``complete``, ``failed`` or ``interrupted`` (stopped by the sweep itself).
        fail_reason: ``error``, ``killed`` or ``timeout`` for a failed trial.
        error: one line saying why it failed.
        metrics: what ``trial.json`` reported (empty when the process left none).
        timing: start-up and training times reported by the process.
        wall_s: the process's wall time, seen from the worker.
        returncode: the exit code (negative: killed by that signal).
    """

    state: str
    fail_reason: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    returncode: int | None = None


def trial_env(threads: int | None) -> dict[str, str]:
    """The environment of a trial process: ours, edgetrain importable, threads capped."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the directory holding edgetrain/
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in paths:
        env["PYTHONPATH"] = os.pathsep.join([src, *paths])
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _prepare_dir(run_dir: Path) -> None:
    """An empty run directory; a leftover of an older study is moved aside, not deleted."""
    if run_dir.exists() and any(run_dir.iterdir()):
        k = 1
        while run_dir.with_name(f"{run_dir.name}.old{k}").exists():
            k += 1
        aside = run_dir.with_name(f"{run_dir.name}.old{k}")
        log.warning("%s already exists (another study?): moved to %s", run_dir, aside)
        run_dir.rename(aside)
    run_dir.mkdir(parents=True, exist_ok=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=_TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_trial_process(
    run_dir: Path,
    config: dict[str, Any],
    *,
    quantize: bool = False,
    threads: int | None = None,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> TrialOutcome:
    """Run one trial in a child process and classify how it ended.

    Args:
        run_dir: the trial's run directory (``trials/<n>``); must be new.
        config: the trial's training config (``out`` is set to ``run_dir``).
        quantize: quantise the trained model and report its accuracy and size.
        threads: torch threads of the trial (None: torch's default).
        timeout_s: kill the trial after this many seconds (None: no limit).
        stop: set by the sweep to stop early; the trial is then ``interrupted``.
    """
    run_dir = Path(run_dir)
    _prepare_dir(run_dir)
    # spec and log live beside the run directory while the trial runs (train() wants it
    # empty) and are moved into it afterwards
    spec_path = run_dir.with_name(f"{run_dir.name}.spec.json")
    log_path = run_dir.with_name(f"{run_dir.name}.log")
    spec = {"run_dir": str(run_dir.resolve()), "config": config, "quantize": quantize, "threads": threads}
    spec_path.write_text(json.dumps(spec, indent=2, default=str))
    stop = stop or threading.Event()
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgetrain.sweep.trial", str(spec_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=trial_env(threads),
        )
        while True:
            try:
                proc.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop.is_set():
                _terminate(proc)
                break
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                timed_out = True
                _terminate(proc)
                break
    wall_s = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(log_path), run_dir / "trial.log")
    shutil.move(str(spec_path), run_dir / "trial_spec.json")
    rc = proc.returncode
    if rc == EXIT_INTERRUPTED and not stop.is_set():
        stop.wait(0.5)  # a Ctrl-C reaches the trial and the sweep at the same moment
    report = read_trial_file(run_dir) or {}
    outcome = TrialOutcome(
        state="failed",
        metrics=dict(report.get("metrics") or {}),
        timing=dict(report.get("timing") or {}),
        wall_s=wall_s,
        returncode=rc,
    )
    if rc == 0 and report.get("status") == "completed":
        outcome.state = "complete"
    elif timed_out:
        outcome.fail_reason = "timeout"
        outcome.error = f"trial exceeded the time limit of {timeout_s:g} s and was stopped"
    elif stop.is_set():
        outcome.state = "interrupted"
        outcome.error = "interrupted: the sweep was stopped while the trial ran"
    elif rc is not None and rc < 0:
        outcome.fail_reason = "killed"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if rc == -signal.SIGKILL else ""
        outcome.error = f"trial process killed by {_signal_name(rc)}{hint}"
    elif rc == EXIT_INTERRUPTED:
        outcome.fail_reason = "killed"
        outcome.error = "trial process was interrupted (SIGINT/SIGTERM) from outside the sweep"
    else:
        outcome.fail_reason = "error"
        outcome.error = (
            report.get("error")
            or _last_line(run_dir / "trial.log")
            or f"trial process exited with code {rc} and left no {TRIAL_FILE}"
        )
    return outcome
