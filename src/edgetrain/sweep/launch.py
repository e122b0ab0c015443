"""Start one trial in its own process, wait for it, and say what happened.

The trial process is ``python -m edgetrain.sweep.trial SPEC.json`` (launcher
``subprocess``) or a fork of a pre-loaded zygote (launcher ``zygote``, the default where
it is safe: see :func:`choose_launcher`); its output goes to ``trials/<n>/trial.log``. Whatever the process does (raises, is killed, hangs past the time
limit), the worker gets a :class:`TrialOutcome` and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError
from edgetrain.safefs import fsync_dir
from edgetrain.sweep.trial import EXIT_INTERRUPTED, TRIAL_FILE, read_trial_file

__all__ = [
    "LAUNCHERS",
    "SubprocessLauncher",
    "TrialOutcome",
    "ZygoteLauncher",
    "choose_launcher",
    "make_launcher",
    "run_trial_process",
    "trial_env",
]

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


#: Never passed to trial processes (they do not touch the study storage).
_PRIVATE_ENV = ("EDGETRAIN_SWEEP_STORAGE", "EDGETRAIN_TEST_PG_URL")


def trial_env(threads: int | None) -> dict[str, str]:
    """The environment of a trial process: ours, edgetrain importable, threads capped."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    src = str(Path(__file__).resolve().parents[2])  # the directory holding edgetrain/
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in paths:
        env["PYTHONPATH"] = os.pathsep.join([src, *paths])
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


class _Handle:
    """A running trial process."""

    pid: int | None = None

    def wait(self, timeout: float | None) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        raise NotImplementedError

    def send(self, sig: int) -> None:
        """Send a signal to the trial process."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class _PopenHandle(_Handle):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


class SubprocessLauncher:
    """Each trial is a fresh ``python -m edgetrain.sweep.trial`` (pays every import)."""

    name = "subprocess"

    def __init__(self, threads: int | None) -> None:
        self.env = trial_env(threads)

    def launch(self, spec_path: Path, log_path: Path) -> _Handle:
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgetrain.sweep.trial", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return _PopenHandle(proc)

    def prepare(self) -> None:
        """Nothing to prepare."""

    def close(self) -> None:
        """Nothing to release."""


class _LineReader:
    """Lines from a pipe with a timeout (no buffering behind select's back)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def readline(self, timeout: float | None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.eof = True
                continue
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


class _ZygoteHandle(_Handle):
    def __init__(self, launcher: ZygoteLauncher, pid: int) -> None:
        self.launcher = launcher
        self.pid = pid
        self.code: int | None = None

    def wait(self, timeout: float | None) -> int | None:
        if self.code is None:
            self.code = self.launcher._wait_exit(timeout)
        return self.code


class ZygoteLauncher:
    """Trials are forked from a pre-loaded zygote process (see :mod:`edgetrain.sweep.zygote`).

    One per worker thread; the zygote is (re)started on demand.
    """

    name = "zygote"
    START_TIMEOUT_S = 300.0  # importing torch on a busy small board can take minutes

    def __init__(self, threads: int | None) -> None:
        self.env = trial_env(threads)
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: _LineReader | None = None
        self._fallback: SubprocessLauncher | None = None

    def _ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None and not self.reader.eof:
            return
        self.close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetrain.sweep.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        self.reader = _LineReader(self.proc.stdout.fileno())
        line = self.reader.readline(self.START_TIMEOUT_S)
        if line != "ready":
            self.close()
            raise RuntimeError(f"the trial zygote did not start (said {line!r})")

    def prepare(self) -> None:
        """Start the zygote if it is not running (falls back to fresh processes if it fails)."""
        if self._fallback is not None:
            return
        try:
            self._ensure()
        except (OSError, RuntimeError) as exc:
            log.warning("%s; trials of this worker start as fresh processes instead", exc)
            self._fallback = SubprocessLauncher(None)
            self._fallback.env = self.env

    def launch(self, spec_path: Path, log_path: Path) -> _Handle:
        self.prepare()
        if self._fallback is not None:
            return self._fallback.launch(spec_path, log_path)
        request = {
            "spec": str(spec_path),
            "log": str(log_path),
            "cwd": os.getcwd(),
            "env": self.env,
        }
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        line = self.reader.readline(60.0)
        if not line or not line.startswith("started "):
            self.close()
            raise RuntimeError(f"the trial zygote did not start the trial (said {line!r})")
        return _ZygoteHandle(self, int(line.split()[1]))

    def _wait_exit(self, timeout: float | None) -> int | None:
        line = self.reader.readline(timeout)
        if line is None:
            if self.reader.eof:  # the zygote died; its trial got SIGTERM with it
                self.close()
                return -signal.SIGTERM
            return None
        if line.startswith("exited "):
            return int(line.split()[1])
        raise RuntimeError(f"unexpected answer from the trial zygote: {line!r}")

    def close(self) -> None:
        """End the zygote (it exits when its stdin closes)."""
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None


LAUNCHERS = ("auto", "zygote", "subprocess")


def _gpu_device_nodes() -> bool:
    return any(
        os.path.exists(p)
        for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvhost-ctrl-gpu", "/dev/kfd")
    )


def choose_launcher(kind: str, device: str) -> str:
    """``auto``: the zygote where forking after importing torch is safe, else subprocesses.

    CUDA does not survive ``fork`` once initialised; importing torch does not initialise it,
    but to stay on the safe side the zygote is used on machines without a GPU, or when the
    trials are told ``device: cpu``.
    """
    if kind not in LAUNCHERS:
        raise EdgeTrainError(f"launcher must be one of {list(LAUNCHERS)}, got {kind!r}")
    if kind != "auto":
        if kind == "zygote" and not hasattr(os, "fork"):
            raise EdgeTrainError("the zygote launcher needs os.fork (Linux, macOS)")
        return kind
    if not hasattr(os, "fork") or sys.platform == "darwin":
        return "subprocess"  # macOS: forking after loading system frameworks is unsafe
    return "zygote" if device == "cpu" or not _gpu_device_nodes() else "subprocess"


def make_launcher(kind: str, threads: int | None) -> SubprocessLauncher | ZygoteLauncher:
    """A launcher for one worker thread (``kind`` as returned by :func:`choose_launcher`)."""
    return ZygoteLauncher(threads) if kind == "zygote" else SubprocessLauncher(threads)


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


def _stop(handle: _Handle) -> int:
    handle.send(signal.SIGTERM)
    code = handle.wait(_TERM_GRACE_S)
    if code is None:
        handle.send(signal.SIGKILL)
        code = handle.wait(None)
    return code if code is not None else -signal.SIGKILL


def run_trial_process(
    run_dir: Path,
    config: dict[str, Any],
    *,
    quantize: bool = False,
    threads: int | None = None,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
    launcher: SubprocessLauncher | ZygoteLauncher | None = None,
    trial: dict[str, Any] | None = None,
) -> TrialOutcome:
    """Run one trial in a child process and classify how it ended.

    A trial whose ``trial.json`` says ``completed`` is complete even when its process was
    killed afterwards (the result is on disk, fsynced, before the process exits).

    Args:
        run_dir: the trial's run directory (``trials/<n>``); must be new.
        config: the trial's training config (``out`` is set to ``run_dir``).
        quantize: quantise the trained model and report its accuracy and size.
        threads: torch threads of the trial (None: torch's default).
        timeout_s: stop the trial after this many seconds (None: no limit).
        stop: set by the sweep to stop early; the trial is then ``interrupted``.
        launcher: starts the process (default: a fresh ``python`` per trial).
        trial: the study trial's identity, written into ``trial.json`` (for recovery).
    """
    run_dir = Path(run_dir).resolve()
    _prepare_dir(run_dir)
    # spec and log live beside the run directory while the trial runs (train() wants it
    # empty) and are moved into it afterwards
    spec_path = run_dir.with_name(f"{run_dir.name}.spec.json")
    log_path = run_dir.with_name(f"{run_dir.name}.log")
    stop = stop or threading.Event()
    own = launcher is None
    launcher = launcher or SubprocessLauncher(threads)
    launcher.prepare()  # a zygote's one-time start is not part of this trial's start-up
    spec = {"run_dir": str(run_dir), "config": config, "quantize": quantize, "threads": threads}
    if trial is not None:
        spec["trial"] = trial
    spec["launched_at"] = time.time()
    spec_path.write_text(json.dumps(spec, indent=2, default=str))
    log_path.write_bytes(b"")
    timed_out = False
    try:
        handle = launcher.launch(spec_path, log_path)
        t0 = time.perf_counter()  # after a zygote's one-time start-up
        while True:
            rc = handle.wait(_POLL_S)
            if rc is not None:
                break
            if stop.is_set():
                rc = _stop(handle)
                break
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                timed_out = True
                rc = _stop(handle)
                break
    finally:
        if own:
            launcher.close()
    wall_s = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(log_path), run_dir / "trial.log")
    shutil.move(str(spec_path), run_dir / "trial_spec.json")
    fsync_dir(run_dir)
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
    if report.get("status") == "completed":
        outcome.state = "complete"
    elif timed_out:
        outcome.fail_reason = "timeout"
        outcome.error = f"trial exceeded the time limit of {timeout_s:g} s and was stopped"
    elif stop.is_set():
        outcome.state = "interrupted"
        outcome.error = "interrupted: the sweep was stopped while the trial ran"
    elif rc < 0:
        outcome.fail_reason = "killed"
        hint = (
            " (out of memory? the kernel's OOM killer sends SIGKILL)"
            if rc == -signal.SIGKILL
            else ""
        )
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
