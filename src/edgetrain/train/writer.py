"""Writes the run directory as training goes: metrics rows, checkpoints, the summary.

Three sets of weights (summary.json ``checkpoints`` says which is which):
``checkpoints/last.pt`` (the latest epoch, with everything needed to resume),
``checkpoints/best.pt`` (the model at the epoch that is best by the task's best metric
and direction, with that epoch, metric and value) and ``model.pt`` (the final weights,
written when the run completes). All are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetrain.contract import CHECKPOINT_FILE, MODEL_FILE
from edgetrain.train.callbacks import Callback, CallbackList, TrainState
from edgetrain.train.rundir import RunDir, save_tensors

__all__ = [
    "BEST_CHECKPOINT_FILE",
    "RunWriter",
    "best_row",
    "build_summary",
    "restore_rng",
    "rng_state",
    "save_best",
    "stop_reason",
]

#: The weights of the best epoch by the task's best metric (beside ``last.pt``).
BEST_CHECKPOINT_FILE = "checkpoints/best.pt"


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


def best_row(history: list[dict[str, Any]], key: str, mode: str) -> dict[str, Any] | None:
    """The first epoch row with the best finite value of ``key`` (``max`` or ``min``)."""
    scored = [r for r in history if _number(r.get(key)) is not None]
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r[key]) if scored else None


def save_best(path: Path, model_state: Any, epoch: int, key: str, mode: str, value: float) -> None:
    """Write ``checkpoints/best.pt``: the model's state dict, its epoch, metric and value."""
    save_tensors(
        path,
        {
            "format": 1,
            "model": model_state,
            "epoch": epoch,
            "metric": key,
            "mode": mode,
            "value": value,
        },
    )


def stop_reason(state: TrainState, status: str, early_stop: Any = None) -> str | None:
    """Why the run ended: ``completed all epochs``, the early-stopping reason,
    ``interrupted``, ``diverged`` or ``failed`` (None while it runs)."""
    if status == "running":
        return None
    if status != "completed":
        return status
    if isinstance(early_stop, dict) and early_stop.get("reason"):
        return str(early_stop["reason"])
    done = len(state.history)
    if state.stop_training and done < state.config.epochs:
        return f"stopped by a callback after epoch {done}"
    return "completed all epochs"


def _checkpoints(
    state: TrainState, status: str, best: dict[str, Any] | None, key: str, mode: str
) -> dict[str, Any]:
    """summary.json ``checkpoints``: which weights file holds which epoch."""
    done = len(state.history)
    best_file = state.run.path / BEST_CHECKPOINT_FILE if state.run is not None else None
    best_entry = None
    if best is not None and best_file is not None and best_file.exists():
        best_entry = {
            "path": BEST_CHECKPOINT_FILE,
            "epoch": best.get("epoch"),
            "metric": key,
            "mode": mode,
            "value": _finite(best.get(key)),
        }
    return {
        "best": best_entry,
        "last": {"path": CHECKPOINT_FILE, "epoch": done} if done else None,
        "final": {"path": MODEL_FILE, "epoch": done} if status == "completed" else None,
    }


def build_summary(state: TrainState, status: str, **extra: Any) -> dict[str, Any]:
    """summary.json: status, why and when it stopped, totals, best and final metrics (from
    the epoch history), the weights files and the model's size."""
    hist = state.history
    energies = [r.get("energy_j") for r in hist if r.get("energy_j") is not None]
    times = [r.get("time_s") or 0.0 for r in hist]
    sources = sorted({str(r["energy_source"]) for r in hist if r.get("energy_source")})
    task = state.task.describe()
    key, mode = task["best_metric"], task["best_mode"]
    best = best_row(hist, key, mode)
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
        "stop_reason": stop_reason(state, status, extra.get("early_stop")),
        "stop_epoch": _stop_epoch(state, status),
        "checkpoints": _checkpoints(state, status, best, key, mode),
        "model": _model_size(state),
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    summary.update(extra)
    return summary


def _stop_epoch(state: TrainState, status: str) -> int | None:
    """The epoch (1-based) the run stopped at: the last one completed, or the one in
    progress when it was interrupted, diverged or failed."""
    if status == "running":
        return None
    done = len(state.history)
    if status != "completed" and state.epoch >= done:
        return state.epoch + 1
    return done


def _model_size(state: TrainState) -> dict[str, Any]:
    params = list(state.model.parameters())
    return {
        "name": str(state.config.model),
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
    }


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

    def _save_best(self, state: TrainState, history: list[dict[str, Any]]) -> None:
        """``checkpoints/best.pt`` when this epoch (the last of ``history``) is the first
        best by the task's best metric (ties keep the earlier epoch, as ``best`` does)."""
        task = state.task.describe()
        key, mode = str(task["best_metric"]), str(task["best_mode"])
        if best_row(history, key, mode) is history[-1]:
            value = float(history[-1][key])
            path = self.run.path / BEST_CHECKPOINT_FILE
            save_best(path, state.model.state_dict(), state.epoch + 1, key, mode, value)

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
        # after last.pt: a resume after a kill between the two writes finds this epoch in
        # last.pt's history and writes best.pt from last.pt's model (train.api._restore)
        self._save_best(state, history)
        # the summary is built after the loop appends this row: do it here from `history`
        saved, state.history = state.history, history
        try:
            self.run.write_json("summary.json", build_summary(state, "running"))
        finally:
            state.history = saved
