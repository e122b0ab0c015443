"""Heartbeats: trials left running by a dead worker are marked failed, not lost.

Optuna's own heartbeat exists for database storages only (the journal file has none), so
edgetrain keeps one mechanism for both:

- Each worker process runs one :class:`Heartbeat` thread that, every ``interval_s``,
  bumps a counter in a system attribute of each trial it is running.
- :class:`StaleTrialReaper` (run by every worker before it asks for a trial) marks a
  RUNNING trial failed, with reason ``lost``, when its worker is a dead process on this
  host (known at once, e.g. on resume after a kill), or when its counter has not changed
  for ``grace_s`` seconds of the reaper's own clock. Comparing counters, not timestamps,
  makes machines' clock differences irrelevant.

A lost trial says nothing about its configuration, so it is re-queued once with the same
parameters (user attribute ``retry_of``) and does not count towards ``--trials``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from edgetrain.sweep._optuna import optuna

__all__ = [
    "FAIL_REASON_ATTR",
    "HEARTBEAT_ATTR",
    "OWNER_ATTR",
    "Heartbeat",
    "StaleTrialReaper",
    "fail_trial",
    "owner_record",
]

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "edgetrain:heartbeat"
OWNER_ATTR = "edgetrain:owner"
FAIL_REASON_ATTR = "edgetrain:fail_reason"


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def owner_record(worker: int = 0) -> dict[str, Any]:
    """Who runs a trial: host, worker process (pid and its start time) and worker thread."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _process_start(pid),
        "worker": worker,
    }


def _owner_dead(owner: Any) -> bool:
    """True only when the owner is on this host and its process is certainly gone."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    pid, start = owner.get("pid"), owner.get("pid_start")
    if not isinstance(pid, int):
        return False
    now_start = _process_start(pid)
    if now_start is None:
        return True  # no such process
    return start is not None and abs(now_start - float(start)) > 1.0  # pid reused


def fail_trial(storage: Any, trial_id: int, reason: str, error: str) -> bool:
    """Mark a RUNNING trial failed with a reason and a message; False if it had finished."""
    from optuna.trial import TrialState

    try:
        storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, reason)
        storage.set_trial_user_attr(trial_id, "error", error)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


class Heartbeat:
    """A background thread that keeps this process's running trials alive in the storage.

    Args:
        storage: the study's Optuna storage.
        interval_s: seconds between beats.
    """

    def __init__(self, storage: Any, interval_s: float = 10.0) -> None:
        self.storage = storage
        self.interval_s = float(interval_s)
        self._active: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reaped: set[int] = set()  # own trials another worker marked failed

    def add(self, trial_id: int) -> None:
        """Start beating for a trial (one beat now)."""
        with self._lock:
            self._active[trial_id] = 0
        self._beat(trial_id)

    def remove(self, trial_id: int) -> None:
        """Stop beating for a trial."""
        with self._lock:
            self._active.pop(trial_id, None)

    def active(self) -> set[int]:
        """Trial ids this process is running."""
        with self._lock:
            return set(self._active)

    def _beat(self, trial_id: int) -> None:
        with self._lock:
            if trial_id not in self._active:
                return
            self._active[trial_id] += 1
            count = self._active[trial_id]
        try:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, [count, time.time()])
        except optuna.exceptions.UpdateFinishedTrialError:
            self.reaped.add(trial_id)
            self.remove(trial_id)
        except Exception as exc:  # a storage hiccup must not end the sweep
            log.warning("heartbeat for trial id %d failed: %s", trial_id, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for trial_id in self.active():
                self._beat(trial_id)

    def start(self) -> Heartbeat:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="edgetrain-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class StaleTrialReaper:
    """Finds RUNNING trials whose worker is gone and marks them failed (reason ``lost``).

    Args:
        grace_s: how long a trial's heartbeat may stay unchanged before it is stale.
        own: returns the trial ids this process runs (never reaped).
    """

    def __init__(self, grace_s: float, own: Any = None) -> None:
        self.grace_s = float(grace_s)
        self._own = own or (lambda: set())
        self._seen: dict[int, tuple[str, float]] = {}

    def reap(self, study: Any) -> list[int]:
        """Mark stale trials failed and re-queue their parameters once; returns their numbers."""
        from optuna.trial import TrialState

        now = time.monotonic()
        own = self._own()
        lost = []
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in running:
            tid = trial._trial_id
            if tid in own:
                continue
            owner = trial.system_attrs.get(OWNER_ATTR)
            beat = json.dumps(trial.system_attrs.get(HEARTBEAT_ATTR))
            why = None
            if _owner_dead(owner):
                why = f"its worker process (pid {owner.get('pid')} on {owner.get('host')}) is gone"
            else:
                prev = self._seen.get(tid)
                if prev is None or prev[0] != beat:
                    self._seen[tid] = (beat, now)
                    continue
                if now - prev[1] < self.grace_s:
                    continue
                who = (
                    f"{owner.get('host')} pid {owner.get('pid')}"
                    if isinstance(owner, dict)
                    else "an unknown worker"
                )
                why = f"no heartbeat from its worker ({who}) for {now - prev[1]:.1f} s"
            if fail_trial(study._storage, tid, "lost", f"worker lost: {why}"):
                log.warning("trial %d marked failed: %s", trial.number, why)
                lost.append(trial.number)
                self._seen.pop(tid, None)
                requeue(study, trial)
        return lost


def requeue(study: Any, trial: Any) -> bool:
    """Queue a trial's parameters again (once: a retry is not retried)."""
    if "retry_of" in trial.user_attrs:
        return False
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return True
