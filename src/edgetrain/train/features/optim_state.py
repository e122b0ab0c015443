"""``optimizer_state: bf16`` in training: :class:`OptimizerStateCallback` keeps the run's
optimizer state in bfloat16 between steps (see :mod:`edgetrain.memory.optimizer_state` and
docs/design.md, "Memory planner").
"""

from __future__ import annotations

from typing import Any

import torch

from edgetrain.errors import EdgeTrainError
from edgetrain.memory.optimizer_state import STATE_DTYPES, LowPrecisionState, installed
from edgetrain.train.callbacks import Callback, TrainState

__all__ = ["OptimizerStateCallback"]

_NAME = "optimizer_state"


class OptimizerStateCallback(Callback):
    """Installs :class:`LowPrecisionState` on the run's optimizer (``optimizer_state``)."""

    name = "optim_state"
    unique = True

    def __init__(self, dtype: str = "bf16", seed: int = 0) -> None:
        if dtype not in STATE_DTYPES:
            raise EdgeTrainError(
                f"{_NAME} must be one of fp32, {', '.join(STATE_DTYPES)}, got {dtype!r}"
            )
        self.dtype_name = dtype
        self._seed = seed
        self._lp: LowPrecisionState | None = None
        self._loaded: dict[str, Any] = {}
        self._bytes: int | None = None  # the state's bytes when the fit ended

    def on_fit_start(self, state: TrainState) -> None:
        if state.config.sparse_update.scheme != "full":
            raise EdgeTrainError(
                f"{_NAME} {self.dtype_name} cannot be combined with sparse_update (its step "
                "hooks must see the gradients first): set optimizer_state=fp32"
            )
        self._install(state.optimizer)

    def on_batch_start(self, state: TrainState) -> None:
        if self._lp is None or self._lp.optimizer is not state.optimizer:
            self._install(state.optimizer)  # a new optimizer (the old one's hooks go)

    def _install(self, optimizer: torch.optim.Optimizer) -> None:
        generators = self._lp.state_dict() if self._lp is not None else self._loaded
        self.remove()
        self._lp = installed(optimizer) or LowPrecisionState(
            optimizer, STATE_DTYPES[self.dtype_name], seed=self._seed
        )
        self._lp.load_state_dict(generators)

    def remove(self) -> None:
        if self._lp is not None:
            self._lp.remove()
            self._lp = None

    def on_fit_end(self, state: TrainState) -> None:
        if self._lp is not None:
            self._bytes = self._lp.state_bytes()
            self._loaded = self._lp.state_dict()
        self.remove()

    def state_dict(self) -> dict[str, Any]:
        return {"generators": self._lp.state_dict() if self._lp is not None else self._loaded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded = dict(state.get("generators", {}))
        if self._lp is not None:
            self._lp.load_state_dict(self._loaded)

    def summary(self) -> dict[str, Any]:
        info: dict[str, Any] = {"dtype": self.dtype_name}
        size = self._lp.state_bytes() if self._lp is not None else self._bytes
        if size is not None:
            info["state_bytes"] = size
        return {_NAME: info}
