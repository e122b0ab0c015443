"""Early stopping: end training when a metric stops improving.

:class:`EarlyStopCallback` reads one column of each epoch's row (by default the task's
"best" metric, in its direction) and sets ``state.stop_training`` after ``patience``
epochs without an improvement larger than ``min_delta``. Its counters are checkpointed,
so a resumed run keeps counting. summary.json gets ``early_stop`` (the settings, the best
value and epoch, and ``reason`` when it stopped the run).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from edgetrain.config.early_stop import EarlyStopConfig
from edgetrain.contract import direction
from edgetrain.errors import EdgeTrainError
from edgetrain.train.callbacks import Callback, TrainState

__all__ = ["EarlyStopCallback", "early_stop_reason"]

log = logging.getLogger(__name__)


def early_stop_reason(
    metric: str, min_delta: float, patience: int, best: float | None, best_epoch: int | None
) -> str:
    """'early_stop: val_rmse did not improve by 0.001 for 3 epochs (best 0.512 at epoch 4)'."""
    by = f" by {min_delta:g}" if min_delta else ""
    where = f" (best {best:.4g} at epoch {best_epoch})" if best is not None else ""
    plural = "s" if patience != 1 else ""
    return f"early_stop: {metric} did not improve{by} for {patience} epoch{plural}{where}"


class EarlyStopCallback(Callback):
    """Stops training when ``metric`` has not improved for ``patience`` epochs.

    An epoch improves when its value beats the best so far by more than ``min_delta``
    (``mode`` min: lower; max: higher); a missing or non-finite value never improves.
    Only one instance acts on a run.
    """

    name = "early_stop"
    unique = True

    def __init__(self, config: EarlyStopConfig | None = None) -> None:
        self.config = config or EarlyStopConfig(patience=5)
        self.metric = self.config.metric or ""
        self.mode = self.config.mode or ""
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0  # epochs in a row without an improvement
        self.stopped_epoch: int | None = None
        self._loaded: tuple[str, str] | None = None  # (metric, mode) of a checkpoint's state
        self._warned = False

    @property
    def patience(self) -> int:
        return int(self.config.patience or 0)

    def on_fit_start(self, state: TrainState) -> None:
        task = state.task.describe()
        self.metric = self.config.metric or str(task["best_metric"])
        self.mode = self.config.mode or direction(self.metric, {"task": task})
        if self.metric not in state.metrics_columns:
            metrics = [c for c in state.metrics_columns if c.startswith(("train_", "val_"))]
            raise EdgeTrainError(
                f"early_stop.metric {self.metric!r} is not a column this run writes; "
                f"choose one of {', '.join(metrics)}"
            )
        if self._loaded is not None and self._loaded != (self.metric, self.mode):
            log.warning(
                "early_stop: the checkpoint counted %s (%s), this run %s (%s); counting anew",
                *self._loaded,
                self.metric,
                self.mode,
            )
            self.best, self.best_epoch, self.wait = None, None, 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = self.config.min_delta
        return value < self.best - delta if self.mode == "min" else value > self.best + delta

    def on_epoch_end(self, state: TrainState) -> None:
        if self.patience < 1:
            return
        if self.metric not in state.epoch_row:  # not measured (no validation data)
            if not self._warned:
                log.warning("early_stop: %s is not measured in this run; not stopping", self.metric)
                self._warned = True
            return
        raw = state.epoch_row.get(self.metric)
        value = float(raw) if isinstance(raw, int | float) else math.nan
        epoch = state.epoch + 1
        if math.isfinite(value) and self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            state.stop_training = True
            log.info("%s", self.reason)

    @property
    def reason(self) -> str | None:
        """Why it stopped the run (None while it has not)."""
        if self.stopped_epoch is None:
            return None
        return early_stop_reason(
            self.metric, self.config.min_delta, self.patience, self.best, self.best_epoch
        )

    def summary(self) -> dict[str, Any]:
        if self.patience < 1:
            return {}
        return {
            "early_stop": {
                "metric": self.metric or None,
                "mode": self.mode or None,
                "patience": self.patience,
                "min_delta": self.config.min_delta,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "epochs_without_improvement": self.wait,
                "stopped_epoch": self.stopped_epoch,
                "reason": self.reason,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        best = state.get("best")
        self.best = float(best) if best is not None else None
        epoch = state.get("best_epoch")
        self.best_epoch = int(epoch) if epoch is not None else None
        self.wait = int(state.get("wait", 0))
        self._loaded = (str(state.get("metric", "")), str(state.get("mode", "")))
        # a run that stopped early and is resumed (e.g. with more epochs) trains on: the
        # counter keeps its value, so one more epoch without improvement stops it again
        self.stopped_epoch = None
