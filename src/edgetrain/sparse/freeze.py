"""Applying a selection so that frozen rows do not move at all, and cost nothing where possible.

Three cases per parameter tensor:

- no selected row: ``requires_grad=False``. Autograd neither computes its gradient nor keeps
  the input it would need for it, and the optimizer skips a parameter whose ``grad`` is
  None, so momentum, weight decay and Adam's moments leave it alone. ``requires_grad``
  comes back when a row is selected again (never for a parameter the user froze).
- every row selected: trained normally.
- some rows selected: the gradient is computed for the whole tensor. An optimizer
  step pre-hook zeroes the frozen rows' gradient and copies those rows of the weight and
  of every parameter-shaped optimizer state (momentum buffer, Adam moments); the post-hook
  writes them back, so weight decay, momentum and Adam's moments cannot move them. State
  created by this very step (the first one) gets zeros in its frozen rows: the value it
  would have if those rows had never been trained (Adam's scalar ``step`` is per tensor and
  still counts). Being copies, the restored rows are bit-identical.

``mask_only=True`` reproduces NEq's masking for comparison: parameters without a selected
row keep ``requires_grad`` (their gradient is computed, then dropped before the step).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FreezeStats", "RowFreezer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezeStats:
    """What :meth:`RowFreezer.apply` did."""

    trainable: int  # parameter tensors fully trained
    partial: int  # with some rows frozen
    released: int  # with requires_grad switched off
    masked: int  # frozen but still differentiated (mask_only)


class RowFreezer:
    """Freezes rows of a model's parameters for an optimizer.

    Args:
        model: the model; parameters with ``requires_grad`` now are the ones it manages.
        optimizer: the optimizer whose steps must not move frozen rows.
        mask_only: keep ``requires_grad`` on fully frozen parameters (masking only).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        mask_only: bool = False,
    ) -> None:
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = optimizer
        self.mask_only = mask_only
        self._frozen_rows: dict[str, torch.Tensor] = {}  # partial: indices of frozen rows
        self._dropped: list[str] = []  # mask_only: fully frozen but differentiated
        self._saved: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        # no optimizer (memory probes, which never step): requires_grad only
        self._handles = (
            [
                optimizer.register_step_pre_hook(self._before_step),
                optimizer.register_step_post_hook(self._after_step),
            ]
            if optimizer is not None
            else []
        )

    def apply(self, rows: Mapping[str, torch.Tensor]) -> FreezeStats:
        """Train the rows marked True in ``rows`` (param name -> bool mask); freeze the rest."""
        self._frozen_rows, self._dropped = {}, []
        trainable = partial = released = 0
        for name, p in self.params.items():
            mask = rows.get(name)
            selected = 0 if mask is None else int(mask.sum())
            total = p.shape[0] if p.dim() else 1
            if selected == 0:
                p.grad = None
                p.requires_grad_(self.mask_only)
                if self.mask_only:
                    self._dropped.append(name)
                else:
                    released += 1
            elif selected == total:
                p.requires_grad_(True)
                trainable += 1
            else:
                assert mask is not None
                p.requires_grad_(True)
                self._frozen_rows[name] = torch.nonzero(~mask.cpu()).flatten().to(p.device)
                partial += 1
        stats = FreezeStats(trainable, partial, released, len(self._dropped))
        log.debug("freeze: %s", stats)
        return stats

    @staticmethod
    def _state_rows(
        optimizer: torch.optim.Optimizer, p: torch.Tensor, idx: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        state = optimizer.state.get(p, {})
        return {
            k: v.index_select(0, idx)
            for k, v in state.items()
            if torch.is_tensor(v) and v.shape == p.shape
        }

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for name in self._dropped:
            self.params[name].grad = None  # the optimizer skips it entirely
        self._saved = {}
        with torch.no_grad():
            for name, idx in self._frozen_rows.items():
                p = self.params[name]
                if p.grad is not None:
                    p.grad.index_fill_(0, idx, 0.0)
                self._saved[name] = (p.index_select(0, idx), self._state_rows(optimizer, p, idx))

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for name, (weights, states) in self._saved.items():
                p, idx = self.params[name], self._frozen_rows[name]
                p.index_copy_(0, idx, weights)
                for k, v in optimizer.state.get(p, {}).items():
                    if not (torch.is_tensor(v) and v.shape == p.shape):
                        continue
                    if k in states:
                        v.index_copy_(0, idx, states[k])
                    else:  # created by this step: frozen rows as if never trained
                        v.index_fill_(0, idx, 0)
        self._saved = {}

    def remove(self) -> None:
        """Remove the hooks and give every managed parameter its ``requires_grad`` back."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for p in self.params.values():
            p.requires_grad_(True)
        self._frozen_rows, self._dropped = {}, []
