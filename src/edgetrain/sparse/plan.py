"""Which selection each epoch uses, from the ``sparse_update`` config (a pure decision).

- ``velocity``: the ``first_epoch`` scheme until a velocity exists (after epoch 1), then
  ranking by velocity; ``random``: redrawn each epoch from ``(seed, epoch)``; ``static``:
  chosen once from the weight norms seen before training; ``full``, ``last_k``,
  ``bias_only``: the same every epoch. The head and norm layers are added when
  ``always_train_head`` / ``always_train_bn`` are set (``last_k`` counts the head as one
  of its layers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from edgetrain.config.sparse import SparseUpdateConfig
from edgetrain.sparse.budget import CostModel
from edgetrain.sparse.layers import ModelUnits
from edgetrain.sparse.select import (
    Selection,
    check_budget,
    fixed_rows,
    select_bias_only,
    select_full,
    select_last_k,
    select_random,
    select_static,
    select_velocity,
)

__all__ = ["SelectionPlanner"]

log = logging.getLogger(__name__)


class SelectionPlanner:
    """Turns observations into each epoch's selection.

    Args:
        config: the ``sparse_update`` section.
        units: the model's neuron layers.
        cost: the cost model matching the budget's unit.
        limit: the budget in the cost model's unit, or None (no budget).
        seed: seed of the random scheme.
        norms: weight norms per layer before training (for ``static``).
    """

    def __init__(
        self,
        config: SparseUpdateConfig,
        units: ModelUnits,
        cost: CostModel,
        limit: int | None,
        seed: int,
        norms: Mapping[str, torch.Tensor],
    ) -> None:
        self.config = config
        self.units = units
        self.cost = cost
        self.limit = limit
        self.seed = int(seed)
        self.norms = dict(norms)
        self._static: Selection | None = None
        if config.scheme in ("velocity", "random", "static"):
            check_budget(cost, limit, self.fixed())  # fail before training, not during it

    def fixed(self, *, biases: bool = False) -> dict[str, torch.Tensor]:
        cfg = self.config
        return fixed_rows(
            self.units, head=cfg.always_train_head, norm=cfg.always_train_bn, biases=biases
        )

    def static(self) -> Selection:
        """The static selection (computed once, from the norms given at construction)."""
        if self._static is None:
            assert self.limit is not None
            self._static = select_static(
                self.units,
                self.cost,
                self.limit,
                self.norms,
                self.fixed(),
                depth=self.config.static_depth,
            )
        return self._static

    def static_rows(self) -> dict[str, torch.Tensor] | None:
        """The static selection once computed (for checkpoints), else None."""
        return None if self._static is None else dict(self._static.rows)

    def set_static_rows(self, rows: Mapping[str, torch.Tensor]) -> None:
        """Restore a static selection computed before (a resumed run's weights differ)."""
        self._static = Selection(dict(rows))

    def random(self, epoch: int) -> Selection:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        assert self.limit is not None
        return select_random(self.units, self.cost, self.limit, gen, self.fixed())

    def scheme_for(self, epoch: int, has_velocity: bool) -> str:
        """The scheme that makes epoch ``epoch``'s selection (0-based)."""
        scheme = self.config.scheme
        if scheme == "velocity" and not has_velocity:
            return self.config.first_epoch_scheme
        return scheme

    def select(
        self, epoch: int, velocity: Mapping[str, torch.Tensor] | None
    ) -> tuple[Selection, str]:
        """The selection for epoch ``epoch`` and the scheme that made it."""
        scheme = self.scheme_for(epoch, bool(velocity))
        cfg = self.config
        if scheme == "full":
            return select_full(self.units), scheme
        if scheme == "last_k":
            return select_last_k(self.units, cfg.last_k, self.fixed()), scheme
        if scheme == "bias_only":
            return select_bias_only(self.units, self.fixed(biases=True)), scheme
        if scheme == "static":
            return self.static(), scheme
        if scheme == "random":
            return self.random(epoch), scheme
        assert velocity is not None
        selection = select_velocity(
            self.units, self.cost, self.limit, velocity, self.fixed(), epsilon=cfg.epsilon
        )
        return selection, scheme
