"""Finished trials are never lost: results found in trial directories are told to the study.

A trial process writes ``trials/<n>/trial.json`` (fsynced) before it exits, and its worker
tells the study only afterwards. If the worker dies in between (killed, or the storage
failed for longer than its patience), the result is still on disk, together with the
study trial's identity: study name, trial number, parameters and the owner token that the
worker recorded in the trial's ``edgetrain:owner`` system attribute. A result is taken
only when all of them match, so a directory of another study is never imported.

- A RUNNING trial whose worker is gone (see :mod:`edgetrain.sweep.heartbeat`) is told
  its result: :func:`recover_running`.
- A trial that was already marked failed (``lost``, ``interrupted``...) while its result
  is on disk gets a completed copy, with user attribute ``recovered_from``: the trial
  number (:func:`import_results` when ``sweep run`` starts, :func:`import_result` when a
  worker finds its trial failed by another one).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.heartbeat import OWNER_ATTR
from edgetrain.sweep.objectives import objective_values
from edgetrain.sweep.space import SearchSpace
from edgetrain.sweep.study import counts_toward_target
from edgetrain.sweep.trial import read_trial_file

__all__ = [
    "RECOVERED_ATTR",
    "completed_result",
    "import_result",
    "import_results",
    "recover_running",
    "result_attrs",
    "trial_identity",
]

log = logging.getLogger(__name__)

RECOVERED_ATTR = "recovered_from"


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def trial_identity(study_name: str, number: int, token: str, params: dict[str, Any]) -> dict:
    """What a trial directory records about its study trial (in ``trial.json``)."""
    return {"study": study_name, "number": number, "token": token, "params": dict(params)}


def result_attrs(
    metrics: dict[str, Any],
    timing: dict[str, Any],
    *,
    wall_s: float | None,
    run_dir: str,
    host: str | None,
    concurrent: int | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The trial user attributes of a result: metrics, times, where and how it ran."""
    attrs: dict[str, Any] = {k: v for k, v in metrics.items() if v is not None}
    attrs.update(
        wall_s=wall_s,
        startup_s=timing.get("startup_s"),
        run_dir=run_dir,
        host=host,
        concurrent_trials=concurrent,
    )
    if error:
        attrs["error"] = error
    return {k: v for k, v in attrs.items() if v is not None}


def completed_result(run_dir: Path, study_name: str, trial: Any) -> dict[str, Any] | None:
    """``trial.json`` of a completed run of exactly this study trial, else None."""
    report = read_trial_file(run_dir)
    if not report or report.get("status") != "completed":
        return None
    ident = report.get("trial")
    owner = trial.system_attrs.get(OWNER_ATTR)
    if not isinstance(ident, dict) or not isinstance(owner, dict):
        return None
    token = owner.get("token")
    if not token or ident.get("token") != token:
        return None
    if ident.get("study") != study_name or ident.get("number") != trial.number:
        return None
    if _canonical(ident.get("params")) != _canonical(trial.params):
        return None
    return report


def _values(report: dict[str, Any], space: SearchSpace, where: str) -> list[float] | None:
    try:
        return objective_values(report.get("metrics") or {}, space.objectives)
    except EdgeTrainError as exc:
        log.warning("the result in %s cannot be recovered: %s", where, exc)
        return None


def _rel(run_dir: Path, sweep_dir: Path) -> str:
    try:
        return os.path.relpath(run_dir, Path(sweep_dir).resolve())
    except ValueError:  # pragma: no cover - another drive (Windows)
        return str(run_dir)


def _attrs_from(report: dict[str, Any], run_dir: Path, sweep_dir: Path, trial: Any) -> dict:
    owner = trial.system_attrs.get(OWNER_ATTR) or {}
    timing = report.get("timing") or {}
    return result_attrs(
        report.get("metrics") or {},
        timing,
        wall_s=timing.get("process_s"),
        run_dir=_rel(run_dir, sweep_dir),
        host=owner.get("host"),
        concurrent=None,
    )


def recover_running(
    study: Any, storage: Any, space: SearchSpace, sweep_dir: Path, trial: Any, trial_id: int
) -> bool:
    """Tell the study the result a RUNNING trial left on disk; False if there is none.

    Args:
        study: the study.
        storage: its Optuna storage.
        space: the local search space (the trial's parameters must fit it).
        sweep_dir: the sweep directory (for the recorded ``run_dir``).
        trial: the frozen RUNNING trial whose worker is gone.
        trial_id: its storage id.
    """
    owner = trial.system_attrs.get(OWNER_ATTR)
    run_dir = owner.get("run_dir") if isinstance(owner, dict) else None
    if not isinstance(run_dir, str):
        return False
    report = completed_result(Path(run_dir), study.study_name, trial)
    if report is None or space.check_params(trial.params):
        return False
    values = _values(report, space, run_dir)
    if values is None:
        return False
    for key, value in _attrs_from(report, Path(run_dir), sweep_dir, trial).items():
        storage.set_trial_user_attr(trial_id, key, value)
    frozen = study.tell(trial.number, values, skip_if_finished=True)
    if frozen.values != values:
        return False  # finished by someone else in the meantime
    log.warning(
        "trial %d: its worker is gone, but the trial had finished; result recovered from %s",
        trial.number,
        run_dir,
    )
    return True


def _already_imported(study: Any, number: int) -> bool:
    return any(t.user_attrs.get(RECOVERED_ATTR) == number for t in study.get_trials(deepcopy=False))


def import_result(
    study: Any,
    space: SearchSpace,
    trial: Any,
    values: list[float],
    attrs: dict[str, Any],
) -> bool:
    """Add a completed copy of a trial that was failed while its result was on the way.

    Returns False when its parameters do not fit the local space or it was imported before.
    """
    from optuna.trial import TrialState, create_trial

    if space.check_params(trial.params) or _already_imported(study, trial.number):
        return False
    owner = trial.system_attrs.get(OWNER_ATTR)
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            params=dict(trial.params),
            distributions=space.distributions(),
            values=values,
            user_attrs={**attrs, RECOVERED_ATTR: trial.number},
            system_attrs={OWNER_ATTR: owner} if isinstance(owner, dict) else None,
        )
    )
    return True


def import_results(study: Any, space: SearchSpace, sweep_dir: Path) -> list[int]:
    """Import completed results of trials the study has as failed and not counted.

    Returns the numbers of the trials whose result was imported.
    """
    from optuna.trial import TrialState

    trials_dir = Path(sweep_dir) / "trials"
    if not trials_dir.is_dir():
        return []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    done = {t.user_attrs.get(RECOVERED_ATTR) for t in by_number.values()}
    imported = []
    for run_dir in sorted(trials_dir.iterdir(), key=lambda p: p.name):
        if not run_dir.name.isdigit() or not run_dir.is_dir():
            continue
        number = int(run_dir.name)
        trial = by_number.get(number)
        if trial is None or trial.state != TrialState.FAIL or number in done:
            continue
        if counts_toward_target(trial):
            continue
        report = completed_result(run_dir, study.study_name, trial)
        if report is None:
            continue
        values = _values(report, space, str(run_dir))
        if values is None:
            continue
        attrs = _attrs_from(report, run_dir.resolve(), sweep_dir, trial)
        if import_result(study, space, trial, values, attrs):
            log.warning(
                "trial %d was recorded as failed, but it had finished: result imported from %s",
                number,
                run_dir,
            )
            imported.append(number)
    return imported
