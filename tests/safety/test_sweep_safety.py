"""Safety of sweeps: no finished result is ever lost, and only Optuna's public API is used.

A torn journal record, a lock left by a killed worker, a database that restarts, a killed
trial or worker, parameters from the storage that the local space does not allow. Every
test works in its own temporary directory.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
import pytest
from optuna.trial import TrialState, create_trial

import edgetrain.sweep
from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.heartbeat import OWNER_ATTR, fail_trial, study_id_of, trial_id_of
from edgetrain.sweep.journal import CORRUPT_SUFFIX, LOCK_SUFFIX, JournalFile
from edgetrain.sweep.recover import trial_identity
from edgetrain.sweep.runner import run_sweep
from edgetrain.sweep.space import load_space
from edgetrain.sweep.storage import (
    RETRY_ENV,
    StorageRetry,
    StorageUnavailableError,
    open_storage,
    retry_patience_s,
)
from edgetrain.sweep.study import count_trials, fail_reason, load_study, open_sweep_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

# the smallest real trial (as in tests/sweep/conftest.py)
TINY_BASE: dict[str, Any] = {
    "model": "mlp",
    "model_args": {"hidden": [16]},
    "data": "digits",
    "epochs": 1,
    "batch_size": 32,
    "max_batches_per_epoch": 2,
    "monitor": {"interval_s": 0.1},
}

HELPERS = """
import os
import signal
import time
from pathlib import Path

from edgetrain.zoo.models import build_model


def _mlp(num_classes, in_channels, input_size, options):
    return build_model(
        "mlp", num_classes=num_classes, in_channels=in_channels, input_size=input_size, **options
    )


def die_once(num_classes, in_channels, input_size, **options):
    marker = Path(os.environ["SAFETY_MARKER_DIR"]) / "died"
    if not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return _mlp(num_classes, in_channels, input_size, options)


def nap(num_classes, in_channels, input_size, **options):
    time.sleep(float(os.environ.get("SAFETY_NAP_S", "3")))
    return _mlp(num_classes, in_channels, input_size, options)


def evil(num_classes, in_channels, input_size, **options):
    (Path(os.environ["SAFETY_MARKER_DIR"]) / "evil-ran").write_text("x")
    return _mlp(num_classes, in_channels, input_size, options)
"""


def _space(**params: Any) -> dict[str, Any]:
    return {
        "base": dict(TINY_BASE),
        "params": params or {"lr": {"low": 0.001, "high": 0.1, "log": True}},
    }


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``safety_helpers`` (model builders that die, nap, or must never run) on PYTHONPATH."""
    (tmp_path / "safety_helpers.py").write_text(textwrap.dedent(HELPERS))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), old) if p))
    monkeypatch.setenv("SAFETY_MARKER_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "safety_helpers"


def _add_complete(study: Any, space: Any, n: int) -> None:
    """``n`` completed trials with the metrics analysis reads (no training)."""
    for i in range(n):
        acc, energy = 0.5 + 0.05 * i, 100.0 + 10 * i
        study.add_trial(
            create_trial(
                params={"lr": 0.001 * (i + 1)},
                distributions=space.distributions(),
                values=[acc, energy],
                user_attrs={"val_acc": acc, "energy_j": energy, "time_s": 1.0 + i},
            )
        )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- 1. a torn journal record ----------------------------------------------------------------
TORN = b'{"op_code":8,"worker_id":"dead-worker","trial_id":1,"user_attr":{"val_a'


def test_a_torn_last_journal_record_is_set_aside_and_the_study_loads(tmp_path, caplog):
    space = load_space(_space())
    sw = tmp_path / "sw"
    study, _, _ = open_sweep_study(space, sw)
    _add_complete(study, space, 4)
    journal = sw / "study.journal"
    with open(journal, "ab") as fh:
        fh.write(TORN)  # a crash (or a full disk) in the middle of a write
    caplog.set_level(logging.WARNING)

    study, _ = load_study(sw)
    assert len(study.get_trials()) == 4
    corrupt = journal.with_name(journal.name + CORRUPT_SUFFIX)
    assert corrupt.read_bytes() == TORN + b"\n"  # kept, byte for byte
    assert journal.read_bytes().endswith(b"}\n")
    (warning,) = [w for w in _warnings(caplog) if "incomplete record" in w]
    assert str(corrupt) in warning and "\n" not in warning

    # the sweep goes on writing, and every later reader agrees (no JSONDecodeError)
    study, _, _ = open_sweep_study(space, sw)
    _add_complete(study, space, 1)
    from edgetrain.sweep.analysis import analyze

    assert len(analyze(sw).tables["trials"]) == 5
    assert len(load_study(sw)[0].get_trials()) == 5


def test_a_record_glued_to_a_torn_one_in_the_middle_is_kept(tmp_path, caplog):
    space = load_space(_space())
    sw = tmp_path / "sw"
    study, _, _ = open_sweep_study(space, sw)
    _add_complete(study, space, 2)
    journal = sw / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    # an older writer appended after a torn record: "torn{complete}\n", then more records
    journal.write_bytes(b"".join(lines[:-1]) + TORN + lines[-1])
    _add_complete(open_sweep_study(space, sw)[0], space, 1)
    caplog.set_level(logging.WARNING)
    trials = load_study(sw)[0].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3


def _rec(i: int, pad: int = 0) -> bytes:
    return json.dumps({"op_code": 99, "i": i, "pad": "x" * pad}, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        (b"\0" * 300, 2),  # a file system that zero-filled the end after a crash
        (b"garbage\n" + TORN, 2),  # complete garbage lines at the end go too
        (_rec(9, pad=200_000)[:150_000], 2),  # a torn record longer than one read
        (b"", 2),
    ],
)
def test_torn_tails_of_any_shape_are_cut_at_the_last_complete_record(tmp_path, tail, kept):
    path = tmp_path / "study.journal"
    good = _rec(0) + b"\n" + _rec(1, pad=100_000) + b"\n"
    path.write_bytes(good + tail)
    backend = JournalFile(path)
    assert [r["i"] for r in backend.read_logs(0)] == list(range(kept))
    assert path.read_bytes() == good
    corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
    assert corrupt.exists() == bool(tail)
    backend.append_logs([{"op_code": 99, "i": 2}])
    assert [r["i"] for r in JournalFile(path).read_logs(0)] == [0, 1, 2]


def test_a_journal_whose_only_record_is_torn_starts_empty(tmp_path):
    path = tmp_path / "study.journal"
    path.write_bytes(_rec(0)[:20])
    assert JournalFile(path).read_logs(0) == [] and path.read_bytes() == b""


def test_a_file_that_is_no_journal_is_refused(tmp_path):
    (tmp_path / "study.journal").write_text("hello\nworld\n")
    with pytest.raises(EdgeTrainError, match="is not an Optuna journal"):
        open_storage(None, tmp_path)
    assert (tmp_path / "study.journal").read_text() == "hello\nworld\n"


# -- 2. a lock left by a killed worker --------------------------------------------------------
_HOLD_LOCK = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import optuna
    from edgetrain.sweep.storage import open_storage

    storage = open_storage(None, Path(sys.argv[1]))

    def stuck(fd):  # inside the journal lock, as a worker killed mid-write would be
        print("locked", flush=True)
        time.sleep(600)

    os.fsync = stuck
    optuna.create_study(storage=storage, study_name="first")
    """
)


def test_a_lock_held_by_a_killed_worker_does_not_make_others_wait(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.kill()
        holder.wait()
    lock = tmp_path / ("study.journal" + LOCK_SUFFIX)
    assert lock.exists()  # left behind, as a killed process leaves it
    t0 = time.monotonic()
    storage = open_storage(None, tmp_path)
    optuna.create_study(storage=storage, study_name="second")
    assert time.monotonic() - t0 < 5.0  # Optuna's lock file waits 30 s for a dead holder
    names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(None, tmp_path))}
    assert names == {"first", "second"}  # the dead worker's write had completed


_APPEND = textwrap.dedent(
    """
    import sys
    from edgetrain.sweep.journal import JournalFile

    backend = JournalFile(sys.argv[1])
    for i in range(150):
        backend.append_logs([{"op_code": 99, "worker_id": sys.argv[2], "i": i}])
    """
)


def test_worker_processes_append_to_one_journal_without_losing_records(tmp_path):
    path = tmp_path / "study.journal"
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPEND, str(path), f"w{k}"]) for k in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    logs = JournalFile(path).read_logs(0)
    assert len(logs) == 600
    for k in range(4):
        assert [r["i"] for r in logs if r["worker_id"] == f"w{k}"] == list(range(150))


# -- 3. storage errors are retried --------------------------------------------------------------
def _db_error(message: str) -> Exception:
    """What RDBStorage raises when the database goes away: its error, from SQLAlchemy's."""
    from sqlalchemy.exc import OperationalError

    try:
        raise OperationalError("UPDATE trials ...", {}, Exception(message))
    except OperationalError as cause:
        try:
            raise optuna.exceptions.StorageInternalError("An exception is raised") from cause
        except optuna.exceptions.StorageInternalError as exc:
            return exc


def test_retry_backs_off_masks_the_password_and_gives_up_in_one_line(caplog, monkeypatch):
    url = "postgresql://me:s3cret@db.example/sweeps"
    pauses: list[float] = []
    retry = StorageRetry(url, patience_s=60, sleep=pauses.append)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise _db_error(f"connection to {url} failed: server closed the connection")
        return "told"

    caplog.set_level(logging.WARNING)
    assert retry.call("telling trial 3", flaky) == "told"
    assert len(pauses) == 3 and pauses[0] < pauses[1] < pauses[2]  # exponential backoff
    lines = _warnings(caplog)
    assert len(lines) == 3 and all("storage error while telling trial 3" in w for w in lines)
    assert all("s3cret" not in w and "me:***@db.example" in w for w in lines)
    with pytest.raises(ValueError):  # not a storage hiccup: not retried
        retry.call("x", lambda: int("x"))
    with pytest.raises(StorageUnavailableError) as err:
        StorageRetry(url, patience_s=0.05, sleep=lambda s: time.sleep(0.01)).call(
            "telling trial 4", lambda: (_ for _ in ()).throw(_db_error(f"{url} is down"))
        )
    assert "\n" not in str(err.value) and "s3cret" not in str(err.value)
    assert err.value.__cause__ is None and RETRY_ENV in str(err.value)
    monkeypatch.setenv(RETRY_ENV, "five")
    with pytest.raises(EdgeTrainError, match=f"{RETRY_ENV} must be a number of seconds >= 0"):
        retry_patience_s()


class _FlakyStorage:
    """A study storage whose writes fail like a restarting database (a few times each).

    ``after``: methods that fail once AFTER their write went through (the connection
    dropped before the answer): retrying them must not duplicate anything.
    """

    def __init__(self, inner: Any, fail: dict[str, int], after: tuple[str, ...] = ()) -> None:
        self._inner = inner
        self.fail = dict(fail)
        self.after = set(after)
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target) or name not in self.fail:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.fail.get(name, 0) > 0:
                self.fail[name] -= 1
                self.failed += 1
                if name in self.after:
                    target(*args, **kwargs)
                raise _db_error("terminating connection due to administrator command")
            return target(*args, **kwargs)

        return call


def test_storage_errors_while_telling_are_retried_and_the_result_counts(
    tmp_path, monkeypatch, caplog
):
    import edgetrain.sweep.study as study_module

    flaky: list[_FlakyStorage] = []

    def open_flaky(storage: Any, sweep_dir: Any) -> Any:
        fail = {"create_new_trial": 2, "set_trial_user_attr": 2, "set_trial_state_values": 3}
        flaky.append(
            _FlakyStorage(open_storage(storage, sweep_dir), fail, ("set_trial_state_values",))
        )
        return flaky[-1]

    monkeypatch.setattr(study_module, "open_storage", open_flaky)
    monkeypatch.setenv(RETRY_ENV, "4")
    caplog.set_level(logging.WARNING)
    result = run_sweep(load_space(_space()), 1, out=tmp_path / "sw", progress=False)
    assert flaky[0].failed >= 5
    assert (result.counts.complete, result.counts.failed, len(result.records)) == (1, 0, 1)
    retries = [w for w in _warnings(caplog) if w.startswith("storage error while")]
    assert any("recording trial 0" in w for w in retries)
    assert any("asking for a trial" in w for w in retries)
    trials = load_study(tmp_path / "sw")[0].get_trials()
    assert len(trials) == 1 and trials[0].state == TrialState.COMPLETE  # no duplicate


@pytest.fixture
def pg_control(pg_url_env: str) -> dict[str, Any]:
    """How to stop and start the PostgreSQL server of EDGETRAIN_TEST_PG_URL (.ci/postgres.sh)."""
    data = Path(os.environ.get("EDGETRAIN_PG_DIR", "/tmp/edgetrain-pg")) / "data"
    opts_file = data / "postmaster.opts"
    port = urlsplit(pg_url_env).port
    if not opts_file.exists():
        pytest.skip(f"no PostgreSQL data directory at {data} (see .ci/postgres.sh)")
    argv = shlex.split(opts_file.read_text())
    if str(port) not in argv:
        pytest.skip(f"the server in {data} does not serve port {port}")
    pg_ctl = Path(argv[0]).with_name("pg_ctl")
    options, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "-D":
            skip = True
        else:
            options.append(arg)
    ctl = [str(pg_ctl), "-D", str(data), "-w"]
    if os.getuid() == 0:  # postgres refuses to run as root (as in .ci/postgres.sh)
        ctl = ["runuser", "-u", "postgres", "--", *ctl]
    server_log = str(data.parent / "server.log")
    return {
        "stop": [*ctl, "-m", "fast", "stop"],
        "start": [*ctl, "-t", "60", "-l", server_log, "-o", shlex.join(options), "start"],
        "url": pg_url_env,
    }


@pytest.fixture
def pg_url_env() -> str:
    url = os.environ.get("EDGETRAIN_TEST_PG_URL")
    if not url:
        pytest.skip("EDGETRAIN_TEST_PG_URL is not set (see .ci/postgres.sh)")
    return url


def test_a_database_restart_during_a_sweep_loses_nothing(
    tmp_path, pg_control, helpers, monkeypatch, caplog
):
    import uuid

    url = pg_control["url"]
    name = f"edgetrain-restart-{uuid.uuid4().hex[:8]}"
    space = load_space(_space(model={"choices": [f"{helpers}:nap"]}))
    monkeypatch.setenv(RETRY_ENV, "90")
    monkeypatch.setenv("SAFETY_NAP_S", "2")
    caplog.set_level(logging.WARNING)
    out: dict[str, Any] = {}

    def sweep() -> None:
        try:
            out["result"] = run_sweep(
                space, 1, out=tmp_path / "sw", storage=url, study_name=name, progress=False
            )
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=sweep)
    thread.start()
    log_file = tmp_path / "sw" / "trials" / "0.log"
    deadline = time.monotonic() + 60
    while not log_file.exists() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    subprocess.run(pg_control["stop"], check=True, capture_output=True)
    try:  # the trial finishes while the database is down: telling it is retried
        report = tmp_path / "sw" / "trials" / "0" / "trial.json"
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
    finally:
        subprocess.run(pg_control["start"], check=True, capture_output=True)
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    assert out["result"].counts.complete == 1
    retries = [w for w in _warnings(caplog) if "storage error while recording trial 0" in w]
    assert retries
    password = urlsplit(url).password
    assert not password or all(password not in w for w in _warnings(caplog))
    optuna.delete_study(study_name=name, storage=open_storage(url, None))


# -- 4. results are recovered from trial directories ---------------------------------------------
_KILLED_BEFORE_TELLING = textwrap.dedent(
    """
    import os, signal, sys
    import edgetrain.sweep.runner as runner

    def die(*args, **kwargs):  # the trial finished; the worker dies before telling the study
        os.kill(os.getpid(), signal.SIGKILL)

    runner._Worker._record = die
    runner.run_sweep(sys.argv[1], 1, out=sys.argv[2], progress=False)
    """
)


def test_a_result_left_by_a_killed_worker_is_recovered_not_rerun(tmp_path):
    (tmp_path / "space.yaml").write_text(json.dumps(_space()))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_TELLING, str(tmp_path / "space.yaml"), "sw"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((tmp_path / "sw/trials/0/trial.json").read_text())["status"] == "completed"
    result = run_sweep(tmp_path / "space.yaml", 1, out=tmp_path / "sw", progress=False)
    (trial,) = load_study(tmp_path / "sw")[0].get_trials()  # not lost, not run again
    assert trial.state == TrialState.COMPLETE and trial.values[0] == trial.user_attrs["val_acc"]
    assert result.recovered == [0] and result.lost == [] and result.records == []


def test_a_failed_storage_write_is_recorded_by_the_next_run(tmp_path, monkeypatch):
    import edgetrain.sweep.study as study_module

    def open_down(storage: Any, sweep_dir: Any) -> Any:  # the database stays down too long
        return _FlakyStorage(open_storage(storage, sweep_dir), {"set_trial_state_values": 10**6})

    space = load_space(_space())
    monkeypatch.setattr(study_module, "open_storage", open_down)
    monkeypatch.setenv(RETRY_ENV, "0.5")
    with pytest.raises(StorageUnavailableError, match=r"trial 0 finished and its result is safe"):
        run_sweep(space, 1, out=tmp_path / "sw", progress=False)
    monkeypatch.undo()
    result = run_sweep(space, 1, out=tmp_path / "sw", progress=False)  # same process
    assert result.recovered == [0] and result.records == []
    assert count_trials(load_study(tmp_path / "sw")[0]).complete == 1


def test_a_finished_trial_recorded_as_lost_is_imported_on_start(tmp_path):
    space = load_space(_space())
    sw = tmp_path / "sw"
    study, storage, _ = open_sweep_study(space, sw)
    trial = study.ask(fixed_distributions=space.distributions())
    tid = trial_id_of(storage, study_id_of(storage, study), trial.number)
    storage.set_trial_system_attr(tid, OWNER_ATTR, {"host": "elsewhere", "token": "t0"})
    fail_trial(storage, tid, "lost", "worker lost: no heartbeat")  # by a remote worker
    metrics = {"val_acc": 0.75, "energy_j": 12.5}
    identity = trial_identity(study.study_name, trial.number, "t0", trial.params)
    run_dir = sw / "trials" / "0"
    run_dir.mkdir(parents=True)
    report = {"status": "completed", "metrics": metrics, "timing": {}, "trial": identity}
    (run_dir / "trial.json").write_text(json.dumps(report))
    # a directory of another trial (other token) is never imported
    other = dict(report, trial=dict(identity, token="someone-else"))
    (sw / "trials" / "1").mkdir()
    (sw / "trials" / "1" / "trial.json").write_text(json.dumps(other))

    result = run_sweep(space, 1, out=sw, progress=False)
    trials = load_study(sw)[0].get_trials()
    copy = trials[-1]
    assert copy.state == TrialState.COMPLETE and copy.values == [0.75, 12.5]
    assert result.recovered == [0] and result.records == []
    assert copy.user_attrs["recovered_from"] == 0 and copy.params == trial.params
    assert run_sweep(space, 1, out=sw, progress=False).recovered == []  # imported once


# -- 5. killed trials are replaced ---------------------------------------------------------------
def test_a_sigkilled_trial_is_replaced_so_trials_n_means_n_answers(tmp_path, helpers):
    space = load_space(_space(model={"choices": [f"{helpers}:die_once"]}))
    result = run_sweep(space, 1, out=tmp_path / "sw", progress=False)
    assert (result.counts.complete, result.counts.failed, result.counts.not_counted) == (1, 0, 1)
    killed, retry = load_study(tmp_path / "sw")[0].get_trials()
    assert fail_reason(killed) == "killed" and "SIGKILL" in killed.user_attrs["error"]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0


# -- 6. parameters from the storage are checked against the local space ------------------------------
def test_check_params_names_the_rule_and_the_value(helpers):
    space = load_space(
        _space(
            lr={"low": 0.001, "high": 0.1, "log": True},
            epochs={"low": 1, "high": 3},
            model={"choices": ["mlp", f"{helpers}:nap"]},
        )
    )
    ok = {"lr": 0.01, "epochs": 2, "model": f"{helpers}:nap"}
    assert space.check_params(ok) == []
    (problem,) = space.check_params({**ok, "model": "os:system"})
    assert "code reference" in problem and "'os:system'" in problem
    (problem,) = space.check_params({**ok, "lr": 5.0})
    assert "outside the local space's range [0.001, 0.1]" in problem
    assert space.check_params({**ok, "epochs": 2.0}) and space.check_params({**ok, "epochs": True})
    (problem,) = space.check_params({**ok, "compile": True})
    assert "parameter 'compile' is not in the local space" in problem
    (problem,) = space.check_params({"lr": 0.01, "epochs": 2})
    assert "parameter 'model' of the local space has no value" in problem


def test_parameters_outside_the_local_space_are_refused_never_run(tmp_path, helpers):
    space = load_space(
        _space(lr={"low": 0.001, "high": 0.1, "log": True}, batch_size={"choices": [16, 32]})
    )
    sw = tmp_path / "sw"
    study, storage, _ = open_sweep_study(space, sw)
    evil = f"{helpers}:evil"
    injected = create_trial(  # written straight into a shared storage: a parameter of its own
        state=TrialState.WAITING,
        params={"lr": 0.01, "batch_size": 16, "model": evil},
        distributions={
            **space.distributions(),
            "model": optuna.distributions.CategoricalDistribution([evil]),
        },
    )
    storage.create_new_trial(study_id_of(storage, study), template_trial=injected)
    study.enqueue_trial({"lr": 5.0, "batch_size": 16})  # Optuna only warns about the range
    study.enqueue_trial({"lr": 0.01, "batch_size": evil})  # not a choice

    result = run_sweep(space, 1, out=sw, progress=False)
    assert not (tmp_path / "evil-ran").exists()
    trials = load_study(sw)[0].get_trials()
    refused = [t for t in trials if fail_reason(t) == "refused"]
    assert [t.number for t in refused] == [0, 1, 2]
    errors = [t.user_attrs["error"] for t in refused]
    assert "parameter 'model' is not in the local space" in errors[0]
    assert "'lr' = 5.0 is outside the local space's range" in errors[1]
    assert "do not fit the local space" in errors[2] and evil in errors[2]
    assert not any((sw / "trials" / str(n)).exists() for n in (0, 1, 2))
    assert result.counts.complete == 1 and result.counts.not_counted == 3


# -- 7. Optuna's public API only ---------------------------------------------------------------
def test_the_sweep_package_uses_no_private_optuna_api():
    root = Path(edgetrain.sweep.__file__).parent
    private = {"_storage", "_trial_id", "_study_id", "_cached_frozen_trial", "_backend"}
    found = []
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
                if any(part.startswith("_") for part in node.module.split(".")):
                    found.append(f"{path.name}:{node.lineno} from {node.module}")
                found += [
                    f"{path.name}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert found == []
