"""Optimizer in backward: each parameter is stepped as soon as its gradient is ready.

Without gradient accumulation (micro-batch = logical batch) the step need not wait for the
whole backward pass: a ``register_post_accumulate_grad_hook`` on every parameter steps it
with its own one-parameter optimizer and frees its gradient at once, so the gradients of
all layers never coexist (the peak saves up to the gradients' bytes).

The per-parameter optimizers are built like ``state.optimizer`` (same class, defaults and
param-group settings) and *share its state* (``state`` dict): momentum buffers and Adam's
moments live in ``state.optimizer`` as usual, so its ``state_dict`` in the checkpoint holds
them, a run resumes with or without this feature, and a step taken the plain way (with
accumulation, after the budget controller shrank the micro-batch) continues the same
state. Each group's settings (the learning rate set by the schedule or a scheduler) are
copied into the per-parameter group just before each step.

With gradient accumulation the step cannot happen in backward (later micro-batches
need the old weights), but for SGD with momentum the gradients need not be kept either:
the hooks fold each micro-batch's gradients into the momentum buffers as they are ready
and free them, and the loop steps the weights after the last micro-batch
(:class:`~edgetrain.memory.fold.MomentumFold`, published as ``state.fold``). Other
optimizers accumulate the plain way.

The loop decides, per logical batch, whether the hooks act: it sets
``state.in_optimizer_step`` around the backward passes of a batch (the one pass without
accumulation; every pass when it folds) when ``state.step_in_backward`` is set (by
:meth:`OptimizerInBackward.on_fit_start`). Any other backward (with accumulation and no
fold, a probe's) leaves the gradients alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.hooks import RemovableHandle

from edgetrain.errors import EdgeTrainError
from edgetrain.memory.fold import MomentumFold, fold_refusal
from edgetrain.memory.optimizer_state import (
    installed,
    is_own_hook,
    param_ids,
    per_parameter_optimizers,
)
from edgetrain.train.callbacks import Callback, TrainState

if TYPE_CHECKING:
    from edgetrain.config import TrainConfig

# per_parameter_optimizers lives in edgetrain.memory.optimizer_state (re-exported here)
__all__ = ["OptimizerInBackward", "per_parameter_optimizers", "refusal", "refusal_for"]

_NAME = "optimizer_in_backward"


class OptimizerInBackward(Callback):
    """Steps each parameter inside backward and frees its gradient; with accumulation,
    folds the gradients into SGD's momentum (module doc) or leaves them to the loop.

    Refuses (:class:`EdgeTrainError`) what needs all gradients before the step: gradient
    clipping, fp16 loss scaling, ``on_nonfinite: skip``, sparse updates (hooks on the
    optimizer's step) and optimizers that need a closure.
    """

    name = "optim_backward"
    unique = True

    def __init__(self) -> None:
        self._state: TrainState | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._params: tuple[int, ...] = ()
        self._handles: list[RemovableHandle] = []
        self._stepped = False  # a hook stepped a parameter in this logical batch
        self._folded = False  # ... by folding its gradient into the momentum
        self._fold: MomentumFold | None = None  # SGD with momentum: accumulation folds
        self.steps_in_backward = 0  # logical batches stepped inside backward
        self.steps_folded = 0  # of those, with accumulation folded into the momentum
        self.steps_plain = 0  # logical batches stepped by the loop (with accumulation)

    # -- set-up ---------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        _check(state)
        self._state = state
        self._install(state.optimizer)
        state.step_in_backward = True

    def on_batch_start(self, state: TrainState) -> None:
        self._stepped = self._folded = False
        if state.optimizer is not self._optimizer or param_ids(state.optimizer) != self._params:
            _check_hooks(state.optimizer)
            self._install(state.optimizer)  # a new optimizer, new or reloaded groups
        elif self._fold is not None and fold_refusal(state.optimizer) is not None:
            self._fold = state.fold = None  # low-precision state installed since

    def on_batch_end(self, state: TrainState) -> None:
        if self._stepped:
            self.steps_in_backward += 1
            self.steps_folded += int(self._folded)
        else:
            self.steps_plain += 1

    def on_fit_end(self, state: TrainState) -> None:
        self.remove()
        state.step_in_backward = False
        state.fold = None

    def remove(self) -> None:
        """Remove the hooks (the loop then steps the usual way)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _install(self, optimizer: torch.optim.Optimizer) -> None:
        self.remove()
        self._optimizer = optimizer
        self._params = param_ids(optimizer)
        self._fold = MomentumFold(optimizer) if fold_refusal(optimizer) is None else None
        if self._state is not None:
            self._state.fold = self._fold
        for p, single, group in per_parameter_optimizers(optimizer):
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(single, group)))

    def _hook(self, single: torch.optim.Optimizer, group: dict[str, Any]) -> Any:
        own = single.param_groups[0]

        def step(p: torch.Tensor) -> None:
            state = self._state
            if state is None or not (state.step_in_backward and state.in_optimizer_step):
                return  # accumulation, or a backward outside the loop's step
            if self._fold is not None and self._fold.active:
                self._fold.fold(p)  # a micro-batch of an accumulated batch
                self._stepped = self._folded = True
                return
            main = self._optimizer
            if main is not None and single.state is not main.state:
                single.state = main.state  # the optimizer's state was loaded (resume)
            for key, value in group.items():
                if key != "params":
                    own[key] = value
            low = installed(main) if main is not None else None
            if low is not None:  # optimizer_state: bf16 (its state cast up for the step)
                low.step_parameter(p, single)
            else:
                single.step()
            p.grad = None
            self._stepped = True

        return step

    # -- checkpoint and summary -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # the optimizer state itself is in state.optimizer's state_dict (shared)
        return {
            "steps_in_backward": self.steps_in_backward,
            "steps_folded": self.steps_folded,
            "steps_plain": self.steps_plain,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_in_backward = int(state.get("steps_in_backward", 0))
        self.steps_folded = int(state.get("steps_folded", 0))
        self.steps_plain = int(state.get("steps_plain", 0))

    def summary(self) -> dict[str, Any]:
        return {_NAME: self.state_dict()}


def _check(state: TrainState) -> None:
    """One line for each setting that needs every gradient before the step."""
    why = refusal_for(state.config, state.optimizer)
    if why is not None:
        raise EdgeTrainError(why)


def refusal(state: TrainState) -> str | None:
    """Why the optimizer step cannot move into backward for this run (None: it can)."""
    return refusal_for(state.config, state.optimizer)


def refusal_for(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> str | None:
    """Why the optimizer step cannot move into backward with ``cfg`` and ``optimizer``
    (None: it can): each setting that needs every gradient before the step."""
    if cfg.grad_clip_norm is not None:
        return f"{_NAME} cannot clip gradients: unset grad_clip_norm"
    if cfg.precision == "fp16":
        return f"{_NAME} cannot scale fp16 losses: use precision bf16 or fp32"
    if cfg.on_nonfinite == "skip":
        return f"{_NAME} steps before the loss is checked: use on_nonfinite stop or continue"
    if cfg.sparse_update.scheme != "full":
        return f"{_NAME} cannot be combined with sparse_update"
    if isinstance(optimizer, torch.optim.LBFGS):
        return f"{_NAME} cannot step LBFGS (it needs a closure)"
    return _hooks_refusal(optimizer)


def _hooks_refusal(optimizer: torch.optim.Optimizer) -> str | None:
    hooks = [
        *optimizer._optimizer_step_pre_hooks.values(),
        *optimizer._optimizer_step_post_hooks.values(),
    ]
    if any(not is_own_hook(h) for h in hooks):  # not optimizer_state's (it steps per parameter)
        return f"{_NAME}: the optimizer has step hooks, which per-parameter steps would skip"
    return None


def _check_hooks(optimizer: torch.optim.Optimizer) -> None:
    why = _hooks_refusal(optimizer)
    if why is not None:
        raise EdgeTrainError(why)
