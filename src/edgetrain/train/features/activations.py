"""Saved-activation accounting and compression inside training (``activations: <mode>``)."""

from __future__ import annotations

from typing import Any

import torch

from edgetrain.train.callbacks import Callback, Forward, TrainState

__all__ = ["ActivationCallback"]


class ActivationCallback(Callback):
    """Wraps the forward pass in :func:`edgetrain.memory.compress_activations`.

    The hooks travel with the autograd graph, so backward (run by the loop after the
    forward returns) unpacks what the forward packed. ``activation_bytes`` in metrics.csv
    is the peak of the stored (compressed) saved-activation bytes in the epoch.
    """

    name = "activations"

    def __init__(self, mode: str, seed: int = 0) -> None:
        self.mode = "none" if mode == "off" else mode
        self.seed = seed
        self.ctx: Any = None
        self._summary: dict[str, Any] = {"mode": self.mode}

    def on_fit_start(self, state: TrainState) -> None:
        from edgetrain.memory import compress_activations

        self.ctx = compress_activations(state.model, self.mode, seed=self.seed)

    def wrap_forward(self, forward: Forward) -> Forward:
        def compressed(*args: Any, **kwargs: Any) -> Any:
            if self.ctx is None or not torch.is_grad_enabled():
                return forward(*args, **kwargs)  # evaluation saves nothing for backward
            with self.ctx:
                return forward(*args, **kwargs)

        return compressed

    def on_epoch_start(self, state: TrainState) -> None:
        if self.ctx is not None:
            self.ctx.reset_peak()

    def on_epoch_end(self, state: TrainState) -> None:
        if self.ctx is None:
            return
        stats = self.ctx.stats
        state.epoch_row["activation_bytes"] = stats.peak_stored_bytes
        act = self._summary
        act["peak_stored_bytes"] = max(act.get("peak_stored_bytes", 0), stats.peak_stored_bytes)
        act["peak_raw_bytes"] = max(act.get("peak_raw_bytes", 0), stats.peak_raw_bytes)

    def summary(self) -> dict[str, Any]:
        return {"activations": self._summary} if self.ctx is not None else {}
