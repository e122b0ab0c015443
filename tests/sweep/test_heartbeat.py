"""Heartbeats and the reaper of trials whose worker is gone (no training)."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from edgetrain.sweep.heartbeat import (
    HEARTBEAT_ATTR,
    OWNER_ATTR,
    Heartbeat,
    StaleTrialReaper,
    owner_record,
    study_id_of,
    trial_id_of,
)
from edgetrain.sweep.study import count_trials, fail_reason

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTS = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True)}


def _study():
    """A study and the storage object it uses (Optuna's public API only)."""
    storage = optuna.storages.InMemoryStorage()
    return optuna.create_study(storage=storage, directions=["maximize", "minimize"]), storage


def _tid(study, storage, trial):
    return trial_id_of(storage, study_id_of(storage, study), trial.number)


def _running(study, storage, owner):
    trial = study.ask(fixed_distributions=DISTS)
    storage.set_trial_system_attr(_tid(study, storage, trial), OWNER_ATTR, owner)
    return trial


def test_a_dead_worker_on_this_host_is_seen_at_once():
    study, storage = _study()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = {**owner_record(), "pid": proc.pid, "pid_start": 0.0}
    trial = _running(study, storage, dead)
    alive = _running(study, storage, owner_record())  # this process: alive, never reaped early
    lost = StaleTrialReaper(storage, grace_s=3600).reap(study)
    assert lost == [trial.number]
    frozen = study.get_trials(deepcopy=False)
    assert fail_reason(frozen[trial.number]) == "lost"
    assert f"pid {proc.pid}" in frozen[trial.number].user_attrs["error"]
    assert frozen[alive.number].state == TrialState.RUNNING
    # re-queued once with the same parameters, and not counted towards --trials
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == trial.number
    assert waiting[0].params == {} or waiting[0].params == trial.params
    counts = count_trials(study)
    assert (counts.done, counts.not_counted, counts.running, counts.waiting) == (0, 1, 1, 1)


def test_a_silent_worker_elsewhere_is_lost_after_the_grace_period():
    study, storage = _study()
    remote = {"host": "another-machine", "pid": 1234, "pid_start": 0.0, "worker": 0}
    silent = _running(study, storage, remote)
    beating = _running(study, storage, remote)
    reaper = StaleTrialReaper(storage, grace_s=0.3)
    assert reaper.reap(study) == []  # first sight: the clock starts
    for i in range(3):
        time.sleep(0.15)
        storage.set_trial_system_attr(_tid(study, storage, beating), HEARTBEAT_ATTR, [i, 0.0])
        reaper.reap(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[silent.number] == TrialState.FAIL
    assert states[beating.number] == TrialState.RUNNING
    study.tell(beating, [0.5, 1.0])
    # a retry that is lost again is not re-queued a second time
    retry = study.ask(fixed_distributions=DISTS)
    assert retry.user_attrs["retry_of"] == silent.number
    storage.set_trial_system_attr(_tid(study, storage, retry), OWNER_ATTR, remote)
    reaper.reap(study)
    time.sleep(0.4)
    reaper.reap(study)
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def test_heartbeat_thread_beats_and_notices_a_reaped_trial():
    study, storage = _study()
    trial = study.ask(fixed_distributions=DISTS)
    tid = _tid(study, storage, trial)
    beat = Heartbeat(storage, interval_s=0.05).start()
    try:
        beat.add(tid)
        time.sleep(0.3)
        count = study.get_trials(deepcopy=False)[0].system_attrs[HEARTBEAT_ATTR][0]
        assert count >= 3
        study.tell(trial, state=TrialState.FAIL)  # e.g. another worker marked it lost
        time.sleep(0.2)
        assert tid in beat.reaped and not beat.active()
    finally:
        beat.stop()
