"""Experiment loggers: TensorBoard and MLflow, each a callback behind its own extra.

Both log, per epoch, every numeric column of ``state.epoch_row`` (losses, task metrics,
``lr``, batch sizes, ``time_s``, ``energy_j``, ``avg_power_w``, peak memory, sparsity) at
step = the epoch number, and the budget controller's decisions of that epoch (read from
``RUN/decisions.csv``); at the end, the run's totals, its best epoch and its status.

They run after every feature that fills the epoch's row (``train/api.py`` adds them after
the user's callbacks), never raise into training once it has started (a logging error is
a warning, and that logger stops), and pick up where they left off when a run is resumed:
TensorBoard purges the replayed epochs, MLflow continues the same run (its id is
checkpointed).
"""

from __future__ import annotations

import importlib
import json
import logging
import numbers
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetrain.contract import CONFIG_FILE, DECISIONS_FILE, METRICS_FILE
from edgetrain.errors import DivergedError, EdgeTrainError, MissingExtraError
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.rundir import read_csv_rows

if TYPE_CHECKING:
    from edgetrain.config.log import LogConfig

__all__ = [
    "MLflowCallback",
    "TensorBoardCallback",
    "epoch_scalars",
    "flatten_config",
    "logger_callbacks",
    "mlflow_name",
    "run_status",
    "tensorboard_tag",
]

log = logging.getLogger(__name__)

#: MLflow's run status for each edgetrain status (``summary.json`` ``status``).
MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # others: FAILED
#: Run-directory files logged as MLflow artifacts at the end, when present.
DEFAULT_ARTIFACTS = (CONFIG_FILE, METRICS_FILE, DECISIONS_FILE, "adapt.csv")
#: summary.json totals logged at the end (``summary/<key>``).
SUMMARY_TOTALS = (
    "epochs_completed",
    "steps",
    "total_time_s",
    "total_energy_j",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_device_mem_bytes",
)


def logger_callbacks(config: LogConfig) -> list[Callback]:
    """The loggers a ``log`` config section asks for (none when all are off)."""
    callbacks: list[Callback] = []
    if config.tensorboard is not None:
        callbacks.append(TensorBoardCallback(config.tensorboard))
    if config.mlflow is not None:
        callbacks.append(MLflowCallback(config.mlflow, experiment=config.mlflow_experiment))
    return callbacks


# -- what is logged --------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return _number(value.item())  # a 0-d tensor or numpy array
    return None


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric column of an epoch's row but ``epoch`` (the step), in row order.

    Empty columns (a feature that is off), text (``energy_source``) and booleans are left
    out; NaN and infinities are kept (a diverging loss should show).
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        number = _number(value)
        if key != "epoch" and number is not None:
            out[str(key)] = number
    return out


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config sections as dotted keys (``adapt.weights.batch_size``), JSON values.

    Text stays as it is; other values are JSON (``null``, ``true``, ``[0.8, 0.1, 0.1]``),
    as in config.yaml. An empty mapping is one key with ``{}``.
    """
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, f"{name}."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def run_status(state: TrainState, outer: BaseException | None = None) -> str:
    """The run's status as ``summary.json`` will say it, from inside ``on_fit_end``.

    ``state.status`` when the loop sets it; else the exception being raised through the
    loop (``on_fit_end`` runs in its ``finally``): none is ``completed``, Ctrl-C and
    SIGTERM ``interrupted``, a non-finite loss ``diverged``, anything else ``failed``.
    ``outer`` is an exception already being handled when training started (``fit`` called
    from an ``except`` block), which is not this run's.
    """
    status = getattr(state, "status", None)
    if isinstance(status, str) and status not in ("", "running"):
        return status
    exc = sys.exc_info()[1]
    if exc is None or exc is outer:
        return "completed"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, DivergedError):
        return "diverged"
    return "failed"


def _final_summary(state: TrainState, status: str) -> dict[str, Any]:
    """summary.json's totals and best epoch as they will be written (test metrics if known)."""
    from edgetrain.train.writer import build_summary

    summary = build_summary(state, status)
    test = getattr(state, "test_metrics", None)
    if isinstance(test, Mapping):
        summary["test"] = dict(test)
    return summary


def _summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """``summary/<total>``, ``best/<train_ or val_ column>``, ``best/epoch`` and the test
    metrics (``test_<m>``)."""
    out: dict[str, float] = {}
    for key in SUMMARY_TOTALS:
        number = _number(summary.get(key))
        if number is not None:
            out[f"summary/{key}"] = number
    best = summary.get("best")
    if isinstance(best, Mapping):  # the best epoch's losses and task metrics
        scores = {k: v for k, v in best.items() if k.startswith(("train_", "val_"))}
        out.update({f"best/{k}": v for k, v in epoch_scalars(scores).items()})
        if _number(best.get("epoch")) is not None:
            out["best/epoch"] = float(best["epoch"])
    test = summary.get("test")
    if isinstance(test, Mapping):
        out.update(epoch_scalars(test))
    return out


def _decisions(state: TrainState, after: int, upto: int) -> list[dict[str, str]] | None:
    """decisions.csv rows of epochs ``after < epoch <= upto`` (those made before the first
    epoch count as epoch 1's); None when the run has no decisions file."""
    if state.run_path is None:
        return None
    path = state.run_path / DECISIONS_FILE
    if not path.exists():
        return None
    _, rows = read_csv_rows(path)
    picked = []
    for row in rows:
        try:
            epoch = max(1, int(float(row.get("epoch") or 0)))
        except ValueError:
            continue
        if after < epoch <= upto:
            picked.append(row)
    return picked


def _changes(rows: list[dict[str, str]]) -> int:
    """How many decision rows changed a setting (a 'keep' row names no parameter)."""
    return sum(1 for r in rows if r.get("parameter"))


def _decisions_markdown(rows: list[dict[str, str]]) -> str:
    """The decisions as a Markdown table (TensorBoard's text plugin renders it)."""
    lines = ["| epoch | step | parameter | old | new | reason |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.get(c, "") for c in ("epoch", "step", "parameter", "old", "new", "reason")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _require(module: str, package: str, extra: str, feature: str) -> Any:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package, extra, feature) from exc


class _Guarded:
    """Runs logging calls; the first failure is a warning and turns the logger off."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failed = False

    def __call__(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.failed = True
            log.warning(
                "%s: %s failed (%s: %s); nothing more is logged to it for this run",
                self.what,
                action,
                type(exc).__name__,
                exc,
            )
            return None


# -- TensorBoard -----------------------------------------------------------------------


def tensorboard_tag(column: str) -> str:
    """``train_loss`` -> ``train/loss``, ``val_acc`` -> ``val/acc``, ``lr`` -> ``epoch/lr``."""
    for split in ("train", "val", "test"):
        if column.startswith(f"{split}_"):
            return f"{split}/{column[len(split) + 1 :]}"
    if "/" in column:
        return column
    return f"epoch/{column}"


class TensorBoardCallback(Callback):
    """Writes TensorBoard event files (needs the ``tensorboard`` extra).

    Scalars per epoch (``train/<m>``, ``val/<m>``, ``epoch/<column>``, and
    ``epoch/decision_changes`` when the budget controller decides), the decisions and
    the config as text, and at the end ``summary/<total>``, ``best/<column>`` and the
    status. Events go to ``log_dir/<run name>`` (the run directory's name, or ``run_name``;
    ``log_dir`` itself for a run without a directory).
    """

    name = "tensorboard"

    def __init__(
        self, log_dir: str | Path, *, run_name: str | None = None, flush_secs: int = 30
    ) -> None:
        _require("torch.utils.tensorboard", "tensorboard", "tensorboard", "log.tensorboard")
        self.log_dir = Path(log_dir)
        self.run_name = run_name
        self.flush_secs = flush_secs
        self.path: Path | None = None
        self._writer: Any = None
        self._guard = _Guarded(f"TensorBoard ({self.log_dir})")
        self._epoch = 0
        self._outer: BaseException | None = None

    def on_fit_start(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._outer = sys.exc_info()[1]
        done = len(state.history)  # epochs already logged when resuming
        name = self.run_name or (state.run_path.name if state.run_path is not None else "")
        self.path = self.log_dir / name if name else self.log_dir
        try:
            # purge_step: a resumed run drops the events of epochs it replays
            self._writer = SummaryWriter(
                str(self.path), purge_step=done + 1 if done else None, flush_secs=self.flush_secs
            )
        except OSError as exc:
            raise EdgeTrainError(
                f"log.tensorboard: cannot write {self.path}: {exc.strerror or exc}"
            ) from exc
        self._epoch = done
        if not done:
            self._guard("writing the config", self._write_config, state)

    def _write_config(self, state: TrainState) -> None:
        from edgetrain.config import config_to_dict, write_yaml_text

        text = write_yaml_text(config_to_dict(state.config))
        self._writer.add_text("config", "```yaml\n" + text + "```", 0)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._writer is None:
            return
        self._guard("logging an epoch", self._write_epoch, state)

    def _write_epoch(self, state: TrainState) -> None:
        step = int(state.epoch_row.get("epoch") or state.epoch + 1)
        for column, value in epoch_scalars(state.epoch_row).items():
            self._writer.add_scalar(tensorboard_tag(column), value, step)
        rows = _decisions(state, self._epoch, step)
        if rows is not None:
            self._writer.add_scalar("epoch/decision_changes", _changes(rows), step)
            if rows:
                self._writer.add_text("decisions", _decisions_markdown(rows), step)
        self._epoch = step
        self._writer.flush()  # an epoch is visible at once, and kept if the process dies

    def on_fit_end(self, state: TrainState) -> None:
        if self._writer is None:
            return
        status = run_status(state, self._outer)
        self._guard("logging the summary", self._write_summary, state, status)
        try:
            self._writer.close()
        except Exception as exc:  # a full disk: training's result matters more
            log.warning("TensorBoard (%s): closing failed: %s", self.path, exc)
        self._writer = None

    def _write_summary(self, state: TrainState, status: str) -> None:
        summary = _final_summary(state, status)
        step = len(state.history)
        for tag, value in _summary_scalars(summary).items():
            self._writer.add_scalar(tensorboard_tag(tag), value, step)
        lines = [f"status: **{status}**"]
        for key in ("total_time_s", "total_energy_j", "energy_source", "peak_rss_bytes"):
            if summary.get(key) is not None:
                lines.append(f"{key}: {summary[key]}")
        self._writer.add_text("summary", "  \n".join(lines), step)

    def summary(self) -> dict[str, Any]:
        return {"tensorboard": {"log_dir": str(self.path)}} if self.path is not None else {}


# -- MLflow ----------------------------------------------------------------------------

_BAD_NAME = re.compile(r"[^\w./\- ]")


def mlflow_name(key: str) -> str:
    """A metric or parameter name MLflow accepts (other characters become ``_``)."""
    return _BAD_NAME.sub("_", key).strip("/") or "_"


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MLflowCallback(Callback):
    """Logs the run to MLflow (needs the ``mlflow`` extra: ``mlflow-skinny`` or ``mlflow``).

    At the start, the config as parameters (flattened: ``adapt.policy``) and tags
    (``edgetrain.run_dir``, ``edgetrain.task``); per epoch, every numeric column of the
    epoch's row under its metrics.csv name (``val_acc``, ``energy_j``) and
    ``decision_changes`` when the budget controller decides; at the end ``summary/<total>``,
    ``best/<column>``, the test metrics, the run-directory files in ``artifacts`` and the
    status (tag ``edgetrain.status``; MLflow's FINISHED, KILLED or FAILED).

    Args:
        tracking_uri: where to log (``file:./mlruns``, ``sqlite:///mlflow.db``,
            ``http://host:5000``); None: MLflow's default (``$MLFLOW_TRACKING_URI``).
        experiment: experiment name, created when missing; None:
            ``$MLFLOW_EXPERIMENT_NAME``, else MLflow's ``Default``.
        run_name: the MLflow run's name; default: the run directory's name.
        run_id: log into this existing MLflow run (left open at the end) instead of
            creating one.
        artifacts: run-directory files logged at the end, when present.
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        artifacts: tuple[str, ...] = DEFAULT_ARTIFACTS,
    ) -> None:
        _require("mlflow", "mlflow", "mlflow", "log.mlflow")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.artifacts = artifacts
        self.run_id: str | None = run_id
        self.experiment_id: str | None = None
        self._own_run = run_id is None  # a run we create (or resume) we also end
        self._restored = False  # run_id came from a checkpoint
        self._client: Any = None
        self._guard = _Guarded(f"MLflow ({tracking_uri or 'default tracking URI'})")
        self._epoch = 0
        self._outer: BaseException | None = None

    @property
    def key(self) -> str:
        # checkpointed per tracking URI: a resume that logs elsewhere starts a new run
        return f"mlflow:{self.tracking_uri}" if self.tracking_uri else "mlflow"

    def on_fit_start(self, state: TrainState) -> None:
        from mlflow.tracking import MlflowClient

        self._outer = sys.exc_info()[1]
        self._epoch = len(state.history)
        where = self.tracking_uri or "the default tracking URI"
        try:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self._open_run(state)
            self._log_params(state)
        except Exception as exc:
            self._client = None
            raise EdgeTrainError(
                f"log.mlflow: cannot log to MLflow at {where}: {type(exc).__name__}: "
                + " ".join(str(exc).split())
            ) from exc

    def _open_run(self, state: TrainState) -> None:
        client = self._client
        if self.run_id is not None:  # resumed from our checkpoint, or given by the caller
            try:
                run = client.get_run(self.run_id)
                if run.info.lifecycle_stage != "active":
                    raise LookupError(f"it is {run.info.lifecycle_stage}")
            except Exception as exc:
                if not self._restored:
                    raise
                # the resumed training matters more than continuing the same MLflow run
                log.warning(
                    "MLflow run %s of this run's checkpoint cannot be read (%s); "
                    "logging to a new MLflow run",
                    self.run_id,
                    " ".join(str(exc).split())[:200],
                )
                self.run_id, self._restored = None, False
            else:
                self.experiment_id = run.info.experiment_id
                if self._own_run:
                    client.update_run(self.run_id, status="RUNNING")
                return
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
        else:
            try:
                self.experiment_id = client.create_experiment(name)
            except Exception:  # another process created it meanwhile
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                self.experiment_id = experiment.experiment_id
        from edgetrain import __version__

        tags = {"edgetrain.version": __version__, "edgetrain.task": state.task.name}
        if state.run_path is not None:
            tags["edgetrain.run_dir"] = str(Path(state.run_path).resolve())
        run_name = self.run_name or (state.run_path.name if state.run_path is not None else None)
        run = client.create_run(self.experiment_id, tags=tags, run_name=run_name)
        self.run_id = run.info.run_id

    def _log_params(self, state: TrainState) -> None:
        from mlflow.entities import Param

        from edgetrain.config import config_to_dict

        limit = _param_value_limit()
        params = {
            mlflow_name(k): v[:limit]
            for k, v in flatten_config(config_to_dict(state.config)).items()
        }
        logged = self._client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:  # MLflow parameters cannot change; a resume with overrides keeps the first
            log.warning(
                "MLflow run %s: parameters changed since it started, kept as first logged: %s",
                self.run_id,
                ", ".join(changed),
            )
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for chunk in _chunks(new, 100):  # MLflow takes at most 100 parameters per batch
            self._client.log_batch(self.run_id, params=chunk)

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), v, now_ms, step) for k, v in values.items()]
        for chunk in _chunks(metrics, 1000):
            self._client.log_batch(self.run_id, metrics=chunk)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._client is None:
            return
        self._guard("logging an epoch", self._write_epoch, state)

    def _write_epoch(self, state: TrainState) -> None:
        step = int(state.epoch_row.get("epoch") or state.epoch + 1)
        values = epoch_scalars(state.epoch_row)
        rows = _decisions(state, self._epoch, step)
        if rows is not None:
            values["decision_changes"] = float(_changes(rows))
        self._log_metrics(values, step)
        self._epoch = step

    def on_fit_end(self, state: TrainState) -> None:
        if self._client is None:
            return
        status = run_status(state, self._outer)
        self._guard("logging the summary", self._write_summary, state, status)
        if state.run_path is not None:
            for name in self.artifacts:
                path = Path(state.run_path) / name
                if path.is_file():
                    self._guard(f"logging {name}", self._client.log_artifact, self.run_id, path)
        if self._own_run:
            self._guard(
                "ending the run",
                self._client.set_terminated,
                self.run_id,
                MLFLOW_STATUS.get(status, "FAILED"),
            )
        self._client = None

    def _write_summary(self, state: TrainState, status: str) -> None:
        from mlflow.entities import RunTag

        summary = _final_summary(state, status)
        self._log_metrics(_summary_scalars(summary), len(state.history))
        tags = {"edgetrain.status": status}
        if summary.get("energy_source"):
            tags["edgetrain.energy_source"] = str(summary["energy_source"])
        self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def summary(self) -> dict[str, Any]:
        if self.run_id is None:
            return {}
        return {
            "mlflow": {
                "tracking_uri": self.tracking_uri,
                "experiment_id": self.experiment_id,
                "run_id": self.run_id,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id is not None and self._own_run else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run_id = state.get("run_id")
        if isinstance(run_id, str) and run_id and self._own_run:
            self.run_id, self._restored = run_id, True  # a resumed run continues its MLflow run


def _param_value_limit() -> int:
    """The longest parameter value the installed MLflow takes (500 before 2.x's 6000)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:  # pragma: no cover - every supported MLflow has it
        return 500
    return int(MAX_PARAM_VAL_LENGTH)
