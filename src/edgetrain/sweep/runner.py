"""``run_sweep``: workers that ask Optuna for trials, run each in its own process, and tell.

One call runs ``workers`` worker threads in this process; each runs one trial process at a
time. More processes, on this machine or others, may join the same study at any time
(``edgetrain sweep run`` with the same space and storage): the study's trial count is the
shared target.

``trials`` is the number of answered trials the study should have: completed ones, and
configurations that failed by themselves (an error, the time limit). Trials that say
nothing about their configuration are replaced: interrupted ones, those lost with their
worker, those whose process was killed from outside the sweep (re-queued once with the
same parameters; a retry that is killed again counts as failed: the configuration dies,
e.g. out of memory), and those refused because their parameters (from the storage) do not
fit the local space. Running the same command again therefore resumes a sweep, and a
larger ``trials`` extends it. Workers that start at the same moment on several machines
may overshoot the target by at most one trial each.

No finished trial is lost: a trial's ``trial.json`` is on disk before the worker tells the
study, storage calls are retried through database restarts (``EDGETRAIN_STORAGE_RETRY_S``),
and results the study never heard of are recovered from the trial directories (see
:mod:`edgetrain.sweep.recover`). Parameters are checked against the local space before
a trial runs (:meth:`~edgetrain.sweep.space.SearchSpace.check_params`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep._optuna import optuna
from edgetrain.sweep.heartbeat import (
    FAIL_REASON_ATTR,
    OWNER_ATTR,
    Heartbeat,
    StaleTrialReaper,
    fail_trial,
    owner_record,
    requeue,
    study_id_of,
    trial_id_of,
)
from edgetrain.sweep.launch import TrialOutcome, choose_launcher, make_launcher, run_trial_process
from edgetrain.sweep.objectives import objective_values, parse_objective, quality_objective
from edgetrain.sweep.recover import (
    import_result,
    import_results,
    recover_running,
    result_attrs,
    trial_identity,
)
from edgetrain.sweep.space import SearchSpace, load_space
from edgetrain.sweep.storage import (
    StorageRetry,
    StorageUnavailableError,
    is_database_url,
    storage_label,
)
from edgetrain.sweep.study import (
    TrialCounts,
    count_trials,
    default_study_name,
    open_sweep_study,
    read_sweep_info,
)

__all__ = ["SweepResult", "TrialRecord", "run_sweep"]

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class TrialRecord:
    """One trial run by this call."""

    number: int
    state: str
    values: tuple[float, ...] | None
    metrics: dict[str, Any]
    error: str | None
    wall_s: float
    storage_s: float


@dataclass
class SweepResult:
    """What one ``run_sweep`` call did, and where the study stands.

    ``recovered``: trials whose finished result was found in their trial directory and
    told to the study by this call (their worker had died before it could).
    """

    sweep_dir: Path
    study_name: str
    storage: str
    target: int
    counts: TrialCounts
    wall_s: float
    records: list[TrialRecord] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)


class _Shared:
    """State the worker threads share (guarded by ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # ask: count, reap, ask and sample as one step
        self.records: list[TrialRecord] = []
        self.lost: list[int] = []
        self.recovered: list[int] = []
        self.running: set[int] = set()
        self.max_concurrent: dict[int, int] = {}
        self.errors: list[BaseException] = []

    def started(self, number: int) -> None:
        with self.lock:
            self.running.add(number)
            for n in self.running:
                self.max_concurrent[n] = max(self.max_concurrent.get(n, 0), len(self.running))

    def finished(self, number: int) -> int:
        with self.lock:
            self.running.discard(number)
            return self.max_concurrent.pop(number, 1)


@dataclass
class _Claim:
    """A trial this worker holds: its Optuna trial, storage id, owner token, and why its
    parameters are refused (None: they fit the local space)."""

    trial: Any
    trial_id: int
    token: str
    run_dir: Path
    problem: str | None = None


class _Worker:
    def __init__(
        self,
        index: int,
        study: Any,
        storage: Any,
        study_id: int,
        space: SearchSpace,
        sweep_dir: Path,
        target: int,
        heartbeat: Heartbeat,
        reaper: StaleTrialReaper,
        shared: _Shared,
        stop: threading.Event,
        threads: int | None,
        timeout_s: float | None,
        on_event: Any,
        launcher: str,
        retry: StorageRetry,
    ) -> None:
        self.index = index
        self.study = study
        self.storage = storage
        self.study_id = study_id
        self.space = space
        self.sweep_dir = sweep_dir
        self.target = target
        self.heartbeat = heartbeat
        self.reaper = reaper
        self.shared = shared
        self.stop = stop
        self.threads = threads
        self.timeout_s = timeout_s
        self.on_event = on_event
        self.retry = retry
        self.owner = owner_record(index)
        self.launcher = make_launcher(launcher, threads)
        self.done = threading.Event()

    def _next_trial(self) -> _Claim | None:
        call = self.retry.call
        with self.shared.lock:
            self.shared.lost.extend(call("checking for lost trials", self.reaper.reap, self.study))
            counts = call("counting trials", count_trials, self.study)
            if counts.done + counts.running >= self.target:
                return None
            trial = call("asking for a trial", self.study.ask)
            number = trial.number
            tid = call(
                f"looking up trial {number}", trial_id_of, self.storage, self.study_id, number
            )
            token = uuid.uuid4().hex
            run_dir = (self.sweep_dir / "trials" / str(number)).resolve()
            owner = {**self.owner, "token": token, "run_dir": str(run_dir)}
            self.heartbeat.add(tid, token)
            try:
                call(
                    f"recording the owner of trial {number}",
                    self.storage.set_trial_system_attr,
                    tid,
                    OWNER_ATTR,
                    owner,
                )
                claim = _Claim(trial, tid, token, run_dir)
                claim.problem = self._sample(trial)
            except BaseException:
                self.heartbeat.remove(tid)  # left RUNNING: the next reaper fails it (lost)
                raise
            return claim

    def _sample(self, trial: Any) -> str | None:
        """Suggest the local space's parameters; why they are refused (None: they fit)."""
        try:
            with warnings.catch_warnings():
                # Optuna only warns about an enqueued value outside a range: refused below
                warnings.simplefilter("ignore", UserWarning)
                for spec in self.space.params.values():
                    self.retry.call(f"sampling trial {trial.number}", spec.suggest, trial)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # e.g. an enqueued value that is not a choice
            text = str(exc).strip().splitlines()
            return f"its parameters do not fit the local space: {text[0] if text else exc!r}"
        problems = self.space.check_params(trial.params)
        return "; ".join(problems) or None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                claim = self._next_trial()
                if claim is None:
                    return
                self._run_one(claim)
        except BaseException as exc:  # surfaced by run_sweep in the main thread
            self.shared.errors.append(exc)
            self.stop.set()
        finally:
            self.launcher.close()
            self.done.set()

    def _finish(self, record: TrialRecord) -> None:
        with self.shared.lock:
            self.shared.records.append(record)
        self.on_event("end", record.number, record)

    def _refuse(self, claim: _Claim) -> None:
        """Fail a trial whose parameters the local space does not allow; never run it."""
        number = claim.trial.number
        error = f"refused: {claim.problem}"
        log.warning("trial %d %s", number, error)
        try:
            self.retry.call(
                f"refusing trial {number}",
                fail_trial,
                self.storage,
                claim.trial_id,
                "refused",
                error,
            )
        finally:
            self.heartbeat.remove(claim.trial_id)
        self._finish(TrialRecord(number, "failed", None, {}, error, 0.0, 0.0))

    def _run_one(self, claim: _Claim) -> None:
        if claim.problem is not None:
            self._refuse(claim)
            return
        trial, tid = claim.trial, claim.trial_id
        number = trial.number
        params = trial.params
        config, quantize = self.space.trial_config(params)
        rel = f"trials/{number}"
        identity = trial_identity(self.study.study_name, number, claim.token, params)
        self.shared.started(number)
        self.on_event("start", number)
        try:
            outcome = run_trial_process(
                self.sweep_dir / rel,
                config,
                quantize=quantize,
                threads=self.threads,
                timeout_s=self.timeout_s,
                stop=self.stop,
                launcher=self.launcher,
                trial=identity,
            )
        except Exception as exc:  # the harness itself failed: record it, then stop
            try:
                self.retry.call(
                    f"failing trial {number}",
                    fail_trial,
                    self.storage,
                    tid,
                    "error",
                    f"sweep worker error: {exc}",
                )
            finally:
                self.heartbeat.remove(tid)
            raise
        finally:
            concurrent = self.shared.finished(number)
        t_tell = time.perf_counter()
        values = None
        if outcome.state == "complete":
            try:
                values = objective_values(outcome.metrics, self.space.objectives)
            except EdgeTrainError as exc:
                outcome.state, outcome.fail_reason, outcome.error = "failed", "error", str(exc)
        try:
            self.retry.call(
                f"recording trial {number}",
                self._record,
                claim,
                outcome,
                values,
                rel,
                concurrent,
            )
        except StorageUnavailableError as exc:
            if values is None:
                raise
            raise StorageUnavailableError(
                f"{exc}; trial {number} finished and its result is safe in "
                f"{self.sweep_dir / rel}: the next 'edgetrain sweep run' records it"
            ) from None
        finally:
            self.heartbeat.remove(tid)
        storage_s = time.perf_counter() - t_tell
        self._finish(
            TrialRecord(
                number,
                outcome.state,
                tuple(values) if values else None,
                outcome.metrics,
                outcome.error,
                outcome.wall_s,
                storage_s,
            )
        )

    def _record(
        self,
        claim: _Claim,
        outcome: TrialOutcome,
        values: list[float] | None,
        rel: str,
        concurrent: int,
    ) -> None:
        """Tell the study how the trial ended (idempotent: retried as a whole)."""
        from optuna.trial import TrialState

        number, tid = claim.trial.number, claim.trial_id
        attrs = result_attrs(
            outcome.metrics,
            outcome.timing,
            wall_s=outcome.wall_s,
            run_dir=rel,
            host=self.owner["host"],
            concurrent=concurrent,
            error=outcome.error,
        )
        reason = outcome.fail_reason or "interrupted"
        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(tid, key, value)
            if values is None:
                self.storage.set_trial_system_attr(tid, FAIL_REASON_ATTR, reason)
                frozen = self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                frozen = self.study.tell(number, values, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            frozen = self.storage.get_trial(tid)  # finished: by us (a retried call) or not
        if values is not None:
            if frozen.state == TrialState.COMPLETE and list(frozen.values or ()) == list(values):
                return
            if import_result(self.study, self.space, frozen, values, attrs):
                log.warning(
                    "trial %d was marked failed by another worker while it ran (heartbeat "
                    "lost?); its result was added to the study as a new trial",
                    number,
                )
                with self.shared.lock:
                    self.shared.recovered.append(number)
            return
        if frozen.state != TrialState.FAIL or _fail_reason_attr(frozen) != reason:
            log.warning(
                "trial %d was finished by another worker while it ran (heartbeat lost?); "
                "its run directory %s is kept",
                number,
                rel,
            )
            return
        if reason in ("interrupted", "killed"):
            requeue(self.study, frozen)


def _fail_reason_attr(trial: Any) -> str | None:
    """The fail reason recorded on a trial (None if none: not failed by edgetrain)."""
    return trial.system_attrs.get(FAIL_REASON_ATTR)


def _default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_sweep(
    space: SearchSpace | str | Path,
    trials: int,
    *,
    workers: int = 1,
    out: str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    threads: int | None = None,
    trial_timeout_s: float | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    grace_s: float | None = None,
    launcher: str = "auto",
    progress: bool = True,
    console: Any = None,
) -> SweepResult:
    """Run (or resume, or join) a sweep until the study has ``trials`` answered trials.

    Args:
        space: a :class:`SearchSpace` or a space file.
        trials: answered trials wanted in the study (completed + failed by their
            configuration; see module doc).
        workers: trials run at the same time by this process.
        out: the sweep directory (default ``sweeps/<space file stem>``).
        storage: database URL or journal path (default ``DIR/study.journal``).
        study_name: study name (default: DIR's study, else the space file's stem).
        threads: torch threads per trial (default: CPU cores // workers).
        trial_timeout_s: stop a trial after this many seconds; it fails with ``timeout``.
        heartbeat_s: seconds between heartbeats of running trials.
        grace_s: a trial whose heartbeat is unchanged this long is ``lost`` (default
            max(60 s, 6 heartbeats)).
        launcher: how trial processes start: ``zygote`` (forked from a pre-loaded
            process: no import cost per trial), ``subprocess`` (a fresh Python each), or
            ``auto`` (zygote where safe, see :func:`edgetrain.sweep.launch.choose_launcher`).
        progress: show a progress bar.
        console: a rich Console for the progress bar.

    Raises:
        EdgeTrainError: a bad space, argument or storage; the storage failed for longer
            than ``EDGETRAIN_STORAGE_RETRY_S`` (finished results stay in their trial
            directories and are recorded by the next call).
        KeyboardInterrupt: after stopping the running trials (they are re-queued).
    """
    if isinstance(space, str | Path):
        space = load_space(space)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise EdgeTrainError(f"--trials must be an integer >= 1, got {trials!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise EdgeTrainError(f"--workers must be an integer >= 1, got {workers!r}")
    if trial_timeout_s is not None and not trial_timeout_s > 0:
        raise EdgeTrainError(f"trial timeout must be > 0 seconds, got {trial_timeout_s}")
    if not heartbeat_s > 0:
        raise EdgeTrainError(f"heartbeat interval must be > 0 seconds, got {heartbeat_s}")
    if storage and is_database_url(storage) and storage.startswith("sqlite") and workers > 1:
        raise EdgeTrainError(
            "SQLite does not take parallel writers ('database is locked'); use the default "
            "journal storage or PostgreSQL for --workers > 1"
        )
    sweep_dir = Path(out) if out is not None else Path("sweeps") / default_study_name(space.source)
    stop = threading.Event()
    retry = StorageRetry(storage, stop=stop)  # checks EDGETRAIN_STORAGE_RETRY_S first
    study, backend, resolved = open_sweep_study(
        space, sweep_dir, storage=storage, study_name=study_name
    )
    retry.url = resolved
    (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    study_id = retry.call("opening the study", study_id_of, backend, study)
    recovered = retry.call(
        "importing finished results from trial directories",
        import_results,
        study,
        space,
        sweep_dir,
    )
    grace = grace_s if grace_s is not None else max(60.0, 6 * heartbeat_s)
    threads = threads if threads is not None else _default_threads(workers)
    if workers > 1 and any(o in ("energy", "efficiency") for o in space.objectives):
        log.warning(
            "%d trials at a time on one machine: energy sensors and the CPU estimate see the "
            "whole device, so each trial's energy includes the others' (trials record "
            "concurrent_trials); for comparable energy run one worker per device",
            workers,
        )
    device = "auto" if "device" in space.params else str(space.base.get("device", "auto"))
    launcher = choose_launcher(launcher, device)
    if space.data_params():
        log.warning(
            "the space sweeps data keys (%s): trials are validated on different samples",
            ", ".join(space.data_params()),
        )
    heartbeat = Heartbeat(backend, heartbeat_s, url=resolved).start()
    reaper = StaleTrialReaper(
        backend,
        grace,
        own=heartbeat.active,
        recover=partial(recover_running, study, backend, space, sweep_dir),
    )
    shared = _Shared()
    label = read_sweep_info(sweep_dir).get("storage") or storage_label(storage, sweep_dir)
    display = _Display(study, trials, progress, console, space.objectives)
    workers_ = [
        _Worker(
            i,
            study,
            backend,
            study_id,
            space,
            sweep_dir,
            trials,
            heartbeat,
            reaper,
            shared,
            stop,
            threads,
            trial_timeout_s,
            display.event,
            launcher,
            retry,
        )
        for i in range(workers)
    ]
    t0 = time.perf_counter()
    pool = [
        threading.Thread(target=w.run, name=f"edgetrain-sweep-worker-{w.index}") for w in workers_
    ]
    display.start()
    # wait on events, not Thread.join: a Ctrl-C inside join() can leave a running thread
    # marked as stopped (CPython < 3.13), and the process would then exit under it
    try:
        for t in pool:
            t.start()
        while not all(w.done.is_set() for w in workers_):
            next(w for w in workers_ if not w.done.is_set()).done.wait(0.5)
            display.refresh()
    except KeyboardInterrupt:
        stop.set()  # workers stop their trials (marked interrupted, re-queued) and end
        log.warning("stopping: waiting for the running trials to leave their files readable")
        for w in workers_:
            while not w.done.wait(0.5):
                pass
        raise
    finally:
        heartbeat.stop()
        display.stop()
    if shared.errors:
        raise shared.errors[0]
    return SweepResult(
        sweep_dir=sweep_dir,
        study_name=study.study_name,
        storage=label,
        target=trials,
        counts=retry.call("counting trials", count_trials, study),
        wall_s=time.perf_counter() - t0,
        records=sorted(shared.records, key=lambda r: r.number),
        lost=shared.lost,
        recovered=sorted({*recovered, *reaper.recovered, *shared.recovered}),
    )


class _Display:
    """The rich progress bar: trials done of the target, failed, running, best so far."""

    def __init__(
        self,
        study: Any,
        target: int,
        enabled: bool,
        console: Any,
        objectives: tuple[str, ...] = ("accuracy", "energy"),
    ) -> None:
        self.study = study
        self.target = target
        self.metric = quality_objective(objectives) or parse_objective("accuracy")
        self.enabled = enabled
        self.console = console
        self._progress: Any = None
        self._task: Any = None
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]sweep[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
        )
        self._task = self._progress.add_task("sweep", total=self.target, status="")
        self._progress.start()
        self.refresh(force=True)

    def event(self, kind: str, number: int, record: TrialRecord | None = None) -> None:
        if record is not None and record.state != "complete":
            log.info("trial %d %s: %s", number, record.state, record.error)
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if self._progress is None:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < 2.0:
                return
            self._last = now
            try:
                counts = count_trials(self.study)
                status = self._status(counts)
            except Exception as exc:  # a display must never end a sweep
                log.debug("progress refresh failed: %s", exc)
                return
            self._progress.update(
                self._task, completed=min(counts.done, self.target), status=status
            )

    def _status(self, counts: TrialCounts) -> str:
        from optuna.trial import TrialState

        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        parts = [f"failed {counts.failed}", f"running {counts.running}"]
        column, pick = self.metric.column, max if self.metric.mode == "max" else min
        accs = [t.user_attrs.get(column) for t in done if t.user_attrs.get(column) is not None]
        energies = [
            t.user_attrs.get("energy_j") for t in done if t.user_attrs.get("energy_j") is not None
        ]
        effs = [
            t.user_attrs.get("efficiency_acc_per_kj")
            for t in done
            if t.user_attrs.get("efficiency_acc_per_kj") is not None
        ]
        if accs:
            parts.append(f"best {column} {pick(accs):.4f}")
        if energies:
            parts.append(f"min energy {min(energies):.1f} J")
        if effs:
            parts.append(f"best {max(effs):.3f} acc/kJ")
        return " | ".join(parts)

    def stop(self) -> None:
        if self._progress is not None:
            self.refresh(force=True)
            self._progress.stop()
            self._progress = None
