"""The pruning callback: global magnitude pruning inside the training loop.

:class:`PruneCallback` prunes conv and linear weights by global magnitude
(:mod:`edgetrain.prune`) and makes the pruning permanent at the end. Its decisions go to
``RUN/decisions.csv``, the totals to ``summary.json`` (``prune``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgetrain.config import PruneConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.prune import (
    attach_masks,
    current_masks,
    make_permanent,
    model_sparsity,
    param_sparsity,
    plain_state_dict,
    prunable_modules,
    prune_to,
    target_sparsity,
)
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.rundir import DECISIONS_COLUMNS

__all__ = ["PruneCallback"]

log = logging.getLogger(__name__)


class PruneCallback(Callback):
    """Global magnitude pruning during training, permanent at the end (see module doc).

    Only one instance acts on a run (a second one does nothing).

    Every conv and linear weight is masked from the start (all ones until pruning
    begins), so the model's memory does not jump when pruning starts. While masks exist,
    ``model.state_dict()`` holds plain weights (orig x mask): checkpoints load into an
    unpruned model, and on resume the masks come back from this callback's state.
    ``metrics.csv`` gets ``param_sparsity`` (zeros among conv and linear weights).
    """

    name = "prune"
    unique = True

    def __init__(self, config: PruneConfig | None = None) -> None:
        self.config = config or PruneConfig()
        self._own_config = config is not None
        self.sparsity = 0.0  # the target applied so far
        self._masks: dict[str, torch.Tensor] | None = None
        self._hooks: list[RemovableHandle] = []
        self._model: nn.Module | None = None
        self._summary: dict[str, Any] = {}

    def _target(self, state: TrainState, epoch: int) -> float:
        cfg = self.config
        return target_sparsity(
            epoch,
            ratio=cfg.ratio,
            start_epoch=cfg.start_epoch,
            schedule=cfg.schedule,
            end_epoch=cfg.end_epoch,
            epochs=state.config.epochs,
        )

    def _prune(self, state: TrainState, epoch: int) -> None:
        target = self._target(state, epoch)
        if target <= self.sparsity:
            return
        old = param_sparsity(state.model)
        count = prune_to(state.model, target)
        self.sparsity = target
        new = param_sparsity(state.model)
        log.info("pruned %d weights before epoch %d: sparsity %.4f", count, epoch + 1, new)
        if state.run is not None:
            state.run.log("decisions.csv", DECISIONS_COLUMNS).append(
                {
                    "epoch": epoch + 1,
                    "step": state.step,
                    "chosen": "prune",
                    "parameter": "param_sparsity",
                    "old": old,
                    "new": new,
                    "reason": (
                        f"global magnitude pruning ({self.config.schedule}): {count} more "
                        f"conv/linear weights set to zero before epoch {epoch + 1}"
                    ),
                }
            )

    def on_fit_start(self, state: TrainState) -> None:
        if not self._own_config:
            self.config = state.config.prune
        cfg, epochs = self.config, state.config.epochs
        if cfg.ratio <= 0:
            raise EdgeTrainError(f"prune.ratio must be in (0, 1) for pruning, got {cfg.ratio}")
        if cfg.start_epoch >= epochs:
            raise EdgeTrainError(
                f"prune.start_epoch must be < epochs ({epochs}), or pruning never starts; "
                f"got {cfg.start_epoch}"
            )
        if cfg.schedule == "gradual" and cfg.end_epoch is not None and cfg.end_epoch > epochs:
            log.warning(
                "prune.end_epoch %d is after the last epoch (%d): the sparsity reaches %.3f, "
                "not prune.ratio %s",
                cfg.end_epoch,
                epochs,
                self._target(state, epochs - 1),
                cfg.ratio,
            )
        if not prunable_modules(state.model):
            raise EdgeTrainError(
                f"prune.ratio {cfg.ratio}: the model ({type(state.model).__name__}) has no "
                "conv or linear layer to prune"
            )
        self._model = state.model
        attach_masks(state.model, self._masks)
        self._masks = None
        self._hooks = plain_state_dict(state.model)
        self._prune(state, len(state.history))  # the next epoch (0 on a fresh run)

    def on_epoch_start(self, state: TrainState) -> None:
        if self._model is not None:
            self._prune(state, state.epoch)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._model is not None:
            state.epoch_row["param_sparsity"] = param_sparsity(state.model)

    def on_fit_end(self, state: TrainState) -> None:
        if self._model is None:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        layers = make_permanent(state.model)
        self._model = None
        self._summary = {
            "ratio": self.config.ratio,
            "schedule": self.config.schedule,
            "start_epoch": self.config.start_epoch,
            "param_sparsity": param_sparsity(state.model),
            "model_sparsity": model_sparsity(state.model),
            "layers": layers,
        }

    def summary(self) -> dict[str, Any]:
        return {"prune": self._summary} if self._summary else {}

    def state_dict(self) -> dict[str, Any]:
        if self._model is None:
            return {}
        return {"sparsity": self.sparsity, "masks": current_masks(self._model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.sparsity = float(state.get("sparsity", 0.0))
        masks = state.get("masks") or {}
        self._masks = dict(masks) if masks else None
        if self._masks is None and self.sparsity > 0:
            log.warning("the checkpoint has no pruning masks; pruning is applied again")
            self.sparsity = 0.0
