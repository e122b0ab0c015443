"""The monitor inside training: each epoch is a measurement window; every sample is logged."""

from __future__ import annotations

import logging
from typing import Any

from edgetrain.config import MonitorConfig
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.rundir import RESOURCES_BASE_COLUMNS, CsvLog

__all__ = ["MonitorCallback"]

log = logging.getLogger(__name__)


def _float(text: str | None) -> float:
    try:
        return float(text or "nan")
    except ValueError:
        return float("nan")


class MonitorCallback(Callback):
    """Samples resources in the background and fills the epoch's cost columns.

    ``metrics.csv`` gets time, energy (with its source), average power and peak memory per
    epoch; ``resources.csv`` gets every sample, tagged with the epoch it fell in.
    """

    name = "monitor"
    unique = True

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self._summary: dict[str, Any] = {}
        self.monitor: Any = None
        self._window: Any = None
        self._epoch = 0
        self._log: CsvLog | None = None
        self._t_offset_s = 0.0  # resources.csv time keeps growing across a resume
        self._last_t_s = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        from edgetrain.measure import Monitor

        kwargs: dict[str, Any] = {"interval_s": self.config.interval_s}
        if self.config.cpu_tdp_w is not None:
            kwargs["cpu_tdp_w"] = self.config.cpu_tdp_w
        if self.config.devices is not None:
            kwargs["devices"] = self.config.devices
        self.monitor = Monitor(**kwargs)
        state.sensor_statuses = self.monitor.sensor_statuses
        if state.run is not None:
            if self._t_offset_s > 0:
                # resumed: drop samples taken after the checkpoint (they are replayed)
                offset = self._t_offset_s
                state.run.truncate_log("resources.csv", lambda r: _float(r.get("t_s")) <= offset)
            columns = list(RESOURCES_BASE_COLUMNS)
            columns += [c for c in self.monitor.columns if c not in columns]
            self._log = state.run.log("resources.csv", columns)
            self.monitor.add_listener(self._on_sample)
        self.monitor.start()

    def _on_sample(self, sample: dict[str, Any]) -> None:
        if self._log is None:
            return
        row = dict(sample)
        row["t_s"] = float(sample.get("t_s", 0.0)) + self._t_offset_s
        row["epoch"] = self._epoch or None
        self._last_t_s = row["t_s"]
        self._log.append(row)

    def on_epoch_start(self, state: TrainState) -> None:
        self._epoch = state.epoch + 1
        if self.monitor is not None:
            self._window = self.monitor.window(f"epoch-{self._epoch}")
            self._window.__enter__()

    def on_epoch_end(self, state: TrainState) -> None:
        if self._window is None:
            return
        self._window.__exit__(None, None, None)
        result = self._window.result
        self._window = None
        state.epoch_row.update(result.epoch_fields())  # energy with scope, coverage, process share
        self._epoch = 0  # samples between epochs (validation is inside the window) are untagged

    def on_fit_end(self, state: TrainState) -> None:
        if self.monitor is None:
            return
        if self._window is not None:
            self._window.__exit__(None, None, None)
            self._window = None
        self.monitor.close()  # also shuts NVML down
        self._summary = {"monitor": self.monitor.summary()}
        self.monitor = None

    def summary(self) -> dict[str, Any]:
        return self._summary

    def state_dict(self) -> dict[str, Any]:
        return {"t_offset_s": self._last_t_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._t_offset_s = float(state.get("t_offset_s", 0.0))
