"""The sweep directory and its Optuna study: create, reopen, check, count, tabulate.

The study stores everything analysis and final training need (the space in a study user
attribute, each trial's metrics in trial user attributes), so a study in a database can
be analysed on any machine, without the trials' run directories.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from edgetrain.config import write_yaml_text
from edgetrain.errors import EdgeTrainError
from edgetrain.safefs import atomic_write_text, claim_dir, dumps_strict
from edgetrain.sweep._optuna import optuna
from edgetrain.sweep.heartbeat import FAIL_REASON_ATTR
from edgetrain.sweep.objectives import Objective, directions, efficiency_column, sweep_metric
from edgetrain.sweep.samplers import make_sampler
from edgetrain.sweep.space import SearchSpace, decode_choice, space_from_dict
from edgetrain.sweep.storage import (
    has_secret,
    is_database_url,
    mask_text,
    open_storage,
    storage_label,
)

__all__ = [
    "NOT_COUNTED",
    "SPACE_ATTR",
    "SWEEP_FILE",
    "TRIAL_COLUMNS",
    "TrialCounts",
    "count_trials",
    "counts_toward_target",
    "fail_reason",
    "load_study",
    "open_study",
    "open_sweep_study",
    "study_metric",
    "trial_columns",
    "trials_frame",
]

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
SPACE_FILE = "space.yaml"
SPACE_ATTR = "edgetrain:space"
#: Failed trials that say nothing about their configuration: not counted towards --trials
#: (``refused``: parameters from the storage that the local space does not allow). A trial
#: ``killed`` from outside the sweep is not counted either, unless it was already a retry.
NOT_COUNTED = ("lost", "interrupted", "refused")
#: Columns of trials.csv of a sweep ranked by accuracy (then one ``param_<name>`` column per
#: parameter); a sweep ranked by another metric has :func:`trial_columns`.
TRIAL_COLUMNS = (
    "number",
    "state",
    "fail_reason",
    "error",
    "val_acc",
    "energy_j",
    "avg_power_w",
    "efficiency_acc_per_kj",
    "time_s",
    "energy_source",
    "val_acc_float",
    "quantized_val_acc",
    "model_bytes",
    "quantized_bytes",
    "peak_rss_bytes",
    "epochs_completed",
    "concurrent_trials",
    "startup_s",
    "wall_s",
    "host",
    "run_dir",
    "retry_of",
)


#: The columns of :data:`TRIAL_COLUMNS` that only a task with accuracy fills.
ACCURACY_COLUMNS = ("val_acc", "efficiency_acc_per_kj", "val_acc_float", "quantized_val_acc")

_STATE_NAMES = {"COMPLETE": "complete", "FAIL": "failed", "RUNNING": "running", "PRUNED": "pruned"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_study_name(space_source: str | Path | None) -> str:
    """The study name when none is given: the space file's stem."""
    return Path(str(space_source)).stem if space_source else "sweep"


def read_sweep_info(sweep_dir: Path) -> dict[str, Any]:
    """``DIR/sweep.json`` ({} when absent)."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise EdgeTrainError(f"{path} is not valid JSON: {exc}") from None


def _write_sweep_files(sweep_dir: Path, info: dict[str, Any], space: SearchSpace) -> None:
    # a sweep directory is edgetrain's (marked); several workers share it, so it is not locked
    # as a whole: each trial's run directory is (docs/design.md, "Files and safety")
    claim_dir(sweep_dir, "sweep", reuse=True, what="sweep directory")
    atomic_write_text(sweep_dir / SWEEP_FILE, dumps_strict(info))
    text = "# resolved search space of this sweep (base inlined)\n" + write_yaml_text(
        space.to_dict()
    )
    atomic_write_text(sweep_dir / SPACE_FILE, text)


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _space_difference(stored: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [
        k
        for k in sorted(set(stored) | set(new))
        if k != "params" and _canonical(stored.get(k)) != _canonical(new.get(k))
    ]
    sp, np_ = stored.get("params", {}), new.get("params", {})
    diffs += [
        f"params.{k}"
        for k in sorted(set(sp) | set(np_))
        if _canonical(sp.get(k)) != _canonical(np_.get(k))
    ]
    return ", ".join(diffs) or "?"


def _resolve(
    sweep_dir: Path | None, storage: str | None, study_name: str | None
) -> tuple[str | None, str | None]:
    """Fill storage and study name from DIR/sweep.json; refuse a mismatch."""
    info = read_sweep_info(sweep_dir) if sweep_dir is not None else {}
    if info:
        recorded = info.get("storage")
        given = storage_label(storage, sweep_dir) if storage else None
        if storage is None and info.get("storage_kind") == "database":
            if info.get("storage_has_secret"):
                raise EdgeTrainError(
                    f"{sweep_dir} holds a study in the database {recorded}; give its URL with "
                    "--storage (or EDGETRAIN_SWEEP_STORAGE): passwords are never written to disk"
                )
            storage = recorded
        elif given is not None and recorded not in (None, given):
            raise EdgeTrainError(
                f"{sweep_dir} belongs to the study in {recorded}, not {given}; use another --out"
            )
        if study_name is None:
            study_name = info.get("study")
        elif info.get("study") not in (None, study_name):
            raise EdgeTrainError(
                f"{sweep_dir} belongs to study '{info['study']}', not '{study_name}'; "
                "use another --out for another study"
            )
    return storage, study_name


def open_study(
    space: SearchSpace,
    sweep_dir: Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
) -> Any:
    """Create the study, or reopen it after checking it is the same sweep.

    Writes ``DIR/space.yaml`` and ``DIR/sweep.json`` (the storage with any password masked).

    Raises:
        EdgeTrainError: DIR belongs to another study, or the study was made from another
            space, objectives or sampler.
    """
    return open_sweep_study(space, sweep_dir, storage=storage, study_name=study_name)[0]


def open_sweep_study(
    space: SearchSpace,
    sweep_dir: Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
) -> tuple[Any, Any, str | None]:
    """:func:`open_study`, also returning the Optuna storage object it opened and the
    storage as resolved (given, or recorded in ``DIR/sweep.json``; None: the journal).

    Workers use that storage object for what ``Study`` has no method for (system
    attributes, failing a trial they do not hold), through Optuna's public storage API.
    """
    sweep_dir = Path(sweep_dir)
    # marked before the storage creates study.journal in it (docs/design.md, "Files and safety")
    claim_dir(sweep_dir, "sweep", reuse=True, what="sweep directory")
    storage, study_name = _resolve(sweep_dir, storage, study_name)
    study_name = study_name or default_study_name(space.source)
    backend = open_storage(storage, sweep_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                study_name=study_name,
                storage=backend,
                directions=directions(space.objectives),
                sampler=make_sampler(space.sampler, space.seed, space.objectives),
                load_if_exists=True,
            )
    except ValueError as exc:  # directions differ from the stored study's
        raise EdgeTrainError(
            f"study '{study_name}' exists with other objectives: {mask_text(str(exc), storage)}"
        ) from None
    new = space.to_dict()
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise EdgeTrainError(
                f"study '{study_name}' already has trials but was not made by edgetrain sweep; "
                "use another --study name"
            )
        study.set_user_attr(SPACE_ATTR, new)
        study.set_user_attr("edgetrain:created_at", _now())
    elif _canonical(stored) != _canonical(new):
        raise EdgeTrainError(
            f"study '{study_name}' was made from a different search space (differs in: "
            f"{_space_difference(stored, new)}); resume it with the same space file, or start a "
            "new study with another --study or --out"
        )
    info = read_sweep_info(sweep_dir) or {"created_at": _now()}
    info.update(
        study=study_name,
        storage=storage_label(storage, sweep_dir),
        storage_kind="database" if is_database_url(storage) else "journal",
        storage_has_secret=has_secret(storage),
    )
    _write_sweep_files(sweep_dir, info, space)
    return study, backend, storage


def load_study(
    sweep_dir: Path | None, *, storage: str | None = None, study_name: str | None = None
) -> tuple[Any, SearchSpace]:
    """Open an existing study for analysis or final training.

    Args:
        sweep_dir: the sweep directory (may be None with a database storage).
        storage: database URL (needed when DIR's study is in a database with a password).
        study_name: study name (default: from DIR/sweep.json).
    """
    if sweep_dir is not None and not Path(sweep_dir).exists():
        raise EdgeTrainError(f"sweep directory not found: {sweep_dir}")
    storage, study_name = _resolve(sweep_dir, storage, study_name)
    if sweep_dir is not None and not is_database_url(storage) and not read_sweep_info(sweep_dir):
        raise EdgeTrainError(
            f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE}); run edgetrain sweep run first"
        )
    if study_name is None:
        raise EdgeTrainError("give the study name with --study")
    backend = open_storage(storage, sweep_dir)
    try:
        study = optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = [
            s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)
        ]
        raise EdgeTrainError(
            f"no study '{study_name}' in {storage_label(storage, sweep_dir)}; studies there: "
            f"{', '.join(names) or 'none'}"
        ) from None
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        raise EdgeTrainError(
            f"study '{study_name}' was not made by edgetrain sweep (no space stored)"
        )
    return study, space_from_dict(stored, source=f"study '{study_name}'")


def fail_reason(trial: Any) -> str | None:
    """Why a failed trial failed: error | killed | timeout | interrupted | lost | refused
    (None if not failed)."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL:
        return None
    return trial.system_attrs.get(FAIL_REASON_ATTR, "error")


def counts_toward_target(trial: Any) -> bool:
    """Whether a trial is an answer about its configuration (counts towards ``--trials``).

    Completed trials are; so are failures of the configuration itself (an error, the time
    limit). Lost, interrupted and refused trials are not: they are replaced. A trial
    process killed from outside the sweep (SIGKILL: the OOM killer, a user) is replaced
    once; if its retry is killed too, the configuration counts as failed.
    """
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state != TrialState.FAIL:
        return False
    reason = fail_reason(trial)
    if reason in NOT_COUNTED:
        return False
    if reason == "killed":
        return trial.user_attrs.get("retry_of") is not None
    return True


@dataclass(frozen=True)
class TrialCounts:
    """Trials of a study by outcome. ``done`` counts towards ``--trials``."""

    complete: int = 0
    failed: int = 0
    not_counted: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.failed


def count_trials(study: Any) -> TrialCounts:
    """Count trials by outcome (see :func:`counts_toward_target` for what is done)."""
    from optuna.trial import TrialState

    c = {"complete": 0, "failed": 0, "not_counted": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.FAIL:
            c["failed" if counts_toward_target(t) else "not_counted"] += 1
        elif t.state == TrialState.RUNNING:
            c["running"] += 1
        elif t.state == TrialState.WAITING:
            c["waiting"] += 1
    return TrialCounts(**c)


def study_metric(study: Any, space: SearchSpace) -> Objective:
    """The validation metric the study's tables rank by (see :func:`sweep_metric`)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    recorded = [(t.user_attrs.get("best_metric"), t.user_attrs.get("best_mode")) for t in done]
    return sweep_metric(space.objectives, space.base, recorded)


def trial_columns(metric: Objective, trials: Sequence[Any] = ()) -> list[str]:
    """The metric and outcome columns of trials.csv: :data:`TRIAL_COLUMNS` for a sweep
    ranked by accuracy; otherwise the metric in place of ``val_acc`` followed by the other
    validation metrics the trials recorded, and the accuracy columns only when filled."""
    if metric.column == "val_acc":
        return list(TRIAL_COLUMNS)
    recorded: dict[str, None] = {}
    for t in trials:
        modes = t.user_attrs.get("metric_modes")
        names = list(modes) if isinstance(modes, dict) else sorted(t.user_attrs)
        recorded.update(dict.fromkeys(n for n in names if t.user_attrs.get(n) is not None))
    others = [
        c
        for c in recorded
        if c.startswith("val_") and c != metric.column and c not in ACCURACY_COLUMNS
    ]
    per_kj = efficiency_column(metric.column, metric.mode)
    columns: list[str] = []
    for column in TRIAL_COLUMNS:
        if column == "val_acc":
            columns += [metric.column, *others]
        if column == "efficiency_acc_per_kj" and per_kj is not None:
            columns.append(per_kj)
        if column not in ACCURACY_COLUMNS or column in recorded:
            columns.append(column)
    return list(dict.fromkeys(columns))


def trials_frame(study: Any, space: SearchSpace, metric: Objective | None = None) -> pd.DataFrame:
    """One row per trial (not waiting ones): outcome, metrics and ``param_<name>`` columns.

    Args:
        study: the Optuna study.
        space: its search space.
        metric: the metric the tables rank by (default :func:`study_metric`).
    """
    from optuna.trial import TrialState

    metric = metric or study_metric(study, space)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    outcome = trial_columns(metric, trials)
    rows = []
    for t in trials:
        ua = t.user_attrs
        owner = t.system_attrs.get("edgetrain:owner") or {}
        row: dict[str, Any] = {c: ua.get(c) for c in outcome}
        row.update(
            number=t.number,
            state=_STATE_NAMES.get(t.state.name, t.state.name.lower()),
            fail_reason=fail_reason(t),
            host=ua.get("host") or (owner.get("host") if isinstance(owner, dict) else None),
        )
        for name in space.params:
            value = t.params.get(name)
            decoded = decode_choice(value)
            row[f"param_{name}"] = (
                json.dumps(decoded) if isinstance(decoded, list | dict) else decoded
            )
        rows.append(row)
    columns = [*outcome, *(f"param_{n}" for n in space.params)]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("number").reset_index(drop=True)
