"""Heartbeats: trials left running by a dead worker are marked failed, not lost.

Optuna's own heartbeat exists for database storages only (the journal file has none), so
edgetrain keeps one mechanism for both:

- Each worker process runs one :class:`Heartbeat` thread that, every ``interval_s``,
  bumps a counter in a system attribute of each trial it is running.
- :class:`StaleTrialReaper` (run by every worker before it asks for a trial) finds a
  RUNNING trial whose worker is gone: a dead process on this host (known at once, e.g. on
  resume after a kill; also a trial of this very process that no worker runs any more),
  or a counter that has not changed for ``grace_s`` seconds of the reaper's own clock.
  Comparing counters, not timestamps, makes machines' clock differences irrelevant.

If the trial had finished (its ``trial.json`` says so, see :mod:`edgetrain.sweep.recover`),
its result is told to the study; otherwise it is marked failed with reason ``lost``. A
lost trial says nothing about its configuration, so it is re-queued once with the same
parameters (user attribute ``retry_of``) and does not count towards ``--trials``.

Only Optuna's public API is used: storage methods of ``optuna.storages.BaseStorage`` on
trial ids found with ``get_trial_id_from_study_id_trial_number``. Optuna's own heartbeat
(``RDBStorage(heartbeat_interval=...)`` with ``RetryFailedTrialCallback``) is not used: it
exists for database storages only and is driven by ``study.optimize``, not ask/tell.
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
    "requeue",
    "study_id_of",
    "trial_id_of",
]

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "edgetrain:heartbeat"
OWNER_ATTR = "edgetrain:owner"
FAIL_REASON_ATTR = "edgetrain:fail_reason"

# owner tokens of the trials that workers of this process are running now
_LIVE_TOKENS: set[str] = set()
_LIVE_LOCK = threading.Lock()


def study_id_of(storage: Any, study: Any) -> int:
    """The storage's id of a study (public storage API)."""
    return int(storage.get_study_id_from_name(study.study_name))


def trial_id_of(storage: Any, study_id: int, number: int) -> int:
    """The storage's id of trial ``number`` (public storage API)."""
    return int(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def owner_record(worker: int = 0) -> dict[str, Any]:
    """Who runs a trial: host, worker process (pid and its start time) and worker thread.

    A worker adds ``token`` (unique per trial, also written into the trial's
    ``trial.json``) and ``run_dir`` (the trial directory's absolute path).
    """
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _process_start(pid),
        "worker": worker,
    }


def _owner_dead(owner: Any) -> bool:
    """True only when the owner is on this host and certainly runs the trial no more."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    pid, start = owner.get("pid"), owner.get("pid_start")
    if not isinstance(pid, int):
        return False
    now_start = _process_start(pid)
    if now_start is None:
        return True  # no such process
    if start is not None and abs(now_start - float(start)) > 1.0:
        return True  # pid reused
    token = owner.get("token")
    if pid == os.getpid() and isinstance(token, str):
        with _LIVE_LOCK:  # ours, but no worker of this process runs it (an earlier call's)
            return token not in _LIVE_TOKENS
    return False


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
        url: the storage URL as given (masked out of messages).
    """

    def __init__(self, storage: Any, interval_s: float = 10.0, url: str | None = None) -> None:
        self.storage = storage
        self.interval_s = float(interval_s)
        self.url = url
        self._active: dict[int, int] = {}
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reaped: set[int] = set()  # own trials another worker marked failed

    def add(self, trial_id: int, token: str | None = None) -> None:
        """Start beating for a trial (one beat now); ``token``: its owner token."""
        if token is not None:
            with _LIVE_LOCK:
                _LIVE_TOKENS.add(token)
        with self._lock:
            self._active[trial_id] = 0
            if token is not None:
                self._tokens[trial_id] = token
        self._beat(trial_id)

    def remove(self, trial_id: int) -> None:
        """Stop beating for a trial."""
        with self._lock:
            self._active.pop(trial_id, None)
            token = self._tokens.pop(trial_id, None)
        if token is not None:
            with _LIVE_LOCK:
                _LIVE_TOKENS.discard(token)

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
            from edgetrain.sweep.storage import mask_text

            text = mask_text(str(exc), self.url).strip().splitlines()
            log.warning(
                "heartbeat for trial id %d failed: %s: %s",
                trial_id,
                type(exc).__name__,
                text[0] if text else "",
            )

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
    """Finds RUNNING trials whose worker is gone: recovers their result or fails them.

    Args:
        storage: the study's Optuna storage.
        grace_s: how long a trial's heartbeat may stay unchanged before it is stale.
        own: returns the trial ids this process runs (never reaped).
        recover: ``recover(frozen_trial, trial_id) -> bool``: tell the study a finished
            result the trial left on disk (True), instead of failing it.
    """

    def __init__(self, storage: Any, grace_s: float, own: Any = None, recover: Any = None) -> None:
        self.storage = storage
        self.grace_s = float(grace_s)
        self._own = own or (lambda: set())
        self._recover = recover
        self._seen: dict[int, tuple[str, float]] = {}
        self._ids: dict[int, int] = {}
        self._sid: int | None = None
        self.recovered: list[int] = []  # numbers of trials whose result was recovered

    def _id_of(self, study: Any, number: int) -> int:
        if self._sid is None:
            self._sid = study_id_of(self.storage, study)
        if number not in self._ids:
            self._ids[number] = trial_id_of(self.storage, self._sid, number)
        return self._ids[number]

    def reap(self, study: Any) -> list[int]:
        """Recover or fail stale trials (re-queueing failed ones once); returns the failed."""
        from optuna.trial import TrialState

        now = time.monotonic()
        own = self._own()
        lost = []
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in running:
            tid = self._id_of(study, trial.number)
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
            self._seen.pop(tid, None)
            if self._recover is not None and self._recover(trial, tid):
                self.recovered.append(trial.number)
                continue
            if fail_trial(self.storage, tid, "lost", f"worker lost: {why}"):
                log.warning("trial %d marked failed: %s", trial.number, why)
                lost.append(trial.number)
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
