"""Recompute chosen blocks in backward instead of keeping their activations (``recompute:``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgetrain.train.callbacks import Callback, TrainState

__all__ = ["RecomputeCallback"]


class RecomputeCallback(Callback):
    """Checkpoints the blocks ``spec`` chooses for the run (see :mod:`edgetrain.memory.recompute`).

    ``spec``: "none", "all", "auto", "every_<k>" or a list of module names. The blocks'
    forwards are replaced at ``on_fit_start`` and restored at ``on_fit_end``; the model's
    modules and state_dict keys are unchanged, so checkpoints and model.pt are as
    without recomputation.
    """

    name = "recompute"
    unique = True

    def __init__(self, spec: str | Sequence[str]) -> None:
        from edgetrain.memory.recompute import parse_spec

        self.spec = parse_spec(spec)  # a bad spec fails before the run starts
        self.blocks: list[str] = []
        self.handle: Any = None

    def on_fit_start(self, state: TrainState) -> None:
        from edgetrain.memory.recompute import apply_recompute

        self.handle = apply_recompute(state.model, self.spec)
        self.blocks = list(self.handle.names)

    def on_fit_end(self, state: TrainState) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def summary(self) -> dict[str, Any]:
        spec = self.spec if isinstance(self.spec, str) else list(self.spec)
        return {"recompute": {"blocks": list(self.blocks), "spec": spec}}
