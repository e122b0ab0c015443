"""Writes the run directory as training goes: metrics rows, checkpoints, the summary."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from edgetrain.train.callbacks import Callback, CallbackList, TrainState
from edgetrain.train.rundir import RunDir

__all__ = ["RunWriter", "build_summary", "restore_rng", "rng_state"]


def rng_state() -> dict[str, Any]:
    """Every global random state, for checkpoints."""
    # tensors and plain types only: checkpoints are read with weights_only=True
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def build_summary(state: TrainState, status: str, **extra: Any) -> dict[str, Any]:
    """summary.json: status, totals, best and final metrics (from the epoch history)."""
    hist = state.history
    energies = [r.get("energy_j") for r in hist if r.get("energy_j") is not None]
    times = [r.get("time_s") or 0.0 for r in hist]
    sources = sorted({str(r["energy_source"]) for r in hist if r.get("energy_source")})
    task = state.task.describe()
    key, mode = task["best_metric"], task["best_mode"]
    scored = [r for r in hist if _number(r.get(key)) is not None]
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda r: r[key]) if scored else None
    total_energy_j = float(sum(energies)) if energies else None
    total_time_s = float(sum(times))
    peaks = [r.get("peak_rss_bytes") for r in hist if r.get("peak_rss_bytes")]
    dev_peaks = [r.get("peak_device_mem_bytes") for r in hist if r.get("peak_device_mem_bytes")]
    summary: dict[str, Any] = {
        "status": status,
        "epochs": state.config.epochs,
        "epochs_completed": len(hist),
        "steps": state.step,
        "total_time_s": total_time_s,
        "total_energy_j": total_energy_j,
        "energy_source": "+".join(sources) if sources else None,
        "avg_power_w": total_energy_j / total_time_s if total_energy_j and total_time_s else None,
        "peak_rss_bytes": max(peaks) if peaks else None,
        "peak_device_mem_bytes": max(dev_peaks) if dev_peaks else None,
        "best": {k: _finite(v) for k, v in best.items()} if best else None,
        "final": {k: _finite(v) for k, v in hist[-1].items()} if hist else None,
        "task": task,
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    summary.update(extra)
    return summary


class RunWriter(Callback):
    """Appends each epoch's row to metrics.csv, then checkpoints, then updates summary.json.

    The summary says ``running`` until the run ends (written before the first epoch too);
    a reader that finds ``running`` while the directory's lock is free knows the process
    died (:func:`edgetrain.safefs.DirLock.is_free`).
    """

    name = "run_writer"

    def __init__(self, run: RunDir, scaler: torch.amp.GradScaler, callbacks: CallbackList) -> None:
        self.run = run
        self.scaler = scaler
        self.callbacks = callbacks

    def on_epoch_end(self, state: TrainState) -> None:
        self.run.log("metrics.csv", state.metrics_columns).append(state.epoch_row)
        history = [*state.history, dict(state.epoch_row)]
        self.run.save_checkpoint(
            {
                "format": 1,
                "epoch": state.epoch + 1,  # epochs completed
                "step": state.step,
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
                "base_lr": state.base_lr,
                "batch_size": state.batch_size,
                "micro_batch_size": state.micro_batch_size,
                "history": history,
                "callbacks": self.callbacks.state_dict(),
                "rng": rng_state(),
            }
        )
        # the summary is built after the loop appends this row: do it here from `history`
        saved, state.history = state.history, history
        try:
            self.run.write_json("summary.json", build_summary(state, "running"))
        finally:
            state.history = saved
