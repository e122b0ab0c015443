"""Real sweeps of tiny trials: failure isolation, two workers, a killed worker.

Resume is covered end to end by test_cli.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from edgetrain.sweep.heartbeat import OWNER_ATTR
from edgetrain.sweep.runner import run_sweep
from edgetrain.sweep.space import load_space
from edgetrain.sweep.study import fail_reason, load_study, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trials(sweep_dir: Path):
    study, _ = load_study(sweep_dir)
    return study, study.get_trials(deepcopy=False)


def test_a_trial_that_raises_or_is_killed_fails_alone(tmp_path, make_space, helpers_on_path):
    space = load_space(
        make_space(
            params={
                "model": {"choices": ["mlp", f"{helpers_on_path}:boom", f"{helpers_on_path}:die"]}
            }
        )
    )
    study = open_study(space, tmp_path / "sw")
    for model in ("mlp", f"{helpers_on_path}:boom", f"{helpers_on_path}:die"):
        study.enqueue_trial({"model": model})
    result = run_sweep(space, 3, out=tmp_path / "sw", progress=False)
    assert (result.counts.complete, result.counts.failed) == (1, 2)
    _, trials = _trials(tmp_path / "sw")
    by_model = {t.params["model"]: t for t in trials}
    ok = by_model["mlp"]
    assert ok.state == TrialState.COMPLETE and ok.values[0] == ok.user_attrs["val_acc"]
    assert ok.values[1] == ok.user_attrs["energy_j"] >= 0  # 0 J: a run inside one 10 ms tick
    raised = by_model[f"{helpers_on_path}:boom"]
    assert raised.state == TrialState.FAIL and fail_reason(raised) == "error"
    assert "boom: this trial fails on purpose" in raised.user_attrs["error"]
    killed = by_model[f"{helpers_on_path}:die"]
    assert fail_reason(killed) == "killed" and "SIGKILL" in killed.user_attrs["error"]
    for t in trials:  # every trial has its run directory, log and spec
        run = tmp_path / "sw" / "trials" / str(t.number)
        assert (run / "trial.log").exists() and (run / "trial_spec.json").exists()
    assert "test" not in json.dumps(ok.user_attrs)  # test metrics never reach the study


def test_a_different_space_or_study_is_refused(tmp_path, make_space):
    from edgetrain.errors import EdgeTrainError

    space = load_space(make_space())
    open_study(space, tmp_path / "sw")
    other = load_space(make_space(params={"lr": {"low": 0.001, "high": 0.2, "log": True}}))
    with pytest.raises(
        EdgeTrainError,
        match=r"different search space \(differs in: params\.batch_size, params\.lr\)",
    ):
        run_sweep(other, 1, out=tmp_path / "sw", progress=False)
    with pytest.raises(EdgeTrainError, match="belongs to study 'sweep', not 'x'"):
        run_sweep(space, 1, out=tmp_path / "sw", study_name="x", progress=False)


_WORKER = textwrap.dedent(
    """
    import sys
    from edgetrain.sweep.runner import run_sweep
    run_sweep(sys.argv[1], int(sys.argv[2]), out=sys.argv[3], storage=sys.argv[4] or None,
              study_name=sys.argv[5] or None, progress=False, heartbeat_s=float(sys.argv[6]),
              launcher=sys.argv[7])
    """
)


def _start_worker(
    space_file: Path,
    trials: int,
    out: Path,
    storage: str = "",
    study: str = "",
    heartbeat_s: float = 10.0,
    launcher: str = "auto",
):
    args = [str(space_file), str(trials), str(out), storage, study, str(heartbeat_s), launcher]
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _check_two_workers(study, out_dirs, expected):
    trials = study.get_trials(deepcopy=False)
    # two workers that ask at the same moment may each start the last trial
    assert expected <= len(trials) <= expected + 1
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.system_attrs[OWNER_ATTR]["pid"] for t in trials}) == 2
    for t in trials:  # no lost results: each trial's run directory agrees with the study
        run = next(
            d / "trials" / str(t.number)
            for d in out_dirs
            if (d / "trials" / str(t.number)).exists()
        )
        report = json.loads((run / "trial.json").read_text())
        assert report["metrics"]["energy_j"] == t.user_attrs["energy_j"] == t.values[1]


def test_two_worker_processes_share_the_embedded_storage(tmp_path, make_space):
    (tmp_path / "space.yaml").write_text(json.dumps(make_space()))
    procs = [_start_worker(tmp_path / "space.yaml", 4, tmp_path / "sw") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study, _ = load_study(tmp_path / "sw")
    _check_two_workers(study, [tmp_path / "sw"], 4)


def test_two_workers_on_postgresql(tmp_path, make_space, pg_url):
    import uuid

    (tmp_path / "space.yaml").write_text(json.dumps(make_space()))
    name = f"edgetrain-test-{uuid.uuid4().hex[:8]}"
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # one sweep directory per "machine"
    procs = [_start_worker(tmp_path / "space.yaml", 4, d, pg_url, name) for d in dirs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study, _ = load_study(None, storage=pg_url, study_name=name)
    _check_two_workers(study, dirs, 4)
    from urllib.parse import urlsplit

    password = urlsplit(pg_url).password
    if password:  # the password is in no file of either sweep directory, nor in any output
        for d in dirs:
            for f in d.rglob("*"):
                if f.is_file():
                    assert password not in f.read_text(errors="replace"), f
        assert all(password not in o for o in outputs)
    from edgetrain.sweep.storage import open_storage

    optuna.delete_study(study_name=name, storage=open_storage(pg_url, None))


def test_a_killed_worker_leaves_a_lost_trial_that_is_retried(tmp_path, make_space, helpers_on_path):
    space_dict = make_space(params={"model": {"choices": [f"{helpers_on_path}:sleepy", "mlp"]}})
    (tmp_path / "space.yaml").write_text(json.dumps(space_dict))
    space = load_space(space_dict)
    study = open_study(space, tmp_path / "sw", study_name="space")
    study.enqueue_trial({"model": f"{helpers_on_path}:sleepy"})
    # fresh trial processes: the trial is running (in the study) before it imports anything
    worker = _start_worker(tmp_path / "space.yaml", 1, tmp_path / "sw", launcher="subprocess")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until its trial is running
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running and OWNER_ATTR in running[0].system_attrs:
            break
        time.sleep(0.2)
    else:
        worker.kill()
        pytest.fail("the worker never started its trial: " + (worker.communicate()[0] or ""))
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    # resume: the dead worker's trial is marked lost at once (its pid is gone) and re-queued
    result = run_sweep(
        space, 1, out=tmp_path / "sw", progress=False, trial_timeout_s=2.0, launcher="subprocess"
    )
    assert result.lost == [0]
    trials = study.get_trials(deepcopy=False)
    lost, retry = trials[0], trials[1]
    assert (
        fail_reason(lost) == "lost"
        and "worker lost: its worker process" in lost.user_attrs["error"]
    )
    assert retry.user_attrs["retry_of"] == 0 and retry.params == lost.params
    assert fail_reason(retry) == "timeout" and "time limit of 2 s" in retry.user_attrs["error"]
    assert result.counts.done == 1 and result.counts.not_counted == 1


@pytest.mark.slow
def test_ctrl_c_marks_the_running_trial_interrupted_and_requeues_it(
    tmp_path, make_space, helpers_on_path
):
    space_dict = make_space(params={"model": {"choices": [f"{helpers_on_path}:sleepy"]}})
    (tmp_path / "space.yaml").write_text(json.dumps(space_dict))
    cmd = [sys.executable, "-m", "edgetrain", "sweep", "run", str(tmp_path / "space.yaml")]
    cmd += ["--trials", "1", "--out", str(tmp_path / "sw"), "--quiet", "--launcher", "zygote"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    log = tmp_path / "sw" / "trials" / "0.log"  # exists from the moment the trial is forked
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # the trial is now in its (sleeping) model builder
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    proc.communicate(timeout=60)
    study, _ = load_study(tmp_path / "sw")
    trials = study.get_trials(deepcopy=False)
    assert fail_reason(trials[0]) == "interrupted"
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["retry_of"] == 0
    assert (
        json.loads((tmp_path / "sw" / "trials" / "0" / "trial.json").read_text())["status"]
        == "interrupted"
    )
